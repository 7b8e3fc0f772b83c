"""Job submission for real: a Ray head started with ``ray start --head`` on this machine (free ports,
its own temp dir, token authentication on), jobs sent with ``ray job submit --working-dir .`` exactly
as the README tells users. Only the processes this module started are stopped (never ``ray stop``)."""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from metarl_ray.training.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv's ray and metarl


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


class RayHead:
    """``ray start --head --block`` in a session of its own: ending that one process ends every Ray
    process it started, and the session id finds any it left behind."""

    def __init__(self):
        # Short temp dir: Ray's Unix socket paths live under it and must stay under ~107 characters.
        self.temp_dir = tempfile.mkdtemp(prefix="mrjob-", dir="/tmp")
        gcs, dashboard, client, agent_listen, agent_grpc, runtime_env, metrics, node_manager, object_manager = (
            free_ports(9)
        )
        self.address = f"http://127.0.0.1:{dashboard}"
        # What a user of a secured cluster does: token auth on, the same token on head and client.
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        self.env.pop("RAY_ADDRESS", None)
        command = [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--num-cpus",
            "2",
            "--temp-dir",
            self.temp_dir,
            "--port",
            str(gcs),
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(dashboard),
            "--ray-client-server-port",
            str(client),
            "--dashboard-agent-listen-port",
            str(agent_listen),
            "--dashboard-agent-grpc-port",
            str(agent_grpc),
            "--runtime-env-agent-port",
            str(runtime_env),
            "--metrics-export-port",
            str(metrics),
            "--node-manager-port",
            str(node_manager),
            "--object-manager-port",
            str(object_manager),
            "--disable-usage-stats",
        ]
        self.log = open(Path(self.temp_dir) / "head.log", "w")
        self.process = subprocess.Popen(
            command, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def ray(self, *args, timeout=600, cwd=REPO):
        return subprocess.run(
            [str(BIN / "ray"), *args], cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def wait_until_ready(self, timeout=180):
        # The job agent comes up seconds after the head; submitting earlier fails ("No available agent").
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited: {Path(self.log.name).read_text()[-2000:]}")
            if self.ray("job", "list", "--address", self.address, timeout=60).returncode == 0:
                return
            time.sleep(1)
        raise TimeoutError("the Ray head's job API did not answer")

    def stop(self):
        self.process.terminate()  # --block ends the processes it started on SIGTERM
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        try:  # anything of that session still alive (its pgid is the session leader's pid)
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def head():
    head = RayHead()
    try:
        head.wait_until_ready()
        yield head
    finally:
        head.stop()


def submit(head, submission_id, *entrypoint):
    """``ray job submit --working-dir . -- ENTRYPOINT`` from the project root, then the job's status and logs."""
    submitted = head.ray(
        "job",
        "submit",
        "--address",
        head.address,
        "--submission-id",
        submission_id,
        "--working-dir",
        ".",
        "--",
        *entrypoint,
    )
    # The SDK's JobStatus, read with the client's token from the environment like the CLI's.
    status = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from ray.job_submission import JobSubmissionClient; "
            "print(JobSubmissionClient(sys.argv[1]).get_job_status(sys.argv[2]).value)",
            head.address,
            submission_id,
        ],
        env=head.env,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    logs = head.ray("job", "logs", "--address", head.address, submission_id, timeout=60).stdout
    return submitted, status, logs


def test_train_job_succeeds_and_writes_a_complete_run_directory(head, tmp_path):
    output_uri = f"file://{tmp_path}/runs"
    submitted, status, logs = submit(
        head,
        "metarl-train",
        "metarl",
        "train",
        "--env_name",
        "ML1",
        "--task",
        "reach-v3",
        "--test_mode",
        "--output_dir",
        output_uri,
        "--run_name",
        "job",
    )
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert status == "SUCCEEDED", status
    run = tmp_path / "runs" / "job"
    assert yaml.safe_load((run / "config.yaml").read_text())["env"]["benchmark"] == "ML1"
    rows = read_metrics(run)
    assert [row["iteration"] for row in rows] == [1, 2]
    assert (run / "checkpoints" / "latest").read_text() == "checkpoint_000002.pt"
    assert (run / "checkpoints" / "checkpoint_000002.pt.sha256").is_file()
    assert "iter 2/2" in logs and "iter 2/2" in (run / "train.log").read_text()


def test_tune_job_runs_a_tiny_search(head, tmp_path):
    spec = {
        "name": "job-tune",
        "storage_path": f"file://{tmp_path}/tune",
        "base": {"benchmark": "ML1", "task": "reach-v3", "test_mode": True, "num_epochs": 1, "max_episode_length": 20},
        "search_space": {"inner_lr": {"grid": [0.05, 0.1]}},
        "resources_per_trial": {"rollout_workers": 1},
    }
    spec_path = tmp_path / "tiny.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    submitted, status, logs = submit(head, "metarl-tune", "metarl", "tune", str(spec_path))
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert status == "SUCCEEDED", status
    best = yaml.safe_load((tmp_path / "tune" / "job-tune" / "best_trial.json").read_text())
    assert best["num_trials"] == 2 and best["num_errors"] == 0
    assert best["best_config"]["inner_lr"] in (0.05, 0.1)


def test_job_with_a_bad_flag_fails_with_the_one_line_error(head, tmp_path):
    submitted, status, logs = submit(
        head,
        "metarl-bad-flag",
        "metarl",
        "train",
        "--test_mode",
        "--inner_lr",
        "-3",
        "--output_dir",
        str(tmp_path / "runs"),
    )
    assert submitted.returncode != 0
    assert status == "FAILED", status
    errors = [line for line in logs.splitlines() if line.startswith("metarl: error:")]
    assert errors == ["metarl: error: --inner_lr=-3.0: expected a number in (0, 10]"], logs
    assert "Traceback" not in logs
    assert not (tmp_path / "runs").exists()  # nothing written
