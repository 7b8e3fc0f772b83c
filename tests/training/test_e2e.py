"""End to end on real Ray and real Meta-World: train (2 rollout workers), resume, evaluate.

The first run and its evaluation go through the CLI in a subprocess, as users type them; the other
runs call the same ``main`` in this process on the module's Ray (``in_process``, conftest.py)."""

import json
import math
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from metarl_ray.training.metrics import read_metrics

TEST_MODE_STEPS_PER_ITERATION = 2 * 2 * 50 * 2  # tasks x episodes x steps x (support + query)


def metarl(*args, cwd):
    result = subprocess.run(
        [sys.executable, "-m", "metarl_ray", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    metarl(
        "train",
        "--env_name",
        "ML1",
        "--task",
        "reach-v3",
        "--test_mode",
        "--output_dir",
        str(root / "runs"),
        "--run_name",
        "smoke",
        cwd=root,
    )
    return root, root / "runs" / "smoke"


def test_train_writes_config_metrics_log_and_checkpoint(trained_run):
    _, run = trained_run
    assert (run / "config.yaml").is_file() and (run / "train.log").is_file()
    assert (run / "checkpoints" / "checkpoint_000002.pt").is_file()
    rows = read_metrics(run)
    assert [row["iteration"] for row in rows] == [1, 2]
    assert all(row["rollout/env_steps"] == TEST_MODE_STEPS_PER_ITERATION for row in rows)
    assert rows[-1]["rollout/env_steps_total"] == 2 * TEST_MODE_STEPS_PER_ITERATION
    for key in (
        "pre_adapt/return",
        "post_adapt/return",
        "pre_adapt/success",
        "post_adapt/success",
        "loss/outer",
        "ppo/kl",
        "time/sample_s",
        "time/learn_s",
    ):
        assert all(math.isfinite(row[key]) for row in rows), key
    # Resident memory of every process kind, per iteration (a Python process with torch is > 100 MB).
    for key in ("memory/driver_rss_mb", "memory/learner_rss_mb", "memory/rollout_rss_mb_max"):
        assert all(100 < row[key] < 20_000 for row in rows), key
    assert all(row["fault/env_faults"] == 0 and row["fault/oom_retries"] == 0 for row in rows)
    assert "iter 2/2" in (run / "train.log").read_text()


def test_resume_continues_the_iteration_counter_and_eval_reports_both_metrics(trained_run, in_process):
    root, run = trained_run
    assert (
        in_process("train", "--resume", "--run_name", "smoke", "--output_dir", root / "runs", "--num_epochs", "3")[0]
        == 0
    )
    rows = read_metrics(run)
    assert [row["iteration"] for row in rows] == [1, 2, 3]
    assert rows[-1]["rollout/env_steps_total"] == 3 * TEST_MODE_STEPS_PER_ITERATION
    assert (run / "checkpoints" / "checkpoint_000003.pt").is_file()
    assert "resumed" in (run / "train.log").read_text()
    # TensorBoard's own reader sees every iteration of both sessions, at their env steps, with the
    # journal's values (TensorBoard stores float32).
    events = EventAccumulator(str(run))
    events.Reload()
    assert {"post_adapt/success", "loss/outer", "time/sample_s"} <= set(events.Tags()["scalars"])
    scalars = events.Scalars("post_adapt/return")
    assert [event.step for event in scalars] == [row["rollout/env_steps_total"] for row in rows]
    assert [event.value for event in scalars] == pytest.approx([row["post_adapt/return"] for row in rows], rel=1e-6)

    evaluated = metarl("eval", "--checkpoint", str(run), "--json", cwd=root)  # on Ray rollout actors
    assert "meta-test: 4/4 goals (100%)" in evaluated.stderr  # 2 goals + 2 official; plain lines off a terminal
    result = json.loads(evaluated.stdout)
    for key in ("benchmark", "success_rate", "success_rate_official", "mean_return", "per_task"):
        assert key in result
    assert result["benchmark"] == "ML1" and result["protocol"]["split"] == "test"
    for key in (
        "success_rate",
        "success_rate_official",
        "mean_return",
        "mean_return_official",
        "pre_adapt_success_rate",
    ):
        assert math.isfinite(result[key]) and (key.startswith("mean") or 0.0 <= result[key] <= 1.0), key
    assert set(result["per_task"]) == {"reach-v3"}


def test_multi_task_benchmark_trains_and_evaluates_with_metaworlds_mt_protocol(tmp_path, in_process):
    assert (
        in_process(
            "train",
            "--env_name",
            "MT1",
            "--task",
            "reach-v3",
            "--test_mode",
            "--num_epochs",
            "1",
            "--output_dir",
            tmp_path / "runs",
            "--run_name",
            "mt",
        )[0]
        == 0
    )
    status, out, _ = in_process("eval", "--checkpoint", tmp_path / "runs" / "mt", "--json", "--num_workers", "0")
    result = json.loads(out)
    assert result["benchmark"] == "MT1" and result["protocol"]["split"] == "train"
    assert math.isfinite(result["success_rate_official"]) and math.isfinite(result["mean_return_official"])
    assert set(result["per_task"]) == {"reach-v3"}


def test_resume_refuses_what_would_lose_results_or_swap_goals(trained_run, in_process):
    root, run = trained_run
    runs = str(root / "runs")
    cases = [
        (["--resume", "--run_name", "smoke", "--output_dir", runs, "--num_epochs", "2"], "already at iteration"),
        (
            ["--checkpoint_path", str(run / "checkpoints" / "checkpoint_000001.pt"), "--num_epochs", "9"],
            "not the latest checkpoint",
        ),
        (
            ["--resume", "--run_name", "smoke", "--output_dir", runs, "--num_epochs", "9", "--seed", "5"],
            "--seed=5: differs",
        ),
        (
            ["--resume", "--run_name", "smoke", "--output_dir", runs, "--num_epochs", "9", "--hidden_size", "7"],
            "--hidden_size=7: differs",
        ),
    ]
    before = sorted(p.name for p in (run / "checkpoints").iterdir()), (run / "metrics.jsonl").read_bytes()
    for args, fragment in cases:
        status, _, err = in_process("train", *args)
        assert status == 2 and fragment in err and len(err.strip().splitlines()) == 1, err
    assert (sorted(p.name for p in (run / "checkpoints").iterdir()), (run / "metrics.jsonl").read_bytes()) == before


def test_doctor_passes_on_this_install(tmp_path):
    result = metarl("doctor", cwd=tmp_path)
    assert "all checks passed" in result.stdout and "FAIL" not in result.stdout


def test_ssm_policy_trains_resumes_and_evaluates(tmp_path, in_process):
    runs = str(tmp_path / "runs")
    assert (
        in_process(
            "train",
            "--env_name",
            "ML1",
            "--task",
            "reach-v3",
            "--policy_type",
            "ssm",
            "--test_mode",
            "--output_dir",
            runs,
            "--run_name",
            "ssm",
        )[0]
        == 0
    )
    assert in_process("train", "--resume", "--run_name", "ssm", "--output_dir", runs, "--num_epochs", "3")[0] == 0
    rows = read_metrics(tmp_path / "runs" / "ssm")
    assert [row["iteration"] for row in rows] == [1, 2, 3]
    assert all(
        math.isfinite(row["loss/outer"]) and row["rollout/env_steps"] == TEST_MODE_STEPS_PER_ITERATION for row in rows
    )
    status, out, _ = in_process("eval", "--checkpoint", tmp_path / "runs" / "ssm", "--json", "--num_workers", "0")
    result = json.loads(out)
    assert math.isfinite(result["success_rate_official"]) and math.isfinite(result["mean_return"])


def test_resumed_run_equals_uninterrupted_run(tmp_path, in_process):
    runs = str(tmp_path / "runs")
    common = [
        "--env_name",
        "ML1",
        "--task",
        "reach-v3",
        "--test_mode",
        "--max_episode_length",
        "20",
        "--output_dir",
        runs,
    ]
    assert in_process("train", *common, "--num_epochs", "3", "--run_name", "straight")[0] == 0
    assert in_process("train", *common, "--num_epochs", "2", "--run_name", "interrupted")[0] == 0
    assert (
        in_process("train", "--resume", "--run_name", "interrupted", "--output_dir", runs, "--num_epochs", "3")[0] == 0
    )
    straight = read_metrics(tmp_path / "runs" / "straight")
    resumed = read_metrics(tmp_path / "runs" / "interrupted")
    for key in (
        "pre_adapt/return",
        "post_adapt/return",
        "loss/outer",
        "ppo/kl",
        "policy/std",
        "rollout/env_steps_total",
    ):
        assert resumed[2][key] == pytest.approx(straight[2][key], rel=1e-6, abs=1e-9), key


@pytest.mark.slow  # a long fault scenario: `make test-slow` (CI time, issue 7)
def test_resume_skips_a_corrupted_latest_checkpoint_with_a_clear_message(tmp_path):
    runs = str(tmp_path / "runs")
    metarl(
        "train",
        "--env_name",
        "ML1",
        "--task",
        "reach-v3",
        "--test_mode",
        "--max_episode_length",
        "20",
        "--output_dir",
        runs,
        "--run_name",
        "c",
        cwd=tmp_path,
    )
    latest = tmp_path / "runs" / "c" / "checkpoints" / "checkpoint_000002.pt"
    latest.write_bytes(latest.read_bytes()[:1000])  # truncated
    result = metarl("train", "--resume", "--run_name", "c", "--output_dir", runs, "--num_epochs", "3", cwd=tmp_path)
    warning = [line for line in result.stderr.splitlines() if "checksum mismatch" in line]
    assert len(warning) == 1 and "using checkpoint_000001.pt" in warning[0]
    rows = read_metrics(tmp_path / "runs" / "c")
    assert [row["iteration"] for row in rows] == [1, 2, 3]
