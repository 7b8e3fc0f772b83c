"""Where a meta-test runs: in this process (``--num_workers 0``), or spread over Ray rollout actors,
one per CPU, each taking the next batch of goals (or a run's official evaluation) as soon as it is free."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import ray

from metarl_ray.batch import GoalEvaluation
from metarl_ray.config import ConfigError
from metarl_ray.distributed.actors import RolloutActor
from metarl_ray.distributed.rollout_pool import run_queue
from metarl_ray.distributed.session import ray_session, rollout_actor_options
from metarl_ray.envs import TaskSpec
from metarl_ray.evaluation.meta_test import (
    EvalOptions,
    OfficialResult,
    RunToEvaluate,
    check_compatible,
    check_official_layout,
    find_checkpoints,
    goal_specs,
    goals_per_class_for,
    load_run,
    official_applies,
    official_goals_for,
    official_result,
    summarize,
)
from metarl_ray.training.progress import Progress
from metarl_ray.training.rollout import EvalPlan, RolloutWorker
from metarl_ray.training.storage import StoragePath

logger = logging.getLogger(__name__)
MAX_GOALS_PER_CALL = 10  # envs stepped in lockstep by one call; more calls balance and report better


def _batches(specs: Sequence[TaskSpec], size: int) -> list[list[TaskSpec]]:
    return [list(specs[start : start + size]) for start in range(0, len(specs), size)]


def run_meta_test(
    runs: Sequence[RunToEvaluate], goals_per_class: int, options: EvalOptions, ray_address: str | None = None
) -> tuple[list[list[GoalEvaluation]], list[OfficialResult | None]]:
    """Every run's goals (and its official evaluation when asked): results per run, in goal order."""
    plan = EvalPlan(num_sampled_episodes=options.num_sampled_episodes)
    specs = [goal_specs(run, goals_per_class, options.split) for run in runs]
    official_goals = official_goals_for(options, goals_per_class)
    # An official evaluation counts as its goals: about the same episodes per goal as ours.
    num_official_goals = official_goals * len({spec.env_name for spec in specs[0]}) if options.official else 0
    progress = Progress(sum(len(s) for s in specs) + num_official_goals * len(runs), "goals", "meta-test")
    results: list[list[GoalEvaluation]] = [[] for _ in runs]
    official: list[OfficialResult | None] = [None] * len(runs)
    try:
        if options.num_workers == 0:
            config = runs[0].config
            worker = RolloutWorker(
                config.env, config.policy, config.maml, config.ppo, config.run.seed, config.meta_learner
            )
            for run_index, run in enumerate(runs):
                for batch in _batches(specs[run_index], MAX_GOALS_PER_CALL):
                    results[run_index] += worker.evaluate(run.meta_params, batch, plan, run.seed, run.inner_lr)
                    progress.update(len(batch))
                if options.official:
                    official[run_index] = official_result(
                        run.adapting_config,
                        run.meta_params,
                        official_goals,
                        options.num_evals,
                        options.mt_episodes,
                        options.official_meta_batch_size,
                    )
                    progress.update(num_official_goals)
        else:
            _run_on_actors(
                runs, specs, plan, official_goals, num_official_goals, options, ray_address, progress, results, official
            )
    finally:
        progress.close()
    for run_results in results:
        run_results.sort(key=lambda goal: goal.slot)
    return results, official


def _run_on_actors(
    runs: Sequence[RunToEvaluate],
    specs: list[list[TaskSpec]],
    plan: EvalPlan,
    official_goals: int,
    num_official_goals: int,
    options: EvalOptions,
    ray_address: str | None,
    progress: Progress,
    results: list[list[GoalEvaluation]],
    official: list[OfficialResult | None],
) -> None:
    with ray_session(ray_address):
        num_cpus = int(ray.cluster_resources().get("CPU", 1))
        num_workers = min(options.num_workers or num_cpus, num_cpus)
        config = runs[0].config
        params_refs = [ray.put(run.meta_params) for run in runs]
        # The official evaluations are the longest calls (all their goals in one process): queued first,
        # they run beside the goal batches instead of after them.
        calls: list[Any] = []
        kinds: list[tuple[str, int, int]] = []  # (kind, run index, goals in the call)
        if options.official:
            for run_index, run in enumerate(runs):
                calls.append(
                    lambda actor, r=run, ref=params_refs[run_index]: actor.evaluate_official.remote(
                        r.adapting_config,
                        ref,
                        official_goals,
                        options.num_evals,
                        options.mt_episodes,
                        options.official_meta_batch_size,
                    )
                )
                kinds.append(("official", run_index, num_official_goals))
        size = max(1, min(MAX_GOALS_PER_CALL, -(-sum(map(len, specs)) // (4 * num_workers))))
        for run_index, run in enumerate(runs):
            for batch in _batches(specs[run_index], size):
                calls.append(
                    lambda actor, b=batch, r=run, ref=params_refs[run_index]: actor.evaluate.remote(
                        ref, b, plan, r.seed, r.inner_lr
                    )
                )
                kinds.append(("goals", run_index, len(batch)))
        done_official = 0

        def on_result(index: int, value: Any) -> None:
            nonlocal done_official
            kind, run_index, num_goals = kinds[index]
            if kind == "official":
                official[run_index] = value
                done_official += 1
            else:
                results[run_index] += value
            progress.update(num_goals, official=f"{done_official}/{len(runs) if options.official else 0}")

        make_actor = lambda: RolloutActor.options(**rollout_actor_options()).remote(  # noqa: E731
            config.env, config.policy, config.maml, config.ppo, config.run.seed, config.meta_learner
        )
        logger.info("meta-test: %d runs x %d goals on %d rollout actors", len(runs), len(specs[0]), num_workers)
        run_queue(make_actor, num_workers, calls, on_result, config.rollout.sample_timeout_s)


def evaluate_runs(
    locations: Sequence[StoragePath], options: EvalOptions, ray_address: str | None = None
) -> dict[str, Any]:
    """Load every run, meta-test it (in this process, or on Ray rollout actors) and summarise."""
    checkpoints = [c for location in locations for c in find_checkpoints(location)]
    runs = [load_run(c) for c in checkpoints]
    if not runs:
        raise ConfigError(
            f"--checkpoint={[str(location) for location in locations]!r}: no checkpoint found; expected checkpoint "
            "files, run directories or a Tune experiment directory"
        )
    check_compatible(runs)
    goals_per_class = goals_per_class_for(options, runs[0].config)
    if official_applies(runs[0].config, options):
        check_official_layout(runs[0], options, goals_per_class)
    options = dataclasses.replace(
        options,
        mt_episodes=options.mt_episodes or (2 if runs[0].config.run.test_mode else 50),
        official=official_applies(runs[0].config, options),
    )
    results, official = run_meta_test(runs, goals_per_class, options, ray_address)
    return summarize(runs, results, official, options, goals_per_class)
