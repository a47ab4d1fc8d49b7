"""The power-law fit recovers known exponents from synthetic noisy data, with honest intervals and R^2."""

from __future__ import annotations

import numpy as np
import pytest

from eval_suite.scaling import compute_frontier, fit_joint_law, fit_power_law

X = np.logspace(1, 4, 12)


def test_noiseless_pure_power_law_is_exact():
    fit = fit_power_law(X, 3.0 * X**-0.8, with_offset=False)
    assert fit.alpha == pytest.approx(0.8, rel=1e-6)
    assert fit.a == pytest.approx(3.0, rel=1e-5)
    assert fit.c == 0.0 and fit.r2 == pytest.approx(1.0)


def test_recovers_exponent_and_floor_from_noisy_data():
    rng = np.random.default_rng(0)
    true = 2.0 * X**-0.7 + 0.005
    y = true * np.exp(0.03 * rng.standard_normal(X.shape))  # 3% multiplicative noise
    fit = fit_power_law(X, y)
    lo, hi = fit.ci["alpha"]
    assert lo < 0.7 < hi and hi - lo < 0.3
    assert fit.alpha == pytest.approx(0.7, abs=0.08)
    assert fit.c == pytest.approx(0.005, rel=0.3)
    assert fit.r2 > 0.99
    np.testing.assert_allclose(fit.predict(X), true, rtol=0.05)


def test_bootstrap_interval_covers_the_truth_and_is_seeded():
    rng = np.random.default_rng(1)
    y = 0.5 * X**-0.4 * np.exp(0.05 * rng.standard_normal(X.shape))
    fit = fit_power_law(X, y, with_offset=False, bootstrap=200, seed=3)
    lo, hi = fit.ci["alpha"]
    assert lo < 0.4 < hi and fit.method.startswith("bootstrap (200")
    assert fit_power_law(X, y, with_offset=False, bootstrap=200, seed=3).ci == fit.ci


def test_r2_is_low_for_data_without_a_trend():
    rng = np.random.default_rng(2)
    y = 0.1 * np.exp(0.2 * rng.standard_normal(X.shape))
    fit = fit_power_law(X, y, with_offset=False)
    assert fit.r2 < 0.5 and abs(fit.alpha) < 0.1


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 3 points"):
        fit_power_law([1, 2], [1, 0.5])
    with pytest.raises(ValueError, match="positive and finite"):
        fit_power_law([1, 2, 4], [1, 0.0, 0.2])
    with pytest.raises(ValueError, match="one length"):
        fit_power_law([1, 2, 4], [1, 0.5])
    three = fit_power_law([1, 2, 4], [1.0, 0.6, 0.4])
    assert np.isnan(three.ci["alpha"][0]) and "no degrees of freedom" in three.notes[-1]


def test_joint_law_recovers_both_exponents():
    rng = np.random.default_rng(4)
    n, d = (v.ravel() for v in np.meshgrid(np.logspace(4, 7, 4), np.logspace(2, 5, 4)))
    true = 30.0 * n**-0.35 + 5.0 * d**-0.3 + 0.01
    fit = fit_joint_law(n, d, true * np.exp(0.02 * rng.standard_normal(n.shape)))
    assert fit.alpha == pytest.approx(0.35, abs=0.06) and fit.beta == pytest.approx(0.3, abs=0.06)
    assert fit.ci["alpha"][0] < 0.35 < fit.ci["alpha"][1] and fit.r2 > 0.98
    np.testing.assert_allclose(fit.predict(n, d), true, rtol=0.06)
    with pytest.raises(ValueError, match="vary both N"):
        fit_joint_law(np.full(6, 1e5), np.logspace(2, 4, 6), np.linspace(1, 0.5, 6))


def test_compute_frontier_keeps_points_no_cheaper_point_beats():
    flops = [1, 2, 3, 4, 5]
    errors = [0.5, 0.6, 0.4, 0.45, 0.3]
    assert compute_frontier(flops, errors).tolist() == [0, 2, 4]
