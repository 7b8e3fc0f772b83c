"""Does an in-context (RL²) policy use its memory? Post-adaptation success with the memory carried from the
adaptation trial against the same episode with the memory reset, on the same goals with the same noise.

    python benchmarks/rl2_memory.py --checkpoint RUN_OR_FILE [RUN_OR_FILE ...] [--split train|test]
                                    [--goals_per_class 50] [--output NAME]

Per held-out goal (``metarl eval``'s goals and noise streams, so "carried" is its post-adaptation figure):
  1. an adaptation trial of 10 sampled episodes from a fresh memory;
  2. carried: one mean-action episode continuing where the trial stopped (memory, last action, reward);
  3. reset: the same episode from a fresh memory, still seeing the trial's last action and reward;
  4. before: one mean-action episode from a fresh memory with no previous action or reward.
A policy that uses what the trial showed scores higher carried than reset. The difference is paired
per goal; its 95% interval is a two-stage bootstrap (seeds, then goals within each class), as for every
success rate here. Writes benchmarks/results/NAME.json (default rl2_memory). One process, no Ray.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import numpy as np
import torch
from report import write_report  # benchmarks/report.py

from metarl_ray.algorithms.base import CarriedMemory
from metarl_ray.algorithms.rl2 import in_context_step_inputs
from metarl_ray.config import EVAL_SPLITS, ConfigError
from metarl_ray.evaluation.meta_test import find_checkpoints, goal_specs, load_run
from metarl_ray.evaluation.statistics import estimate
from metarl_ray.policies.common import params_from_numpy
from metarl_ray.training.rollout import RolloutWorker, _eval_rngs
from metarl_ray.training.storage import StoragePath

ADAPTATION_EPISODES = 10
GOALS_PER_BATCH = 10  # envs stepped in lockstep


def probe_run(location: str, split: str, goals_per_class: int) -> dict:
    checkpoints = find_checkpoints(StoragePath.parse(location))
    if not checkpoints:
        raise ConfigError(f"--checkpoint={location!r}: no checkpoint there")
    run = load_run(checkpoints[0])
    config = run.config
    if config.meta_learner.algorithm != "rl2":
        raise ConfigError(
            f"--checkpoint={location!r}: a {config.meta_learner.algorithm} run; the probe is for rl2 runs"
        )
    worker = RolloutWorker(
        config.env, config.policy, config.maml, config.ppo, seed=run.seed, meta_learner_config=config.meta_learner
    )
    params = params_from_numpy(run.meta_params)
    specs = goal_specs(run, goals_per_class, split)
    scores = {"before": [], "reset": [], "carried": []}
    for start in range(0, len(specs), GOALS_PER_BATCH):
        batch = specs[start : start + GOALS_PER_BATCH]
        envs = worker._envs_for(batch)
        per_env = [params] * len(batch)
        rngs = _eval_rngs(batch, run.seed, worker.family)
        with torch.no_grad():
            before, _ = worker.collect_trials(envs, per_env, rngs, 1, [False], in_context_step_inputs)
            _, memory = worker.collect_trials(
                envs, per_env, rngs, 1, [True] * ADAPTATION_EPISODES, in_context_step_inputs
            )
            carried, _ = worker.collect_trials(envs, per_env, rngs, 1, [False], in_context_step_inputs, memory)
            fresh = CarriedMemory(worker.actor.initial_state(len(batch)), memory.last_actions, memory.last_rewards)
            reset, _ = worker.collect_trials(envs, per_env, rngs, 1, [False], in_context_step_inputs, fresh)
        for name, trials in (("before", before), ("carried", carried), ("reset", reset)):
            scores[name].extend(float(t.successes[0, 0]) for t in trials)
    classes = sorted({spec.env_name for spec in specs})
    by_class = {
        name: np.array([[s for spec, s in zip(specs, values) if spec.env_name == c] for c in classes])
        for name, values in scores.items()
    }  # (classes, goals)
    return {
        "checkpoint": str(checkpoints[0]),
        "seed": run.seed,
        "iteration": run.iteration,
        "env_steps": run.env_steps,
        "policy_type": config.policy.policy_type,
        "classes": classes,
        "scores": by_class,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", nargs="+", required=True, help="runs (seeds of one setting) or checkpoint files"
    )
    parser.add_argument(
        "--split",
        default="train",
        choices=EVAL_SPLITS,
        help="train: the training classes' unseen goals (for choosing settings); test: held-out classes",
    )
    parser.add_argument("--goals_per_class", type=int, default=50)
    parser.add_argument("--output", default="rl2_memory")
    args = parser.parse_args()
    try:
        if not 1 <= args.goals_per_class <= 50:
            raise ConfigError(f"--goals_per_class={args.goals_per_class}: expected an integer in [1, 50]")
        runs = [probe_run(location, args.split, args.goals_per_class) for location in args.checkpoint]
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    tables = {name: np.stack([run["scores"][name] for run in runs]) for name in ("before", "reset", "carried")}
    figures = {name: estimate(table).to_dict() for name, table in tables.items()}
    figures["carried_minus_reset"] = estimate(tables["carried"] - tables["reset"]).to_dict()
    figures["carried_minus_before"] = estimate(tables["carried"] - tables["before"]).to_dict()
    for name, figure in figures.items():
        print(f"{name:22s} {figure['mean']:+.3f} {figure['mean_ci95']}")
    report = {
        "what": "post-adaptation success (mean action) with the memory carried from the adaptation trial vs reset",
        "command": " ".join(["python", *sys.argv]),
        "split": args.split,
        "goals_per_class": args.goals_per_class,
        "adaptation_episodes": ADAPTATION_EPISODES,
        "runs": [{key: value for key, value in run.items() if key != "scores"} for run in runs],
        "figures": figures,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "does_not_show": "sampled-action episodes, Meta-World's official metric, or anything about runs not listed",
    }
    write_report(args.output, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
