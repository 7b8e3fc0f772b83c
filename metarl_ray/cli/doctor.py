"""``metarl doctor``: check the install - versions, a few env steps, a Ray start, the learner device."""

from __future__ import annotations

import importlib.metadata
import platform
import time
from collections.abc import Callable


def _check(name: str, probe: Callable[[], str]) -> bool:
    started = time.perf_counter()
    try:
        detail = probe()
    except Exception as error:  # doctor reports every failure and carries on to the next check
        print(f"FAIL {name}: {type(error).__name__}: {error}")
        return False
    print(f"ok   {name}: {detail} ({time.perf_counter() - started:.1f}s)")
    return True


def _versions() -> str:
    packages = ("torch", "ray", "metaworld", "gymnasium", "mujoco", "pyarrow", "numpy")
    return f"python {platform.python_version()}, " + ", ".join(f"{p} {importlib.metadata.version(p)}" for p in packages)


def _env_steps() -> str:
    import numpy as np

    from metarl_ray.config import EnvConfig
    from metarl_ray.envs import env_family

    config = EnvConfig(benchmark="ML1", task="reach-v3")
    family = env_family(config)
    task = family.tasks(config, seed=0).train_tasks()["reach-v3"][0]
    env = family.make_task_env("reach-v3", config)
    env.set_task(task)
    obs, _ = env.reset()
    started = time.perf_counter()
    for _ in range(200):
        obs, reward, _, _, info = env.step(np.zeros(family.action_dim))
    rate = 200 / (time.perf_counter() - started)
    if not np.all(np.isfinite(obs)):
        raise RuntimeError("non-finite observation")
    from metarl_ray.envs.fast_stepping import unsupported_reason

    path = "fast path" if type(env).__name__.startswith("Fast") else f"stock envs ({unsupported_reason()})"
    return f"reach-v3 obs {obs.shape}, {rate:.0f} steps/s, {path}"


def _ray() -> str:
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        value = ray.get(ray.remote(lambda: 42).remote())
        return f"local Ray started, task returned {value}"
    finally:
        ray.shutdown()


def _device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"CUDA {torch.cuda.get_device_name(0)}; the learner will use it (--device auto)"
    return "no CUDA device; the learner will use the CPU"


def run_doctor() -> int:
    results = [
        _check("versions", _versions),
        _check("meta-world", _env_steps),
        _check("ray", _ray),
        _check("device", _device),
    ]
    print("all checks passed" if all(results) else "some checks failed")
    return 0 if all(results) else 1
