"""Multi-task PPO's agent for Meta-World's official evaluation (``base.Agent``): it acts with the
meta-parameters throughout; ``adapt`` changes nothing."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from metarl_ray.policies.common import BatchedPolicy, detached_params, gaussian_log_prob


class MultiTaskAgent:
    def __init__(self, policy: torch.nn.Module, seed: int = 0) -> None:
        self.actor = BatchedPolicy(policy)
        self.params = detached_params(policy)
        self.generator = torch.Generator().manual_seed(seed)
        self.init()

    def init(self) -> None:
        self._num_envs = 0  # set on the first action: one memory per sub-env (a recurrent policy's)

    def _distribution(self, observations: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        obs = torch.as_tensor(observations, dtype=torch.float32)
        if self._num_envs != len(obs):
            self._num_envs = len(obs)
            self._step_fn = self.actor.bind([self.params] * len(obs))
            self._state = self.actor.initial_state(len(obs))
            self._episode_start = torch.ones(len(obs), dtype=torch.bool)
        with torch.no_grad():
            mean, log_std, self._state = self._step_fn(obs, self._state, self._episode_start)
        self._episode_start = torch.zeros_like(self._episode_start)
        return mean, log_std

    def adapt_action(self, observations: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        mean, log_std = self._distribution(observations)
        actions = mean + log_std.exp() * torch.randn(mean.shape, generator=self.generator)
        return actions.numpy().astype(np.float64), {"log_probs": gaussian_log_prob(mean, log_std, actions).numpy()}

    def step(self, timestep: Any) -> None:
        """Nothing to record: the agent does not adapt."""

    def adapt(self) -> None:
        """No adaptation."""

    def eval_action(self, observations: np.ndarray) -> np.ndarray:
        return self._distribution(observations)[0].numpy().astype(np.float64)

    def reset(self, env_mask: np.ndarray) -> None:
        """Sub-envs in ``env_mask`` start a new episode: their memory restarts on the next action."""
        if self._num_envs:
            self._episode_start = self._episode_start | torch.as_tensor(np.asarray(env_mask, dtype=bool))
