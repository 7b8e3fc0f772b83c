"""Typed batches passed between the rollout workers and the learner (numpy, so Ray ships them zero-copy)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class TaskData(Protocol):
    """What a meta-learner's rollout program samples for one task of a meta-batch (``TaskRollouts``,
    ``TaskTrials``, or a meta-learner's own type): the learner routes it by slot and journals it."""

    @property
    def slot(self) -> int: ...  # position in the meta-batch

    @property
    def num_steps(self) -> int: ...

    @property
    def num_env_faults(self) -> int: ...

    def before_and_after_adaptation(self) -> tuple[EpisodeBatch, EpisodeBatch]:
        """Episodes of the meta-parameters and of the adapted policy (for the journal)."""
        ...


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
    advantages: (
        np.ndarray | None
    )  # (N, T) float32, the rollout program's (MAML: GAE over a linear baseline); None: not computed
    successes: np.ndarray  # (N,) bool, the episode reached success at some step
    num_env_faults: int = 0  # episodes sampled again after their env raised or went non-finite

    @property
    def num_steps(self) -> int:
        return int(self.rewards.size)

    @property
    def episode_returns(self) -> np.ndarray:  # (N,)
        return self.rewards.sum(axis=1)

    def first(self, num_episodes: int) -> EpisodeBatch:
        """The first ``num_episodes`` episodes."""
        rows = slice(0, num_episodes)
        advantages = None if self.advantages is None else self.advantages[rows]
        return EpisodeBatch(
            self.observations[rows],
            self.actions[rows],
            self.rewards[rows],
            self.log_probs[rows],
            advantages,
            self.successes[rows],
            self.num_env_faults,
        )


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

    @property
    def num_env_faults(self) -> int:
        return sum(batch.num_env_faults for batch in (*self.support, self.query))

    def before_and_after_adaptation(self) -> tuple[EpisodeBatch, EpisodeBatch]:
        """The episodes of the meta-parameters (first support batch) and of the adapted policy (query)."""
        return self.support[0], self.query


@dataclass(frozen=True)
class TrialBatch:
    """N trials of one task: E consecutive episodes of T steps each, the policy's memory carried across
    the episodes of a trial (in-context meta-RL). Steps are laid out trial by trial, L = E * T."""

    observations: np.ndarray  # (N, L, obs_dim) float32, the env's observations (without the in-context inputs)
    actions: np.ndarray  # (N, L, act_dim) float32, as sampled
    rewards: np.ndarray  # (N, L) float32
    log_probs: np.ndarray  # (N, L) float32, log pi(a | history) of the sampling policy
    advantages: np.ndarray | None  # (N, L) float32, GAE over a whole trial (the rollout program's); None: not computed
    successes: np.ndarray  # (N, E) bool, episode e of the trial reached success at some step
    episode_length: int  # T
    num_env_faults: int = 0  # trials sampled again after their env raised or went non-finite

    @property
    def num_steps(self) -> int:
        return int(self.rewards.size)

    @property
    def episode_returns(self) -> np.ndarray:  # (N, E)
        return self.rewards.reshape(self.rewards.shape[0], -1, self.episode_length).sum(axis=-1)

    def episode(self, index: int) -> EpisodeBatch:
        """Episode ``index`` of every trial, as an EpisodeBatch (for metrics)."""
        steps = slice(index * self.episode_length, (index + 1) * self.episode_length)
        return EpisodeBatch(
            self.observations[:, steps],
            self.actions[:, steps],
            self.rewards[:, steps],
            self.log_probs[:, steps],
            None if self.advantages is None else self.advantages[:, steps],
            self.successes[:, index],
        )


@dataclass(frozen=True)
class TaskTrials:
    """Everything one task contributes to an in-context meta-update."""

    slot: int
    env_name: str
    goal_index: int
    trials: TrialBatch

    @property
    def num_steps(self) -> int:
        return self.trials.num_steps

    @property
    def num_env_faults(self) -> int:
        return self.trials.num_env_faults

    def before_and_after_adaptation(self) -> tuple[EpisodeBatch, EpisodeBatch]:
        """First episodes of the trials (empty memory) and last episodes (the memory of all before)."""
        return self.trials.episode(0), self.trials.episode(self.trials.successes.shape[1] - 1)


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

    @staticmethod
    def from_episodes(
        slot: int,
        env_name: str,
        goal_index: int,
        phases: tuple[EpisodeBatch, EpisodeBatch, EpisodeBatch, EpisodeBatch],
        num_steps: int,
    ) -> GoalEvaluation:
        """From the goal's episodes: (pre mean-action, post mean-action, pre sampled, post sampled); a
        mean-action batch's first episode is the phase's one episode."""
        pre_mean, post_mean, pre_sampled, post_sampled = phases
        return GoalEvaluation(
            slot=slot,
            env_name=env_name,
            goal_index=goal_index,
            pre_mean_success=bool(pre_mean.successes[0]),
            post_mean_success=bool(post_mean.successes[0]),
            pre_mean_return=float(pre_mean.episode_returns[0]),
            post_mean_return=float(post_mean.episode_returns[0]),
            pre_sampled_successes=pre_sampled.successes.copy(),
            post_sampled_successes=post_sampled.successes.copy(),
            pre_sampled_returns=pre_sampled.episode_returns.copy(),
            post_sampled_returns=post_sampled.episode_returns.copy(),
            num_steps=num_steps,
        )
