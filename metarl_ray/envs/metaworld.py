"""Meta-World v3 benchmarks: task sets, single-task environments and seeded task sampling.

Training envs are built one per task slot and given a task with ``set_task``, so the learner decides
exactly which (class, goal) pairs a meta-batch holds. Meta-test tasks of ML benchmarks are only ever
handed out by :meth:`BenchmarkTasks.test_tasks`, which the training loop never calls. With
``validation_classes`` those training classes leave the training set and stand in for the test
classes, so settings can be chosen without ever touching the benchmark's test classes.
"""

from __future__ import annotations

import functools
from typing import Any

from metarl_ray.config import BENCHMARKS, ConfigError, EnvConfig
from metarl_ray.envs.base import TaskSampler, TaskSpec, fixed_task_specs  # noqa: F401  (re-exported)

OBS_DIM = 39
ACTION_DIM = 4
GOALS_PER_CLASS = 50  # Meta-World generates 50 goals per task class and split


@functools.lru_cache(maxsize=1)
def all_task_names() -> tuple[str, ...]:
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return tuple(ALL_V3_ENVIRONMENTS)


# Meta-World draws a class's goals from the benchmark's seed: another seed gives the same training
# classes new goals, which no run of this seed ever trains on (checked disjoint in the tests).
HELD_OUT_GOALS_SEED_OFFSET = 1_000_003


@functools.lru_cache(maxsize=4)
def train_class_names(benchmark: str) -> tuple[str, ...]:
    from metaworld.env_dict import ML10_V3, ML45_V3

    return tuple({"ML10": ML10_V3, "ML45": ML45_V3}[benchmark]["train"])


def check_env_config(env_config: EnvConfig) -> EnvConfig:
    """Meta-World's check of what the config cannot know: the task name of ML1/MT1 and the validation
    classes of ML10/ML45. Raises ConfigError."""
    if env_config.benchmark in ("ML1", "MT1") and env_config.task not in all_task_names():
        raise ConfigError(
            f"--task={env_config.task!r}: expected a Meta-World v3 task such as reach-v3 "
            f"({len(all_task_names())} known)"
        )
    if env_config.validation_classes:
        known = train_class_names(env_config.benchmark)
        unknown = [name for name in env_config.validation_class_names if name not in known]
        if unknown or len(env_config.validation_class_names) >= len(known):
            raise ConfigError(
                f"--validation_classes={env_config.validation_classes!r}: expected fewer than "
                f"{len(known)} of {env_config.benchmark}'s training classes ({', '.join(sorted(known))})"
            )
    return env_config


@functools.lru_cache(maxsize=8)
def _benchmark(benchmark: str, task: str | None, seed: int) -> Any:
    import metaworld

    if benchmark == "ML1":
        return metaworld.ML1(task, seed=seed)
    if benchmark == "MT1":
        return metaworld.MT1(task, seed=seed)
    return getattr(metaworld, benchmark)(seed=seed)


class BenchmarkTasks:
    """The train (and for ML, held-out test) tasks of a benchmark, grouped by class."""

    def __init__(self, env_config: EnvConfig, seed: int) -> None:
        self.env_config = check_env_config(env_config)
        self.benchmark = _benchmark(env_config.benchmark, env_config.task, seed)
        self.seed = seed

    @staticmethod
    def _group(tasks: list[Any]) -> dict[str, list[Any]]:
        grouped: dict[str, list[Any]] = {}
        for task in tasks:
            grouped.setdefault(task.env_name, []).append(task)
        return grouped

    def train_tasks(self) -> dict[str, list[Any]]:
        """The tasks meta-training samples from (without the validation classes)."""
        held_out = self.env_config.validation_class_names
        return {name: tasks for name, tasks in self._group(self.benchmark.train_tasks).items() if name not in held_out}

    def test_tasks(self) -> dict[str, list[Any]]:
        """Held-out meta-test tasks (ML): the test classes, or the validation classes when set (their
        goals, never trained on). MT benchmarks evaluate on their training tasks."""
        if not self.env_config.is_meta_learning:
            return self.train_tasks()
        if self.env_config.validation_classes:
            grouped = self._group(self.benchmark.train_tasks)
            return {name: grouped[name] for name in self.env_config.validation_class_names}
        return self._group(self.benchmark.test_tasks)

    def held_out_goals_of_train_classes(self) -> dict[str, list[Any]]:
        """The training classes (validation classes aside) on goals meta-training never sees: tells
        "did not learn" apart from "did not transfer" to new classes."""
        other = _benchmark(
            self.env_config.benchmark, self.env_config.task, (self.seed + HELD_OUT_GOALS_SEED_OFFSET) % 2**32
        )
        return {name: tasks for name, tasks in self._group(other.train_tasks).items() if name in self.train_tasks()}

    def evaluation_tasks(self, split: str) -> dict[str, list[Any]]:
        """``test``: :meth:`test_tasks`; ``train``: :meth:`held_out_goals_of_train_classes`."""
        if split == "train":
            return self.held_out_goals_of_train_classes()
        if split == "test":
            return self.test_tasks()
        raise ValueError(f"split={split!r}: expected test or train")


def make_task_env(env_name: str, env_config: EnvConfig) -> Any:
    """A bare Meta-World env of one class; call ``set_task`` before ``reset``."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    env = ALL_V3_ENVIRONMENTS[env_name](reward_function_version=env_config.reward_function_version)
    # The env truncates (and refuses to step) at max_path_length; match our episode length.
    env.max_path_length = env_config.max_episode_length
    return _maybe_fast(env, env_config)


def _maybe_fast(env: Any, env_config: EnvConfig) -> Any:
    if not env_config.fast_envs:
        return env
    from metarl_ray.envs.fast_stepping import make_fast

    return make_fast(env)


def make_eval_vector_env(
    env_config: EnvConfig, seed: int, meta_batch_size: int, total_tasks_per_cls: int | None = None
) -> Any:
    """Meta-World's own vector env for its official evaluation functions (ML: test split)."""
    if env_config.validation_classes:  # Meta-World's ML env would hand a validation run the test classes
        raise ValueError(
            "a validation run (--validation_classes) has no official evaluation: Meta-World's "
            "ML env holds the test classes"
        )
    import gymnasium as gym
    import metaworld  # noqa: F401  (registers the Meta-World/* ids)

    common = dict(
        seed=seed,
        vector_strategy="sync",
        max_episode_steps=env_config.max_episode_length,
        reward_function_version=env_config.reward_function_version,
    )
    if env_config.is_meta_learning:
        name = "ML1-test" if env_config.benchmark == "ML1" else f"{env_config.benchmark}-test"
        extra = {"env_name": env_config.task} if env_config.benchmark == "ML1" else {}
        envs = gym.make_vec(
            f"Meta-World/{name}",
            meta_batch_size=meta_batch_size,
            total_tasks_per_cls=total_tasks_per_cls,
            **extra,
            **common,
        )
    elif env_config.benchmark == "MT1":
        kwargs = {k: v for k, v in common.items() if k != "vector_strategy"}
        # Meta-World's evaluation reads infos["final_info"], which only same-step autoreset provides.
        envs = gym.vector.SyncVectorEnv(
            [lambda: gym.make("Meta-World/MT1", env_name=env_config.task, **kwargs)],
            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
        )
    else:
        envs = gym.make_vec(f"Meta-World/{env_config.benchmark}", **common)
    for sub_env in envs.envs:
        sub_env.unwrapped.max_path_length = env_config.max_episode_length
        _maybe_fast(sub_env.unwrapped, env_config)  # in place: the wrappers around it stay Meta-World's
    return envs


class MetaWorld:
    """Meta-World v3 as an ``envs.base.EnvFamily``: its official evaluation is Meta-World's own
    ``metalearning_evaluation`` (ML: the test classes) and ``evaluation`` (MT: the training tasks)."""

    name = "metaworld"
    benchmarks = BENCHMARKS
    observation_dim = OBS_DIM
    action_dim = ACTION_DIM
    goals_per_class = GOALS_PER_CLASS

    def check(self, env_config: EnvConfig) -> EnvConfig:
        return check_env_config(env_config)

    def class_names(self) -> tuple[str, ...]:
        return all_task_names()

    def tasks(self, env_config: EnvConfig, seed: int) -> BenchmarkTasks:
        return BenchmarkTasks(env_config, seed)

    def make_task_env(self, env_name: str, env_config: EnvConfig) -> Any:
        return make_task_env(env_name, env_config)

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
        """ML: ``metalearning_evaluation`` over ``goals_per_class`` goals per test class held by
        ``meta_batch_size`` sub-envs (default: one per goal); each of ``num_evals`` rounds hands the
        sub-envs their next goals. MT: ``evaluation`` with ``mt_episodes`` per task."""
        from metaworld.evaluation import evaluation, metalearning_evaluation

        num_classes = len(BenchmarkTasks(env_config, seed).test_tasks())
        if env_config.is_meta_learning:
            # By default one goal per sub-env: one round visits each of the first goals_per_class goals of
            # every class once. With fewer sub-envs, the rounds go through the goals in turn.
            envs = wrap_envs(
                make_eval_vector_env(
                    env_config,
                    seed,
                    meta_batch_size=meta_batch_size or num_classes * goals_per_class,
                    total_tasks_per_cls=goals_per_class,
                )
            )
            try:
                success, mean_return, per_task = metalearning_evaluation(
                    agent,
                    envs,
                    num_evals=num_evals,
                    adaptation_steps=adaptation_steps,
                    adaptation_episodes=OFFICIAL_ADAPTATION_EPISODES,
                    evaluation_episodes=OFFICIAL_EVALUATION_EPISODES,
                )
            finally:
                envs.close()
        else:
            envs = wrap_envs(make_eval_vector_env(env_config, seed, meta_batch_size=num_classes))
            try:
                agent.init()
                success, mean_return, per_task, _ = evaluation(agent, envs, num_episodes=mt_episodes)
            finally:
                envs.close()
        return float(success), float(mean_return), {name: float(value) for name, value in per_task.items()}


OFFICIAL_ADAPTATION_EPISODES = 10  # Meta-World's protocol
OFFICIAL_EVALUATION_EPISODES = 3
METAWORLD = MetaWorld()
