"""Faults in a real run (real Ray, real Meta-World), injected: non-finite updates (caught before the
optimizer step, undone, learning rates scaled down; too many in a row stop the run with its last good
checkpoint), out-of-memory on the learner (retried in more chunks), a full disk while checkpointing."""

import errno
import math
import os

import numpy as np
import torch

from metarl_ray.training.checkpoint import latest_checkpoint, load_checkpoint, trained_config
from metarl_ray.training.faults import INJECT_NONFINITE_ENV, INJECT_OOM_ENV
from metarl_ray.training.metrics import read_metrics

FLAGS = (
    "--env_name",
    "ML1",
    "--task",
    "reach-v3",
    "--test_mode",
    "--max_episode_length",
    "20",
    "--checkpoint_every",
    "1",
)


def learner_state(run, iteration):
    return load_checkpoint(run / "checkpoints" / f"checkpoint_{iteration:06d}.pt")["learner"]


def assert_same_tensors(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same_tensors(a[key], b[key])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_tensors(x, y)
    else:
        assert a == b


def test_a_nan_update_is_undone_and_both_learning_rates_scaled(tmp_path, in_process, monkeypatch):
    monkeypatch.setenv(INJECT_NONFINITE_ENV, "2")  # iteration 2's meta-update loss is NaN
    status, _, err = in_process(
        "train",
        *FLAGS,
        "--num_epochs",
        "4",
        "--num_learners",
        "2",
        "--nonfinite_lr_factor",
        "0.25",
        "--output_dir",
        tmp_path,
        "--run_name",
        "nan",
    )
    assert status == 0, err
    run = tmp_path / "nan"
    rows = read_metrics(run)
    assert [r["fault/nonfinite_update"] for r in rows] == [0.0, 1.0, 0.0, 0.0]
    assert [r["learner/lr_scale"] for r in rows] == [1.0, 0.25, 0.25, 0.25]
    assert "iteration 2: non-finite loss or gradient; update undone" in (run / "train.log").read_text()
    # Parameters and Adam state after the undone iteration are exactly the last good iteration's.
    before, undone, after = learner_state(run, 1), learner_state(run, 2), learner_state(run, 3)
    assert_same_tensors(before["policy"], undone["policy"])
    assert_same_tensors(before["optimizer"]["state"], undone["optimizer"]["state"])
    assert undone["optimizer"]["param_groups"][0]["lr"] == 0.25 * before["optimizer"]["param_groups"][0]["lr"]
    assert not torch.equal(after["policy"]["log_std"], undone["policy"]["log_std"])  # training went on
    assert all(torch.isfinite(t).all() for t in after["policy"].values())
    # The meta-parameters were trained for the lower inner_lr: evaluation adapts with it.
    state = load_checkpoint(run / "checkpoints" / "checkpoint_000004.pt")
    assert trained_config(state).maml.inner_lr == 0.25 * state["config"]["maml"]["inner_lr"]


def test_a_nan_on_one_learner_rolls_back_every_learner_like_a_single_learner(tmp_path, in_process, monkeypatch):
    """Learner rank 0 alone sees the NaN, with uneven shares (2 + 1 tasks) and a factor that is not a
    power of two: both learners must undo it and scale alike, or the 2-learner run drifts from 1 learner."""
    monkeypatch.setenv(INJECT_NONFINITE_ENV, "2@0")
    common = (*FLAGS, "--num_epochs", "3", "--num_tasks", "3", "--nonfinite_lr_factor", "0.3", "--output_dir", tmp_path)
    assert in_process("train", *common, "--num_learners", "2", "--run_name", "two")[0] == 0
    assert in_process("train", *common, "--num_learners", "1", "--run_name", "one")[0] == 0
    two, one = read_metrics(tmp_path / "two"), read_metrics(tmp_path / "one")
    assert [r["fault/nonfinite_update"] for r in two] == [r["fault/nonfinite_update"] for r in one] == [0.0, 1.0, 0.0]
    assert [r["learner/lr_scale"] for r in two] == [1.0, 0.3, 0.3]  # exactly the learners' value
    for name, value in learner_state(tmp_path / "one", 3)["policy"].items():
        np.testing.assert_allclose(
            learner_state(tmp_path / "two", 3)["policy"][name].numpy(),
            value.numpy(),
            rtol=1e-4,
            atol=1e-6,
            err_msg=name,
        )


def test_too_many_nan_updates_in_a_row_stop_the_run_with_its_last_good_checkpoint(tmp_path, in_process, monkeypatch):
    monkeypatch.setenv(INJECT_NONFINITE_ENV, "2,3,4")
    status, _, err = in_process(
        "train",
        *FLAGS,
        "--num_epochs",
        "5",
        "--max_nonfinite_rollbacks",
        "2",
        "--output_dir",
        tmp_path,
        "--run_name",
        "diverged",
    )
    lines = err.strip().splitlines()
    assert status == 1 and lines[-1].startswith(
        "metarl: error: training diverged: iteration 3: 2 non-finite updates in a row"
    )
    assert "Traceback" not in err and "checkpoint_000002.pt" in lines[-1]
    run = tmp_path / "diverged"
    assert [r["iteration"] for r in read_metrics(run)] == [1, 2, 3]  # the failing iteration's row is kept
    last = latest_checkpoint(run)
    assert last.name == "checkpoint_000002.pt"
    assert all(torch.isfinite(t).all() for t in load_checkpoint(last)["learner"]["policy"].values())
    # ... and the run resumes from it once the cause is fixed.
    monkeypatch.delenv(INJECT_NONFINITE_ENV)
    assert in_process("train", "--resume", "--run_name", "diverged", "--output_dir", tmp_path)[0] == 0
    rows = read_metrics(run)
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4, 5] and not any(r["fault/nonfinite_update"] for r in rows[2:])
    assert all(math.isfinite(r["post_adapt/return"]) for r in rows)


def test_out_of_memory_on_the_learner_is_retried_in_more_chunks_with_the_same_update(tmp_path, in_process, monkeypatch):
    batched = ("--meta_batching", "batched", "--num_epochs", "2", "--output_dir", tmp_path)
    assert in_process("train", *FLAGS, *batched, "--gradient_accumulation_steps", "2", "--run_name", "chunked")[0] == 0
    monkeypatch.setenv(INJECT_OOM_ENV, "1")  # a graph of the 2 tasks together does not fit
    status, _, err = in_process("train", *FLAGS, *batched, "--run_name", "oom")
    assert status == 0, err
    rows = read_metrics(tmp_path / "oom")
    assert [r["fault/oom_retries"] for r in rows] == [1.0, 0.0]  # the larger chunk count is kept
    assert [r["learner/gradient_accumulation_steps"] for r in rows] == [2.0, 2.0]
    assert (
        "iteration 1: the learner ran out of memory; update retried with the meta-batch in 2 chunks"
        in (tmp_path / "oom" / "train.log").read_text()
    )
    # The retried update is the one a run configured with 2 chunks from the start makes.
    retried, chunked = learner_state(tmp_path / "oom", 2)["policy"], learner_state(tmp_path / "chunked", 2)["policy"]
    for name in chunked:
        np.testing.assert_allclose(retried[name].numpy(), chunked[name].numpy(), rtol=1e-5, atol=1e-7, err_msg=name)


def full_disk_for(monkeypatch, should_fail):
    """Make fsync fail with ENOSPC for the files ``should_fail(name)`` picks, as a full disk does when
    the data is flushed; everything else is written as usual."""
    real_fsync = os.fsync

    def fsync(fd):
        if should_fail(os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return lambda: monkeypatch.setattr(os, "fsync", real_fsync)


def test_a_full_disk_while_checkpointing_is_one_line_and_the_run_resumes(tmp_path, in_process, monkeypatch):
    # The checkpoint's temporary copies (".checkpoint_000002.pt.tmp" and its checksum's) fail from iteration 2.
    space_back = full_disk_for(monkeypatch, lambda name: name.startswith(".checkpoint_") and "000001" not in name)
    status, _, err = in_process("train", *FLAGS, "--num_epochs", "3", "--output_dir", tmp_path, "--run_name", "full")
    lines = err.strip().splitlines()
    assert status == 1 and "Traceback" not in err
    assert (
        lines[-1].startswith("metarl: error: iteration 2: cannot write a checkpoint to ")
        and "(No space left on device); earlier files are intact, latest checkpoint checkpoint_000001.pt" in lines[-1]
    )
    run = tmp_path / "full"
    assert (
        latest_checkpoint(run).name == "checkpoint_000001.pt"
        and load_checkpoint(latest_checkpoint(run))["iteration"] == 1
    )
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]  # partial copies removed
    assert [r["iteration"] for r in read_metrics(run)] == [1, 2]
    space_back()
    assert in_process("train", "--resume", "--run_name", "full", "--output_dir", tmp_path)[0] == 0
    assert [r["iteration"] for r in read_metrics(run)] == [1, 2, 3]
    assert latest_checkpoint(run).name == "checkpoint_000003.pt"


def test_a_full_disk_on_the_metrics_journal_is_one_line_and_loses_no_earlier_row(tmp_path, in_process, monkeypatch):
    appended = []

    def journal_full_after_one_row(name):
        if name == "metrics.jsonl":
            appended.append(name)
            return len(appended) > 1
        return False

    full_disk_for(monkeypatch, journal_full_after_one_row)
    status, _, err = in_process("train", *FLAGS, "--num_epochs", "3", "--output_dir", tmp_path, "--run_name", "journal")
    lines = err.strip().splitlines()
    assert status == 1 and "Traceback" not in err, err
    assert lines[-1].startswith("metarl: error: iteration 2: cannot write its metrics to ")
    monkeypatch.undo()
    rows = read_metrics(tmp_path / "journal")
    assert [r["iteration"] for r in rows][:1] == [1] and latest_checkpoint(
        tmp_path / "journal"
    ).name == "checkpoint_000001.pt"
