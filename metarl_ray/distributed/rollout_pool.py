"""Rollout actors that lose no work: a dead or hung actor is replaced and its tasks sampled again.

Task noise is keyed by (seed, iteration, slot), so the replacement collects exactly the episodes the
lost actor was asked for: an iteration never loses episodes and never counts any twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import ray
from ray.exceptions import RayActorError

from metarl_ray.envs import TaskSpec

logger = logging.getLogger(__name__)


class RolloutPool:
    def __init__(self, make_actor: Callable[[], Any], num_workers: int, timeout_s: float) -> None:
        self.make_actor = make_actor
        self.timeout_s = timeout_s
        self.actors = [make_actor() for _ in range(num_workers)]
        self.num_replaced = 0
        self.max_rss_mb = 0.0

    def shutdown(self) -> None:
        """End the actors: a second run in the same Ray session (a notebook, a script) needs their CPUs."""
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []

    def _replace(self, index: int, reason: str, num_tasks: int) -> None:
        logger.warning("rollout worker %d %s; its %d tasks are sampled again on a new worker", index, reason, num_tasks)
        ray.kill(self.actors[index], no_restart=True)
        self.actors[index] = self.make_actor()
        self.num_replaced += 1

    def sample(
        self, params_ref: Any, chunks: Sequence[Sequence[TaskSpec]], iteration: int, inner_lr: float | None = None
    ) -> tuple[list[Any], int]:
        """One sample call per chunk; returns the rollout refs (chunk order) and the env steps collected.
        ``max_rss_mb`` is then the largest resident memory among the actors that sampled."""
        rollout_refs: list[Any] = [None] * len(chunks)
        pending: dict[Any, int] = {}
        self.max_rss_mb = 0.0

        def submit(index: int) -> None:
            steps_ref, rollout_refs[index] = self.actors[index].sample.remote(
                params_ref, chunks[index], iteration, None, inner_lr
            )
            pending[steps_ref] = index

        for index in range(len(chunks)):
            submit(index)
        total_steps, deadline = 0, time.monotonic() + self.timeout_s
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:  # the slowest actors hung past the timeout: treat them as dead
                hung = list(pending.values())
                pending.clear()
                for index in hung:
                    self._replace(index, f"timed out after {self.timeout_s:g}s", len(chunks[index]))
                    submit(index)
                deadline = time.monotonic() + self.timeout_s
                continue
            index = pending.pop(ready[0])
            try:
                info = ray.get(ready[0])
                total_steps += info.env_steps
                self.max_rss_mb = max(self.max_rss_mb, info.rss_mb)
            except RayActorError as error:
                self._replace(index, f"died ({type(error).__name__})", len(chunks[index]))
                submit(index)
                deadline = time.monotonic() + self.timeout_s
        return rollout_refs, total_steps


def run_queue(
    make_actor: Callable[[], Any],
    num_workers: int,
    calls: Sequence[Callable[[Any], Any]],
    on_result: Callable[[int, Any], None],
    timeout_s: float,
    max_retries: int = 2,
) -> None:
    """Run independent calls (``call(actor) -> ObjectRef``) on a pool of actors, each actor taking the
    next call as soon as it is free, so uneven calls balance out. A call whose actor dies, or stays
    silent for ``timeout_s``, runs again on a new actor (evaluation noise is keyed by goal, so a retried
    call returns what the lost one would have); ``on_result(index, value)`` sees each call's result
    once, in completion order. The actors are ended on return and on error."""
    actors = [make_actor() for _ in range(min(num_workers, len(calls)))]
    queue, attempts = list(range(len(calls))), [0] * len(calls)
    running: dict[Any, tuple[int, int, float]] = {}  # ref -> (call index, actor index, start time)

    def submit(actor_index: int) -> None:
        if queue:
            index = queue.pop(0)
            running[calls[index](actors[actor_index])] = (index, actor_index, time.monotonic())

    def retry(ref: Any, reason: str) -> None:
        index, actor_index, _ = running.pop(ref)
        attempts[index] += 1
        if attempts[index] > max_retries:
            raise RuntimeError(f"call {index} failed {attempts[index]} times; last: actor {actor_index} {reason}")
        logger.warning("actor %d %s; its call runs again on a new actor", actor_index, reason)
        ray.kill(actors[actor_index], no_restart=True)
        actors[actor_index] = make_actor()
        queue.insert(0, index)
        submit(actor_index)

    try:
        for actor_index in range(len(actors)):
            submit(actor_index)
        while running:
            # Short waits: a hung call is noticed, and Ctrl-C is handled, within seconds.
            ready, _ = ray.wait(list(running), num_returns=1, timeout=5.0)
            if not ready:
                now = time.monotonic()
                for ref in [r for r, (_, _, started) in running.items() if now - started > timeout_s]:
                    retry(ref, f"timed out after {timeout_s:g}s")
                continue
            try:
                value = ray.get(ready[0])
            except RayActorError as error:
                retry(ready[0], f"died ({type(error).__name__})")
                continue
            index, actor_index, _ = running.pop(ready[0])
            on_result(index, value)
            submit(actor_index)
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
