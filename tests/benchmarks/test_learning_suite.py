"""benchmarks/learning.py: a run continues exactly from its committed folder on a fresh clone, the
committed folder holds only the latest checkpoint, and seeds evaluated apart pool to the figures of
seeds evaluated together."""

import shutil
import sys
from pathlib import Path

import pytest
import torch

from metarl_ray.training.checkpoint import load_checkpoint
from metarl_ray.training.metrics import read_metrics

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import learning  # noqa: E402
import suite_points  # noqa: E402

TINY = learning.Suite(
    ("--env_name", "ML1", "--task", "reach-v3", "--test_mode", "--max_episode_length", "20"),
    {"mlp": learning.maml("mlp", seeds=(0, 1))},
    num_epochs=2,
    checkpoint_every=1,
    title="tiny",
)
COMPARED = (
    "pre_adapt/return",
    "post_adapt/return",
    "pre_adapt/success",
    "post_adapt/success",
    "loss/outer",
    "ppo/kl",
    "policy/std",
    "rollout/env_steps_total",
)


def test_a_run_continues_exactly_from_its_committed_folder(tmp_path, in_process):
    straight = learning.train_command("tiny", TINY, "mlp", 0, runs=tmp_path / "straight")
    assert in_process(*straight[1:])[0] == 0

    runs, state = tmp_path / "runs", tmp_path / "state"
    learning.cmd_train("tiny", TINY, ["mlp"], [0], until_iteration=1, runs=runs, state=state)
    saved = state / "tiny" / "tiny-mlp-s0"
    assert sorted(p.name for p in (saved / "checkpoints").iterdir()) == [
        "checkpoint_000001.pt",
        "checkpoint_000001.pt.sha256",
        "latest",
    ]
    assert {"config.yaml", "metrics.jsonl"} <= {p.name for p in saved.iterdir()}

    shutil.rmtree(runs)  # a fresh clone has the committed folder only
    learning.cmd_train("tiny", TINY, ["mlp"], [0], runs=runs, state=state)
    assert sorted(p.name for p in (saved / "checkpoints").iterdir()) == [
        "checkpoint_000002.pt",
        "checkpoint_000002.pt.sha256",
        "latest",
    ]

    expected, continued = read_metrics(tmp_path / "straight" / "tiny-mlp-s0"), read_metrics(runs / "tiny-mlp-s0")
    assert [row["iteration"] for row in continued] == [1, 2]
    for row, reference in zip(continued, expected):
        for key in COMPARED:
            assert row[key] == pytest.approx(reference[key], rel=1e-6, abs=1e-9), key
    final = load_checkpoint(saved / "checkpoints" / "checkpoint_000002.pt")["learner"]["policy"]
    reference = load_checkpoint(tmp_path / "straight" / "tiny-mlp-s0" / "checkpoints" / "checkpoint_000002.pt")[
        "learner"
    ]["policy"]
    assert all(torch.allclose(final[name], reference[name], rtol=1e-6, atol=1e-8) for name in reference)


def test_seeds_evaluated_apart_pool_to_the_figures_of_seeds_evaluated_together(tmp_path, in_process):
    from metarl_ray.distributed.eval_runner import evaluate_runs
    from metarl_ray.evaluation.meta_test import EvalOptions
    from metarl_ray.training.storage import StoragePath

    for seed in (0, 1):
        assert in_process(*learning.train_command("tiny", TINY, "mlp", seed, runs=tmp_path)[1:])[0] == 0
    checkpoints = [tmp_path / f"tiny-mlp-s{seed}" / "checkpoints" / "checkpoint_000002.pt" for seed in (0, 1)]
    options = EvalOptions(goals_per_class=3, num_workers=0, official=False)
    together = evaluate_runs([StoragePath.parse(c) for c in checkpoints], options)
    apart = {
        seed: {
            "iteration": 2,
            "env_steps": 0,
            "request": {},
            "protocol": {},
            "official": None,
            "train_classes": None,
            "eval_wall_s": 0.0,
            "goals": evaluate_runs([StoragePath.parse(c)], options)["runs"][0]["goals"],
        }
        for seed, c in zip((0, 1), checkpoints)
    }
    pooled = suite_points.pool(apart)
    assert pooled["overall"] == together["overall"] and pooled["per_task"] == together["per_task"]
    columns = {seed: {**record, "goals": suite_points.goal_columns(record["goals"])} for seed, record in apart.items()}
    assert suite_points.goal_rows(columns[0]["goals"]) == apart[0]["goals"]
    assert suite_points.pool(columns)["overall"] == together["overall"]  # as SUITE.json keeps them
    assert pooled["overall"]["sampled"]["post"]["num_seeds"] == 2


def test_official_figure_over_seeds_is_a_t_interval():
    estimate = suite_points._over_seeds([0.2, 0.4, 0.3])
    # mean 0.3, sd 0.1, t(0.975, 2) = 4.3027: half-width 0.3027 / sqrt(3) = 0.2484
    assert estimate["mean"] == pytest.approx(0.3)
    assert estimate["ci95"] == pytest.approx([0.3 - 0.24841, 0.3 + 0.24841], abs=1e-4)
    assert suite_points._over_seeds([0.5])["ci95"] is None


def _fake_run(path, iterations):
    (path / "checkpoints").mkdir(parents=True)
    (path / "config.yaml").write_text("run: {}\n")
    for iteration in iterations:
        name = f"checkpoint_{iteration:06d}.pt"
        (path / "checkpoints" / name).write_bytes(b"x")
        (path / "checkpoints" / (name + ".sha256")).write_text("0")
    return path


def test_committed_state_never_goes_back_and_a_run_behind_it_is_refused(tmp_path):
    state = _fake_run(tmp_path / "state", [20])
    assert learning.save_state(_fake_run(tmp_path / "old", [10]), state) is None  # an older run: state kept
    assert learning.checkpoint_iterations(state) == [20]
    assert learning.save_state(_fake_run(tmp_path / "new", [20, 30]), state) == 30
    assert sorted(p.name for p in (state / "checkpoints").iterdir()) == [
        "checkpoint_000030.pt",
        "checkpoint_000030.pt.sha256",
        "latest",
    ]
    with pytest.raises(SystemExit, match="at iteration 10, behind its committed state"):
        learning.restore_state(state, tmp_path / "old")
    assert learning.restore_state(state, tmp_path / "fresh") and learning.checkpoint_iterations(tmp_path / "fresh") == [
        30
    ]


def test_an_extended_runs_initial_point_is_recognised_as_measured(tmp_path):
    """The initial checkpoint is rewritten with the run's config, whose num_epochs grows as a run is
    extended: its file checksum changes, the checksum of its weights (what iteration 0 measures) does not."""
    from metarl_ray.config import build_config
    from metarl_ray.training.run_dir import write_config
    from metarl_ray.training.storage import StoragePath

    run = tmp_path / "runs" / "tiny-mlp-s0"
    run.mkdir(parents=True)
    digests = []
    for num_epochs in (50, 60):
        write_config(StoragePath.parse(run), build_config({"run": {"num_epochs": num_epochs, "seed": 3}}))
        checkpoint = suite_points.initial_checkpoint(run, tmp_path / "runs" / "initial")
        digests.append((learning._checkpoint_sha256(checkpoint), suite_points.weights_sha256(checkpoint)))
    assert digests[0][0] != digests[1][0] and digests[0][1] == digests[1][1]
    write_config(StoragePath.parse(run), build_config({"run": {"num_epochs": 60, "seed": 4}}))  # other weights
    assert (
        suite_points.weights_sha256(suite_points.initial_checkpoint(run, tmp_path / "runs" / "initial"))
        != digests[0][1]
    )
