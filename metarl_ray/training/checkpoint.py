"""Checkpoint files: written atomically, read without running arbitrary pickle code.

A checkpoint is a ``torch.save`` of tensors and plain Python values only, so ``torch.load(...,
weights_only=True)`` reads it, and ``map_location="cpu"`` loads one made on a GPU on any machine.
Each file is written atomically on any filesystem, a local path or a URI (``storage.py``); the
``latest`` pointer is replaced the same way afterwards, so a crash mid-write leaves the previous
checkpoint as the latest. A SHA-256
sidecar (written before the file) catches a checkpoint truncated or damaged later; the latest intact
checkpoint is then used instead, with a one-line warning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import re
from typing import Any

import torch

from metarl_ray.config import TrainConfig, config_from_dict
from metarl_ray.training.storage import StoragePath

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"
FORMAT_VERSION = 1
CHECKSUM_SUFFIX = ".sha256"
_NAME = re.compile(r"^checkpoint_(\d+)\.pt$")
logger = logging.getLogger(__name__)
Location = str | os.PathLike[str] | StoragePath


class CorruptCheckpointError(ValueError):
    """A checkpoint whose bytes do not match its recorded checksum."""


def save_checkpoint(run_path: Location, iteration: int, state: dict[str, Any]) -> StoragePath:
    directory = StoragePath.parse(run_path) / CHECKPOINT_DIR
    directory.mkdir()
    path = directory / f"checkpoint_{iteration:06d}.pt"
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buffer)
    data = buffer.getvalue()
    # Checksum first: a crash before the file lands leaves a sidecar without its file, which is ignored.
    _checksum_path(path).write_text(hashlib.sha256(data).hexdigest())
    path.write_bytes(data)
    (directory / LATEST).write_text(path.name)
    return path


def _checksum_path(path: StoragePath) -> StoragePath:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def _verified_bytes(path: StoragePath) -> bytes:
    """The file's bytes; CorruptCheckpointError if they do not match the sidecar (none: nothing to check)."""
    data = path.read_bytes()
    sidecar = _checksum_path(path)
    if sidecar.is_file() and hashlib.sha256(data).hexdigest() != sidecar.read_text().strip():
        raise CorruptCheckpointError(f"{path.name}: checksum mismatch (truncated or corrupted)")
    return data


def verify_checksum(path: Location) -> None:
    """Raise CorruptCheckpointError if the file does not match its sidecar (none: nothing to check)."""
    _verified_bytes(StoragePath.parse(path))


def latest_checkpoint(run_path: Location) -> StoragePath | None:
    """The newest intact checkpoint: the ``latest`` pointer's file, else the highest-numbered ones in
    turn; a corrupted one is reported in one line and skipped. None if there is none."""
    directory = StoragePath.parse(run_path) / CHECKPOINT_DIR
    numbered = sorted(
        ((int(m.group(1)), p) for p in directory.glob("checkpoint_*.pt") if (m := _NAME.match(p.name))),
        key=lambda pair: pair[0],
        reverse=True,
    )
    candidates = [p for _, p in numbered]
    pointer = directory / LATEST
    if pointer.is_file() and (named := directory / pointer.read_text().strip()).is_file():
        candidates = [named] + [p for p in candidates if p.path != named.path]
    skipped = []
    for candidate in candidates:
        try:
            verify_checksum(candidate)
        except CorruptCheckpointError as error:
            skipped.append(str(error))
            continue
        if skipped:
            logger.warning("%s; using %s instead", "; ".join(skipped), candidate.name)
        return candidate
    if skipped:
        logger.warning("%s; no intact checkpoint left", "; ".join(skipped))
    return None


def resolve_checkpoint(location: Location) -> StoragePath | None:
    """A checkpoint file as given, or the latest checkpoint of a run directory (path or URI)."""
    path = StoragePath.parse(location)
    if path.is_file():
        return path
    if (path / CHECKPOINT_DIR).is_dir():
        return latest_checkpoint(path)
    if path.name == CHECKPOINT_DIR:
        return latest_checkpoint(path.parent)
    numbered = sorted((p for p in path.glob("checkpoint_*.pt") if _NAME.match(p.name)), key=lambda p: p.name)
    return numbered[-1] if numbered else None  # a bare folder of checkpoints, as Tune hands them back


def run_path_of(checkpoint: Location) -> StoragePath:
    """The run directory a checkpoint file lives in."""
    checkpoint = StoragePath.parse(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINT_DIR else checkpoint.parent


def load_checkpoint(path: Location) -> dict[str, Any]:
    path = StoragePath.parse(path)
    # The verified bytes are the ones loaded: no second read that could differ from the checked one.
    state = torch.load(io.BytesIO(_verified_bytes(path)), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: not a metarl-ray checkpoint (format {FORMAT_VERSION})")
    return state


def trained_config(state: dict[str, Any]) -> TrainConfig:
    """The config a checkpoint's parameters were trained under: its saved config, with the inner and
    meta learning rates scaled down by any non-finite-update rollbacks (``learner.py``), so an agent
    adapts with the inner_lr the meta-parameters were trained for."""
    config = config_from_dict(state["config"])
    scale = float(state["learner"].get("lr_scale", 1.0))
    if scale == 1.0:
        return config
    return dataclasses.replace(
        config,
        maml=dataclasses.replace(config.maml, inner_lr=config.maml.inner_lr * scale),
        ppo=dataclasses.replace(config.ppo, meta_lr=config.ppo.meta_lr * scale),
    )
