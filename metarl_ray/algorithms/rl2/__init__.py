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

from typing import Any

from torch import nn

from metarl_ray.algorithms.rl2.agent import InContextAgent, InContextInputs
from metarl_ray.algorithms.rl2.inputs import (
    REWARD_INPUT_SCALE,
    in_context_inputs,
    in_context_step_inputs,
    policy_input_dim,
)
from metarl_ray.algorithms.rl2.objective import RL2PPO, TrialChunk, TrialTensors, carried_memories, trial_chunks
from metarl_ray.algorithms.rl2.rollouts import InContextRollouts
from metarl_ray.config import ConfigError, MAMLConfig, MetaLearnerConfig, PPOConfig, TrainConfig
from metarl_ray.envs import EnvFamily

__all__ = [
    "BUILDER",
    "REWARD_INPUT_SCALE",
    "RL2PPO",
    "InContextAgent",
    "InContextInputs",
    "InContextRollouts",
    "TrialChunk",
    "TrialTensors",
    "carried_memories",
    "in_context_inputs",
    "in_context_step_inputs",
    "policy_input_dim",
    "trial_chunks",
]


def _check(condition: bool, flag: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ConfigError(f"--{flag}={value!r}: {allowed}")


class RL2Builder:
    name = "rl2"

    def check_config(self, config: TrainConfig) -> None:
        meta = config.meta_learner
        # In-context adaptation lives in the policy's memory: a memoryless policy cannot adapt.
        _check(
            config.policy.policy_type != "mlp",
            "policy_type",
            config.policy.policy_type,
            "--algorithm=rl2 adapts in the policy's memory: expected ssm or gru",
        )
        trial_length = meta.episodes_per_trial * config.env.max_episode_length
        chunk = meta.rl2_chunk_length
        _check(
            chunk == 0 or trial_length % chunk == 0,
            "rl2_chunk_length",
            chunk,
            f"expected 0 or a divisor of the trial length {trial_length} (episodes_per_trial x max_episode_length)",
        )
        # Every learner takes rl2_minibatches steps per epoch (each an all-reduce): the smallest learner
        # share must have a trial chunk for each.
        tasks, learners = config.maml.num_tasks, config.learner.num_learners
        smallest_share = min(round((i + 1) * tasks / learners) - round(i * tasks / learners) for i in range(learners))
        chunks_per_trial = trial_length // chunk if chunk else 1
        chunks = smallest_share * meta.trials_per_task * chunks_per_trial
        _check(
            meta.rl2_minibatches <= chunks,
            "rl2_minibatches",
            meta.rl2_minibatches,
            f"expected at most {chunks}, the trial chunks of the smallest learner's share "
            f"({smallest_share} tasks x {meta.trials_per_task} trials x {chunks_per_trial} chunks)",
        )

    def default_ssm_max_timescale(self, config: TrainConfig) -> int:
        # Some states keep information across a whole trial: the step size reaches down to 1 / trial length.
        return config.meta_learner.episodes_per_trial * config.env.max_episode_length

    def legacy_settings(self, sections: dict[str, dict[str, Any]]) -> None:
        meta, ppo = sections.setdefault("meta_learner", {}), sections.setdefault("ppo", {})
        if "rl2_epochs" in meta:
            return
        # In-context PPO before its own settings: full-batch epochs over whole trials, the PPO section's
        # lambda and step size, normalised advantages and no entropy bonus.
        defaults = PPOConfig()
        meta.update(
            rl2_epochs=ppo.get("num_ppo_epochs", defaults.num_ppo_epochs),
            rl2_minibatches=1,
            rl2_chunk_length=0,
            rl2_gae_lambda=ppo.get("gae_lambda", defaults.gae_lambda),
            rl2_entropy_coef=0.0,
            rl2_lr=ppo.get("meta_lr", defaults.meta_lr),
            rl2_normalize_advantages=True,
        )

    def policy_input_dim(self, family: EnvFamily) -> int:
        return policy_input_dim(family.observation_dim, family.action_dim)

    def extend_policy(self, policy: nn.Module, maml: MAMLConfig) -> None:
        """No meta-parameters besides the policy's."""

    def rollout_program(self, meta_learner: MetaLearnerConfig, maml: MAMLConfig, ppo: PPOConfig) -> InContextRollouts:
        return InContextRollouts(meta_learner, ppo.gamma)

    def meta_learner(
        self, policy: nn.Module, meta_learner: MetaLearnerConfig, maml: MAMLConfig, ppo: PPOConfig
    ) -> RL2PPO:
        return RL2PPO(policy, ppo, meta_learner)

    def agent(self, policy: nn.Module, config: TrainConfig, family: EnvFamily, seed: int) -> InContextAgent:
        return InContextAgent(policy, config, family.observation_dim, seed)

    def official_envs(self, envs: Any) -> InContextInputs:
        return InContextInputs(envs)

    def adaptation_protocol(self, config: TrainConfig) -> dict[str, Any]:
        # One trial of the adaptation episodes; Meta-World's evaluation calls ``adapt`` once.
        return {"num_inner_steps": None}


BUILDER = RL2Builder()
