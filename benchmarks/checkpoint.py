"""Checkpoint cost: size, write and restore time for the MLP and SSM policies at default sizes, and the
overhead of checkpointing every iteration at the ML10 defaults, all measured in one run.

    python benchmarks/checkpoint.py
The overhead is the measured checkpoint time (learner state over Ray, serialise, checksum, fsync,
rename) as a share of the measured iteration time of a real ML10 run that checkpoints every iteration
(`metarl train --benchmark ML10 --num_epochs 3 --checkpoint_every 1`). Goal: < 2% of iteration time.
Writes benchmarks/results/checkpoint.json.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch
from report import write_report  # benchmarks/report.py

from metarl_ray.config import build_config
from metarl_ray.training.checkpoint import load_checkpoint, save_checkpoint
from metarl_ray.training.learner import Learner
from metarl_ray.training.metrics import read_metrics


def policy_costs(policy_type: str, repeats: int = 5) -> dict[str, float]:
    config = build_config({"env": {"benchmark": "ML10", "task": None}, "policy": {"policy_type": policy_type}})
    learner = Learner(config.policy, config.maml, config.ppo, 0, "cpu")
    for p in learner.policy.parameters():  # one Adam step, so the optimizer state is full size
        p.grad = torch.zeros_like(p)
    learner.optimizer.step()
    state = {
        "iteration": 1,
        "env_steps_total": 0,
        "config": config.to_dict(),
        "learner": learner.state_dict(),
        "task_sampler": {"bit_generator": {"state": {"state": 2**100, "inc": 1}}},
    }
    with tempfile.TemporaryDirectory() as directory:
        writes, restores = [], []
        for i in range(repeats):
            started = time.perf_counter()
            path = save_checkpoint(Path(directory), i + 1, state)
            writes.append(time.perf_counter() - started)
            started = time.perf_counter()
            Learner(config.policy, config.maml, config.ppo, 1, "cpu").load_state_dict(load_checkpoint(path)["learner"])
            restores.append(time.perf_counter() - started)
        size = Path(path).stat().st_size
    return {
        "parameters": sum(p.numel() for p in learner.policy.parameters()),
        "size_bytes": size,
        "write_ms": round(statistics.median(writes) * 1e3, 2),
        "restore_ms": round(statistics.median(restores) * 1e3, 2),
    }


def ml10_overhead(num_epochs: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as directory:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "metarl_ray",
                "train",
                "--benchmark",
                "ML10",
                "--num_epochs",
                str(num_epochs),
                "--checkpoint_every",
                "1",
                "--output_dir",
                directory,
                "--run_name",
                "ckpt",
            ],
            check=True,
            capture_output=True,
        )
        run = Path(directory) / "ckpt"
        iteration_s = [row["time/iteration_s"] for row in read_metrics(run)]
        checkpoint_s = [
            float(m.group(1)) for m in re.finditer(r"checkpoint \S+ \(([\d.]+)s\)", (run / "train.log").read_text())
        ]
    ratio = statistics.mean(checkpoint_s) / statistics.mean(iteration_s)
    return {
        "iterations": num_epochs,
        "mean_iteration_s": round(statistics.mean(iteration_s), 2),
        "mean_checkpoint_s": round(statistics.mean(checkpoint_s), 4),
        "overhead_fraction": round(ratio, 5),
        "goal_met": ratio < 0.02,
    }


def main() -> int:
    report = {
        "command": "python benchmarks/checkpoint.py " + " ".join(sys.argv[1:]),
        "date": datetime.now().isoformat(timespec="seconds"),
        "policies": {policy_type: policy_costs(policy_type) for policy_type in ("mlp", "ssm")},
    }
    print(json.dumps(report["policies"], indent=2), flush=True)
    report["ml10_checkpoint_every_iteration"] = ml10_overhead(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
    write_report("checkpoint", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
