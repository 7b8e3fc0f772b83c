"""Fault tolerance on real Ray and real Meta-World: a rollout actor SIGKILLed mid-run, a hung actor."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import ray

from metarl_ray.config import build_config
from metarl_ray.distributed.rollout_pool import RolloutPool
from metarl_ray.driver.trainer import split_tasks
from metarl_ray.envs.metaworld import BenchmarkTasks, TaskSampler
from metarl_ray.policies import build_policy
from metarl_ray.policies.common import detached_params, params_to_numpy
from metarl_ray.training.metrics import read_metrics


def placement(run_path):
    """The run's own record of its processes (so only this run's actors are touched)."""
    return json.loads((run_path / "placement.json").read_text())


def test_sigkilled_rollout_actor_loses_no_episodes(tmp_path):
    steps_per_iteration = 2 * 2 * 300 * 2  # tasks x episodes x steps x (support + query)
    command = [
        sys.executable,
        "-m",
        "metarl_ray",
        "train",
        "--env_name",
        "ML1",
        "--task",
        "reach-v3",
        "--test_mode",
        "--max_episode_length",
        "300",
        "--num_epochs",
        "4",
        "--output_dir",
        str(tmp_path),
        "--run_name",
        "ft",
    ]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "ft" / "train.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (log.is_file() and "iter 1/4" in log.read_text()):
        time.sleep(0.2)
    os.kill(placement(tmp_path / "ft")["rollout_workers"][0]["pid"], signal.SIGKILL)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-2000:]
    rows = read_metrics(tmp_path / "ft")
    assert [row["iteration"] for row in rows] == [1, 2, 3, 4]
    assert all(row["rollout/env_steps"] == steps_per_iteration for row in rows)
    assert rows[-1]["rollout/workers_replaced"] >= 1
    assert "sampled again on a new worker" in log.read_text()


@ray.remote(num_cpus=1)
class HangingActor:
    @ray.method(num_returns=2)
    def sample(self, *args):
        time.sleep(3600)
        return 0, []


@pytest.fixture
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def test_hung_actor_times_out_and_its_tasks_are_sampled_again(local_ray):
    from metarl_ray.distributed.actors import RolloutActor

    config = build_config({"env": {"max_episode_length": 20}, "maml": {"num_tasks": 2, "episodes_per_task": 1}})
    specs = TaskSampler(BenchmarkTasks(config.env, 0).train_tasks(), 0).sample(2)
    params = ray.put(params_to_numpy(detached_params(build_policy(39, 4, config.policy))))
    # The replacement is started and has built its envs before the pool needs it: the 3 s timeout is
    # for a hung sample call, and a cold actor (imports, env creation) can take longer on a loaded machine.
    replacement = RolloutActor.options(num_cpus=1).remote(config.env, config.policy, config.maml, config.ppo, 0)
    ray.get(replacement.sample.remote(params, specs, 99)[0])
    made = []

    def make_actor():
        # The first actor hangs; the replacement is the warm real rollout actor.
        actor = HangingActor.remote() if not made else replacement
        made.append(actor)
        return actor

    pool = RolloutPool(make_actor, num_workers=1, timeout_s=3.0)
    refs, steps = pool.sample(params, split_tasks(specs, 1), iteration=0)
    assert steps == 2 * 1 * 20 * 2 and pool.num_replaced == 1
    assert [task.slot for task in ray.get(refs[0])] == [0, 1]


def test_sigkilled_learner_restarts_from_the_latest_checkpoint(tmp_path):
    command = [
        sys.executable,
        "-m",
        "metarl_ray",
        "train",
        "--env_name",
        "ML1",
        "--task",
        "reach-v3",
        "--test_mode",
        "--max_episode_length",
        "300",
        "--num_epochs",
        "5",
        "--checkpoint_every",
        "2",
        "--output_dir",
        str(tmp_path),
        "--run_name",
        "learner",
    ]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "learner" / "train.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (log.is_file() and "iter 3/5" in log.read_text()):
        time.sleep(0.2)
    learner = placement(tmp_path / "learner")["learner"]
    assert learner["device"] == "cpu"
    os.kill(learner["pid"], signal.SIGKILL)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-2000:]
    text = log.read_text()
    assert "restarting from checkpoint_000002.pt" in text  # never back past the latest checkpoint
    rows = read_metrics(tmp_path / "learner")
    assert [row["iteration"] for row in rows] == [1, 2, 3, 4, 5]
    assert rows[-1]["rollout/env_steps_total"] == 5 * 2 * 2 * 300 * 2
