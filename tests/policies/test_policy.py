import pytest
import torch

from metarl_ray.config import PolicyConfig
from metarl_ray.policies import build_policy
from metarl_ray.policies.common import BatchedPolicy, detached_params, gaussian_log_prob


@pytest.mark.parametrize("policy_type", ["mlp", "ssm", "gru"])
def test_per_env_parameters_give_each_env_its_own_policy(policy_type):
    torch.manual_seed(0)
    policy = build_policy(39, 4, PolicyConfig(policy_type=policy_type, hidden_size=16, state_size=5))
    params = [{k: v + 0.1 * torch.randn_like(v) for k, v in detached_params(policy).items()} for _ in range(5)]
    actor = BatchedPolicy(policy)
    obs, state = torch.randn(5, 39), torch.randn(*policy.initial_state(5).shape)
    starts = torch.tensor([True, False, False, True, False])
    with torch.no_grad():
        mean, log_std, new_state = actor.bind(params)(obs, state, starts)
        for k in range(5):
            expected = _step_with(policy, params[k], obs[k : k + 1], state[k : k + 1], starts[k : k + 1])
            torch.testing.assert_close(mean[k], expected[0][0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(log_std[k], expected[1], atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(new_state[k], expected[2][0], atol=1e-5, rtol=1e-5)
        shared_mean, _, _ = actor.bind([params[0]] * 5)(obs, state, starts)
        torch.testing.assert_close(
            shared_mean[2], _step_with(policy, params[0], obs[2:3], state[2:3], starts[2:3])[0][0]
        )


def _step_with(policy, params, obs, state, starts):
    scratch = BatchedPolicy(policy).policy
    with torch.no_grad():
        for name, p in scratch.named_parameters():
            p.copy_(params[name])
    return scratch.step(obs, state, starts)


def test_gaussian_log_prob_matches_torch_distributions():
    mean, log_std, actions = torch.randn(3, 4), torch.randn(4) * 0.3, torch.randn(3, 4)
    expected = torch.distributions.Normal(mean, log_std.exp()).log_prob(actions).sum(-1)
    torch.testing.assert_close(gaussian_log_prob(mean, log_std, actions), expected)


def test_gru_training_loop_equals_its_rollout_steps_and_torch_gru():
    """The GRU's whole-sequence forward (training), its O(1) rollout step and PyTorch's fused nn.GRU
    on the same weights agree over 300 steps."""
    torch.manual_seed(0)
    policy = build_policy(45, 4, PolicyConfig(policy_type="gru", hidden_size=16)).double()
    obs = torch.randn(3, 300, 45, dtype=torch.float64)
    mean, _ = policy(obs)
    step, state, steps = policy.rollout_step(), policy.initial_state(3), []
    for t in range(obs.shape[1]):
        step_mean, _, state = step(obs[:, t], state, torch.full((3,), t == 0))
        steps.append(step_mean)
    torch.testing.assert_close(torch.stack(steps, 1), mean.detach(), rtol=1e-10, atol=1e-12)
    fused = torch.nn.GRU(16, 16, batch_first=True).double()
    fused.load_state_dict(
        {
            "weight_ih_l0": policy.cell.weight_ih,
            "weight_hh_l0": policy.cell.weight_hh,
            "bias_ih_l0": policy.cell.bias_ih,
            "bias_hh_l0": policy.cell.bias_hh,
        }
    )
    hidden, _ = fused(torch.tanh(policy.encoder(obs)))
    torch.testing.assert_close(policy.head(hidden), mean, rtol=1e-10, atol=1e-12)
