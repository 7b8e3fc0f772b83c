"""Success-rate estimates: hand-computed aggregates, and intervals that behave as a stratified
bootstrap must (width of a binomial proportion, no spread from a constant stratum, reproducible)."""

import numpy as np
import pytest

from metarl_ray.statistics import estimate


def test_mean_is_the_mean_of_class_means_and_iqm_the_middle_half_of_all_samples():
    scores = {"a": np.array([1.0, 1.0, 0.0, 1.0]), "b": np.array([0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0])}
    result = estimate(scores)
    assert result.mean == pytest.approx((0.75 + 0.25) / 2)
    pooled = np.sort(np.concatenate(list(scores.values())))  # 12 samples: drop 3 from each end
    assert result.iqm == pytest.approx(pooled[3:9].mean())
    assert result.num_samples == 12


def test_interval_of_a_proportion_matches_the_binomial_standard_error():
    rng = np.random.default_rng(0)
    scores = (rng.random(400) < 0.4).astype(float)
    result = estimate({"only": scores})
    low, high = result.mean_ci95
    p = scores.mean()
    expected_half_width = 1.96 * np.sqrt(p * (1 - p) / scores.size)  # 0.048
    assert low < p < high
    assert (high - low) / 2 == pytest.approx(expected_half_width, rel=0.1)


def test_a_constant_stratum_adds_no_spread():
    rng = np.random.default_rng(1)
    varying = (rng.random(300) < 0.5).astype(float)
    alone = estimate({"varying": varying}).mean_ci95
    with_constant = estimate({"varying": varying, "solved": np.ones(300)}).mean_ci95
    # mean of class means = (varying + 1) / 2: the interval is the varying class's, halved and shifted.
    assert with_constant[1] - with_constant[0] == pytest.approx((alone[1] - alone[0]) / 2, rel=0.1)
    assert np.mean(with_constant) == pytest.approx((np.mean(alone) + 1) / 2, abs=0.01)


def test_intervals_are_reproducible_and_degenerate_cases_are_explicit():
    scores = {"a": np.array([0.0, 1.0, 1.0, 0.0, 1.0]), "b": np.array([1.0, 1.0, 0.0, 1.0, 1.0])}
    assert estimate(scores) == estimate(scores)
    assert estimate({"a": np.ones(5)}).mean_ci95 == (1.0, 1.0)
    assert estimate({"a": np.array([1.0]), "b": np.array([0.0, 1.0])}).mean_ci95 is None  # one sample: no spread
    with pytest.raises(ValueError, match="at least one score"):
        estimate({"a": np.array([])})
