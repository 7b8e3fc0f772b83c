"""Meta-learners behind one protocol (``base``): MAML+PPO (``maml_ppo``) and in-context RL² (``rl2``).

The builders below are the only place that asks which meta-learner a config names.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from metarl_ray.config import MAMLConfig, MetaLearnerConfig, PPOConfig
from metarl_ray.envs.metaworld import OBS_DIM


def policy_input_dim(config: MetaLearnerConfig) -> int:
    """What the policy sees per step: the observation, plus the in-context inputs for RL²."""
    from metarl_ray.algorithms.rl2 import IN_CONTEXT_INPUT_DIM

    return IN_CONTEXT_INPUT_DIM if config.in_context else OBS_DIM


def build_rollout_program(config: MetaLearnerConfig, maml: MAMLConfig, ppo: PPOConfig) -> Any:
    """What a rollout actor runs per task (``base.RolloutProgram``)."""
    from metarl_ray.algorithms.maml_ppo import MAMLRollouts
    from metarl_ray.algorithms.rl2 import InContextRollouts

    return InContextRollouts(config, ppo.gamma) if config.in_context else MAMLRollouts(maml)


def build_meta_learner(config: MetaLearnerConfig, policy: nn.Module, maml: MAMLConfig, ppo: PPOConfig) -> Any:
    """What the learner optimises (``base.MetaLearner``)."""
    from metarl_ray.algorithms.maml_ppo import MAMLPPO
    from metarl_ray.algorithms.rl2 import RL2PPO

    return RL2PPO(policy, ppo, config) if config.in_context else MAMLPPO(policy, maml, ppo)
