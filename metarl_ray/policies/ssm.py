"""A diagonal state-space layer (S5 / S4D family) with an O(1) step and a whole-sequence scan.

Symbols (per layer; H channels in and out, P states):
    lambda (P,)   continuous-time diagonal state matrix, lambda = -exp(log_neg_lambda) < 0 by construction
    dt     (P,)   learned step size per state, dt = exp(log_dt)
    B      (P, H) input matrix;  C (H, P) output matrix;  D (H,) skip connection
Zero-order hold discretisation:
    A_bar = exp(dt * lambda),   B_bar = (exp(dt * lambda) - 1) / lambda * B     (computed with expm1)
Recurrence, with the state reset where an episode starts (start_t = 1):
    x_t = A_bar * (1 - start_t) * x_{t-1} + B_bar u_t,    y_t = C x_t + D * u_t

Real eigenvalues (S4D-Real) keep every operation real, so the second-order MAML meta-gradient
(double backward) runs through plain real autograd.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from metarl_ray.config import PolicyConfig
from metarl_ray.policies.common import LOG_STD_MAX, LOG_STD_MIN, StepFn, batched_affine


def _decays(log_decay: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """Per-step decays a_t = exp(log_decay) * (1 - start_t): (P,), (B, L) -> (B, L, P); zero cuts the history."""
    return torch.exp(log_decay) * (~starts).to(log_decay.dtype).unsqueeze(-1)


def scan_reference(
    log_decay: torch.Tensor, starts: torch.Tensor, inputs: torch.Tensor, initial_state: torch.Tensor
) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + inputs_t, one step at a time, a_t = exp(log_decay) * (1 - start_t).
    log_decay (P,), starts (B, L) bool, inputs (B, L, P), h_0 (B, P) -> (B, L, P).

    Iterates over ``unbind`` views: indexing ``a[:, t]`` inside the loop makes the backward quadratic.
    """
    state = initial_state
    outputs = []
    for decay_t, input_t in zip(_decays(log_decay, starts).unbind(1), inputs.unbind(1)):
        state = decay_t * state + input_t  # (B, P)
        outputs.append(state)
    return torch.stack(outputs, dim=1)


def scan_doubling(
    log_decay: torch.Tensor, starts: torch.Tensor, inputs: torch.Tensor, initial_state: torch.Tensor
) -> torch.Tensor:
    """The same recurrence as a Hillis-Steele parallel scan: ceil(log2 L) rounds of whole-tensor ops.

    After round k, h_t holds the sum over the last 2^k inputs and a_t their combined decay; combining
    (a, h) pairs is associative: (a1, h1) then (a2, h2) = (a1 a2, a2 h1 + h2). Out-of-place ops only,
    so double backward (second-order MAML) works. A zero decay (episode start) cuts the history.
    """
    decay = _decays(log_decay, starts)  # (B, L, P)
    # Fold the initial state into the first input: h_1 = a_1 h_0 + u_1.
    first = inputs[:, :1] + decay[:, :1] * initial_state.unsqueeze(1)
    state = torch.cat([first, inputs[:, 1:]], dim=1)  # (B, L, P)
    cumulative_decay = decay
    length, offset = inputs.shape[1], 1
    while offset < length:
        shifted_state = nn.functional.pad(state[:, :-offset], (0, 0, offset, 0))  # h_{t-offset}, 0 before start
        shifted_decay = nn.functional.pad(cumulative_decay[:, :-offset], (0, 0, offset, 0), value=1.0)
        state = state + cumulative_decay * shifted_state
        cumulative_decay = cumulative_decay * shifted_decay
        offset *= 2
    return state


CHUNK_SIZE = 32


def _episode_masks(starts: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """same_episode[..., t, s] = no start in (s, t], from starts (B, M, C) along the last dim: (B|1, M, C, C),
    and whether one mask serves the whole batch (every sequence has its starts at the same steps)."""
    segment = starts.cumsum(-1)  # episode ids along the last dim
    shared = bool((segment == segment[:1]).all())
    if shared:
        segment = segment[:1]
    return segment[..., :, None] == segment[..., None, :], shared


def _decay_powers(log_decay: torch.Tensor, length: int, stride: int) -> torch.Tensor:
    """W[t, s, p] = a_p^(stride (t - s)) for t >= s, else 0: (length, length, P). Every exponent is
    stride * (t - s) * log_decay <= 0, so no power grows."""
    steps = torch.arange(length, device=log_decay.device)
    lag = steps[:, None] - steps[None, :]  # (T, T): t - s
    causal = lag >= 0
    exponent = (torch.where(causal, lag, 0) * stride).unsqueeze(-1).to(log_decay.dtype) * log_decay
    return torch.exp(exponent) * causal.unsqueeze(-1)


def _masked_causal_sum(powers: torch.Tensor, mask: torch.Tensor, shared: bool, values: torch.Tensor) -> torch.Tensor:
    """out[b, m, t, p] = sum_s powers[t, s, p] * mask[b|0, m, t, s] * values[b, m, s, p]: (B, M, T, P)."""
    batch, num_blocks, length, num_states = values.shape
    if shared and bool(mask.all()):  # no start cuts any block (MAML's episodes): one matmul per state
        flat = values.permute(3, 2, 0, 1).reshape(num_states, length, batch * num_blocks)  # (P, S, B M)
        out = powers.permute(2, 0, 1) @ flat  # (P, T, B M)
        return out.reshape(num_states, length, batch, num_blocks).permute(2, 3, 1, 0)  # (B, M, T, P)
    if shared:  # one matmul per (m, p): the mask and powers are the same for every sequence
        weights = (powers * mask[0].unsqueeze(-1)).permute(0, 3, 1, 2)  # (M, P, T, S)
        return (weights @ values.permute(1, 3, 2, 0).contiguous()).permute(3, 0, 2, 1)  # (B, M, T, P)
    return torch.einsum("bmts,tsp,bmsp->bmtp", mask.to(values.dtype), powers, values)


def scan_chunked(
    log_decay: torch.Tensor,
    starts: torch.Tensor,
    inputs: torch.Tensor,
    initial_state: torch.Tensor,
    chunk_size: int = CHUNK_SIZE,
) -> torch.Tensor:
    """The same recurrence in closed form, in two levels and with no loop over time.

    The decay is time-invariant except at episode starts (where it is 0), so with steps t, s counted
    within a chunk of C steps
        h_t = sum_{s <= t, no start in (s, t]} a^(t - s) u_s  +  a^(t + 1) h_in [no start in [0, t]],
    h_in the state entering the chunk. Level 1 computes the first sum in every chunk at once (a
    C x C matrix of powers per state); level 2 gets every chunk's h_in from the chunk-end values by
    the same formula over chunks, with powers a^(C (k - j)). Every power is exp(n * log_decay) with
    n >= 0 and log_decay <= 0: nothing grows or divides by a vanishing cumulative product, however long
    the sequence (5,000 steps of an in-context trial) or wherever the resets fall. The sums are
    batched matmuls when every sequence has its starts at the same steps (MAML's episodes, trials of
    equal length), else masked products. Plain out-of-place ops: double backward is exact.
    log_decay (P,), starts (B, L) bool, inputs (B, L, P), h_0 (B, P) -> (B, L, P).
    """
    batch, length, num_states = inputs.shape
    pad = (-length) % chunk_size
    if pad:
        inputs = nn.functional.pad(inputs, (0, 0, 0, pad))
        starts = nn.functional.pad(starts, (0, pad))
    num_chunks = (length + pad) // chunk_size
    u = inputs.reshape(batch, num_chunks, chunk_size, num_states)  # (B, K, C, P)
    chunk_starts = starts.reshape(batch, num_chunks, chunk_size)  # (B, K, C)
    # Level 1: within every chunk, from a zero entering state.
    same_episode, shared = _episode_masks(chunk_starts)  # (B|1, K, C, C)
    within = _masked_causal_sum(_decay_powers(log_decay, chunk_size, 1), same_episode, shared, u)  # (B, K, C, P)
    # open[b, k, t]: no start in steps 0..t of chunk k, so the entering state still counts at t.
    open_ = (chunk_starts.cumsum(-1) == 0).to(u.dtype)  # (B, K, C)
    # Level 2: the state leaving chunk k is within_end_k + open_end_k * a^C * (state leaving chunk k-1),
    # the same recurrence over chunks, with the initial state folded into chunk 0's end value.
    a_chunk = torch.exp(chunk_size * log_decay)  # (P,)
    first_end = within[:, 0, -1] + open_[:, 0, -1, None] * a_chunk * initial_state  # (B, P)
    chunk_end = torch.cat([first_end.unsqueeze(1), within[:, 1:, -1]], dim=1)  # (B, K, P)
    chunk_has_start = (open_[:, :, -1] == 0).unsqueeze(-1)  # (B, K, 1): the chunk cuts the history
    same_run, shared_run = _episode_masks(chunk_has_start.transpose(1, 2))  # (B|1, 1, K, K)
    leaving = _masked_causal_sum(
        _decay_powers(log_decay, num_chunks, chunk_size), same_run, shared_run, chunk_end.unsqueeze(1)
    ).squeeze(1)  # (B, K, P)
    entering = torch.cat([initial_state.unsqueeze(1), leaving[:, :-1]], dim=1)  # (B, K, P)
    carry_power = _step_powers(log_decay, chunk_size)  # (C, P)
    states = within + open_.unsqueeze(-1) * carry_power * entering.unsqueeze(2)  # (B, K, C, P)
    return states.reshape(batch, num_chunks * chunk_size, num_states)[:, :length]


def _two_level_values(
    log_decay: torch.Tensor, starts: torch.Tensor, inputs: torch.Tensor, initial_state: torch.Tensor
) -> torch.Tensor:
    """The recurrence's values in about 2 sqrt(L) whole-tensor steps instead of L (no autograd graph).

    The sequence is cut into K chunks of C ~ sqrt(L) steps. Level 1 steps the recurrence C times,
    every chunk at once, from a zero entering state, and takes each chunk's cumulative decay (a
    cumulative product of decays <= 1: it can only shrink, and a start's zero decay cuts it). Level 2
    steps K times over chunks: the state entering chunk k + 1 is chunk k's last value plus its total
    decay times the state entering k. Then h_t = within_t + cumulative_decay_t * entering. The same
    sums as the step loop in another order, with nothing divided: stable over any length and resets.
    Out-of-place ops only, so the Function's generated vmap rule (tasks) applies.
    """
    batch, length, num_states = inputs.shape
    chunk = _chunk_length(length)
    pad = (-length) % chunk
    if pad:  # padded steps come after the last real one: they change nothing before it
        inputs = nn.functional.pad(inputs, (0, 0, 0, pad))
        starts = nn.functional.pad(starts, (0, pad), value=True)
    decay = _decays(log_decay, starts)  # (B, L + pad, P)
    num_chunks = (length + pad) // chunk
    decay = decay.reshape(batch, num_chunks, chunk, num_states)  # (B, K, C, P)
    inputs = inputs.reshape(batch, num_chunks, chunk, num_states)
    state, within = torch.zeros_like(inputs[:, :, 0]), []
    for decay_t, input_t in zip(decay.unbind(2), inputs.unbind(2)):  # level 1: C steps, all chunks
        state = torch.addcmul(input_t, decay_t, state)
        within.append(state)
    within_chunk = torch.stack(within, dim=2)  # (B, K, C, P)
    # The product of the decays from the chunk's start to step c is a^(c + 1) while no start has cut it
    # (every exponent <= 0), else 0: a (C, P) table times a (B, K, C) mask, cheaper than a cumprod.
    uncut = (starts.reshape(batch, num_chunks, chunk).cumsum(-1) == 0).to(inputs.dtype).unsqueeze(-1)  # (B, K, C, 1)
    cumulative_decay = _step_powers(log_decay, chunk) * uncut  # (B, K, C, P)
    entering = [initial_state]
    for k in range(num_chunks - 1):  # level 2: K steps over chunks
        entering.append(torch.addcmul(within_chunk[:, k, -1], cumulative_decay[:, k, -1], entering[-1]))
    states = torch.addcmul(within_chunk, cumulative_decay, torch.stack(entering, dim=1).unsqueeze(2))
    return states.reshape(batch, num_chunks * chunk, num_states)[:, :length]


def _step_powers(log_decay: torch.Tensor, count: int) -> torch.Tensor:
    """a^n for n = 1..count: (count, P); every exponent n * log_decay <= 0, so nothing grows."""
    return torch.exp(torch.arange(1, count + 1, device=log_decay.device).to(log_decay.dtype).unsqueeze(-1) * log_decay)


def _chunk_length(length: int) -> int:
    """About sqrt(L) (the two levels' step counts balance), preferring a divisor of L: no padding copies."""
    root = max(1, math.isqrt(length))
    divisors = [c for c in range(max(1, root // 2), 2 * root + 1) if length % c == 0]
    return min(divisors, key=lambda c: abs(c - root)) if divisors else root


# The adjoint scan's graph-free kernel. "two_level" is the default: measured on 2 cores it beats the
# step loop and the doubling scan at MAML's episodes (10 x 500 x 64) and at in-context trials (20 x 5000 x 64).
VALUE_KERNELS = {"two_level": _two_level_values, "step_loop": scan_reference}
_VALUE_KERNEL = "two_level"


def _scan_values(
    log_decay: torch.Tensor, starts: torch.Tensor, inputs: torch.Tensor, initial_state: torch.Tensor
) -> torch.Tensor:
    """The recurrence's values only (no autograd graph)."""
    with torch.no_grad():
        return VALUE_KERNELS[_VALUE_KERNEL](log_decay, starts, inputs, initial_state)


class _AdjointScan(torch.autograd.Function):
    """h = scan(a, u, h_0) with a hand-written backward: the adjoint recurrence, itself a scan.

    For a loss with gradient g_t = dL/dh_t, the adjoint lambda_t = dL/du_t runs backwards in time,
        lambda_t = g_t + a_{t+1} lambda_{t+1}      (cut where step t + 1 starts an episode),
    and dL/dh_0 = a_1 lambda_1, dL/d log_decay = sum_{b,t} lambda_t a_t h_{t-1}. The backward calls
    this Function again for the reverse scan and uses only differentiable ops on the saved output, so
    autograd differentiates it once more: second-order MAML stays exact. The gain over an autograd
    graph of the scan's ops: every pass (forward, backward, double backward) is one graph-free scan
    plus a few elementwise ops, not the graph of every op inside the scan.
    """

    generate_vmap_rule = True  # the batched meta-gradient vmaps over tasks

    @staticmethod
    def forward(
        log_decay: torch.Tensor, inputs: torch.Tensor, initial_state: torch.Tensor, starts: torch.Tensor
    ) -> torch.Tensor:
        return _scan_values(log_decay, starts, inputs, initial_state)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        log_decay, _, initial_state, starts = inputs
        ctx.save_for_backward(log_decay, initial_state, starts, output)

    @staticmethod
    def backward(ctx: Any, grad_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        log_decay, initial_state, starts, states = ctx.saved_tensors
        # Reversed in time, the adjoint's decay at step t is a_{t+1}: the starts shift by one, and the
        # last step (no t + 1) starts from nothing.
        reverse_starts = torch.cat([starts[..., 1:], torch.ones_like(starts[..., :1])], dim=-1).flip(-1)
        adjoint = _adjoint_scan(log_decay, grad_states.flip(-2), torch.zeros_like(initial_state), reverse_starts).flip(
            -2
        )  # (B, L, P)
        # a_t h_{t-1} directly, not as h_t - u_t: in float32 that difference loses the digits of a fast
        # state's small a_t h_{t-1} next to u_t, and with them its decay's gradient. With a_t = a (1 - start_t),
        # the sum is a * sum_{b,t} lambda_t (1 - start_t) h_{t-1}: a masked copy, one product and a sum, not a
        # (B, L, P) decay tensor and two products (fewer ops again when autograd differentiates this).
        keep = (~starts).to(states.dtype).unsqueeze(-1)  # (B, L, 1)
        previous = torch.cat([initial_state.unsqueeze(-2), states[..., :-1, :]], dim=-2) * keep  # (1 - start_t) h_{t-1}
        decay = torch.exp(log_decay)  # (P,)
        grad_log_decay = decay * (adjoint * previous).flatten(0, -2).sum(0)  # (P,)
        return grad_log_decay, adjoint, adjoint[..., 0, :] * decay * keep[..., 0, :], None


def scan_adjoint(
    log_decay: torch.Tensor, starts: torch.Tensor, inputs: torch.Tensor, initial_state: torch.Tensor
) -> torch.Tensor:
    """The recurrence with graph-free passes and the adjoint recurrence as its backward (``_AdjointScan``).
    log_decay (P,), starts (B, L) bool, inputs (B, L, P), h_0 (B, P) -> (B, L, P)."""
    return _adjoint_scan(log_decay, inputs, initial_state, starts)


# ``Function.apply`` carries no types: this is it, typed (log_decay, inputs, initial_state, starts).
_adjoint_scan: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = _AdjointScan.apply


Scan = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
SCANS: dict[str, Scan] = {
    "reference": scan_reference,
    "doubling": scan_doubling,
    "chunked": scan_chunked,
    "adjoint": scan_adjoint,
}


class DiagonalSSM(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        state_size: int,
        scan: str = "adjoint",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        max_timescale: int = 0,
    ) -> None:
        super().__init__()
        if scan not in SCANS:
            raise ValueError(f"unknown scan {scan!r}; expected one of {sorted(SCANS)}")
        self.scan = scan
        # S4D-Real initialisation: lambda_n = -(n + 1), the real parts of the HiPPO-LegS eigenvalues
        # (Gu et al. 2022), a spread of decay rates from slow to fast memory.
        self.log_neg_lambda = nn.Parameter(torch.log(torch.arange(1, state_size + 1, dtype=torch.float32)))
        if max_timescale:
            # Time constants 1 / (dt |lambda|) log-spaced from 1 step to max_timescale (a whole in-context
            # trial): S4D-Real's random step sizes make the decay rate dt |lambda| span [1e-3, 6.4], so at
            # most one or two of 64 states remember past ~1,000 steps, too short for a 10-episode trial.
            rates = torch.logspace(-math.log10(max_timescale), 0.0, state_size)  # dt |lambda| per state
            log_dt = torch.log(rates) - self.log_neg_lambda.detach()
        else:
            # Step sizes log-uniform in [dt_min, dt_max] (S4/S5): with lambda in [-P, -1] the per-step decays
            # exp(dt * lambda) cover time scales from ~1 to ~1000 steps, an episode's length.
            log_dt = torch.rand(state_size) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)
        # B and C scaled so the output variance neither grows nor vanishes with the sizes.
        self.B = nn.Parameter(torch.randn(state_size, hidden_size) / math.sqrt(hidden_size))
        self.C = nn.Parameter(torch.randn(hidden_size, state_size) / math.sqrt(state_size))
        self.D = nn.Parameter(torch.ones(hidden_size))

    def timescales(self) -> torch.Tensor:
        """Each state's memory time constant in steps, 1 / (dt |lambda|): (P,)."""
        return 1.0 / (torch.exp(self.log_dt) * torch.exp(self.log_neg_lambda))

    def discretise(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A_bar (P,), B_bar (P, H) by zero-order hold."""
        log_a_bar, b_bar = self.discretise_log()
        return torch.exp(log_a_bar), b_bar

    def discretise_log(self) -> tuple[torch.Tensor, torch.Tensor]:
        """log A_bar = dt * lambda (P,) and B_bar (P, H): the scans take the decay's log."""
        lam = -torch.exp(self.log_neg_lambda)  # (P,) < 0
        dt_lam = torch.exp(self.log_dt) * lam  # (P,)
        # expm1: for |dt * lambda| << 1 the naive exp(x) - 1 loses every digit (and returns 0 in float32).
        return dt_lam, (torch.expm1(dt_lam) / lam).unsqueeze(-1) * self.B

    def initial_state(self, batch: int) -> torch.Tensor:
        return self.B.new_zeros(batch, self.B.shape[0])  # (B, P)

    def step(
        self, x: torch.Tensor, state: torch.Tensor, episode_start: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step: x (B, H), state (B, P), episode_start (B,) bool -> y (B, H), new state (B, P)."""
        a_bar, b_bar = self.discretise()
        keep = (~episode_start).to(x.dtype).unsqueeze(-1)  # (B, 1)
        state = a_bar * keep * state + x @ b_bar.T  # (B, P)
        return state @ self.C.T + self.D * x, state

    def forward_sequence(
        self, x: torch.Tensor, state: torch.Tensor, episode_start: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole sequences: x (B, L, H), state (B, P) carried in, episode_start (B, L) bool
        -> y (B, L, H), last state."""
        log_a_bar, b_bar = self.discretise_log()  # (P,), (P, H)
        # F.linear, not x @ W.T: on a (B, L, H) input the transposed view costs 1.5x the matmul itself.
        states = SCANS[self.scan](log_a_bar, episode_start, nn.functional.linear(x, b_bar), state)  # (B, L, P)
        return torch.addcmul(nn.functional.linear(states, self.C), self.D, x), states[:, -1]


class SSMBlock(nn.Module):
    """Pre-norm residual block: h + GELU(SSM(LayerNorm(h)))."""

    def __init__(self, hidden_size: int, state_size: int, scan: str, max_timescale: int = 0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.ssm = DiagonalSSM(hidden_size, state_size, scan, max_timescale=max_timescale)

    def forward_sequence(
        self, h: torch.Tensor, state: torch.Tensor, episode_start: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        y, last = self.ssm.forward_sequence(self.norm(h), state, episode_start)  # (B, L, H), (B, P)
        return h + nn.functional.gelu(y), last

    def step(
        self, h: torch.Tensor, state: torch.Tensor, episode_start: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        y, state = self.ssm.step(self.norm(h), state, episode_start)  # (B, H), (B, P)
        return h + nn.functional.gelu(y), state


# RMS of the head's input features at init, about that of the MLP's last tanh layer: the inner step's
# size in action space scales with it, so one inner_lr serves both policy types.
FEATURE_SCALE = 0.3


class GaussianSSMPolicy(nn.Module):
    """Observation encoder -> SSM blocks -> Gaussian action head (state-independent log-std).

    The recurrent state is (K, num_ssm_layers, state_size). Training replays whole episodes through
    ``forward`` (a scan from a zero state, which is what a reset at t = 0 gives); rollouts call ``step``.
    """

    # Eigenvalues and step sizes set the memory time scales. They are meta-learned in the outer loop but
    # left out of the inner step: one SGD step of size inner_lr on log-parameters rescales decay rates
    # exponentially, and 10 episodes of one task say little about time scales; B, C, D, the norms and
    # the encoder/head carry the task-specific adaptation.
    FIXED_IN_INNER_LOOP = ("log_neg_lambda", "log_dt")

    def __init__(self, obs_dim: int, action_dim: int, config: PolicyConfig) -> None:
        super().__init__()
        self.log_std_range = (LOG_STD_MIN, LOG_STD_MAX)
        self.encoder = nn.Linear(obs_dim, config.hidden_size)
        self.encoder_layers = nn.ModuleList(
            nn.Linear(config.hidden_size, config.hidden_size) for _ in range(config.num_encoder_layers - 1)
        )
        self.blocks = nn.ModuleList(
            SSMBlock(config.hidden_size, config.state_size, config.ssm_scan, config.ssm_max_timescale or 0)
            for _ in range(config.num_ssm_layers)
        )
        # A final norm keeps the head's input at unit scale: the residual stream grows with depth, and
        # without it the inner step's gradient on the head is ~10x the MLP's, so adaptation overshoots.
        self.final_norm = nn.LayerNorm(config.hidden_size)
        nn.init.constant_(self.final_norm.weight, FEATURE_SCALE)
        self.head = nn.Linear(config.hidden_size, action_dim)
        nn.init.uniform_(self.head.weight, -3e-3, 3e-3)  # start near the zero action, as the MLP does
        nn.init.zeros_(self.head.bias)
        self.log_std = nn.Parameter(torch.full((action_dim,), config.init_log_std))
        self.state_size = config.state_size

    def fixed_in_inner_loop(self, name: str) -> bool:
        return name.endswith(self.FIXED_IN_INNER_LOOP)

    def initial_state(self, batch: int) -> torch.Tensor:
        return self.log_std.new_zeros(batch, len(self.blocks), self.state_size)  # (K, layers, P)

    def encode(self, observations: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.encoder(observations))
        for layer in self.encoder_layers:
            h = torch.tanh(layer(h))
        return h

    def forward(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole episodes: observations (N, T, D) -> mean (N, T, A), log_std (A,)."""
        h = self.encode(observations)  # (N, T, H)
        starts = torch.zeros(h.shape[:2], dtype=torch.bool, device=h.device)
        starts[:, 0] = True
        state = self.initial_state(h.shape[0])
        for index, block in enumerate(self.ssm_blocks()):
            h, _ = block.forward_sequence(h, state[:, index], starts)
        return self.head(self.final_norm(h)), self.log_std.clamp(*self.log_std_range)

    def sequence(
        self, observations: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sequences that continue ``state`` with no reset inside (chunks of an in-context trial):
        observations (N, L, D), state (N, layers, P) -> mean (N, L, A), log_std (A,), last state."""
        h = self.encode(observations)
        no_starts = torch.zeros(h.shape[:2], dtype=torch.bool, device=h.device)
        last_states = []
        for index, block in enumerate(self.ssm_blocks()):
            h, last = block.forward_sequence(h, state[:, index], no_starts)
            last_states.append(last)
        return self.head(self.final_norm(h)), self.log_std.clamp(*self.log_std_range), torch.stack(last_states, dim=1)

    def step(
        self, observations: torch.Tensor, state: torch.Tensor, episode_start: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step for K envs: observations (K, D), state (K, layers, P), episode_start (K,)."""
        h = self.encode(observations)  # (K, H)
        new_states = []
        for index, block in enumerate(self.ssm_blocks()):
            h, layer_state = block.step(h, state[:, index], episode_start)
            new_states.append(layer_state)
        return self.head(self.final_norm(h)), self.log_std.clamp(*self.log_std_range), torch.stack(new_states, dim=1)

    def ssm_blocks(self) -> list[SSMBlock]:
        return [cast(SSMBlock, block) for block in self.blocks]

    def rollout_step(self, stacked: dict[str, torch.Tensor] | None = None) -> StepFn:
        """``step`` for rollouts with the parameters fixed: the discretisation and transposes are done
        once here, not at every env step. ``stacked``: one parameter set per env on a leading K dim
        (batched matmuls); None: this module's own parameters, shared by every env."""
        with torch.no_grad():
            p = stacked if stacked is not None else {k: v.detach() for k, v in self.named_parameters()}
            encoders = [
                (p[f"{name}weight"].transpose(-1, -2), p[f"{name}bias"])
                for name in ["encoder.", *(f"encoder_layers.{i}." for i in range(len(self.encoder_layers)))]
            ]
            head = (p["head.weight"].transpose(-1, -2), p["head.bias"])
            final_norm = (p["final_norm.weight"], p["final_norm.bias"])
            layers = []
            for index in range(len(self.blocks)):
                prefix = f"blocks.{index}."
                lam = -torch.exp(p[prefix + "ssm.log_neg_lambda"])  # (..., P)
                dt_lam = torch.exp(p[prefix + "ssm.log_dt"]) * lam
                b_bar = (torch.expm1(dt_lam) / lam).unsqueeze(-1) * p[prefix + "ssm.B"]  # (..., P, H)
                layers.append(
                    (
                        p[prefix + "norm.weight"],
                        p[prefix + "norm.bias"],
                        torch.exp(dt_lam),
                        b_bar.transpose(-1, -2),
                        p[prefix + "ssm.C"].transpose(-1, -2),
                        p[prefix + "ssm.D"],
                    )
                )
            log_std = p["log_std"].clamp(*self.log_std_range)

        def step(
            observations: torch.Tensor, state: torch.Tensor, episode_start: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            h = observations
            for encoder in encoders:
                h = torch.tanh(batched_affine(h, *encoder))  # (K, H)
            if episode_start.any():
                state = state * (~episode_start).to(state.dtype)[:, None, None]
            new_states = []
            for index, (norm_w, norm_b, a_bar, b_bar_t, c_t, d) in enumerate(layers):
                x = _layer_norm(h, norm_w, norm_b)  # (K, H)
                layer_state = batched_affine(x, b_bar_t, state[:, index] * a_bar)  # x_t = A_bar x_{t-1} + B_bar u_t
                h = h + nn.functional.gelu(batched_affine(layer_state, c_t, x * d))  # y_t = C x_t + D u_t
                new_states.append(layer_state)
            return batched_affine(_layer_norm(h, *final_norm), *head), log_std, torch.stack(new_states, dim=1)

        return step


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """LayerNorm with a shared (H,) or per-row (K, H) affine; the shared case is one fused op."""
    if weight.dim() == 1:
        return nn.functional.layer_norm(x, x.shape[-1:], weight, bias)
    return nn.functional.layer_norm(x, x.shape[-1:]) * weight + bias
