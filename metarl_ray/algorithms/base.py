"""What every meta-learner provides the learner (MAML+PPO is the first)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Sequence

import torch
from torch import nn

if TYPE_CHECKING:
    from metarl_ray.algorithms.maml_ppo import TaskTensors


class MetaLearner(Protocol):
    """What the learner needs of a meta-learner (MAML+PPO is the first). The learner owns the
    optimizer, precision, gradient accumulation and the all-reduce across learners; the meta-learner
    says how many optimizer steps an iteration takes and gives a differentiable loss for any subset of
    the iteration's tasks."""

    policy: nn.Module

    @property
    def num_updates(self) -> int:
        """Optimizer steps per iteration (PPO epochs)."""
        ...

    def loss(self, tasks: Sequence[TaskTensors]) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean loss over ``tasks``, differentiable in the policy's parameters, and mean statistics
        (flat ``section/name`` keys) over the same tasks."""
        ...

    def set_lr_scale(self, lr_scale: float) -> None:
        """Scale the meta-learner's own step sizes (MAML: inner_lr) by ``lr_scale`` of their configured
        values; the learner scales meta_lr itself (after a rolled-back non-finite update)."""
        ...
