"""The rollout worker on real Meta-World, without Ray."""

import numpy as np
import pytest
import torch

from metarl_ray.algorithms.maml_ppo import TensorBatch, adapt
from metarl_ray.config import build_config
from metarl_ray.envs.metaworld import ACTION_DIM, OBS_DIM, BenchmarkTasks, TaskSampler
from metarl_ray.errors import EnvFaultError
from metarl_ray.policies import build_policy
from metarl_ray.policies.common import detached_params, log_prob, params_from_numpy, params_to_numpy
from metarl_ray.training.rollout import EvalPlan, RolloutWorker


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
    adapted = adapt(
        policy,
        {k: v.requires_grad_() for k, v in detached_params(policy).items()},
        [support],
        config.maml.inner_lr,
        create_graph=False,
    )
    query = TensorBatch.from_numpy(task.query)
    torch.testing.assert_close(
        log_prob(policy, adapted, query.observations, query.actions).detach(), query.log_probs, atol=1e-4, rtol=1e-5
    )


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
        np.testing.assert_allclose(
            [a.pre_mean_return, a.post_mean_return], [b.pre_mean_return, b.post_mean_return], rtol=1e-3
        )
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
    config = build_config(
        {
            "env": {"max_episode_length": 40},
            "maml": {"num_tasks": 2, "episodes_per_task": 2},
            "policy": {"policy_type": "ssm", "hidden_size": 32, "state_size": 8},
        }
    )
    torch.manual_seed(0)
    policy = build_policy(OBS_DIM, ACTION_DIM, config.policy)
    specs = TaskSampler(BenchmarkTasks(config.env, 0).train_tasks(), 0).sample(2)
    worker = RolloutWorker(config.env, config.policy, config.maml, config.ppo, seed=0)
    meta = detached_params(policy)
    for task in worker.sample(params_to_numpy(meta), specs, iteration=0):
        support = TensorBatch.from_numpy(task.support[0])
        torch.testing.assert_close(
            log_prob(policy, meta, support.observations, support.actions), support.log_probs, atol=1e-4, rtol=1e-5
        )
        # After adaptation (per-env parameters in the rollout) the query log-probs match as well.
        adapted = adapt(
            policy,
            {k: v.clone().requires_grad_() for k, v in meta.items()},
            [support],
            config.maml.inner_lr,
            create_graph=False,
        )
        query = TensorBatch.from_numpy(task.query)
        torch.testing.assert_close(
            log_prob(policy, adapted, query.observations, query.actions).detach(), query.log_probs, atol=1e-4, rtol=1e-5
        )


class FaultyEnv:
    """A real Meta-World env that fails once, at a chosen step: by raising (as a MuJoCo instability
    does) or by returning a NaN observation."""

    def __init__(self, env, fail_at_step, mode):
        self.env, self.fail_at_step, self.mode, self.steps = env, fail_at_step, mode, 0

    def __getattr__(self, name):
        return getattr(self.env, name)

    def step(self, action):
        self.steps += 1
        out = self.env.step(action)
        if self.steps == self.fail_at_step:
            if self.mode == "raise":
                raise ValueError("MuJoCo Warning: Nan, Inf or huge value in QACC (injected)")
            return (np.full_like(out[0], np.nan), *out[1:])
        return out


def inject_fault(worker, specs, index, fail_at_step, mode):
    """Make the env that ``specs[index]`` steps in a ``sample(..., specs)`` call fail once."""
    env = worker._envs_for(specs)[index]  # creates the envs if needed
    pool = worker._env_pool[specs[index].env_name]
    position = next(i for i, e in enumerate(pool) if e is env)
    pool[position] = FaultyEnv(env, fail_at_step, mode)
    return pool[position]


@pytest.mark.parametrize("mode", ["raise", "nan"])
def test_a_faulted_env_is_rebuilt_and_its_episode_sampled_again_with_the_same_noise(setup, mode):
    config, policy, specs, _ = setup
    params = params_to_numpy(detached_params(policy))
    clean = RolloutWorker(config.env, config.policy, config.maml, config.ppo, seed=0)
    faulty = RolloutWorker(config.env, config.policy, config.maml, config.ppo, seed=0)
    # One task: the redone episode runs in a batch of one like the rest, so it is bit-identical.
    broken = inject_fault(faulty, specs[:1], 0, fail_at_step=45, mode=mode)  # in the 2nd support episode
    expected, got = clean.sample(params, specs[:1], iteration=3)[0], faulty.sample(params, specs[:1], iteration=3)[0]
    assert broken not in faulty._env_pool[specs[0].env_name]  # replaced by a fresh env
    assert got.support[0].num_env_faults == 1 and got.query.num_env_faults == 0
    for a, b in zip((*expected.support, expected.query), (*got.support, got.query)):
        for field in ("observations", "actions", "rewards", "log_probs", "advantages", "successes"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    # Three tasks in lockstep: the faulted one is redone alone (batch of one), which differs from the
    # batch-of-three forward only by float rounding, as when tasks are split (test above).
    inject_fault(faulty, specs, 1, fail_at_step=10, mode=mode)
    expected, got = clean.sample(params, specs, iteration=4), faulty.sample(params, specs, iteration=4)
    assert [t.support[0].num_env_faults for t in got] == [0, 1, 0]
    for a, b in zip(expected, got):
        np.testing.assert_allclose(a.support[0].actions[:, :5], b.support[0].actions[:, :5], atol=1e-5)
        np.testing.assert_allclose(a.query.episode_returns, b.query.episode_returns, rtol=1e-2)
        assert np.all(np.isfinite(b.support[0].observations))


def test_an_env_that_keeps_faulting_fails_the_sample_call(setup):
    config, policy, specs, _ = setup
    worker = RolloutWorker(config.env, config.policy, config.maml, config.ppo, seed=0)

    class EveryRebuildFaults:
        """The worker's env family, except that every env it builds faults at its first step."""

        def __init__(self, family):
            self.family = family

        def __getattr__(self, name):
            return getattr(self.family, name)

        def make_task_env(self, name, env_config):
            return FaultyEnv(self.family.make_task_env(name, env_config), 1, "raise")

    worker.family = EveryRebuildFaults(worker.family)
    inject_fault(worker, specs[:1], 0, fail_at_step=1, mode="raise")
    with pytest.raises(
        EnvFaultError, match="faulted 4 times in one episode, rebuilt each time .last: at step 0, ValueError"
    ):
        worker.sample(params_to_numpy(detached_params(policy)), specs[:1], iteration=5)
