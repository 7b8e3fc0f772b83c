"""Gaussian policies (MLP, SSM, GRU) and the functional helpers meta-learners call them through."""

from __future__ import annotations

from torch import nn

from metarl_ray.config import PolicyConfig
from metarl_ray.policies.gru import GaussianGRUPolicy
from metarl_ray.policies.mlp import GaussianMLPPolicy
from metarl_ray.policies.ssm import GaussianSSMPolicy


def build_policy(obs_dim: int, action_dim: int, config: PolicyConfig) -> nn.Module:
    if config.policy_type == "mlp":
        return GaussianMLPPolicy(obs_dim, action_dim, config)
    if config.policy_type == "ssm":
        return GaussianSSMPolicy(obs_dim, action_dim, config)
    if config.policy_type == "gru":
        return GaussianGRUPolicy(obs_dim, action_dim, config)
    raise ValueError(f"unknown policy_type {config.policy_type!r}")
