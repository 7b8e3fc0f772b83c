"""MAML+PPO's agent for Meta-World's official evaluation (``base.Agent``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from metarl_ray.algorithms.advantages import compute_advantages
from metarl_ray.algorithms.maml_ppo.objective import StepSizes, TensorBatch, adapt
from metarl_ray.batch import EpisodeBatch
from metarl_ray.config import TrainConfig
from metarl_ray.policies.common import BatchedPolicy, Params, detached_params, gaussian_log_prob

Step = tuple[np.ndarray, np.ndarray, float, float]  # observation, action, reward, sampling log-prob


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

    def init(self) -> None:
        self._params: list[Params] | None = None  # per sub-env, set on first use
        self._open: list[list[Step]] = []
        self._episodes: list[list[list[Step]]] = []

    def _params_for(self, num_envs: int) -> list[Params]:
        if self._params is None:
            self._params = [self.meta_params] * num_envs
            self._open = [[] for _ in range(num_envs)]
            self._episodes = [[] for _ in range(num_envs)]
            self._rebind(self._params)
        return self._params

    def _rebind(self, params: list[Params]) -> None:
        """New parameters: bind them once and restart every sub-env's recurrent state."""
        self._step_fn = self.actor.bind(params)
        self._state = self.actor.initial_state(len(params))
        self._episode_start = torch.ones(len(params), dtype=torch.bool)

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
                adapted = adapt(self.policy, leaf, [TensorBatch.from_numpy(batch)], self.step_sizes(leaf), False)
                params[env_index] = {name: p.detach() for name, p in adapted.items()}
        self._open = [[] for _ in self._episodes]
        self._episodes = [[] for _ in self._episodes]
        self._rebind(params)

    def step_sizes(self, params: Params) -> StepSizes:
        """The inner learning rate the run trained with (Meta-SGD: one per parameter, from ``params``)."""
        return self.config.maml.inner_lr

    def eval_action(self, observations: np.ndarray) -> np.ndarray:
        return self._distribution(observations)[0].numpy().astype(np.float64)

    def reset(self, env_mask: np.ndarray) -> None:
        """Sub-envs in ``env_mask`` start a new episode: their recurrent state restarts on the next action."""
        self._params_for(len(env_mask))
        self._episode_start = self._episode_start | torch.as_tensor(np.asarray(env_mask, dtype=bool))


def episodes_to_batch(episodes: list[list[Step]], config: TrainConfig) -> EpisodeBatch:
    horizon = min(len(episode) for episode in episodes)  # equal unless an episode ended early
    obs = np.array([[step[0] for step in ep[:horizon]] for ep in episodes], dtype=np.float32)
    actions = np.array([[step[1] for step in ep[:horizon]] for ep in episodes], dtype=np.float32)
    rewards = np.array([[step[2] for step in ep[:horizon]] for ep in episodes], dtype=np.float32)
    advantages = compute_advantages(obs, rewards, config.ppo.gamma, config.ppo.gae_lambda)
    log_probs = np.array([[step[3] for step in ep[:horizon]] for ep in episodes], dtype=np.float32)
    return EpisodeBatch(obs, actions, rewards, log_probs, advantages, np.zeros(len(episodes), dtype=bool))
