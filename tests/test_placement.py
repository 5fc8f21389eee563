"""Threshold placement on one marker: valley, mixture and tail, each with evidence and fallback."""

from __future__ import annotations

import numpy as np
import pytest

from cartflow.gating.placement import (
    Bounds,
    mixture_threshold,
    tail_threshold,
    valley_threshold,
)

BOUNDS = Bounds(0.2, 0.6, 0.35)


def _bimodal(rng, negative=0.12, positive=0.65, share=0.4, n=20_000, sd=0.05):
    pos = rng.random(n) < share
    return np.where(pos, rng.normal(positive, sd, n), rng.normal(negative, sd, n)), pos


@pytest.mark.parametrize("seed", range(5))
def test_valley_separates_two_modes(seed):
    rng = np.random.default_rng(seed)
    values, truth = _bimodal(rng, positive=rng.uniform(0.55, 0.75))
    decision = valley_threshold(values, BOUNDS)
    assert not decision.fallback
    assert 0.2 < decision.value < 0.55
    accuracy = np.mean((values >= decision.value) == truth)
    assert accuracy > 0.995
    assert len(decision.evidence["peaks"]) >= 2


def test_valley_falls_back_on_one_mode():
    values = np.random.default_rng(1).normal(0.12, 0.05, 5000)
    decision = valley_threshold(values, BOUNDS)
    assert decision.fallback and decision.value == BOUNDS.default
    assert "one mode" in decision.reason


def test_valley_whose_empty_gap_reaches_into_the_bounds():
    """Beads (tight, bright) beside cells bright in every channel: the density is zero across
    the whole gap, and its first zero lies below the bounds; the gap inside them is the valley."""
    rng = np.random.default_rng(7)
    cells = rng.normal(0.06, 0.07, 40_000)
    all_bright = rng.normal(0.45, 0.02, 300)  # e.g. CAR-T positive for every marker
    beads = rng.normal(0.77, 0.006, 450)
    values = np.concatenate([cells, all_bright, beads])
    decision = valley_threshold(values, Bounds(0.6, 0.95, 0.8))
    assert not decision.fallback, decision.reason
    assert all_bright.max() < decision.value < beads.min()


def test_too_few_events_fall_back():
    decision = valley_threshold(np.array([0.1, 0.7, 0.72]), BOUNDS)
    assert decision.fallback and "only 3 events" in decision.reason


def test_mixture_finds_the_crossing():
    rng = np.random.default_rng(3)
    values, truth = _bimodal(rng, share=0.3)
    decision = mixture_threshold(values, BOUNDS)
    assert not decision.fallback
    assert np.mean((values >= decision.value) == truth) > 0.995
    assert decision.evidence["separation"] > 1


def test_mixture_refuses_overlapping_components():
    values = np.random.default_rng(4).normal(0.3, 0.1, 5000)
    decision = mixture_threshold(values, BOUNDS)
    assert decision.fallback


def test_tail_anchors_on_the_negative_population():
    rng = np.random.default_rng(5)
    negatives = rng.normal(0.12, 0.04, 10_000)
    decision = tail_threshold(negatives, BOUNDS, quantile=0.999, margin=0.02)
    assert decision.value == pytest.approx(np.quantile(negatives, 0.999) + 0.02)
    assert not decision.fallback
    out_of_bounds = tail_threshold(negatives + 0.5, BOUNDS)
    assert out_of_bounds.fallback and "outside bounds" in out_of_bounds.reason


def test_non_finite_values_are_ignored():
    rng = np.random.default_rng(6)
    values, _ = _bimodal(rng)
    values[:100] = np.nan
    values[100:200] = np.inf
    assert not valley_threshold(values, BOUNDS).fallback


def test_bounds_must_contain_the_default():
    with pytest.raises(ValueError, match="outside bounds"):
        Bounds(0.2, 0.3, 0.5)


def test_a_core_fit_ignores_a_tenth_of_outliers_as_scikit_learns_mcd_does():
    """The core's one-start minimum covariance determinant agrees with scikit-learn's
    MinCovDet (30 random starts) on a correlated Gaussian with 10 % outliers beside it,
    where the plain mean and covariance are pulled towards the outliers."""
    from sklearn.covariance import MinCovDet

    from cartflow.gating.scatter_gates.core import _robust_gaussian

    rng = np.random.default_rng(5)
    cov = np.array([[1.0, 0.5, 0.2, 0.0], [0.5, 1.0, 0.0, 0.1], [0.2, 0.0, 1.0, -0.3],
                    [0.0, 0.1, -0.3, 1.0]])  # fmt: skip
    bulk = rng.multivariate_normal(np.zeros(4), cov, 450)
    strays = rng.multivariate_normal([-3.0, 2.0, -2.5, 2.0], 0.3 * np.eye(4), 50)
    points = np.vstack([bulk, strays]) * [9000.0, 0.1, 0.03, 0.05] + [55000.0, 4.1, 0.65, 0.12]
    scale = np.array([9000.0, 0.1, 0.03, 0.05])
    mean, covariance = _robust_gaussian(points)
    reference = MinCovDet(random_state=0).fit(points / scale)
    np.testing.assert_allclose(mean / scale, reference.location_, atol=0.1)
    ours = covariance / np.outer(scale, scale)
    np.testing.assert_allclose(ours, reference.covariance_, atol=0.15)
    np.testing.assert_allclose(ours, cov, atol=0.2)
    plain = np.cov(points / scale, rowvar=False)
    assert np.abs(plain - cov).max() > 0.5  # the outliers pull a plain fit far off


@pytest.mark.parametrize(("events", "most"), [(50, 0.03), (200, 0.006), (2000, 0.003)])
def test_a_core_keeps_its_own_cells_as_the_readme_says(events, most):
    """On clean Gaussian compartments the two 99.9 % ellipses of the fitted core together
    drop about 0.2 % of the events, more when there are few (README: 2 % at 50, 0.4 % at
    200), never a share that would matter beside the compartment's Poisson noise."""
    from scipy.stats import chi2

    from cartflow.gating.scatter_gates.core import _mahalanobis, _robust_gaussian

    rng, limit, dropped = np.random.default_rng(11), chi2.ppf(0.999, 2), []
    for _ in range(8_000 // events + 30):
        root = rng.normal(size=(4, 4))
        points = rng.multivariate_normal(np.zeros(4), root @ root.T + np.eye(4), events)
        mean, cov = _robust_gaussian(points)
        out = np.zeros(events, dtype=bool)
        for ix in ([0, 1], [2, 3]):
            out |= _mahalanobis(points[:, ix], mean[ix], cov[np.ix_(ix, ix)]) > limit
        dropped.append(out.mean())
    assert 0.001 < np.mean(dropped) <= most, np.mean(dropped)


def test_a_core_fit_refuses_an_axis_that_does_not_vary():
    from cartflow.gating.scatter_gates.core import _robust_gaussian

    points = np.random.default_rng(1).normal(size=(100, 3))
    points[:, 1] = 4.0
    with pytest.raises(ValueError, match="does not vary"):
        _robust_gaussian(points)
