"""PPO's clipped surrogate (Schulman et al. 2017), the outer objective of both meta-learners."""

from __future__ import annotations

import torch


def clipped_surrogate(
    new_log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor, clip_eps: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """-mean_t min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t) per task, r_t = pi_new / pi_old:
    log-probs and advantages (..., N, T) -> loss (...,), and KL / clip-fraction statistics (...,)."""
    log_ratio = new_log_probs - old_log_probs
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    loss = -torch.min(ratio * advantages, clipped * advantages).flatten(-2).mean(-1)
    with torch.no_grad():
        stats = {
            # (r - 1) - log r: the low-variance estimator of KL(old || new), Schulman 2020.
            "ppo/kl": ((ratio - 1.0) - log_ratio).flatten(-2).mean(-1),
            "ppo/clip_fraction": ((ratio - 1.0).abs() > clip_eps).float().flatten(-2).mean(-1),
        }
    return loss, stats
