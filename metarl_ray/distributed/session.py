"""Ray sessions and where actors go: joining or starting Ray, and the resources each actor asks for."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import ray

from metarl_ray.config import ConfigError, TrainConfig


@dataclass(frozen=True)
class LearnerPlacement:
    device: str  # "cpu" or "cuda"
    num_gpus: int  # per learner
    num_threads: int  # per learner


@contextlib.contextmanager
def ray_session(address: str | None, dashboard: bool = False) -> Iterator[None]:
    """Join the given (or RAY_ADDRESS) cluster, else start Ray in-process; shut down only what we started.

    A local Ray starts without its dashboard unless asked: the dashboard is about 4 s of every local
    start-up on 2 cores, and the run's own log and metrics already show its progress."""
    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    # address="local" never joins a stale cluster left in Ray's temp dir. Ray refuses include_dashboard
    # when joining a running cluster, whose dashboard is the cluster's own business.
    local = {"include_dashboard": dashboard} if address == "local" else {}
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True, configure_logging=False, **local)
    try:
        yield
    finally:
        ray.shutdown()


def place_learner(device: str, num_learners: int = 1) -> LearnerPlacement:
    """One GPU per learner when learning on GPUs: ``cuda`` requires them, ``auto`` uses them when the
    cluster has one per learner."""
    num_gpus = int(ray.cluster_resources().get("GPU", 0))
    if device == "cuda" and num_gpus == 0:
        raise ConfigError("--device='cuda': the Ray cluster has no GPU; use auto or cpu")
    if device == "cuda" and num_gpus < num_learners:
        raise ConfigError(
            f"--num_learners={num_learners}: --device=cuda needs one GPU per learner and the Ray "
            f"cluster has {num_gpus}; expected at most {num_gpus}"
        )
    use_gpu = device == "cuda" or (device == "auto" and num_gpus >= num_learners)
    # On CPU the learners reserve no core: they are idle while the rollout actors simulate, and those
    # are idle while they learn, so together they may use every core then.
    num_cpus = int(ray.cluster_resources().get("CPU", 1))
    return LearnerPlacement("cuda" if use_gpu else "cpu", 1 if use_gpu else 0, max(1, num_cpus // num_learners))


def rollout_actor_options() -> dict[str, Any]:
    """One CPU per rollout actor, spread over the nodes. SPREAD rather than a placement group: the pool
    replaces actors one at a time, and a replacement must land on any node with a free CPU at once,
    not wait for a lost node's bundle to be rescheduled. Inside a placement group (a Tune trial) the
    actors stay in the group, which already holds their CPUs."""
    if ray.util.get_current_placement_group() is not None:
        return {"num_cpus": 1}
    return {"num_cpus": 1, "scheduling_strategy": "SPREAD"}


def learner_actor_options(placement: LearnerPlacement) -> dict[str, Any]:
    """The learner takes no CPU slot (a rollout actor may use it), and a GPU when it learns on one,
    which puts it on a GPU node."""
    return {"num_cpus": 0, "num_gpus": placement.num_gpus}


def default_num_rollout_workers(config: TrainConfig) -> int:
    num_cpus = int(ray.cluster_resources().get("CPU", 1))
    requested = config.rollout.num_rollout_workers or num_cpus
    if requested > num_cpus:  # each actor needs one CPU: more would wait forever for a slot
        raise ConfigError(
            f"--num_rollout_workers={requested}: the Ray cluster has {num_cpus} CPUs; expected at most {num_cpus}"
        )
    return max(1, min(requested, config.maml.num_tasks))  # a worker without tasks would idle
