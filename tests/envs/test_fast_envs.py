"""The fast Meta-World stepping path equals stock Meta-World bit for bit (issue 9).

Every v3 class runs full 500-step episodes side by side, stock and fast, from the same task and actions:
random actions on a hidden-goal (ML) task, then after ``set_task`` and ``reset`` Meta-World's scripted
expert on a visible-goal (MT) task, so contacts, grasps and successes happen. Observations, rewards,
terminated/truncated and every info value must be ``np.array_equal``, no tolerance. The slow test runs
more goals per class (``make test-slow``).
"""

from __future__ import annotations

import functools
import logging
import pickle
import warnings

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from metarl_ray.algorithms.maml_ppo import MAMLAgent
from metarl_ray.config import EnvConfig, TrainConfig
from metarl_ray.envs import fast_stepping as fast_envs
from metarl_ray.envs.metaworld import ACTION_DIM, OBS_DIM, all_task_names, make_eval_vector_env, make_task_env
from metarl_ray.evaluation.agent import evaluate_official
from metarl_ray.policies import build_policy

EPISODE_STEPS = 500


GOAL_SEED = 7


@functools.cache
def sample_goals(env_name: str, count: int) -> tuple:
    """``count`` visible-goal tasks of one class, drawn as Meta-World's own benchmarks draw them (a reset
    with the goal unfrozen draws one from the class's random reset space) but without the other 49."""
    import metaworld
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    env_class = ALL_V3_ENVIRONMENTS[env_name]
    env = env_class()
    env._freeze_rand_vec = False
    env._set_task_called = True
    saved_state = np.random.get_state()
    np.random.seed(GOAL_SEED)  # Meta-World draws goals from numpy's global generator
    try:
        rand_vecs = []
        for _ in range(count):
            env.reset()
            rand_vecs.append(env._last_rand_vec.copy())
    finally:
        np.random.set_state(saved_state)
        env.close()
    return tuple(
        metaworld._encode_task(env_name, dict(rand_vec=vec, env_cls=env_class, partially_observable=False))
        for vec in rand_vecs
    )


def hidden_goal(task):
    """The same goal as an ML task sees it: goal zeroed in the observation."""
    data = pickle.loads(task.data)
    data["partially_observable"] = True
    return task._replace(data=pickle.dumps(data))


def assert_same_step(stock_out, fast_out, where: str) -> None:
    (obs_a, reward_a, terminated_a, truncated_a, info_a) = stock_out
    (obs_b, reward_b, terminated_b, truncated_b, info_b) = fast_out
    assert obs_a.dtype == obs_b.dtype and np.array_equal(obs_a, obs_b), f"{where}: observation"
    assert type(reward_a) is type(reward_b) and np.array_equal(reward_a, reward_b), (
        f"{where}: reward {reward_a!r} != {reward_b!r}"
    )
    assert (terminated_a, truncated_a) == (terminated_b, truncated_b), f"{where}: terminated/truncated"
    assert info_a.keys() == info_b.keys(), f"{where}: info keys"
    for key in info_a:
        assert np.array_equal(info_a[key], info_b[key]), f"{where}: info[{key!r}] {info_a[key]!r} != {info_b[key]!r}"


def run_side_by_side(env_name: str, episodes: list[tuple[object, str]], seed: int = 0) -> dict[str, float]:
    """Step a stock and a fast env through the same episodes; returns how often the expert succeeded."""
    from metaworld.policies import ENV_POLICY_MAP

    config = EnvConfig(benchmark="MT1", task=env_name)
    stock = make_task_env(env_name, EnvConfig(benchmark="MT1", task=env_name, fast_envs=False))
    fast = make_task_env(env_name, config)
    assert type(fast).__name__ == f"Fast{type(stock).__name__}" and isinstance(fast, type(stock))
    rng = np.random.default_rng(seed)
    expert = ENV_POLICY_MAP[env_name]()
    successes = {"random": 0.0, "expert": 0.0}
    for episode, (task, actor) in enumerate(episodes):
        stock.set_task(task)
        fast.set_task(task)
        (obs_a, info_a), (obs_b, info_b) = stock.reset(), fast.reset()
        assert np.array_equal(obs_a, obs_b) and info_a.keys() == info_b.keys(), f"{env_name} episode {episode}: reset"
        for step in range(EPISODE_STEPS):
            if actor == "random":
                action = rng.uniform(-1.0, 1.0, ACTION_DIM).astype(np.float32)
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "Constant(s) may be too high": the expert's own clipping note
                    action = expert.get_action(obs_a)
            stock_out, fast_out = stock.step(action), fast.step(action)
            assert_same_step(stock_out, fast_out, f"{env_name} episode {episode} ({actor}) step {step}")
            obs_a = stock_out[0]
            successes[actor] = max(successes[actor], float(stock_out[4]["success"]))
        assert stock_out[3], "a full episode ends truncated"
    return successes


@pytest.mark.parametrize("env_name", all_task_names())
def test_fast_env_equals_stock_bit_for_bit(env_name):
    goals = sample_goals(env_name, 2)
    run_side_by_side(env_name, [(hidden_goal(goals[0]), "random"), (goals[1], "expert")])


def test_the_sweep_exercises_success_and_contacts():
    # A sweep in which nothing happens would prove little: the expert must succeed on most classes.
    expert_successes = [
        run_side_by_side(name, [(sample_goals(name, 2)[1], "expert")])["expert"]
        for name in ("pick-place-v3", "door-open-v3", "assembly-v3")
    ]
    assert expert_successes == [1.0, 1.0, 1.0]


@pytest.mark.slow
@pytest.mark.parametrize("env_name", all_task_names())
def test_fast_env_equals_stock_on_more_goals(env_name):
    goals = sample_goals(env_name, 7)
    episodes = [
        (hidden_goal(goals[i]) if i % 2 else goals[i], actor) for i in range(2, 7) for actor in ("random", "expert")
    ]
    run_side_by_side(env_name, episodes, seed=1)


def test_quaternion_equals_scipy_bit_for_bit():
    rng = np.random.default_rng(0)
    matrices = list(Rotation.random(20_000, rng=rng).as_matrix())
    # near the branch points of the method (trace vs diagonal choice) and half turns
    for axis in np.eye(3):
        for angle in (np.pi, np.pi - 1e-9, 1e-9, 2.0, 0.0):
            matrices.append(Rotation.from_rotvec(axis * angle).as_matrix())
    for matrix in matrices:
        assert np.array_equal(fast_envs.quat_from_rotation_matrix(matrix), Rotation.from_matrix(matrix).as_quat())
    # not orthogonal: handed to scipy, which orthogonalises or raises, exactly as stock would
    skewed = matrices[0] * 1.001
    assert np.array_equal(fast_envs.quat_from_rotation_matrix(skewed), Rotation.from_matrix(skewed).as_quat())
    with pytest.raises(ValueError):
        fast_envs.quat_from_rotation_matrix(-np.eye(3))


def test_scalar_tolerance_equals_reward_utils():
    from metaworld.utils import reward_utils

    rng = np.random.default_rng(0)
    for _ in range(50_000):
        lower = float(rng.uniform(0.0, 0.05))
        upper = lower + float(rng.uniform(0.0, 0.1))
        x = np.float64(rng.uniform(-0.2, 0.8))
        margin = np.float64(rng.uniform(0.0, 0.5)) if rng.random() > 0.05 else 0.0
        expected = reward_utils.tolerance(x, bounds=(lower, upper), margin=margin, sigmoid="long_tail")
        assert fast_envs._long_tail_tolerance(x, lower, upper, margin) == expected
    assert np.isnan(fast_envs._long_tail_tolerance(np.float64("nan"), 0.0, 0.1, 0.5))


def test_fast_env_pickles_by_reference_and_unpickles_like_stock():
    task = sample_goals("pick-place-v3", 1)[0]
    envs = []
    for fast in (False, True):
        env = make_task_env("pick-place-v3", EnvConfig(benchmark="MT1", task="pick-place-v3", fast_envs=fast))
        env.set_task(task)
        env.reset()
        envs.append(pickle.loads(pickle.dumps(env)))  # Meta-World's own __getstate__/__setstate__
    stock, fast = envs
    assert (
        type(fast).__name__ == "FastSawyerPickPlaceEnvV3" and type(fast).__module__ == "metarl_ray.envs.fast_stepping"
    )
    for step in range(20):
        action = np.array([0.1, -0.2, 0.3, 1.0], dtype=np.float32)
        assert_same_step(stock.step(action), fast.step(action), f"after unpickling, step {step}")


def test_unverified_versions_fall_back_to_stock_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(fast_envs.importlib.metadata, "version", lambda package: "9.9.9")
    fast_envs.fast_path_available.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="metarl_ray.envs.fast_stepping"):
            envs = [make_task_env("reach-v3", EnvConfig(benchmark="MT1", task="reach-v3")) for _ in range(2)]
        assert [type(env).__name__ for env in envs] == ["SawyerReachEnvV3"] * 2
        warnings_logged = [r.getMessage() for r in caplog.records if r.name == "metarl_ray.envs.fast_stepping"]
        assert warnings_logged == [
            "fast_envs: metaworld 9.9.9 is not a verified version (3.1.1); using stock Meta-World envs"
        ]
    finally:
        fast_envs.fast_path_available.cache_clear()


@pytest.mark.parametrize("benchmark", ["ML1", "MT1"])
def test_official_evaluation_gives_the_same_numbers_on_the_fast_path(benchmark):
    results = []
    for fast in (False, True):
        env = EnvConfig(benchmark=benchmark, task="reach-v3", max_episode_length=60, fast_envs=fast)
        config = TrainConfig(env=env)
        if benchmark == "MT1":  # ML vector envs go through the same conversion loop; building one costs seconds
            vector_env = make_eval_vector_env(env, seed=0, meta_batch_size=1)
            assert vector_env.envs[0].unwrapped.__class__.__name__.startswith("Fast") == fast
            vector_env.close()
        torch.manual_seed(0)
        agent = MAMLAgent(build_policy(OBS_DIM, ACTION_DIM, config.policy), config, seed=0)
        results.append(evaluate_official(agent, config, goals_per_class=2, num_evals=1, mt_episodes=3, seed=0))
    assert results[0] == results[1]
    assert results[0][1] != 0.0  # the mean return: a number both paths had to reproduce


def test_fast_envs_is_on_by_default_and_no_fast_envs_turns_it_off():
    from metarl_ray.cli.main import FIXED_ON_RESUME, _train_config

    assert _train_config([])[0].env.fast_envs is True
    assert _train_config(["--no_fast_envs"])[0].env.fast_envs is False
    assert _train_config(["--no-fast-envs"])[0].env.fast_envs is False
    assert "fast_envs" not in FIXED_ON_RESUME["env"]  # identical outputs: a resumed run may switch it
    stock = make_task_env("reach-v3", _train_config(["--no_fast_envs", "--task", "reach-v3"])[0].env)
    assert type(stock).__name__ == "SawyerReachEnvV3"
