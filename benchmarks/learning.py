"""Learning curve: meta-train on ML1 reach-v3, then meta-test every checkpoint on held-out goals.

    python benchmarks/learning.py --policy_type mlp --num_epochs 100 --checkpoint_every 10

Runs ``metarl train`` (a real local run: Ray rollout actors and learner actor), then evaluates the
initial policy and every checkpoint with both metrics of ``metarl eval`` (Meta-World's official
``metalearning_evaluation`` and the direct per-goal success rate) plus pre-adaptation success.
Results: benchmarks/results/learning.json (one entry per policy type) and learning.png.
Goal: post-adaptation success on held-out goals clearly above pre-adaptation and >= 0.5.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def initial_checkpoint(run_path: Path, out_dir: Path) -> Path:
    """The untrained meta-policy (same seed, so the same weights the run started from)."""
    from metarl_ray.checkpoint import save_checkpoint
    from metarl_ray.config import config_from_dict
    from metarl_ray.learner import Learner
    from metarl_ray.run_dir import read_config_dict

    config = config_from_dict(read_config_dict(run_path))
    learner = Learner(config.policy, config.maml, config.ppo, config.run.seed, "cpu")
    return save_checkpoint(out_dir, 0, {"iteration": 0, "env_steps_total": 0, "config": config.to_dict(),
                                        "learner": learner.state_dict(), "task_sampler": {}})


def log_span_seconds(log: Path) -> float:
    """Wall time of the training run, first to last line of its timestamped log (also for --skip_train)."""
    lines = log.read_text().splitlines()
    first, last = (datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f") for line in (lines[0], lines[-1]))
    return (last - first).total_seconds()


def evaluate(path: str, goals_per_class: int) -> dict:
    import torch

    from metarl_ray.checkpoint import load_checkpoint
    from metarl_ray.evaluation import evaluate_checkpoint

    torch.set_num_threads(1)
    state = load_checkpoint(Path(path))
    result = evaluate_checkpoint(path, goals_per_class=goals_per_class)
    return {"iteration": int(state["iteration"]), "env_steps": int(state["env_steps_total"]),
            "success_rate": result.success_rate, "success_rate_official": result.success_rate_official,
            "pre_adapt_success_rate": result.pre_adapt_success_rate, "mean_return": result.mean_return,
            "mean_return_official": result.mean_return_official, "pre_adapt_mean_return": result.pre_adapt_mean_return}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = {"mlp": "tab:blue", "ssm": "tab:red"}
    for policy_type, entry in results.items():
        rows = entry["curve"]
        steps = [row["env_steps"] / 1e6 for row in rows]
        color = colors.get(policy_type, None)
        ax.plot(steps, [r["success_rate"] for r in rows], "-o", color=color, label=f"{policy_type}: post-adapt (per goal)")
        ax.plot(steps, [r["success_rate_official"] for r in rows], "--s", color=color, alpha=0.7, label=f"{policy_type}: post-adapt (official)")
        ax.plot(steps, [r["pre_adapt_success_rate"] for r in rows], ":^", color=color, alpha=0.7, label=f"{policy_type}: pre-adapt (per goal)")
    ax.axhline(0.5, color="gray", lw=0.8)
    ax.set_xlabel("env steps (millions)")
    ax.set_ylabel("meta-test success on held-out goals")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("ML1 reach-v3, MAML+PPO")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy_type", default="mlp")
    parser.add_argument("--num_epochs", type=int, default=100)
    parser.add_argument("--checkpoint_every", type=int, default=10)
    parser.add_argument("--goals_per_class", type=int, default=20, help="held-out goals evaluated per checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default="benchmarks/runs")
    parser.add_argument("--skip_train", action="store_true", help="evaluate an existing run of the same name")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more flags for metarl train")
    args = parser.parse_args()

    run_name = f"learning-ML1-reach-{args.policy_type}-seed{args.seed}"
    run_path = Path(args.output_dir) / run_name
    train_command = [sys.executable, "-m", "metarl_ray", "train", "--env_name", "ML1", "--task", "reach-v3",
                     "--policy_type", args.policy_type, "--num_epochs", str(args.num_epochs),
                     "--checkpoint_every", str(args.checkpoint_every), "--seed", str(args.seed),
                     "--output_dir", args.output_dir, "--run_name", run_name, *args.extra]
    if not args.skip_train:
        subprocess.run(train_command, check=True)
    train_seconds = log_span_seconds(run_path / "train.log")

    checkpoints = [initial_checkpoint(run_path, run_path / "initial")]
    checkpoints += sorted((run_path / "checkpoints").glob("checkpoint_*.pt"))
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=2) as pool:
        curve = list(pool.map(evaluate, [str(p) for p in checkpoints], [args.goals_per_class] * len(checkpoints)))
    eval_seconds = time.perf_counter() - started
    curve.sort(key=lambda row: row["iteration"])
    final = curve[-1]

    output = RESULTS / "learning.json"
    results = json.loads(output.read_text()) if output.is_file() else {}
    results[args.policy_type] = {
        "command": "python benchmarks/learning.py " + " ".join(sys.argv[1:]),
        "train_command": "metarl " + " ".join(train_command[3:]),
        "train_wall_s": round(train_seconds, 1),
        "eval_wall_s": round(eval_seconds, 1),
        "goals_per_class": args.goals_per_class,
        "final": final,
        "goal_met": final["success_rate"] >= 0.5 and final["success_rate"] > final["pre_adapt_success_rate"] + 0.1,
        "curve": curve,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, RESULTS / "learning.png")
    print(json.dumps(results[args.policy_type], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
