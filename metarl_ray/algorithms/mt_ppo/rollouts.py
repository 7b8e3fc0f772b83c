"""Multi-task PPO's rollout program: episodes of the meta-parameters on every task, and a meta-test
that scores them without adaptation (its pre- and post-adaptation figures are the same episodes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from metarl_ray.algorithms.advantages import with_advantages
from metarl_ray.algorithms.base import Collector, EvalPlan, SamplePlan
from metarl_ray.algorithms.mt_ppo.objective import TaskEpisodes
from metarl_ray.batch import EpisodeBatch, GoalEvaluation
from metarl_ray.config import MAMLConfig, PPOConfig
from metarl_ray.envs import TaskSpec
from metarl_ray.policies.common import Params


class MultiTaskRollouts:
    """Per task and iteration, the episodes MAML+PPO spends on it (``episodes_per_task`` per inner step
    and for the query), so the two compare at equal env steps."""

    def __init__(self, maml: MAMLConfig, ppo: PPOConfig) -> None:
        self.num_episodes = maml.episodes_per_task * (maml.num_inner_steps + 1)
        self.ppo = ppo

    def collect(
        self,
        collector: Collector,
        envs: Sequence[Any],
        params: Params,
        rngs: Sequence[np.random.Generator],
        num_episodes: int,
        deterministic: bool = False,
    ) -> list[EpisodeBatch]:
        """The collector's episodes with GAE advantages over the linear baseline (PPO section's gamma, lambda)."""
        return [
            with_advantages(batch, self.ppo.gamma, self.ppo.gae_lambda)
            for batch in collector.collect(envs, [params] * len(envs), rngs, num_episodes, deterministic)
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
    ) -> list[TaskEpisodes]:
        num_episodes = self.num_episodes if plan is None else plan.num_support_episodes + plan.num_query_episodes
        batches = self.collect(collector, envs, params, rngs, num_episodes)
        return [TaskEpisodes(spec.slot, spec.env_name, spec.goal_index, batch) for spec, batch in zip(tasks, batches)]

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
        """A mean-action and K sampled episodes per goal, standing for both phases: a policy that does not
        adapt has one distribution of episodes, so its gain is 0 exactly (no adaptation episodes run)."""
        mean_action = collector.collect(envs, [params] * len(envs), rngs, 1, deterministic=True)
        sampled = collector.collect(envs, [params] * len(envs), rngs, plan.num_sampled_episodes)
        steps_per_task = (1 + plan.num_sampled_episodes) * collector.episode_length
        return [
            GoalEvaluation.from_episodes(
                spec.slot, spec.env_name, spec.goal_index, (mean, mean, draws, draws), steps_per_task
            )
            for spec, mean, draws in zip(tasks, mean_action, sampled)
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
        """No adaptation: the meta-parameters themselves."""
        return params
