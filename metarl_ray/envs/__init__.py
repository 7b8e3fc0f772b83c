"""Benchmark families behind one interface (``base.EnvFamily``); Meta-World (``metaworld``) is the first."""

from __future__ import annotations

from metarl_ray.config import ConfigError, EnvConfig
from metarl_ray.envs.base import EnvFamily, TaskSampler, TaskSpec, fixed_task_specs
from metarl_ray.envs.metaworld import METAWORLD

FAMILIES: tuple[EnvFamily, ...] = (METAWORLD,)
# The most goals any family has per class: the bound of the goal flags before a run names its family.
MAX_GOALS_PER_CLASS = max(family.goals_per_class for family in FAMILIES)

__all__ = ["FAMILIES", "MAX_GOALS_PER_CLASS", "EnvFamily", "TaskSampler", "TaskSpec", "env_family", "fixed_task_specs"]


def env_family(env_config: EnvConfig) -> EnvFamily:
    """The family that serves ``env_config.benchmark``."""
    for family in FAMILIES:
        if env_config.benchmark in family.benchmarks:
            return family
    raise ConfigError(f"--env_name={env_config.benchmark!r}: no benchmark family serves it")
