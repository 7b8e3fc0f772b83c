"""Run directories on paths and URIs: ``file://`` and ``s3://``. S3 is a real S3-compatible server
on loopback (moto's server, a process this module starts and stops) reached through pyarrow's own S3
client, the same code path as AWS or MinIO."""

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch

from metarl_ray.training.checkpoint import latest_checkpoint, load_checkpoint, resolve_checkpoint, save_checkpoint
from metarl_ray.training.metrics import read_metrics
from metarl_ray.training.storage import StoragePath

AWS_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="module")
def s3_uri(tmp_path_factory):
    """A bucket on a local S3 server; the URI carries the endpoint as pyarrow's URI options."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(tmp_path_factory.mktemp("moto") / "server.log", "w")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        options = f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
        filesystem = pafs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{port}",
            scheme="http",
            region="us-east-1",
            access_key="test",
            secret_key="test",
            allow_bucket_creation=True,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                filesystem.create_dir("metarl-test")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        os.environ.update(AWS_ENV)
        yield lambda key: f"s3://metarl-test/{key}?{options}"
    finally:
        for name in AWS_ENV:
            os.environ.pop(name, None)
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_local_paths_and_file_uris_name_the_same_files(tmp_path):
    plain, uri = StoragePath.parse(tmp_path / "a"), StoragePath.parse(f"file://{tmp_path}/a")
    assert plain == uri == tmp_path / "a" and str(uri) == f"file://{tmp_path}/a" and str(plain) == str(tmp_path / "a")
    uri.mkdir()
    (uri / "x.txt").write_text("one")
    assert (tmp_path / "a" / "x.txt").read_text() == "one"
    assert [p.name for p in plain.iterdir()] == ["x.txt"] and (plain / "x.txt").is_file() and plain.is_dir()
    assert not list((tmp_path / "a").glob(".*.tmp"))  # the temporary file was renamed onto the target


def test_uri_options_survive_every_derived_path(s3_uri):
    run = StoragePath.parse(s3_uri("runs")) / "r1"
    assert str(run.parent) == s3_uri("runs") and str(run / "checkpoints") == s3_uri("runs/r1/checkpoints")
    assert StoragePath.parse(str(run / "x")) == run / "x"


def test_checkpoints_on_s3_are_verified_and_a_damaged_latest_falls_back(s3_uri, caplog):
    run = StoragePath.parse(s3_uri("ckpt-run"))
    for iteration in (1, 2):
        save_checkpoint(run, iteration, {"iteration": iteration, "w": torch.full((3,), float(iteration))})
    names = sorted(entry.name for entry in (run / "checkpoints").iterdir())
    # Only final objects: the temporary ones were moved onto their keys.
    assert names == [
        "checkpoint_000001.pt",
        "checkpoint_000001.pt.sha256",
        "checkpoint_000002.pt",
        "checkpoint_000002.pt.sha256",
        "latest",
    ]
    assert resolve_checkpoint(run) == run / "checkpoints" / "checkpoint_000002.pt"
    assert load_checkpoint(resolve_checkpoint(str(run)))["iteration"] == 2
    damaged = run / "checkpoints" / "checkpoint_000002.pt"
    damaged.write_bytes(damaged.read_bytes()[:500])
    with caplog.at_level(logging.WARNING, logger="metarl_ray"):
        assert latest_checkpoint(run) == run / "checkpoints" / "checkpoint_000001.pt"
    assert "checkpoint_000002.pt: checksum mismatch" in caplog.text and "using checkpoint_000001.pt" in caplog.text


def test_train_to_a_file_uri_then_eval_reads_it(tmp_path, in_process):
    assert (
        in_process(
            "train",
            "--env_name",
            "ML1",
            "--task",
            "reach-v3",
            "--test_mode",
            "--max_episode_length",
            "20",
            "--output_dir",
            f"file://{tmp_path}/shared/runs",
            "--run_name",
            "a",
        )[0]
        == 0
    )
    run = tmp_path / "shared" / "runs" / "a"
    for name in ("config.yaml", "metrics.jsonl", "train.log", "placement.json", "checkpoints/latest"):
        assert (run / name).is_file(), name
    status, out, _ = in_process(
        "eval", "--checkpoint", f"file://{tmp_path}/shared/runs/a", "--json", "--num_workers", "0"
    )
    result = json.loads(out)
    assert (
        result["benchmark"] == "ML1" and 0.0 <= result["success_rate"] <= 1.0 and result["protocol"]["split"] == "test"
    )


def test_train_resume_and_eval_on_s3(s3_uri, tmp_path, in_process):
    output = s3_uri("runs")
    common = [
        "--env_name",
        "ML1",
        "--task",
        "reach-v3",
        "--test_mode",
        "--max_episode_length",
        "20",
        "--output_dir",
        output,
    ]
    status, out, _ = in_process("train", *common, "--run_name", "s3run")
    assert status == 0 and out.strip().splitlines()[-1] == s3_uri("runs/s3run")
    assert in_process("train", "--resume", "--run_name", "s3run", "--output_dir", output, "--num_epochs", "3")[0] == 0
    run = StoragePath.parse(s3_uri("runs/s3run"))
    rows = read_metrics(run)
    assert [row["iteration"] for row in rows] == [1, 2, 3]
    log = (run / "train.log").read_text()  # uploaded at every checkpoint and at the end
    assert "iter 2/2" in log and "resumed" in log and "iter 3/3" in log
    assert (run / "checkpoints" / "latest").read_text() == "checkpoint_000003.pt"
    assert not list((tmp_path).glob("**/metrics.jsonl")) and not list(
        tmp_path.glob("**/events.out.tfevents.*")
    )  # nothing landed on the local disk instead
    status, out, _ = in_process("eval", "--checkpoint", str(run), "--json", "--no_official", "--num_workers", "0")
    result = json.loads(out)
    assert result["benchmark"] == "ML1" and 0.0 <= result["success_rate"] <= 1.0


def test_unreachable_or_unknown_storage_is_a_one_line_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "metarl_ray", "train", "--test_mode", "--output_dir", "ftp://host/runs"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "--output_dir='ftp://host/runs': expected a path or a URI" in result.stderr, (
        result.stderr
    )
    assert len(result.stderr.strip().splitlines()) == 1
    result = subprocess.run(
        [sys.executable, "-m", "metarl_ray", "eval", "--checkpoint", f"file://{tmp_path}/nothing"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and f"--checkpoint='file://{tmp_path}/nothing'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
