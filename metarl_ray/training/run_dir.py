"""A run directory: resolved config, metrics (``metrics.py``), a timestamped log and checkpoints.

The directory may be a local path or a URI (``storage.py``); every file in it is written atomically.
"""

from __future__ import annotations

import logging
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from metarl_ray.config import TrainConfig
from metarl_ray.training.storage import StoragePath

CONFIG_FILE = "config.yaml"
LOG_FILE = "train.log"
PLACEMENT_FILE = "placement.json"


def default_run_name(config: TrainConfig) -> str:
    task = f"-{config.env.task}" if config.env.benchmark in ("ML1", "MT1") else ""
    return f"{config.env.benchmark}{task}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def write_config(run_path: StoragePath, config: TrainConfig) -> None:
    (run_path / CONFIG_FILE).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def read_config_dict(run_path: StoragePath | str | Path) -> dict[str, Any]:
    return yaml.safe_load((StoragePath.parse(run_path) / CONFIG_FILE).read_text())


class RunLogFile:
    """``train.log`` of a run. A local run directory gets the file directly; for a URI (object stores
    cannot append) the log is kept in a local staging file and uploaded whole by ``sync``, which the
    trainer calls at every checkpoint and at the end."""

    def __init__(self, run_path: StoragePath) -> None:
        self.target = run_path / LOG_FILE
        local = self.target.local
        self._staging = (
            None
            if local is not None
            else tempfile.NamedTemporaryFile(prefix="metarl-log-", suffix=".log", delete=False)
        )
        if self._staging is not None:
            self._staging.close()
            if self.target.is_file():  # a resumed run continues its log
                Path(self._staging.name).write_bytes(self.target.read_bytes())
        self.handler = logging.FileHandler(local if local is not None else self._staging.name)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        package_logger = logging.getLogger("metarl_ray")
        package_logger.addHandler(self.handler)
        # The run's log is complete whatever logging level the caller set (train() called from a
        # notebook or a test whose root logger is at WARNING); the caller's level returns at close.
        self._caller_level = package_logger.level
        if package_logger.getEffectiveLevel() > logging.INFO:
            package_logger.setLevel(logging.INFO)

    def sync(self) -> None:
        if self._staging is not None:
            self.handler.flush()
            self.target.write_bytes(Path(self._staging.name).read_bytes())

    def close(self) -> None:
        logging.getLogger("metarl_ray").removeHandler(self.handler)
        logging.getLogger("metarl_ray").setLevel(self._caller_level)
        self.handler.close()
        self.sync()
        if self._staging is not None:
            Path(self._staging.name).unlink(missing_ok=True)
