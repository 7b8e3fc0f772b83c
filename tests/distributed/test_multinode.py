"""Runs spread over several nodes, on a real multi-node Ray cluster simulated on this machine
(``ray.cluster_utils.Cluster``: a head without CPUs, CPU worker nodes and a GPU-labelled node), with
the run directory on shared storage given by URI, as on a real cluster."""

import json
import subprocess
import sys
import time

import pytest
import ray
from ray.cluster_utils import Cluster

from metarl_ray.config import ConfigError
from metarl_ray.distributed.session import learner_actor_options, place_learner, rollout_actor_options
from metarl_ray.training.metrics import read_metrics

STEPS_PER_ITERATION = 2 * 2 * 2  # tasks x episodes x (support + query), times the episode length


@pytest.fixture(scope="module")
def cluster():
    # Node death is noticed after 3 missed 0.5 s health checks instead of Ray's default ~30 s.
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "include_dashboard": False,
            "_system_config": {
                "health_check_initial_delay_ms": 0,
                "health_check_period_ms": 500,
                "health_check_failure_threshold": 3,
            },
        },
    )
    cpu_nodes = [cluster.add_node(num_cpus=2) for _ in range(3)]
    # A node that declares a GPU (none is used: only the placement decision is tested on it).
    gpu_node = cluster.add_node(num_cpus=0, num_gpus=1)
    cluster.wait_for_nodes()
    yield cluster, cpu_nodes, gpu_node
    cluster.shutdown()


def train_command(cluster, output_uri, run_name, *args):
    return [
        sys.executable,
        "-m",
        "metarl_ray",
        "train",
        "--env_name",
        "ML1",
        "--task",
        "reach-v3",
        "--test_mode",
        "--device",
        "cpu",
        "--num_rollout_workers",
        "2",
        "--ray_address",
        cluster.address,
        "--output_dir",
        output_uri,
        "--run_name",
        run_name,
        *args,
    ]


def wait_for(predicate, timeout=180, process=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"run ended early: {process.communicate()[1][-2000:]}")
        time.sleep(0.2)
    raise AssertionError("timed out")


def metrics_rows(run_path):
    return read_metrics(run_path)


def placement(run_path):
    return json.loads((run_path / "placement.json").read_text())


def test_learner_goes_to_the_gpu_node_and_takes_no_cpu_rollout_actors_spread(cluster):
    cluster, cpu_nodes, gpu_node = cluster

    @ray.remote
    class Probe:
        def node_id(self):
            return ray.get_runtime_context().get_node_id()

    ray.init(address=cluster.address)
    try:
        learner_placement = place_learner("auto")
        assert learner_placement.device == "cuda" and learner_placement.num_gpus == 1
        # One GPU per learner: two learners fall back to the CPU under auto, and cuda says why not.
        assert place_learner("auto", num_learners=2).device == "cpu"
        with pytest.raises(ConfigError, match="--num_learners=2: --device=cuda needs one GPU per learner"):
            place_learner("cuda", num_learners=2)
        cpus_before = ray.available_resources()["CPU"]
        learner = Probe.options(**learner_actor_options(learner_placement)).remote()
        assert ray.get(learner.node_id.remote()) == gpu_node.node_id
        assert ray.available_resources()["CPU"] == cpus_before  # no CPU taken from the rollout actors
        rollout = [Probe.options(**rollout_actor_options()).remote() for _ in range(3)]
        nodes = ray.get([actor.node_id.remote() for actor in rollout])
        # Three one-CPU actors on three two-CPU nodes: spread, one per node, none on the CPU-less head/GPU node.
        assert sorted(nodes) == sorted(node.node_id for node in cpu_nodes)
        for actor in rollout + [learner]:
            ray.kill(actor)
    finally:
        ray.shutdown()


def test_run_uses_several_nodes_and_a_killed_driver_resumes_from_shared_storage(cluster, tmp_path):
    cluster, cpu_nodes, _ = cluster
    output_uri, run_path = f"file://{tmp_path}/shared", tmp_path / "shared" / "spread"
    process = subprocess.Popen(
        train_command(cluster, output_uri, "spread", "--num_epochs", "4", "--max_episode_length", "100"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: (run_path / "checkpoints" / "checkpoint_000002.pt").is_file(), process=process)
    process.kill()  # the driver dies with no warning; its actors go with it
    process.wait(timeout=60)
    first = placement(run_path)
    worker_nodes = {entry["node_id"] for entry in first["rollout_workers"]}
    assert len(worker_nodes) == 2 and worker_nodes <= {node.node_id for node in cpu_nodes}
    assert first["driver"]["pid"] == process.pid

    result = subprocess.run(
        train_command(cluster, output_uri, "spread", "--num_epochs", "4", "--resume"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = metrics_rows(run_path)
    assert [row["iteration"] for row in rows] == [1, 2, 3, 4]
    assert all(row["rollout/env_steps"] == STEPS_PER_ITERATION * 100 for row in rows)
    assert all(row["rollout/num_nodes"] == 2 for row in rows)
    assert placement(run_path)["driver"]["pid"] != process.pid
    assert "resumed" in (run_path / "train.log").read_text()


def test_worker_node_removed_mid_iteration_loses_no_episodes(cluster, tmp_path):
    cluster, cpu_nodes, _ = cluster
    run_path = tmp_path / "runs" / "lost-node"
    episode_length, num_epochs = 500, 4
    process = subprocess.Popen(
        train_command(
            cluster,
            f"file://{tmp_path}/runs",
            "lost-node",
            "--num_epochs",
            str(num_epochs),
            "--max_episode_length",
            str(episode_length),
            "--checkpoint_every",
            "10",
        ),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: len(metrics_rows(run_path)) >= 1, process=process)
    # Iteration 2 is sampling now. Take away a node that runs a rollout actor (not the learner's).
    record = placement(run_path)
    victim = next(
        node
        for node in cpu_nodes
        if node.node_id in {w["node_id"] for w in record["rollout_workers"]}
        and node.node_id not in (record["learner"]["node_id"], record["driver"]["node_id"])
    )
    cluster.remove_node(victim, allow_graceful=False)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-2000:]
    rows = metrics_rows(run_path)
    assert [row["iteration"] for row in rows] == list(range(1, num_epochs + 1))
    # Every iteration has exactly the episodes it asked for: none lost with the node, none counted twice.
    assert all(row["rollout/env_steps"] == STEPS_PER_ITERATION * episode_length for row in rows)
    assert rows[-1]["rollout/workers_replaced"] >= 1
    after = placement(run_path)
    assert after["workers_replaced"] >= 1
    assert victim.node_id not in {w["node_id"] for w in after["rollout_workers"]}
    assert "sampled again on a new worker" in (run_path / "train.log").read_text()
