"""What every meta-learner provides, on each side of the system (MAML+PPO and in-context RL² are the two):

- the rollout side (``RolloutProgram``): what a rollout actor runs on a meta-batch of tasks to sample
  training data, and on held-out goals to meta-test them;
- the learner side (``MetaLearner``): the differentiable loss the learner optimises;
- the evaluation side (``Agent``): an agent for Meta-World's ``MetaLearningAgent`` protocol, which the
  official evaluation runs;
- the config side: the checks and resolved defaults that only that meta-learner knows.

Each meta-learner is one folder (``maml_ppo/``, ``rl2/``) whose ``BUILDER`` (``MetaLearnerBuilder``)
hands these out; ``metarl_ray.registry`` maps a config's ``--algorithm`` to it. The rollout actor,
the learner, the trainer and the evaluator call the builder and never ask which meta-learner runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch import nn

from metarl_ray.batch import EpisodeBatch, GoalEvaluation, TaskData, TrialBatch
from metarl_ray.config import MAMLConfig, MetaLearnerConfig, PolicyConfig, PPOConfig, TrainConfig
from metarl_ray.envs import EnvFamily, TaskSpec
from metarl_ray.policies import build_policy
from metarl_ray.policies.common import Params, State
from metarl_ray.registry import get_builder


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


@dataclass(frozen=True)
class CarriedMemory:
    """Where a trial stopped, to continue it: the policy's memory (K, ...) and the last step's actions
    (K, A) and rewards (K,). The next episode's first step sees that action and reward, as the first
    step of every later episode of a trial does."""

    state: State
    last_actions: np.ndarray
    last_rewards: np.ndarray

    def rows(self, start: int, stop: int) -> CarriedMemory:
        return CarriedMemory(self.state[start:stop], self.last_actions[start:stop], self.last_rewards[start:stop])


class StepInputs(Protocol):
    """A meta-learner's policy input at one step of K envs, from what the env and the policy just did:
    observations (K, D), previous actions (K, A) and rewards (K,) (zeros at a trial's first step), and
    whether the step starts an episode -> (K, policy input size)."""

    def __call__(
        self,
        observations: np.ndarray,
        previous_actions: np.ndarray,
        previous_rewards: np.ndarray,
        episode_start: bool | np.ndarray,
    ) -> np.ndarray: ...


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
        """``num_episodes`` episodes per env, each from a fresh memory (one batch per env), the policy
        seeing the observation alone; their ``advantages`` are the program's to compute (None)."""
        ...

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
        """``num_trials`` trials per env of ``len(sampled)`` episodes each, the memory carried across a
        trial's episodes and the policy seeing ``step_inputs``; episode e samples its actions if
        ``sampled[e]``, else takes the mean. Each trial continues ``initial_memory`` (default: a fresh
        one); also returns where the last trial stopped. Advantages are the program's (None)."""
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
    ) -> Sequence[TaskData]:
        """One iteration's training data per task (MAML: ``TaskRollouts``; in context: ``TaskTrials``)."""
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

    def adapt_to_goal(
        self,
        collector: Collector,
        envs: Sequence[Any],
        params: Params,
        rngs: Sequence[np.random.Generator],
        plan: EvalPlan,
        inner_lr: float | None,
    ) -> Params:
        """The adapted parameters ``evaluate`` reaches on one goal (its adaptation episodes, same noise),
        for ``metarl render``; a meta-learner that adapts in context raises ConfigError."""
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


class Agent(Protocol):
    """Meta-World's ``MetaLearningAgent``: what its official evaluation functions call, one task per
    sub-env of a vector env."""

    def init(self) -> None:
        """Forget every task: the meta-parameters and a fresh memory for every sub-env."""
        ...

    def adapt_action(self, observations: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Sampled actions of the adaptation episodes, with what ``step`` records beside them."""
        ...

    def step(self, timestep: Any) -> None:
        """Record one step of the adaptation episodes."""
        ...

    def adapt(self) -> None:
        """Adapt every sub-env's policy to what its adaptation episodes showed."""
        ...

    def eval_action(self, observations: np.ndarray) -> np.ndarray:
        """Mean actions of the adapted policies."""
        ...

    def reset(self, env_mask: np.ndarray) -> None:
        """Sub-envs in ``env_mask`` start a new episode."""
        ...


class MetaLearnerBuilder(Protocol):
    """One meta-learner's parts for every side of the system (Acme's builder shape). A component gets
    only the config sections it needs."""

    name: str  # the ``--algorithm`` value

    def check_config(self, config: TrainConfig) -> None:
        """What this meta-learner needs of the other sections (a memory, say); raises ConfigError."""
        ...

    def default_ssm_max_timescale(self, config: TrainConfig) -> int:
        """``--ssm_max_timescale`` when the config leaves it unset (0: S4D-Real's time scales)."""
        ...

    def legacy_settings(self, sections: dict[str, dict[str, Any]]) -> None:
        """Fill in, in place, this meta-learner's settings that a config saved before they existed
        lacks, with the behaviour it then had."""
        ...

    def policy_input_dim(self, family: EnvFamily) -> int:
        """What the policy sees per step."""
        ...

    def extend_policy(self, policy: nn.Module, maml: MAMLConfig) -> None:
        """Add the meta-learner's own meta-parameters to the policy module, in place (Meta-SGD: its
        learned step sizes), so the learner optimises, publishes and checkpoints them with the rest."""
        ...

    def rollout_program(self, meta_learner: MetaLearnerConfig, maml: MAMLConfig, ppo: PPOConfig) -> RolloutProgram: ...

    def meta_learner(
        self, policy: nn.Module, meta_learner: MetaLearnerConfig, maml: MAMLConfig, ppo: PPOConfig
    ) -> MetaLearner: ...

    def agent(self, policy: nn.Module, config: TrainConfig, family: EnvFamily, seed: int) -> Agent:
        """An agent for the family's official evaluation; ``config`` holds the learning rates it adapts with."""
        ...

    def official_envs(self, envs: Any) -> Any:
        """The official evaluation's vector env as this meta-learner's agent needs to see it."""
        ...

    def adaptation_protocol(self, config: TrainConfig) -> dict[str, Any]:
        """How it adapts at meta-test: ``num_inner_steps`` (None: in context), for reports and the
        official evaluation."""
        ...


def builder_for(meta_learner: MetaLearnerConfig) -> MetaLearnerBuilder:
    """The builder of the meta-learner a config names (``metarl_ray.registry.META_LEARNERS``)."""
    return cast(MetaLearnerBuilder, get_builder(meta_learner.algorithm))


def build_meta_policy(
    meta_learner: MetaLearnerConfig, family: EnvFamily, policy: PolicyConfig, maml: MAMLConfig
) -> nn.Module:
    """The policy module a meta-learner trains: the policy for its inputs, with its own meta-parameters."""
    builder = builder_for(meta_learner)
    module = build_policy(builder.policy_input_dim(family), family.action_dim, policy)
    builder.extend_policy(module, maml)
    return module
