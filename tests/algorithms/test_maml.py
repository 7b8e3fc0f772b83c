"""MAML+PPO maths on a tiny float64 policy: inner step, meta-gradient against finite differences."""

import numpy as np
import pytest
import torch
from maml_tasks import make_setup, make_task, random_batch, with_sampling_log_probs

from metarl_ray.config import LearnerConfig
from metarl_ray.policies.common import log_prob
from metarl_ray.training.learner import meta_update


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


@pytest.mark.parametrize(
    "policy_type, num_inner_steps, ssm_scan, steps",
    [
        ("mlp", 1, None, 4),
        ("mlp", 2, None, 4),
        ("ssm", 1, "reference", 4),
        # 70-step episodes span three chunks of the chunked scan, so both of its levels are differentiated.
        ("ssm", 1, "chunked", 70),
        ("ssm", 2, "chunked", 70),
        # The adjoint scan (the default): its hand-written backward, differentiated once more.
        ("ssm", 1, "adjoint", 70),
        ("ssm", 2, "adjoint", 70),
    ],
)
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
