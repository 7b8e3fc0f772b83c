"""The metrics journal and TensorBoard sink: append-only, crash-safe, exact on resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from metarl_ray.training.metrics import (
    METRICS_FILE,
    MetricsJournal,
    RunMetrics,
    TensorBoardLog,
    metrics_table,
    read_metrics,
)
from metarl_ray.training.storage import StoragePath


def row(iteration, **extra):
    return {
        "iteration": iteration,
        "rollout/env_steps_total": 100 * iteration,
        "post_adapt/success": iteration / 10,
        **extra,
    }


def test_an_append_adds_one_line_and_never_rewrites_earlier_bytes(tmp_path):
    journal = MetricsJournal(StoragePath.parse(tmp_path))
    journal.append(row(1))
    before = (tmp_path / METRICS_FILE).read_bytes()
    inode = os.stat(tmp_path / METRICS_FILE).st_ino
    journal.append(row(2, **{"fault/nonfinite_update": 1.0}))
    after = (tmp_path / METRICS_FILE).read_bytes()
    assert after.startswith(before) and after.count(b"\n") == 2 and os.stat(tmp_path / METRICS_FILE).st_ino == inode
    journal.close()
    assert read_metrics(tmp_path) == [row(1), row(2, **{"fault/nonfinite_update": 1.0})]
    table = metrics_table(tmp_path)  # a key first seen in a later row is null before it
    assert table.column("fault/nonfinite_update").to_pylist() == [None, 1.0]


def test_a_write_torn_by_a_crash_loses_no_earlier_row_and_resume_drops_it(tmp_path):
    journal = MetricsJournal(StoragePath.parse(tmp_path))
    for iteration in (1, 2, 3):
        journal.append(row(iteration))
    journal.close()
    with open(tmp_path / METRICS_FILE, "a") as handle:
        handle.write(json.dumps(row(4))[:17])  # a crash mid-line
    assert [r["iteration"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    resumed = MetricsJournal(StoragePath.parse(tmp_path), keep_up_to_iteration=2)  # resume from checkpoint 2
    resumed.append(row(3, again=True))
    resumed.close()
    assert read_metrics(tmp_path) == [row(1), row(2), row(3, again=True)]


def test_a_writer_killed_mid_run_leaves_every_completed_row_readable(tmp_path):
    """A real SIGKILL of a process appending as fast as it can: whatever instant it lands, the rows
    before it read back complete and in order."""
    code = (
        "import sys\n"
        "from metarl_ray.training.metrics import MetricsJournal\n"
        "from metarl_ray.training.storage import StoragePath\n"
        "j = MetricsJournal(StoragePath.parse(sys.argv[1]))\n"
        "i = 0\n"
        "while True:\n"
        "    i += 1; j.append({'iteration': i, 'rollout/env_steps_total': i, 'pad': 'x' * 2000})\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (
        not (tmp_path / METRICS_FILE).is_file() or (tmp_path / METRICS_FILE).stat().st_size < 200_000
    ):
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    rows = read_metrics(tmp_path)
    assert len(rows) >= 50 and [r["iteration"] for r in rows] == list(range(1, len(rows) + 1))


def test_a_damaged_middle_line_is_a_clear_error(tmp_path):
    (tmp_path / METRICS_FILE).write_text(json.dumps(row(1)) + "\n{not json\n" + json.dumps(row(3)) + "\n")
    with pytest.raises(ValueError, match="line 2 is not a JSON row"):
        read_metrics(tmp_path)


def test_tensorboard_events_read_back_and_a_resume_hides_the_iterations_run_again(tmp_path):
    log = TensorBoardLog(StoragePath.parse(tmp_path))
    for iteration in (1, 2, 3):
        log.add(row(iteration, **{"loss/outer": float("nan")}))  # non-finite values are not written
    log.close()
    time.sleep(1.1)  # event file names carry the second they were opened in
    resumed = TensorBoardLog(StoragePath.parse(tmp_path), purge_step=201)  # resumed from iteration 2 (200 steps)
    resumed.add({**row(3), "post_adapt/success": 0.99})
    resumed.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert "loss/outer" not in events.Tags()["scalars"]
    scalars = events.Scalars("post_adapt/success")
    assert [(e.step, round(e.value, 4)) for e in scalars] == [(100, 0.1), (200, 0.2), (300, 0.99)]


def test_a_restart_from_iteration_0_drops_every_row_and_event_of_the_failed_attempt(tmp_path):
    """A learner lost before the first checkpoint: the run starts again at iteration 0."""
    journal, log = MetricsJournal(StoragePath.parse(tmp_path)), TensorBoardLog(StoragePath.parse(tmp_path))
    for iteration in (1, 2):
        journal.append(row(iteration))
        log.add(row(iteration))
    journal.close()
    log.close()
    time.sleep(1.1)
    again = RunMetrics(StoragePath.parse(tmp_path), 0, 0)
    again.append(row(1, again=True))
    again.close()
    assert read_metrics(tmp_path) == [row(1, again=True)]
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [e.step for e in events.Scalars("post_adapt/success")] == [100]
