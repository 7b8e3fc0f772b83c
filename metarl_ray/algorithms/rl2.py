"""In-context meta-RL (RL², Duan et al. 2016; Wang et al. 2016): a recurrent policy adapts in its memory.

A trial is E consecutive episodes of one task. The policy's memory carries across the episodes of a
trial and starts fresh only at the next trial, so what it learns from the rewards of episode e shapes
episode e + 1; there is no gradient step at test time. At every step the policy sees

    x_t = [ o_t, a_{t-1}, REWARD_INPUT_SCALE * r_{t-1}, d_t ]

with d_t = 1 at the first step of each episode (the RL² convention: the first step of episode e + 1
still sees the last action and reward of episode e; the first step of a trial sees zeros).

The outer objective is PPO's clipped surrogate plus an entropy bonus, with GAE running across the
episode boundaries of a trial (``advantages.trial_advantages``). Each epoch cuts every trial into chunks
(truncated backpropagation through time) and takes several minibatch steps; a chunk starts from the
memory the current policy carries into it (computed without gradient), so the recompute of a trial
equals the rollout's step by step. The policy's ``sequence`` runs a chunk: a scan (the SSM) or the step
loop (the GRU).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from metarl_ray.algorithms.advantages import trial_advantages
from metarl_ray.algorithms.base import EvalPlan, SamplePlan
from metarl_ray.algorithms.ppo import clipped_surrogate
from metarl_ray.batch import GoalEvaluation, TaskTrials, TrialBatch
from metarl_ray.config import MetaLearnerConfig, PPOConfig
from metarl_ray.envs.metaworld import ACTION_DIM, OBS_DIM
from metarl_ray.policies.common import LOG_STD_MAX, LOG_STD_MIN, Params, SequencePolicy, gaussian_log_prob

# Meta-World's dense rewards are 0..10 per step: a tenth keeps the reward input at the observations' scale.
REWARD_INPUT_SCALE = np.float32(0.1)
IN_CONTEXT_INPUT_DIM = OBS_DIM + ACTION_DIM + 2


def in_context_step_inputs(
    observations: np.ndarray,
    previous_actions: np.ndarray | None,
    previous_rewards: np.ndarray | None,
    episode_start: bool | np.ndarray,
) -> np.ndarray:
    """One step's policy input for K envs: (K, D), (K, A) | None, (K,) | None, bool | (K,) -> (K, D + A + 2).
    None: the first step of a trial (no previous action or reward)."""
    num_envs = observations.shape[0]
    previous_actions = np.zeros((num_envs, ACTION_DIM), np.float32) if previous_actions is None else previous_actions
    previous_rewards = np.zeros(num_envs, np.float32) if previous_rewards is None else previous_rewards
    flags = np.broadcast_to(np.asarray(episode_start, dtype=np.float32), (num_envs,))
    return np.concatenate(
        [observations, previous_actions, (REWARD_INPUT_SCALE * previous_rewards)[:, None], flags[:, None]],
        axis=1,
        dtype=np.float32,
    )


@dataclass(frozen=True)
class InContextMemory:
    """Where a trial stopped, to continue it: the policy's memory (K, ...) and the last step's actions
    (K, A) and rewards (K,). The next episode's first step sees that action and reward, as the first
    step of every later episode of a trial does."""

    state: torch.Tensor
    last_actions: np.ndarray
    last_rewards: np.ndarray

    def rows(self, start: int, stop: int) -> InContextMemory:
        return InContextMemory(self.state[start:stop], self.last_actions[start:stop], self.last_rewards[start:stop])


def in_context_inputs(
    observations: np.ndarray, actions: np.ndarray, rewards: np.ndarray, episode_length: int
) -> np.ndarray:
    """The policy inputs of whole trials, exactly as the rollout built them step by step:
    (N, L, D), (N, L, A), (N, L) -> (N, L, D + A + 2)."""
    num_trials, length = rewards.shape
    previous_actions = np.zeros_like(actions)
    previous_actions[:, 1:] = actions[:, :-1]
    previous_rewards = np.zeros_like(rewards)
    previous_rewards[:, 1:] = REWARD_INPUT_SCALE * rewards[:, :-1]
    flags = np.zeros((num_trials, length), np.float32)
    flags[:, ::episode_length] = 1.0
    return np.concatenate(
        [observations, previous_actions, previous_rewards[..., None], flags[..., None]], axis=-1, dtype=np.float32
    )


@dataclass(frozen=True)
class TrialTensors:
    """One task's trials as tensors on the learner's device."""

    inputs: torch.Tensor  # (N, L, D + A + 2): observations and in-context inputs
    actions: torch.Tensor  # (N, L, A)
    log_probs: torch.Tensor  # (N, L) of the sampling policy
    advantages: torch.Tensor  # (N, L)

    @staticmethod
    def from_trials(trials: TrialBatch, device: torch.device | str = "cpu") -> TrialTensors:
        def to(array: np.ndarray) -> torch.Tensor:
            return torch.tensor(array, device=device, dtype=torch.float32)

        if trials.advantages is None:
            raise ValueError("trials without advantages: the rollout program computes them (InContextRollouts.sample)")
        inputs = in_context_inputs(trials.observations, trials.actions, trials.rewards, trials.episode_length)
        return TrialTensors(to(inputs), to(trials.actions), to(trials.log_probs), to(trials.advantages))


@dataclass(frozen=True)
class TrialChunk:
    """Steps [start, start + C) of one trial and the memory the policy carries into them: what one
    truncated-backprop sequence of a minibatch holds (C = the whole trial when nothing is cut)."""

    inputs: torch.Tensor  # (C, D + A + 2)
    actions: torch.Tensor  # (C, A)
    log_probs: torch.Tensor  # (C,)
    advantages: torch.Tensor  # (C,)
    memory: torch.Tensor  # the policy's state entering the chunk, without gradient


def carried_memories(policy: nn.Module, inputs: torch.Tensor, chunk_length: int) -> list[torch.Tensor]:
    """The memory entering each chunk of whole trials, by the current policy from a fresh memory at the
    trial's start, without gradient: inputs (N, L, D) -> [state (N, ...)] * (L / chunk_length)."""
    memory_policy = cast(SequencePolicy, policy)
    state = memory_policy.initial_state(inputs.shape[0])
    memories = []
    chunks = torch.split(inputs, chunk_length, dim=1)
    with torch.no_grad():
        for index, chunk in enumerate(chunks):
            memories.append(state)
            if index + 1 < len(chunks):  # the state after the last chunk enters nothing
                _, _, state = memory_policy.sequence(chunk, state)
    return memories


def trial_chunks(policy: nn.Module, tasks: Sequence[TrialTensors], chunk_length: int) -> list[TrialChunk]:
    """Every task's trials cut into chunks of ``chunk_length`` steps (0: whole trials), each with the
    memory the current policy carries into it."""
    chunks: list[TrialChunk] = []
    for task in tasks:
        length = chunk_length or task.inputs.shape[1]
        memories = carried_memories(policy, task.inputs, length)
        for index, memory in enumerate(memories):
            steps = slice(index * length, (index + 1) * length)
            chunks.extend(
                TrialChunk(
                    task.inputs[n, steps],
                    task.actions[n, steps],
                    task.log_probs[n, steps],
                    task.advantages[n, steps],
                    memory[n],
                )
                for n in range(task.inputs.shape[0])
            )
    return chunks


class RL2PPO:
    """The learner's side of in-context meta-RL: PPO's clipped surrogate plus an entropy bonus, over
    minibatches of trial chunks (truncated backpropagation through time, the memory carried in)."""

    def __init__(self, policy: nn.Module, ppo: PPOConfig, config: MetaLearnerConfig) -> None:
        self.policy = policy
        self.memory_policy = cast(SequencePolicy, policy)  # the same module, typed by what is called here
        self.ppo = ppo
        self.config = config

    @property
    def learning_rate(self) -> float:
        return self.config.rl2_lr

    @property
    def per_task_graphs_on_cpu(self) -> bool:
        # No per-task parameters: tasks only add sequences to one forward pass, which a batch does best.
        return False

    @property
    def max_items_per_graph(self) -> int | None:
        return None  # first-order graphs of a minibatch's chunks: small enough to take at once

    def tensors(self, rollouts: TaskTrials, device: torch.device) -> TrialTensors:
        return TrialTensors.from_trials(rollouts.trials, device)

    def set_lr_scale(self, lr_scale: float) -> None:
        """No step size of its own (the learner scales rl2_lr)."""

    def optimizer_steps(self, tasks: Sequence[TrialTensors], rng: np.random.Generator) -> Iterator[list[TrialChunk]]:
        """``rl2_epochs`` epochs of ``rl2_minibatches`` steps over shuffled chunks of every trial. Each
        epoch recomputes the carried-in memories with the parameters it starts from."""
        for _ in range(self.config.rl2_epochs):
            chunks = trial_chunks(self.policy, tasks, self.config.rl2_chunk_length)
            order = rng.permutation(len(chunks))
            # Exactly rl2_minibatches steps, whatever this learner's share: with several learners every
            # step is an all-reduce, so all of them must take the same number (the config checks that
            # each share has a chunk for every minibatch).
            for indices in np.array_split(order, self.config.rl2_minibatches):
                yield [chunks[i] for i in indices]

    def loss(self, chunks: Sequence[TrialChunk]) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean clipped surrogate over the chunks' steps minus the entropy bonus; chunks of equal length
        (training batches always are) go through the policy as one batch of sequences."""
        groups: dict[int, list[TrialChunk]] = {}
        for chunk in chunks:
            groups.setdefault(chunk.inputs.shape[0], []).append(chunk)
        losses, kls, clips, weights = [], [], [], []
        for group in groups.values():
            stack = {
                field: torch.stack([getattr(c, field) for c in group])
                for field in ("inputs", "actions", "log_probs", "advantages", "memory")
            }
            mean, log_std, _ = self.memory_policy.sequence(stack["inputs"], stack["memory"])
            new_log_probs = gaussian_log_prob(
                mean.to(stack["actions"].dtype), log_std.to(stack["actions"].dtype), stack["actions"]
            )
            loss, group_stats = clipped_surrogate(
                new_log_probs.unsqueeze(0),
                stack["log_probs"].unsqueeze(0),
                stack["advantages"].unsqueeze(0),
                self.ppo.clip_eps,
            )
            losses.append(loss[0])
            kls.append(group_stats["ppo/kl"][0])
            clips.append(group_stats["ppo/clip_fraction"][0])
            weights.append(len(group) * group[0].inputs.shape[0])
        share = torch.tensor(weights, dtype=torch.float64) / sum(weights)
        surrogate = sum(w.float() * loss for w, loss in zip(share, losses))
        # A state-independent diagonal Gaussian's entropy: sum(log_std) + A/2 (1 + log 2 pi).
        log_std = self.memory_policy.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        entropy = log_std.sum() + 0.5 * log_std.numel() * (1.0 + math.log(2 * math.pi))
        stats: dict[str, float] = {
            "ppo/kl": float(sum(w * kl.double() for w, kl in zip(share, kls))),
            "ppo/clip_fraction": float(sum(w * c.double() for w, c in zip(share, clips))),
            "rl2/entropy": float(entropy.detach()),
            "rl2/surrogate": float(surrogate.detach()),
        }
        return surrogate - self.config.rl2_entropy_coef * entropy, stats


class InContextRollouts:
    """The rollout side: ``trials_per_task`` trials of ``episodes_per_trial`` sampled episodes per task,
    with their advantages (``advantages.trial_advantages``, the meta-learner's lambda and normalisation)."""

    def __init__(self, config: MetaLearnerConfig, gamma: float) -> None:
        self.config = config
        self.gamma = gamma

    def sample(
        self,
        collector: Any,
        envs: Sequence[Any],
        tasks: Sequence[Any],
        params: Params,
        rngs: Sequence[np.random.Generator],
        plan: SamplePlan | None,
        inner_lr: float | None,
    ) -> list[TaskTrials]:
        trials, _ = collector.collect_trials(
            envs, [params] * len(tasks), rngs, self.config.trials_per_task, [True] * self.config.episodes_per_trial
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
        collector: Any,
        envs: Sequence[Any],
        tasks: Sequence[Any],
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
        pre_mean, _ = collector.collect_trials(envs, per_task, rngs, 1, [False])
        pre_sampled, _ = collector.collect_trials(envs, per_task, rngs, k, [True])
        _, adapted_memory = collector.collect_trials(envs, per_task, rngs, 1, [True] * plan.num_adaptation_episodes)
        post_mean, _ = collector.collect_trials(envs, per_task, rngs, 1, [False], initial_memory=adapted_memory)
        post_sampled, _ = collector.collect_trials(envs, per_task, rngs, k, [True], initial_memory=adapted_memory)
        steps_per_task = (2 + 2 * k + plan.num_adaptation_episodes) * collector.episode_length
        return [
            GoalEvaluation(
                slot=spec.slot,
                env_name=spec.env_name,
                goal_index=spec.goal_index,
                pre_mean_success=bool(pre.successes[0, 0]),
                post_mean_success=bool(post.successes[0, 0]),
                pre_mean_return=float(pre.episode_returns[0, 0]),
                post_mean_return=float(post.episode_returns[0, 0]),
                pre_sampled_successes=pre_s.successes[:, 0].copy(),
                post_sampled_successes=post_s.successes[:, 0].copy(),
                pre_sampled_returns=pre_s.episode_returns[:, 0].copy(),
                post_sampled_returns=post_s.episode_returns[:, 0].copy(),
                num_steps=steps_per_task,
            )
            for spec, pre, pre_s, post, post_s in zip(tasks, pre_mean, pre_sampled, post_mean, post_sampled)
        ]
