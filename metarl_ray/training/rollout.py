"""The rollout loop: a worker steps one env per task in lockstep, with one batched policy
call per time step, and runs each task's inner adaptation itself, so a meta-iteration costs one
parameter broadcast and one gather. Plain Python; the Ray actor in ``actors.py`` only wraps it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from metarl_ray.algorithms.base import (  # noqa: F401  (EvalPlan, SamplePlan re-exported: callers import them here)
    CarriedMemory,
    EvalPlan,
    SamplePlan,
    StepInputs,
    build_meta_policy,
    builder_for,
)
from metarl_ray.batch import EpisodeBatch, GoalEvaluation, TaskData, TrialBatch
from metarl_ray.config import EnvConfig, MAMLConfig, MetaLearnerConfig, PolicyConfig, PPOConfig
from metarl_ray.envs import EnvFamily, TaskSpec, env_family
from metarl_ray.errors import EnvFaultError
from metarl_ray.policies.common import BatchedPolicy, Params, State, params_from_numpy

logger = logging.getLogger(__name__)


# Noise stream of evaluation episodes: never a training iteration number.
EVAL_NOISE_STREAM = 2**32 - 1
# Rebuilds of one env in one episode before the sample call fails with EnvFaultError (the run stops:
# the same parameters and noise would fail the same way again).
MAX_FAULTS_PER_EPISODE = 3


def _eval_rngs(tasks: Sequence[TaskSpec], seed: int, family: EnvFamily) -> list[np.random.Generator]:
    """Keyed by the goal itself (class, goal index), not its place in an evaluation's list: a goal
    draws the same episodes whatever --goals_per_class, batch or worker it runs in."""
    class_ids = {name: index for index, name in enumerate(family.class_names())}
    return [
        np.random.Generator(
            np.random.PCG64(
                np.random.SeedSequence([seed, EVAL_NOISE_STREAM, class_ids[spec.env_name], spec.goal_index])
            )
        )
        for spec in tasks
    ]


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
    """Envs stepped in lockstep for a meta-learner's rollout program (``algorithms.base.Collector``):
    ``collect`` (episodes, each from a fresh memory, the policy seeing the observation) and
    ``collect_trials`` (a memory carried across a trial's episodes, the policy seeing the program's step
    inputs) are the two ways of stepping them; the program decides what to run and computes its own
    advantages."""

    def __init__(
        self,
        env_config: EnvConfig,
        policy_config: PolicyConfig,
        maml_config: MAMLConfig,
        ppo_config: PPOConfig,
        seed: int,
        meta_learner_config: MetaLearnerConfig | None = None,
    ) -> None:
        self.env_config = env_config
        self.maml_config = maml_config
        self.ppo_config = ppo_config
        self.meta_learner_config = meta_learner_config or MetaLearnerConfig()
        self.seed = seed
        self.family = env_family(env_config)
        builder = builder_for(self.meta_learner_config)
        self.program = builder.rollout_program(self.meta_learner_config, maml_config, ppo_config)
        self.input_dim = builder.policy_input_dim(self.family)
        self.action_dim = self.family.action_dim
        self.policy = build_meta_policy(self.meta_learner_config, self.family, policy_config, maml_config)
        self.actor = BatchedPolicy(self.policy)
        self._env_pool: dict[str, list[Any]] = {}
        self._task_of: dict[int, tuple[str, Any]] = {}  # id(env) -> (class, task), to rebuild a faulted env
        self._last_fault = ""

    @property
    def episode_length(self) -> int:
        return self.env_config.max_episode_length

    def _envs_for(self, tasks: Sequence[TaskSpec]) -> list[Any]:
        """One env per task; envs are created once per class and reused across iterations."""
        envs, used = [], {}
        for spec in tasks:
            pool = self._env_pool.setdefault(spec.env_name, [])
            index = used.get(spec.env_name, 0)
            if index == len(pool):
                pool.append(self.family.make_task_env(spec.env_name, self.env_config))
            used[spec.env_name] = index + 1
            env = pool[index]
            env.set_task(spec.task)
            self._task_of[id(env)] = (spec.env_name, spec.task)
            envs.append(env)
        return envs

    def sample(
        self,
        meta_params: dict[str, np.ndarray],
        tasks: Sequence[TaskSpec],
        iteration: int,
        plan: SamplePlan | None = None,
        inner_lr: float | None = None,
    ) -> Sequence[TaskData]:
        """One iteration's training data per task, as the meta-learner's rollout program samples it
        (MAML: support -> inner step -> query). ``inner_lr``: the learner's current one (lower after a
        rolled-back update), default the config's."""
        envs = self._envs_for(tasks)
        # Noise streams keyed by (seed, iteration, slot): results do not depend on how tasks are split.
        rngs = [
            np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, iteration, spec.slot])))
            for spec in tasks
        ]
        return self.program.sample(self, envs, tasks, params_from_numpy(meta_params), rngs, plan, inner_lr)

    def evaluate(
        self,
        meta_params: dict[str, np.ndarray],
        tasks: Sequence[TaskSpec],
        plan: EvalPlan,
        seed: int,
        inner_lr: float | None = None,
    ) -> list[GoalEvaluation]:
        """Meta-test every task before and after adaptation, under both action rules (see the program)."""
        if plan.num_sampled_episodes > plan.num_adaptation_episodes:
            raise ValueError(
                f"num_sampled_episodes={plan.num_sampled_episodes}: expected at most "
                f"num_adaptation_episodes={plan.num_adaptation_episodes}"
            )
        envs = self._envs_for(tasks)
        return self.program.evaluate(
            self, envs, tasks, params_from_numpy(meta_params), _eval_rngs(tasks, seed, self.family), plan, inner_lr
        )

    def adapt_to_goal(
        self,
        meta_params: dict[str, np.ndarray],
        task: TaskSpec,
        plan: EvalPlan,
        seed: int,
        inner_lr: float | None = None,
    ) -> Params:
        """The adapted parameters ``evaluate`` reaches on one goal: its adaptation episodes, same noise."""
        return self.program.adapt_to_goal(
            self,
            self._envs_for([task]),
            params_from_numpy(meta_params),
            _eval_rngs([task], seed, self.family),
            plan,
            inner_lr,
        )

    def _noise(self, rngs: Sequence[np.random.Generator], sampled: Sequence[bool]) -> np.ndarray:
        """Standard normal action noise for consecutive episodes, (K, len(sampled) * T, A); zero for the
        mean-action ones. One generator call per env and sampled episode (not one per step)."""
        horizon = self.episode_length
        noise = np.zeros((len(rngs), len(sampled) * horizon, self.action_dim), dtype=np.float32)
        for e, draw in enumerate(sampled):
            if draw:
                noise[:, e * horizon : (e + 1) * horizon] = np.stack(
                    [rng.standard_normal((horizon, self.action_dim), dtype=np.float32) for rng in rngs]
                )
        return noise

    def _log_std(self, step: Any, num_envs: int) -> np.ndarray:
        """(K, A): every policy's log-std is state-independent."""
        all_start = torch.ones(num_envs, dtype=torch.bool)
        with torch.no_grad():
            log_std = step(torch.zeros(num_envs, self.input_dim), self.actor.initial_state(num_envs), all_start)[1]
        return log_std.expand(num_envs, self.action_dim).numpy()

    def collect(
        self,
        envs: Sequence[Any],
        params: Sequence[Params],
        rngs: Sequence[np.random.Generator],
        num_episodes: int,
        deterministic: bool = False,
    ) -> list[EpisodeBatch]:
        """``num_episodes`` full-length episodes per env, all envs stepped in lockstep, each episode
        from a fresh memory; advantages are the program's (None)."""
        num_envs, horizon = len(envs), self.episode_length
        observations = np.zeros((num_envs, num_episodes, horizon, self.family.observation_dim), dtype=np.float32)
        actions = np.zeros((num_envs, num_episodes, horizon, self.action_dim), dtype=np.float32)
        rewards = np.zeros((num_envs, num_episodes, horizon), dtype=np.float32)
        log_probs = np.zeros((num_envs, num_episodes, horizon), dtype=np.float32)
        successes = np.zeros((num_envs, num_episodes), dtype=bool)
        step = self.actor.bind(list(params))
        log_std = self._log_std(step, num_envs)
        num_faults = np.zeros(num_envs, dtype=np.int64)
        for episode in range(num_episodes):
            noise = self._noise(rngs, [not deterministic])
            scaled_noise = np.exp(log_std)[:, None, :] * noise  # (K, T, A)
            (obs, act, rew, succ), _, faults = self._lockstep_with_recovery(envs, params, step, scaled_noise, None)
            num_faults += faults
            observations[:, episode], actions[:, episode], rewards[:, episode], successes[:, episode] = (
                obs,
                act,
                rew,
                succ[:, 0],
            )
            # log N(a; mu, sigma) with a = mu + sigma * eps depends only on eps and log sigma.
            log_probs[:, episode] = (-0.5 * noise**2 - log_std[:, None, :] - 0.5 * np.log(2 * np.pi)).sum(-1)
        return [
            EpisodeBatch(
                observations[k],
                actions[k],
                rewards[k],
                log_probs[k],
                None,  # the program's advantages
                successes[k],
                int(num_faults[k]),
            )
            for k in range(num_envs)
        ]

    def collect_trials(
        self,
        envs: Sequence[Any],
        params: Sequence[Params],
        rngs: Sequence[np.random.Generator],
        num_trials: int,
        sampled: Sequence[bool],
        step_inputs: StepInputs,
        initial_memory: CarriedMemory | None = None,
    ) -> tuple[list[TrialBatch], CarriedMemory]:
        """``num_trials`` trials per env of ``len(sampled)`` consecutive episodes each; the policy's memory
        carries across a trial's episodes and its input is ``step_inputs``. Episode e samples its actions
        if ``sampled[e]``, else takes the mean. Each trial continues ``initial_memory`` (default: a fresh
        memory, zero previous action and reward); returns the batches and where the last trial stopped."""
        if num_trials < 1:
            raise ValueError(f"num_trials={num_trials}: expected at least 1")
        num_envs, length = len(envs), len(sampled) * self.episode_length
        observations = np.zeros((num_envs, num_trials, length, self.family.observation_dim), dtype=np.float32)
        actions = np.zeros((num_envs, num_trials, length, self.action_dim), dtype=np.float32)
        rewards = np.zeros((num_envs, num_trials, length), dtype=np.float32)
        log_probs = np.zeros((num_envs, num_trials, length), dtype=np.float32)
        successes = np.zeros((num_envs, num_trials, len(sampled)), dtype=bool)
        step = self.actor.bind(list(params))
        log_std = self._log_std(step, num_envs)
        num_faults = np.zeros(num_envs, dtype=np.int64)
        for trial in range(num_trials):
            noise = self._noise(rngs, sampled)
            scaled_noise = np.exp(log_std)[:, None, :] * noise  # (K, L, A)
            arrays, final_state, faults = self._lockstep_with_recovery(
                envs, params, step, scaled_noise, initial_memory, step_inputs
            )
            num_faults += faults
            observations[:, trial], actions[:, trial], rewards[:, trial], successes[:, trial] = arrays
            log_probs[:, trial] = (-0.5 * noise**2 - log_std[:, None, :] - 0.5 * np.log(2 * np.pi)).sum(-1)
        batches = [
            TrialBatch(
                observations[k],
                actions[k],
                rewards[k],
                log_probs[k],
                None,  # the program's advantages
                successes[k],
                self.episode_length,
                int(num_faults[k]),
            )
            for k in range(num_envs)
        ]
        return batches, CarriedMemory(final_state, actions[:, -1, -1].copy(), rewards[:, -1, -1].copy())

    def _lockstep_with_recovery(
        self,
        envs: list[Any],
        params: Sequence[Params],
        step: Any,
        scaled_noise: np.ndarray,
        initial_memory: CarriedMemory | None,
        step_inputs: StepInputs | None = None,
    ) -> tuple[tuple[np.ndarray, ...], State, np.ndarray]:
        """``_lockstep`` in every env; a faulted env is rebuilt (same class and task) and its episodes
        (a whole trial, in context) run again alone with the same noise and start state, so the batch is
        what it would have been without the fault: the policy acts on each env independently. Returns
        the arrays, the final memory and the faults per env."""
        arrays, faulted, state = self._lockstep(envs, step, scaled_noise, initial_memory, step_inputs)
        num_faults = np.zeros(len(envs), dtype=np.int64)
        for k in np.flatnonzero(faulted):
            start = None if initial_memory is None else initial_memory.rows(k, k + 1)
            for attempt in range(1, MAX_FAULTS_PER_EPISODE + 1):  # noqa: B007 - the count is kept below
                envs[k] = self._rebuild(envs[k])
                redone, still_faulted, redone_state = self._lockstep(
                    [envs[k]], self.actor.bind([params[k]]), scaled_noise[k : k + 1], start, step_inputs
                )
                if not still_faulted[0]:
                    break
            else:
                env_name = self._task_of[id(envs[k])][0]
                unit = "episode" if step_inputs is None else "trial"
                raise EnvFaultError(
                    f"env {env_name} faulted {MAX_FAULTS_PER_EPISODE + 1} times in one {unit}, "
                    f"rebuilt each time (last: {self._last_fault}); see the worker's log for each fault"
                )
            num_faults[k] = attempt
            for full, row in zip(arrays, redone):
                full[k] = row[0]
            state = state.clone()
            state[k] = redone_state[0]
        return arrays, state, num_faults

    def _lockstep(
        self,
        envs: Sequence[Any],
        step: Any,
        scaled_noise: np.ndarray,
        initial_memory: CarriedMemory | None,
        step_inputs: StepInputs | None,
    ) -> tuple[tuple[np.ndarray, ...], np.ndarray, State]:
        """Consecutive episodes of T steps in every env, stepped together, L = scaled_noise.shape[1]:
        (observations (K, L, D), actions (K, L, A), rewards (K, L), successes (K, L // T)), which envs
        faulted, and the policy's memory after the last step. The memory continues ``initial_memory``
        (default: fresh) and is never reset within the call; without ``step_inputs`` the policy sees only
        the observation (one episode per call). An env that raises, or returns a non-finite
        observation or reward (a MuJoCo instability, say), stops there; its row is junk."""
        num_envs, length = scaled_noise.shape[:2]
        horizon = self.episode_length
        observations = np.zeros((num_envs, length, self.family.observation_dim), dtype=np.float32)
        actions = np.zeros((num_envs, length, self.action_dim), dtype=np.float32)
        rewards = np.zeros((num_envs, length), dtype=np.float32)
        successes = np.zeros((num_envs, length // horizon), dtype=bool)
        faulted = np.zeros(num_envs, dtype=bool)
        obs = np.zeros((num_envs, self.family.observation_dim), dtype=np.float32)
        all_start = torch.ones(num_envs, dtype=torch.bool)
        no_start = torch.zeros(num_envs, dtype=torch.bool)
        state = self.actor.initial_state(num_envs) if initial_memory is None else initial_memory.state
        # The first step's previous action and reward: none at a fresh start, else where the memory stopped.
        first_previous = (
            (np.zeros((num_envs, self.action_dim), np.float32), np.zeros(num_envs, np.float32))
            if initial_memory is None
            else (initial_memory.last_actions, initial_memory.last_rewards)
        )
        for t in range(length):
            episode, t_in_episode = divmod(t, horizon)
            if t_in_episode == 0:
                for k, env in enumerate(envs):
                    if faulted[k]:
                        continue
                    try:
                        obs[k] = _finite(env.reset()[0])
                    except Exception as error:  # noqa: BLE001 - any env failure is handled the same way
                        self._last_fault = _log_fault(env, "on reset", error)
                        faulted[k] = True
            observations[:, t] = obs
            policy_input = obs
            if step_inputs is not None:
                previous = (actions[:, t - 1], rewards[:, t - 1]) if t else first_previous
                policy_input = step_inputs(obs, *previous, t_in_episode == 0)
            with torch.no_grad():
                starts = all_start if t == 0 and initial_memory is None else no_start
                mean, _, state = step(torch.from_numpy(policy_input), state, starts)
            step_actions = mean.numpy() + scaled_noise[:, t]
            actions[:, t] = step_actions
            for k, env in enumerate(envs):
                if faulted[k]:
                    continue
                try:
                    next_obs, reward, _, _, info = env.step(step_actions[k])
                except Exception as error:  # noqa: BLE001
                    self._last_fault = _log_fault(env, f"at step {t_in_episode}", error)
                    faulted[k] = True
                    continue
                obs[k] = next_obs
                rewards[k, t] = reward
                successes[k, episode] |= bool(info["success"])
            # One vectorised check per step for all envs (a per-env check would cost more than this).
            non_finite = ~(np.isfinite(obs).all(axis=1) & np.isfinite(rewards[:, t])) & ~faulted
            for k in np.flatnonzero(non_finite):
                self._last_fault = _log_fault(
                    envs[k], f"at step {t_in_episode}", FloatingPointError("non-finite observation or reward")
                )
                faulted[k] = True
        return (observations, actions, rewards, successes), faulted, state

    def _rebuild(self, env: Any) -> Any:
        """A fresh env of the faulted one's class and task, in the faulted one's place in the pool."""
        env_name, task = self._task_of[id(env)]
        fresh = self.family.make_task_env(env_name, self.env_config)
        fresh.set_task(task)
        pool = self._env_pool[env_name]
        pool[next(i for i, e in enumerate(pool) if e is env)] = fresh
        del self._task_of[id(env)]
        self._task_of[id(fresh)] = (env_name, task)
        return fresh
