"""The in-context meta-learner (RL²) on real Meta-World and real Ray: its inputs, its log-probs, its
advantages, and ``metarl train --algorithm rl2`` end to end (train, exact resume, evaluate)."""

import json
import math

import numpy as np
import pytest
import torch

from metarl_ray.algorithms.advantages import trial_advantages
from metarl_ray.algorithms.base import CarriedMemory
from metarl_ray.algorithms.rl2 import (
    RL2PPO,
    InContextAgent,
    InContextInputs,
    TrialTensors,
    in_context_inputs,
    in_context_step_inputs,
    policy_input_dim,
    trial_chunks,
)
from metarl_ray.batch import TaskTrials
from metarl_ray.config import EnvConfig, MAMLConfig, MetaLearnerConfig, PolicyConfig, PPOConfig
from metarl_ray.envs.metaworld import ACTION_DIM, OBS_DIM, BenchmarkTasks, TaskSampler
from metarl_ray.policies import build_policy
from metarl_ray.policies.common import gaussian_log_prob, log_prob
from metarl_ray.training.metrics import read_metrics
from metarl_ray.training.rollout import RolloutWorker

IN_CONTEXT_INPUT_DIM = policy_input_dim(OBS_DIM, ACTION_DIM)


def test_trial_inputs_equal_the_step_inputs_the_rollout_built():
    rng = np.random.default_rng(0)
    num_trials, horizon, episodes = 3, 5, 4
    obs = rng.standard_normal((num_trials, horizon * episodes, OBS_DIM)).astype(np.float32)
    actions = rng.standard_normal((num_trials, horizon * episodes, ACTION_DIM)).astype(np.float32)
    rewards = rng.uniform(0, 10, (num_trials, horizon * episodes)).astype(np.float32)
    whole = in_context_inputs(obs, actions, rewards, horizon)
    for t in range(horizon * episodes):
        step = in_context_step_inputs(
            obs[:, t],
            actions[:, t - 1] if t else np.zeros_like(actions[:, 0]),
            rewards[:, t - 1] if t else np.zeros_like(rewards[:, 0]),
            t % horizon == 0,
        )
        np.testing.assert_array_equal(whole[:, t], step)
    assert whole.shape[-1] == IN_CONTEXT_INPUT_DIM
    # The boundary flag marks each episode's first step; episode 2's first step sees episode 1's last reward.
    assert whole[0, :, -1].tolist() == [1.0 if t % horizon == 0 else 0.0 for t in range(horizon * episodes)]
    assert whole[0, horizon, -2] == pytest.approx(0.1 * rewards[0, horizon - 1])


def test_gae_runs_across_the_episodes_of_a_trial():
    """A reward early in episode 2 raises the advantages at the end of episode 1 when both are one
    trial (gamma = lambda = 1 to make the carry visible), and not when they are separate episodes."""
    horizon = 10
    obs = np.zeros((4, 2 * horizon, OBS_DIM), np.float32)
    rewards = np.zeros((4, 2 * horizon), np.float32)
    rewards[0, horizon] = 1.0  # trial 0: rewarded at the first step of its second episode
    trial = trial_advantages(obs, rewards, horizon, gamma=1.0, gae_lambda=1.0)
    split = trial_advantages(obs.reshape(8, horizon, OBS_DIM), rewards.reshape(8, horizon), horizon, 1.0, 1.0)
    assert trial[0, horizon - 1] > trial[1, horizon - 1] + 1.0  # the carry reached episode 1
    assert split[0, horizon - 1] == pytest.approx(split[2, horizon - 1])  # split: episode 1 knows nothing of it


@pytest.mark.parametrize("policy_type", ["ssm", "gru"])
def test_training_recomputes_the_log_probs_recorded_at_sampling(policy_type):
    """Real Meta-World trials of 3 episodes: the learner's whole-trial recompute (SSM scan or GRU step
    loop from a fresh memory) gives the log-probs the rollout recorded step by step."""
    env = EnvConfig(benchmark="ML10", max_episode_length=40)
    policy = PolicyConfig(policy_type=policy_type, hidden_size=32, state_size=16, init_log_std=-0.5)
    meta = MetaLearnerConfig(algorithm="rl2", episodes_per_trial=3, trials_per_task=2)
    worker = RolloutWorker(env, policy, MAMLConfig(), PPOConfig(), seed=0, meta_learner_config=meta)
    torch.manual_seed(1)
    for p in worker.policy.parameters():  # away from the small head init, so memory matters
        p.data.add_(0.3 * torch.randn_like(p))
    tasks = TaskSampler(BenchmarkTasks(env, 0).train_tasks(), 0).sample(2)
    params = {k: v.detach().numpy() for k, v in worker.policy.named_parameters()}
    rollouts = worker.sample(params, tasks, iteration=1)
    assert all(isinstance(task, TaskTrials) for task in rollouts)
    trials = rollouts[0].trials
    assert trials.observations.shape == (2, 120, OBS_DIM) and trials.successes.shape == (2, 3)
    learner_side = RL2PPO(worker.policy, PPOConfig(), meta).tensors(rollouts[0], torch.device("cpu"))
    with torch.no_grad():
        recomputed = log_prob(
            worker.policy, dict(worker.policy.named_parameters()), learner_side.inputs, learner_side.actions
        )
    np.testing.assert_allclose(recomputed.numpy(), trials.log_probs, atol=2e-4)
    # A policy that ignored its memory would give the same mean at equal inputs; this one does not:
    # the recompute from a fresh memory at every episode differs from the recorded trial.
    per_episode = learner_side.inputs.reshape(6, 40, -1)
    with torch.no_grad():
        fresh = log_prob(
            worker.policy, dict(worker.policy.named_parameters()), per_episode, learner_side.actions.reshape(6, 40, -1)
        ).reshape(2, 120)
    assert not np.allclose(fresh.numpy(), trials.log_probs, atol=1e-3)
    # Truncated backprop: chunks of 40 steps, each from the memory the policy carries into it, give the
    # same log-probs as the whole-trial pass (the forward pass cuts nothing; only the gradient is cut).
    chunks = trial_chunks(worker.policy, [learner_side], chunk_length=40)
    assert len(chunks) == 2 * 3 and chunks[0].inputs.shape == (40, IN_CONTEXT_INPUT_DIM)
    with torch.no_grad():
        by_chunk = torch.zeros(2, 120)
        for index, chunk in enumerate(chunks):  # ordered chunk by chunk, trial by trial within a chunk
            mean, log_std, _ = worker.policy.sequence(chunk.inputs[None], chunk.memory[None])
            trial, part = index % 2, index // 2
            by_chunk[trial, 40 * part : 40 * (part + 1)] = gaussian_log_prob(mean[0], log_std, chunk.actions)
    np.testing.assert_allclose(by_chunk.numpy(), recomputed.numpy(), atol=2e-5)


@pytest.mark.parametrize("policy_type", ["ssm", "gru"])
def test_one_whole_trial_chunk_gives_the_whole_trial_loss_and_gradient(policy_type):
    """rl2_chunk_length 0: a minibatch of whole trials from a fresh memory is the full-trial PPO loss
    (no gradient cut), value and gradient, and its entropy bonus is the Gaussian's entropy."""
    torch.manual_seed(0)
    policy = build_policy(
        IN_CONTEXT_INPUT_DIM,
        ACTION_DIM,
        PolicyConfig(policy_type=policy_type, hidden_size=16, state_size=8, init_log_std=-0.3),
    )
    for p in policy.parameters():
        p.data.add_(0.2 * torch.randn_like(p))
    meta = MetaLearnerConfig(algorithm="rl2", rl2_chunk_length=0, rl2_entropy_coef=0.01)
    algo = RL2PPO(policy, PPOConfig(), meta)
    rng = torch.Generator().manual_seed(1)
    task = TrialTensors(
        torch.randn(3, 30, IN_CONTEXT_INPUT_DIM, generator=rng),
        torch.randn(3, 30, ACTION_DIM, generator=rng),
        -torch.rand(3, 30, generator=rng) * 4,
        torch.randn(3, 30, generator=rng),
    )
    loss, stats = algo.loss(trial_chunks(policy, [task], 0))
    new_log_probs = log_prob(policy, dict(policy.named_parameters()), task.inputs, task.actions)
    ratio = torch.exp(new_log_probs - task.log_probs)
    surrogate = -torch.min(ratio * task.advantages, ratio.clamp(0.8, 1.2) * task.advantages).mean()
    entropy = policy.log_std.sum() + 0.5 * ACTION_DIM * (1 + math.log(2 * math.pi))
    expected = surrogate - 0.01 * entropy
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert stats["rl2/entropy"] == pytest.approx(float(entropy), rel=1e-6)
    got = torch.autograd.grad(loss, list(policy.parameters()))
    want = torch.autograd.grad(expected, list(policy.parameters()))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_an_iteration_takes_epochs_times_minibatches_steps_over_every_chunk_once_per_epoch():
    torch.manual_seed(0)
    policy = build_policy(
        IN_CONTEXT_INPUT_DIM, ACTION_DIM, PolicyConfig(policy_type="ssm", hidden_size=16, state_size=8)
    )
    algo = RL2PPO(
        policy, PPOConfig(), MetaLearnerConfig(algorithm="rl2", rl2_epochs=3, rl2_minibatches=4, rl2_chunk_length=10)
    )
    tasks = [
        TrialTensors(
            torch.randn(2, 40, IN_CONTEXT_INPUT_DIM),
            torch.randn(2, 40, ACTION_DIM),
            torch.zeros(2, 40),
            torch.randn(2, 40),
        )
        for _ in range(2)
    ]
    steps = list(algo.optimizer_steps(tasks, np.random.default_rng(0)))
    assert [len(step) for step in steps] == [4] * 12  # 2 tasks x 2 trials x 4 chunks = 16 per epoch
    for epoch in range(3):
        seen = [chunk.inputs.data_ptr() for step in steps[4 * epoch : 4 * epoch + 4] for chunk in step]
        assert len(set(seen)) == 16
    again = list(algo.optimizer_steps(tasks, np.random.default_rng(0)))  # the same stream: the same shuffles
    assert [[c.inputs.data_ptr() for c in step] for step in again] == [
        [c.inputs.data_ptr() for c in step] for step in steps
    ]


def test_the_ssm_memory_of_an_in_context_policy_spans_its_trial():
    """The initial decay spectrum. S4D-Real (MAML's): the decay rates dt |lambda| start at 1e-3, so no state
    keeps a tenth of its input over a 5,000-step trial. In context (a time scale per trial): time constants
    log-spaced from 1 step to the trial, so the slowest states keep their input across the whole trial."""
    from metarl_ray.config import TrainConfig

    config = TrainConfig(policy=PolicyConfig(policy_type="ssm"), meta_learner=MetaLearnerConfig(algorithm="rl2"))
    assert config.policy.ssm_max_timescale == 10 * 500  # resolved to the trial length
    assert TrainConfig(policy=PolicyConfig(policy_type="ssm")).policy.ssm_max_timescale == 0  # MAML keeps S4D-Real
    trial = 5000
    for seed in range(3):
        torch.manual_seed(seed)
        in_context = build_policy(IN_CONTEXT_INPUT_DIM, ACTION_DIM, config.policy)
        s4d = build_policy(IN_CONTEXT_INPUT_DIM, ACTION_DIM, PolicyConfig(policy_type="ssm", ssm_max_timescale=0))
        for block, s4d_block in zip(in_context.blocks, s4d.blocks):
            timescales = block.ssm.timescales().detach()
            kept_over_trial = torch.exp(-trial / timescales)  # fraction of an input left after a whole trial
            assert float(timescales.max()) == pytest.approx(trial, rel=1e-4)
            assert float(timescales.min()) == pytest.approx(1.0, rel=1e-4)
            assert int((kept_over_trial > 0.1).sum()) >= 6  # of 64 states
            assert int((torch.exp(-500 / timescales) > 1 / math.e).sum()) >= 17  # past one episode
            assert int((torch.exp(-trial / s4d_block.ssm.timescales().detach()) > 0.1).sum()) == 0
            # The decays the rollout steps with are the same spectrum.
            log_a_bar, _ = block.ssm.discretise_log()
            torch.testing.assert_close(-1.0 / log_a_bar, timescales)


def test_a_continued_memory_plays_the_trials_next_episode():
    """Evaluation continues the adaptation trial's memory for its post-adaptation episodes: with mean
    actions, one episode continued from where a 1-episode trial stopped (memory, last action and
    reward) is exactly the second episode of a 2-episode trial."""
    env = EnvConfig(benchmark="ML10", max_episode_length=30)
    policy = PolicyConfig(policy_type="ssm", hidden_size=32, state_size=16)
    worker = RolloutWorker(
        env,
        policy,
        MAMLConfig(),
        PPOConfig(),
        seed=0,
        meta_learner_config=MetaLearnerConfig(algorithm="rl2", episodes_per_trial=2),
    )
    torch.manual_seed(2)
    for p in worker.policy.parameters():  # away from the small head init, so the inputs matter
        p.data.add_(0.3 * torch.randn_like(p))
    tasks = TaskSampler(BenchmarkTasks(env, 0).train_tasks(), 0).sample(2)
    envs = worker._envs_for(tasks)
    params = [dict(worker.policy.named_parameters())] * len(tasks)
    rngs = [np.random.default_rng(k) for k in range(len(tasks))]
    with torch.no_grad():
        whole, _ = worker.collect_trials(envs, params, rngs, 1, [False, False], in_context_step_inputs)
        first, memory = worker.collect_trials(envs, params, rngs, 1, [False], in_context_step_inputs)
        continued, _ = worker.collect_trials(envs, params, rngs, 1, [False], in_context_step_inputs, memory)
    for k in range(len(tasks)):
        np.testing.assert_allclose(first[k].actions[0], whole[k].actions[0, :30], atol=1e-5)
        np.testing.assert_allclose(continued[k].actions[0], whole[k].actions[0, 30:], atol=1e-5)
        np.testing.assert_allclose(memory.last_rewards[k], whole[k].rewards[0, 29], rtol=1e-6)
    # Both parts of where it stopped matter: the memory alone (zero previous action and reward) or a
    # fresh memory plays the second episode differently.
    memory_only = CarriedMemory(memory.state, np.zeros_like(memory.last_actions), np.zeros_like(memory.last_rewards))
    with torch.no_grad():
        without_inputs, _ = worker.collect_trials(envs, params, rngs, 1, [False], in_context_step_inputs, memory_only)
    assert not np.allclose(without_inputs[0].actions[0], whole[0].actions[0, 30:], atol=1e-3)
    assert not np.allclose(first[0].actions[0], whole[0].actions[0, 30:], atol=1e-3)


def test_the_official_agent_starts_a_fresh_memory_with_no_previous_action_or_reward():
    """Under Meta-World's evaluation the inputs carry the last action and reward across resets (a new
    episode of the same trial); at a fresh memory (a new goal) the agent sees zeros, as a training trial does."""
    from metarl_ray.config import TrainConfig
    from metarl_ray.policies import build_policy

    config = TrainConfig(
        policy=PolicyConfig(policy_type="ssm", hidden_size=32, state_size=16),
        meta_learner=MetaLearnerConfig(algorithm="rl2"),
    )
    torch.manual_seed(4)
    policy = build_policy(IN_CONTEXT_INPUT_DIM, ACTION_DIM, config.policy)
    for p in policy.parameters():
        p.data.add_(0.3 * torch.randn_like(p))
    obs = np.random.default_rng(0).standard_normal((3, OBS_DIM)).astype(np.float32)
    carried = in_context_step_inputs(obs, np.ones((3, ACTION_DIM), np.float32), np.full(3, 5.0, np.float32), True)
    fresh = in_context_step_inputs(obs, np.zeros((3, ACTION_DIM), np.float32), np.zeros(3, np.float32), True)
    agent = InContextAgent(policy, config, OBS_DIM)
    first = agent.eval_action(carried)
    agent.init()
    np.testing.assert_array_equal(agent.eval_action(fresh), first)
    # Continuing a memory, the carried inputs are seen: two agents at the same memory act differently.
    other = InContextAgent(policy, config, OBS_DIM)
    other.eval_action(fresh)
    assert not np.allclose(agent.eval_action(carried), other.eval_action(fresh), atol=1e-4)


def test_official_inputs_carry_the_last_action_and_reward_across_a_reset_and_into_autoreset():
    """``InContextInputs`` on Meta-World's own ML1 test vector env: the first reset sees zeros; an
    episode's autoreset step and a later explicit reset both see the last action and reward."""
    from metarl_ray.envs.metaworld import make_eval_vector_env

    env_config = EnvConfig(benchmark="ML1", task="reach-v3", max_episode_length=5)
    envs = InContextInputs(make_eval_vector_env(env_config, seed=0, meta_batch_size=2))
    envs.env.call("sample_tasks")
    inputs, _ = envs.reset(seed=0)
    np.testing.assert_array_equal(inputs[:, OBS_DIM:], np.tile([0.0] * (ACTION_DIM + 1) + [1.0], (2, 1)))
    actions = np.random.default_rng(0).uniform(-1, 1, (5, 2, ACTION_DIM)).astype(np.float32)
    for t in range(5):
        inputs, rewards, terminated, truncated, _ = envs.step(actions[t])
        expected_flag = 1.0 if t == 4 else 0.0  # step 5 ends the episode: the autoreset obs starts the next
        np.testing.assert_allclose(inputs[:, OBS_DIM : OBS_DIM + ACTION_DIM], actions[t])
        np.testing.assert_allclose(inputs[:, -2], 0.1 * rewards, rtol=1e-6)
        assert (inputs[:, -1] == expected_flag).all()
    again, _ = envs.reset()
    np.testing.assert_allclose(again[:, OBS_DIM : OBS_DIM + ACTION_DIM], actions[4])
    np.testing.assert_allclose(again[:, -2], 0.1 * rewards, rtol=1e-6)
    envs.env.close()


def test_rl2_needs_a_policy_with_memory(in_process):
    status, out, err = in_process("train", "--algorithm", "rl2", "--policy_type", "mlp", "--test_mode")
    assert status != 0 and "Traceback" not in err
    line = [line for line in err.splitlines() if "policy_type" in line]
    assert len(line) == 1 and "'mlp'" in line[0] and "ssm or gru" in line[0]


# The GRU case runs the same trainer, checkpoint and evaluation code as the SSM case with another policy
# (its log-probs are checked in the default run above): `make test-slow` runs it, keeping CI under 20 minutes.
@pytest.mark.parametrize("policy_type", ["ssm", pytest.param("gru", marks=pytest.mark.slow)])
def test_in_context_trains_resumes_exactly_and_evaluates(policy_type, tmp_path, in_process):
    runs = str(tmp_path / "runs")
    common = [
        "--algorithm",
        "rl2",
        "--policy_type",
        policy_type,
        "--env_name",
        "ML1",
        "--task",
        "reach-v3",
        "--test_mode",
        "--max_episode_length",
        "20",
        "--rl2_chunk_length",
        "10",
        "--output_dir",
        runs,
    ]
    assert in_process("train", *common, "--num_epochs", "3", "--run_name", "straight")[0] == 0
    assert in_process("train", *common, "--num_epochs", "2", "--run_name", "interrupted")[0] == 0
    assert (
        in_process("train", "--resume", "--run_name", "interrupted", "--output_dir", runs, "--num_epochs", "3")[0] == 0
    )
    straight = read_metrics(tmp_path / "runs" / "straight")
    resumed = read_metrics(tmp_path / "runs" / "interrupted")
    assert [row["iteration"] for row in resumed] == [1, 2, 3]
    # tasks x trials x episodes x steps
    assert all(row["rollout/env_steps"] == 2 * 2 * 2 * 20 for row in resumed)
    # Test mode's 2 epochs x 2 minibatches of 10-step chunks (2 tasks x 2 trials x 4 chunks each).
    assert all(row["learner/optimizer_steps"] == 4 for row in resumed)
    for key in (
        "pre_adapt/return",
        "post_adapt/return",
        "loss/outer",
        "ppo/kl",
        "policy/std",
        "rollout/env_steps_total",
    ):
        assert resumed[2][key] == pytest.approx(straight[2][key], rel=1e-6, abs=1e-9), key
    status, out, _ = in_process(
        "eval", "--checkpoint", tmp_path / "runs" / "interrupted", "--json", "--num_workers", "0"
    )
    result = json.loads(out)
    assert status == 0 and result["protocol"]["algorithm"] == "rl2"
    assert math.isfinite(result["success_rate_official"]) and math.isfinite(result["mean_return"])
