"""The GRU policy: the recurrent baseline of in-context meta-RL (RL², Duan et al. 2016; the Meta-World+
RL² baselines), written out as a step loop so that one cell serves rollouts, training and MAML alike."""

from __future__ import annotations

import torch
from torch import nn

from metarl_ray.config import PolicyConfig
from metarl_ray.policies.common import LOG_STD_MAX, LOG_STD_MIN, Params, State, StepFn, batched_affine


def gru_cell(
    input_gates: torch.Tensor, hidden: torch.Tensor, weight_hh_t: torch.Tensor, bias_hh: torch.Tensor
) -> torch.Tensor:
    """One GRU step (PyTorch's gate order r, z, n) given the input's gate pre-activations
    x W_ih^T + b_ih (K, 3H): h' = (1 - z) n + z h, n = tanh(x_n + r (h W_hn^T + b_hn))."""
    hidden_gates = batched_affine(hidden, weight_hh_t, bias_hh)  # (K, 3H)
    input_r, input_z, input_n = input_gates.chunk(3, dim=-1)
    hidden_r, hidden_z, hidden_n = hidden_gates.chunk(3, dim=-1)
    reset = torch.sigmoid(input_r + hidden_r)
    update = torch.sigmoid(input_z + hidden_z)
    candidate = torch.tanh(input_n + reset * hidden_n)
    return candidate + update * (hidden - candidate)


class GaussianGRUPolicy(nn.Module):
    """Observation encoder -> GRU cell -> Gaussian action head (state-independent log-std).

    Training recomputes whole sequences step by step (``forward``): the input projection of every step
    is one matmul up front, and the loop runs only the recurrent half. The recurrent state is (K, H).
    """

    def __init__(self, obs_dim: int, action_dim: int, config: PolicyConfig) -> None:
        super().__init__()
        self.encoder = nn.Linear(obs_dim, config.hidden_size)
        self.encoder_layers = nn.ModuleList(
            nn.Linear(config.hidden_size, config.hidden_size) for _ in range(config.num_encoder_layers - 1)
        )
        self.cell = nn.GRUCell(config.hidden_size, config.hidden_size)  # PyTorch's initialisation
        self.head = nn.Linear(config.hidden_size, action_dim)
        nn.init.uniform_(self.head.weight, -3e-3, 3e-3)  # start near the zero action, as the MLP does
        nn.init.zeros_(self.head.bias)
        self.log_std = nn.Parameter(torch.full((action_dim,), config.init_log_std))
        self.hidden_size = config.hidden_size

    @staticmethod
    def fixed_in_inner_loop(name: str) -> bool:
        return False

    def initial_state(self, batch: int) -> State:
        return self.log_std.new_zeros(batch, self.hidden_size)

    def encode(self, observations: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.encoder(observations))
        for layer in self.encoder_layers:
            h = torch.tanh(layer(h))
        return h

    def forward(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole sequences from a zero state: observations (N, T, D) -> mean (N, T, A), log_std (A,)."""
        mean, log_std, _ = self.sequence(observations, self.initial_state(observations.shape[0]))
        return mean, log_std

    def sequence(self, observations: torch.Tensor, state: State) -> tuple[torch.Tensor, torch.Tensor, State]:
        """Sequences that continue ``state`` with no reset inside (chunks of an in-context trial):
        observations (N, L, D), state (N, H) -> mean (N, L, A), log_std (A,), last state."""
        features = self.encode(observations)  # (N, T, H)
        input_gates = features @ self.cell.weight_ih.T + self.cell.bias_ih  # (N, T, 3H), all steps at once
        hidden = state
        weight_hh_t = self.cell.weight_hh.T
        outputs = []
        # unbind, not input_gates[:, t]: each indexed step's backward writes a zero tensor of the whole
        # (N, T, 3H) input, so over a 5,000-step trial the backward would be quadratic in T.
        for gates_t in input_gates.unbind(1):
            hidden = gru_cell(gates_t, hidden, weight_hh_t, self.cell.bias_hh)
            outputs.append(hidden)
        return self.head(torch.stack(outputs, dim=1)), self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX), hidden

    def step(
        self, observations: torch.Tensor, state: State, episode_start: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, State]:
        """One step for K envs: observations (K, D), state (K, H), episode_start (K,) bool (restarts memory)."""
        return self.rollout_step()(observations, state, episode_start)

    def rollout_step(self, stacked: Params | None = None) -> StepFn:
        """``step`` with the parameters fixed: the module's own (shared by every env), or one set per
        env stacked on a leading K dim (batched matmuls)."""
        p = stacked if stacked is not None else {name: v.detach() for name, v in self.named_parameters()}
        encoders = [
            (p[f"{name}weight"].transpose(-1, -2), p[f"{name}bias"])
            for name in ["encoder.", *(f"encoder_layers.{i}." for i in range(len(self.encoder_layers)))]
        ]
        weight_ih_t, bias_ih = p["cell.weight_ih"].transpose(-1, -2), p["cell.bias_ih"]
        weight_hh_t, bias_hh = p["cell.weight_hh"].transpose(-1, -2), p["cell.bias_hh"]
        head = (p["head.weight"].transpose(-1, -2), p["head.bias"])
        log_std = p["log_std"].clamp(LOG_STD_MIN, LOG_STD_MAX)

        def step(
            observations: torch.Tensor, state: State, episode_start: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor, State]:
            if episode_start.any():
                state = state * (~episode_start).to(state.dtype).unsqueeze(-1)
            features = observations
            for encoder in encoders:
                features = torch.tanh(batched_affine(features, *encoder))  # (K, H)
            hidden = gru_cell(batched_affine(features, weight_ih_t, bias_ih), state, weight_hh_t, bias_hh)
            return batched_affine(hidden, *head), log_std, hidden

        return step
