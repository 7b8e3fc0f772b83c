"""In-context meta-RL (RL², Duan et al. 2016; Wang et al. 2016): a recurrent policy adapts in its memory.

A trial is E consecutive episodes of one task. The policy's memory carries across the episodes of a
trial and starts fresh only at the next trial, so what it learns from the rewards of episode e shapes
episode e + 1; there is no gradient step at test time. At every step the policy sees

    x_t = [ o_t, a_{t-1}, REWARD_INPUT_SCALE * r_{t-1}, d_t ]

with d_t = 1 at the first step of each episode (the RL² convention: the first step of episode e + 1
still sees the last action and reward of episode e; the first step of a trial sees zeros).

The outer objective is PPO's clipped surrogate over whole trials, with GAE running across the episode
boundaries of a trial (``advantages.trial_advantages``). Training recomputes each trial in one call of
the policy's ``forward``, a sequence scan from a fresh memory (the SSM) or the step loop (the GRU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from metarl_ray.algorithms.base import EvalPlan, SamplePlan
from metarl_ray.algorithms.ppo import clipped_surrogate
from metarl_ray.config import MetaLearnerConfig, PPOConfig
from metarl_ray.envs.metaworld import ACTION_DIM, OBS_DIM
from metarl_ray.policies.common import Params, log_prob
from metarl_ray.training.batch import GoalEvaluation, TaskTrials, TrialBatch

# Meta-World's dense rewards are 0..10 per step: a tenth keeps the reward input at the observations' scale.
REWARD_INPUT_SCALE = np.float32(0.1)
IN_CONTEXT_INPUT_DIM = OBS_DIM + ACTION_DIM + 2


def in_context_step_inputs(observations: np.ndarray, previous_actions: np.ndarray | None,
                           previous_rewards: np.ndarray | None, episode_start: bool | np.ndarray) -> np.ndarray:
    """One step's policy input for K envs: (K, D), (K, A) | None, (K,) | None, bool | (K,) -> (K, D + A + 2).
    None: the first step of a trial (no previous action or reward)."""
    num_envs = observations.shape[0]
    previous_actions = np.zeros((num_envs, ACTION_DIM), np.float32) if previous_actions is None else previous_actions
    previous_rewards = np.zeros(num_envs, np.float32) if previous_rewards is None else previous_rewards
    flags = np.broadcast_to(np.asarray(episode_start, dtype=np.float32), (num_envs,))
    return np.concatenate([observations, previous_actions, (REWARD_INPUT_SCALE * previous_rewards)[:, None],
                           flags[:, None]], axis=1, dtype=np.float32)


@dataclass(frozen=True)
class InContextMemory:
    """Where a trial stopped, to continue it: the policy's memory (K, ...) and the last step's actions
    (K, A) and rewards (K,). The next episode's first step sees that action and reward, as the first
    step of every later episode of a trial does."""

    state: torch.Tensor
    last_actions: np.ndarray
    last_rewards: np.ndarray

    def rows(self, start: int, stop: int) -> "InContextMemory":
        return InContextMemory(self.state[start:stop], self.last_actions[start:stop], self.last_rewards[start:stop])


def in_context_inputs(observations: np.ndarray, actions: np.ndarray, rewards: np.ndarray, episode_length: int) -> np.ndarray:
    """The policy inputs of whole trials, exactly as the rollout built them step by step:
    (N, L, D), (N, L, A), (N, L) -> (N, L, D + A + 2)."""
    num_trials, length = rewards.shape
    previous_actions = np.zeros_like(actions)
    previous_actions[:, 1:] = actions[:, :-1]
    previous_rewards = np.zeros_like(rewards)
    previous_rewards[:, 1:] = REWARD_INPUT_SCALE * rewards[:, :-1]
    flags = np.zeros((num_trials, length), np.float32)
    flags[:, ::episode_length] = 1.0
    return np.concatenate([observations, previous_actions, previous_rewards[..., None], flags[..., None]],
                          axis=-1, dtype=np.float32)


@dataclass(frozen=True)
class TrialTensors:
    """One task's trials as tensors on the learner's device."""

    inputs: torch.Tensor  # (N, L, D + A + 2): observations and in-context inputs
    actions: torch.Tensor  # (N, L, A)
    log_probs: torch.Tensor  # (N, L) of the sampling policy
    advantages: torch.Tensor  # (N, L)

    @staticmethod
    def from_trials(trials: TrialBatch, device: torch.device | str = "cpu") -> "TrialTensors":
        def to(array: np.ndarray) -> torch.Tensor:
            return torch.tensor(array, device=device, dtype=torch.float32)

        inputs = in_context_inputs(trials.observations, trials.actions, trials.rewards, trials.episode_length)
        return TrialTensors(to(inputs), to(trials.actions), to(trials.log_probs), to(trials.advantages))


class RL2PPO:
    """The learner's side of in-context meta-RL: PPO's clipped surrogate over whole trials."""

    def __init__(self, policy: nn.Module, ppo: PPOConfig) -> None:
        self.policy = policy
        self.ppo = ppo

    @property
    def num_updates(self) -> int:
        return self.ppo.num_ppo_epochs

    @property
    def per_task_graphs_on_cpu(self) -> bool:
        # No per-task parameters: tasks only add sequences to one forward pass, which a batch does best.
        return False

    def tensors(self, rollouts: TaskTrials, device: torch.device) -> TrialTensors:
        return TrialTensors.from_trials(rollouts.trials, device)

    def set_lr_scale(self, lr_scale: float) -> None:
        """No step size of its own (the learner scales meta_lr)."""

    def loss(self, tasks: Sequence[TrialTensors]) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean over tasks of each task's clipped surrogate; tasks of equal shapes (training batches
        always are) go through the policy as one batch of sequences."""
        params = dict(self.policy.named_parameters())
        if len({task.inputs.shape for task in tasks}) == 1:
            stacked = TrialTensors(*(torch.stack([getattr(task, f) for task in tasks])
                                     for f in ("inputs", "actions", "log_probs", "advantages")))
            num_tasks, num_trials = stacked.inputs.shape[:2]
            new_log_probs = log_prob(self.policy, params, stacked.inputs.flatten(0, 1), stacked.actions.flatten(0, 1))
            losses, stats = clipped_surrogate(new_log_probs.view(num_tasks, num_trials, -1), stacked.log_probs,
                                              stacked.advantages, self.ppo.clip_eps)
        else:
            pairs = [clipped_surrogate(log_prob(self.policy, params, task.inputs, task.actions), task.log_probs,
                                       task.advantages, self.ppo.clip_eps) for task in tasks]
            losses = torch.stack([loss for loss, _ in pairs])
            stats = {key: torch.stack([s[key] for _, s in pairs]) for key in pairs[0][1]}
        return losses.mean(), {key: float(value.double().mean()) for key, value in stats.items()}


class InContextRollouts:
    """The rollout side: ``trials_per_task`` trials of ``episodes_per_trial`` sampled episodes per task."""

    def __init__(self, config: MetaLearnerConfig) -> None:
        self.config = config

    def sample(self, collector: Any, envs: Sequence[Any], tasks: Sequence[Any], params: Params,
               rngs: Sequence[np.random.Generator], plan: SamplePlan | None, inner_lr: float | None) -> list[TaskTrials]:
        trials, _ = collector.collect_trials(envs, [params] * len(tasks), rngs, self.config.trials_per_task,
                                             [True] * self.config.episodes_per_trial)
        return [TaskTrials(spec.slot, spec.env_name, spec.goal_index, batch) for spec, batch in zip(tasks, trials)]

    def evaluate(self, collector: Any, envs: Sequence[Any], tasks: Sequence[Any], params: Params,
                 rngs: Sequence[np.random.Generator], plan: EvalPlan, inner_lr: float | None) -> list[GoalEvaluation]:
        """Before adaptation: a mean-action and K sampled episodes, each from a fresh memory. Adaptation:
        one trial of ``num_adaptation_episodes`` sampled episodes. After it: a mean-action and K sampled
        episodes, each continuing from where the adaptation trial stopped - its memory, last action and
        reward, as a trial's next episode would (so they are exchangeable draws of the adapted policy,
        as MAML's post-adaptation episodes are)."""
        per_task = [params] * len(tasks)
        k = plan.num_sampled_episodes
        pre_mean, _ = collector.collect_trials(envs, per_task, rngs, 1, [False])
        pre_sampled, _ = collector.collect_trials(envs, per_task, rngs, k, [True])
        _, adapted_memory = collector.collect_trials(envs, per_task, rngs, 1, [True] * plan.num_adaptation_episodes)
        post_mean, _ = collector.collect_trials(envs, per_task, rngs, 1, [False], initial_memory=adapted_memory)
        post_sampled, _ = collector.collect_trials(envs, per_task, rngs, k, [True], initial_memory=adapted_memory)
        steps_per_task = (2 + 2 * k + plan.num_adaptation_episodes) * collector.episode_length
        return [
            GoalEvaluation(
                slot=spec.slot, env_name=spec.env_name, goal_index=spec.goal_index,
                pre_mean_success=bool(pre.successes[0, 0]), post_mean_success=bool(post.successes[0, 0]),
                pre_mean_return=float(pre.episode_returns[0, 0]), post_mean_return=float(post.episode_returns[0, 0]),
                pre_sampled_successes=pre_s.successes[:, 0].copy(), post_sampled_successes=post_s.successes[:, 0].copy(),
                pre_sampled_returns=pre_s.episode_returns[:, 0].copy(), post_sampled_returns=post_s.episode_returns[:, 0].copy(),
                num_steps=steps_per_task)
            for spec, pre, pre_s, post, post_s in zip(tasks, pre_mean, pre_sampled, post_mean, post_sampled)
        ]

    def adapt_to_goal(self, *args: Any, **kwargs: Any) -> Params:
        raise NotImplementedError("in-context adaptation keeps no adapted parameters (its memory is the adaptation)")
