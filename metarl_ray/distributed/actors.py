"""Ray actors: thin wrappers that each own one plain object (Sample Factory's learner/worker split)."""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import ray
import torch

from metarl_ray.batch import GoalEvaluation, TaskRollouts
from metarl_ray.config import (
    EnvConfig,
    LearnerConfig,
    MAMLConfig,
    MetaLearnerConfig,
    PolicyConfig,
    PPOConfig,
    TrainConfig,
)
from metarl_ray.envs import TaskSpec
from metarl_ray.evaluation.meta_test import official_result
from metarl_ray.training.faults import FaultPlan, install_faults
from metarl_ray.training.learner import Learner
from metarl_ray.training.rollout import EvalPlan, RolloutWorker, SamplePlan


class SampleInfo(NamedTuple):
    env_steps: int
    rss_mb: float  # resident memory of the rollout actor after sampling


def process_memory_mb() -> float:
    """Resident set size of this process (psutil comes with Ray)."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def process_location() -> dict[str, Any]:
    """Where this process runs: its pid and Ray node (``placement.json`` in the run directory)."""
    return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname()}


@ray.remote
class RolloutActor:
    def __init__(
        self,
        env_config: EnvConfig,
        policy_config: PolicyConfig,
        maml_config: MAMLConfig,
        ppo_config: PPOConfig,
        seed: int,
        meta_learner_config: MetaLearnerConfig | None = None,
    ) -> None:
        # One core per actor: policy inference is tiny, simulation is the cost.
        torch.set_num_threads(1)
        self.worker = RolloutWorker(env_config, policy_config, maml_config, ppo_config, seed, meta_learner_config)

    @ray.method(num_returns=2)
    def sample(
        self,
        meta_params: dict[str, np.ndarray],
        tasks: Sequence[TaskSpec],
        iteration: int,
        plan: SamplePlan | None = None,
        inner_lr: float | None = None,
    ) -> tuple[SampleInfo, list[TaskRollouts]]:
        """(summary, rollouts): the driver fetches only the small summary, which also tells it whether
        the actor survived; the rollouts go from the object store straight to the learner."""
        rollouts = self.worker.sample(meta_params, tasks, iteration, plan, inner_lr)
        return SampleInfo(sum(task.num_steps for task in rollouts), process_memory_mb()), rollouts

    def evaluate(
        self,
        meta_params: dict[str, np.ndarray],
        tasks: Sequence[TaskSpec],
        plan: EvalPlan,
        seed: int,
        inner_lr: float | None = None,
    ) -> list[GoalEvaluation]:
        return self.worker.evaluate(meta_params, tasks, plan, seed, inner_lr)

    def evaluate_official(
        self,
        config: TrainConfig,
        meta_params: dict[str, np.ndarray],
        goals_per_class: int,
        num_evals: int,
        mt_episodes: int,
        meta_batch_size: int | None = None,
    ) -> Any:
        return official_result(config, meta_params, goals_per_class, num_evals, mt_episodes, meta_batch_size)

    def location(self) -> dict[str, Any]:
        return process_location()


@ray.remote
class LearnerActor:
    def __init__(
        self,
        policy_config: PolicyConfig,
        maml_config: MAMLConfig,
        ppo_config: PPOConfig,
        learner_config: LearnerConfig,
        seed: int,
        device: str,
        num_threads: int,
        meta_learner_config: MetaLearnerConfig | None = None,
        env_config: EnvConfig | None = None,
    ) -> None:
        # Never more threads than this node has cores, whatever the cluster's total.
        torch.set_num_threads(max(1, min(num_threads, os.cpu_count() or 1)))
        self.learner = Learner(
            policy_config, maml_config, ppo_config, seed, device, learner_config, meta_learner_config, env_config
        )
        faults = FaultPlan.from_environment()  # only the fault-tolerance tests set one
        if faults is not None:
            install_faults(self.learner, faults)

    def rendezvous_address(self) -> str:
        """A free TCP port on this node for torch.distributed's rendezvous (rank 0 calls this)."""
        with socket.socket() as probe:
            probe.bind(("", 0))
            port = probe.getsockname()[1]
        return f"tcp://{ray.util.get_node_ip_address()}:{port}"

    def join_process_group(self, address: str, rank: int, world_size: int, backend: str, timeout_s: float) -> None:
        import torch.distributed as dist

        dist.init_process_group(
            backend,
            init_method=address,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )

    def get_params(self) -> dict[str, np.ndarray]:
        return self.learner.get_params()

    def update(
        self,
        first_slot: int,
        end_slot: int,
        num_tasks_total: int,
        iteration: int | None,
        *rollouts_per_worker: list[TaskRollouts],
    ) -> dict[str, float]:
        """Meta-update on the tasks with slots in [first_slot, end_slot) of the workers' rollouts."""
        mine = [task for rollouts in rollouts_per_worker for task in rollouts if first_slot <= task.slot < end_slot]
        if sorted(task.slot for task in mine) != list(range(first_slot, end_slot)):  # else the gradient scale is wrong
            raise RuntimeError(f"learner share [{first_slot}, {end_slot}) got slots {sorted(t.slot for t in mine)}")
        return {
            **self.learner.update(mine, num_tasks_total, iteration),
            "learner/num_tasks": float(len(mine)),
            "memory/learner_rss_mb": process_memory_mb(),
        }

    def state_dict(self) -> dict[str, Any]:
        return self.learner.state_dict()

    def location(self) -> dict[str, Any]:
        return process_location()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state)
