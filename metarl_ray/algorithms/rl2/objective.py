"""RL²'s learner side: PPO's clipped surrogate plus an entropy bonus over minibatches of trial chunks
(truncated backpropagation through time; each chunk starts from the memory the current policy carries
into it, computed without gradient, so the recompute of a trial equals the rollout's step by step)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import nn

from metarl_ray.algorithms.ppo import clipped_surrogate
from metarl_ray.algorithms.rl2.inputs import in_context_inputs
from metarl_ray.batch import TaskTrials, TrialBatch
from metarl_ray.config import MetaLearnerConfig, PPOConfig
from metarl_ray.policies.common import LOG_STD_MAX, LOG_STD_MIN, SequencePolicy, gaussian_log_prob


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
