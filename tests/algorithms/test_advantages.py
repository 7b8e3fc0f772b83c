import numpy as np

from metarl_ray.algorithms.advantages import (
    compute_advantages,
    compute_gae,
    discounted_returns,
    fit_linear_baseline,
    linear_baseline_features,
)


def test_discounted_returns_by_hand():
    rewards = np.array([[1.0, 2.0, 3.0]])
    np.testing.assert_allclose(discounted_returns(rewards, 0.5), [[1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0]])


def test_gae_matches_hand_computation():
    rewards = np.array([[1.0, 0.0, 2.0]])
    values = np.array([[0.5, 1.0, 1.5]])
    gamma, lam = 0.9, 0.8
    # deltas: r_t + gamma V_{t+1} - V_t, with V_3 = 0 (episode truncated at T)
    d0 = 1.0 + 0.9 * 1.0 - 0.5
    d1 = 0.0 + 0.9 * 1.5 - 1.0
    d2 = 2.0 + 0.0 - 1.5
    expected = [[d0 + 0.72 * d1 + 0.72**2 * d2, d1 + 0.72 * d2, d2]]
    np.testing.assert_allclose(compute_gae(rewards, values, gamma, lam), expected, rtol=1e-12)


def test_gae_with_lambda_one_is_return_minus_value():
    rng = np.random.default_rng(0)
    rewards, values = rng.normal(size=(3, 7)), rng.normal(size=(3, 7))
    np.testing.assert_allclose(
        compute_gae(rewards, values, 0.97, 1.0), discounted_returns(rewards, 0.97) - values, atol=1e-12
    )


def test_linear_baseline_fits_a_linear_target_exactly():
    rng = np.random.default_rng(1)
    obs = rng.normal(size=(4, 20, 3))
    features = linear_baseline_features(obs)
    true_coeffs = rng.normal(size=features.shape[-1])
    coeffs = fit_linear_baseline(obs, features @ true_coeffs, reg_coef=1e-10)
    np.testing.assert_allclose(features @ coeffs, features @ true_coeffs, atol=1e-5)


def test_advantages_are_normalised_per_batch():
    rng = np.random.default_rng(2)
    advantages = compute_advantages(rng.normal(size=(5, 30, 39)), rng.normal(size=(5, 30)), 0.99, 1.0)
    assert advantages.dtype == np.float32 and advantages.shape == (5, 30)
    assert abs(advantages.mean()) < 1e-5 and abs(advantages.std() - 1.0) < 1e-3
