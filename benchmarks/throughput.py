"""Rollout throughput: env steps/s of MAML rollout collection with 1 and 2 rollout workers (real Ray
actors, the same code path as training: support episodes, inner step, query episodes) against the raw
rate of one process stepping the same Meta-World tasks with random actions, measured in the same run,
both for stock Meta-World envs and for the fast path that rollouts use by default (--fast_envs).

    python benchmarks/throughput.py            # ML10 tasks, 20 per meta-batch, 500-step episodes
Goal: collection with N workers >= 0.8 x N x the fast raw rate (N = 2 on this machine).
Writes benchmarks/results/throughput.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from report import RESULTS, write_report  # benchmarks/report.py

from metarl_ray.config import build_config
from metarl_ray.envs.metaworld import ACTION_DIM, OBS_DIM, BenchmarkTasks, TaskSampler, make_task_env
from metarl_ray.policies import build_policy
from metarl_ray.policies.common import detached_params, params_to_numpy


def raw_rate(config, specs, num_episodes: int) -> float:
    """One process, one env per task, random actions, the same episodes as one collection pass."""
    envs = []
    for spec in specs:
        env = make_task_env(spec.env_name, config.env)
        env.set_task(spec.task)
        envs.append(env)
    rng = np.random.default_rng(0)
    steps, started = 0, time.perf_counter()
    for _ in range(num_episodes):
        for env in envs:
            env.reset()
        for _ in range(config.env.max_episode_length):
            for env in envs:
                env.step(rng.uniform(-1.0, 1.0, ACTION_DIM))
                steps += 1
    return steps / (time.perf_counter() - started)


def collection_rate(config, specs_per_iteration, num_workers: int) -> float:
    import ray

    from metarl_ray.distributed.actors import RolloutActor
    from metarl_ray.driver.trainer import split_tasks

    workers = [
        RolloutActor.options(num_cpus=1).remote(config.env, config.policy, config.maml, config.ppo, 0)
        for _ in range(num_workers)
    ]
    params_ref = ray.put(params_to_numpy(detached_params(build_policy(OBS_DIM, ACTION_DIM, config.policy))))

    def one_iteration(iteration: int, specs) -> int:
        steps_refs = [
            w.sample.remote(params_ref, chunk, iteration)[0]
            for w, chunk in zip(workers, split_tasks(specs, num_workers))
        ]
        return sum(info.env_steps for info in ray.get(steps_refs))

    one_iteration(0, specs_per_iteration[0])  # warm-up: env creation and imports are not throughput
    steps, started = 0, time.perf_counter()
    for iteration, specs in enumerate(specs_per_iteration[1:], start=1):
        steps += one_iteration(iteration, specs)
    elapsed = time.perf_counter() - started
    for worker in workers:
        ray.kill(worker)
    return steps / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", default="ML10")
    parser.add_argument("--task", default=None)
    parser.add_argument("--num_tasks", type=int, default=20)
    parser.add_argument("--episodes_per_task", type=int, default=2)
    parser.add_argument("--max_episode_length", type=int, default=500)
    parser.add_argument("--iterations", type=int, default=2, help="timed iterations after one warm-up")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved raw/collection measurement pairs")
    parser.add_argument("--output", default=str(RESULTS / "throughput.json"))
    args = parser.parse_args()

    import ray

    config = build_config(
        {
            "env": {"benchmark": args.benchmark, "task": args.task, "max_episode_length": args.max_episode_length},
            "maml": {"num_tasks": args.num_tasks, "episodes_per_task": args.episodes_per_task},
        }
    )
    sampler = TaskSampler(BenchmarkTasks(config.env, 0).train_tasks(), 0)
    specs_per_iteration = [sampler.sample(args.num_tasks) for _ in range(args.iterations + 1)]
    # Support + query passes of one iteration: (num_inner_steps + 1) x episodes_per_task episodes per task.
    episodes_per_pass = (config.maml.num_inner_steps + 1) * args.episodes_per_task
    stock_config = dataclasses.replace(config, env=dataclasses.replace(config.env, fast_envs=False))

    # Raw rates are measured with Ray up (idle: no actors) right before each collection measurement,
    # and the pair is repeated: both sides then see the same background processes and the same moment
    # of this noisy machine. The ratio of a worker count is the median over repeats of its pairs.
    samples: dict[int, list[tuple[float, float, float]]] = {n: [] for n in args.workers}
    ray.init(address="local", num_cpus=max(args.workers), include_dashboard=False, logging_level="ERROR")
    try:
        for repeat in range(args.repeats):
            for num_workers in args.workers:
                raw_stock = raw_rate(stock_config, specs_per_iteration[1], episodes_per_pass)
                raw = raw_rate(config, specs_per_iteration[1], episodes_per_pass)
                rate = collection_rate(config, specs_per_iteration, num_workers)
                samples[num_workers].append((rate, raw, raw_stock))
                print(
                    f"repeat {repeat}, {num_workers} worker(s): collection {rate:.0f} steps/s; raw fast {raw:.0f}, "
                    f"stock {raw_stock:.0f} -> {rate / (num_workers * raw):.2f} x ({num_workers} x fast raw)",
                    flush=True,
                )
    finally:
        ray.shutdown()

    results = {}
    for num_workers, runs in samples.items():
        ratio = statistics.median(rate / (num_workers * raw) for rate, raw, _ in runs)
        results[str(num_workers)] = {
            "steps_per_s": round(statistics.median(rate for rate, _, _ in runs), 1),
            "raw_fast_steps_per_s": round(statistics.median(raw for _, raw, _ in runs), 1),
            "raw_stock_steps_per_s": round(statistics.median(stock for _, _, stock in runs), 1),
            "ratio_to_n_x_raw": round(ratio, 3),
            "ratio_to_n_x_stock_raw": round(
                statistics.median(rate / (num_workers * stock) for rate, _, stock in runs), 3
            ),
            "ratios_per_repeat": [round(rate / (num_workers * raw), 3) for rate, raw, _ in runs],
            "goal_met": ratio >= 0.8,
        }
    raw_all = [raw for runs in samples.values() for _, raw, _ in runs]
    stock_all = [stock for runs in samples.values() for _, _, stock in runs]
    raw, raw_stock = statistics.median(raw_all), statistics.median(stock_all)

    report = {
        "command": "python benchmarks/throughput.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "processor": platform.machine()},
        "setup": {
            "benchmark": args.benchmark,
            "task": args.task,
            "num_tasks": args.num_tasks,
            "episodes_per_task": args.episodes_per_task,
            "max_episode_length": args.max_episode_length,
            "num_inner_steps": config.maml.num_inner_steps,
            "timed_iterations": args.iterations,
            "repeats": args.repeats,
            "raw_measured": "with Ray up and idle, right before each collection",
        },
        "raw_steps_per_s": round(raw, 1),
        "raw_stock_steps_per_s": round(raw_stock, 1),
        "raw_fast_over_stock": round(raw / raw_stock, 3),
        "collection": results,
        "goal": "collection with N workers >= 0.8 x N x raw rate (raw: the fast path, which collection uses)",
    }
    write_report("throughput", report, Path(args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
