"""Absolute counts and percentages: exact intervals, detection limits and flags."""

from __future__ import annotations

import numpy as np
import pytest

from cartflow.pipeline.counts import (
    CountSettings,
    bead_concentration,
    clopper_pearson,
    dual_platform_concentration,
    percentage,
    poisson_interval,
    wilson,
)


def test_poisson_interval_reference_values():
    assert poisson_interval(0) == pytest.approx((0.0, 3.689), abs=1e-3)
    assert poisson_interval(10) == pytest.approx((4.795, 18.390), abs=1e-3)
    assert poisson_interval(100) == pytest.approx((81.364, 121.627), abs=1e-3)


def test_binomial_intervals_reference_values():
    assert clopper_pearson(5, 50) == pytest.approx((0.03327, 0.21813), abs=1e-4)
    assert wilson(5, 50) == pytest.approx((0.04347, 0.21360), abs=1e-4)


def test_single_platform_formula_and_limits():
    result = bead_concentration(400, 5000, 50_000, 50.0)
    assert result.cells_per_ul == pytest.approx(400 / 5000 * 50_000 / 50)
    assert result.ci_low < result.cells_per_ul < result.ci_high
    analysed = 50.0 * 5000 / 50_000
    assert result.lod == pytest.approx(20 / analysed)
    assert result.lloq == pytest.approx(50 / analysed)
    assert result.flags == ()
    assert result.method == "single-platform beads"
    assert result.inputs["beads_per_tube"] == 50_000


def test_rare_counts_are_flagged_not_zeroed():
    zero = bead_concentration(0, 5000, 50_000, 50.0)
    assert zero.cells_per_ul == 0.0 and zero.ci_high > 0
    assert zero.below_lod and zero.below_lloq
    rare = bead_concentration(30, 5000, 50_000, 50.0)
    assert not rare.below_lod and rare.below_lloq


@pytest.mark.parametrize(
    ("beads", "per_tube", "volume", "flag"),
    [
        (0, 50_000, 50.0, "no_bead_events"),
        (None, 50_000, 50.0, "no_bead_events"),
        (5000, None, 50.0, "missing_beads_per_tube"),
        (5000, 50_000, None, "missing_blood_volume"),
        (60_000, 50_000, 50.0, "bead_events_exceed_beads_per_tube"),
        (40, 50_000, 50.0, "too_few_bead_events"),  # default minimum: 100
        (5000, 50_000, float("nan"), "missing_blood_volume"),
        (5000, float("nan"), 50.0, "missing_beads_per_tube"),
        (5000, 50_000, -50.0, "implausible_blood_volume"),
        (5000, -50_000, 50.0, "implausible_beads_per_tube"),
        (5000, float("inf"), 50.0, "implausible_beads_per_tube"),
    ],
)
def test_bad_bead_inputs_give_a_flag_and_no_number(beads, per_tube, volume, flag):
    result = bead_concentration(100, beads, per_tube, volume)
    assert result.cells_per_ul is None
    assert flag in result.flags


def test_dual_platform():
    result = dual_platform_concentration(250, 10_000, 1500.0)
    assert result.cells_per_ul == pytest.approx(37.5)
    assert result.ci_low < 37.5 < result.ci_high
    assert dual_platform_concentration(5, 100, None).flags == ("missing_haematology_count",)
    for bad, flag in ((float("nan"), "missing"), (-1500.0, "implausible")):
        result = dual_platform_concentration(5, 100, bad)
        assert result.cells_per_ul is None and result.flags == (f"{flag}_haematology_count",)


def test_percentage_not_evaluable_below_lloq():
    assert not percentage(3, 40).evaluable
    value = percentage(30, 200)
    assert value.evaluable and value.percent == pytest.approx(15.0)
    assert value.ci_low < 15.0 < value.ci_high
    exact = percentage(30, 200, CountSettings(proportion_method="clopper-pearson"))
    assert exact.ci_low < value.ci_low


def test_bead_interval_is_calibrated_by_simulation():
    """Poisson cells and beads: the 95 % interval covers the truth in about 95 % of draws."""
    rng = np.random.default_rng(7)
    truth, per_tube, volume, fraction = 12.0, 50_000, 50.0, 0.08
    covered = 0
    draws = 4000
    cells = rng.poisson(truth * volume * fraction, draws)
    beads = rng.poisson(per_tube * fraction, draws)
    for k, b in zip(cells, beads, strict=True):
        result = bead_concentration(int(k), int(b), per_tube, volume)
        covered += result.ci_low <= truth <= result.ci_high
    assert 0.94 <= covered / draws <= 0.98


def test_below_lod_interval_starts_at_zero_and_keeps_the_exact_upper_end():
    exact = bead_concentration(5, 5000, 50_000, 50.0, CountSettings(below_lod_from_zero=False))
    result = bead_concentration(5, 5000, 50_000, 50.0)
    assert result.below_lod and result.cells_per_ul == exact.cells_per_ul > 0
    assert exact.ci_low > 0 and result.ci_low == 0.0
    assert result.ci_high == exact.ci_high
    assert result.inputs["interval"].startswith("below LOD")
    above = bead_concentration(20, 5000, 50_000, 50.0)  # at the LOD: the exact interval
    assert not above.below_lod and above.ci_low > 0 and above.inputs["interval"] == "exact"
