"""MAML with a PPO outer objective (MAML+PPO), written in the words of the papers.

Inner step (ProMP's LVC objective, Rothfuss et al. 2019): on support episodes D_i collected by pi_theta_o,
    L_in(theta) = -mean_t[ pi_theta(a|s) / pi_theta_o(a|s) * A_t ],   theta'_i = theta - alpha * grad L_in,
evaluated at theta = theta_o. Its value and gradient equal the vanilla policy gradient; its Hessian is
the one the meta-gradient needs.

Outer step: PPO's clipped surrogate on query episodes D'_i collected by the adapted policy theta'_o,i,
    L_out(theta) = -mean_i mean_t min(r_t A'_t, clip(r_t, 1-eps, 1+eps) A'_t),  r_t = pi_{theta'_i(theta)} / pi_{theta'_o,i},
with theta'_i(theta) re-derived from the fixed support data in every epoch, so the meta-gradient flows
through the adaptation: (I - alpha * Hess L_in) grad L_out(theta') for one step. ``first_order`` drops the Hessian.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import torch
from torch import nn

from metarl_ray.batch import EpisodeBatch, TaskRollouts
from metarl_ray.config import MAMLConfig, PPOConfig
from metarl_ray.policy import Params, log_prob


@dataclass(frozen=True)
class TensorBatch:
    """An EpisodeBatch as tensors on the learner's device."""

    observations: torch.Tensor  # (N, T, obs_dim)
    actions: torch.Tensor  # (N, T, act_dim)
    log_probs: torch.Tensor  # (N, T) of the sampling policy
    advantages: torch.Tensor  # (N, T)

    @staticmethod
    def from_numpy(batch: EpisodeBatch, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> "TensorBatch":
        def to(array: np.ndarray) -> torch.Tensor:
            return torch.tensor(array, device=device, dtype=dtype)  # copies: Ray hands out read-only arrays

        return TensorBatch(to(batch.observations), to(batch.actions), to(batch.log_probs), to(batch.advantages))


@dataclass(frozen=True)
class TaskTensors:
    support: tuple[TensorBatch, ...]  # one per inner step
    query: TensorBatch

    @staticmethod
    def from_rollouts(rollouts: TaskRollouts, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> "TaskTensors":
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
    new_log_probs = log_prob(policy, params, batch.observations, batch.actions)
    ratio = torch.exp(new_log_probs - batch.log_probs)
    return -(ratio * batch.advantages).mean()


def adapt(policy: nn.Module, params: Params, support: Sequence[TensorBatch], inner_lr: float, create_graph: bool) -> Params:
    """One inner SGD step per support batch. With create_graph the result is differentiable in
    ``params`` (second order); without it the steps are constants and d theta'/d theta = I (first order).
    Parameters the policy marks ``fixed_in_inner_loop`` pass through unchanged (still meta-learned)."""
    names = [name for name in params if not policy.fixed_in_inner_loop(name)]
    for batch in support:
        loss = inner_loss(policy, params, batch)
        grads = torch.autograd.grad(loss, [params[name] for name in names], create_graph=create_graph)
        params = {**params, **{name: params[name] - inner_lr * g for name, g in zip(names, grads)}}
    return params


class MetaLearner(Protocol):
    """What the learner needs of a meta-learner; MAML+PPO is the first."""

    optimizer: torch.optim.Optimizer

    def adapt(self, params: Params, support: Sequence[TensorBatch], create_graph: bool) -> Params: ...

    def meta_update(self, tasks: Sequence[TaskTensors]) -> dict[str, float]: ...


class MAMLPPO:
    def __init__(self, policy: nn.Module, maml: MAMLConfig, ppo: PPOConfig) -> None:
        self.policy = policy
        self.maml = maml
        self.ppo = ppo
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=ppo.meta_lr)

    def meta_params(self) -> Params:
        return dict(self.policy.named_parameters())

    def adapt(self, params: Params, support: Sequence[TensorBatch], create_graph: bool) -> Params:
        return adapt(self.policy, params, support, self.maml.inner_lr, create_graph)

    def task_outer_loss(self, meta_params: Params, task: TaskTensors) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        adapted = self.adapt(meta_params, task.support, create_graph=not self.maml.first_order)
        query = task.query
        new_log_probs = log_prob(self.policy, adapted, query.observations, query.actions)
        log_ratio = new_log_probs - query.log_probs
        ratio = torch.exp(log_ratio)
        clipped = ratio.clamp(1.0 - self.ppo.clip_eps, 1.0 + self.ppo.clip_eps)
        loss = -torch.min(ratio * query.advantages, clipped * query.advantages).mean()
        with torch.no_grad():
            stats = {
                # (r - 1) - log r: the low-variance estimator of KL(old || new), Schulman 2020.
                "kl": ((ratio - 1.0) - log_ratio).mean(),
                "clip_fraction": ((ratio - 1.0).abs() > self.ppo.clip_eps).float().mean(),
            }
        return loss, stats

    def outer_loss(self, tasks: Sequence[TaskTensors]) -> torch.Tensor:
        """Mean PPO loss over tasks (for tests and diagnostics; meta_update backpropagates per task)."""
        meta_params = self.meta_params()
        return torch.stack([self.task_outer_loss(meta_params, task)[0] for task in tasks]).mean()

    def meta_update(self, tasks: Sequence[TaskTensors]) -> dict[str, float]:
        """``num_ppo_epochs`` Adam steps on the outer loss; backward per task keeps one task's
        second-order graph in memory at a time."""
        metrics: dict[str, float] = {}
        for epoch in range(self.ppo.num_ppo_epochs):
            self.optimizer.zero_grad(set_to_none=True)
            losses, kls, clips = [], [], []
            for task in tasks:
                loss, stats = self.task_outer_loss(self.meta_params(), task)
                (loss / len(tasks)).backward()
                losses.append(loss.item())
                kls.append(float(stats["kl"]))
                clips.append(float(stats["clip_fraction"]))
            grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.ppo.grad_clip)
            self.optimizer.step()
            if epoch == 0:
                metrics["loss/outer"] = float(np.mean(losses))
                metrics["ppo/grad_norm"] = float(grad_norm)
        metrics["loss/outer_last_epoch"] = float(np.mean(losses))
        metrics["ppo/kl"] = float(np.mean(kls))
        metrics["ppo/clip_fraction"] = float(np.mean(clips))
        return metrics
