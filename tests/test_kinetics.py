"""Kinetics with hand-computed values (the worked example of the domain notes)."""

from __future__ import annotations

import pandas as pd
import pytest

from cartflow.pipeline.kinetics import (
    AUC14_DAYS,
    KineticsOptions,
    Observation,
    auc,
    b_cell_aplasia,
    patient_kinetics,
    summarise,
)

EXAMPLE = [Observation(5, 10.0), Observation(7, 80.0), Observation(11, 40.0), Observation(14, 20.0)]


def test_auc14_linear():
    assert auc(EXAMPLE, AUC14_DAYS).value == pytest.approx(420.0)


def test_auc14_anchored_at_day0():
    assert auc(EXAMPLE, AUC14_DAYS, KineticsOptions(anchor_day0=True)).value == pytest.approx(445.0)


def test_auc14_linear_up_log_down():
    result = auc(EXAMPLE, AUC14_DAYS, KineticsOptions(method="linear-up/log-down"))
    assert result.value == pytest.approx(407.4, abs=0.05)


def test_missing_day11_is_bridged():
    without = [o for o in EXAMPLE if o.nominal_day != 11]
    assert auc(without, AUC14_DAYS).value == pytest.approx(440.0)


def test_two_points_are_not_computed():
    result = auc(EXAMPLE[:2], AUC14_DAYS)
    assert result.value is None
    assert "2 point(s)" in result.reason


def test_below_lod_conventions():
    obs = [
        Observation(5, None, below_lod=True),
        Observation(7, 80.0),
        Observation(11, None, below_lod=True),
        Observation(14, 20.0),
        Observation(21, None, below_lod=True),
    ]
    # leading → 0 at day 5, middle dropped, trailing → 0 at day 21
    expected = (0 + 80) / 2 * 2 + (80 + 20) / 2 * 7 + (20 + 0) / 2 * 7
    assert auc(obs, None).value == pytest.approx(expected)


def test_a_window_auc_does_not_change_when_later_timepoints_arrive():
    through_day14 = [*EXAMPLE[:3], Observation(14, None, below_lod=True)]
    expected = (10 + 80) / 2 * 2 + (80 + 40) / 2 * 4 + (40 + 0) / 2 * 3  # trailing → 0
    assert auc(through_day14, AUC14_DAYS).value == pytest.approx(expected)
    with_day21 = [*through_day14, Observation(21, 30.0)]  # day 14 now a middle point overall
    assert auc(with_day21, AUC14_DAYS).value == pytest.approx(expected)


def test_summary_uses_actual_days_and_flags_drift():
    obs = [
        Observation(5, 10.0, actual_day=5),
        Observation(7, 80.0, actual_day=6),
        Observation(11, 80.0, actual_day=11),
        Observation(14, 20.0, actual_day=17),
        Observation(28, 2.0, actual_day=28),
        Observation(90, None, below_lod=True, actual_day=90),
    ]
    summary = summarise(obs)
    assert (summary.cmax, summary.tmax) == (80.0, 6)  # first occurrence on ties
    assert (summary.clast, summary.tlast) == (2.0, 28)
    assert summary.persistence_day == 28
    assert summary.drift_flags == ("day 14: sampled on day 17",)
    expected = (10 + 80) / 2 * 1 + (80 + 80) / 2 * 5 + (80 + 20) / 2 * 6
    assert summary.auc14.value == pytest.approx(expected)
    assert summary.options["anchor_day0"] is False


def test_b_cell_aplasia_and_confirmed_loss():
    values = {5: 0.2, 7: 0.0, 14: 0.5, 28: 3.0, 90: 12.0}
    summary = b_cell_aplasia([Observation(d, v) for d, v in values.items()])
    assert [s.aplastic for s in summary.statuses] == [True, True, True, False, False]
    assert (summary.onset_day, summary.loss_day, summary.loss_confirmed) == (5, 28, True)
    assert summary.duration_days == 23


def test_transient_rise_is_not_a_loss():
    values = {5: 0.2, 14: 2.0, 28: 0.3, 90: 0.1}
    summary = b_cell_aplasia([Observation(d, v) for d, v in values.items()])
    assert summary.loss_day is None


def test_relapse_during_aplasia_is_cd19_negative_compatible():
    obs = [Observation(d, 0.1) for d in (5, 14, 28, 90, 180)]
    assert b_cell_aplasia(obs, relapse_day=150).cd19_negative_relapse_pattern
    recovered = [*obs[:3], Observation(90, 30.0), Observation(180, 40.0)]
    assert not b_cell_aplasia(recovered, relapse_day=150).cd19_negative_relapse_pattern


def test_a_falling_count_does_not_confirm_the_loss_of_aplasia():
    falling = [Observation(5, 0.0, True), Observation(28, 0.0, True), Observation(90, 50.0)]
    summary = b_cell_aplasia([*falling, Observation(180, 2.0)])
    assert (summary.loss_day, summary.loss_confirmed) == (90, False)
    assert b_cell_aplasia([*falling, Observation(180, 80.0)]).loss_confirmed


def test_b_cells_below_the_lod_count_as_aplastic():
    obs = [Observation(5, 0.0, True), Observation(28, 2.95, True), Observation(90, 2.95, True)]
    summary = b_cell_aplasia(obs)
    assert [s.aplastic for s in summary.statuses] == [True, True, True]
    assert summary.loss_day is None


def test_aplasia_follows_the_day_option():
    obs = [
        Observation(5, 0.0, True, actual_day=4.0),
        Observation(90, 3.0, actual_day=95.0),
        Observation(180, 10.0, actual_day=185.0),
    ]
    assert b_cell_aplasia(obs).loss_day == 95.0
    nominal = KineticsOptions(use_actual_days=False)
    summary = b_cell_aplasia(obs, options=nominal)
    assert (summary.onset_day, summary.loss_day, summary.duration_days) == (5, 90, 85)


def test_two_observations_on_one_day_are_refused():
    with pytest.raises(ValueError, match=r"day\(s\) \[7\] appear twice"):
        auc([*EXAMPLE, Observation(7, 40.0)], AUC14_DAYS)


def _timepoints(rows):
    """A timepoint table as the counts stage writes it: (tube, population, day, value, sample)."""
    return pd.DataFrame(
        [
            {
                "patient": "P1",
                "tube": tube,
                "population": population,
                "nominal_day": day,
                "actual_day": None,
                "cells_per_ul": value,
                "below_lod": value == 0.0,
                "percent_of_parent": 10.0,
                "sample_id": sample,
            }
            for tube, population, day, value, sample in rows
        ]
    )


CAR_EXAMPLE = [("memory", "CAR", o.nominal_day, o.value, i) for i, o in enumerate(EXAMPLE, 1)]


def test_kinetics_start_at_infusion_not_at_the_leukapheresis_product():
    leukapheresis = [("memory", "CAR", -30, 0.0, 90), ("bcell", "B", -30, 0.5, 91)]
    b_cells = [("bcell", "B", day, 0.0, 92 + i) for i, day in enumerate((5, 7, 11, 14, 90))]
    wide, _ = patient_kinetics(_timepoints([*leukapheresis, *CAR_EXAMPLE, *b_cells]))
    row = wide.iloc[0]
    assert row["car_t_auclast"] == pytest.approx(420.0)
    assert row["car_t_tmax_day"] == 7
    assert row["b_cell_aplasia_onset_day"] == 5


def test_a_day_measured_twice_uses_the_newest_sample_whatever_the_row_order():
    repeat = ("memory", "CAR", 7, 40.0, 50)  # stored after the first day-7 sample
    tables = [_timepoints([*CAR_EXAMPLE, repeat]), _timepoints([repeat, *CAR_EXAMPLE])]
    results = [patient_kinetics(table) for table in tables]
    expected = (10 + 40) / 2 * 2 + (40 + 40) / 2 * 4 + (40 + 20) / 2 * 3
    for wide, long in results:
        assert wide.iloc[0]["car_t_auc14"] == pytest.approx(expected)
        note = next(r["note"] for r in long if r["metric"] == "auc14" and "CAR" in r["population"])
        assert "day 7: 2 samples, the newest stored (sample 50) used" in note
