"""Learner state round trip, and the Meta-World agent reproducing the worker's adaptation."""

import numpy as np
import torch
from metaworld.evaluation import Timestep

from metarl_ray.algorithms.maml_ppo import MAMLAgent, TensorBatch, adapt
from metarl_ray.config import build_config
from metarl_ray.envs.metaworld import BenchmarkTasks, TaskSampler
from metarl_ray.training.learner import Learner
from metarl_ray.training.rollout import RolloutWorker

CONFIG = build_config({"env": {"max_episode_length": 20}, "maml": {"num_tasks": 2, "episodes_per_task": 2}})


def sample(learner, iteration=0):
    worker = RolloutWorker(CONFIG.env, CONFIG.policy, CONFIG.maml, CONFIG.ppo, seed=0)
    specs = TaskSampler(BenchmarkTasks(CONFIG.env, 0).train_tasks(), 0).sample(2)
    return worker.sample(learner.get_params(), specs, iteration)


def test_learner_state_round_trip_keeps_params_and_adam_state_and_takes_a_new_meta_lr():
    learner = Learner(CONFIG.policy, CONFIG.maml, CONFIG.ppo, seed=0, device="cpu")
    learner.update(sample(learner))
    state = learner.state_dict()
    new_lr = build_config({"ppo": {"meta_lr": 5e-4}}).ppo
    restored = Learner(CONFIG.policy, CONFIG.maml, new_lr, seed=1, device="cpu")
    restored.load_state_dict(state)
    for name, value in learner.get_params().items():
        np.testing.assert_array_equal(restored.get_params()[name], value)
    saved_adam = state["optimizer"]["state"]
    for key, entry in restored.optimizer.state_dict()["state"].items():
        torch.testing.assert_close(entry["exp_avg"], saved_adam[key]["exp_avg"])
    assert restored.optimizer.param_groups[0]["lr"] == 5e-4
    # Both continue identically from the same state and data (up to the learning rate).
    batch = sample(learner, iteration=1)
    twin = Learner(CONFIG.policy, CONFIG.maml, CONFIG.ppo, seed=2, device="cpu")
    twin.load_state_dict(state)
    assert learner.update(batch)["loss/outer"] == twin.update(batch)["loss/outer"]


def test_metaworld_agent_adapts_like_the_worker():
    learner = Learner(CONFIG.policy, CONFIG.maml, CONFIG.ppo, seed=0, device="cpu")
    task = sample(learner)[0]
    support = task.support[0]
    agent = MAMLAgent(learner.policy, CONFIG)
    agent.init()
    for episode in range(support.rewards.shape[0]):
        for t in range(support.rewards.shape[1]):
            last = t == support.rewards.shape[1] - 1
            agent.step(
                Timestep(
                    support.observations[None, episode, t],
                    support.actions[None, episode, t],
                    support.rewards[None, episode, t],
                    np.array([False]),
                    np.array([last]),
                    {"log_probs": support.log_probs[None, episode, t]},
                )
            )
    agent.adapt()
    params = {k: v.detach().clone().requires_grad_() for k, v in learner.policy.named_parameters()}
    expected = adapt(
        learner.policy, params, [TensorBatch.from_numpy(support)], CONFIG.maml.inner_lr, create_graph=False
    )
    for name, value in expected.items():
        torch.testing.assert_close(agent._params[0][name], value.detach(), atol=1e-6, rtol=1e-5)
