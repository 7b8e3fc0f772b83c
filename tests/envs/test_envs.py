"""Meta-World task sets: held-out tasks never mix with training tasks; same seed, same tasks."""

import pickle

import numpy as np

from metarl_ray.config import EnvConfig
from metarl_ray.envs.metaworld import BenchmarkTasks, TaskSampler


def goals(tasks_by_class):
    return {
        (name, pickle.loads(task.data)["rand_vec"].tobytes())
        for name, tasks in tasks_by_class.items()
        for task in tasks
    }


def test_ml10_train_and_test_classes_are_disjoint():
    tasks = BenchmarkTasks(EnvConfig(benchmark="ML10", task=None), seed=0)
    train, test = tasks.train_tasks(), tasks.test_tasks()
    assert len(train) == 10 and len(test) == 5
    assert not set(train) & set(test)


def test_ml1_held_out_goals_never_appear_in_training_and_sampler_only_draws_train_goals():
    tasks = BenchmarkTasks(EnvConfig(benchmark="ML1", task="reach-v3"), seed=3)
    train, test = tasks.train_tasks(), tasks.test_tasks()
    assert len(train["reach-v3"]) == 50 and len(test["reach-v3"]) == 50
    assert not goals(train) & goals(test)
    sampler = TaskSampler(train, seed=3)
    sampled = {
        (s.env_name, pickle.loads(s.task.data)["rand_vec"].tobytes()) for _ in range(20) for s in sampler.sample(10)
    }
    assert sampled <= goals(train) and not sampled & goals(test)


def test_same_seed_same_tasks_and_goals():
    def draw(seed):
        sampler = TaskSampler(
            BenchmarkTasks(EnvConfig(benchmark="ML1", task="reach-v3"), seed=seed).train_tasks(), seed
        )
        return [
            (s.env_name, s.goal_index, pickle.loads(s.task.data)["rand_vec"].tolist())
            for _ in range(3)
            for s in sampler.sample(5)
        ]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_sampler_state_restores_the_same_future_batches():
    train = BenchmarkTasks(EnvConfig(benchmark="ML1", task="reach-v3"), seed=0).train_tasks()
    sampler = TaskSampler(train, seed=1)
    sampler.sample(4)
    state = sampler.state_dict()
    expected = [s.goal_index for s in sampler.sample(4)]
    restored = TaskSampler(train, seed=999)
    restored.load_state_dict(state)
    assert [s.goal_index for s in restored.sample(4)] == expected


def test_meta_batches_balance_classes():
    train = BenchmarkTasks(EnvConfig(benchmark="ML10", task=None), seed=0).train_tasks()
    names = [s.env_name for s in TaskSampler(train, seed=0).sample(20)]
    assert sorted(np.unique(names, return_counts=True)[1]) == [2] * 10


VALIDATION = EnvConfig(benchmark="ML10", task=None, validation_classes="drawer-close-v3,window-open-v3")


def test_validation_classes_leave_training_and_stand_in_for_the_test_classes():
    tasks = BenchmarkTasks(VALIDATION, seed=0)
    train, held_out = tasks.train_tasks(), tasks.test_tasks()
    assert len(train) == 8 and sorted(held_out) == ["drawer-close-v3", "window-open-v3"]
    assert all(len(goal_list) == 50 for goal_list in held_out.values())
    test_classes = set(BenchmarkTasks(EnvConfig(benchmark="ML10", task=None), seed=0).test_tasks())
    assert not (set(train) | set(held_out)) & test_classes  # a validation run never sees a test class
    sampled = {s.env_name for _ in range(10) for s in TaskSampler(train, seed=0).sample(16)}
    assert sampled == set(train)
    names = [s.env_name for s in TaskSampler(train, seed=0).sample(16)]
    assert sorted(np.unique(names, return_counts=True)[1]) == [2] * 8


def test_held_out_goals_of_the_training_classes_are_goals_training_never_draws():
    tasks = BenchmarkTasks(VALIDATION, seed=0)
    train, unseen = tasks.train_tasks(), tasks.evaluation_tasks("train")
    assert sorted(unseen) == sorted(train) and all(len(goal_list) == 50 for goal_list in unseen.values())
    assert not goals(train) & goals(unseen)
    assert tasks.evaluation_tasks("test") == tasks.test_tasks()


def test_validation_classes_that_are_not_training_classes_are_a_one_line_error():
    import pytest

    from metarl_ray.config import ConfigError
    from metarl_ray.envs.metaworld import check_env_config

    with pytest.raises(ConfigError, match=r"^--validation_classes='drawer-open-v3': expected fewer than 10 of ML10's"):
        check_env_config(EnvConfig(benchmark="ML10", task=None, validation_classes="drawer-open-v3"))  # a test class
    with pytest.raises(ConfigError, match=r"^--validation_classes='reach-v3': only ML10 and ML45"):
        EnvConfig(benchmark="MT10", task=None, validation_classes="reach-v3")
    with pytest.raises(ConfigError, match=r"^--validation_classes='reach-v3,reach-v3': expected distinct"):
        EnvConfig(benchmark="ML10", task=None, validation_classes="reach-v3,reach-v3")
