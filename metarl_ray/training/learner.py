"""The learner: meta-parameters, optimizer and the meta-update. Plain PyTorch; ``actors.py`` wraps it.

The update loop is the same for every meta-learner behind the ``MetaLearner`` protocol. The meta-learner
names each optimizer step's items (whole tasks for MAML+PPO, chunks of trials for RL²); the learner
processes them in ``gradient_accumulation_steps`` groups (one batched graph each, or one graph per
item on the ``per_task`` reference path), optionally under bfloat16 autocast;
with several learners the gradients are averaged across them (``torch.distributed`` all-reduce) before
clipping and the Adam step, so every learner applies the same update to the same parameters.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from metarl_ray.algorithms.base import MetaLearner, build_meta_policy, builder_for
from metarl_ray.batch import TaskData
from metarl_ray.config import EnvConfig, LearnerConfig, MAMLConfig, MetaLearnerConfig, PolicyConfig, PPOConfig
from metarl_ray.envs import env_family
from metarl_ray.policies.common import params_to_numpy


def rollout_metrics(rollouts: Sequence[TaskData]) -> dict[str, float]:
    """Return and success before adaptation (MAML: the first support batch; in context: first episodes
    of the trials) and after it (the query batch; the trials' last episodes)."""
    before, after = zip(*(task.before_and_after_adaptation() for task in rollouts))
    return {
        "rollout/env_steps": float(sum(task.num_steps for task in rollouts)),
        "fault/env_faults": float(sum(task.num_env_faults for task in rollouts)),
        "pre_adapt/return": float(np.mean([batch.episode_returns.mean() for batch in before])),
        "pre_adapt/success": float(np.mean([batch.successes.mean() for batch in before])),
        "post_adapt/return": float(np.mean([batch.episode_returns.mean() for batch in after])),
        "post_adapt/success": float(np.mean([batch.successes.mean() for batch in after])),
    }


@dataclass(frozen=True)
class LearnerResult:
    """One iteration's meta-update as the training loop reads it; ``metrics`` is its journal row."""

    env_steps: int  # env steps of the rollouts it learned from
    lr_scale: float  # of the configured step sizes, after any rollback (the rollout workers adapt with it)
    update_undone: bool  # a non-finite loss or gradient: parameters and Adam state went back
    oom_retries: int  # out-of-memory retries, each with the meta-batch in more graphs
    gradient_accumulation_steps: int  # graphs per optimizer step after those retries
    metrics: dict[str, float]

    @staticmethod
    def from_metrics(metrics: dict[str, float]) -> LearnerResult:
        """From the (merged) row the learners wrote."""
        return LearnerResult(
            env_steps=int(metrics["rollout/env_steps"]),
            lr_scale=float(metrics["learner/lr_scale"]),
            update_undone=bool(metrics["fault/nonfinite_update"]),
            oom_retries=int(metrics["fault/oom_retries"]),
            gradient_accumulation_steps=int(metrics["learner/gradient_accumulation_steps"]),
            metrics=metrics,
        )


def task_chunks(tasks: Sequence[Any], num_chunks: int) -> list[list[Any]]:
    """Contiguous near-equal chunks, none empty (at most one chunk per task)."""
    num_chunks = max(1, min(num_chunks, len(tasks)))
    bounds = [round(i * len(tasks) / num_chunks) for i in range(num_chunks + 1)]
    return [list(tasks[bounds[i] : bounds[i + 1]]) for i in range(num_chunks)]


logger = logging.getLogger(__name__)


class NonFiniteUpdateError(ArithmeticError):
    """A NaN or Inf in a loss or gradient, caught before the optimizer step applied it."""


def num_graph_groups(num_items: int, accumulation_steps: int, max_items_per_graph: int | None) -> int:
    """Graphs one optimizer step's items are split into: the accumulation steps asked for, and at least
    one per ``max_items_per_graph`` items."""
    least = 1 if max_items_per_graph is None else -(-num_items // max_items_per_graph)
    return max(accumulation_steps, least)


def meta_update(
    algorithm: MetaLearner,
    optimizer: torch.optim.Optimizer,
    tasks: Sequence[Any],
    config: LearnerConfig,
    grad_clip: float,
    num_tasks_total: int | None = None,
    rng: np.random.Generator | None = None,
) -> dict[str, float]:
    """The meta-learner's optimizer steps (``algorithm.optimizer_steps``), each on the mean loss of its
    items over every learner. ``num_tasks_total``: tasks over all learners (default: these); each
    learner's items weigh by its share of them. Raises NonFiniteUpdateError, before that optimizer
    step, if a loss or the gradient is not finite."""
    num_tasks_total = num_tasks_total or len(tasks)
    parameters = list(algorithm.policy.parameters())
    per_item = (
        resolve_meta_batching(config.meta_batching, parameters[0].device, algorithm.per_task_graphs_on_cpu)
        == "per_task"
    )
    metrics: dict[str, float] = {}
    step = 0
    for step, items in enumerate(algorithm.optimizer_steps(tasks, rng or np.random.default_rng(0)), start=1):
        if per_item:
            groups = [[item] for item in items]  # one second-order graph at a time: the least memory
        else:
            groups = task_chunks(
                items, num_graph_groups(len(items), config.gradient_accumulation_steps, algorithm.max_items_per_graph)
            )
        optimizer.zero_grad(set_to_none=True)
        loss_sum, stats_sum = 0.0, {}
        for group in groups:
            with _autocast(config.use_amp, parameters[0].device):
                loss, stats = algorithm.loss(group)
            # Each group's share of the step's mean over the items of all learners (integers multiplied
            # first, so with whole tasks as items this is exactly len(group) / num_tasks_total).
            (loss * (len(group) * len(tasks) / (len(items) * num_tasks_total))).backward()
            loss_sum += float(loss.detach()) * len(group)
            for key, value in stats.items():
                stats_sum[key] = stats_sum.get(key, 0.0) + value * len(group)
        if not np.isfinite(loss_sum):  # a non-finite loss reaches every learner through the all-reduce
            for p in parameters:
                p.grad = torch.full_like(p, float("nan"))
        average_gradients_across_learners(parameters)
        # After the all-reduce every learner sees the same gradient, so all of them roll back or none.
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
        if not torch.isfinite(grad_norm):
            raise NonFiniteUpdateError(
                f"non-finite {'loss' if not np.isfinite(loss_sum) else 'gradient'} "
                f"in optimizer step {step} of the iteration"
            )
        optimizer.step()
        if step == 1:
            metrics["loss/outer"] = loss_sum / len(items)
            metrics["ppo/grad_norm"] = float(grad_norm)
    metrics["loss/outer_last_epoch"] = loss_sum / len(items)
    metrics.update({key: value / len(items) for key, value in stats_sum.items()})
    metrics["learner/optimizer_steps"] = float(step)
    return metrics


def resolve_meta_batching(meta_batching: str, device: torch.device, per_task_graphs_on_cpu: bool = True) -> str:
    """``auto``: batched graphs on a GPU, where one large kernel beats many small ones; on a CPU what the
    meta-learner says. MAML+PPO: one graph per task, measured faster there for both policies at the ML10
    defaults (``python benchmarks/learner.py``): a task's activations (5,000 x 128 floats) stay in cache,
    where a batched graph's are memory-bound, and it needs a tenth of the memory. With the adjoint scan
    the SSM's per-task graph is small too (0.72x the batched time, 0.1x its peak memory)."""
    if meta_batching != "auto":
        return meta_batching
    return "batched" if device.type == "cuda" or not per_task_graphs_on_cpu else "per_task"


def _autocast(use_amp: bool, device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on the forward passes (matmuls); parameters, gradients and Adam state stay fp32."""
    if not use_amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def average_gradients_across_learners(parameters: Sequence[torch.nn.Parameter]) -> None:
    """Sum the learners' gradients (each already scaled by its share of all tasks) in one flat
    all-reduce; every learner then holds the same gradient, so the same parameters after the step."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for p in parameters:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in parameters])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in parameters:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()


class Learner:
    def __init__(
        self,
        policy_config: PolicyConfig,
        maml_config: MAMLConfig,
        ppo_config: PPOConfig,
        seed: int,
        device: str,
        learner_config: LearnerConfig | None = None,
        meta_learner_config: MetaLearnerConfig | None = None,
        env_config: EnvConfig | None = None,  # only its family's sizes
    ) -> None:
        self.device = torch.device(device)
        self.ppo_config = ppo_config
        self.config = learner_config or LearnerConfig()
        # The same seed gives the same initial meta-parameters on every machine and every learner.
        torch.manual_seed(seed)
        self.seed = seed
        meta_learner_config = meta_learner_config or MetaLearnerConfig()
        family = env_family(env_config or EnvConfig())
        builder = builder_for(meta_learner_config)
        self.policy = build_meta_policy(meta_learner_config, family, policy_config, maml_config).to(self.device)
        self.algorithm: MetaLearner = builder.meta_learner(self.policy, meta_learner_config, maml_config, ppo_config)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.algorithm.learning_rate)
        # Product of the nonfinite_lr_factor of every rollback so far: scales meta_lr and inner_lr.
        self.lr_scale = 1.0
        # Called with the iteration before each update (the fault-injection tests install one).
        self.before_update: list[Callable[[int | None], None]] = []
        # Raised for the rest of the run after an out-of-memory error (not checkpointed: a resumed run,
        # perhaps on a bigger device, starts from the configured value again).
        self.accumulation_steps = self.config.gradient_accumulation_steps

    def get_params(self) -> dict[str, np.ndarray]:
        return params_to_numpy(dict(self.policy.named_parameters()))

    def update(
        self,
        rollouts: Sequence[TaskData],
        num_tasks_total: int | None = None,
        iteration: int | None = None,
    ) -> dict[str, float]:
        """One iteration's meta-update on this learner's tasks. ``num_tasks_total``: tasks over all
        learners (default: these), so that the all-reduced gradient is the mean over every task.

        A non-finite loss or gradient in any PPO epoch undoes the whole iteration's update: parameters
        and Adam state return to the last good iteration's and both learning rates are scaled down
        (``fault/nonfinite_update`` = 1 in the metrics; the trainer stops after too many in a row)."""
        for hook in self.before_update:
            hook(iteration)
        rollouts = sorted(rollouts, key=lambda task: task.slot)  # independent of which worker finished first
        tasks = [self.algorithm.tensors(task, self.device) for task in rollouts]
        last_good = copy.deepcopy(self.state_dict())
        oom_retries = 0
        while True:
            try:
                config = dataclasses.replace(self.config, gradient_accumulation_steps=self.accumulation_steps)
                # The iteration's own stream for the meta-learner's shuffles: a resumed run repeats them.
                rng = np.random.default_rng(np.random.SeedSequence([self.seed, iteration or 0]))
                metrics = meta_update(
                    self.algorithm,
                    self.optimizer,
                    tasks,
                    config,
                    self.ppo_config.grad_clip,
                    num_tasks_total or len(tasks),
                    rng=rng,
                )
                metrics["fault/nonfinite_update"] = 0.0
                break
            except NonFiniteUpdateError as error:
                self.load_state_dict(last_good)
                self.set_lr_scale(self.lr_scale * self.config.nonfinite_lr_factor)
                logger.warning(
                    "%s: update undone, meta_lr and inner_lr scaled to %.3g of the configured values",
                    error,
                    self.lr_scale,
                )
                metrics = {"fault/nonfinite_update": 1.0}
                break
            except torch.OutOfMemoryError as error:
                self._recover_from_out_of_memory(error, last_good, len(tasks))
                oom_retries += 1
        metrics["fault/oom_retries"] = float(oom_retries)
        metrics["learner/gradient_accumulation_steps"] = float(self.accumulation_steps)
        metrics.update(rollout_metrics(rollouts))
        metrics["policy/std"] = float(self.policy.log_std.detach().exp().mean())
        metrics["learner/lr_scale"] = self.lr_scale
        if self.device.type == "cuda":  # peak of this iteration's update
            metrics["memory/learner_cuda_peak_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
            torch.cuda.reset_peak_memory_stats(self.device)
        return metrics

    def _recover_from_out_of_memory(self, error: Exception, last_good: dict[str, Any], num_tasks: int) -> None:
        """Undo the partial update, free the cached blocks and split the meta-batch into twice the
        chunks (the gradient is the same, peak memory lower); re-raise when it cannot be split further.
        With several learners the others wait in the all-reduce of the epoch this one failed in, so a
        retry would pair mismatched epochs: there the error ends the group (the trainer restarts it)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise error
        per_task = (
            resolve_meta_batching(self.config.meta_batching, self.device, self.algorithm.per_task_graphs_on_cpu)
            == "per_task"
        )
        # The graphs meta_update split a step of whole tasks into.
        chunks = num_graph_groups(num_tasks, self.accumulation_steps, self.algorithm.max_items_per_graph)
        more = min(num_tasks, 2 * chunks)
        if per_task or more == chunks:
            raise error
        error.__traceback__ = None  # its frames hold the failed graph: drop them before freeing the cache
        self.load_state_dict(last_good)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        logger.warning(
            "out of memory in the meta-update (%s); retrying with the meta-batch in %d chunks",
            str(error).splitlines()[0][:200],
            more,
        )
        self.accumulation_steps = more

    def set_lr_scale(self, lr_scale: float) -> None:
        self.lr_scale = lr_scale
        self.algorithm.set_lr_scale(lr_scale)
        for group in self.optimizer.param_groups:
            group["lr"] = self.algorithm.learning_rate * lr_scale

    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": {k: v.detach().cpu() for k, v in self.policy.state_dict().items()},
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "lr_scale": self.lr_scale,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])  # Adam moves its state to the params' device
        # A resumed run may be given a new --meta_lr; earlier rollbacks' scaling carries over.
        self.set_lr_scale(float(state.get("lr_scale", 1.0)))


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value
