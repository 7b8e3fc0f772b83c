"""The rollout worker on real Meta-World, without Ray."""

import numpy as np
import pytest
import torch

from metarl_ray.config import build_config
from metarl_ray.envs import ACTION_DIM, OBS_DIM, BenchmarkTasks, TaskSampler
from metarl_ray.maml import TensorBatch, adapt
from metarl_ray.policy import build_policy, detached_params, log_prob, params_from_numpy, params_to_numpy
from metarl_ray.rollout import EvalPlan, RolloutWorker


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


def test_evaluate_names_its_rules_and_does_not_depend_on_how_goals_are_batched(setup):
    config, policy, specs, worker = setup
    params = params_to_numpy(detached_params(policy))
    plan = EvalPlan(num_adaptation_episodes=2, num_sampled_episodes=2)
    together = worker.evaluate(params, specs, plan, seed=3)
    apart = worker.evaluate(params, specs[:1], plan, seed=3) + worker.evaluate(params, specs[1:], plan, seed=3)
    for a, b in zip(together, apart):
        assert (a.slot, a.env_name, a.goal_index) == (b.slot, b.env_name, b.goal_index)
        assert a.pre_sampled_successes.shape == a.post_sampled_successes.shape == (2,)
        assert a.num_steps == (1 + 2 + 1 + 2) * 30
        np.testing.assert_allclose([a.pre_mean_return, a.post_mean_return], [b.pre_mean_return, b.post_mean_return], rtol=1e-3)
        np.testing.assert_allclose(a.post_sampled_returns, b.post_sampled_returns, rtol=1e-2)
    # Noise is keyed by (seed, goal slot): evaluating again repeats every episode exactly.
    first = together[0]
    again = worker.evaluate(params, specs[:1], plan, seed=3)[0]
    assert (first.pre_mean_return, first.post_mean_return) == (again.pre_mean_return, again.post_mean_return)
    np.testing.assert_array_equal(first.pre_sampled_returns, again.pre_sampled_returns)
    # Why one mean-action episode per goal is the whole sample: a second one from the reset is identical.
    envs, rng = worker._envs_for(specs[:1]), np.random.default_rng(0)
    twice = worker.collect(envs, [params_from_numpy(params)], [rng], num_episodes=2, deterministic=True)[0]
    np.testing.assert_array_equal(twice.rewards[0], twice.rewards[1])
    with pytest.raises(ValueError, match="num_sampled_episodes=3: expected at most"):
        worker.evaluate(params, specs[:1], EvalPlan(num_adaptation_episodes=2, num_sampled_episodes=3), seed=0)


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
