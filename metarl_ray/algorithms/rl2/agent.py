"""RL²'s agent for Meta-World's official evaluation (``base.Agent``), and the vector env wrapper that
gives it its in-context inputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from metarl_ray.algorithms.rl2.inputs import in_context_step_inputs
from metarl_ray.config import TrainConfig
from metarl_ray.policies.common import BatchedPolicy, detached_params, gaussian_log_prob


class InContextAgent:
    """An in-context (RL²) policy speaking Meta-World's ``MetaLearningAgent`` protocol, one task per
    sub-env. Its observations come from ``InContextInputs`` (the env's observation plus the previous
    action, reward and episode-boundary flag), so Meta-World's functions run unchanged: ``init`` gives
    every sub-env a fresh memory; the adaptation episodes fill it; ``adapt`` keeps it; the evaluation
    episodes continue it (``reset`` between episodes leaves it, as a trial does)."""

    def __init__(self, policy: torch.nn.Module, config: TrainConfig, observation_dim: int, seed: int = 0) -> None:
        self.policy = policy
        # The previous action and reward: after the observation, before the flag (``inputs.in_context_step_inputs``).
        self._previous_step = slice(observation_dim, -1)
        self.config = config
        self.actor = BatchedPolicy(policy)
        self.step_fn = self.actor.bind([detached_params(policy)])
        self.generator = torch.Generator().manual_seed(seed)
        self.init()

    def init(self) -> None:
        self._state: torch.Tensor | None = None  # fresh memory for every sub-env at the next action

    def _distribution(self, observations: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        obs = torch.as_tensor(observations, dtype=torch.float32)
        start = self._state is None
        state = self.actor.initial_state(len(obs)) if self._state is None else self._state
        if start:
            # A trial's first step sees no previous action or reward (as in training): the inputs carry
            # the last ones of whatever this env ran before (another goal's trial, say).
            obs = obs.clone()
            obs[:, self._previous_step] = 0.0
        with torch.no_grad():
            mean, log_std, self._state = self.step_fn(obs, state, torch.full((len(obs),), start))
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
        # (K, A), (K,): the last step's, zeros before any.
        self._last_actions = np.zeros((self.num_envs, *envs.single_action_space.shape), np.float32)
        self._last_rewards = np.zeros(self.num_envs, np.float32)

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
