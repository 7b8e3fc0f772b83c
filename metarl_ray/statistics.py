"""Success-rate estimates with confidence intervals: mean, interquartile mean (IQM) and 95% stratified
bootstrap intervals, as Agarwal et al. 2021 ("Deep RL at the Edge of the Statistical Precipice",
rliable) and Meta-World+ (McLean et al. 2025) recommend.

A sample is one (seed, goal) pair's score; strata are task classes. The bootstrap resamples the
samples of each class independently, with replacement (rliable's ``StratifiedBootstrap`` with classes
as tasks), and recomputes the aggregate: the mean over classes of each class's mean (Meta-World's
figure weights every class equally), or the IQM of all samples pooled (rliable's ``aggregate_iqm``).
Runs with different seeds meta-test different goal sets (Meta-World derives the test goals from the
seed), so (seed, goal) pairs are independent draws and one bootstrap covers seeds and goals at once.

The resampling is ``scipy.stats.bootstrap``, which resamples each of several samples independently;
rliable 1.2.0 itself does not import with pandas 3 (its ``arch`` dependency), and ``arch`` 8 changed the
API it calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
NUM_RESAMPLES = 5000
IQM_TRIM = 0.25  # trimmed from each end: the mean of the middle 50%


@dataclass(frozen=True)
class Estimate:
    """An aggregate of per-sample scores with 95% percentile-bootstrap intervals (None when some class
    has fewer than 2 samples: one sample bootstraps to itself and says nothing about spread)."""

    num_samples: int
    mean: float
    iqm: float
    mean_ci95: tuple[float, float] | None
    iqm_ci95: tuple[float, float] | None

    def to_dict(self) -> dict[str, object]:
        return {"num_samples": self.num_samples, "mean": self.mean, "iqm": self.iqm,
                "mean_ci95": None if self.mean_ci95 is None else list(self.mean_ci95),
                "iqm_ci95": None if self.iqm_ci95 is None else list(self.iqm_ci95)}


def mean_of_class_means(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean([np.mean(sample, axis=axis) for sample in samples], axis=0)


def pooled_iqm(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    return stats.trim_mean(np.concatenate(samples, axis=axis), IQM_TRIM, axis=axis)


def _interval(samples: list[np.ndarray], statistic, seed: int) -> tuple[float, float]:
    result = stats.bootstrap(samples, statistic, n_resamples=NUM_RESAMPLES, confidence_level=CONFIDENCE,
                             method="percentile", vectorized=True, rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return float(low), float(high)


def estimate(scores_by_class: Mapping[str, np.ndarray], seed: int = 0) -> Estimate:
    """Mean, IQM and their stratified bootstrap intervals of per-sample scores grouped by class."""
    samples = [np.asarray(scores_by_class[name], dtype=np.float64).ravel() for name in sorted(scores_by_class)]
    if not samples or any(sample.size == 0 for sample in samples):
        raise ValueError("estimate: every class needs at least one score")
    mean = float(mean_of_class_means(*samples))
    iqm = float(pooled_iqm(*samples))
    if min(sample.size for sample in samples) < 2:
        return Estimate(sum(s.size for s in samples), mean, iqm, None, None)
    if all(np.all(sample == samples[0][0]) for sample in samples):
        # Every score equal (all goals solved, or none): every resample is the same; scipy would warn.
        return Estimate(sum(s.size for s in samples), mean, iqm, (mean, mean), (iqm, iqm))
    return Estimate(sum(s.size for s in samples), mean, iqm,
                    _interval(samples, mean_of_class_means, seed), _interval(samples, pooled_iqm, seed))
