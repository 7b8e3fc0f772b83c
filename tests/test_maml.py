"""MAML+PPO maths on a tiny float64 policy: inner step, meta-gradient against finite differences."""

import numpy as np
import pytest
import torch

from metarl_ray.config import LearnerConfig, MAMLConfig, PolicyConfig, PPOConfig
from metarl_ray.learner import meta_update
from metarl_ray.maml import MAMLPPO, TaskTensors, TensorBatch
from metarl_ray.policy import build_policy, log_prob

OBS, ACT = 5, 2


def make_setup(first_order=False, num_inner_steps=1, seed=0, policy_type="mlp", ssm_scan="adjoint"):
    torch.manual_seed(seed)
    config = PolicyConfig(policy_type=policy_type, hidden_size=4 if policy_type == "ssm" else 6, num_hidden_layers=1,
                          state_size=3, num_ssm_layers=1, ssm_scan=ssm_scan)
    policy = build_policy(OBS, ACT, config).double()
    with torch.no_grad():  # a non-trivial mean head, so every parameter matters
        head = policy.mean_net[-1] if policy_type == "mlp" else policy.head
        head.weight.normal_(0, 0.5)
        policy.log_std.fill_(-0.3)
    algo = MAMLPPO(policy, MAMLConfig(inner_lr=0.3, num_inner_steps=num_inner_steps, first_order=first_order),
                   PPOConfig(meta_lr=1e-2, num_ppo_epochs=1, clip_eps=0.2))
    return policy, algo


def random_batch(generator, n=3, t=4, log_probs=None):
    obs = torch.randn(n, t, OBS, generator=generator, dtype=torch.float64)
    actions = torch.randn(n, t, ACT, generator=generator, dtype=torch.float64)
    advantages = torch.randn(n, t, generator=generator, dtype=torch.float64)
    if log_probs is None:
        log_probs = torch.zeros(n, t, dtype=torch.float64)
    return TensorBatch(obs, actions, log_probs, advantages)


def with_sampling_log_probs(policy, params, batch):
    """Record log-probs as a sampler at ``params`` would have."""
    recorded = log_prob(policy, params, batch.observations, batch.actions).detach()
    return TensorBatch(batch.observations, batch.actions, recorded, batch.advantages)


def make_task(policy, algo, generator, steps=4):
    params = {k: v.detach().requires_grad_() for k, v in policy.named_parameters()}
    support = []
    for _ in range(algo.maml.num_inner_steps):  # each support batch "sampled" by the policy adapted so far
        support.append(with_sampling_log_probs(policy, params, random_batch(generator, t=steps)))
        params = algo.adapt(params, support[-1:], create_graph=False)
    support = tuple(support)
    query = random_batch(generator, t=steps)
    # Old log-probs near the adapted policy's (ratios close to 1, off the clip boundary).
    adapted = algo.adapt({k: v.detach().requires_grad_() for k, v in policy.named_parameters()}, support, False)
    old = log_prob(policy, adapted, query.observations, query.actions).detach()
    old = old + 0.05 * torch.randn(old.shape, generator=generator, dtype=torch.float64)
    return TaskTensors(support, TensorBatch(query.observations, query.actions, old, query.advantages))


def test_adapted_params_equal_a_hand_written_sgd_step():
    policy, algo = make_setup()
    params = {k: v.detach().clone().requires_grad_() for k, v in policy.named_parameters()}
    batch = with_sampling_log_probs(policy, params, random_batch(torch.Generator().manual_seed(1)))
    adapted = algo.adapt(params, [batch], create_graph=False)
    # REINFORCE surrogate -mean(log pi * A): same gradient as the LVC objective, written independently.
    surrogate = -(log_prob(policy, params, batch.observations, batch.actions) * batch.advantages).mean()
    grads = torch.autograd.grad(surrogate, list(params.values()))
    for (name, p), g in zip(params.items(), grads):
        torch.testing.assert_close(adapted[name], p - 0.3 * g, rtol=0, atol=1e-12)


def flat_grad(policy, algo, task):
    policy.zero_grad()
    algo.task_outer_loss(algo.meta_params(), task)[0].backward()
    return torch.cat([p.grad.reshape(-1) for p in policy.parameters()])


def finite_difference_grad(policy, algo, task, eps=1e-6):
    params = list(policy.parameters())
    grad = []
    with torch.no_grad():
        for p in params:
            flat = p.view(-1)
            for i in range(flat.numel()):
                original = flat[i].item()
                values = []
                for shift in (eps, -eps):
                    flat[i] = original + shift
                    with torch.enable_grad():
                        values.append(algo.task_outer_loss(algo.meta_params(), task)[0].item())
                flat[i] = original
                grad.append((values[0] - values[1]) / (2 * eps))
    return torch.tensor(grad, dtype=torch.float64)


@pytest.mark.parametrize("policy_type, num_inner_steps, ssm_scan, steps", [
    ("mlp", 1, None, 4), ("mlp", 2, None, 4), ("ssm", 1, "reference", 4),
    # 70-step episodes span three chunks of the chunked scan, so both of its levels are differentiated.
    ("ssm", 1, "chunked", 70), ("ssm", 2, "chunked", 70),
    # The adjoint scan (the default): its hand-written backward, differentiated once more.
    ("ssm", 1, "adjoint", 70), ("ssm", 2, "adjoint", 70),
])
def test_second_order_meta_gradient_matches_finite_differences(policy_type, num_inner_steps, ssm_scan, steps):
    policy, algo = make_setup(num_inner_steps=num_inner_steps, policy_type=policy_type, ssm_scan=ssm_scan or "adjoint")
    task = make_task(policy, algo, torch.Generator().manual_seed(2), steps=steps)
    analytic = flat_grad(policy, algo, task)
    numeric = finite_difference_grad(policy, algo, task)
    relative_error = (analytic - numeric).norm() / numeric.norm()
    assert relative_error < 1e-6, relative_error


def test_first_order_meta_gradient_differs_from_finite_differences():
    policy, algo = make_setup(first_order=True)
    task = make_task(policy, algo, torch.Generator().manual_seed(2))
    relative_error = (flat_grad(policy, algo, task) - finite_difference_grad(policy, algo, task)).norm()
    relative_error /= finite_difference_grad(policy, algo, task).norm()
    assert relative_error > 1e-3, relative_error


def test_one_meta_update_lowers_the_outer_loss():
    policy, algo = make_setup()
    generator = torch.Generator().manual_seed(3)
    tasks = [make_task(policy, algo, generator) for _ in range(3)]
    before = algo.outer_loss(tasks).item()
    optimizer = torch.optim.Adam(policy.parameters(), lr=algo.ppo.meta_lr)
    metrics = meta_update(algo, optimizer, tasks, LearnerConfig(), algo.ppo.grad_clip)
    after = algo.outer_loss(tasks).item()
    assert after < before - 1e-4, (before, after)
    assert np.isfinite(metrics["ppo/kl"]) and np.isfinite(metrics["ppo/grad_norm"])


def test_ssm_inner_step_leaves_eigenvalues_and_step_sizes_alone_but_meta_learns_them():
    policy, algo = make_setup(policy_type="ssm")
    task = make_task(policy, algo, torch.Generator().manual_seed(4))
    params = {k: v.detach().clone().requires_grad_() for k, v in policy.named_parameters()}
    adapted = algo.adapt(params, task.support, create_graph=False)
    for name in params:
        changed = not torch.equal(adapted[name], params[name])
        assert changed != name.endswith(("log_neg_lambda", "log_dt")), name
    flat_grad(policy, algo, task)
    assert policy.blocks[0].ssm.log_dt.grad.abs().sum() > 0  # the outer loop still trains them
