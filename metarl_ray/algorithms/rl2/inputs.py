"""RL²'s policy inputs: the observation, the previous action and reward, and an episode-start flag."""

from __future__ import annotations

import numpy as np

# Meta-World's dense rewards are 0..10 per step: a tenth keeps the reward input at the observations' scale.
REWARD_INPUT_SCALE = np.float32(0.1)


def policy_input_dim(observation_dim: int, action_dim: int) -> int:
    """[observation, previous action, scaled previous reward, episode-start flag]."""
    return observation_dim + action_dim + 2


def in_context_step_inputs(
    observations: np.ndarray,
    previous_actions: np.ndarray,
    previous_rewards: np.ndarray,
    episode_start: bool | np.ndarray,
) -> np.ndarray:
    """One step's policy input for K envs: (K, D), (K, A), (K,), bool | (K,) -> (K, D + A + 2). A trial's
    first step passes zeros for the previous action and reward (``base.StepInputs``)."""
    num_envs = observations.shape[0]
    flags = np.broadcast_to(np.asarray(episode_start, dtype=np.float32), (num_envs,))
    return np.concatenate(
        [observations, previous_actions, (REWARD_INPUT_SCALE * previous_rewards)[:, None], flags[:, None]],
        axis=1,
        dtype=np.float32,
    )


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
