"""Meta-SGD on a tiny float64 policy (its inner step by hand, its step sizes' meta-gradient against
finite differences), and ``metarl train --algorithm meta_sgd`` end to end on real Meta-World and Ray."""

import json
import math

import pytest
import torch
from maml_tasks import make_setup, make_task, random_batch, with_sampling_log_probs

from metarl_ray.algorithms.meta_sgd import BUILDER, MetaSGDPPO, step_size_name
from metarl_ray.policies.common import log_prob
from metarl_ray.training.metrics import read_metrics


def meta_sgd_setup():
    policy, maml = make_setup()
    BUILDER.extend_policy(policy, maml.maml)
    policy.double()
    return policy, MetaSGDPPO(policy, maml.maml, maml.ppo), maml


def test_step_sizes_start_at_inner_lr_and_the_step_is_elementwise():
    policy, algo, maml = meta_sgd_setup()
    names = [name for name, _ in policy.named_parameters() if not name.startswith("inner_lrs.")]
    assert {step_size_name(name) for name in names} <= {name for name, _ in policy.named_parameters()}
    params = {k: v.detach().clone().requires_grad_() for k, v in policy.named_parameters()}
    batch = with_sampling_log_probs(policy, params, random_batch(torch.Generator().manual_seed(1)))
    # alpha = inner_lr everywhere: MAML's step exactly.
    same = algo.adapt(params, [batch], create_graph=False)
    plain = maml.adapt({k: params[k] for k in names}, [batch], create_graph=False)
    for name in names:
        torch.testing.assert_close(same[name], plain[name], rtol=0, atol=1e-12)
    # Other step sizes: theta - alpha * g elementwise, g the REINFORCE gradient written independently.
    alphas = {name: torch.rand_like(params[name]) for name in names}
    for name in names:
        params[step_size_name(name)] = alphas[name]
    adapted = algo.adapt(params, [batch], create_graph=False)
    surrogate = -(log_prob(policy, params, batch.observations, batch.actions) * batch.advantages).mean()
    grads = torch.autograd.grad(surrogate, [params[name] for name in names])
    for name, g in zip(names, grads):
        torch.testing.assert_close(adapted[name], params[name] - alphas[name] * g, rtol=0, atol=1e-12)


def test_the_meta_gradient_of_the_step_sizes_matches_finite_differences():
    policy, algo, _ = meta_sgd_setup()
    generator = torch.Generator().manual_seed(3)
    task = make_task(policy, algo, generator)
    policy.zero_grad()
    algo.task_outer_loss(algo.meta_params(), task)[0].backward()
    name = step_size_name("mean_net.0.weight")
    alpha = dict(policy.named_parameters())[name]
    analytic = alpha.grad[0, 0].item()
    assert analytic != 0.0
    eps = 1e-6
    losses = []
    for sign in (1, -1):
        with torch.no_grad():
            alpha[0, 0] += sign * eps
        losses.append(algo.task_outer_loss(algo.meta_params(), task)[0].item())
        with torch.no_grad():
            alpha[0, 0] -= sign * eps
    assert analytic == pytest.approx((losses[0] - losses[1]) / (2 * eps), rel=1e-5)


def test_meta_sgd_trains_resumes_exactly_and_evaluates(tmp_path, in_process):
    runs = str(tmp_path / "runs")
    common = ["--algorithm", "meta_sgd", "--env_name", "ML10", "--test_mode", "--output_dir", runs]
    assert in_process("train", *common, "--num_epochs", "3", "--run_name", "straight")[0] == 0
    assert in_process("train", *common, "--num_epochs", "2", "--run_name", "interrupted")[0] == 0
    assert (
        in_process("train", "--resume", "--run_name", "interrupted", "--output_dir", runs, "--num_epochs", "3")[0] == 0
    )
    straight, resumed = read_metrics(tmp_path / "runs" / "straight"), read_metrics(tmp_path / "runs" / "interrupted")
    assert [row["iteration"] for row in resumed] == [1, 2, 3]
    for key in ("pre_adapt/return", "post_adapt/return", "loss/outer", "ppo/kl", "rollout/env_steps_total"):
        assert resumed[2][key] == pytest.approx(straight[2][key], rel=1e-6, abs=1e-9), key
    checkpoint = torch.load(
        tmp_path / "runs" / "interrupted" / "checkpoints" / "checkpoint_000003.pt", weights_only=False
    )
    learned = [v for k, v in checkpoint["learner"]["policy"].items() if k.startswith("inner_lrs.")]
    assert learned and any(not torch.allclose(v, torch.full_like(v, 0.1)) for v in learned)  # alpha moved
    status, out, _ = in_process(
        "eval", "--checkpoint", tmp_path / "runs" / "interrupted", "--json", "--num_workers", "0"
    )
    result = json.loads(out)
    assert status == 0 and result["protocol"]["algorithm"] == "meta_sgd"
    assert math.isfinite(result["success_rate_official"]) and math.isfinite(result["mean_return"])
