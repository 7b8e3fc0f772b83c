"""Checkpoint files: written atomically, read without running arbitrary pickle code.

A checkpoint is a ``torch.save`` of tensors and plain Python values only, so ``torch.load(...,
weights_only=True)`` reads it, and ``map_location="cpu"`` loads one made on a GPU on any machine.
Each file is written to a temporary name, fsynced and renamed; the ``latest`` pointer is replaced the
same way afterwards, so a crash mid-write leaves the previous checkpoint as the latest. A SHA-256
sidecar (written before the file) catches a checkpoint truncated or damaged later; the latest intact
checkpoint is then used instead, with a one-line warning.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"
FORMAT_VERSION = 1
CHECKSUM_SUFFIX = ".sha256"
_NAME = re.compile(r"^checkpoint_(\d+)\.pt$")
logger = logging.getLogger(__name__)


class CorruptCheckpointError(ValueError):
    """A checkpoint whose bytes do not match its recorded checksum."""


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(run_path: Path, iteration: int, state: dict[str, Any]) -> Path:
    directory = Path(run_path) / CHECKPOINT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"checkpoint_{iteration:06d}.pt"
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buffer)
    data = buffer.getvalue()
    # Checksum first: a crash before the rename leaves a sidecar without its file, which is ignored.
    _write_atomic(_checksum_path(path), lambda handle: handle.write(hashlib.sha256(data).hexdigest().encode()))
    _write_atomic(path, lambda handle: handle.write(data))
    _write_atomic(directory / LATEST, lambda handle: handle.write(path.name.encode()))
    return path


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def verify_checksum(path: Path) -> None:
    """Raise CorruptCheckpointError if the file does not match its sidecar (none: nothing to check)."""
    sidecar = _checksum_path(path)
    if sidecar.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() != sidecar.read_text().strip():
        raise CorruptCheckpointError(f"{path.name}: checksum mismatch (truncated or corrupted)")


def latest_checkpoint(run_path: Path) -> Path | None:
    """The newest intact checkpoint: the ``latest`` pointer's file, else the highest-numbered ones in
    turn; a corrupted one is reported in one line and skipped. None if there is none."""
    directory = Path(run_path) / CHECKPOINT_DIR
    numbered = sorted(((int(m.group(1)), p) for p in directory.glob("checkpoint_*.pt") if (m := _NAME.match(p.name))), reverse=True)
    candidates = [p for _, p in numbered]
    pointer = directory / LATEST
    if pointer.is_file() and (directory / pointer.read_text().strip()).is_file():
        named = directory / pointer.read_text().strip()
        candidates = [named] + [p for p in candidates if p != named]
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


def resolve_checkpoint(path: str | Path) -> Path | None:
    """A checkpoint file as given, or the latest checkpoint of a run directory."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / CHECKPOINT_DIR).is_dir():
        return latest_checkpoint(path)
    if path.name == CHECKPOINT_DIR:
        return latest_checkpoint(path.parent)
    numbered = sorted(p for p in path.glob("checkpoint_*.pt") if _NAME.match(p.name))
    return numbered[-1] if numbered else None  # a bare folder of checkpoints, as Tune hands them back


def run_path_of(checkpoint: Path) -> Path:
    """The run directory a checkpoint file lives in."""
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINT_DIR else checkpoint.parent


def load_checkpoint(path: Path) -> dict[str, Any]:
    verify_checksum(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: not a metarl-ray checkpoint (format {FORMAT_VERSION})")
    return state
