"""Automated gating against the simulator's per-event truth, on cohorts never used to tune it.

Acceptance: per-population F1 >= 0.97 wherever a population has >= 200 true events, and the
CAR+ count inside the exact Poisson 95 % interval of the true count in >= 90 % of samples.
F1 is taken over the whole file, so an error upstream (a CAR-T cell lost at the lymphocyte
gate) counts against every population below it. Populations the panel only approximates (a
marker the 8-colour FACSCanto II layout leaves out) are reported, not judged. Where the truth
itself overlaps on the gate's marker so that even the best single cut (``oracle_f1``, found
with the truth labels) stays below 0.97, the gate is held to within 0.02 of that best cut,
and the 0.97 is a strict expected failure only for the cohorts known to fall short. Seeds
2081 (FACSLyric) and 2082 (FACSCanto II) were not used to tune the gating; 2111 and 2112
were first run on the final CD3- core, 2131 and 2132 on the brightest band's dead-cell line
(earlier held-out seeds, 2122 the latest, are retired once gating is tuned on what they
showed).
"""

from __future__ import annotations

import pandas as pd
import pytest

from cartflow.simulate import SimulationConfig, simulate_cohort
from cartflow.simulate.accuracy import car_coverage, f1_summary, score_cohort, table

TARGET_F1 = 0.97
TARGET_COVERAGE = 0.90
MIN_EVENTS = 200
PATIENTS = 3
EVENTS = 50_000  # enough for the memory subsets of expanding patients to reach 200 events
COHORTS = (("FACSLyric", 2081), ("FACSCanto II", 2082), ("FACSLyric", 2111),
           ("FACSCanto II", 2112), ("FACSLyric", 2131), ("FACSCanto II", 2132))  # fmt: skip
TUBES = ("memory", "function", "bcell")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=COHORTS, ids=lambda c: f"{c[0]}-{c[1]}")
def scored(request, tmp_path_factory) -> tuple[str, list]:
    cytometer, seed = request.param
    root = tmp_path_factory.mktemp(f"accuracy-{seed}")
    config = SimulationConfig(
        patients=PATIENTS, seed=seed, events=EVENTS, cytometer=cytometer, tubes=TUBES
    )
    simulate_cohort(root, config)
    return f"{cytometer} (seed {seed})", score_cohort(root, TUBES)


def _judged(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows with enough true events on populations the panel defines."""
    return rows[(rows["true"] >= MIN_EVENTS) & ~rows["approximated"]]


ORACLE_MARGIN = 0.02
"""How far below the best single cut a gate may stay where that cut misses the target."""


def _overlapping(judged: pd.DataFrame) -> pd.Series:
    """Rows whose truth no single cut on the gate's marker separates to the target."""
    return judged["oracle_f1"] < TARGET_F1  # NaN (no single-marker gate) is False


def _report(rows: pd.DataFrame, failing: pd.DataFrame) -> str:
    with pd.option_context("display.width", 200, "display.max_rows", 200):
        report = f1_summary(rows, MIN_EVENTS).round(4).to_string(index=False)
        detail = failing[["file", "population", "true", "gated", "f1", "f1_given_parent",
                          "oracle_f1"]].round(4).to_string(index=False)  # fmt: skip
    return f"{detail}\n\n{report}"


@pytest.mark.parametrize("tube", TUBES)
def test_every_population_is_gated_accurately(scored, tube):
    cytometer, scores = scored
    rows = table(s for s in scores if s.tube == tube)
    judged = _judged(rows)
    failing = judged[(judged["f1"] < TARGET_F1) & ~_overlapping(judged)]
    assert failing.empty, f"{cytometer} {tube}: below target\n{_report(rows, failing)}"
    assert {"T", "lymphocytes", "lymphocytes_CD3neg", "leukocytes"} <= set(judged["population"])


SHORT_OF_TARGET = {("FACSLyric (seed 2081)", "function")}
"""Cohorts whose overlapping truth keeps a gate below 0.97 (there: CAR+ of one D5 sample, F1
0.959, best single cut 0.969)."""


@pytest.mark.parametrize("tube", TUBES)
def test_every_population_reaches_the_target_where_its_truth_overlaps(scored, tube):
    """Where no single cut reaches 0.97, the gate stays within 0.02 of the best one."""
    cytometer, scores = scored
    rows = table(s for s in scores if s.tube == tube)
    judged = _judged(rows)
    short = judged[_overlapping(judged) & (judged["f1"] < judged["oracle_f1"] - ORACLE_MARGIN)]
    assert short.empty, f"{cytometer} {tube}: far from the best cut\n{_report(rows, short)}"


@pytest.mark.parametrize("tube", TUBES)
def test_overlapping_rows_reach_the_target_itself(scored, tube, request):
    """0.97 even where the truth overlaps: known short where SHORT_OF_TARGET says (strict)."""
    cytometer, scores = scored
    if (cytometer, tube) in SHORT_OF_TARGET:
        request.applymarker(pytest.mark.xfail(reason="truth overlaps on the marker", strict=True))
    judged = _judged(table(s for s in scores if s.tube == tube))
    failing = judged[_overlapping(judged) & (judged["f1"] < TARGET_F1)]
    assert failing.empty, f"{cytometer} {tube}:\n{failing.round(4).to_string(index=False)}"


@pytest.mark.parametrize("tube", TUBES)
def test_car_t_counts_fall_in_the_poisson_interval(scored, tube):
    cytometer, scores = scored
    inside, total = car_coverage(s for s in scores if s.tube == tube)[tube]
    assert total >= 20
    failing = [
        (s.file, s.car_true, s.car_gated) for s in scores if s.tube == tube and not s.car_covered
    ]
    assert inside / total >= TARGET_COVERAGE, (
        f"{cytometer} {tube}: CAR+ count in the Poisson 95% interval in {inside}/{total}; "
        f"outside (file, true, gated): {failing}"
    )
