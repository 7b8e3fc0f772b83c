"""Checkpoint files: written atomically, read without running arbitrary pickle code.

A checkpoint is a ``torch.save`` of tensors and plain Python values only, so ``torch.load(...,
weights_only=True)`` reads it, and ``map_location="cpu"`` loads one made on a GPU on any machine.
Each file is written to a temporary name, fsynced and renamed; the ``latest`` pointer is replaced the
same way afterwards, so a crash mid-write leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"
FORMAT_VERSION = 1
_NAME = re.compile(r"^checkpoint_(\d+)\.pt$")


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
    _write_atomic(path, lambda handle: torch.save({"format_version": FORMAT_VERSION, **state}, handle))
    _write_atomic(directory / LATEST, lambda handle: handle.write(path.name.encode()))
    return path


def latest_checkpoint(run_path: Path) -> Path | None:
    """The file the ``latest`` pointer names, else the highest-numbered checkpoint, else None."""
    directory = Path(run_path) / CHECKPOINT_DIR
    pointer = directory / LATEST
    if pointer.is_file():
        candidate = directory / pointer.read_text().strip()
        if candidate.is_file():
            return candidate
    numbered = sorted((int(m.group(1)), p) for p in directory.glob("checkpoint_*.pt") if (m := _NAME.match(p.name)))
    return numbered[-1][1] if numbered else None


def resolve_checkpoint(path: str | Path) -> Path | None:
    """A checkpoint file as given, or the latest checkpoint of a run directory."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / CHECKPOINT_DIR).is_dir():
        return latest_checkpoint(path)
    if path.name == CHECKPOINT_DIR:
        return latest_checkpoint(path.parent)
    return None


def run_path_of(checkpoint: Path) -> Path:
    """The run directory a checkpoint file lives in."""
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINT_DIR else checkpoint.parent


def load_checkpoint(path: Path) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: not a metarl-ray checkpoint (format {FORMAT_VERSION})")
    return state
