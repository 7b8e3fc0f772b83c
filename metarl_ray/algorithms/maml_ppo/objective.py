"""MAML with a PPO outer objective (MAML+PPO), written in the words of the papers.

Inner step (ProMP's LVC objective, Rothfuss et al. 2019): on support episodes D_i collected by pi_theta_o,
    L_in(theta) = -mean_t[ pi_theta(a|s) / pi_theta_o(a|s) * A_t ],   theta'_i = theta - alpha * grad L_in,
evaluated at theta = theta_o. Its value and gradient equal the vanilla policy gradient; its Hessian is
the one the meta-gradient needs.

Outer step: PPO's clipped surrogate on query episodes D'_i collected by the adapted policy theta'_o,i,
    L_out(theta) = -mean_i mean_t min(r_t A'_t, clip(r_t, 1-eps, 1+eps) A'_t),
    r_t = pi_{theta'_i(theta)} / pi_{theta'_o,i},
with theta'_i(theta) re-derived from the fixed support data in every epoch, so the meta-gradient flows
through the adaptation: (I - alpha * Hess L_in) grad L_out(theta') for one step. ``first_order`` drops the Hessian.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from metarl_ray.algorithms.ppo import clipped_surrogate
from metarl_ray.batch import EpisodeBatch, TaskRollouts
from metarl_ray.config import MAMLConfig, PPOConfig
from metarl_ray.policies.common import Params, as_policy, log_prob

# Tasks in one batched graph at most; more are split into chunks (the gradient is the same).
MAX_TASKS_PER_GRAPH = 8


@dataclass(frozen=True)
class TensorBatch:
    """An EpisodeBatch as tensors on the learner's device."""

    observations: torch.Tensor  # (N, T, obs_dim)
    actions: torch.Tensor  # (N, T, act_dim)
    log_probs: torch.Tensor  # (N, T) of the sampling policy
    advantages: torch.Tensor  # (N, T)

    @staticmethod
    def from_numpy(
        batch: EpisodeBatch, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> TensorBatch:
        def to(array: np.ndarray) -> torch.Tensor:
            return torch.tensor(array, device=device, dtype=dtype)  # copies: Ray hands out read-only arrays

        if batch.advantages is None:
            raise ValueError("episodes without advantages: the rollout program computes them (MAMLRollouts.collect)")
        return TensorBatch(to(batch.observations), to(batch.actions), to(batch.log_probs), to(batch.advantages))


@dataclass(frozen=True)
class TaskTensors:
    support: tuple[TensorBatch, ...]  # one per inner step
    query: TensorBatch

    @staticmethod
    def from_rollouts(
        rollouts: TaskRollouts, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> TaskTensors:
        return TaskTensors(
            tuple(TensorBatch.from_numpy(b, device, dtype) for b in rollouts.support),
            TensorBatch.from_numpy(rollouts.query, device, dtype),
        )


def inner_loss(policy: nn.Module, params: Params, batch: TensorBatch) -> torch.Tensor:
    """ProMP's LVC objective J(theta) = mean_t[ pi_theta(a|s) / pi_theta_o(a|s) * A_t ], theta_o the
    sampling parameters (their log-probs were recorded at sampling time).

    At theta = theta_o it equals the vanilla policy gradient in value and gradient, and its Hessian adds
    the score-function term of the support data's dependence on theta (ProMP, Sec. 5). Because the
    denominator is recorded data rather than a stop-gradient of the same expression, this is a genuine
    function of theta, so its meta-gradient is checkable by finite differences.
    """
    return lvc_loss(log_prob(policy, params, batch.observations, batch.actions), batch)


def lvc_loss(new_log_probs: torch.Tensor, batch: TensorBatch) -> torch.Tensor:
    """-mean_t[ pi_theta / pi_theta_o * A_t ] per task: log-probs (..., N, T) -> (...,)."""
    return -(torch.exp(new_log_probs - batch.log_probs) * batch.advantages).flatten(-2).mean(-1)


StepSizes = float | Params  # one inner learning rate, or one per adapted parameter (Meta-SGD)


def adapted_names(policy: nn.Module, params: Params, inner_lr: StepSizes) -> list[str]:
    """The parameters an inner step moves: those with a step size of their own, else every one the
    policy does not mark ``fixed_in_inner_loop``."""
    if isinstance(inner_lr, dict):
        return [name for name in params if name in inner_lr]
    return [name for name in params if not as_policy(policy).fixed_in_inner_loop(name)]


def sgd_step(params: Params, names: Sequence[str], grads: Sequence[torch.Tensor], inner_lr: StepSizes) -> Params:
    """theta' = theta - alpha * g on ``names``, alpha a scalar or per parameter (elementwise)."""
    return {
        **params,
        **{
            name: params[name] - (inner_lr[name] if isinstance(inner_lr, dict) else inner_lr) * g
            for name, g in zip(names, grads)
        },
    }


def adapt(
    policy: nn.Module, params: Params, support: Sequence[TensorBatch], inner_lr: StepSizes, create_graph: bool
) -> Params:
    """One inner SGD step per support batch. With create_graph the result is differentiable in
    ``params`` (and in per-parameter step sizes: second order); without it the steps are constants and
    d theta'/d theta = I (first order). Parameters the policy marks ``fixed_in_inner_loop`` pass through
    unchanged (still meta-learned)."""
    names = adapted_names(policy, params, inner_lr)
    for batch in support:
        loss = inner_loss(policy, params, batch)
        grads = torch.autograd.grad(loss, [params[name] for name in names], create_graph=create_graph)
        params = sgd_step(params, names, grads, inner_lr)
    return params


def stack_tasks(tasks: Sequence[TaskTensors]) -> TaskTensors | None:
    """The tasks' tensors stacked on a leading task dim K, or None if their shapes differ."""
    first = tasks[0]

    def stack(batches: Sequence[TensorBatch]) -> TensorBatch | None:
        fields = [[getattr(b, f) for b in batches] for f in ("observations", "actions", "log_probs", "advantages")]
        if any(len({t.shape for t in group}) != 1 for group in fields):
            return None
        return TensorBatch(*(torch.stack(group) for group in fields))

    if any(len(task.support) != len(first.support) for task in tasks):
        return None
    support = tuple(stack([task.support[k] for task in tasks]) for k in range(len(first.support)))
    query = stack([task.query for task in tasks])
    if query is None or any(batch is None for batch in support):
        return None
    return TaskTensors(support, query)  # type: ignore[arg-type]


def batched_log_prob(
    policy: nn.Module, params: Params, observations: torch.Tensor, actions: torch.Tensor
) -> torch.Tensor:
    """log pi for K tasks at once, each with its own parameters:
    params (K, ...), (K, N, T, D), (K, N, T, A) -> (K, N, T).

    ``vmap`` over ``functional_call`` works for any policy module (the batched matmuls it emits are what a
    hand-stacked version would run); the per-call overhead that made it slow for one env step is
    negligible against whole episodes.
    """
    return torch.func.vmap(lambda p, o, a: log_prob(policy, p, o, a))(params, observations, actions)


def adapt_batched(
    policy: nn.Module, params: Params, support: Sequence[TensorBatch], inner_lr: StepSizes, create_graph: bool
) -> Params:
    """``adapt`` for K tasks at once: params and support batches carry a leading task dim K. The K inner
    losses are independent, so the gradient of their sum with respect to the stacked parameters is
    every task's own gradient, in one backward pass (per-parameter step sizes broadcast over K)."""
    names = adapted_names(policy, params, inner_lr)
    for batch in support:
        new_log_probs = batched_log_prob(policy, params, batch.observations, batch.actions)  # (K, N, T)
        losses = lvc_loss(new_log_probs, batch)  # (K,)
        grads = torch.autograd.grad(losses.sum(), [params[name] for name in names], create_graph=create_graph)
        params = sgd_step(params, names, grads, inner_lr)
    return params


class MAMLPPO:
    def __init__(self, policy: nn.Module, maml: MAMLConfig, ppo: PPOConfig) -> None:
        self.policy = policy
        self.maml = maml
        self.ppo = ppo
        self.inner_lr = maml.inner_lr  # scaled down by the learner after a non-finite update

    @property
    def learning_rate(self) -> float:
        return self.ppo.meta_lr

    @property
    def max_items_per_graph(self) -> int | None:
        # A batched graph holds every task's second-order graph at once.
        return MAX_TASKS_PER_GRAPH

    def optimizer_steps(
        self, tasks: Sequence[TaskTensors], rng: np.random.Generator
    ) -> Iterator[Sequence[TaskTensors]]:
        """One full-batch step per PPO epoch, each re-deriving the adaptation."""
        for _ in range(self.ppo.num_ppo_epochs):
            yield tasks

    @property
    def per_task_graphs_on_cpu(self) -> bool:
        # Measured (benchmarks/learner.py): a task's second-order graph stays in cache, a batched
        # graph's activations are memory-bound, and it needs a tenth of the memory.
        return True

    def tensors(self, rollouts: TaskRollouts, device: torch.device) -> TaskTensors:
        return TaskTensors.from_rollouts(rollouts, device)

    def set_lr_scale(self, lr_scale: float) -> None:
        self.inner_lr = self.maml.inner_lr * lr_scale

    def meta_params(self) -> Params:
        return dict(self.policy.named_parameters())

    def adapt(self, params: Params, support: Sequence[TensorBatch], create_graph: bool) -> Params:
        return adapt(self.policy, params, support, self.step_sizes(params), create_graph)

    def step_sizes(self, meta_params: Params) -> StepSizes:
        """The inner step's learning rate (Meta-SGD: one per parameter, read from ``meta_params``)."""
        return self.inner_lr

    def _clipped_surrogate(
        self, new_log_probs: torch.Tensor, query: TensorBatch
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return clipped_surrogate(new_log_probs, query.log_probs, query.advantages, self.ppo.clip_eps)

    def task_outer_loss(self, meta_params: Params, task: TaskTensors) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One task, its own second-order graph (the reference path)."""
        adapted = self.adapt(meta_params, task.support, create_graph=not self.maml.first_order)
        new_log_probs = log_prob(self.policy, adapted, task.query.observations, task.query.actions)
        return self._clipped_surrogate(new_log_probs, task.query)

    def batched_outer_loss(
        self, meta_params: Params, stacked: TaskTensors
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """K tasks stacked on a leading dim, adapted and scored in one graph: per-task losses (K,)."""
        num_tasks = stacked.query.observations.shape[0]
        per_task = {name: p.unsqueeze(0).expand(num_tasks, *p.shape) for name, p in meta_params.items()}
        adapted = adapt_batched(
            self.policy, per_task, stacked.support, self.step_sizes(meta_params), create_graph=not self.maml.first_order
        )
        new_log_probs = batched_log_prob(self.policy, adapted, stacked.query.observations, stacked.query.actions)
        return self._clipped_surrogate(new_log_probs, stacked.query)

    def loss(self, tasks: Sequence[TaskTensors]) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean outer loss over ``tasks``: one batched graph when their shapes agree (training batches
        always do), else one graph per task."""
        meta_params = self.meta_params()
        stacked = stack_tasks(tasks) if len(tasks) > 1 else None
        if stacked is not None:
            losses, stats = self.batched_outer_loss(meta_params, stacked)
        else:
            pairs = [self.task_outer_loss(meta_params, task) for task in tasks]
            losses = torch.stack([loss for loss, _ in pairs])
            stats = {key: torch.stack([s[key] for _, s in pairs]) for key in pairs[0][1]}
        return losses.mean(), {key: float(value.double().mean()) for key, value in stats.items()}

    def outer_loss(self, tasks: Sequence[TaskTensors]) -> torch.Tensor:
        """Mean PPO loss over tasks, one graph per task (for tests and diagnostics)."""
        meta_params = self.meta_params()
        return torch.stack([self.task_outer_loss(meta_params, task)[0] for task in tasks]).mean()
