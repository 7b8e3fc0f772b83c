"""The learner: meta-parameters, optimizer and the meta-update. Plain PyTorch; ``actors.py`` wraps it."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from metarl_ray.batch import TaskRollouts
from metarl_ray.config import MAMLConfig, PolicyConfig, PPOConfig
from metarl_ray.envs import ACTION_DIM, OBS_DIM
from metarl_ray.maml import MAMLPPO, MetaLearner, TaskTensors
from metarl_ray.policy import build_policy, params_to_numpy


def rollout_metrics(rollouts: Sequence[TaskRollouts]) -> dict[str, float]:
    """Pre-adaptation (first support batch) and post-adaptation (query) return and success."""
    return {
        "rollout/env_steps": float(sum(task.num_steps for task in rollouts)),
        "pre_adapt/return": float(np.mean([task.support[0].episode_returns.mean() for task in rollouts])),
        "pre_adapt/success": float(np.mean([task.support[0].successes.mean() for task in rollouts])),
        "post_adapt/return": float(np.mean([task.query.episode_returns.mean() for task in rollouts])),
        "post_adapt/success": float(np.mean([task.query.successes.mean() for task in rollouts])),
    }


class Learner:
    def __init__(self, policy_config: PolicyConfig, maml_config: MAMLConfig, ppo_config: PPOConfig, seed: int,
                 device: str) -> None:
        self.device = torch.device(device)
        self.ppo_config = ppo_config
        # The same seed gives the same initial meta-parameters on every machine.
        torch.manual_seed(seed)
        self.policy = build_policy(OBS_DIM, ACTION_DIM, policy_config).to(self.device)
        self.algorithm: MetaLearner = MAMLPPO(self.policy, maml_config, ppo_config)

    def get_params(self) -> dict[str, np.ndarray]:
        return params_to_numpy(dict(self.policy.named_parameters()))

    def update(self, rollouts: Sequence[TaskRollouts]) -> dict[str, float]:
        rollouts = sorted(rollouts, key=lambda task: task.slot)  # independent of which worker finished first
        tasks = [TaskTensors.from_rollouts(task, self.device) for task in rollouts]
        metrics = self.algorithm.meta_update(tasks)
        metrics.update(rollout_metrics(rollouts))
        metrics["policy/std"] = float(self.policy.log_std.detach().exp().mean())
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": {k: v.detach().cpu() for k, v in self.policy.state_dict().items()},
            "optimizer": _to_cpu(self.algorithm.optimizer.state_dict()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.algorithm.optimizer.load_state_dict(state["optimizer"])  # Adam moves its state to the params' device
        for group in self.algorithm.optimizer.param_groups:  # a resumed run may be given a new --meta_lr
            group["lr"] = self.ppo_config.meta_lr


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value
