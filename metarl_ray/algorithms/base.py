"""What every meta-learner provides, on each side of the system (MAML+PPO and in-context RL² are the two):

- the rollout side (``RolloutProgram``): what a rollout actor runs on a meta-batch of tasks to sample
  training data, and on held-out goals to meta-test them;
- the learner side (``MetaLearner``): the differentiable loss the learner optimises;
- the evaluation side: an agent for Meta-World's ``MetaLearningAgent`` protocol
  (``metarl_ray.evaluation.agent.build_agent``).

The rollout actor, the learner, the trainer and the evaluator call these and never ask which
meta-learner they hold; ``metarl_ray.algorithms`` builds the pair a config names.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from metarl_ray.batch import EpisodeBatch, GoalEvaluation, TrialBatch
from metarl_ray.envs.metaworld import TaskSpec
from metarl_ray.policies.common import Params


@dataclass(frozen=True)
class SamplePlan:
    """MAML: how many episodes to collect per task in each phase of one sample call."""

    num_support_episodes: int  # per inner step
    num_query_episodes: int


@dataclass(frozen=True)
class EvalPlan:
    """Episodes per held-out goal in a meta-test (see ``GoalEvaluation``)."""

    num_adaptation_episodes: int = 10  # per inner step (MAML) or in the adapting trial (in context), sampled
    num_sampled_episodes: int = 3  # sampled-action episodes before and after adaptation


class Collector(Protocol):
    """What a rollout worker offers a rollout program: Meta-World envs stepped in lockstep, one per task."""

    policy: nn.Module
    episode_length: int

    def collect(
        self,
        envs: Sequence[Any],
        params: Sequence[Params],
        rngs: Sequence[np.random.Generator],
        num_episodes: int,
        deterministic: bool = False,
    ) -> list[EpisodeBatch]:
        """``num_episodes`` episodes per env, each from a fresh memory (one batch per env)."""
        ...

    def collect_trials(
        self,
        envs: Sequence[Any],
        params: Sequence[Params],
        rngs: Sequence[np.random.Generator],
        num_trials: int,
        sampled: Sequence[bool],
        initial_memory: Any = None,
    ) -> tuple[list[TrialBatch], Any]:
        """``num_trials`` trials per env of ``len(sampled)`` episodes each, the memory carried across a
        trial's episodes; episode e samples its actions if ``sampled[e]``, else takes the mean. Each trial
        continues ``initial_memory`` (default: a fresh one); also returns where the last trial stopped
        (``rl2.InContextMemory``: memory, last action and reward)."""
        ...


class RolloutProgram(Protocol):
    """What a rollout actor runs per task. ``params``: the meta-parameters; ``rngs``: one noise stream per
    task (keyed by the caller, so results do not depend on how tasks are split across actors);
    ``step_size_scale`` scales the meta-learner's own step sizes (after a rolled-back update)."""

    def sample(
        self,
        collector: Collector,
        envs: Sequence[Any],
        tasks: Sequence[TaskSpec],
        params: Params,
        rngs: Sequence[np.random.Generator],
        plan: SamplePlan | None,
        inner_lr: float | None,
    ) -> list[Any]:
        """One iteration's training data per task (``TaskRollouts`` or ``TaskTrials``)."""
        ...

    def evaluate(
        self,
        collector: Collector,
        envs: Sequence[Any],
        tasks: Sequence[TaskSpec],
        params: Params,
        rngs: Sequence[np.random.Generator],
        plan: EvalPlan,
        inner_lr: float | None,
    ) -> list[GoalEvaluation]:
        """Meta-test every task: before adaptation, adaptation, after adaptation, both action rules."""
        ...


class MetaLearner(Protocol):
    """What the learner needs of a meta-learner. The learner owns the optimizer, precision, gradient
    accumulation and the all-reduce across learners; the meta-learner says what each optimizer step of
    an iteration descends and gives a differentiable loss for any subset of that step's items."""

    policy: nn.Module

    @property
    def learning_rate(self) -> float:
        """The configured Adam step size (the learner scales it after a rolled-back update)."""
        ...

    @property
    def per_task_graphs_on_cpu(self) -> bool:
        """Whether one graph per item beats batched graphs on a CPU (``--meta_batching auto``)."""
        ...

    @property
    def max_items_per_graph(self) -> int | None:
        """Items one batched graph may hold at most (None: no limit); more are split (same gradient)."""
        ...

    def tensors(self, rollouts: Any, device: torch.device) -> Any:
        """One task's rollouts (as its RolloutProgram sampled them) as tensors on the learner's device."""
        ...

    def optimizer_steps(self, tasks: Sequence[Any], rng: np.random.Generator) -> Iterator[Sequence[Any]]:
        """The iteration's optimizer steps, in order: each the items (tasks, or pieces of them) whose mean
        loss it descends. Drawn lazily, so a step may depend on the parameters the previous ones left.
        ``rng``: the iteration's own stream (shuffles), so a resumed run repeats the update exactly."""
        ...

    def loss(self, items: Sequence[Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean loss over ``items`` (of one optimizer step), differentiable in the policy's parameters,
        and mean statistics (flat ``section/name`` keys) over the same items."""
        ...

    def set_lr_scale(self, lr_scale: float) -> None:
        """Scale the meta-learner's own step sizes (MAML: inner_lr) by ``lr_scale`` of their configured
        values; the learner scales the Adam step size itself (after a rolled-back non-finite update)."""
        ...
