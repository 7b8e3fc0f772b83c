"""Checkpoints: atomic writes, a latest pointer that never names a broken file, safe loading."""

import os
import pickle

import pytest
import torch

from metarl_ray.training.checkpoint import (
    CorruptCheckpointError,
    latest_checkpoint,
    load_checkpoint,
    resolve_checkpoint,
    run_path_of,
    save_checkpoint,
)


def state(value):
    return {
        "iteration": value,
        "learner": {"policy": {"w": torch.full((3,), float(value))}},
        "numbers": [1, 2.5, None],
        "rng": {"bit_generator": "PCG64", "state": {"state": 2**100 + 7, "inc": 3}},
    }


def test_save_and_load_round_trip_with_weights_only(tmp_path):
    path = save_checkpoint(tmp_path, 5, state(5))
    loaded = load_checkpoint(path)
    assert loaded["iteration"] == 5 and loaded["rng"]["state"]["state"] == 2**100 + 7
    torch.testing.assert_close(loaded["learner"]["policy"]["w"], torch.full((3,), 5.0))
    assert resolve_checkpoint(tmp_path) == path and run_path_of(path) == tmp_path


def test_crash_mid_write_keeps_the_previous_latest(tmp_path, monkeypatch):
    good = save_checkpoint(tmp_path, 1, state(1))

    def crash(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 2, state(2))
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path) == good
    assert not (tmp_path / "checkpoints" / "checkpoint_000002.pt").exists()
    assert load_checkpoint(latest_checkpoint(tmp_path))["iteration"] == 1


def test_loading_refuses_arbitrary_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"format_version": 1, "x": Evil()}))
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_checkpoint(path)


def test_latest_falls_back_to_highest_number_without_pointer(tmp_path):
    save_checkpoint(tmp_path, 1, state(1))
    second = save_checkpoint(tmp_path, 2, state(2))
    (tmp_path / "checkpoints" / "latest").unlink()
    assert latest_checkpoint(tmp_path) == second


def test_truncated_latest_is_detected_and_the_previous_good_one_used(tmp_path, caplog):
    good = save_checkpoint(tmp_path, 1, state(1))
    bad = save_checkpoint(tmp_path, 2, state(2))
    bad.write_bytes(bad.read_bytes()[:100])  # truncated after the fact (disk, copy, ...)
    with caplog.at_level("WARNING"):
        assert latest_checkpoint(tmp_path) == good
    assert "checkpoint_000002.pt: checksum mismatch" in caplog.text and "using checkpoint_000001.pt" in caplog.text
    assert len(caplog.records) == 1
    with pytest.raises(CorruptCheckpointError):
        load_checkpoint(bad)
