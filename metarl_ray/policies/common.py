"""What every Gaussian policy shares: the policy interface, the Gaussian density, and the functional
helpers meta-learners call policies through (parameters passed as a dict).

Every policy module offers the same four entry points:
    forward(obs (N, T, D))                         -> mean (N, T, A), log_std (A,)   whole episodes from t = 0
    initial_state(K)                               -> state (K, ...)                 recurrent state (MLP: (K, 0))
    step(obs (K, D), state, episode_start (K,))    -> mean (K, A), log_std (A,), state        O(1) rollout step
    rollout_step(stacked | None)                   -> a ``step`` with the parameters fixed: the module's own
                                                      (shared by all envs) or one set per env (stacked on K)
and ``fixed_in_inner_loop(name)``: parameters the MAML inner step leaves alone.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any, Protocol, cast

import torch
from torch import nn
from torch.func import functional_call

Params = dict[str, torch.Tensor]
State = torch.Tensor
StepFn = Callable[[torch.Tensor, State, torch.Tensor], tuple[torch.Tensor, torch.Tensor, State]]
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


class Policy(Protocol):
    """The entry points above, as a type (every policy is also an ``nn.Module``)."""

    @property
    def log_std(self) -> torch.Tensor: ...

    def initial_state(self, batch: int) -> State: ...

    def rollout_step(self, stacked: Params | None = None) -> StepFn: ...

    def fixed_in_inner_loop(self, name: str) -> bool: ...


class SequencePolicy(Policy, Protocol):
    """A policy with a memory that can continue a given state over a sequence (in-context learning)."""

    def sequence(self, observations: torch.Tensor, state: State) -> tuple[torch.Tensor, torch.Tensor, State]: ...


def as_policy(module: nn.Module) -> Policy:
    """``module`` seen through the policy interface (a typed view; the object is unchanged)."""
    return cast(Policy, module)


def batched_affine(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """bias + x @ weight_t with a shared (I, O) or a per-row (K, I, O) weight: x (K, I) -> (K, O)."""
    if weight_t.dim() == 2:
        return torch.addmm(bias, x, weight_t) if bias.dim() == 1 else bias + x @ weight_t
    return torch.baddbmm(bias.unsqueeze(1), x.unsqueeze(1), weight_t).squeeze(1)


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Diagonal Gaussian log-density summed over action dims: (..., A) -> (...)."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def log_prob(policy: nn.Module, params: Params, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log pi_params(a|s) for a batch of episodes: (N, T, D), (N, T, A) -> (N, T)."""
    mean, log_std = functional_call(policy, params, (observations,))
    # Under mixed precision the mean comes out in bfloat16; the density and the PPO ratios built on it
    # are computed at the data's precision.
    return gaussian_log_prob(mean.to(actions.dtype), log_std.to(actions.dtype), actions)


def detached_params(policy: nn.Module) -> Params:
    return {name: p.detach().clone() for name, p in policy.named_parameters()}


def params_to_numpy(params: Params) -> dict[str, object]:
    return {name: p.detach().cpu().numpy() for name, p in params.items()}


def params_from_numpy(arrays: dict[str, Any], device: torch.device | str = "cpu") -> Params:
    return {name: torch.tensor(a, device=device) for name, a in arrays.items()}


class BatchedPolicy:
    """Action distributions for K envs at once, each env with its own parameter set (K tasks, K
    adaptations). Owns a copy of the policy module as scratch space: ``bind`` overwrites its parameters."""

    def __init__(self, policy: nn.Module) -> None:
        self.policy = copy.deepcopy(policy)
        self._view = as_policy(self.policy)

    def initial_state(self, batch: int) -> State:
        return self._view.initial_state(batch)

    def bind(self, params_per_env: list[Params]) -> StepFn:
        """Fix the parameters once per collection: (obs (K, D), state, episode_start (K,)) ->
        mean (K, A), log_std (K|1, A), new state."""
        first = params_per_env[0]
        if all(p is first for p in params_per_env):
            # Before adaptation every env shares the meta-parameters: load them into the scratch
            # module and call it directly, which skips functional_call's per-call overhead.
            with torch.no_grad():
                for name, parameter in self.policy.named_parameters():
                    parameter.copy_(first[name])
            return self._view.rollout_step()
        with torch.no_grad():
            stacked = {name: torch.stack([p[name] for p in params_per_env]) for name in first}
        return self._view.rollout_step(stacked)
