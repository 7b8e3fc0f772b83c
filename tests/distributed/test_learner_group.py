"""Several learners on real Ray: gradients all-reduced (gloo) so every learner holds bit-identical
parameters, equal to one learner's to float tolerance; a learner SIGKILLed mid-run is recovered."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import ray

from metarl_ray.config import build_config
from metarl_ray.distributed.learner_group import LEARNER_ALLOCATOR_ENV, LearnerGroup
from metarl_ray.envs.metaworld import BenchmarkTasks, TaskSampler
from metarl_ray.training.learner import Learner
from metarl_ray.training.metrics import read_metrics
from metarl_ray.training.rollout import RolloutWorker

CONFIG = build_config(
    {
        "env": {"max_episode_length": 20},
        "maml": {"num_tasks": 5, "episodes_per_task": 2},
        "ppo": {"num_ppo_epochs": 2},
        "policy": {"hidden_size": 32},
        "learner": {"num_learners": 2},
    }
)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def rollouts():
    """Real Meta-World rollouts of 5 tasks, sampled once with the initial meta-parameters."""
    worker = RolloutWorker(CONFIG.env, CONFIG.policy, CONFIG.maml, CONFIG.ppo, seed=0)
    specs = TaskSampler(BenchmarkTasks(CONFIG.env, 0).train_tasks(), 0).sample(CONFIG.maml.num_tasks)
    learner = Learner(CONFIG.policy, CONFIG.maml, CONFIG.ppo, CONFIG.run.seed, "cpu", CONFIG.learner)
    return worker.sample(learner.get_params(), specs, iteration=0)


def test_two_learners_hold_bit_identical_parameters_equal_to_one_learner(local_ray, rollouts):
    group = LearnerGroup(CONFIG, "cpu", {"num_cpus": 0}, num_threads_each=1)
    try:
        # Three "workers" whose slot ranges straddle the learners' shares ([0, 3) and [3, 5)).
        ranges = [(0, 2), (2, 4), (4, 5)]
        refs = [ray.put([task for task in rollouts if first <= task.slot < end]) for first, end in ranges]
        for _ in range(3):
            result = group.update(refs, ranges)
        params = ray.get([actor.get_params.remote() for actor in group.actors])
        # The learner processes started with the malloc settings that keep freed memory for reuse.
        environments = ray.get([actor.__ray_call__.remote(lambda self: dict(os.environ)) for actor in group.actors])
    finally:
        group.shutdown()
    for name in params[0]:
        assert np.array_equal(params[0][name], params[1][name]), name
    for environment in environments:
        assert {k: environment.get(k) for k in LEARNER_ALLOCATOR_ENV} == LEARNER_ALLOCATOR_ENV

    single = Learner(CONFIG.policy, CONFIG.maml, CONFIG.ppo, CONFIG.run.seed, "cpu", CONFIG.learner)
    for _ in range(3):
        expected = single.update(rollouts)
    for name, value in single.get_params().items():
        np.testing.assert_allclose(params[0][name], value, rtol=1e-4, atol=1e-6, err_msg=name)
    merged = result.metrics
    assert result.env_steps == expected["rollout/env_steps"] and result.lr_scale == 1.0 and not result.update_undone
    assert merged["learner/num_learners"] == 2
    assert merged["rollout/env_steps"] == expected["rollout/env_steps"]
    for key in ("loss/outer", "ppo/kl", "pre_adapt/return", "post_adapt/success", "ppo/grad_norm"):
        assert merged[key] == pytest.approx(expected[key], rel=1e-3, abs=1e-6), key


def metarl(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "metarl_ray", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow  # a long fault scenario: `make test-slow` (CI time, issue 7)
def test_two_learners_with_amp_and_accumulation_survive_a_killed_learner_resume_on_one_and_evaluate(tmp_path):
    """The issue's command (--test_mode --num_learners 2 --use_amp --gradient_accumulation_steps 2), made
    long enough to SIGKILL learner 1 mid-run; then resumed with one learner from a file:// URI; then eval."""
    command = [
        sys.executable,
        "-m",
        "metarl_ray",
        "train",
        "--test_mode",
        "--num_learners",
        "2",
        "--use_amp",
        "--gradient_accumulation_steps",
        "2",
        "--max_episode_length",
        "300",
        "--num_epochs",
        "5",
        "--checkpoint_every",
        "2",
        "--output_dir",
        str(tmp_path / "runs"),
        "--run_name",
        "learners",
    ]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "runs" / "learners"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (
        (run / "train.log").is_file() and "iter 3/5" in (run / "train.log").read_text()
    ):
        time.sleep(0.2)
    learners = json.loads((run / "placement.json").read_text())["learners"]
    assert len(learners) == 2 and len({entry["pid"] for entry in learners}) == 2
    os.kill(learners[1]["pid"], signal.SIGKILL)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-2000:]
    assert "restarting from checkpoint_000002.pt" in (run / "train.log").read_text()
    new_learners = json.loads((run / "placement.json").read_text())["learners"]
    assert {entry["pid"] for entry in new_learners}.isdisjoint(entry["pid"] for entry in learners)

    output = f"file://{tmp_path}/runs"
    resumed = metarl(
        "train",
        "--resume",
        "--test_mode",
        "--num_learners",
        "1",
        "--use_amp",
        "--max_episode_length",
        "300",
        "--num_epochs",
        "6",
        "--output_dir",
        output,
        "--run_name",
        "learners",
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    rows = read_metrics(run)
    assert [row["iteration"] for row in rows] == [1, 2, 3, 4, 5, 6]
    assert [row["learner/num_learners"] for row in rows] == [2, 2, 2, 2, 2, 1]
    assert rows[-1]["rollout/env_steps_total"] == 6 * 2 * 2 * 300 * 2  # nothing lost or counted twice
    evaluated = metarl(
        "eval",
        "--checkpoint",
        f"{output}/learners",
        "--json",
        "--goals_per_class",
        "2",
        "--no_official",
        "--num_workers",
        "0",
        cwd=tmp_path,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert 0.0 <= json.loads(evaluated.stdout.strip().splitlines()[-1])["success_rate"] <= 1.0
