"""Success-rate estimates: hand-computed aggregates, and intervals that behave as a two-stage
(seeds, then goals) bootstrap stratified by class must."""

import numpy as np
import pytest

from metarl_ray.evaluation.statistics import estimate


def test_mean_is_the_mean_of_class_means_and_iqm_rliables_over_seed_class_rates():
    # 2 seeds x 2 classes x 4 goals; per-(seed, class) rates: [[0.75, 0.25], [1.0, 0.5]]
    scores = np.array([[[1, 1, 0, 1], [0, 0, 1, 0]], [[1, 1, 1, 1], [1, 0, 1, 0]]], dtype=float)
    result = estimate(scores)
    assert result.mean == pytest.approx(((0.75 + 1.0) / 2 + (0.25 + 0.5) / 2) / 2)
    assert result.iqm == pytest.approx(np.mean([0.5, 0.75]))  # the middle 2 of the 4 sorted rates
    assert (result.num_seeds, result.num_samples) == (2, 16)


def test_one_seed_interval_of_a_proportion_matches_the_binomial_standard_error():
    rng = np.random.default_rng(0)
    scores = (rng.random((1, 1, 400)) < 0.4).astype(float)
    low, high = estimate(scores).mean_ci95
    p = scores.mean()
    assert low < p < high
    assert (high - low) / 2 == pytest.approx(1.96 * np.sqrt(p * (1 - p) / 400), rel=0.1)


def test_seeds_that_disagree_widen_the_interval_beyond_the_goal_noise():
    rng = np.random.default_rng(1)
    # Three seeds whose policies succeed at 0.2, 0.5 and 0.8, 200 goals each: an interval over
    # (seed, goal) pairs as independent draws would be +-0.04; seed-to-seed spread must show.
    scores = np.stack([(rng.random((1, 200)) < p).astype(float) for p in (0.2, 0.5, 0.8)])
    low, high = estimate(scores).mean_ci95
    pooled_half_width = 1.96 * np.sqrt(0.25 / 600)
    assert (high - low) / 2 > 4 * pooled_half_width
    assert low < 0.35 and high > 0.65


def test_a_constant_class_adds_no_spread():
    rng = np.random.default_rng(2)
    varying = (rng.random((1, 1, 300)) < 0.5).astype(float)
    alone = estimate(varying).mean_ci95
    with_constant = estimate(np.concatenate([varying, np.ones((1, 1, 300))], axis=1)).mean_ci95
    # mean of class means = (varying + 1) / 2: the varying class's interval, halved and shifted.
    assert with_constant[1] - with_constant[0] == pytest.approx((alone[1] - alone[0]) / 2, rel=0.1)
    assert np.mean(with_constant) == pytest.approx((np.mean(alone) + 1) / 2, abs=0.01)


def test_intervals_are_reproducible_and_degenerate_cases_are_explicit():
    scores = np.array([[[0, 1, 1, 0, 1], [1, 1, 0, 1, 1]]], dtype=float)
    assert estimate(scores) == estimate(scores)
    assert estimate(np.ones((2, 1, 5))).mean_ci95 == (1.0, 1.0)
    assert estimate(np.ones((1, 3, 1))).mean_ci95 is None  # one seed, one goal per class: nothing to resample
    with pytest.raises(ValueError, match=r"\(seeds, classes, goals\)"):
        estimate(np.ones((3, 4)))
