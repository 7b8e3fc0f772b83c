"""The meta-test report without Ray: pooled estimates from hand-made goal results, which runs may be
pooled, where checkpoints are found (Tune experiments too), and a real in-process meta-test."""

import json

import numpy as np
import pytest
import torch

from metarl_ray.batch import GoalEvaluation
from metarl_ray.cli.main import main
from metarl_ray.config import ConfigError, build_config
from metarl_ray.envs.metaworld import ACTION_DIM, OBS_DIM
from metarl_ray.evaluation.meta_test import EvalOptions, RunToEvaluate, check_compatible, find_checkpoints, summarize
from metarl_ray.policies import build_policy
from metarl_ray.training.checkpoint import save_checkpoint
from metarl_ray.training.storage import StoragePath


def goal(slot, name, pre, post, pre_sampled, post_sampled):
    return GoalEvaluation(
        slot,
        name,
        slot,
        pre,
        post,
        1.0 * pre,
        10.0 * post,
        np.array(pre_sampled, bool),
        np.array(post_sampled, bool),
        np.ones(len(pre_sampled), np.float32),
        np.full(len(post_sampled), 2.0, np.float32),
        100,
    )


def run(seed=0, env_steps=1000, **maml):
    config = build_config({"run": {"seed": seed}, "maml": maml})
    return RunToEvaluate(StoragePath.parse(f"runs/s{seed}"), config, {}, 5, env_steps, config)


def test_pooled_report_by_rule_phase_and_class_with_a_paired_gain():
    runs = [run(0), run(1)]
    results = [  # 2 seeds x 2 classes x 2 goals
        [
            goal(0, "a", False, True, [0, 0], [1, 1]),
            goal(1, "a", False, False, [0, 1], [1, 0]),
            goal(2, "b", True, True, [1, 1], [1, 1]),
            goal(3, "b", False, True, [0, 0], [0, 0]),
        ],
        [
            goal(0, "a", False, True, [0, 0], [1, 0]),
            goal(1, "a", True, True, [1, 1], [1, 1]),
            goal(2, "b", True, False, [1, 0], [0, 0]),
            goal(3, "b", False, False, [0, 0], [0, 1]),
        ],
    ]
    report = summarize(runs, results, [None, None], EvalOptions(), goals_per_class=50)
    mean_rule = report["overall"]["mean_action"]
    # post: a 1,0 | 1,1 -> 0.75; b 1,1 | 0,0 -> 0.5; pre: a 0,0 | 0,1 -> 0.25; b 1,0 | 1,0 -> 0.5
    assert mean_rule["post"]["mean"] == pytest.approx((0.75 + 0.5) / 2) and mean_rule["pre"]["mean"] == pytest.approx(
        0.375
    )
    assert mean_rule["gain"]["mean"] == pytest.approx(0.25)
    assert (mean_rule["post"]["num_seeds"], mean_rule["post"]["num_samples"]) == (2, 8)
    # IQM over per-(seed, class) post rates [a0 0.5, b0 1.0, a1 1.0, b1 0.0]: middle two of sorted -> 0.75
    assert mean_rule["post"]["iqm"] == pytest.approx(0.75)
    sampled = report["per_task"]["a"]["sampled"]
    assert sampled["post"]["mean"] == pytest.approx((1 + 0.5 + 0.5 + 1) / 4) and sampled["pre"][
        "mean"
    ] == pytest.approx(1.5 / 4)
    assert report["per_task"]["b"]["mean_action"]["gain"]["mean"] == pytest.approx(0.0)
    assert report["success_rate"] == mean_rule["post"]["mean"] and report["success_rate_official"] is None
    assert report["runs"][1]["success_rate"]["mean_action"] == {"pre": pytest.approx(0.5), "post": pytest.approx(0.5)}
    assert report["protocol"]["seeds"] == [0, 1] and report["protocol"]["num_goals_per_run"] == 4
    assert mean_rule["post_mean_return"] == pytest.approx(10 * 5 / 8)
    low, high = mean_rule["post"]["mean_ci95"]
    assert low <= mean_rule["post"]["mean"] <= high and low < high
    json.dumps(report)  # what --json prints


def test_only_distinct_seeds_of_one_method_at_one_budget_are_pooled():
    check_compatible([run(0), run(1)])  # seeds (and output folders) may differ
    with pytest.raises(ConfigError, match=r"inner_lr=0\.05 differs from 0\.1 .*expected seeds of one method"):
        check_compatible([run(0), run(1, inner_lr=0.05)])
    with pytest.raises(ConfigError, match="env_steps=2000 differs from 1000"):
        check_compatible([run(0), run(1, env_steps=2000)])
    with pytest.raises(ConfigError, match=r"runs share seed\(s\) \[0\]; expected one checkpoint per seed"):
        check_compatible([run(0), run(1), run(0)])


def write_run(directory, seed, iterations=(1, 2), max_episode_length=20, **maml):
    config = build_config(
        {
            "env": {"benchmark": "ML1", "task": "reach-v3", "max_episode_length": max_episode_length},
            "run": {"seed": seed, "test_mode": True},
            "maml": maml,
        }
    )
    torch.manual_seed(seed)
    policy = build_policy(OBS_DIM, ACTION_DIM, config.policy)
    for iteration in iterations:
        save_checkpoint(
            directory,
            iteration,
            {
                "iteration": iteration,
                "env_steps_total": 100 * iteration,
                "config": config.to_dict(),
                "learner": {"policy": policy.state_dict()},
            },
        )


def test_checkpoints_are_found_in_files_run_directories_and_tune_experiments(tmp_path):
    for trial in ("trainable_b_00001", "trainable_a_00000"):
        write_run(tmp_path / "experiment" / trial / "run", seed=len(trial))
    (tmp_path / "experiment" / "trainable_c_00002").mkdir()  # a trial that never checkpointed
    found = find_checkpoints(StoragePath.parse(tmp_path / "experiment"))
    assert [c.parent.parent.parent.name for c in found] == ["trainable_a_00000", "trainable_b_00001"]
    assert all(c.name == "checkpoint_000002.pt" for c in found)
    run_dir = tmp_path / "experiment" / "trainable_a_00000" / "run"
    assert find_checkpoints(StoragePath.parse(run_dir)) == [run_dir / "checkpoints" / "checkpoint_000002.pt"]
    first = run_dir / "checkpoints" / "checkpoint_000001.pt"
    assert find_checkpoints(StoragePath.parse(first)) == [first]
    assert find_checkpoints(StoragePath.parse(tmp_path / "nothing")) == []


def test_eval_of_two_seeds_in_process_and_of_mismatched_runs(tmp_path, capsys):
    write_run(tmp_path / "s0", seed=0)
    write_run(tmp_path / "s1", seed=1)
    args = [
        "eval",
        "--checkpoint",
        str(tmp_path / "s0"),
        "--checkpoint",
        str(tmp_path / "s1"),
        "--num_workers",
        "0",
        "--json",
        "--goals_per_class",
        "2",
        "--sampled_episodes",
        "2",
    ]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_runs"] == 2 and report["protocol"]["seeds"] == [0, 1]
    assert report["protocol"]["official"]["goals_per_class"] == 2 and 0.0 <= report["success_rate_official"] <= 1.0
    for rule in ("mean_action", "sampled"):
        for phase in ("pre", "post", "gain"):
            entry = report["overall"][rule][phase]
            assert entry["num_samples"] == 4 and set(entry) == {
                "num_seeds",
                "num_samples",
                "mean",
                "iqm",
                "mean_ci95",
                "iqm_ci95",
            }
        assert set(report["per_task"]["reach-v3"][rule]) >= {"pre", "post", "gain"}
    write_run(tmp_path / "other", seed=2, inner_lr=0.05)
    assert main(["eval", "--checkpoint", str(tmp_path / "s0"), str(tmp_path / "other"), "--num_workers", "0"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "inner_lr=0.05 differs" in error
    bad_cases = [
        (["--sampled_episodes", "11"], "--sampled_episodes=11: expected an integer in [1, 10]"),
        (
            ["--official_meta_batch_size", "3"],
            "--official_meta_batch_size=3: expected a multiple of the 1 test classes "
            "whose sub-envs per class divide --official_goals_per_class=2",
        ),
        (["--split", "validation"], "--split"),
    ]
    foreign = build_config({})
    save_checkpoint(tmp_path / "foreign", 1, {"iteration": 1, "config": foreign.to_dict(), "learner": {"policy": {}}})
    bad_cases.append(([], "not a usable metarl-ray checkpoint"))
    for extra, fragment in bad_cases:
        target = tmp_path / ("foreign" if not extra else "s0")
        assert main(["eval", "--checkpoint", str(target), "--num_workers", "0", *extra]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and fragment in error and "Traceback" not in error, error
