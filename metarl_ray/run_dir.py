"""A run directory: resolved config, Parquet metrics, a timestamped log and checkpoints."""

from __future__ import annotations

import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from metarl_ray.config import TrainConfig

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.parquet"
LOG_FILE = "train.log"


def default_run_name(config: TrainConfig) -> str:
    task = f"-{config.env.task}" if config.env.benchmark in ("ML1", "MT1") else ""
    return f"{config.env.benchmark}{task}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def write_config(run_path: Path, config: TrainConfig) -> None:
    tmp = run_path / f".{CONFIG_FILE}.tmp"
    tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    os.replace(tmp, run_path / CONFIG_FILE)


def read_config_dict(run_path: Path) -> dict[str, Any]:
    return yaml.safe_load((run_path / CONFIG_FILE).read_text())


class MetricsLog:
    """One row per iteration, rewritten atomically as a whole (small: one row per iteration)."""

    def __init__(self, path: Path, keep_up_to_iteration: int | None = None) -> None:
        self.path = path
        self.rows: list[dict[str, float]] = []
        if keep_up_to_iteration is not None and path.is_file():
            # On resume, rows after the checkpoint are dropped: those iterations run again.
            self.rows = [row for row in pq.read_table(path).to_pylist() if row["iteration"] <= keep_up_to_iteration]

    def append(self, row: dict[str, float]) -> None:
        self.rows.append(row)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        # Union of keys in first-seen order: a key added by a newer version shows as null in older rows.
        keys = list(dict.fromkeys(key for row in self.rows for key in row))
        pq.write_table(pa.table({key: [row.get(key) for row in self.rows] for key in keys}), tmp)
        os.replace(tmp, self.path)


def attach_log_file(run_path: Path) -> logging.Handler:
    handler = logging.FileHandler(run_path / LOG_FILE)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("metarl_ray").addHandler(handler)
    return handler
