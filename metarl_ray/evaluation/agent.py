"""The official evaluation of a benchmark family, run on a meta-learned policy.

Each meta-learner's agent (``algorithms.base.Agent``) speaks Meta-World's ``MetaLearningAgent``
protocol, so the family's own functions (Meta-World's ``metalearning_evaluation`` and ``evaluation``)
score it, unchanged, on the first goals of every test class (ML) or training class (MT). The official ML
figure counts the first 3 finished episodes per task *class* while successful episodes end early, so it
over-counts successes; ``meta_test`` computes the direct per-goal figures with confidence intervals
beside it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from metarl_ray.algorithms.base import Agent, build_meta_policy, builder_for
from metarl_ray.config import TrainConfig
from metarl_ray.envs import env_family
from metarl_ray.training.checkpoint import load_checkpoint, resolve_checkpoint, trained_config

logger = logging.getLogger(__name__)


def build_agent(config: TrainConfig, meta_params: dict[str, np.ndarray], seed: int = 0) -> Agent:
    """The agent of the run's meta-learner, holding ``meta_params``."""
    builder, family = builder_for(config.meta_learner), env_family(config.env)
    policy = build_meta_policy(config.meta_learner, family, config.policy, config.maml)
    policy.load_state_dict({name: torch.tensor(value) for name, value in meta_params.items()})
    return builder.agent(policy, config, family, seed)


def load_agent(path: str | Path, seed: int = 0) -> Agent:
    """The agent of a checkpoint file or a run directory (its latest checkpoint), adapting with the
    learning rates it was trained with."""
    checkpoint = resolve_checkpoint(path)
    if checkpoint is None:
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = load_checkpoint(checkpoint)
    meta_params = {name: tensor.numpy() for name, tensor in state["learner"]["policy"].items()}
    return build_agent(trained_config(state), meta_params, seed)


def evaluate_official(
    agent: Agent,
    config: TrainConfig,
    goals_per_class: int,
    num_evals: int,
    mt_episodes: int,
    seed: int,
    meta_batch_size: int | None = None,
) -> tuple[float, float, dict[str, float]]:
    """The family's own score (Meta-World: ``metalearning_evaluation`` for ML over ``goals_per_class``
    goals per test class held by ``meta_batch_size`` sub-envs, default one per goal, in ``num_evals``
    rounds; ``evaluation`` with ``mt_episodes`` per task for MT)."""
    builder = builder_for(config.meta_learner)
    return env_family(config.env).official_evaluation(
        agent,
        config.env,
        seed,
        builder.official_envs,
        goals_per_class=goals_per_class,
        num_evals=num_evals,
        adaptation_steps=builder.adaptation_protocol(config)["num_inner_steps"] or 1,
        mt_episodes=mt_episodes,
        meta_batch_size=meta_batch_size,
    )
