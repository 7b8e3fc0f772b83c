"""The rollout loop: a worker steps one Meta-World env per task in lockstep, with one batched policy
call per time step, and runs each task's inner adaptation itself, so a meta-iteration costs one
parameter broadcast and one gather. Plain Python; the Ray actor in ``actors.py`` only wraps it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from metarl_ray.algorithms.advantages import compute_advantages
from metarl_ray.training.batch import EpisodeBatch, GoalEvaluation, TaskRollouts
from metarl_ray.config import EnvConfig, MAMLConfig, PolicyConfig, PPOConfig
from metarl_ray.envs.metaworld import ACTION_DIM, OBS_DIM, TaskSpec, all_task_names, make_task_env
from metarl_ray.errors import EnvFaultError
from metarl_ray.algorithms.maml_ppo import TensorBatch, adapt
from metarl_ray.policies import build_policy
from metarl_ray.policies.common import BatchedPolicy, Params, params_from_numpy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplePlan:
    """How many episodes to collect per task in each phase of one sample call."""

    num_support_episodes: int  # per inner step
    num_query_episodes: int


@dataclass(frozen=True)
class EvalPlan:
    """Episodes per held-out goal in a meta-test (see ``GoalEvaluation``)."""

    num_adaptation_episodes: int = 10  # per inner step, sampled (Meta-World's protocol)
    num_sampled_episodes: int = 3  # sampled-action episodes before and after adaptation


# Noise stream of evaluation episodes: never a training iteration number.
EVAL_NOISE_STREAM = 2**32 - 1
# Rebuilds of one env in one episode before the sample call fails with EnvFaultError (the run stops:
# the same parameters and noise would fail the same way again).
MAX_FAULTS_PER_EPISODE = 3


def _eval_rngs(tasks: Sequence[TaskSpec], seed: int) -> list[np.random.Generator]:
    """Keyed by the goal itself (class, goal index), not its place in an evaluation's list: a goal
    draws the same episodes whatever --goals_per_class, batch or worker it runs in."""
    class_ids = {name: index for index, name in enumerate(all_task_names())}
    return [np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        [seed, EVAL_NOISE_STREAM, class_ids[spec.env_name], spec.goal_index]))) for spec in tasks]


def _log_fault(env: Any, where: str, error: Exception) -> str:
    """Log one env fault; returns its one-line description."""
    description = f"{where}, {type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
    logger.warning("env %s faulted %s; rebuilding it and sampling the episode again", type(env).__name__, description)
    return description


def _finite(observation: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(observation)):
        raise FloatingPointError("non-finite observation")
    return observation


class RolloutWorker:
    def __init__(self, env_config: EnvConfig, policy_config: PolicyConfig, maml_config: MAMLConfig,
                 ppo_config: PPOConfig, seed: int) -> None:
        self.env_config = env_config
        self.maml_config = maml_config
        self.ppo_config = ppo_config
        self.seed = seed
        self.policy = build_policy(OBS_DIM, ACTION_DIM, policy_config)
        self.actor = BatchedPolicy(self.policy)
        self._env_pool: dict[str, list[Any]] = {}
        self._task_of: dict[int, tuple[str, Any]] = {}  # id(env) -> (class, task), to rebuild a faulted env
        self._last_fault = ""

    def _envs_for(self, tasks: Sequence[TaskSpec]) -> list[Any]:
        """One env per task; envs are created once per class and reused across iterations."""
        envs, used = [], {}
        for spec in tasks:
            pool = self._env_pool.setdefault(spec.env_name, [])
            index = used.get(spec.env_name, 0)
            if index == len(pool):
                pool.append(make_task_env(spec.env_name, self.env_config))
            used[spec.env_name] = index + 1
            env = pool[index]
            env.set_task(spec.task)
            self._task_of[id(env)] = (spec.env_name, spec.task)
            envs.append(env)
        return envs

    def sample(self, meta_params: dict[str, np.ndarray], tasks: Sequence[TaskSpec], iteration: int,
               plan: SamplePlan | None = None, inner_lr: float | None = None) -> list[TaskRollouts]:
        """Support episodes -> inner step (x num_inner_steps) -> query episodes, for every task.
        ``inner_lr``: the learner's current one (lower after a rolled-back update), default the config's."""
        plan = plan or SamplePlan(self.maml_config.episodes_per_task, self.maml_config.episodes_per_task)
        envs = self._envs_for(tasks)
        # Noise streams keyed by (seed, iteration, slot): results do not depend on how tasks are split.
        rngs = [np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, iteration, spec.slot])))
                for spec in tasks]
        params: list[Params] = [params_from_numpy(meta_params)] * len(tasks)
        supports: list[list[EpisodeBatch]] = [[] for _ in tasks]
        for _ in range(self.maml_config.num_inner_steps):
            batches = self.collect(envs, params, rngs, plan.num_support_episodes)
            for index, batch in enumerate(batches):
                supports[index].append(batch)
                params[index] = self._adapt_one(params[index], batch, inner_lr)
        queries = self.collect(envs, params, rngs, plan.num_query_episodes)
        return [TaskRollouts(spec.slot, spec.env_name, spec.goal_index, tuple(support), query)
                for spec, support, query in zip(tasks, supports, queries)]

    def evaluate(self, meta_params: dict[str, np.ndarray], tasks: Sequence[TaskSpec], plan: EvalPlan,
                 seed: int, inner_lr: float | None = None) -> list[GoalEvaluation]:
        """Meta-test every task: a mean-action episode, adaptation on sampled episodes (the first K of
        which are the pre-adaptation sampled figure), then a mean-action and K sampled episodes."""
        if plan.num_sampled_episodes > plan.num_adaptation_episodes:
            raise ValueError(f"num_sampled_episodes={plan.num_sampled_episodes}: expected at most "
                             f"num_adaptation_episodes={plan.num_adaptation_episodes}")
        envs = self._envs_for(tasks)
        rngs = _eval_rngs(tasks, seed)
        params: list[Params] = [params_from_numpy(meta_params)] * len(tasks)
        pre_mean = self.collect(envs, params, rngs, 1, deterministic=True)
        first_support: list[EpisodeBatch] = []
        for _ in range(self.maml_config.num_inner_steps):  # at least one (MAMLConfig)
            batches = self.collect(envs, params, rngs, plan.num_adaptation_episodes)
            first_support = first_support or batches
            params = [self._adapt_one(p, batch, inner_lr) for p, batch in zip(params, batches)]
        post_mean = self.collect(envs, params, rngs, 1, deterministic=True)
        post_sampled = self.collect(envs, params, rngs, plan.num_sampled_episodes)
        k = plan.num_sampled_episodes
        steps_per_task = (2 + k + plan.num_adaptation_episodes * self.maml_config.num_inner_steps) * self.env_config.max_episode_length
        return [
            GoalEvaluation(
                slot=spec.slot, env_name=spec.env_name, goal_index=spec.goal_index,
                pre_mean_success=bool(pre.successes[0]), post_mean_success=bool(post.successes[0]),
                pre_mean_return=float(pre.episode_returns[0]), post_mean_return=float(post.episode_returns[0]),
                pre_sampled_successes=support.successes[:k].copy(), post_sampled_successes=sampled.successes.copy(),
                pre_sampled_returns=support.episode_returns[:k].copy(), post_sampled_returns=sampled.episode_returns.copy(),
                num_steps=steps_per_task)
            for spec, pre, support, post, sampled in zip(tasks, pre_mean, first_support, post_mean, post_sampled)
        ]

    def adapt_to_goal(self, meta_params: dict[str, np.ndarray], task: TaskSpec, plan: EvalPlan, seed: int,
                      inner_lr: float | None = None) -> Params:
        """The adapted parameters ``evaluate`` reaches on one goal: its adaptation episodes, same noise."""
        envs, rngs = self._envs_for([task]), _eval_rngs([task], seed)
        params = params_from_numpy(meta_params)
        for _ in range(self.maml_config.num_inner_steps):
            params = self._adapt_one(params, self.collect(envs, [params], rngs, plan.num_adaptation_episodes)[0], inner_lr)
        return params

    def _adapt_one(self, params: Params, batch: EpisodeBatch, inner_lr: float | None = None) -> Params:
        leaf_params = {name: p.detach().requires_grad_(True) for name, p in params.items()}
        adapted = adapt(self.policy, leaf_params, [TensorBatch.from_numpy(batch)],
                        self.maml_config.inner_lr if inner_lr is None else inner_lr, create_graph=False)
        return {name: p.detach() for name, p in adapted.items()}

    def collect(self, envs: Sequence[Any], params: Sequence[Params], rngs: Sequence[np.random.Generator],
                num_episodes: int, deterministic: bool = False) -> list[EpisodeBatch]:
        """``num_episodes`` full-length episodes per env, all envs stepped in lockstep."""
        num_envs, horizon = len(envs), self.env_config.max_episode_length
        observations = np.zeros((num_envs, num_episodes, horizon, OBS_DIM), dtype=np.float32)
        actions = np.zeros((num_envs, num_episodes, horizon, ACTION_DIM), dtype=np.float32)
        rewards = np.zeros((num_envs, num_episodes, horizon), dtype=np.float32)
        log_probs = np.zeros((num_envs, num_episodes, horizon), dtype=np.float32)
        successes = np.zeros((num_envs, num_episodes), dtype=bool)
        step = self.actor.bind(list(params))
        all_start = torch.ones(num_envs, dtype=torch.bool)
        with torch.no_grad():
            log_std = step(torch.zeros(num_envs, OBS_DIM), self.actor.initial_state(num_envs), all_start)[1]
            log_std = log_std.expand(num_envs, ACTION_DIM).numpy()  # (K, A), state-independent
        num_faults = np.zeros(num_envs, dtype=np.int64)
        for episode in range(num_episodes):
            # Noise for a whole episode per env at once: one generator call instead of one per step.
            noise = np.zeros((num_envs, horizon, ACTION_DIM), dtype=np.float32)
            if not deterministic:
                noise = np.stack([rng.standard_normal((horizon, ACTION_DIM), dtype=np.float32) for rng in rngs])
            scaled_noise = np.exp(log_std)[:, None, :] * noise  # (K, T, A)
            episode_arrays, faulted = self._lockstep_episode(envs, step, scaled_noise)
            for k in np.flatnonzero(faulted):
                # The env is rebuilt and its episode sampled again alone, with the same noise, so the
                # batch is what it would have been without the fault (see _resample_faulted_episode).
                redone, faults = self._resample_faulted_episode(envs, k, params[k], scaled_noise[k:k + 1])
                num_faults[k] += faults
                for arrays, row in zip(episode_arrays, redone):
                    arrays[k] = row[0]
            observations[:, episode], actions[:, episode], rewards[:, episode], successes[:, episode] = episode_arrays
            # log N(a; mu, sigma) with a = mu + sigma * eps depends only on eps and log sigma.
            log_probs[:, episode] = (-0.5 * noise**2 - log_std[:, None, :] - 0.5 * np.log(2 * np.pi)).sum(-1)
        return [
            EpisodeBatch(observations[k], actions[k], rewards[k], log_probs[k],
                         compute_advantages(observations[k], rewards[k], self.ppo_config.gamma, self.ppo_config.gae_lambda),
                         successes[k], int(num_faults[k]))
            for k in range(num_envs)
        ]

    def _lockstep_episode(self, envs: Sequence[Any], step: Any, scaled_noise: np.ndarray
                          ) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
        """One episode in every env, stepped together: (observations (K, T, D), actions (K, T, A),
        rewards (K, T), successes (K,)) and which envs faulted. An env that raises, or returns a
        non-finite observation or reward (a MuJoCo instability, say), stops there; its row is junk."""
        num_envs, horizon = scaled_noise.shape[:2]
        observations = np.zeros((num_envs, horizon, OBS_DIM), dtype=np.float32)
        actions = np.zeros((num_envs, horizon, ACTION_DIM), dtype=np.float32)
        rewards = np.zeros((num_envs, horizon), dtype=np.float32)
        successes = np.zeros(num_envs, dtype=bool)
        faulted = np.zeros(num_envs, dtype=bool)
        obs = np.zeros((num_envs, OBS_DIM), dtype=np.float32)
        for k, env in enumerate(envs):
            try:
                obs[k] = _finite(env.reset()[0])
            except Exception as error:  # noqa: BLE001 - any env failure is handled the same way
                self._last_fault = _log_fault(env, "on reset", error)
                faulted[k] = True
        all_start = torch.ones(num_envs, dtype=torch.bool)
        no_start = torch.zeros(num_envs, dtype=torch.bool)
        state = self.actor.initial_state(num_envs)  # recurrent policies restart at every episode
        for t in range(horizon):
            observations[:, t] = obs
            with torch.no_grad():
                mean, _, state = step(torch.from_numpy(obs), state, all_start if t == 0 else no_start)
            step_actions = mean.numpy() + scaled_noise[:, t]
            actions[:, t] = step_actions
            for k, env in enumerate(envs):
                if faulted[k]:
                    continue
                try:
                    next_obs, reward, _, _, info = env.step(step_actions[k])
                except Exception as error:  # noqa: BLE001
                    self._last_fault = _log_fault(env, f"at step {t}", error)
                    faulted[k] = True
                    continue
                obs[k] = next_obs
                rewards[k, t] = reward
                successes[k] |= bool(info["success"])
            # One vectorised check per step for all envs (a per-env check would cost more than this).
            non_finite = ~(np.isfinite(obs).all(axis=1) & np.isfinite(rewards[:, t])) & ~faulted
            for k in np.flatnonzero(non_finite):
                self._last_fault = _log_fault(envs[k], f"at step {t}", FloatingPointError("non-finite observation or reward"))
                faulted[k] = True
        return (observations, actions, rewards, successes), faulted

    def _resample_faulted_episode(self, envs: list[Any], k: int, params: Params, scaled_noise: np.ndarray
                                  ) -> tuple[tuple[np.ndarray, ...], int]:
        """Rebuild env ``k`` (same class and task) and run its episode alone with the same noise;
        returns the episode's arrays (leading dim 1) and the number of faults it took. The policy acts
        on each env independently, so the redone episode is the one the lockstep would have produced."""
        for attempt in range(1, MAX_FAULTS_PER_EPISODE + 1):
            envs[k] = self._rebuild(envs[k])
            redone, faulted = self._lockstep_episode([envs[k]], self.actor.bind([params]), scaled_noise)
            if not faulted[0]:
                return redone, attempt
        env_name = self._task_of[id(envs[k])][0]
        raise EnvFaultError(f"env {env_name} faulted {MAX_FAULTS_PER_EPISODE + 1} times in one episode, rebuilt each "
                            f"time (last: {self._last_fault}); see the worker's log for each fault")

    def _rebuild(self, env: Any) -> Any:
        """A fresh env of the faulted one's class and task, in the faulted one's place in the pool."""
        env_name, task = self._task_of[id(env)]
        fresh = make_task_env(env_name, self.env_config)
        fresh.set_task(task)
        pool = self._env_pool[env_name]
        pool[next(i for i, e in enumerate(pool) if e is env)] = fresh
        del self._task_of[id(env)]
        self._task_of[id(fresh)] = (env_name, task)
        return fresh
