"""Multi-task PPO's learner side: PPO's clipped surrogate on every task's episodes, no inner step."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from metarl_ray.algorithms.ppo import clipped_surrogate
from metarl_ray.batch import EpisodeBatch
from metarl_ray.config import PPOConfig
from metarl_ray.policies.common import Params, log_prob


@dataclass(frozen=True)
class TaskEpisodes:
    """One task's episodes of an iteration, all from the meta-parameters (there is no adaptation)."""

    slot: int
    env_name: str
    goal_index: int
    episodes: EpisodeBatch  # with the program's advantages

    @property
    def num_steps(self) -> int:
        return self.episodes.num_steps

    @property
    def num_env_faults(self) -> int:
        return self.episodes.num_env_faults

    def before_and_after_adaptation(self) -> tuple[EpisodeBatch, EpisodeBatch]:
        """No adaptation: the same episodes on both sides, so the journal's gain is 0 by construction."""
        return self.episodes, self.episodes


@dataclass(frozen=True)
class EpisodeTensors:
    """One task's episodes as tensors on the learner's device."""

    observations: torch.Tensor  # (N, T, D)
    actions: torch.Tensor  # (N, T, A)
    log_probs: torch.Tensor  # (N, T) of the sampling policy
    advantages: torch.Tensor  # (N, T)

    @staticmethod
    def from_task(task: TaskEpisodes, device: torch.device) -> EpisodeTensors:
        batch = task.episodes
        if batch.advantages is None:
            raise ValueError("episodes without advantages: the rollout program computes them (MultiTaskRollouts)")

        def to(array: np.ndarray) -> torch.Tensor:
            return torch.tensor(array, device=device, dtype=torch.float32)  # copies: Ray's arrays are read-only

        return EpisodeTensors(to(batch.observations), to(batch.actions), to(batch.log_probs), to(batch.advantages))


class MultiTaskPPO:
    """PPO on the meta-batch's tasks pooled: ``num_ppo_epochs`` full-batch steps per iteration (the
    same steps MAML+PPO's outer loop takes), each the mean clipped surrogate over tasks."""

    def __init__(self, policy: nn.Module, ppo: PPOConfig) -> None:
        self.policy = policy
        self.ppo = ppo

    @property
    def learning_rate(self) -> float:
        return self.ppo.meta_lr

    @property
    def per_task_graphs_on_cpu(self) -> bool:
        return False  # no per-task parameters: one batched forward pass

    @property
    def max_items_per_graph(self) -> int | None:
        return None  # first-order graphs: small enough to take the meta-batch at once

    def tensors(self, rollouts: TaskEpisodes, device: torch.device) -> EpisodeTensors:
        return EpisodeTensors.from_task(rollouts, device)

    def set_lr_scale(self, lr_scale: float) -> None:
        """No step size of its own (the learner scales meta_lr)."""

    def optimizer_steps(
        self, tasks: Sequence[EpisodeTensors], rng: np.random.Generator
    ) -> Iterator[Sequence[EpisodeTensors]]:
        for _ in range(self.ppo.num_ppo_epochs):
            yield tasks

    def loss(self, tasks: Sequence[EpisodeTensors]) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean over tasks of each task's clipped surrogate (tasks weigh equally, as MAML+PPO's do);
        tasks of one shape (training batches always are) go through the policy as one batch."""
        params: Params = dict(self.policy.named_parameters())
        groups: dict[tuple[int, ...], list[EpisodeTensors]] = {}
        for task in tasks:
            groups.setdefault(tuple(task.observations.shape), []).append(task)
        losses, kls, clips = [], [], []
        for group in groups.values():
            num_tasks, (num_episodes, horizon) = len(group), group[0].log_probs.shape
            stack = {
                name: torch.cat([getattr(task, name) for task in group])  # (K * N, T, ...)
                for name in ("observations", "actions", "log_probs", "advantages")
            }
            new_log_probs = log_prob(self.policy, params, stack["observations"], stack["actions"])
            shape = (num_tasks, num_episodes, horizon)
            loss, stats = clipped_surrogate(  # (K,) each
                new_log_probs.view(shape),
                stack["log_probs"].view(shape),
                stack["advantages"].view(shape),
                self.ppo.clip_eps,
            )
            losses.append(loss)
            kls.append(stats["ppo/kl"])
            clips.append(stats["ppo/clip_fraction"])
        return torch.cat(losses).mean(), {
            "ppo/kl": float(torch.cat(kls).double().mean()),
            "ppo/clip_fraction": float(torch.cat(clips).double().mean()),
        }
