"""Success-rate estimates with confidence intervals over seeds and goals: mean, interquartile mean
(IQM) and 95% bootstrap intervals, as Agarwal et al. 2021 ("Deep RL at the Edge of the Statistical
Precipice", rliable) and Meta-World+ (McLean et al. 2025) recommend.

Scores come as a table ``(num_seeds, num_classes, num_goals)``: one score per (seed, task class, goal).
All goals of one seed share one trained policy, so they are not independent draws of the method; the
interval resamples at both levels (a two-stage, or hierarchical, bootstrap): seeds with replacement,
then, within every drawn seed and every class, that class's goals with replacement. Classes are strata
and are never resampled, as in rliable's stratified bootstrap. With one seed the interval covers goals
only, and says nothing about seed-to-seed spread.

- mean: mean over classes of the class's mean over seeds and goals (Meta-World weights classes equally);
- IQM: rliable's ``aggregate_iqm`` on the seeds x classes table of per-(seed, class) success rates,
  i.e. the mean of its middle 50% (``scipy.stats.trim_mean(..., 0.25)``).

rliable 1.2.0 itself does not import with pandas 3 (its ``arch`` dependency) and fails with ``arch`` 8,
and ``scipy.stats.bootstrap`` has no two-stage resampling, so the resampling is written here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
NUM_RESAMPLES = 5000
IQM_TRIM = 0.25  # trimmed from each end: the mean of the middle 50%
_MAX_RESAMPLE_ELEMENTS = 4_000_000  # bootstrap resamples are drawn in blocks of at most this many scores


@dataclass(frozen=True)
class Estimate:
    """An aggregate of scores with 95% percentile-bootstrap intervals (None when there is only one
    goal per class and one seed: nothing to resample)."""

    num_seeds: int
    num_samples: int  # (seed, goal) pairs over all classes
    mean: float
    iqm: float
    mean_ci95: tuple[float, float] | None
    iqm_ci95: tuple[float, float] | None

    def to_dict(self) -> dict[str, object]:
        return {
            "num_seeds": self.num_seeds,
            "num_samples": self.num_samples,
            "mean": self.mean,
            "iqm": self.iqm,
            "mean_ci95": None if self.mean_ci95 is None else list(self.mean_ci95),
            "iqm_ci95": None if self.iqm_ci95 is None else list(self.iqm_ci95),
        }


def _mean_and_iqm(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., seeds, classes, goals) -> mean and IQM over the last three axes."""
    rates = scores.mean(axis=-1)  # (..., seeds, classes)
    mean = rates.mean(axis=-2).mean(axis=-1)
    iqm = stats.trim_mean(rates.reshape(*rates.shape[:-2], -1), IQM_TRIM, axis=-1)
    return mean, iqm


def _bootstrap(scores: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    num_seeds, num_classes, num_goals = scores.shape
    rng = np.random.default_rng(seed)
    block = max(1, _MAX_RESAMPLE_ELEMENTS // scores.size)
    means, iqms = [], []
    classes = np.arange(num_classes)[None, None, :, None]
    for start in range(0, NUM_RESAMPLES, block):
        size = min(block, NUM_RESAMPLES - start)
        seeds = rng.integers(num_seeds, size=(size, num_seeds))[:, :, None, None]
        goals = rng.integers(num_goals, size=(size, num_seeds, num_classes, num_goals))
        mean, iqm = _mean_and_iqm(scores[seeds, classes, goals])
        means.append(mean)
        iqms.append(iqm)
    return np.concatenate(means), np.concatenate(iqms)


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def estimate(scores: np.ndarray, seed: int = 0) -> Estimate:
    """Mean, IQM and their two-stage bootstrap intervals of a (seeds, classes, goals) score table."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 3 or scores.size == 0:
        raise ValueError(f"estimate: expected a non-empty (seeds, classes, goals) table, got shape {scores.shape}")
    num_seeds, num_classes, num_goals = scores.shape
    mean, iqm = (float(value) for value in _mean_and_iqm(scores))
    if num_seeds == 1 and num_goals == 1:
        return Estimate(num_seeds, num_seeds * num_classes * num_goals, mean, iqm, None, None)
    boot_mean, boot_iqm = _bootstrap(scores, seed)
    return Estimate(
        num_seeds, num_seeds * num_classes * num_goals, mean, iqm, _percentiles(boot_mean), _percentiles(boot_iqm)
    )
