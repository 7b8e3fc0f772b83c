"""Meta-World stepping speed on one core: stock envs, the fast path (metarl_ray.envs.fast_stepping), and the
physics ceiling (MuJoCo's ``mj_step`` alone, with the env's frame skip, from the states the episode
visited), for each of the 50 v3 classes and for the ML10, MT10 and ML45 training mixes.

    python benchmarks/envs.py                 # 3 interleaved repeats of one 500-step episode per class
    python benchmarks/envs.py --profile       # where a step's time goes, stock and fast (cProfile)

Stock and fast run the same task and the same random actions, one episode each, back to back, in
alternating order, ``--repeats`` times; a class's speed-up is the median of the paired ratios, so a
noisy moment on this shared machine hits both sides. A mix's rate is the rate of stepping its classes
for equal numbers of steps (total steps / total time). Reset time is included (one reset per episode,
as in a rollout). Writes benchmarks/results/envs.json.
Goals (issue 9): fast / stock >= 1.5x on the ML10 and MT10 mixes; no class slower than stock.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import statistics
import sys
import time
from pathlib import Path

import mujoco
import numpy as np
from report import RESULTS, write_report  # benchmarks/report.py

from metarl_ray.config import EnvConfig
from metarl_ray.envs.metaworld import ACTION_DIM, make_task_env

MIX_GOAL = 1.5
CEILING_SAMPLES = 50  # states per class at which mj_step alone is timed


def mixes() -> dict[str, list[str]]:
    from metaworld.env_dict import ML10_V3, ML45_V3, MT10_V3

    return {"ML10": list(ML10_V3["train"]), "MT10": list(MT10_V3), "ML45": list(ML45_V3["train"])}


def first_goals() -> dict[str, object]:
    import metaworld

    tasks: dict[str, object] = {}
    for task in metaworld.MT50(seed=0).train_tasks:
        tasks.setdefault(task.env_name, task)
    return tasks


def make_env(env_name: str, task: object, fast: bool):
    env = make_task_env(env_name, EnvConfig(benchmark="MT1", task=env_name, fast_envs=fast))
    env.set_task(task)
    return env


def timed_episode(env, actions: np.ndarray, states: list | None = None) -> float:
    """Seconds for one reset and len(actions) steps; optionally records physics states along the way."""
    every = max(1, len(actions) // CEILING_SAMPLES)
    started = time.perf_counter()
    env.reset()
    for step, action in enumerate(actions):
        env.step(action)
        if states is not None and step % every == 0:
            paused = time.perf_counter()
            states.append(_physics_state(env))
            started += time.perf_counter() - paused  # recording is not stepping
    return time.perf_counter() - started


def _physics_state(env) -> tuple[int, np.ndarray]:
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    state = np.empty(mujoco.mj_stateSize(env.model, spec))
    mujoco.mj_getState(env.model, env.data, state, spec)
    return spec, state


def mj_step_seconds(env, states: list) -> float:
    """Mean seconds of ``mj_step(model, data, nstep=frame_skip)`` alone, from the recorded states."""
    total = 0.0
    for spec, state in states:
        mujoco.mj_setState(env.model, env.data, state, spec)
        started = time.perf_counter()
        mujoco.mj_step(env.model, env.data, nstep=env.frame_skip)
        total += time.perf_counter() - started
    return total / len(states)


def measure_class(env_name: str, task: object, repeats: int, steps: int, seed: int) -> dict[str, float]:
    stock, fast = make_env(env_name, task, False), make_env(env_name, task, True)
    actions = np.random.default_rng(seed).uniform(-1.0, 1.0, (steps, ACTION_DIM)).astype(np.float32)
    timed_episode(stock, actions[:50]), timed_episode(fast, actions[:50])  # warm caches and lazy setup
    stock_times, fast_times, states = [], [], []
    for repeat in range(repeats):
        order = (stock, fast) if repeat % 2 == 0 else (fast, stock)
        for env in order:
            seconds = timed_episode(env, actions, states if (env is fast and repeat == 0) else None)
            (stock_times if env is stock else fast_times).append(seconds)
    ratios = [s / f for s, f in zip(stock_times, fast_times)]
    ceiling_seconds = mj_step_seconds(fast, states)
    fast_seconds = statistics.median(fast_times) / steps
    return {
        "stock_steps_per_s": round(steps / statistics.median(stock_times), 1),
        "fast_steps_per_s": round(steps / statistics.median(fast_times), 1),
        "speedup": round(statistics.median(ratios), 3),
        "speedup_min": round(min(ratios), 3),
        "mj_step_ceiling_steps_per_s": round(1.0 / ceiling_seconds, 1),
        "fast_fraction_of_ceiling": round(ceiling_seconds / fast_seconds, 3),
    }


def mix_summary(per_class: dict[str, dict[str, float]], names: list[str]) -> dict[str, float]:
    # Equal steps per class: time per step adds, so the mix rate is a harmonic mean of class rates.
    def rate(key: str) -> float:
        return len(names) / sum(1.0 / per_class[name][key] for name in names)

    stock, fast, ceiling = rate("stock_steps_per_s"), rate("fast_steps_per_s"), rate("mj_step_ceiling_steps_per_s")
    return {
        "num_classes": len(names),
        "stock_steps_per_s": round(stock, 1),
        "fast_steps_per_s": round(fast, 1),
        "speedup": round(fast / stock, 3),
        "mj_step_ceiling_steps_per_s": round(ceiling, 1),
        "fast_fraction_of_ceiling": round(fast / ceiling, 3),
        "stock_fraction_of_ceiling": round(stock / ceiling, 3),
        "slowest_class_speedup": round(min(per_class[name]["speedup"] for name in names), 3),
    }


def profile(tasks: dict[str, object], steps: int, top: int) -> None:
    actions = np.random.default_rng(0).uniform(-1.0, 1.0, (steps, ACTION_DIM)).astype(np.float32)
    for fast in (False, True):
        envs = [make_env(name, task, fast) for name, task in sorted(tasks.items())]
        profiler = cProfile.Profile()
        profiler.enable()
        for env in envs:
            timed_episode(env, actions)
        profiler.disable()
        print(f"\n=== {'fast' if fast else 'stock'}: {len(envs)} classes x {steps} steps, by own time ===")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=500, help="steps per episode (Meta-World's horizon)")
    parser.add_argument("--classes", nargs="*", default=None, help="only these classes (default: all 50)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--output", default=str(RESULTS / "envs.json"))
    args = parser.parse_args()

    from metarl_ray.envs.fast_stepping import unsupported_reason

    if unsupported_reason():
        print(f"the fast path is off here: {unsupported_reason()}", file=sys.stderr)
        return 1
    tasks = first_goals()
    if args.classes:
        tasks = {name: tasks[name] for name in args.classes}
    if args.profile:
        profile(tasks, args.steps, top=30)
        return 0

    per_class = {}
    for index, (name, task) in enumerate(sorted(tasks.items())):
        per_class[name] = measure_class(name, task, args.repeats, args.steps, seed=index)
        row = per_class[name]
        print(
            f"{name:28s} stock {row['stock_steps_per_s']:7.0f}  fast {row['fast_steps_per_s']:7.0f}  "
            f"x{row['speedup']:.2f} (min x{row['speedup_min']:.2f})  ceiling {row['mj_step_ceiling_steps_per_s']:7.0f}",
            flush=True,
        )
    summaries = {
        mix: mix_summary(per_class, names) for mix, names in mixes().items() if all(name in per_class for name in names)
    }
    from importlib.metadata import version

    import metaworld  # noqa: F401

    report = {
        "command": "python benchmarks/envs.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "processor": platform.machine()},
        "versions": {p: version(p) for p in ("metaworld", "mujoco", "gymnasium", "numpy", "scipy")},
        "setup": {
            "repeats": args.repeats,
            "steps_per_episode": args.steps,
            "actions": "uniform random in [-1, 1]",
            "goal": "the first MT50 (seed 0) goal of each class",
            "resets": "one per episode, timed",
        },
        "mixes": summaries,
        "goals": {
            "mix_speedup_at_least": MIX_GOAL,
            "ML10_and_MT10_met": all(summaries[m]["speedup"] >= MIX_GOAL for m in ("ML10", "MT10") if m in summaries),
            "no_class_slower": all(row["speedup"] >= 1.0 for row in per_class.values()),
        },
        "per_class": per_class,
        "notes": [
            "Speed-ups are medians of paired stock/fast episode times; speedup_min is the worst pair.",
            "The ceiling times mj_step alone from states of the fast episode; it excludes mj_forward, "
            "mj_rnePostConstraint and resets, which both paths also run.",
            "Random actions rarely grasp; a policy that grasps more contacts can shift the balance.",
        ],
    }
    write_report("envs", report, Path(args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
