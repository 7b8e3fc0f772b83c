"""Ray Tune on real Ray, real Tune and real Meta-World at tiny budgets: a sweep, a trial SIGKILLed
mid-run and restored from its checkpoint, an interrupted experiment resumed with --resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from metarl_ray.cli.main import main
from metarl_ray.config import ConfigError
from metarl_ray.driver.tune import load_tune_spec
from metarl_ray.training.metrics import read_metrics


def write_spec(tmp_path, name, num_epochs, grid, max_episode_length=50, checkpoint_every=1, searched="inner_lr"):
    spec = {
        "name": name,
        "storage_path": str(tmp_path / "ray_results"),
        "base": {
            "benchmark": "ML1",
            "task": "reach-v3",
            "test_mode": True,
            "num_epochs": num_epochs,
            "checkpoint_every": checkpoint_every,
            "max_episode_length": max_episode_length,
        },
        "search_space": {searched: {"grid": grid}},
        "scheduler": {"type": "fifo"},
        "metric": "post_adapt/success",
        "mode": "max",
        "max_failures": 2,
        "resources_per_trial": {"rollout_workers": 1},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def metarl_tune(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "metarl_ray", "tune", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def reported_iterations(trial_dir: Path) -> list[int]:
    return [
        json.loads(line)["iteration"] for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()
    ]


def trial_dirs(experiment: Path) -> list[Path]:
    return sorted(p for p in experiment.iterdir() if p.is_dir() and p.name.startswith("trainable"))


def wait_for(predicate, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.3)
    return False


def test_shipped_search_files_are_valid():
    for path in sorted(Path(__file__).parents[2].glob("tune_configs/*.yaml")):
        spec = load_tune_spec(path)
        assert spec.metric == "post_adapt/success"
    assert {load_tune_spec(p).scheduler["type"] for p in Path(__file__).parents[2].glob("tune_configs/*.yaml")} >= {
        "asha",
        "pbt",
    }


def test_bad_search_file_is_one_clear_line(tmp_path):
    path = write_spec(tmp_path, "bad", 2, [0.1])
    data = yaml.safe_load(path.read_text())
    data["search_space"]["inner_lr"] = {"loguniform": [-1, 0.1]}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="loguniform expects low > 0"):
        load_tune_spec(path)
    data["search_space"] = {"inner_lr": {"grid": [-0.5]}}
    path.write_text(yaml.safe_dump(data))
    result = metarl_tune(str(path), cwd=tmp_path)
    assert (
        result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and "--inner_lr=-0.5" in result.stderr
    )
    assert not (tmp_path / "ray_results").exists()


def test_seed_sweep_reports_every_iteration_writes_the_best_trial_and_evaluates_pooled(tmp_path, capsys):
    path = write_spec(tmp_path, "sweep", 2, [0, 1], searched="seed")
    data = yaml.safe_load(path.read_text())
    data["base"]["num_learners"] = 2  # each trial's two tasks on two learners, inside the trial's resources
    path.write_text(yaml.safe_dump(data))
    result = metarl_tune(str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    experiment = tmp_path / "ray_results" / "sweep"
    best = json.loads((experiment / "best_trial.json").read_text())
    assert best["num_trials"] == 2 and best["num_errors"] == 0 and best["best_config"]["seed"] in (0, 1)
    for trial in trial_dirs(experiment):
        assert reported_iterations(trial) == [1, 2]
        last = json.loads((trial / "result.json").read_text().splitlines()[-1])
        assert last["learner/num_learners"] == 2
        # Each trial's run directory has its own journal and TensorBoard events (tensorboard --logdir ray_results).
        assert [r["iteration"] for r in read_metrics(trial / "run")] == [1, 2]
        assert list((trial / "run").glob("events.out.tfevents.*"))
    assert "best trial" in result.stdout
    assert "tune sweep: 4/4 it (100%)" in result.stderr  # progress: 2 trials x 2 iterations, plain lines off a terminal
    # The experiment directory is a set of seeds: metarl eval pools its trials into one estimate.
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(experiment), "--json", "--num_workers", "0", "--no_official"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_runs"] == 2 and sorted(report["protocol"]["seeds"]) == [0, 1]
    assert report["overall"]["sampled"]["post"]["num_samples"] == 2 * 2  # 2 seeds x 2 test-mode goals


@pytest.mark.slow  # a long fault scenario: `make test-slow` (CI time, issue 7)
def test_sigkilled_trial_restores_from_its_checkpoint_and_finishes(tmp_path):
    path = write_spec(tmp_path, "killed", 8, [0.1], max_episode_length=500, checkpoint_every=2)
    process = subprocess.Popen(
        [sys.executable, "-m", "metarl_ray", "tune", str(path)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    experiment = tmp_path / "ray_results" / "killed"

    def results():
        files = list(experiment.glob("trainable*/result.json")) if experiment.exists() else []
        return [json.loads(line) for line in files[0].read_text().splitlines() if line.strip()] if files else []

    assert wait_for(lambda: any(r["iteration"] >= 3 for r in results())), "trial never reached iteration 3"
    os.kill(results()[-1]["pid"], signal.SIGKILL)  # Tune records the trial process's pid in every result
    _, stderr = process.communicate(timeout=400)
    assert process.returncode == 0, stderr[-3000:]
    lines = [
        json.loads(line)
        for line in (trial_dirs(experiment)[0] / "result.json").read_text().splitlines()
        if line.strip()
    ]
    restart = next(
        i for i, line in enumerate(lines) if line["pid"] != lines[0]["pid"]
    )  # first report of the new process
    before, after = lines[restart - 1]["iteration"], lines[restart]["iteration"]
    # Checkpoints every 2 iterations: the restart continues right after a checkpoint, never before the
    # latest reported one. Under load the kill can land after the next iteration was checkpointed but
    # before Tune recorded its report; the restart then continues after that newer checkpoint.
    assert after % 2 == 1 and before // 2 * 2 + 1 <= after <= before + 2, (before, after)
    iterations = [line["iteration"] for line in lines]
    assert iterations[-1] == 8


@pytest.mark.slow  # a long fault scenario: `make test-slow` (CI time, issue 7)
def test_interrupted_experiment_completes_with_resume(tmp_path):
    path = write_spec(tmp_path, "interrupted", 4, [0.05, 0.1], max_episode_length=500)
    process = subprocess.Popen(
        [sys.executable, "-m", "metarl_ray", "tune", str(path)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    experiment = tmp_path / "ray_results" / "interrupted"
    assert wait_for(
        lambda: (
            experiment.exists()
            and any(
                (t / "result.json").is_file() and (t / "result.json").read_text().strip()
                for t in trial_dirs(experiment)
            )
        )
    )
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "--resume" in stderr, stderr[-2000:]
    assert not (experiment / "best_trial.json").exists()
    result = metarl_tune(str(path), "--resume", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(reported_iterations(trial)[-1] == 4 for trial in trial_dirs(experiment))
    assert json.loads((experiment / "best_trial.json").read_text())["num_trials"] == 2


@pytest.mark.slow  # a long fault scenario: `make test-slow` (CI time, issue 7)
def test_pbt_perturbs_inner_and_meta_lr_of_running_trials_from_checkpoints(tmp_path):
    path = write_spec(tmp_path, "pbt", 3, [0.05, 0.1], max_episode_length=30)
    data = yaml.safe_load(path.read_text())
    data["metric"] = "post_adapt/return"
    # Synchronous PBT: every trial waits (paused, checkpointed) at each perturbation point until the whole
    # population is there, then the bottom half exploits the top half. On 2 cores the two trials run one
    # at a time; asynchronous PBT would exploit only if a score happened to fall below the other's.
    data["scheduler"] = {
        "type": "pbt",
        "synch": True,
        "perturbation_interval": 1,
        "quantile_fraction": 0.5,
        "resample_probability": 1.0,
        "hyperparam_mutations": {"inner_lr": {"loguniform": [0.01, 0.3]}, "meta_lr": {"loguniform": [0.0001, 0.003]}},
    }
    path.write_text(yaml.safe_dump(data))
    result = metarl_tune(str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    experiment = tmp_path / "ray_results" / "pbt"
    assert json.loads((experiment / "best_trial.json").read_text())["num_errors"] == 0
    changed = []
    for trial in trial_dirs(experiment):
        lines = [json.loads(line) for line in (trial / "result.json").read_text().splitlines() if line.strip()]
        changed.append(len({(line["config"]["inner_lr"], line["config"]["meta_lr"]) for line in lines}) > 1)
        assert lines[-1]["iteration"] == 3
    assert any(changed)  # some trial continued from a checkpoint with perturbed inner_lr / meta_lr
