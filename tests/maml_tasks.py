"""Tiny float64 MAML+PPO set-ups and tasks shared by the algorithm and learner tests (``tests/`` is on
the test path through its conftest)."""

import torch

from metarl_ray.algorithms.maml_ppo import MAMLPPO, TaskTensors, TensorBatch
from metarl_ray.config import MAMLConfig, PolicyConfig, PPOConfig
from metarl_ray.policies import build_policy
from metarl_ray.policies.common import log_prob

OBS, ACT = 5, 2


def make_setup(first_order=False, num_inner_steps=1, seed=0, policy_type="mlp", ssm_scan="adjoint"):
    torch.manual_seed(seed)
    config = PolicyConfig(
        policy_type=policy_type,
        hidden_size=4 if policy_type == "ssm" else 6,
        num_hidden_layers=1,
        state_size=3,
        num_ssm_layers=1,
        ssm_scan=ssm_scan,
    )
    policy = build_policy(OBS, ACT, config).double()
    with torch.no_grad():  # a non-trivial mean head, so every parameter matters
        head = policy.mean_net[-1] if policy_type == "mlp" else policy.head
        head.weight.normal_(0, 0.5)
        policy.log_std.fill_(-0.3)
    algo = MAMLPPO(
        policy,
        MAMLConfig(inner_lr=0.3, num_inner_steps=num_inner_steps, first_order=first_order),
        PPOConfig(meta_lr=1e-2, num_ppo_epochs=1, clip_eps=0.2),
    )
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
