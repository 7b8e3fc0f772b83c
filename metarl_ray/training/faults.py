"""Fault injection for the fault-tolerance tests, kept out of the learner's update loop.

A test sets an environment variable; the learner actor (the Ray edge) reads it once when it builds its
learner and installs a wrapper around the meta-learner plus a hook the learner calls before each
update. The update loop itself carries no injection code.

- ``METARL_INJECT_NONFINITE``: comma-separated iterations (1-based) whose meta-update loss is NaN;
  ``N@R`` poisons iteration N on learner rank R only.
- ``METARL_INJECT_OOM_ABOVE_TASKS``: a simulated memory limit; a graph of more items raises an
  out-of-memory error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from metarl_ray.algorithms.base import MetaLearner

if TYPE_CHECKING:
    from metarl_ray.training.learner import Learner

INJECT_NONFINITE_ENV = "METARL_INJECT_NONFINITE"
INJECT_OOM_ENV = "METARL_INJECT_OOM_ABOVE_TASKS"


@dataclass(frozen=True)
class FaultPlan:
    nonfinite: tuple[tuple[int, int | None], ...] = ()  # (iteration, learner rank or None: every learner)
    oom_above_items: int | None = None

    @staticmethod
    def from_environment() -> FaultPlan | None:
        """The faults the environment asks for; None when it asks for none."""
        nonfinite = []
        for item in os.environ.get(INJECT_NONFINITE_ENV, "").split(","):
            if item.strip():
                iteration, _, rank = item.strip().partition("@")
                nonfinite.append((int(iteration), int(rank) if rank else None))
        oom = int(os.environ[INJECT_OOM_ENV]) if os.environ.get(INJECT_OOM_ENV) else None
        return FaultPlan(tuple(nonfinite), oom) if nonfinite or oom is not None else None


class FaultyMetaLearner:
    """A meta-learner that behaves like ``inner`` but for the planned faults: a NaN loss in the planned
    iterations, an out-of-memory error for a graph above the planned size."""

    def __init__(self, inner: MetaLearner, plan: FaultPlan) -> None:
        self.inner = inner
        self.plan = plan
        self.policy = inner.policy
        self._poisoned = False

    def begin_iteration(self, iteration: int | None) -> None:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self._poisoned = any(it == iteration and (r is None or r == rank) for it, r in self.plan.nonfinite)

    @property
    def learning_rate(self) -> float:
        return self.inner.learning_rate

    @property
    def per_task_graphs_on_cpu(self) -> bool:
        return self.inner.per_task_graphs_on_cpu

    @property
    def max_items_per_graph(self) -> int | None:
        return self.inner.max_items_per_graph

    def tensors(self, rollouts: Any, device: torch.device) -> Any:
        return self.inner.tensors(rollouts, device)

    def optimizer_steps(self, tasks: Sequence[Any], rng: np.random.Generator) -> Iterator[Sequence[Any]]:
        return self.inner.optimizer_steps(tasks, rng)

    def set_lr_scale(self, lr_scale: float) -> None:
        self.inner.set_lr_scale(lr_scale)

    def loss(self, items: Sequence[Any]) -> tuple[torch.Tensor, dict[str, float]]:
        if self.plan.oom_above_items is not None and len(items) > self.plan.oom_above_items:
            raise torch.OutOfMemoryError(f"injected: a graph of {len(items)} tasks > {self.plan.oom_above_items}")
        loss, stats = self.inner.loss(items)
        return (loss * float("nan") if self._poisoned else loss), stats


def install_faults(learner: Learner, plan: FaultPlan) -> None:
    """Put the planned faults into ``learner``: its meta-learner wrapped, and told each iteration."""
    faulty = FaultyMetaLearner(learner.algorithm, plan)
    learner.algorithm = faulty
    learner.before_update.append(faulty.begin_iteration)
