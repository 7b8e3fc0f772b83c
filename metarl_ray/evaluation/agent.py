"""Meta-World's official evaluation protocol, run on a meta-learned policy.

``MAMLAgent`` and ``InContextAgent`` speak Meta-World's ``MetaLearningAgent`` protocol, so its own
``metalearning_evaluation`` (ML) and ``evaluation`` (MT) functions score them, unchanged, on the first goals
of every test class (ML) or training class (MT). The official ML figure counts the first 3 finished episodes
per task *class* while successful episodes end early, so it over-counts successes; ``meta_test`` computes the direct
per-goal figures with confidence intervals beside it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarl_ray.algorithms.advantages import compute_advantages
from metarl_ray.algorithms.maml_ppo import TensorBatch, adapt
from metarl_ray.algorithms.rl2 import IN_CONTEXT_INPUT_DIM, in_context_step_inputs
from metarl_ray.batch import EpisodeBatch
from metarl_ray.config import TrainConfig
from metarl_ray.envs.metaworld import ACTION_DIM, OBS_DIM, BenchmarkTasks, make_eval_vector_env
from metarl_ray.policies import build_policy
from metarl_ray.policies.common import BatchedPolicy, Params, detached_params, gaussian_log_prob
from metarl_ray.training.checkpoint import load_checkpoint, resolve_checkpoint, trained_config

logger = logging.getLogger(__name__)
Step = tuple[np.ndarray, np.ndarray, float, float]  # observation, action, reward, sampling log-prob
ADAPTATION_EPISODES = 10  # Meta-World's protocol
EVALUATION_EPISODES = 3


class MAMLAgent:
    """A MAML policy speaking Meta-World's ``MetaLearningAgent`` protocol, one task per sub-env:
    ``adapt_action`` samples and ``step`` records episodes per sub-env; ``adapt`` takes one inner step
    per sub-env on its episodes; ``eval_action`` acts with the mean of each sub-env's adapted policy."""

    def __init__(self, policy: torch.nn.Module, config: TrainConfig, seed: int = 0) -> None:
        self.policy = policy
        self.config = config
        self.meta_params = detached_params(policy)
        self.actor = BatchedPolicy(policy)
        self.generator = torch.Generator().manual_seed(seed)
        self.init()

    @classmethod
    def from_params(cls, config: TrainConfig, meta_params: dict[str, np.ndarray], seed: int = 0) -> MAMLAgent:
        policy = build_policy(OBS_DIM, ACTION_DIM, config.policy)
        policy.load_state_dict({name: torch.tensor(value) for name, value in meta_params.items()})
        return cls(policy, config, seed)

    def init(self) -> None:
        self._params: list[Params] | None = None  # per sub-env, set on first use
        self._open: list[list[Step]] = []
        self._episodes: list[list[list[Step]]] = []

    def _params_for(self, num_envs: int) -> list[Params]:
        if self._params is None:
            self._params = [self.meta_params] * num_envs
            self._open = [[] for _ in range(num_envs)]
            self._episodes = [[] for _ in range(num_envs)]
            self._rebind()
        return self._params

    def _rebind(self) -> None:
        """New parameters: bind them once and restart every sub-env's recurrent state."""
        self._step_fn = self.actor.bind(self._params)
        self._state = self.actor.initial_state(len(self._params))
        self._episode_start = torch.ones(len(self._params), dtype=torch.bool)

    def _distribution(self, observations: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        obs = torch.as_tensor(observations, dtype=torch.float32)
        self._params_for(len(obs))
        with torch.no_grad():
            mean, log_std, self._state = self._step_fn(obs, self._state, self._episode_start)
        self._episode_start = torch.zeros_like(self._episode_start)
        return mean, log_std

    def adapt_action(self, observations: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        mean, log_std = self._distribution(observations)
        actions = mean + log_std.exp() * torch.randn(mean.shape, generator=self.generator)
        # The inner step's importance ratio needs the sampling log-probs (see maml.inner_loss).
        log_probs = gaussian_log_prob(mean, log_std, actions)
        return actions.numpy().astype(np.float64), {"log_probs": log_probs.numpy()}

    def step(self, timestep: Any) -> None:
        self._params_for(len(timestep.observation))
        for env_index in range(len(timestep.observation)):
            self._open[env_index].append(
                (
                    timestep.observation[env_index],
                    timestep.action[env_index],
                    float(timestep.reward[env_index]),
                    float(timestep.aux_policy_outputs["log_probs"][env_index]),
                )
            )
            if timestep.terminated[env_index] or timestep.truncated[env_index]:
                self._episodes[env_index].append(self._open[env_index])
                self._open[env_index] = []
                self._episode_start[env_index] = True  # the vector env has already reset this sub-env

    def adapt(self) -> None:
        params = self._params_for(len(self._episodes))
        for env_index, episodes in enumerate(self._episodes):
            if episodes:
                batch = episodes_to_batch(episodes, self.config)
                leaf = {name: p.detach().requires_grad_(True) for name, p in params[env_index].items()}
                adapted = adapt(self.policy, leaf, [TensorBatch.from_numpy(batch)], self.config.maml.inner_lr, False)
                params[env_index] = {name: p.detach() for name, p in adapted.items()}
        self._open = [[] for _ in self._episodes]
        self._episodes = [[] for _ in self._episodes]
        self._rebind()

    def eval_action(self, observations: np.ndarray) -> np.ndarray:
        return self._distribution(observations)[0].numpy().astype(np.float64)

    def reset(self, env_mask: np.ndarray) -> None:
        """Sub-envs in ``env_mask`` start a new episode: their recurrent state restarts on the next action."""
        self._params_for(len(env_mask))
        self._episode_start = self._episode_start | torch.as_tensor(np.asarray(env_mask, dtype=bool))


class InContextAgent:
    """An in-context (RL²) policy speaking Meta-World's ``MetaLearningAgent`` protocol, one task per
    sub-env. Its observations come from ``InContextInputs`` (the env's observation plus the previous
    action, reward and episode-boundary flag), so Meta-World's functions run unchanged: ``init`` gives
    every sub-env a fresh memory; the adaptation episodes fill it; ``adapt`` keeps it; the evaluation
    episodes continue it (``reset`` between episodes leaves it, as a trial does)."""

    def __init__(self, policy: torch.nn.Module, config: TrainConfig, seed: int = 0) -> None:
        self.policy = policy
        self.config = config
        self.actor = BatchedPolicy(policy)
        self.step_fn = self.actor.bind([detached_params(policy)])
        self.generator = torch.Generator().manual_seed(seed)
        self.init()

    @classmethod
    def from_params(cls, config: TrainConfig, meta_params: dict[str, np.ndarray], seed: int = 0) -> InContextAgent:
        policy = build_policy(IN_CONTEXT_INPUT_DIM, ACTION_DIM, config.policy)
        policy.load_state_dict({name: torch.tensor(value) for name, value in meta_params.items()})
        return cls(policy, config, seed)

    def init(self) -> None:
        self._state: torch.Tensor | None = None  # fresh memory for every sub-env at the next action

    def _distribution(self, observations: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        obs = torch.as_tensor(observations, dtype=torch.float32)
        start = self._state is None
        if start:
            self._state = self.actor.initial_state(len(obs))
            # A trial's first step sees no previous action or reward (as in training): the inputs carry
            # the last ones of whatever this env ran before (another goal's trial, say).
            obs = obs.clone()
            obs[:, OBS_DIM : OBS_DIM + ACTION_DIM + 1] = 0.0
        with torch.no_grad():
            mean, log_std, self._state = self.step_fn(obs, self._state, torch.full((len(obs),), start))
        return mean, log_std

    def adapt_action(self, observations: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        mean, log_std = self._distribution(observations)
        actions = mean + log_std.exp() * torch.randn(mean.shape, generator=self.generator)
        return actions.numpy().astype(np.float64), {"log_probs": gaussian_log_prob(mean, log_std, actions).numpy()}

    def step(self, timestep: Any) -> None:
        """The memory has already seen everything (the rewards arrive as inputs of the next step)."""

    def adapt(self) -> None:
        """In-context adaptation is the memory the adaptation episodes left: nothing to compute."""

    def eval_action(self, observations: np.ndarray) -> np.ndarray:
        return self._distribution(observations)[0].numpy().astype(np.float64)

    def reset(self, env_mask: np.ndarray) -> None:
        """A new episode of the same trial: the memory carries on (the boundary flag tells the policy)."""


class InContextInputs:
    """A Meta-World vector env whose observations carry RL²'s inputs, built exactly as the rollout
    workers build them (``rl2.in_context_step_inputs``). Needs same-step autoreset (Meta-World's
    default): an observation returned with done is the next episode's first, and sees the final
    action and reward of the episode before."""

    def __init__(self, envs: Any) -> None:
        self.env = envs
        self.num_envs = envs.num_envs
        self._last_actions: np.ndarray | None = None  # (K, A), (K,): the last step's, None before any
        self._last_rewards: np.ndarray | None = None

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        """A reset starts an episode; whether it continues a trial is the agent's to know, so the
        inputs carry the last action and reward and ``InContextAgent`` zeros them at a fresh memory."""
        obs, info = self.env.reset(**kwargs)
        return in_context_step_inputs(obs.astype(np.float32), self._last_actions, self._last_rewards, True), info

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        obs, rewards, terminations, truncations, infos = self.env.step(actions)
        self._last_actions = np.asarray(actions, dtype=np.float32)
        self._last_rewards = np.asarray(rewards, dtype=np.float32)
        inputs = in_context_step_inputs(
            obs.astype(np.float32), self._last_actions, self._last_rewards, np.logical_or(terminations, truncations)
        )
        return inputs, rewards, terminations, truncations, infos

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.env.call(name, *args, **kwargs)

    def get_attr(self, name: str) -> Any:
        return self.env.get_attr(name)

    def close(self) -> None:
        self.env.close()


def build_agent(config: TrainConfig, meta_params: dict[str, np.ndarray], seed: int = 0) -> MAMLAgent | InContextAgent:
    """The agent of the run's meta-learner."""
    agent_class = InContextAgent if config.meta_learner.in_context else MAMLAgent
    return agent_class.from_params(config, meta_params, seed)


def load_agent(path: str | Path, seed: int = 0) -> MAMLAgent | InContextAgent:
    """The agent of a checkpoint file or a run directory (its latest checkpoint), adapting with the
    learning rates it was trained with."""
    checkpoint = resolve_checkpoint(path)
    if checkpoint is None:
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = load_checkpoint(checkpoint)
    meta_params = {name: tensor.numpy() for name, tensor in state["learner"]["policy"].items()}
    return build_agent(trained_config(state), meta_params, seed)


def episodes_to_batch(episodes: list[list[Step]], config: TrainConfig) -> EpisodeBatch:
    horizon = min(len(episode) for episode in episodes)  # equal unless an episode ended early
    obs = np.array([[step[0] for step in ep[:horizon]] for ep in episodes], dtype=np.float32)
    actions = np.array([[step[1] for step in ep[:horizon]] for ep in episodes], dtype=np.float32)
    rewards = np.array([[step[2] for step in ep[:horizon]] for ep in episodes], dtype=np.float32)
    advantages = compute_advantages(obs, rewards, config.ppo.gamma, config.ppo.gae_lambda)
    log_probs = np.array([[step[3] for step in ep[:horizon]] for ep in episodes], dtype=np.float32)
    return EpisodeBatch(obs, actions, rewards, log_probs, advantages, np.zeros(len(episodes), dtype=bool))


def evaluate_official(
    agent: MAMLAgent | InContextAgent,
    config: TrainConfig,
    goals_per_class: int,
    num_evals: int,
    mt_episodes: int,
    seed: int,
    meta_batch_size: int | None = None,
) -> tuple[float, float, dict[str, float]]:
    """Meta-World's own score. ML: ``metalearning_evaluation`` over ``goals_per_class`` goals per test
    class held by ``meta_batch_size`` sub-envs (default: one per goal); each of ``num_evals`` rounds
    hands the sub-envs their next goals. MT: ``evaluation`` with ``mt_episodes`` per task."""
    from metaworld.evaluation import evaluation, metalearning_evaluation

    tasks = BenchmarkTasks(config.env, seed)
    num_classes = len(tasks.test_tasks())
    in_context = config.meta_learner.in_context
    wrap = InContextInputs if in_context else (lambda envs: envs)
    if config.env.is_meta_learning:
        # By default one goal per sub-env: one round visits each of the first goals_per_class goals of
        # every class once. With fewer sub-envs, the rounds go through the goals in turn.
        envs = wrap(
            make_eval_vector_env(
                config.env,
                seed,
                meta_batch_size=meta_batch_size or num_classes * goals_per_class,
                total_tasks_per_cls=goals_per_class,
            )
        )
        try:
            success, mean_return, per_task = metalearning_evaluation(
                agent,
                envs,
                num_evals=num_evals,
                adaptation_steps=1 if in_context else config.maml.num_inner_steps,
                adaptation_episodes=ADAPTATION_EPISODES,
                evaluation_episodes=EVALUATION_EPISODES,
            )
        finally:
            envs.close()
    else:
        envs = wrap(make_eval_vector_env(config.env, seed, meta_batch_size=num_classes))
        try:
            agent.init()
            success, mean_return, per_task, _ = evaluation(agent, envs, num_episodes=mt_episodes)
        finally:
            envs.close()
    return float(success), float(mean_return), {name: float(value) for name, value in per_task.items()}
