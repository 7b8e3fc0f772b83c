"""``metarl plot`` on real runs (real Ray, real Meta-World, test-mode budgets): the curves it draws
equal the journals' numbers, seeds of one setting are pooled, and the PNG holds them."""

import matplotlib.image
import numpy as np
import pytest

from metarl_ray.evaluation.plotting import plot_runs
from metarl_ray.training.metrics import read_metrics

FLAGS = ("--env_name", "ML1", "--task", "reach-v3", "--test_mode", "--max_episode_length", "20", "--num_epochs", "3")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, local_ray):
    from metarl_ray.cli.main import main

    root = tmp_path_factory.mktemp("plot")
    for name, extra in (
        ("s0", ("--seed", "0")),
        ("s1", ("--seed", "1")),
        ("other", ("--seed", "0", "--inner_lr", "0.05")),
    ):
        assert main(["train", *FLAGS, *extra, "--output_dir", str(root), "--run_name", name]) == 0
    return root


def test_plot_pools_seeds_of_one_setting_and_keeps_another_apart(runs, tmp_path):
    out = tmp_path / "curves.png"
    drawn = plot_runs(
        [str(runs / "s0"), str(runs / "s1"), str(runs / "other")], ["post_adapt/return", "loss/outer"], str(out)
    )
    seeds = [read_metrics(runs / name) for name in ("s0", "s1")]
    pooled, other = drawn["post_adapt/return"]
    assert pooled.num_seeds == 2 and other.num_seeds == 1 and other.label == "other"
    values = np.array([[row["post_adapt/return"] for row in rows] for rows in seeds])
    np.testing.assert_allclose(pooled.mean, values.mean(axis=0))
    np.testing.assert_allclose(pooled.low, values.min(axis=0))
    np.testing.assert_allclose(pooled.high, values.max(axis=0))
    np.testing.assert_allclose(pooled.env_steps, [row["rollout/env_steps_total"] for row in seeds[0]])
    np.testing.assert_allclose(other.mean, [row["post_adapt/return"] for row in read_metrics(runs / "other")])
    image = matplotlib.image.imread(out)
    assert image.shape[:2] == (440, 1144)  # two panels of 5.2 x 4 inches at 110 dpi
    # The first curve's colour (matplotlib's C0, #1f77b4) is drawn, and its band's lighter tint.
    rgb = image[..., :3]
    assert (np.abs(rgb - np.array([0x1F, 0x77, 0xB4]) / 255).sum(axis=-1) < 0.05).sum() > 200


def test_plot_bad_input_is_one_line_and_writes_nothing(runs, tmp_path, in_process):
    out = tmp_path / "x.png"
    cases = [
        (
            ("plot", runs / "s0", "--metric", "nope/metric", "--out", out),
            "--metric='nope/metric': not in these runs' metrics",
        ),
        (("plot", tmp_path, "--out", out), "not a run directory"),
        (("plot", runs / "s0", "--out", tmp_path / "x.txt"), "expected a file name ending in .png"),
        (("plot", runs / "s0", "--out", tmp_path / "missing" / "x.png"), "does not exist"),
    ]
    for args, fragment in cases:
        status, _, err = in_process(*args)
        assert status == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err
    assert not out.exists()
    status, out_text, _ = in_process("plot", runs / "s0", runs / "s1", "--out", out)
    assert status == 0 and out.stat().st_size > 10_000
