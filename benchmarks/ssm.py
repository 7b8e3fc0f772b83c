"""SSM vs recurrent baselines on this CPU, all measured in one run.

    python benchmarks/ssm.py

1. Training pass (forward + backward) at batch 20 x length 500, hidden 128, state 64: the SSM layer with
   each scan, a reset-aware LSTM (LSTMCell stepped, state zeroed where an episode starts: the fair
   recurrent baseline), the fused nn.LSTM (cannot reset mid-sequence) and the fused nn.GRU.
2. One second-order MAML adaptation plus meta-gradient for one task (10 support + 10 query episodes of
   500 steps): SSM policy vs an LSTM policy of equal width (fused nn.LSTM: episodes start at row starts,
   so it needs no mid-sequence reset here - the strongest LSTM baseline).
3. Per-step rollout inference for 20 envs: SSM vs MLP vs LSTM, with shared (pre-adaptation) and
   per-env (adapted) parameters.
4. An in-context (RL2-style) trial: 10 episodes of 500 steps (L = 5,000) whose memory carries across
   the episodes, reset only where the trial starts; batch 20 (one trial per meta-batch task). Training
   pass of the SSM layer (each scan but the step loop) against the GRU step loop (GRUCell stepped, as a
   recurrent policy recomputes recorded trials step by step) and the fused nn.GRU (which a trial with
   no mid-sequence reset also allows). The SSM (default scan) and the GRU step loop alternate, one
   pass each per repeat; their ratio is the median over those pairs.
Writes benchmarks/results/ssm.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
from report import write_report  # benchmarks/report.py
from torch import nn

from metarl_ray.algorithms.maml_ppo import MAMLPPO, TaskTensors, TensorBatch
from metarl_ray.config import MAMLConfig, PolicyConfig, PPOConfig
from metarl_ray.envs.metaworld import ACTION_DIM, OBS_DIM
from metarl_ray.policies import build_policy
from metarl_ray.policies.common import LOG_STD_MAX, LOG_STD_MIN, BatchedPolicy, detached_params
from metarl_ray.policies.ssm import SCANS, DiagonalSSM

BATCH, LENGTH, HIDDEN, STATE = 20, 500, 128, 64
TRIAL_EPISODES = 10


def ssm_layer_pass(layer: DiagonalSSM, x: torch.Tensor, starts: torch.Tensor) -> None:
    layer.forward_sequence(x, layer.initial_state(x.shape[0]), starts)[0].square().mean().backward()


def timed(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``fn`` in milliseconds."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1e3)
    return statistics.median(samples)


def reset_aware_lstm(cell: nn.LSTMCell, x: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    h = c = x.new_zeros(x.shape[0], cell.hidden_size)
    outputs = []
    for x_t, start_t in zip(x.unbind(1), starts.unbind(1)):
        keep = (~start_t).to(x.dtype).unsqueeze(-1)
        h, c = cell(x_t, (h * keep, c * keep))
        outputs.append(h)
    return torch.stack(outputs, 1)


def training_pass(repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    x = torch.randn(BATCH, LENGTH, HIDDEN, requires_grad=True)
    starts = torch.zeros(BATCH, LENGTH, dtype=torch.bool)
    starts[:, 0] = True
    starts[:, LENGTH // 2] = True  # a mid-sequence episode start, as in packed rollouts
    results = {}
    for scan in SCANS:
        layer = DiagonalSSM(HIDDEN, STATE, scan)
        results[f"ssm_{scan}"] = timed(lambda layer=layer: ssm_layer_pass(layer, x, starts), repeats)
    cell = nn.LSTMCell(HIDDEN, HIDDEN)
    results["lstm_reset_aware"] = timed(lambda: reset_aware_lstm(cell, x, starts).square().mean().backward(), repeats)
    lstm, gru = nn.LSTM(HIDDEN, HIDDEN, batch_first=True), nn.GRU(HIDDEN, HIDDEN, batch_first=True)
    results["lstm_fused"] = timed(lambda: lstm(x)[0].square().mean().backward(), repeats)
    results["gru_fused"] = timed(lambda: gru(x)[0].square().mean().backward(), repeats)
    return results


def gru_step_loop(cell: nn.GRUCell, x: torch.Tensor) -> torch.Tensor:
    h = x.new_zeros(x.shape[0], cell.hidden_size)
    outputs = []
    for x_t in x.unbind(1):
        h = cell(x_t, h)
        outputs.append(h)
    return torch.stack(outputs, 1)


def trial_training_pass(repeats: int) -> dict[str, float]:
    """Forward + backward over one 10-episode trial per task, reset only at the trial start."""
    torch.manual_seed(3)
    length = TRIAL_EPISODES * LENGTH
    x = torch.randn(BATCH, length, HIDDEN, requires_grad=True)
    starts = torch.zeros(BATCH, length, dtype=torch.bool)
    starts[:, 0] = True
    results = {}
    for scan in ("chunked", "doubling"):
        layer = DiagonalSSM(HIDDEN, STATE, scan)
        results[f"ssm_{scan}"] = timed(lambda layer=layer: ssm_layer_pass(layer, x, starts), repeats)
    cell, gru = nn.GRUCell(HIDDEN, HIDDEN), nn.GRU(HIDDEN, HIDDEN, batch_first=True)
    results["gru_fused"] = timed(lambda: gru(x)[0].square().mean().backward(), repeats)
    # The headline pair (the default scan against the GRU step loop) is timed in alternation, so a
    # slow spell of this shared machine lands on both; the ratio is the median of the pairs' ratios.
    layer = DiagonalSSM(HIDDEN, STATE, "adjoint")

    def ssm_pass() -> None:
        layer.forward_sequence(x, layer.initial_state(BATCH), starts)[0].square().mean().backward()

    def gru_pass() -> None:
        gru_step_loop(cell, x).square().mean().backward()

    pairs = [(timed(ssm_pass, 1, warmup=int(i == 0)), timed(gru_pass, 1, warmup=int(i == 0))) for i in range(repeats)]
    results["ssm_adjoint"] = statistics.median(p[0] for p in pairs)
    results["gru_step_loop"] = statistics.median(p[1] for p in pairs)
    results["gru_step_loop_over_ssm_adjoint_paired"] = statistics.median(p[1] / p[0] for p in pairs)
    return results


class LSTMPolicy(nn.Module):
    """Benchmark baseline: encoder -> fused LSTM -> Gaussian head, the SSM policy's shape."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.encoder = nn.Linear(OBS_DIM, hidden)
        self.lstm = nn.LSTM(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, ACTION_DIM)
        self.log_std = nn.Parameter(torch.zeros(ACTION_DIM))

    def forward(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.lstm(torch.tanh(self.encoder(observations)))[0]), self.log_std.clamp(
            LOG_STD_MIN, LOG_STD_MAX
        )

    def step(self, observations, state, episode_start):
        """One step for K envs through the same fused LSTM: state (1, K, H) twice."""
        keep = (~episode_start).float().view(1, -1, 1)
        out, state = self.lstm(torch.tanh(self.encoder(observations)).unsqueeze(1), (state[0] * keep, state[1] * keep))
        return self.head(out.squeeze(1)), self.log_std, state

    @staticmethod
    def fixed_in_inner_loop(name: str) -> bool:
        return False


def maml_step(policy: nn.Module, repeats: int) -> float:
    torch.manual_seed(1)
    episodes = 10

    def batch() -> TensorBatch:
        obs, actions = torch.randn(episodes, LENGTH, OBS_DIM), torch.randn(episodes, LENGTH, ACTION_DIM)
        with torch.no_grad():
            mean, log_std = policy(obs)
            log_probs = (-0.5 * ((actions - mean) / log_std.exp()) ** 2 - log_std).sum(-1)
        return TensorBatch(obs, actions, log_probs, torch.randn(episodes, LENGTH))

    task = TaskTensors((batch(),), batch())
    algo = MAMLPPO(policy, MAMLConfig(), PPOConfig())

    def step() -> None:
        policy.zero_grad()
        algo.task_outer_loss(algo.meta_params(), task)[0].backward()

    return timed(step, repeats, warmup=1)


def rollout_step(repeats: int) -> dict[str, float]:
    torch.manual_seed(2)
    envs = 20
    obs, starts = torch.randn(envs, OBS_DIM), torch.zeros(envs, dtype=torch.bool)
    results = {}
    for name, config in (
        ("mlp", PolicyConfig(policy_type="mlp", hidden_size=HIDDEN)),
        ("ssm", PolicyConfig(policy_type="ssm", hidden_size=HIDDEN, state_size=STATE)),
    ):
        actor = BatchedPolicy(build_policy(OBS_DIM, ACTION_DIM, config))
        meta = detached_params(actor.policy)
        state = actor.initial_state(envs)
        for mode, params in (("shared", [meta] * envs), ("per_env", [dict(meta) for _ in range(envs)])):
            step = actor.bind(params)
            with torch.no_grad():
                results[f"{name}_{mode}"] = (
                    timed(lambda step=step, state=state: step(obs, state, starts), repeats) * 1e3
                )  # microseconds
    lstm = LSTMPolicy(HIDDEN)
    state = (torch.zeros(1, envs, HIDDEN), torch.zeros(1, envs, HIDDEN))
    with torch.no_grad():
        results["lstm_shared"] = timed(lambda: lstm.step(obs, state, starts), repeats) * 1e3
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (rollout actors use 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    train_ms = training_pass(args.repeats)
    print("training pass (ms):", {k: round(v, 1) for k, v in train_ms.items()}, flush=True)
    ssm_policy = build_policy(
        OBS_DIM, ACTION_DIM, PolicyConfig(policy_type="ssm", hidden_size=HIDDEN, state_size=STATE)
    )
    maml_ms = {
        "ssm_policy": maml_step(ssm_policy, max(3, args.repeats // 3)),
        "lstm_policy": maml_step(LSTMPolicy(HIDDEN), max(3, args.repeats // 3)),
    }
    print("second-order MAML step, one task (ms):", {k: round(v, 1) for k, v in maml_ms.items()}, flush=True)
    rollout_us = rollout_step(args.repeats * 200)
    print("rollout step, 20 envs (us):", {k: round(v, 1) for k, v in rollout_us.items()}, flush=True)
    trial_ms = trial_training_pass(max(3, args.repeats // 2))
    print(
        f"trial training pass, {BATCH} x {TRIAL_EPISODES * LENGTH} steps (ms):",
        {k: round(v, 1) for k, v in trial_ms.items()},
        flush=True,
    )

    best_scan = min(SCANS, key=lambda scan: train_ms[f"ssm_{scan}"])
    ssm_train = train_ms[f"ssm_{best_scan}"]
    ratios = {
        "lstm_reset_aware_over_ssm_train": train_ms["lstm_reset_aware"] / ssm_train,
        "lstm_fused_over_ssm_train": train_ms["lstm_fused"] / ssm_train,
        "gru_fused_over_ssm_train": train_ms["gru_fused"] / ssm_train,
        "lstm_over_ssm_maml_step": maml_ms["lstm_policy"] / maml_ms["ssm_policy"],
        "ssm_over_mlp_rollout_step_shared": rollout_us["ssm_shared"] / rollout_us["mlp_shared"],
        "ssm_over_mlp_rollout_step_per_env": rollout_us["ssm_per_env"] / rollout_us["mlp_per_env"],
        "ssm_over_lstm_rollout_step_shared": rollout_us["ssm_shared"] / rollout_us["lstm_shared"],
        "gru_step_loop_over_ssm_trial_train": trial_ms.pop("gru_step_loop_over_ssm_adjoint_paired"),
        "gru_fused_over_ssm_trial_train": trial_ms["gru_fused"] / trial_ms["ssm_adjoint"],
    }
    goals = {
        "ssm_train_>=3x_faster_than_reset_aware_lstm": ratios["lstm_reset_aware_over_ssm_train"] >= 3.0,
        "ssm_train_no_slower_than_fused_lstm": ratios["lstm_fused_over_ssm_train"] >= 1.0,
        "maml_step_>=3x_faster_than_lstm": ratios["lstm_over_ssm_maml_step"] >= 3.0,
        "ssm_rollout_step_<=2x_mlp": ratios["ssm_over_mlp_rollout_step_shared"] <= 2.0,
        "ssm_trial_train_>=5x_faster_than_gru_step_loop": ratios["gru_step_loop_over_ssm_trial_train"] >= 5.0,
    }
    report = {
        "command": "python benchmarks/ssm.py " + " ".join(sys.argv[1:]),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": args.threads,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "shapes": {
            "batch": BATCH,
            "length": LENGTH,
            "hidden": HIDDEN,
            "state": STATE,
            "ssm_layers": PolicyConfig().num_ssm_layers,
        },
        "training_pass_ms": {k: round(v, 2) for k, v in train_ms.items()},
        "fastest_scan": best_scan,
        "maml_second_order_step_ms": {k: round(v, 2) for k, v in maml_ms.items()},
        "rollout_step_us": {k: round(v, 2) for k, v in rollout_us.items()},
        "trial_training_pass_ms": {
            "shape": [BATCH, TRIAL_EPISODES * LENGTH, HIDDEN],
            "resets": "trial start only",
            **{k: round(v, 2) for k, v in trial_ms.items()},
        },
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "goals_met": goals,
    }
    write_report("ssm", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
