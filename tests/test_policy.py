import torch
from torch.func import functional_call

from metarl_ray.config import PolicyConfig
from metarl_ray.policy import BatchedActor, build_policy, detached_params, gaussian_log_prob


def test_per_env_parameters_give_each_env_its_own_policy():
    torch.manual_seed(0)
    policy = build_policy(39, 4, PolicyConfig(hidden_size=16))
    params = [{k: v + 0.1 * torch.randn_like(v) for k, v in detached_params(policy).items()} for _ in range(5)]
    obs = torch.randn(5, 39)
    actor = BatchedActor(policy)
    with torch.no_grad():
        mean, log_std = actor.bind(params)(obs)
        vmap_mean, _ = actor._per_env({k: torch.stack([p[k] for p in params]) for k in params[0]}, obs)
        for k in range(5):
            expected_mean, expected_log_std = functional_call(policy, params[k], (obs[k],))
            torch.testing.assert_close(mean[k], expected_mean)
            torch.testing.assert_close(log_std[k], expected_log_std)
        torch.testing.assert_close(mean, vmap_mean)
        shared_mean, _ = actor.bind([params[0]] * 5)(obs)
        torch.testing.assert_close(shared_mean[2], functional_call(policy, params[0], (obs[2],))[0])


def test_gaussian_log_prob_matches_torch_distributions():
    mean, log_std, actions = torch.randn(3, 4), torch.randn(4) * 0.3, torch.randn(3, 4)
    expected = torch.distributions.Normal(mean, log_std.exp()).log_prob(actions).sum(-1)
    torch.testing.assert_close(gaussian_log_prob(mean, log_std, actions), expected)
