"""Trainer plumbing on an in-process Ray: learner placement, worker count, task splitting."""

import pytest

from metarl_ray.config import ConfigError, build_config
from metarl_ray.distributed.session import default_num_rollout_workers, place_learner
from metarl_ray.driver.trainer import split_tasks
from metarl_ray.envs.metaworld import TaskSpec

pytestmark = pytest.mark.usefixtures("local_ray")  # conftest.py: a 2-CPU local Ray for the module


def test_cpu_learner_reserves_no_core_and_cuda_without_gpu_is_a_clear_error():
    placement = place_learner("auto")
    assert placement.device == "cpu" and placement.num_gpus == 0 and placement.num_threads == 2
    with pytest.raises(ConfigError, match="--device='cuda'"):
        place_learner("cuda")


def test_default_workers_are_the_cpus_ray_sees_capped_by_tasks():
    assert default_num_rollout_workers(build_config({"maml": {"num_tasks": 10}})) == 2
    assert default_num_rollout_workers(build_config({"maml": {"num_tasks": 1}})) == 1
    # An actor needs a CPU: asking for more than the cluster has is an error, not a silent hang.
    with pytest.raises(ConfigError, match="--num_rollout_workers=3: the Ray cluster has 2 CPUs"):
        default_num_rollout_workers(build_config({"rollout": {"num_rollout_workers": 3}}))


def test_split_tasks_covers_every_task_once():
    tasks = [TaskSpec(i, "reach-v3", i, None) for i in range(7)]
    chunks = split_tasks(tasks, 3)
    assert [len(c) for c in chunks] == [2, 3, 2]
    assert [t.slot for c in chunks for t in c] == list(range(7))
