"""Typed batches passed between the rollout workers and the learner (numpy, so Ray ships them zero-copy)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EpisodeBatch:
    """Fixed-length episodes of one task collected with one set of policy parameters.

    N episodes of T steps; Meta-World training episodes never end early (no terminate-on-success),
    so every row starts a new episode at t = 0.
    """

    observations: np.ndarray  # (N, T, obs_dim) float32
    actions: np.ndarray  # (N, T, act_dim) float32, as sampled (before the env clips them)
    rewards: np.ndarray  # (N, T) float32
    log_probs: np.ndarray  # (N, T) float32, log pi(a|s) of the sampling policy
    advantages: np.ndarray  # (N, T) float32, GAE over the linear baseline, normalised per batch
    successes: np.ndarray  # (N,) bool, the episode reached success at some step
    num_env_faults: int = 0  # episodes sampled again after their env raised or went non-finite

    @property
    def num_steps(self) -> int:
        return int(self.rewards.size)

    @property
    def episode_returns(self) -> np.ndarray:  # (N,)
        return self.rewards.sum(axis=1)


@dataclass(frozen=True)
class TaskRollouts:
    """Everything one task contributes to a meta-update."""

    slot: int  # position in the meta-batch
    env_name: str
    goal_index: int
    support: tuple[EpisodeBatch, ...]  # one batch per inner step, the k-th collected after k adaptations
    query: EpisodeBatch  # collected by the fully adapted policy

    @property
    def num_steps(self) -> int:
        return sum(batch.num_steps for batch in self.support) + self.query.num_steps


@dataclass(frozen=True)
class GoalEvaluation:
    """One held-out (task, goal) meta-tested under both action rules, before and after adaptation.

    Mean-action episodes from one start state are identical (Meta-World resets a goal to the same state
    and MuJoCo is deterministic), so one mean-action episode per phase is the whole sample. Sampled
    episodes are K independent draws; pre-adaptation's are the first K adaptation episodes, which the
    meta-parameters sample anyway.
    """

    slot: int  # position in the evaluation's goal list; keys the action noise
    env_name: str
    goal_index: int
    pre_mean_success: bool
    post_mean_success: bool
    pre_mean_return: float
    post_mean_return: float
    pre_sampled_successes: np.ndarray  # (K,) bool
    post_sampled_successes: np.ndarray  # (K,) bool
    pre_sampled_returns: np.ndarray  # (K,) float32
    post_sampled_returns: np.ndarray  # (K,) float32
    num_steps: int  # env steps this goal cost (adaptation included)
