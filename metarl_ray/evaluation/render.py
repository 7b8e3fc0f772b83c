"""``metarl render``: a video of a meta-policy on one held-out goal, before (left) and after (right)
adaptation, side by side.

Both halves are mean-action episodes, as in ``metarl eval``'s mean-action rule; the adaptation in
between uses the evaluation's own adaptation episodes and noise (``RolloutWorker.adapt_to_goal``).
Frames come from MuJoCo's offscreen renderer. Without a display, MuJoCo needs a headless OpenGL:
OSMesa (software, any machine; ``make install`` installs it on Debian/Ubuntu when run as root) or EGL
(a GPU). ``MUJOCO_GL`` picks one; unset, OSMesa is used when its library is found, else EGL.
"""

from __future__ import annotations

import ctypes.util
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from metarl_ray.config import ConfigError


def choose_gl_backend() -> str:
    """Set MUJOCO_GL (and PyOpenGL's platform to match) before MuJoCo is first imported."""
    backend = os.environ.get("MUJOCO_GL") or ("osmesa" if ctypes.util.find_library("OSMesa") else "egl")
    os.environ["MUJOCO_GL"] = backend
    if backend in ("osmesa", "egl"):
        os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    return backend


@dataclass(frozen=True)
class RenderedGoal:
    task: str
    goal_index: int
    num_frames: int
    pre_success: bool
    post_success: bool
    pre_return: float
    post_return: float


def render_goal(
    checkpoint: Any, task: str | None, goal_index: int, out: str, camera: str, size: int, fps: int
) -> RenderedGoal:
    backend = choose_gl_backend()
    import imageio.v2 as imageio
    import torch

    from metarl_ray.evaluation.meta_test import goal_specs, load_run
    from metarl_ray.training.rollout import EvalPlan, RolloutWorker
    from metarl_ray.training.storage import StoragePath

    run = load_run(checkpoint)
    config = run.config
    specs = goal_specs(run, goal_index + 1)  # the first goal_index + 1 goals of every class
    classes = sorted({spec.env_name for spec in specs})
    task = task or classes[0]
    if task not in classes:
        raise ConfigError(
            f"--task={task!r}: not a meta-test class of this run's benchmark; expected one of {', '.join(classes)}"
        )
    spec = next(s for s in specs if s.env_name == task and s.goal_index == goal_index)
    worker = RolloutWorker(config.env, config.policy, config.maml, config.ppo, run.seed, config.meta_learner)
    meta = {name: torch.tensor(value) for name, value in run.meta_params.items()}
    adapted = worker.adapt_to_goal(run.meta_params, spec, EvalPlan(), run.seed, run.inner_lr)
    env = _render_env(task, spec.task, config, camera, size, backend)
    try:
        pre_frames, pre_return, pre_success = _mean_action_episode(worker, env, meta, config.env.max_episode_length)
        post_frames, post_return, post_success = _mean_action_episode(
            worker, env, adapted, config.env.max_episode_length
        )
    finally:
        env.close()
    # MuJoCo's offscreen buffer is bottom-up: flipped to the usual top-down image.
    frames = [np.concatenate([pre, post], axis=1)[::-1] for pre, post in zip(pre_frames, post_frames)]
    # ffmpeg writes to a file; the finished video is then moved into place atomically (a path or a URI).
    with tempfile.TemporaryDirectory(prefix="metarl-render-") as scratch:
        encoded = os.path.join(scratch, "video.mp4")
        # yuv420p and even sizes: the MP4 every player opens.
        imageio.mimwrite(
            encoded, frames, format="FFMPEG", fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=2
        )
        with open(encoded, "rb") as handle:
            StoragePath.parse(out).write_bytes(handle.read())
    return RenderedGoal(task, goal_index, len(frames), pre_success, post_success, pre_return, post_return)


def _render_env(task: str, task_data: Any, config: Any, camera: str, size: int, backend: str) -> Any:
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    env = ALL_V3_ENVIRONMENTS[task](
        reward_function_version=config.env.reward_function_version,
        render_mode="rgb_array",
        camera_name=camera,
        width=size,
        height=size,
    )
    env.max_path_length = config.env.max_episode_length
    env.set_task(task_data)
    try:
        env.reset()
        env.render()
    except Exception as error:  # noqa: BLE001 - any OpenGL failure means the same fix
        env.close()
        raise ConfigError(
            f"MUJOCO_GL={backend!r}: MuJoCo cannot render offscreen ({type(error).__name__}); expected "
            "OSMesa (Debian/Ubuntu: apt-get install libosmesa6) or MUJOCO_GL=egl on a GPU machine"
        ) from None
    return env


def _mean_action_episode(worker: Any, env: Any, params: dict, horizon: int) -> tuple[list[np.ndarray], float, bool]:
    """Frames (the reset state, then after every step), return and success of one mean-action episode."""
    import torch

    step = worker.actor.bind([params])
    obs = env.reset()[0].astype(np.float32)[None]
    state = worker.actor.initial_state(1)
    frames, total, success = [env.render().copy()], 0.0, False
    for t in range(horizon):
        with torch.no_grad():
            mean, _, state = step(torch.from_numpy(obs), state, torch.tensor([t == 0]))
        next_obs, reward, _, _, info = env.step(mean.numpy()[0])
        obs = np.asarray(next_obs, dtype=np.float32)[None]
        total += float(reward)
        success |= bool(info["success"])
        frames.append(env.render().copy())
    return frames, total, success
