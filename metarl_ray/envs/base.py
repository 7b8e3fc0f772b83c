"""What the rest of the package needs of a benchmark family (Meta-World is the first, ``metaworld``).

A family gives its observation and action sizes, its train and test tasks, one env per task class, and
its own official evaluation. The driver, the rollout workers, the learner and the evaluator reach a
family only through ``metarl_ray.envs.env_family`` and this protocol, so a new family is a new module
here, not an edit of the modules that use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from metarl_ray.config import EnvConfig


@dataclass(frozen=True)
class TaskSpec:
    """One (task class, goal) pair: what a rollout worker needs to set up an env."""

    slot: int  # position in the meta-batch; seeds the action noise, so results do not depend on workers
    env_name: str  # the task class, e.g. "reach-v3"
    goal_index: int  # index of the goal within its class's task list
    task: Any  # the family's task object (picklable), handed to the env's ``set_task``


class TaskSampler:
    """Samples meta-batches of training tasks from a seeded generator whose state is checkpointed."""

    def __init__(self, tasks_by_class: dict[str, list[Any]], seed: int) -> None:
        self.tasks_by_class = tasks_by_class
        self.class_names = sorted(tasks_by_class)
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def sample(self, num_tasks: int) -> list[TaskSpec]:
        # Classes are balanced within a meta-batch (as Meta-World's own ML envs do), goals random.
        repeats = -(-num_tasks // len(self.class_names))
        order = np.concatenate([self.rng.permutation(len(self.class_names)) for _ in range(repeats)])[:num_tasks]
        specs = []
        for slot, class_index in enumerate(order):
            name = self.class_names[class_index]
            goal_index = int(self.rng.integers(len(self.tasks_by_class[name])))
            specs.append(TaskSpec(slot, name, goal_index, self.tasks_by_class[name][goal_index]))
        return specs

    def state_dict(self) -> dict[str, Any]:
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["bit_generator"]


def fixed_task_specs(tasks_by_class: dict[str, list[Any]], goals_per_class: int) -> list[TaskSpec]:
    """The first ``goals_per_class`` goals of every class: a fixed evaluation set."""
    specs = []
    for name in sorted(tasks_by_class):
        for goal_index, task in enumerate(tasks_by_class[name][:goals_per_class]):
            specs.append(TaskSpec(len(specs), name, goal_index, task))
    return specs


class BenchmarkSplits(Protocol):
    """A benchmark's goals by task class, for one seed."""

    def train_tasks(self) -> dict[str, list[Any]]:
        """The goals meta-training samples from."""
        ...

    def test_tasks(self) -> dict[str, list[Any]]:
        """Held-out goals (of held-out classes where the benchmark has them): only for meta-testing."""
        ...

    def held_out_goals_of_train_classes(self) -> dict[str, list[Any]]:
        """Goals of the training classes that meta-training never sees."""
        ...

    def evaluation_tasks(self, split: str) -> dict[str, list[Any]]:
        """``test`` or ``train`` (``config.EVAL_SPLITS``)."""
        ...


class EnvFamily(Protocol):
    """A benchmark family: sizes, tasks, envs and the official evaluation."""

    name: str
    benchmarks: tuple[str, ...]  # the ``--env_name`` values it serves
    observation_dim: int
    action_dim: int
    goals_per_class: int  # goals the family generates per task class and split

    def check(self, env_config: EnvConfig) -> EnvConfig:
        """What the config cannot check alone (task names, say); raises ConfigError."""
        ...

    def class_names(self) -> tuple[str, ...]:
        """Every task class of the family, in a fixed order (it keys the evaluation noise)."""
        ...

    def tasks(self, env_config: EnvConfig, seed: int) -> BenchmarkSplits: ...

    def make_task_env(self, env_name: str, env_config: EnvConfig) -> Any:
        """A bare env of one class; ``set_task`` before ``reset``."""
        ...

    def official_evaluation(
        self,
        agent: Any,
        env_config: EnvConfig,
        seed: int,
        wrap_envs: Any,
        goals_per_class: int,
        num_evals: int,
        adaptation_steps: int,
        mt_episodes: int,
        meta_batch_size: int | None = None,
    ) -> tuple[float, float, dict[str, float]]:
        """The family's own score of ``agent`` (success rate, mean return, per task class); the envs it
        builds pass through ``wrap_envs`` (a meta-learner's inputs) first."""
        ...
