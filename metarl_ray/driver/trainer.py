"""The meta-training loop, the driver above what it drives: sample tasks -> rollouts with inner
adaptation (rollout actors) -> meta-update (learner actors) -> log / checkpoint."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import RayError

from metarl_ray.config import TrainConfig
from metarl_ray.distributed.actors import RolloutActor, process_location, process_memory_mb
from metarl_ray.distributed.learner_group import LearnerGroup
from metarl_ray.distributed.rollout_pool import RolloutPool
from metarl_ray.distributed.session import (
    LearnerPlacement,
    default_num_rollout_workers,
    learner_actor_options,
    place_learner,
    ray_session,
    rollout_actor_options,
)
from metarl_ray.envs import TaskSampler, TaskSpec, env_family
from metarl_ray.errors import EnvFaultError, RunStorageError, TrainingDivergedError
from metarl_ray.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from metarl_ray.training.learner import LearnerResult
from metarl_ray.training.metrics import RunMetrics
from metarl_ray.training.progress import Progress
from metarl_ray.training.run_dir import PLACEMENT_FILE, RunLogFile, write_config
from metarl_ray.training.storage import StoragePath

logger = logging.getLogger(__name__)


def split_tasks(tasks: Sequence[TaskSpec], num_workers: int) -> list[list[TaskSpec]]:
    """Contiguous, near-equal chunks: each worker steps its chunk's envs in lockstep."""
    bounds = [round(i * len(tasks) / num_workers) for i in range(num_workers + 1)]
    return [list(tasks[bounds[i] : bounds[i + 1]]) for i in range(num_workers)]


IterationCallback = Callable[[dict[str, float], "StoragePath | None"], None]


def train(
    config: TrainConfig,
    run_path: StoragePath | str,
    resume_from: StoragePath | str | None = None,
    on_iteration: IterationCallback | None = None,
) -> StoragePath:
    """Meta-train; returns the run directory (a path or URI). Ray is started in-process unless already
    running. ``on_iteration(metrics, checkpoint_or_None)`` runs after every iteration (Tune reports there)."""
    run_path = StoragePath.parse(run_path)
    state = load_checkpoint(resume_from) if resume_from is not None else None
    with ray_session(config.run.ray_address, config.run.ray_dashboard):
        placement = place_learner(config.learner.device, config.learner.num_learners)
        num_workers = default_num_rollout_workers(config)
        # A fresh run must not share a directory with another run started meanwhile.
        run_path.mkdir(exist_ok=state is not None)
        write_config(run_path, config)
        log_file = RunLogFile(run_path)
        finished = False
        try:
            restarts = 0
            while True:
                try:
                    result = _train_loop(config, run_path, state, placement, num_workers, on_iteration, log_file)
                    finished = True
                    return result
                except RayError as error:  # the learner (or another process) died: go on from the checkpoint
                    if isinstance(getattr(error, "cause", None), EnvFaultError):  # deterministic: would recur
                        raise EnvFaultError(str(error.cause)) from None
                    restarts += 1
                    if restarts > config.run.max_failures:
                        raise
                    checkpoint = latest_checkpoint(run_path)
                    state = load_checkpoint(checkpoint) if checkpoint is not None else None
                    logger.warning(
                        "%s; restarting from %s (restart %d of %d)",
                        type(error).__name__,
                        checkpoint.name if checkpoint else "the beginning",
                        restarts,
                        config.run.max_failures,
                    )
        finally:
            _close_run_file(log_file.close, run_path, config.run.num_epochs, failing=not finished)


def write_placement(
    run_path: StoragePath, learners: LearnerGroup, placement: LearnerPlacement, workers: RolloutPool
) -> int:
    """Record where the driver, learners and rollout actors run (``placement.json``: pids and Ray node
    ids, for users on a cluster and for tests; ``learner`` is learner 0); returns the number of nodes
    the rollout actors use."""

    rollout = ray.get([actor.location.remote() for actor in workers.actors])
    learner_locations = [{**location, "device": placement.device} for location in learners.locations()]
    record = {
        "driver": process_location(),
        "learner": learner_locations[0],
        "learners": learner_locations,
        "rollout_workers": rollout,
        "workers_replaced": workers.num_replaced,
    }
    (run_path / PLACEMENT_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return len({entry["node_id"] for entry in rollout})


def _train_loop(
    config: TrainConfig,
    run_path: StoragePath,
    state: dict[str, Any] | None,
    placement: LearnerPlacement,
    num_workers: int,
    on_iteration: IterationCallback | None,
    log_file: RunLogFile,
) -> StoragePath:

    tasks = env_family(config.env).tasks(config.env, config.run.seed)
    sampler = TaskSampler(tasks.train_tasks(), config.run.seed)
    learners = LearnerGroup(config, placement.device, learner_actor_options(placement), placement.num_threads)
    workers = None
    try:
        workers = RolloutPool(
            lambda: RolloutActor.options(**rollout_actor_options()).remote(
                config.env, config.policy, config.maml, config.ppo, config.run.seed, config.meta_learner
            ),
            num_workers,
            config.rollout.sample_timeout_s,
        )
        return _iterate(
            config, run_path, state, placement, num_workers, on_iteration, log_file, sampler, learners, workers
        )
    finally:
        # A restart builds new actors; the old ones must not hold GPUs, ports or CPUs, and neither may a
        # finished run's when the same Ray session runs another (a notebook, Tune, a test module).
        try:
            learners.shutdown()
        finally:
            if workers is not None:
                workers.shutdown()


def _iterate(
    config: TrainConfig,
    run_path: StoragePath,
    state: dict[str, Any] | None,
    placement: LearnerPlacement,
    num_workers: int,
    on_iteration: IterationCallback | None,
    log_file: RunLogFile,
    sampler: TaskSampler,
    learners: LearnerGroup,
    workers: RolloutPool,
) -> StoragePath:

    start_iteration, env_steps_total, lr_scale = 0, 0, 1.0
    if state is not None:
        learners.load_state_dict(state["learner"])
        sampler.load_state_dict(state["task_sampler"])
        start_iteration, env_steps_total = int(state["iteration"]), int(state["env_steps_total"])
        lr_scale = float(state["learner"].get("lr_scale", 1.0))
        logger.info("resumed %s at iteration %d (%d env steps)", run_path, start_iteration, env_steps_total)
    num_nodes = write_placement(run_path, learners, placement, workers)
    logger.info(
        "run %s: %s, driver pid %d, %d rollout workers on %d node(s), %d learner(s) on %s; see %s",
        run_path,
        config.env.benchmark,
        os.getpid(),
        num_workers,
        num_nodes,
        learners.num_learners,
        placement.device,
        PLACEMENT_FILE,
    )
    # Rows and events after the starting point are dropped: a resume, or a restart after a lost learner
    # (before the first checkpoint that is iteration 0), runs those iterations again.
    run_metrics = RunMetrics(run_path, start_iteration, env_steps_total)
    # On a terminal a live bar; elsewhere the per-iteration log line below is the progress display.
    progress = Progress(
        config.run.num_epochs, "it", f"train {run_path.name}", log_every_s=float("inf"), initial=start_iteration
    )
    loop = LoopState(env_steps_total, lr_scale, num_nodes)
    finished = False
    try:
        for iteration in range(start_iteration, config.run.num_epochs):
            started = time.perf_counter()
            tasks = split_tasks(sampler.sample(config.maml.num_tasks), num_workers)
            params_ref = learners.get_params()  # publish: one object every worker reads
            sample_refs = _sample(config, run_path, learners, placement, workers, params_ref, tasks, iteration, loop)
            sampled = time.perf_counter()
            slot_ranges = [(chunk[0].slot, chunk[-1].slot + 1) for chunk in tasks]
            result = learners.update(sample_refs, slot_ranges, iteration + 1)
            learned = time.perf_counter()
            seconds = (sampled - started, learned - sampled)
            row = _record(config, run_path, run_metrics, progress, workers, result, iteration, loop, seconds)
            path = _checkpoint_if_due(config, run_path, run_metrics, log_file, learners, sampler, row, iteration, loop)
            if on_iteration is not None:
                on_iteration(row, path)
        finished = True
    finally:
        progress.close()
        _close_run_file(run_metrics.close, run_path, config.run.num_epochs, failing=not finished)
    return run_path


@dataclass
class LoopState:
    """What the training loop carries from one iteration to the next."""

    env_steps_total: int
    lr_scale: float  # the learners' step-size scale after rollbacks: the workers adapt with it
    num_nodes: int  # nodes the rollout actors run on
    rollbacks_in_a_row: int = 0


def _sample(
    config: TrainConfig,
    run_path: StoragePath,
    learners: LearnerGroup,
    placement: LearnerPlacement,
    workers: RolloutPool,
    params_ref: Any,
    worker_tasks: list[list[TaskSpec]],
    iteration: int,
    loop: LoopState,
) -> list[Any]:
    """Rollouts with inner adaptation on every worker's tasks. Lost or hung workers are replaced inside
    and their tasks sampled again: no episode is lost (then placement.json is rewritten)."""
    replaced_before = workers.num_replaced
    sample_refs, _ = workers.sample(params_ref, worker_tasks, iteration, config.maml.inner_lr * loop.lr_scale)
    if workers.num_replaced != replaced_before:
        loop.num_nodes = write_placement(run_path, learners, placement, workers)
    # The learners take the rollouts straight from the object store; the driver never copies them.
    return list(sample_refs)


def _record(
    config: TrainConfig,
    run_path: StoragePath,
    run_metrics: RunMetrics,
    progress: Progress,
    workers: RolloutPool,
    result: LearnerResult,
    iteration: int,
    loop: LoopState,
    seconds: tuple[float, float],
) -> dict[str, float]:
    """The iteration's journal row and log line; stops the run after too many undone updates in a row."""
    sample_s, learn_s = seconds
    loop.env_steps_total += result.env_steps
    loop.lr_scale = result.lr_scale
    loop.rollbacks_in_a_row = loop.rollbacks_in_a_row + 1 if result.update_undone else 0
    if result.oom_retries:
        logger.warning(
            "iteration %d: the learner ran out of memory; update retried with the meta-batch in %d "
            "chunks (kept for the rest of the run)",
            iteration + 1,
            result.gradient_accumulation_steps,
        )
    if loop.rollbacks_in_a_row:
        logger.warning(
            "iteration %d: non-finite loss or gradient; update undone, meta_lr and inner_lr now "
            "%.3g of the configured values (%d in a row, at most %d)",
            iteration + 1,
            loop.lr_scale,
            loop.rollbacks_in_a_row,
            config.learner.max_nonfinite_rollbacks,
        )
    row = {
        "iteration": iteration + 1,
        "rollout/env_steps_total": loop.env_steps_total,
        **result.metrics,
        "time/sample_s": sample_s,
        "time/learn_s": learn_s,
        "time/iteration_s": sample_s + learn_s,
        "rollout/env_steps_per_s": result.env_steps / sample_s,
        "rollout/workers_replaced": workers.num_replaced,
        "rollout/num_nodes": loop.num_nodes,
        "memory/driver_rss_mb": process_memory_mb(),
        "memory/rollout_rss_mb_max": workers.max_rss_mb,
        "fault/nonfinite_rollbacks_in_a_row": loop.rollbacks_in_a_row,
    }
    with _run_storage(run_path, iteration + 1, "its metrics"):
        run_metrics.append(row)
    _log_iteration(config, row, progress)
    if loop.rollbacks_in_a_row >= config.learner.max_nonfinite_rollbacks:
        last = latest_checkpoint(run_path)
        raise TrainingDivergedError(
            f"iteration {iteration + 1}: {loop.rollbacks_in_a_row} non-finite updates in a row "
            f"(--max_nonfinite_rollbacks={config.learner.max_nonfinite_rollbacks}); last good checkpoint: "
            f"{last if last is not None else 'none'}"
        )
    return row


def _checkpoint_if_due(
    config: TrainConfig,
    run_path: StoragePath,
    run_metrics: RunMetrics,
    log_file: RunLogFile,
    learners: LearnerGroup,
    sampler: TaskSampler,
    row: dict[str, float],
    iteration: int,
    loop: LoopState,
) -> StoragePath | None:
    if (iteration + 1) % config.run.checkpoint_every and iteration + 1 != config.run.num_epochs:
        return None
    with _run_storage(run_path, iteration + 1, "a checkpoint"):
        # Metrics first: a crash between the two leaves extra rows (dropped on resume), never a
        # checkpoint whose rows an object store lacks.
        run_metrics.sync()
        path = _checkpoint(config, run_path, iteration + 1, loop.env_steps_total, learners, sampler, row)
        log_file.sync()
    return path


def _close_run_file(close: Callable[[], None], run_path: StoragePath, iteration: int, failing: bool) -> None:
    """Close (and upload) one of a run's files. When the run is already failing, a write error here
    (the same full disk, say) must not replace the error that explains it."""
    if failing:
        with contextlib.suppress(OSError):
            close()
        return
    with _run_storage(run_path, iteration, "its metrics and log"):
        close()


@contextlib.contextmanager
def _run_storage(run_path: StoragePath, iteration: int, what: str) -> Iterator[None]:
    """A failed write to the run directory (disk full, permissions) as a one-line error naming the
    checkpoint to resume from; writes are atomic, so everything written before is intact."""
    try:
        yield
    except OSError as error:
        last = latest_checkpoint(run_path)
        reason = error.strerror or str(error).splitlines()[0][:200]
        raise RunStorageError(
            f"iteration {iteration}: cannot write {what} to {run_path} ({reason}); earlier files are intact, latest "
            f"checkpoint {last.name if last is not None else 'none'}: free space or fix the folder, then --resume"
        ) from None


def _log_iteration(config: TrainConfig, row: dict[str, float], progress: Progress) -> None:
    iterations_left = config.run.num_epochs - row["iteration"]
    logger.info(
        "iter %d/%d steps %d | pre %.1f (succ %.2f) -> post %.1f (succ %.2f) | kl %.4f | sample %.1fs learn %.1fs"
        " | %.0f steps/s, ETA %.0f min%s",
        row["iteration"],
        config.run.num_epochs,
        row["rollout/env_steps_total"],
        row["pre_adapt/return"],
        row["pre_adapt/success"],
        row["post_adapt/return"],
        row["post_adapt/success"],
        row.get("ppo/kl", float("nan")),
        row["time/sample_s"],
        row["time/learn_s"],
        row["rollout/env_steps"] / row["time/iteration_s"],
        iterations_left * row["time/iteration_s"] / 60,
        " | NON-FINITE UPDATE UNDONE" if row["fault/nonfinite_update"] else "",
    )
    progress.update(
        1,
        steps=int(row["rollout/env_steps_total"]),
        steps_per_s=f"{row['rollout/env_steps'] / row['time/iteration_s']:.0f}",
        post_succ=f"{row['post_adapt/success']:.2f}",
    )


def _checkpoint(
    config: TrainConfig,
    run_path: StoragePath,
    iteration: int,
    env_steps_total: int,
    learners: LearnerGroup,
    sampler: TaskSampler,
    row: dict[str, float],
) -> StoragePath:
    started = time.perf_counter()
    path = save_checkpoint(
        run_path,
        iteration,
        {
            "iteration": iteration,
            "env_steps_total": env_steps_total,
            "config": config.to_dict(),
            "learner": learners.state_dict(),
            "task_sampler": sampler.state_dict(),
            "metrics": row,  # the iteration's metrics, for whoever continues from this checkpoint
        },
    )
    logger.info("checkpoint %s (%.3fs)", path, time.perf_counter() - started)
    return path
