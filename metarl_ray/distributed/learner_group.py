"""Several learner actors that act as one: each meta-learns on its share of the meta-batch, and their
gradients are averaged before every optimizer step, so they all hold the same parameters.

All-reduce through ``torch.distributed`` (gloo on CPU, NCCL on GPU) rather than Ray's collectives:
it needs nothing beyond torch (``ray.util.collective`` needs cupy or pygloo), NCCL is what GPU
data-parallel training uses everywhere, and gloo runs the same code path on CPU-only machines and in
tests. Ray only places the actors and passes the rendezvous address.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import ray
from ray.exceptions import RayError

from metarl_ray.config import TrainConfig
from metarl_ray.distributed.actors import LearnerActor
from metarl_ray.training.faults import INJECT_NONFINITE_ENV, INJECT_OOM_ENV
from metarl_ray.training.learner import LearnerResult, task_chunks

# A peer that dies mid all-reduce closes its sockets and the others fail at once; this bounds the
# wait if a peer hangs instead.
PROCESS_GROUP_TIMEOUT_S = 1800.0


# glibc malloc, left to itself, hands the learner's large freed blocks back to the kernel (mmap'd
# blocks are unmapped, the heap top is trimmed) and takes them again a moment later, page-faulting
# every page anew: about 20,000 faults (~80 MB zeroed) per SSM task meta-gradient on a CPU, and zero
# with these settings. Fixed thresholds keep the freed memory in the process for reuse: the learner's
# RSS stays at its peak between updates instead of falling back. Read when the process starts, hence
# the actors' environment (``python benchmarks/learner.py`` measures with and without).
LEARNER_ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 33)}


class LearnerGroup:
    def __init__(self, config: TrainConfig, device: str, actor_options: dict[str, Any], num_threads_each: int) -> None:
        self.num_learners = config.learner.num_learners
        self.num_tasks = config.maml.num_tasks
        # Fault injection (tests) reaches the learner processes with the allocator settings.
        injected = {name: os.environ[name] for name in (INJECT_NONFINITE_ENV, INJECT_OOM_ENV) if os.environ.get(name)}
        actor_options = {**actor_options, "runtime_env": {"env_vars": {**LEARNER_ALLOCATOR_ENV, **injected}}}
        self.actors = [
            LearnerActor.options(**actor_options).remote(
                config.policy,
                config.maml,
                config.ppo,
                config.learner,
                config.run.seed,
                device,
                num_threads_each,
                config.meta_learner,
                config.env,
            )
            for _ in range(self.num_learners)
        ]
        # Learner i meta-learns on the contiguous slot range shares[i] of every meta-batch.
        self.shares = [(chunk[0], chunk[-1] + 1) for chunk in task_chunks(range(self.num_tasks), self.num_learners)]
        if self.num_learners > 1:
            address = self._get_all([self.actors[0].rendezvous_address.remote()])[0]
            backend = "nccl" if device == "cuda" else "gloo"
            self._get_all(
                [
                    actor.join_process_group.remote(address, rank, self.num_learners, backend, PROCESS_GROUP_TIMEOUT_S)
                    for rank, actor in enumerate(self.actors)
                ]
            )

    def get_params(self) -> ray.ObjectRef:
        """The meta-parameters (every learner holds the same; learner 0 publishes them)."""
        return self.actors[0].get_params.remote()

    def update(
        self,
        rollout_refs: Sequence[ray.ObjectRef],
        worker_slot_ranges: Sequence[tuple[int, int]],
        iteration: int | None = None,
    ) -> LearnerResult:
        """One meta-update. ``rollout_refs[w]`` holds the rollouts of slots ``worker_slot_ranges[w]``;
        each learner is handed only the workers' outputs that overlap its share."""
        calls = []
        for actor, (first, end) in zip(self.actors, self.shares):
            refs = [
                ref
                for ref, (w_first, w_end) in zip(rollout_refs, worker_slot_ranges)
                if w_first < end and first < w_end
            ]
            calls.append(actor.update.remote(first, end, self.num_tasks, iteration, *refs))
        return LearnerResult.from_metrics(merge_learner_metrics(self._get_all(calls)))

    def state_dict(self) -> dict[str, Any]:
        return self._get_all([self.actors[0].state_dict.remote()])[0]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._get_all([actor.load_state_dict.remote(state) for actor in self.actors])

    def locations(self) -> list[dict[str, Any]]:
        return self._get_all([actor.location.remote() for actor in self.actors])

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)

    def _get_all(self, refs: list[ray.ObjectRef]) -> list[Any]:
        """Results of calls on several learners. If one learner dies the others would wait for it in
        the all-reduce: the whole group is ended and the error raised (the trainer restarts from the
        latest checkpoint with a new group)."""
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(done[0])
            except RayError:
                self.shutdown()
                raise
        return ray.get(refs)


def merge_learner_metrics(per_learner: Sequence[dict[str, float]]) -> dict[str, float]:
    """One metrics row from the learners' rows: step counts add up; means over tasks are weighted by
    each learner's task count (the gradient norm and the policy's std are the same on every learner)."""
    if len(per_learner) == 1:
        row = {key: value for key, value in per_learner[0].items() if key != "learner/num_tasks"}
        return {**row, "learner/num_learners": 1.0}
    weights = [row["learner/num_tasks"] for row in per_learner]
    total = sum(weights)
    merged: dict[str, float] = {}
    for key in per_learner[0]:
        if key == "learner/num_tasks":
            continue
        values = [row[key] for row in per_learner]
        if key in ("rollout/env_steps", "fault/env_faults"):  # counts over each learner's tasks
            merged[key] = sum(values)
        elif key.startswith("memory/"):  # the largest learner is the one that runs out first
            merged[key] = max(values)
        elif key.startswith(("learner/", "fault/")):
            # The same on every learner (rollbacks are collective); learner 0's exact value, since the
            # trainer hands learner/lr_scale to the rollout workers and a weighted mean could round it.
            merged[key] = values[0]
        else:
            merged[key] = sum(w * v for w, v in zip(weights, values)) / total
    merged["learner/num_learners"] = float(len(per_learner))
    return merged
