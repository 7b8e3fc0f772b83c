"""Multi-task PPO on real Meta-World and real Ray: its loss, its meta-test without adaptation, and
``metarl train --algorithm mt_ppo`` end to end (train, exact resume, ``metarl eval`` with Meta-World's
own evaluation, ML and MT)."""

import json
import math

import numpy as np
import pytest
import torch

from metarl_ray.algorithms.mt_ppo import MultiTaskPPO
from metarl_ray.config import build_config
from metarl_ray.envs.metaworld import BenchmarkTasks, TaskSampler
from metarl_ray.policies.common import detached_params, params_to_numpy
from metarl_ray.training.metrics import read_metrics
from metarl_ray.training.rollout import EvalPlan, RolloutWorker


@pytest.fixture(scope="module")
def setup():
    config = build_config(
        {
            "env": {"benchmark": "ML10", "max_episode_length": 30},
            "maml": {"num_tasks": 3, "episodes_per_task": 2},
            "meta_learner": {"algorithm": "mt_ppo"},
        }
    )
    worker = RolloutWorker(config.env, config.policy, config.maml, config.ppo, 0, config.meta_learner)
    specs = TaskSampler(BenchmarkTasks(config.env, 0).train_tasks(), 0).sample(3)
    return config, worker, specs


def test_samples_the_episodes_maml_spends_and_starts_at_minus_the_mean_advantage(setup):
    config, worker, specs = setup
    rollouts = worker.sample(params_to_numpy(detached_params(worker.policy)), specs, iteration=0)
    # episodes_per_task x (num_inner_steps + 1) episodes of 30 steps, as MAML+PPO's support + query.
    assert [task.num_steps for task in rollouts] == [2 * 2 * 30] * 3
    before, after = rollouts[0].before_and_after_adaptation()
    assert before is after
    objective = MultiTaskPPO(worker.policy, config.ppo)
    tasks = [objective.tensors(task, torch.device("cpu")) for task in rollouts]
    assert len(list(objective.optimizer_steps(tasks, np.random.default_rng(0)))) == config.ppo.num_ppo_epochs
    # At the sampling parameters every ratio is 1: the clipped surrogate is -mean(A) per task, and its
    # gradient the policy gradient (not zero).
    loss, stats = objective.loss(tasks)
    expected = -np.mean([task.episodes.advantages.mean() for task in rollouts])
    assert float(loss) == pytest.approx(expected, abs=1e-5)
    assert stats["ppo/kl"] == pytest.approx(0.0, abs=1e-6) and stats["ppo/clip_fraction"] == 0.0
    # One batched pass over the tasks is the mean of each task's own loss.
    per_task = [float(objective.loss([task])[0]) for task in tasks]
    assert float(loss) == pytest.approx(np.mean(per_task), abs=1e-6)
    loss.backward()
    assert float(worker.policy.log_std.grad.abs().sum()) > 0.0


def test_meta_test_without_adaptation_has_no_gain_and_no_adaptation_episodes(setup):
    _, worker, specs = setup
    results = worker.evaluate(params_to_numpy(detached_params(worker.policy)), specs, EvalPlan(), seed=0)
    for goal in results:
        assert goal.pre_mean_return == goal.post_mean_return and goal.pre_mean_success == goal.post_mean_success
        np.testing.assert_array_equal(goal.pre_sampled_returns, goal.post_sampled_returns)
        assert len(goal.post_sampled_returns) == 3 and goal.num_steps == (1 + 3) * 30


def test_multi_task_ppo_trains_resumes_exactly_and_evaluates(tmp_path, in_process):
    runs = str(tmp_path / "runs")
    common = ["--algorithm", "mt_ppo", "--env_name", "ML10", "--test_mode", "--output_dir", runs]
    assert in_process("train", *common, "--num_epochs", "3", "--run_name", "straight")[0] == 0
    assert in_process("train", *common, "--num_epochs", "2", "--run_name", "interrupted")[0] == 0
    assert (
        in_process("train", "--resume", "--run_name", "interrupted", "--output_dir", runs, "--num_epochs", "3")[0] == 0
    )
    straight, resumed = read_metrics(tmp_path / "runs" / "straight"), read_metrics(tmp_path / "runs" / "interrupted")
    assert [row["iteration"] for row in resumed] == [1, 2, 3]
    for key in ("pre_adapt/return", "loss/outer", "ppo/kl", "policy/std", "rollout/env_steps_total"):
        assert resumed[2][key] == pytest.approx(straight[2][key], rel=1e-6, abs=1e-9), key
    assert all(row["pre_adapt/return"] == row["post_adapt/return"] for row in resumed)
    status, out, _ = in_process(
        "eval", "--checkpoint", tmp_path / "runs" / "interrupted", "--json", "--num_workers", "0"
    )
    result = json.loads(out)
    assert status == 0 and result["protocol"]["algorithm"] == "mt_ppo" and result["protocol"]["num_inner_steps"] == 0
    assert math.isfinite(result["success_rate_official"]) and result["success_rate"] == result["pre_adapt_success_rate"]
    # MT: Meta-World's ``evaluation`` scores the same agent.
    assert (
        in_process(
            "train",
            *common[:2],
            "--env_name",
            "MT1",
            "--test_mode",
            "--output_dir",
            runs,
            "--num_epochs",
            "1",
            "--run_name",
            "mt",
        )[0]
        == 0
    )
    status, out, _ = in_process("eval", "--checkpoint", tmp_path / "runs" / "mt", "--json", "--num_workers", "0")
    assert status == 0 and math.isfinite(json.loads(out)["success_rate_official"])
