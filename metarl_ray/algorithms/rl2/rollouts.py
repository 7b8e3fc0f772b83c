"""RL²'s rollout program: trials of consecutive episodes of one task, the memory carried across them."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from metarl_ray.algorithms.advantages import trial_advantages
from metarl_ray.algorithms.base import Collector, EvalPlan, SamplePlan
from metarl_ray.algorithms.rl2.inputs import in_context_step_inputs
from metarl_ray.batch import GoalEvaluation, TaskTrials
from metarl_ray.config import ConfigError, MetaLearnerConfig
from metarl_ray.envs import TaskSpec
from metarl_ray.policies.common import Params


class InContextRollouts:
    """The rollout side: ``trials_per_task`` trials of ``episodes_per_trial`` sampled episodes per task,
    with their advantages (``advantages.trial_advantages``, the meta-learner's lambda and normalisation)."""

    def __init__(self, config: MetaLearnerConfig, gamma: float) -> None:
        self.config = config
        self.gamma = gamma

    def sample(
        self,
        collector: Collector,
        envs: Sequence[Any],
        tasks: Sequence[TaskSpec],
        params: Params,
        rngs: Sequence[np.random.Generator],
        plan: SamplePlan | None,
        inner_lr: float | None,
    ) -> list[TaskTrials]:
        trials, _ = collector.collect_trials(
            envs,
            [params] * len(tasks),
            rngs,
            self.config.trials_per_task,
            [True] * self.config.episodes_per_trial,
            in_context_step_inputs,
        )
        return [
            TaskTrials(
                spec.slot,
                spec.env_name,
                spec.goal_index,
                dataclasses.replace(
                    batch,
                    advantages=trial_advantages(
                        batch.observations,
                        batch.rewards,
                        batch.episode_length,
                        self.gamma,
                        self.config.rl2_gae_lambda,
                        self.config.rl2_normalize_advantages,
                    ),
                ),
            )
            for spec, batch in zip(tasks, trials)
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
        """Before adaptation: a mean-action and K sampled episodes, each from a fresh memory. Adaptation:
        one trial of ``num_adaptation_episodes`` sampled episodes. After it: a mean-action and K sampled
        episodes, each continuing from where the adaptation trial stopped - its memory, last action and
        reward, as a trial's next episode would (so they are exchangeable draws of the adapted policy,
        as MAML's post-adaptation episodes are)."""
        per_task = [params] * len(tasks)
        k = plan.num_sampled_episodes
        pre_mean, _ = collector.collect_trials(envs, per_task, rngs, 1, [False], in_context_step_inputs)
        pre_sampled, _ = collector.collect_trials(envs, per_task, rngs, k, [True], in_context_step_inputs)
        _, adapted_memory = collector.collect_trials(
            envs, per_task, rngs, 1, [True] * plan.num_adaptation_episodes, in_context_step_inputs
        )
        post_mean, _ = collector.collect_trials(
            envs, per_task, rngs, 1, [False], in_context_step_inputs, adapted_memory
        )
        post_sampled, _ = collector.collect_trials(
            envs, per_task, rngs, k, [True], in_context_step_inputs, adapted_memory
        )
        steps_per_task = (2 + 2 * k + plan.num_adaptation_episodes) * collector.episode_length
        # Every phase is trials of one episode: their first episodes, as episode batches.
        return [
            GoalEvaluation.from_episodes(
                spec.slot,
                spec.env_name,
                spec.goal_index,
                (pre.episode(0), post.episode(0), pre_s.episode(0), post_s.episode(0)),
                steps_per_task,
            )
            for spec, pre, pre_s, post, post_s in zip(tasks, pre_mean, pre_sampled, post_mean, post_sampled)
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
        raise ConfigError(
            "--algorithm=rl2: adapts in its memory, not its parameters; metarl render shows meta-learners "
            "that adapt their parameters (maml_ppo)"
        )
