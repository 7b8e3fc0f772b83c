"""The rollout worker on real Meta-World, without Ray."""

import numpy as np
import pytest
import torch

from metarl_ray.config import build_config
from metarl_ray.envs import ACTION_DIM, OBS_DIM, BenchmarkTasks, TaskSampler
from metarl_ray.maml import TensorBatch, adapt
from metarl_ray.policy import build_policy, detached_params, log_prob, params_to_numpy
from metarl_ray.rollout import RolloutWorker, SamplePlan


@pytest.fixture(scope="module")
def setup():
    config = build_config({"env": {"max_episode_length": 30}, "maml": {"num_tasks": 3, "episodes_per_task": 2}})
    torch.manual_seed(0)
    policy = build_policy(OBS_DIM, ACTION_DIM, config.policy)
    specs = TaskSampler(BenchmarkTasks(config.env, 0).train_tasks(), 0).sample(3)
    worker = RolloutWorker(config.env, config.policy, config.maml, config.ppo, seed=0)
    return config, policy, specs, worker


def test_shapes_and_step_counts(setup):
    config, policy, specs, worker = setup
    rollouts = worker.sample(params_to_numpy(detached_params(policy)), specs, iteration=0)
    assert [r.slot for r in rollouts] == [0, 1, 2]
    for task in rollouts:
        assert len(task.support) == 1
        assert task.query.observations.shape == (2, 30, OBS_DIM) and task.query.actions.shape == (2, 30, ACTION_DIM)
        assert task.num_steps == 2 * 2 * 30
        assert np.all(np.isfinite(task.query.rewards)) and task.query.successes.dtype == bool


def test_recorded_log_probs_equal_training_recomputation_and_adaptation_is_reproduced(setup):
    config, policy, specs, worker = setup
    meta = detached_params(policy)
    task = worker.sample(params_to_numpy(meta), specs[:1], iteration=1)[0]
    support = TensorBatch.from_numpy(task.support[0])
    recomputed = log_prob(policy, meta, support.observations, support.actions)
    torch.testing.assert_close(recomputed, support.log_probs, atol=1e-4, rtol=1e-5)
    # The learner re-derives the worker's adaptation from the same data: query log-probs match too.
    adapted = adapt(policy, {k: v.requires_grad_() for k, v in detached_params(policy).items()}, [support],
                    config.maml.inner_lr, create_graph=False)
    query = TensorBatch.from_numpy(task.query)
    torch.testing.assert_close(log_prob(policy, adapted, query.observations, query.actions).detach(), query.log_probs,
                               atol=1e-4, rtol=1e-5)


def test_results_do_not_depend_on_how_tasks_are_split(setup):
    config, policy, specs, worker = setup
    params = params_to_numpy(detached_params(policy))
    together = worker.sample(params, specs, iteration=2)
    apart = worker.sample(params, specs[:1], iteration=2) + worker.sample(params, specs[1:], iteration=2)
    # Same noise streams and goals; only float rounding of a batch-of-3 vs batch-of-1 forward differs.
    for a, b in zip(together, apart):
        np.testing.assert_allclose(a.support[0].actions[:, :5], b.support[0].actions[:, :5], atol=1e-5)
        np.testing.assert_allclose(a.query.episode_returns, b.query.episode_returns, rtol=1e-2)


def test_deterministic_query_without_adaptation(setup):
    config, policy, specs, worker = setup
    plan = SamplePlan(num_support_episodes=1, num_query_episodes=2, deterministic_query=True, adapt=False)
    task = worker.sample(params_to_numpy(detached_params(policy)), specs[:1], iteration=0, plan=plan)[0]
    assert task.support == ()
    np.testing.assert_allclose(task.query.rewards[0], task.query.rewards[1], rtol=1e-6)  # same goal, same actions


def test_ssm_log_probs_recorded_step_by_step_equal_the_training_scan():
    config = build_config({"env": {"max_episode_length": 40}, "maml": {"num_tasks": 2, "episodes_per_task": 2},
                           "policy": {"policy_type": "ssm", "hidden_size": 32, "state_size": 8}})
    torch.manual_seed(0)
    policy = build_policy(OBS_DIM, ACTION_DIM, config.policy)
    specs = TaskSampler(BenchmarkTasks(config.env, 0).train_tasks(), 0).sample(2)
    worker = RolloutWorker(config.env, config.policy, config.maml, config.ppo, seed=0)
    meta = detached_params(policy)
    for task in worker.sample(params_to_numpy(meta), specs, iteration=0):
        support = TensorBatch.from_numpy(task.support[0])
        torch.testing.assert_close(log_prob(policy, meta, support.observations, support.actions), support.log_probs,
                                   atol=1e-4, rtol=1e-5)
        # After adaptation (per-env parameters in the rollout) the query log-probs match as well.
        adapted = adapt(policy, {k: v.clone().requires_grad_() for k, v in meta.items()}, [support],
                        config.maml.inner_lr, create_graph=False)
        query = TensorBatch.from_numpy(task.query)
        torch.testing.assert_close(log_prob(policy, adapted, query.observations, query.actions).detach(),
                                   query.log_probs, atol=1e-4, rtol=1e-5)
