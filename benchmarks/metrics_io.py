"""Cost of writing one iteration's metrics row, at iteration 10 and at 10,000, measured in one run.

    python benchmarks/metrics_io.py
New: ``metrics.jsonl`` (append one line, flush, fsync) and TensorBoard events (one scalar per key,
flush), as ``metarl train`` writes them. Baseline in the same run: the Parquet file metarl-ray wrote
before, rewritten whole at every iteration. A row has the keys of a real ML10 iteration. Each figure is
the median of ``REPEATS`` appends to a log that already holds N rows. Goal: the new append costs the
same at 10 and 10,000 rows (ratio near 1). Writes benchmarks/results/metrics_io.json.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from report import write_report  # benchmarks/report.py

from metarl_ray.training.metrics import METRICS_FILE, MetricsJournal, TensorBoardLog
from metarl_ray.training.storage import StoragePath

REPEATS = 21
KEYS = [
    "rollout/env_steps",
    "pre_adapt/return",
    "pre_adapt/success",
    "post_adapt/return",
    "post_adapt/success",
    "loss/outer",
    "ppo/grad_norm",
    "loss/outer_last_epoch",
    "ppo/kl",
    "ppo/clip_fraction",
    "policy/std",
    "learner/lr_scale",
    "fault/nonfinite_update",
    "learner/num_learners",
    "time/sample_s",
    "time/learn_s",
    "time/iteration_s",
    "rollout/env_steps_per_s",
    "rollout/workers_replaced",
    "rollout/num_nodes",
    "fault/nonfinite_rollbacks_in_a_row",
]


def make_row(iteration: int) -> dict[str, float]:
    return {
        "iteration": iteration,
        "rollout/env_steps_total": 200_000 * iteration,
        **{key: 0.1 + 1e-4 * (iteration % 997) + index for index, key in enumerate(KEYS)},
    }


def median_ms(times: list[float]) -> float:
    return round(1000 * statistics.median(times), 3)


def journal_append_ms(num_rows: int) -> float:
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / METRICS_FILE).write_text(
            "".join(json.dumps(make_row(i)) + "\n" for i in range(1, num_rows + 1))
        )
        journal = MetricsJournal(StoragePath.parse(directory), keep_up_to_iteration=num_rows)
        times = []
        for k in range(REPEATS):
            started = time.perf_counter()
            journal.append(make_row(num_rows + 1 + k))
            times.append(time.perf_counter() - started)
        journal.close()
        return median_ms(times)


def tensorboard_add_ms() -> float:
    """TensorBoard appends to its event file by design; its cost does not depend on what is there."""
    with tempfile.TemporaryDirectory() as directory:
        log = TensorBoardLog(StoragePath.parse(directory))
        times = []
        for k in range(REPEATS):
            started = time.perf_counter()
            log.add(make_row(k + 1))
            times.append(time.perf_counter() - started)
        log.close()
        return median_ms(times)


def parquet_rewrite_ms(num_rows: int) -> float:
    """The old MetricsLog.append: keep every row, rewrite the whole file atomically."""
    rows = [make_row(i) for i in range(1, num_rows + 1)]
    with tempfile.TemporaryDirectory() as directory:
        path = StoragePath.parse(directory) / "metrics.parquet"
        times = []
        for k in range(REPEATS):
            started = time.perf_counter()
            rows.append(make_row(num_rows + 1 + k))
            keys = list(dict.fromkeys(key for row in rows for key in row))
            sink = pa.BufferOutputStream()
            pq.write_table(pa.table({key: [row.get(key) for row in rows] for key in keys}), sink)
            path.write_bytes(sink.getvalue().to_pybytes())
            times.append(time.perf_counter() - started)
        return median_ms(times)


def main() -> None:
    report: dict = {
        "command": "python benchmarks/metrics_io.py",
        "repeats": REPEATS,
        "keys_per_row": len(KEYS) + 2,
        "append_ms": {},
    }
    for num_rows in (10, 10_000):
        report["append_ms"][str(num_rows)] = {
            "jsonl_journal": journal_append_ms(num_rows),
            "parquet_rewrite_baseline": parquet_rewrite_ms(num_rows),
        }
    report["tensorboard_add_ms"] = tensorboard_add_ms()
    at_10, at_10k = report["append_ms"]["10"], report["append_ms"]["10000"]
    report["ratio_10000_over_10"] = {name: round(at_10k[name] / at_10[name], 2) for name in at_10}
    report["note"] = (
        "Both include an fsync per row (the baseline through its atomic write); the TensorBoard "
        "figure is for one row of every key, already an append. Medians; this machine is noisy, compare ratios."
    )
    write_report("metrics_io", report)


if __name__ == "__main__":
    main()
