"""Gaussian policies and the functional helpers MAML needs (parameters passed as a dict)."""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, vmap

from metarl_ray.config import PolicyConfig

Params = dict[str, torch.Tensor]
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


class GaussianMLPPolicy(nn.Module):
    """tanh MLP for the action mean, state-independent log-std (as in the MAML / Meta-World+ baselines)."""

    def __init__(self, obs_dim: int, action_dim: int, config: PolicyConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = obs_dim
        for _ in range(config.num_hidden_layers):
            layers += [nn.Linear(width, config.hidden_size), nn.Tanh()]
            width = config.hidden_size
        head = nn.Linear(width, action_dim)
        # A small output layer starts the mean near 0, so early exploration is set by the std alone.
        nn.init.uniform_(head.weight, -3e-3, 3e-3)
        nn.init.zeros_(head.bias)
        self.mean_net = nn.Sequential(*layers, head)
        self.log_std = nn.Parameter(torch.full((action_dim,), config.init_log_std))

    def forward(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., obs_dim) -> mean (..., act_dim), log_std (act_dim,)."""
        return self.mean_net(observations), self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def forward_per_env(self, stacked: Params, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` with a different parameter set per env, stacked on a leading K dim.

        observations (K, obs_dim) -> mean (K, act_dim), log_std (K, act_dim). The same maths as
        ``forward`` written with batched matmuls: ~7x faster than ``vmap(functional_call)`` at K = 10
        on a CPU, and this call runs once per env step during adapted rollouts.
        """
        hidden = observations.unsqueeze(1)  # (K, 1, D)
        for index, module in enumerate(self.mean_net):
            if isinstance(module, nn.Linear):
                weight, bias = stacked[f"mean_net.{index}.weight"], stacked[f"mean_net.{index}.bias"]  # (K, O, I), (K, O)
                hidden = torch.baddbmm(bias.unsqueeze(1), hidden, weight.transpose(1, 2))  # (K, 1, O)
            else:
                hidden = module(hidden)
        return hidden.squeeze(1), stacked["log_std"].clamp(LOG_STD_MIN, LOG_STD_MAX)


def build_policy(obs_dim: int, action_dim: int, config: PolicyConfig) -> nn.Module:
    if config.policy_type == "mlp":
        return GaussianMLPPolicy(obs_dim, action_dim, config)
    raise ValueError(f"unknown policy_type {config.policy_type!r}")


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Diagonal Gaussian log-density summed over action dims: (..., A) -> (...)."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def log_prob(policy: nn.Module, params: Params, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log pi_params(a|s) for a batch of episodes: (N, T, D), (N, T, A) -> (N, T)."""
    mean, log_std = functional_call(policy, params, (observations,))
    return gaussian_log_prob(mean, log_std, actions)


def detached_params(policy: nn.Module) -> Params:
    return {name: p.detach().clone() for name, p in policy.named_parameters()}


def params_to_numpy(params: Params) -> dict[str, "object"]:
    return {name: p.detach().cpu().numpy() for name, p in params.items()}


def params_from_numpy(arrays: dict, device: torch.device | str = "cpu") -> Params:
    return {name: torch.tensor(a, device=device) for name, a in arrays.items()}


class BatchedActor:
    """Action distributions for K envs at once, each env with its own parameter set (K tasks, K
    adaptations). Owns its policy module as scratch space: ``bind`` may overwrite its parameters."""

    def __init__(self, policy: nn.Module) -> None:
        self.policy = copy.deepcopy(policy)
        policy = self.policy

        def distribution(params: Params, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return functional_call(policy, params, (obs,))

        self._per_env = vmap(distribution)

    def bind(self, params_per_env: list[Params]) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """Fix the parameters once per collection: observations (K, D) -> mean (K, A), log_std (K|1, A)."""
        first = params_per_env[0]
        if all(p is first for p in params_per_env):
            # Before adaptation every env shares the meta-parameters: load them into the (scratch)
            # module and call it directly, which skips functional_call's per-call overhead.
            with torch.no_grad():
                for name, parameter in self.policy.named_parameters():
                    parameter.copy_(first[name])
            return self.policy
        stacked = {name: torch.stack([p[name] for p in params_per_env]) for name in first}
        if hasattr(self.policy, "forward_per_env"):
            return lambda observations: self.policy.forward_per_env(stacked, observations)
        return lambda observations: self._per_env(stacked, observations)
