"""The in-context (RL²) learner's time per iteration, SSM against GRU memory, all measured in one run.

    python benchmarks/rl2_learner.py                # writes benchmarks/results/rl2_learner.json
    python benchmarks/rl2_learner.py --repeats 1    # quicker, noisier

One iteration's update = ``Learner.update`` on what the rollout workers send: per task 2 trials of 10
episodes x 500 steps (ML1: 10 tasks, 100k env steps; ML10: 20 tasks, 200k). Trials are synthetic (the
cost does not depend on the values). Settings:
  - defaults: minibatched in-context PPO, 10 epochs x 8 minibatches of 500-step chunks, each chunk from
    the memory the current policy carries into it (recomputed every epoch);
  - whole-trial baseline: the earlier update, 5 full-batch epochs over whole trials (what a config
    saved without the rl2_* settings still runs).
Each configuration runs in this process with the same torch threads; the SSM and GRU alternate per
repeat and the report gives medians. The load average is recorded: other work on the machine slows
every row alike, not the ratios.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch
from report import write_report  # benchmarks/report.py

from metarl_ray.batch import TaskTrials, TrialBatch
from metarl_ray.config import LearnerConfig, MAMLConfig, MetaLearnerConfig, PolicyConfig, PPOConfig, TrainConfig
from metarl_ray.envs.metaworld import ACTION_DIM, OBS_DIM
from metarl_ray.training.learner import Learner

EPISODE, EPISODES_PER_TRIAL, TRIALS_PER_TASK = 500, 10, 2
WHOLE_TRIALS = {"rl2_epochs": 5, "rl2_minibatches": 1, "rl2_chunk_length": 0}


def synthetic_tasks(num_tasks: int, seed: int = 0) -> list[TaskTrials]:
    rng = np.random.default_rng(seed)
    length = EPISODE * EPISODES_PER_TRIAL
    tasks = []
    for slot in range(num_tasks):
        shape = (TRIALS_PER_TASK, length)
        batch = TrialBatch(
            rng.standard_normal((*shape, OBS_DIM), dtype=np.float32),
            rng.standard_normal((*shape, ACTION_DIM), dtype=np.float32),
            rng.uniform(0, 10, shape).astype(np.float32),
            -rng.uniform(0, 4, shape).astype(np.float32),
            rng.standard_normal(shape, dtype=np.float32),
            np.zeros((TRIALS_PER_TASK, EPISODES_PER_TRIAL), bool),
            EPISODE,
        )
        tasks.append(TaskTrials(slot, "reach-v3", slot, batch))
    return tasks


def learner_for(memory: str, settings: dict) -> Learner:
    config = TrainConfig(
        policy=PolicyConfig(policy_type=memory), meta_learner=MetaLearnerConfig(algorithm="rl2", **settings)
    )
    return Learner(
        config.policy,
        MAMLConfig(),
        PPOConfig(),
        seed=0,
        device="cpu",
        learner_config=LearnerConfig(),
        meta_learner_config=config.meta_learner,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--benchmarks", nargs="+", default=["ML1", "ML10"], choices=["ML1", "ML10"])
    args = parser.parse_args()
    rows = []
    for benchmark in args.benchmarks:
        tasks = synthetic_tasks(10 if benchmark == "ML1" else 20)
        for label, settings in (("defaults", {}), ("whole-trial baseline", WHOLE_TRIALS)):
            learners = {memory: learner_for(memory, settings) for memory in ("ssm", "gru")}
            times: dict[str, list[float]] = {memory: [] for memory in learners}
            steps = {}
            for repeat in range(args.repeats):
                for memory, learner in learners.items():
                    started = time.perf_counter()
                    metrics = learner.update(tasks, iteration=repeat + 1)
                    times[memory].append(time.perf_counter() - started)
                    steps[memory] = int(metrics["learner/optimizer_steps"])
            ssm_s, gru_s = (statistics.median(times[m]) for m in ("ssm", "gru"))
            row = {
                "benchmark": benchmark,
                "settings": label,
                "env_steps_per_iteration": len(tasks) * TRIALS_PER_TASK * EPISODES_PER_TRIAL * EPISODE,
                "optimizer_steps": steps["ssm"],
                "ssm_s": round(ssm_s, 2),
                "gru_s": round(gru_s, 2),
                "gru_over_ssm": round(gru_s / ssm_s, 2),
                "samples_s": {m: [round(t, 2) for t in ts] for m, ts in times.items()},
            }
            rows.append(row)
            print(
                f"{benchmark:5s} {label:21s} {row['optimizer_steps']:3d} steps | SSM {ssm_s:6.2f} s "
                f"| GRU {gru_s:6.2f} s | GRU/SSM {row['gru_over_ssm']:.2f}",
                flush=True,
            )
    report = {
        "what": "RL² learner time per iteration (Learner.update), SSM vs GRU memory, "
        "defaults vs the whole-trial update",
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "rows": rows,
        "does_not_show": "rollout time (simulation dominates an iteration's wall-clock), GPU timings, "
        "or learning quality",
    }
    write_report("rl2_learner", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
