"""Meta-test evaluation: Meta-World's official protocol and a direct per-(task, goal) success rate.

Both evaluate the same goals: the first ``goals_per_class`` held-out goals of every test class (ML) or
training class (MT). The official ML figure (``metalearning_evaluation``) counts the first 3 finished
episodes per task *class* while successful episodes end early, so it over-counts successes; the direct
figure runs every goal for exactly 3 full evaluation episodes after adaptation and averages per goal.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarl_ray.advantages import compute_advantages
from metarl_ray.batch import EpisodeBatch
from metarl_ray.checkpoint import load_checkpoint, resolve_checkpoint
from metarl_ray.config import TrainConfig, config_from_dict
from metarl_ray.envs import ACTION_DIM, OBS_DIM, BenchmarkTasks, fixed_task_specs, make_eval_vector_env
from metarl_ray.maml import TensorBatch, adapt
from metarl_ray.policy import BatchedActor, Params, build_policy, detached_params, gaussian_log_prob
from metarl_ray.rollout import RolloutWorker, SamplePlan

logger = logging.getLogger(__name__)
Step = tuple[np.ndarray, np.ndarray, float, float]  # observation, action, reward, sampling log-prob
ADAPTATION_EPISODES = 10  # Meta-World's protocol
EVALUATION_EPISODES = 3


class MAMLAgent:
    """A MAML policy speaking Meta-World's ``MetaLearningAgent`` protocol, one task per sub-env:
    ``adapt_action`` samples and ``step`` records episodes per sub-env; ``adapt`` takes one inner step
    per sub-env on its episodes; ``eval_action`` acts with the mean of each sub-env's adapted policy."""

    def __init__(self, policy: torch.nn.Module, config: TrainConfig, seed: int = 0) -> None:
        self.policy = policy
        self.config = config
        self.meta_params = detached_params(policy)
        self.actor = BatchedActor(policy)
        self.generator = torch.Generator().manual_seed(seed)
        self.init()

    @classmethod
    def from_checkpoint(cls, path: str | Path, seed: int = 0) -> "MAMLAgent":
        checkpoint = resolve_checkpoint(path)
        if checkpoint is None:
            raise FileNotFoundError(f"no checkpoint at {path}")
        state = load_checkpoint(checkpoint)
        config = config_from_dict(state["config"])
        policy = build_policy(OBS_DIM, ACTION_DIM, config.policy)
        policy.load_state_dict(state["learner"]["policy"])
        return cls(policy, config, seed)

    def init(self) -> None:
        self._params: list[Params] | None = None  # per sub-env, set on first use
        self._open: list[list[Step]] = []
        self._episodes: list[list[list[Step]]] = []

    def _params_for(self, num_envs: int) -> list[Params]:
        if self._params is None:
            self._params = [self.meta_params] * num_envs
            self._open = [[] for _ in range(num_envs)]
            self._episodes = [[] for _ in range(num_envs)]
            self._rebind()
        return self._params

    def _rebind(self) -> None:
        """New parameters: bind them once and restart every sub-env's recurrent state."""
        self._step_fn = self.actor.bind(self._params)
        self._state = self.actor.initial_state(len(self._params))
        self._episode_start = torch.ones(len(self._params), dtype=torch.bool)

    def _distribution(self, observations: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        obs = torch.as_tensor(observations, dtype=torch.float32)
        self._params_for(len(obs))
        with torch.no_grad():
            mean, log_std, self._state = self._step_fn(obs, self._state, self._episode_start)
        self._episode_start = torch.zeros_like(self._episode_start)
        return mean, log_std

    def adapt_action(self, observations: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        mean, log_std = self._distribution(observations)
        actions = mean + log_std.exp() * torch.randn(mean.shape, generator=self.generator)
        # The inner step's importance ratio needs the sampling log-probs (see maml.inner_loss).
        log_probs = gaussian_log_prob(mean, log_std, actions)
        return actions.numpy().astype(np.float64), {"log_probs": log_probs.numpy()}

    def step(self, timestep: Any) -> None:
        self._params_for(len(timestep.observation))
        for env_index in range(len(timestep.observation)):
            self._open[env_index].append((timestep.observation[env_index], timestep.action[env_index],
                                          float(timestep.reward[env_index]),
                                          float(timestep.aux_policy_outputs["log_probs"][env_index])))
            if timestep.terminated[env_index] or timestep.truncated[env_index]:
                self._episodes[env_index].append(self._open[env_index])
                self._open[env_index] = []
                self._episode_start[env_index] = True  # the vector env has already reset this sub-env

    def adapt(self) -> None:
        params = self._params_for(len(self._episodes))
        for env_index, episodes in enumerate(self._episodes):
            if episodes:
                batch = episodes_to_batch(episodes, self.config)
                leaf = {name: p.detach().requires_grad_(True) for name, p in params[env_index].items()}
                adapted = adapt(self.policy, leaf, [TensorBatch.from_numpy(batch)], self.config.maml.inner_lr, False)
                params[env_index] = {name: p.detach() for name, p in adapted.items()}
        self._open = [[] for _ in self._episodes]
        self._episodes = [[] for _ in self._episodes]
        self._rebind()

    def eval_action(self, observations: np.ndarray) -> np.ndarray:
        return self._distribution(observations)[0].numpy().astype(np.float64)

    def reset(self, env_mask: np.ndarray) -> None:
        """Sub-envs in ``env_mask`` start a new episode: their recurrent state restarts on the next action."""
        self._params_for(len(env_mask))
        self._episode_start = self._episode_start | torch.as_tensor(np.asarray(env_mask, dtype=bool))


def episodes_to_batch(episodes: list[list[Step]], config: TrainConfig) -> EpisodeBatch:
    horizon = min(len(episode) for episode in episodes)  # equal unless an episode ended early
    obs = np.array([[step[0] for step in ep[:horizon]] for ep in episodes], dtype=np.float32)
    actions = np.array([[step[1] for step in ep[:horizon]] for ep in episodes], dtype=np.float32)
    rewards = np.array([[step[2] for step in ep[:horizon]] for ep in episodes], dtype=np.float32)
    advantages = compute_advantages(obs, rewards, config.ppo.gamma, config.ppo.gae_lambda)
    log_probs = np.array([[step[3] for step in ep[:horizon]] for ep in episodes], dtype=np.float32)
    return EpisodeBatch(obs, actions, rewards, log_probs, advantages, np.zeros(len(episodes), dtype=bool))


@dataclass
class EvaluationResult:
    benchmark: str
    success_rate: float  # direct: mean over (task, goal) of post-adaptation success over 3 full episodes
    mean_return: float
    pre_adapt_success_rate: float
    pre_adapt_mean_return: float
    success_rate_official: float | None
    mean_return_official: float | None
    per_task: dict[str, dict[str, float]] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)


def evaluate_official(agent: MAMLAgent, config: TrainConfig, goals_per_class: int, num_evals: int,
                      mt_episodes: int, seed: int) -> tuple[float, float, dict[str, float]]:
    from metaworld.evaluation import evaluation, metalearning_evaluation

    tasks = BenchmarkTasks(config.env, seed)
    num_classes = len(tasks.test_tasks())
    if config.env.is_meta_learning:
        # One goal per sub-env: one round visits each of the first goals_per_class goals of every class once.
        envs = make_eval_vector_env(config.env, seed, meta_batch_size=num_classes * goals_per_class,
                                    total_tasks_per_cls=goals_per_class)
        try:
            success, mean_return, per_task = metalearning_evaluation(
                agent, envs, num_evals=num_evals, adaptation_steps=config.maml.num_inner_steps,
                adaptation_episodes=ADAPTATION_EPISODES, evaluation_episodes=EVALUATION_EPISODES)
        finally:
            envs.close()
    else:
        envs = make_eval_vector_env(config.env, seed, meta_batch_size=num_classes)
        try:
            agent.init()
            success, mean_return, per_task, _ = evaluation(agent, envs, num_episodes=mt_episodes)
        finally:
            envs.close()
    return float(success), float(mean_return), {name: float(value) for name, value in per_task.items()}


def evaluate_direct(meta_params: dict[str, np.ndarray], config: TrainConfig, goals_per_class: int,
                    seed: int) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Adapt on 10 episodes per inner step, then 3 full mean-action episodes, for every (task, goal)."""
    specs = fixed_task_specs(BenchmarkTasks(config.env, seed).test_tasks(), goals_per_class)
    worker = RolloutWorker(config.env, config.policy, config.maml, config.ppo, seed)
    # MT benchmarks adapt too: the tasks are training tasks, and pre-adaptation success is the
    # multi-task figure that Meta-World's own MT evaluation scores.
    plan = SamplePlan(ADAPTATION_EPISODES, EVALUATION_EPISODES, deterministic_query=True)
    rollouts = worker.sample(meta_params, specs, iteration=0, plan=plan)
    per_task: dict[str, dict[str, list[float]]] = {}
    for task in rollouts:
        entry = per_task.setdefault(task.env_name, {"success_rate": [], "mean_return": [],
                                                     "pre_adapt_success_rate": [], "pre_adapt_mean_return": []})
        entry["success_rate"].append(float(task.query.successes.mean()))
        entry["mean_return"].append(float(task.query.episode_returns.mean()))
        entry["pre_adapt_success_rate"].append(float(task.support[0].successes.mean()))
        entry["pre_adapt_mean_return"].append(float(task.support[0].episode_returns.mean()))
    per_task_mean = {name: {key: float(np.mean(values)) for key, values in entry.items()} for name, entry in per_task.items()}
    overall = {key: float(np.mean([entry[key] for entry in per_task_mean.values()]))
               for key in ("success_rate", "mean_return", "pre_adapt_success_rate", "pre_adapt_mean_return")}
    return overall, per_task_mean


def evaluate_checkpoint(path: str | Path, goals_per_class: int | None = None, num_evals: int = 1,
                        mt_episodes: int | None = None, official: bool = True) -> EvaluationResult:
    agent = MAMLAgent.from_checkpoint(path)
    config = agent.config
    test_mode = config.run.test_mode
    goals_per_class = goals_per_class or (1 if test_mode else 10)
    mt_episodes = mt_episodes or (2 if test_mode else 50)
    # The run's seed fixes the benchmark's goal sets; Meta-World derives the test goals of seed s from
    # s + 1, so another seed could hand back the run's own training goals as "held out".
    seed = config.run.seed
    meta_params = {name: p.numpy() for name, p in agent.meta_params.items()}
    overall, per_task = evaluate_direct(meta_params, config, goals_per_class, seed)
    official_success = official_return = None
    if official:
        official_success, official_return, official_per_task = evaluate_official(
            agent, config, goals_per_class, num_evals, mt_episodes, seed)
        for name, value in official_per_task.items():
            per_task.setdefault(name, {})["success_rate_official"] = value
    return EvaluationResult(
        benchmark=config.env.benchmark, success_rate=overall["success_rate"], mean_return=overall["mean_return"],
        pre_adapt_success_rate=overall["pre_adapt_success_rate"], pre_adapt_mean_return=overall["pre_adapt_mean_return"],
        success_rate_official=official_success, mean_return_official=official_return, per_task=per_task,
        protocol={"goals_per_class": goals_per_class, "adaptation_episodes": ADAPTATION_EPISODES,
                  "evaluation_episodes": EVALUATION_EPISODES, "num_inner_steps": config.maml.num_inner_steps,
                  "num_evals": num_evals, "mt_episodes": mt_episodes, "seed": seed,
                  "max_episode_length": config.env.max_episode_length, "split": "test" if config.env.is_meta_learning else "train"},
    )
