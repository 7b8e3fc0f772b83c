"""The learner's gradient paths: batched (vmap) == per-task, accumulation == one chunk, bfloat16 autocast
close to fp32, and the chunked SSM scan's first and second derivatives equal the step loop's."""

import copy

import pytest
import torch
from maml_tasks import make_setup, make_task

from metarl_ray.algorithms.maml_ppo import MAMLPPO, TaskTensors, TensorBatch
from metarl_ray.config import LearnerConfig, MAMLConfig, PolicyConfig, PPOConfig
from metarl_ray.policies import build_policy, ssm
from metarl_ray.policies.common import log_prob
from metarl_ray.policies.ssm import scan_adjoint, scan_chunked, scan_reference
from metarl_ray.training.learner import meta_update, task_chunks


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def tasks_for(policy, algo, count, seed=7, steps=6):
    generator = torch.Generator().manual_seed(seed)
    return [make_task(policy, algo, generator, steps=steps) for _ in range(count)]


@pytest.mark.parametrize("policy_type", ["mlp", "ssm"])
@pytest.mark.parametrize("first_order", [False, True])
def test_batched_meta_gradient_equals_the_per_task_loop(policy_type, first_order):
    policy, algo = make_setup(policy_type=policy_type, first_order=first_order, num_inner_steps=2)
    tasks = tasks_for(policy, algo, 4, steps=40)
    policy.zero_grad()
    batched_loss, batched_stats = algo.loss(tasks)
    batched_loss.backward()
    batched = flat(p.grad for p in policy.parameters())
    policy.zero_grad()
    looped_loss = algo.outer_loss(tasks)
    looped_loss.backward()
    looped = flat(p.grad for p in policy.parameters())
    assert abs(batched_loss.item() - looped_loss.item()) < 1e-12
    assert ((batched - looped).norm() / looped.norm()).item() < 1e-12
    assert set(batched_stats) == {"ppo/kl", "ppo/clip_fraction"}


def updated_params(policy, algo, tasks, config, num_tasks_total=None):
    policy, algo = copy.deepcopy(policy), copy.deepcopy(algo)
    algo.policy = policy
    optimizer = torch.optim.Adam(policy.parameters(), lr=algo.ppo.meta_lr)
    metrics = meta_update(algo, optimizer, tasks, config, algo.ppo.grad_clip, num_tasks_total)
    return flat(p.detach() for p in policy.parameters()), metrics


@pytest.mark.parametrize("policy_type", ["mlp", "ssm"])
def test_gradient_accumulation_and_per_task_give_the_unchunked_update(policy_type):
    policy, algo = make_setup(policy_type=policy_type)
    algo.ppo = PPOConfig(meta_lr=1e-2, num_ppo_epochs=3)
    tasks = tasks_for(policy, algo, 5)
    whole, whole_metrics = updated_params(policy, algo, tasks, LearnerConfig(meta_batching="batched"))
    for config in (
        LearnerConfig(meta_batching="batched", gradient_accumulation_steps=2),
        LearnerConfig(meta_batching="batched", gradient_accumulation_steps=5),
        LearnerConfig(meta_batching="per_task"),
    ):
        chunked, metrics = updated_params(policy, algo, tasks, config)
        assert (chunked - whole).abs().max().item() < 1e-12, config
        for key in ("loss/outer", "ppo/kl", "ppo/clip_fraction", "ppo/grad_norm"):
            assert metrics[key] == pytest.approx(whole_metrics[key], rel=1e-9, abs=1e-12), key
    before = flat(p.detach() for p in policy.parameters())
    assert (whole - before).abs().max().item() > 1e-4  # the update did something


def test_task_chunks_are_contiguous_and_never_empty():
    assert task_chunks(list(range(5)), 2) == [[0, 1], [2, 3, 4]]
    assert task_chunks(list(range(2)), 4) == [[0], [1]]


@pytest.mark.parametrize("policy_type", ["mlp", "ssm"])
def test_bfloat16_autocast_meta_gradient_is_close_to_fp32(policy_type):
    """bfloat16 keeps 8 significand bits (matmul relative error ~0.4%); the error reaches the
    meta-gradient through the forward passes only: parameters, gradients, log-densities and PPO ratios
    stay fp32. Measured here: relative error ~5e-3, cosine similarity > 0.99998; asserted with margin."""
    torch.manual_seed(0)
    policy = build_policy(39, 4, PolicyConfig(policy_type=policy_type, hidden_size=64, state_size=16))
    algo = MAMLPPO(policy, MAMLConfig(), PPOConfig())
    generator = torch.Generator().manual_seed(3)

    def batch():
        obs = torch.randn(4, 50, 39, generator=generator)
        actions = torch.randn(4, 50, 4, generator=generator)
        with torch.no_grad():
            recorded = log_prob(policy, dict(policy.named_parameters()), obs, actions)
        recorded = recorded + 0.05 * torch.randn(recorded.shape, generator=generator)
        return TensorBatch(obs, actions, recorded, torch.randn(4, 50, generator=generator))

    tasks = [TaskTensors((batch(),), batch()) for _ in range(3)]
    gradients = {}
    for use_amp in (False, True):
        policy.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_amp):
            loss, _ = algo.loss(tasks)
        loss.backward()
        gradients[use_amp] = flat(p.grad for p in policy.parameters())
        assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in policy.parameters())
    relative_error = ((gradients[True] - gradients[False]).norm() / gradients[False].norm()).item()
    cosine = torch.nn.functional.cosine_similarity(gradients[True], gradients[False], dim=0).item()
    print(f"{policy_type}: AMP relative error {relative_error:.2e}, cosine {cosine:.6f}")
    assert relative_error < 0.03 and cosine > 0.999, (relative_error, cosine)


def test_use_amp_in_the_learner_changes_the_update_by_a_little():
    """The learner's own autocast is applied (the result differs from fp32) and stays close to fp32."""
    torch.manual_seed(0)
    policy = build_policy(39, 4, PolicyConfig(hidden_size=64))
    algo = MAMLPPO(policy, MAMLConfig(), PPOConfig(num_ppo_epochs=1, meta_lr=1e-3))
    generator = torch.Generator().manual_seed(3)

    def batch():
        obs, actions = torch.randn(4, 50, 39, generator=generator), torch.randn(4, 50, 4, generator=generator)
        with torch.no_grad():
            recorded = log_prob(policy, dict(policy.named_parameters()), obs, actions)
        return TensorBatch(obs, actions, recorded, torch.randn(4, 50, generator=generator))

    tasks = [TaskTensors((batch(),), batch()) for _ in range(2)]
    before = flat(p.detach() for p in policy.parameters())
    fp32, _ = updated_params(policy, algo, tasks, LearnerConfig())
    amp, metrics = updated_params(policy, algo, tasks, LearnerConfig(use_amp=True))
    assert not torch.equal(fp32, amp)
    step_fp32, step_amp = fp32 - before, amp - before
    assert ((step_amp - step_fp32).norm() / step_fp32.norm()).item() < 0.1
    assert all(p.dtype == torch.float32 for p in policy.parameters())


def scan_derivatives(scan, log_decay, inputs, h0, weights):
    """Output, first derivatives of a weighted sum, and second derivatives of their squared norms."""
    out = scan(log_decay, inputs, h0)
    first = torch.autograd.grad((out * weights).sum(), [log_decay, inputs, h0], create_graph=True)
    second = torch.autograd.grad(sum(g.square().sum() for g in first), [log_decay, inputs, h0])
    return out, first + second


def assert_same_derivatives(reference, fast):
    assert (reference[0] - fast[0]).abs().max() < 1e-10
    for expected, got in zip(reference[1], fast[1]):
        assert ((expected - got).norm() / expected.norm()).item() < 1e-10


@pytest.fixture(params=sorted(ssm.VALUE_KERNELS))
def adjoint_kernel(request, monkeypatch):
    """The adjoint scan's graph-free kernel: each one."""
    monkeypatch.setattr(ssm, "_VALUE_KERNEL", request.param)
    return request.param


@pytest.mark.parametrize("scan", [scan_chunked, scan_adjoint], ids=["chunked", "adjoint"])
@pytest.mark.parametrize("shared_starts", [True, False])
def test_fast_scans_first_and_second_derivatives_equal_the_step_loop_over_5000_steps(
    shared_starts, scan, adjoint_kernel
):
    torch.manual_seed(0)
    batch, length, states = 2, 4999, 4  # prime: the two-level kernel pads its last chunk
    log_decay = (-torch.rand(states, dtype=torch.float64) * 0.01).requires_grad_()
    inputs = torch.randn(batch, length, states, dtype=torch.float64, requires_grad=True)
    starts = torch.rand(batch, length) < 0.002
    starts[:, [31, 32, 49, 50, 64, 95, 99, 4095, 4998]] = (
        True  # on chunk boundaries (32 and 50 steps), chunks' last steps, the end
    )
    if shared_starts:
        starts = starts[:1].expand(batch, length)
    else:
        starts[0, 0] = True  # row 0 drops its carried-in state, row 1 keeps it
    h0 = torch.randn(batch, states, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(batch, length, states, dtype=torch.float64)
    if scan is scan_chunked and adjoint_kernel == "step_loop":
        pytest.skip("the kernel choice is the adjoint scan's only")

    def run(scan):
        return scan_derivatives(lambda a, u, h: scan(a, starts, u, h), log_decay, inputs, h0, weights)

    assert_same_derivatives(run(scan_reference), run(scan))


def test_adjoint_scan_under_vmap_over_tasks_has_the_step_loops_first_and_second_derivatives(adjoint_kernel):
    """The batched meta-gradient vmaps the policy over tasks, each with its own decay rates."""
    torch.manual_seed(3)
    tasks, batch, length, states = 3, 2, 300, 4
    log_decay = (-torch.rand(tasks, states, dtype=torch.float64) * 0.05).requires_grad_()
    inputs = torch.randn(tasks, batch, length, states, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(tasks, batch, states, dtype=torch.float64, requires_grad=True)
    starts = torch.rand(batch, length) < 0.01  # shared by the tasks, as the policy's episode starts are
    starts[:, 0] = False  # the carried-in state counts...
    starts[0, 0] = True  # ...except in row 0
    weights = torch.randn(tasks, batch, length, states, dtype=torch.float64)

    def run(scan):
        vmapped = torch.func.vmap(lambda a, u, h: scan(a, starts, u, h))
        return scan_derivatives(vmapped, log_decay, inputs, h0, weights)

    assert_same_derivatives(run(scan_reference), run(scan_adjoint))
