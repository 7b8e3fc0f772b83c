"""Meta-SGD (Li et al. 2017) on top of MAML+PPO: the inner step's learning rate is a meta-parameter of
its own for every policy parameter, theta'_i = theta - alpha (elementwise) grad L_in(theta), and the
outer PPO objective learns alpha with theta (through the second-order graph; first order, alpha learns
from the adapted policy's dependence on it). alpha starts at ``--inner_lr`` everywhere and lives on the
policy module (``inner_lrs.*``), so the learner optimises, publishes and checkpoints it with the rest.

After a rolled-back non-finite update the learner lowers Adam's step size; the learned step sizes stay
as they are (they are parameters, not a setting)."""

from __future__ import annotations

import torch
from torch import nn

from metarl_ray.algorithms.maml_ppo import MAMLPPO, MAMLAgent, MAMLPPOBuilder, MAMLRollouts
from metarl_ray.algorithms.maml_ppo.objective import StepSizes, adapted_names
from metarl_ray.config import MAMLConfig, MetaLearnerConfig, PPOConfig, TrainConfig
from metarl_ray.envs import EnvFamily
from metarl_ray.policies.common import Params

__all__ = ["BUILDER", "INNER_LRS", "MetaSGDAgent", "MetaSGDPPO", "MetaSGDRollouts", "step_size_name", "step_sizes"]

INNER_LRS = "inner_lrs"  # the policy's submodule holding alpha, one entry per adapted parameter


def step_size_name(parameter: str) -> str:
    """alpha's name for a policy parameter (module keys may not hold dots)."""
    return f"{INNER_LRS}.{parameter.replace('.', '__')}"


def step_sizes(params: Params) -> StepSizes:
    """alpha per adapted parameter, from a full parameter dict (the policy's and its step sizes)."""
    return {name: params[step_size_name(name)] for name in params if step_size_name(name) in params}


class MetaSGDPPO(MAMLPPO):
    def step_sizes(self, meta_params: Params) -> StepSizes:
        return step_sizes(meta_params)

    def set_lr_scale(self, lr_scale: float) -> None:
        """The learned step sizes stay as learned (the learner scales Adam's)."""


class MetaSGDRollouts(MAMLRollouts):
    def step_sizes(self, params: Params, inner_lr: float | None) -> StepSizes:
        return step_sizes(params)


class MetaSGDAgent(MAMLAgent):
    def step_sizes(self, params: Params) -> StepSizes:
        return step_sizes(params)


class MetaSGDBuilder(MAMLPPOBuilder):
    """MAML+PPO's builder, with alpha on the policy and the three sides reading it."""

    name = "meta_sgd"

    def extend_policy(self, policy: nn.Module, maml: MAMLConfig) -> None:
        adapted = adapted_names(policy, dict(policy.named_parameters()), maml.inner_lr)
        inner_lrs = nn.ParameterDict(
            {
                step_size_name(name)[len(INNER_LRS) + 1 :]: nn.Parameter(torch.full_like(parameter, maml.inner_lr))
                for name, parameter in policy.named_parameters()
                if name in adapted
            }
        )
        policy.add_module(INNER_LRS, inner_lrs)

    def rollout_program(self, meta_learner: MetaLearnerConfig, maml: MAMLConfig, ppo: PPOConfig) -> MetaSGDRollouts:
        return MetaSGDRollouts(maml, ppo)

    def meta_learner(
        self, policy: nn.Module, meta_learner: MetaLearnerConfig, maml: MAMLConfig, ppo: PPOConfig
    ) -> MetaSGDPPO:
        return MetaSGDPPO(policy, maml, ppo)

    def agent(self, policy: nn.Module, config: TrainConfig, family: EnvFamily, seed: int) -> MetaSGDAgent:
        return MetaSGDAgent(policy, config, seed)


BUILDER = MetaSGDBuilder()
