"""The figures of one curve point of a learning suite (``learning.py eval``).

A point is first measured per seed (``evaluate_seed``), so that a seed trained in a later session adds
its record without re-running the others; records keep every goal's scores, and ``pool`` turns the
records of one iteration into the pooled point with the same two-stage bootstrap ``metarl eval`` uses
for seeds evaluated together. A point holds:

- ``overall`` / ``per_task``: direct per-goal success on held-out goals (ML: the test classes, or a
  validation run's validation classes; MT: the training goals), both action rules, pre, post and gain;
- ``official``: Meta-World's own evaluation, per seed and pooled (mean, Student-t 95% interval over seeds);
- ``train_classes``: the training classes meta-tested on goals never trained on;
- ``journal``: training-class success of the training iterations just before the checkpoint (the
  run's own metrics: sampled actions, training goals);
- env steps, training wall-clock per seed and the machine.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

JOURNAL_WINDOW = 5  # training iterations averaged for a checkpoint's journal figure


def machine() -> dict[str, Any]:
    import torch

    model = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").is_file()
        else platform.processor()
    )
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def initial_checkpoint(run_path: Path, out_root: Path) -> Path:
    """The untrained meta-policy of a run (same seed, so the weights the run started from)."""
    from metarl_ray.config import config_from_dict
    from metarl_ray.training.checkpoint import save_checkpoint
    from metarl_ray.training.learner import Learner
    from metarl_ray.training.run_dir import read_config_dict

    config = config_from_dict(read_config_dict(run_path))
    learner = Learner(
        config.policy, config.maml, config.ppo, config.run.seed, "cpu", meta_learner_config=config.meta_learner
    )
    # Written afresh every time (milliseconds): a run recreated under the same name has new settings.
    return Path(
        str(
            save_checkpoint(
                out_root / run_path.name,
                0,
                {
                    "iteration": 0,
                    "env_steps_total": 0,
                    "config": config.to_dict(),
                    "learner": learner.state_dict(),
                    "task_sampler": {},
                },
            )
        )
    )


def weights_sha256(checkpoint: Path) -> str:
    """A checksum of a checkpoint's policy weights alone (names and bytes, in name order). The initial
    checkpoint is written afresh and carries the run's config, whose run length changes as a run is
    extended; its weights (seed and policy settings) do not, so they say whether it was measured."""
    import hashlib

    from metarl_ray.training.checkpoint import load_checkpoint
    from metarl_ray.training.storage import StoragePath

    digest = hashlib.sha256()
    policy = load_checkpoint(StoragePath.parse(checkpoint))["learner"]["policy"]
    for name in sorted(policy):
        digest.update(name.encode())
        digest.update(policy[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def training_time(run_path: Path, until_iteration: int | None = None) -> dict[str, float]:
    """Wall time and end-to-end env steps/s from the run's own per-iteration timings (so the gaps
    between sessions of a resumed run do not count), up to ``until_iteration``."""
    from metarl_ray.training.metrics import read_metrics

    rows = [r for r in read_metrics(run_path) if until_iteration is None or r["iteration"] <= until_iteration]
    if not rows:
        return {"iterations": 0, "env_steps": 0, "wall_h": 0.0}
    seconds = sum(row["time/iteration_s"] for row in rows)
    steps = rows[-1]["rollout/env_steps_total"]
    return {
        "iterations": rows[-1]["iteration"],
        "env_steps": steps,
        "wall_h": round(seconds / 3600, 3),
        "env_steps_per_s": round(steps / seconds, 1),
        "sample_s_per_iteration": round(sum(r["time/sample_s"] for r in rows) / len(rows), 1),
        "learn_s_per_iteration": round(sum(r["time/learn_s"] for r in rows) / len(rows), 1),
    }


def journal_success(run_path: Path, iteration: int) -> dict[str, Any] | None:
    """Training-class success before and after adaptation from the run's metrics, mean of the
    ``JOURNAL_WINDOW`` iterations up to ``iteration`` (None for the initial policy)."""
    from metarl_ray.training.metrics import read_metrics

    rows = [r for r in read_metrics(run_path) if iteration - JOURNAL_WINDOW < r["iteration"] <= iteration]
    if not rows:
        return None
    return {
        "pre": round(float(np.mean([r["pre_adapt/success"] for r in rows])), 4),
        "post": round(float(np.mean([r["post_adapt/success"] for r in rows])), 4),
        "iterations": [rows[0]["iteration"], rows[-1]["iteration"]],
    }


def goal_columns(goals: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Goal records as columns (one list per key): the JSON stays a few times smaller than a list of dicts."""
    return {key: [goal[key] for goal in goals] for key in goals[0]} if goals else {}


def goal_rows(goals: dict[str, list[Any]] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records back from ``goal_columns`` (a list of records is returned as it is)."""
    if isinstance(goals, list):
        return goals
    keys = list(goals)
    return [dict(zip(keys, values, strict=True)) for values in zip(*goals.values(), strict=True)]


def dumps(results: dict[str, Any]) -> str:
    """SUITE.json's text: indented, but each goal-column table on one line (most of the file's numbers)."""
    tables: dict[str, str] = {}

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key == "goals" and isinstance(value, dict):
                    token = f"@goals{len(tables)}@"
                    tables[token] = json.dumps(value, separators=(",", ":"))
                    out[key] = token
                else:
                    out[key] = strip(value)
            return out
        return [strip(value) for value in node] if isinstance(node, list) else node

    text = json.dumps(strip(results), indent=1)
    for token, table in tables.items():
        text = text.replace(f'"{token}"', table, 1)
    return text + "\n"


def evaluate_seed(checkpoint: Path, request: dict[str, Any]) -> dict[str, Any]:
    """One seed's record at one checkpoint: its goals' scores on the held-out goals (and on the training
    classes' unseen goals when asked) and Meta-World's official figure when asked."""
    from metarl_ray.distributed.eval_runner import evaluate_runs
    from metarl_ray.evaluation.meta_test import EvalOptions
    from metarl_ray.training.storage import StoragePath

    started = time.perf_counter()
    official = request["official"]
    report = evaluate_runs(
        [StoragePath.parse(checkpoint)],
        EvalOptions(
            goals_per_class=request["goals_per_class"],
            num_sampled_episodes=request["sampled_episodes"],
            official=official is not None,
            split=request.get("split", "test"),
            **(official or {}),
        ),
    )
    run = report["runs"][0]
    record: dict[str, Any] = {
        "iteration": run["iteration"],
        "env_steps": run["env_steps"],
        "request": request,
        "protocol": report["protocol"],
        "goals": goal_columns(run["goals"]),
        "official": None
        if run["success_rate_official"] is None
        else {
            "success_rate": run["success_rate_official"],
            "mean_return": run["mean_return_official"],
            "per_task": run["per_task_official"],
        },
        "train_classes": None,
    }
    if request.get("train_goals_per_class"):
        train = evaluate_runs(
            [StoragePath.parse(checkpoint)],
            EvalOptions(
                goals_per_class=request["train_goals_per_class"],
                num_sampled_episodes=request["sampled_episodes"],
                official=False,
                split="train",
            ),
        )
        record["train_classes"] = {"protocol": train["protocol"], "goals": goal_columns(train["runs"][0]["goals"])}
    record["eval_wall_s"] = round(time.perf_counter() - started, 1)
    return record


def _over_seeds(values: list[float]) -> dict[str, Any]:
    """Mean and a Student-t 95% interval over seeds (None with one seed)."""
    from scipy import stats

    mean = float(np.mean(values))
    if len(values) < 2:
        return {"mean": mean, "ci95": None, "num_seeds": len(values)}
    half = float(stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values)))
    return {"mean": mean, "ci95": [max(0.0, mean - half), min(1.0, mean + half)], "num_seeds": len(values)}


def pool(records: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The pooled point of one iteration from its per-seed records (one request, one env-step count)."""
    from metarl_ray.evaluation.meta_test import summarize_scores

    seeds = sorted(records)
    first = records[seeds[0]]
    if len({records[s]["env_steps"] for s in seeds}) != 1:
        raise ValueError(f"iteration {first['iteration']}: seeds {seeds} differ in env steps; expected one budget")
    direct = summarize_scores([goal_rows(records[s]["goals"]) for s in seeds])
    point: dict[str, Any] = {
        "iteration": first["iteration"],
        "env_steps": first["env_steps"],
        "seeds": seeds,
        "request": first["request"],
        "protocol": {**first["protocol"], "seeds": seeds},
        **direct,
        "success_rate_official": None,
        "official": None,
        "train_classes": None,
        "journal": None,
        "wall_h": {str(s): records[s].get("training", {}).get("wall_h") for s in seeds},
        "eval_wall_s": round(sum(records[s]["eval_wall_s"] for s in seeds), 1),
    }
    for entry in point["per_task"].values():
        entry["success_rate_official"] = None
    if all(records[s]["official"] is not None for s in seeds):
        rates = [records[s]["official"]["success_rate"] for s in seeds]
        point["official"] = {
            "per_seed": {str(s): r for s, r in zip(seeds, rates)},
            **_over_seeds(rates),
            "interval": "Student t over seeds",
            "protocol": first["protocol"]["official"],
        }
        point["success_rate_official"] = point["official"]["mean"]
        for name, entry in point["per_task"].items():
            entry["success_rate_official"] = float(np.mean([records[s]["official"]["per_task"][name] for s in seeds]))
    if all(records[s]["train_classes"] is not None for s in seeds):
        train = summarize_scores([goal_rows(records[s]["train_classes"]["goals"]) for s in seeds])
        point["train_classes"] = {"protocol": first["train_classes"]["protocol"], **train}
    journals = [records[s].get("journal") for s in seeds]
    if all(j is not None for j in journals):
        point["journal"] = {phase: round(float(np.mean([j[phase] for j in journals])), 4) for phase in ("pre", "post")}
        point["journal"]["iterations"] = journals[0]["iterations"]
    return point


def pool_group(runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """A group's curve: at every iteration, the seeds whose records share one request (the largest such set)."""
    by_iteration: dict[int, dict[str, dict[int, dict[str, Any]]]] = {}
    for seed, run in runs.items():
        for record in run["points"]:
            key = json.dumps(record["request"], sort_keys=True)
            by_iteration.setdefault(record["iteration"], {}).setdefault(key, {})[int(seed)] = record
    points = []
    for iteration in sorted(by_iteration):
        # The most seeds, then the most goals per class (None: every goal).
        best = max(
            by_iteration[iteration].values(),
            key=lambda recs: (len(recs), len(goal_rows(next(iter(recs.values()))["goals"]))),
        )
        points.append(pool(best))
    return points
