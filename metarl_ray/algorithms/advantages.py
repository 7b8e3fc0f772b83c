"""Advantage estimation: GAE over the linear feature baseline of the MAML-RL literature.

Why the linear baseline and not a value network: it is refit in closed form on each task's own batch
(Duan et al. 2016; used by MAML, ProMP and the Meta-World+ MAML baselines), so it needs no state that
must itself be meta-learned or adapted, costs microseconds, and gives the worker and the learner the
same advantages from the same data.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from metarl_ray.batch import EpisodeBatch

logger = logging.getLogger(__name__)


def discounted_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """Reward-to-go per step. rewards: (N, T) -> (N, T)."""
    returns = np.zeros_like(rewards, dtype=np.float64)
    running = np.zeros(rewards.shape[0], dtype=np.float64)
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    return returns


def linear_baseline_features(observations: np.ndarray) -> np.ndarray:
    """(N, T, D) -> (N, T, 2D + 4): obs, obs^2, time, time^2, time^3, 1 (Duan et al. 2016)."""
    num_episodes, horizon, _ = observations.shape
    obs = np.clip(observations.astype(np.float64), -10.0, 10.0)
    time = np.broadcast_to((np.arange(horizon) / 100.0)[None, :, None], (num_episodes, horizon, 1))
    ones = np.ones((num_episodes, horizon, 1))
    return np.concatenate([obs, obs**2, time, time**2, time**3, ones], axis=-1)


def fit_linear_baseline(observations: np.ndarray, returns: np.ndarray, reg_coef: float = 1e-5) -> np.ndarray:
    """Ridge regression of returns on features; raises the ridge until the solve is finite."""
    features = linear_baseline_features(observations).reshape(-1, observations.shape[-1] * 2 + 4)
    return fit_ridge(features, returns.reshape(-1), reg_coef)


def fit_ridge(features: np.ndarray, targets: np.ndarray, reg_coef: float = 1e-5) -> np.ndarray:
    """Ridge regression (M, F), (M,) -> (F,); raises the ridge until the solve is finite."""
    gram = features.T @ features
    rhs = features.T @ targets
    identity = np.eye(gram.shape[0])
    for _ in range(5):
        coeffs = np.linalg.lstsq(gram + reg_coef * identity, rhs, rcond=None)[0]
        if np.all(np.isfinite(coeffs)):
            return np.asarray(coeffs)
        reg_coef *= 10.0
    logger.warning(
        "linear baseline: no finite fit even with ridge %.0e; using a zero baseline for this batch", reg_coef
    )
    return np.zeros(gram.shape[0])


def compute_gae(rewards: np.ndarray, values: np.ndarray, gamma: float, gae_lambda: float) -> np.ndarray:
    """GAE for fixed-length episodes truncated at T (bootstrap value 0 after the last step).

    rewards, values: (N, T) -> advantages (N, T).
    A_t = sum_k (gamma * lambda)^k delta_{t+k},  delta_t = r_t + gamma V_{t+1} - V_t.
    """
    next_values = np.concatenate([values[:, 1:], np.zeros((values.shape[0], 1))], axis=1)
    deltas = rewards + gamma * next_values - values
    advantages = np.zeros_like(deltas, dtype=np.float64)
    running = np.zeros(rewards.shape[0], dtype=np.float64)
    for t in reversed(range(rewards.shape[1])):
        running = deltas[:, t] + gamma * gae_lambda * running
        advantages[:, t] = running
    return advantages


def compute_advantages(observations: np.ndarray, rewards: np.ndarray, gamma: float, gae_lambda: float) -> np.ndarray:
    """Normalised GAE advantages of one task's batch. (N, T, D), (N, T) -> (N, T) float32."""
    returns = discounted_returns(rewards, gamma)
    coeffs = fit_linear_baseline(observations, returns)
    values = linear_baseline_features(observations) @ coeffs
    advantages = compute_gae(rewards.astype(np.float64), values, gamma, gae_lambda)
    # Per-batch normalisation keeps the inner step size meaningful across tasks of different reward scale.
    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    return np.asarray(advantages, dtype=np.float32)


def with_advantages(batch: EpisodeBatch, gamma: float, gae_lambda: float) -> EpisodeBatch:
    """``batch`` with its normalised GAE advantages (``compute_advantages``)."""
    return dataclasses.replace(
        batch, advantages=compute_advantages(batch.observations, batch.rewards, gamma, gae_lambda)
    )


def trial_baseline_features(observations: np.ndarray, episode_length: int) -> np.ndarray:
    """In-context trials (N, L, D) -> (N, L, 2D + 6): the per-episode features above (time restarts at
    each episode) plus the episode's place in the trial, e / E and (e / E)^2: later episodes of a trial
    are worth more once the memory knows the task."""
    num_trials, length, obs_dim = observations.shape
    num_episodes = length // episode_length
    per_episode = linear_baseline_features(observations.reshape(num_trials * num_episodes, episode_length, obs_dim))
    place = np.repeat(np.arange(num_episodes) / num_episodes, episode_length)  # (L,)
    place = np.broadcast_to(place[None, :, None], (num_trials, length, 1))
    return np.concatenate([per_episode.reshape(num_trials, length, -1), place, place**2], axis=-1)


def trial_advantages(
    observations: np.ndarray,
    rewards: np.ndarray,
    episode_length: int,
    gamma: float,
    gae_lambda: float,
    normalize: bool = True,
) -> np.ndarray:
    """GAE over whole in-context trials: returns and GAE run across the episode boundaries within a
    trial (an action may pay off in a later episode, through the memory) and stop at the trial's end;
    ``normalize``: to zero mean and unit variance over the batch. (N, L, D), (N, L) -> (N, L) float32."""
    returns = discounted_returns(rewards, gamma)
    features = trial_baseline_features(observations, episode_length)
    coeffs = fit_ridge(features.reshape(-1, features.shape[-1]), returns.reshape(-1))
    advantages = compute_gae(rewards.astype(np.float64), features @ coeffs, gamma, gae_lambda)
    if normalize:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    return np.asarray(advantages, dtype=np.float32)
