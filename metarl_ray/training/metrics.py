"""Where a run's per-iteration metrics go: an append-only JSON Lines journal and TensorBoard events.

``metrics.jsonl`` gets one line per iteration, appended and fsynced: writing a row costs the same at
iteration 10 and 10,000 (the Parquet file it replaces was rewritten whole every iteration), and a crash
mid-write can only tear the line being written, which readers skip; earlier rows are never touched.
This is the layout Tune's ``result.json`` uses. ``read_metrics`` gives the rows back and
``metrics_table`` an Arrow table (``.to_pandas()``, ``pyarrow.parquet.write_table``).

TensorBoard event files go in the run directory itself, so ``tensorboard --logdir runs`` shows every
run (and every Tune trial) under its name, with the same ``section/name`` keys, against env steps.

Object stores cannot append: for a URI run directory both are kept in local staging files and uploaded
at every checkpoint and at the end (so an upload there costs the run's length, once per checkpoint).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa

from metarl_ray.training.storage import StoragePath

METRICS_FILE = "metrics.jsonl"
STEP_KEY = "rollout/env_steps_total"  # TensorBoard's x axis: curves of runs with different batch sizes line up


def parse_metrics(text: str, source: str = METRICS_FILE) -> list[dict[str, Any]]:
    """Rows of a journal. A last line without its newline is a write torn by a crash: skipped."""
    lines = text.split("\n")
    complete = lines[:-1]  # the text after the last newline is either empty or torn
    rows = []
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{source}: line {number} is not a JSON row ({error.msg})") from None
    return rows


def read_metrics(run_path: StoragePath | str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The run's rows, one per iteration, in order (a local path or a URI)."""
    path = StoragePath.parse(run_path) / METRICS_FILE
    if path.is_file():
        return parse_metrics(path.read_text(), str(path))
    return []


def metrics_table(run_path: StoragePath | str | os.PathLike[str]) -> pa.Table:
    """The rows as columns; a key that appears only in later rows is null in earlier ones."""
    rows = read_metrics(run_path)
    keys = list(dict.fromkeys(key for row in rows for key in row))
    return pa.table({key: [row.get(key) for row in rows] for key in keys})


class MetricsJournal:
    """``metrics.jsonl`` of one run. On resume, rows after the checkpoint's iteration are dropped (those
    iterations run again); that one rewrite is atomic, and every later write is an append."""

    def __init__(self, run_path: StoragePath, keep_up_to_iteration: int | None = None) -> None:
        self.target = run_path / METRICS_FILE
        rows = read_metrics(run_path) if keep_up_to_iteration is not None else []
        kept = "".join(_line(row) for row in rows if row["iteration"] <= keep_up_to_iteration) if rows else ""
        if self.target.local is not None:
            self._file_path = self.target.local
            if keep_up_to_iteration is not None:
                self.target.write_text(kept)
        else:
            staging = tempfile.NamedTemporaryFile(prefix="metarl-metrics-", suffix=".jsonl", delete=False)
            staging.write(kept.encode())
            staging.close()
            self._file_path = Path(staging.name)
        self._handle = open(self._file_path, "a", encoding="utf-8")

    def append(self, row: dict[str, Any]) -> None:
        self._handle.write(_line(row))
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def sync(self) -> None:
        if self.target.local is None:
            self.target.write_bytes(self._file_path.read_bytes())

    def close(self) -> None:
        self._handle.close()
        self.sync()
        if self.target.local is None:
            self._file_path.unlink(missing_ok=True)


def _line(row: dict[str, Any]) -> str:
    return json.dumps(row, separators=(",", ":")) + "\n"


class TensorBoardLog:
    """Scalars of every row as TensorBoard events in the run directory, at step ``rollout/env_steps_total``.
    ``purge_step``: on resume, events at or after it (iterations that run again) are hidden by TensorBoard."""

    def __init__(self, run_path: StoragePath, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package; imported only here

        self.run_path = run_path
        local = run_path.local
        self._staging = None if local is not None else Path(tempfile.mkdtemp(prefix="metarl-tb-"))
        self.writer = SummaryWriter(log_dir=str(local if local is not None else self._staging), purge_step=purge_step)

    def add(self, row: dict[str, Any]) -> None:
        step = int(row[STEP_KEY])
        for key, value in row.items():
            if (
                key != "iteration"
                and isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
            ):
                self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def sync(self) -> None:
        if self._staging is None:
            return
        self.writer.flush()
        for event_file in self._staging.glob("events.out.tfevents.*"):
            (self.run_path / event_file.name).write_bytes(event_file.read_bytes())

    def close(self) -> None:
        self.writer.close()
        self.sync()
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)


class RunMetrics:
    """Every sink of a run's rows; the trainer calls ``append`` each iteration, ``sync`` at checkpoints."""

    def __init__(self, run_path: StoragePath, resume_iteration: int | None = None, resume_env_steps: int = 0) -> None:
        self.journal = MetricsJournal(run_path, resume_iteration)
        self.tensorboard = TensorBoardLog(
            run_path, purge_step=resume_env_steps + 1 if resume_iteration is not None else None
        )

    def append(self, row: dict[str, Any]) -> None:
        self.journal.append(row)
        self.tensorboard.add(row)

    def sync(self) -> None:
        self.journal.sync()
        self.tensorboard.sync()

    def close(self) -> None:
        try:
            self.journal.close()
        finally:
            self.tensorboard.close()
