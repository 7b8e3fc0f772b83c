"""MAML's rollout program: support episodes -> inner step -> query episodes, run in the rollout actor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn

from metarl_ray.algorithms.advantages import with_advantages
from metarl_ray.algorithms.base import Collector, EvalPlan, SamplePlan
from metarl_ray.algorithms.maml_ppo.objective import StepSizes, TensorBatch, adapt
from metarl_ray.batch import EpisodeBatch, GoalEvaluation, TaskRollouts
from metarl_ray.config import MAMLConfig, PPOConfig
from metarl_ray.envs import TaskSpec
from metarl_ray.policies.common import Params


class MAMLRollouts:
    """MAML's rollout program: per task, support episodes -> inner step (x num_inner_steps) -> query
    episodes, the inner steps taken in the rollout actor itself, so an iteration costs one parameter
    broadcast and one gather."""

    def __init__(self, maml: MAMLConfig, ppo: PPOConfig) -> None:
        self.maml = maml
        self.ppo = ppo

    def collect(
        self,
        collector: Collector,
        envs: Sequence[Any],
        params: Sequence[Params],
        rngs: Sequence[np.random.Generator],
        num_episodes: int,
        deterministic: bool = False,
    ) -> list[EpisodeBatch]:
        """The collector's episodes with their advantages (GAE over a linear baseline, per batch)."""
        return [
            with_advantages(batch, self.ppo.gamma, self.ppo.gae_lambda)
            for batch in collector.collect(envs, params, rngs, num_episodes, deterministic)
        ]

    def sample(
        self,
        collector: Collector,
        envs: Sequence[Any],
        tasks: Sequence[TaskSpec],
        params: Params,
        rngs: Sequence[np.random.Generator],
        plan: SamplePlan | None,
        inner_lr: float | None,
    ) -> list[TaskRollouts]:
        plan = plan or SamplePlan(self.maml.episodes_per_task, self.maml.episodes_per_task)
        per_task: list[Params] = [params] * len(tasks)
        supports: list[list[EpisodeBatch]] = [[] for _ in tasks]
        for _ in range(self.maml.num_inner_steps):
            batches = self.collect(collector, envs, per_task, rngs, plan.num_support_episodes)
            for index, batch in enumerate(batches):
                supports[index].append(batch)
                per_task[index] = self.adapt_one(collector.policy, per_task[index], batch, inner_lr)
        queries = self.collect(collector, envs, per_task, rngs, plan.num_query_episodes)
        return [
            TaskRollouts(spec.slot, spec.env_name, spec.goal_index, tuple(support), query)
            for spec, support, query in zip(tasks, supports, queries)
        ]

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
        """A mean-action episode, adaptation on sampled episodes (the first K of which are the
        pre-adaptation sampled figure), then a mean-action and K sampled episodes."""
        per_task: list[Params] = [params] * len(tasks)
        pre_mean = self.collect(collector, envs, per_task, rngs, 1, deterministic=True)
        first_support: list[EpisodeBatch] = []
        for _ in range(self.maml.num_inner_steps):  # at least one (MAMLConfig)
            batches = self.collect(collector, envs, per_task, rngs, plan.num_adaptation_episodes)
            first_support = first_support or batches
            per_task = [self.adapt_one(collector.policy, p, batch, inner_lr) for p, batch in zip(per_task, batches)]
        post_mean = self.collect(collector, envs, per_task, rngs, 1, deterministic=True)
        post_sampled = self.collect(collector, envs, per_task, rngs, plan.num_sampled_episodes)
        k = plan.num_sampled_episodes
        steps_per_task = (2 + k + plan.num_adaptation_episodes * self.maml.num_inner_steps) * collector.episode_length
        # The first K adaptation episodes are the pre-adaptation sampled ones (the meta-parameters sample them).
        return [
            GoalEvaluation.from_episodes(
                spec.slot, spec.env_name, spec.goal_index, (pre, post, support.first(k), sampled), steps_per_task
            )
            for spec, pre, support, post, sampled in zip(tasks, pre_mean, first_support, post_mean, post_sampled)
        ]

    def adapt_to_goal(
        self,
        collector: Collector,
        envs: Sequence[Any],
        params: Params,
        rngs: Sequence[np.random.Generator],
        plan: EvalPlan,
        inner_lr: float | None,
    ) -> Params:
        """The adapted parameters ``evaluate`` reaches on one goal: its adaptation episodes, same noise."""
        for _ in range(self.maml.num_inner_steps):
            batch = self.collect(collector, envs, [params], rngs, plan.num_adaptation_episodes)[0]
            params = self.adapt_one(collector.policy, params, batch, inner_lr)
        return params

    def adapt_one(self, policy: nn.Module, params: Params, batch: EpisodeBatch, inner_lr: float | None) -> Params:
        """One task's first-order inner steps on its batch (rollouts need no graph)."""
        leaf_params = {name: p.detach().requires_grad_(True) for name, p in params.items()}
        adapted = adapt(
            policy, leaf_params, [TensorBatch.from_numpy(batch)], self.step_sizes(leaf_params, inner_lr), False
        )
        return {name: p.detach() for name, p in adapted.items()}

    def step_sizes(self, params: Params, inner_lr: float | None) -> StepSizes:
        """The inner step's learning rate: the learner's current one, default the config's (Meta-SGD:
        one per parameter, read from ``params``)."""
        return self.maml.inner_lr if inner_lr is None else inner_lr
