"""The MLP policy: memoryless, the MAML / Meta-World+ baselines' policy."""

from __future__ import annotations

import torch
from torch import nn

from metarl_ray.config import PolicyConfig
from metarl_ray.policies.common import LOG_STD_MAX, LOG_STD_MIN, Params, State, StepFn, batched_affine


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

    def initial_state(self, batch: int) -> State:
        return self.log_std.new_zeros(batch, 0)  # memoryless

    def step(
        self, observations: torch.Tensor, state: State, episode_start: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, State]:
        return (*self.forward(observations), state)

    def rollout_step(self, stacked: Params | None = None) -> StepFn:
        """``step`` with fixed parameters; per env (stacked on K) as batched matmuls, ~7x faster than
        ``vmap(functional_call)`` at K = 10 on a CPU, and this runs once per env step."""
        if stacked is None:
            return self.step

        def step(
            observations: torch.Tensor, state: State, episode_start: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor, State]:
            hidden = observations  # (K, D)
            for index, module in enumerate(self.mean_net):
                if isinstance(module, nn.Linear):
                    weight, bias = (
                        stacked[f"mean_net.{index}.weight"],
                        stacked[f"mean_net.{index}.bias"],
                    )  # (K, O, I), (K, O)
                    hidden = batched_affine(hidden, weight.transpose(1, 2), bias)
                else:
                    hidden = module(hidden)
            return hidden, stacked["log_std"].clamp(LOG_STD_MIN, LOG_STD_MAX), state

        return step

    @staticmethod
    def fixed_in_inner_loop(name: str) -> bool:
        return False
