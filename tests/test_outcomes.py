"""Outcome statistics: reference values (R's aml data), recovery of simulated effects, the
stage's files, and its handling of bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cartflow.pipeline.clinical import ClinicalTableError
from cartflow.pipeline.outcomes import (
    EXPLORATORY,
    OutcomeConfig,
    OutcomeInputError,
    bootstrap_auc_ci,
    compare_counts,
    compare_groups,
    cox,
    cutpoint,
    horizon_outcome,
    km_summary,
    load_outcome_config,
    logrank,
    median_ci,
    median_followup,
    outcome_config,
    read_patient_table,
    run_outcomes,
    run_outcomes_from_files,
)
from cartflow.simulate import SimulationConfig, simulate_cohort

# --- reference values: R survival's aml data (Miller 1981) ------------------------------------

AML_MAINTAINED = ("9", "13", "13+", "18", "23", "28+", "31", "34", "45+", "48", "161+")
AML_NONMAINTAINED = ("5", "5", "8", "8", "12", "16+", "23", "27", "30", "33", "43", "45")


def aml() -> pd.DataFrame:
    rows = [
        (float(v.rstrip("+")), not v.endswith("+"), group)
        for group, values in (("Maintained", AML_MAINTAINED), ("Nonmaintained", AML_NONMAINTAINED))
        for v in values
    ]
    return pd.DataFrame(rows, columns=["time", "status", "x"])


def test_aml_logrank_matches_r_survdiff():
    data = aml()
    test = logrank(data["time"], data["status"], data["x"])
    assert test.statistic == pytest.approx(3.396, abs=5e-4)
    assert test.df == 1
    assert test.p == pytest.approx(0.0653, abs=5e-5)


def test_aml_km_summary_median_and_logrank():
    data = aml()
    summary = km_summary(data["time"], data["status"], data["x"], at_days=12, endpoint="os")
    maintained = summary.group("Maintained")
    assert (maintained.n, maintained.events) == (11, 7)
    assert maintained.median == 31
    assert summary.group("Nonmaintained").median == 23
    assert summary.logrank.statistic == pytest.approx(3.396, abs=5e-4)
    # S(12), non-maintained: 10/12 × 8/10 × 7/8 = 7/12 (deaths at 5, 5, 8, 8, 12)
    assert summary.group("Nonmaintained").survival == pytest.approx(7 / 12)
    assert maintained.survival == pytest.approx(10 / 11)


def test_aml_cox_matches_r_coxph_efron():
    data = aml()
    result = cox(data, "time", "status", ["x"], reference_levels={"x": "Maintained"})
    term = result.term("x", "Nonmaintained")
    assert result.ties == "efron"
    assert (result.n, result.events) == (23, 18)
    assert term.coef == pytest.approx(0.9155, abs=5e-4)
    assert term.se == pytest.approx(0.5119, abs=5e-4)
    assert term.hr == pytest.approx(2.498, abs=5e-4)
    assert term.p == pytest.approx(0.0737, abs=5e-4)
    assert term.hr_ci_low < 2.498 < term.hr_ci_high


def test_aml_cox_numeric_covariate_is_the_same_model():
    data = aml().assign(x=lambda d: (d["x"] == "Nonmaintained").astype(int))
    term = cox(data, "time", "status", ["x"]).term("x")
    assert term.level is None
    assert term.hr == pytest.approx(2.498, abs=5e-4)


def test_median_followup_by_reverse_km():
    # every patient censored: reverse KM is an ordinary KM of the follow-up times
    followup = median_followup([100, 200, 300, 400, 500], [False] * 5)
    assert followup.median_days == 300
    # deaths censor follow-up: reverse KM drops to 1/2 at 400 (two at risk, one "event")
    assert median_followup([100, 200, 300, 400, 500], [1, 1, 1, 0, 0]).median_days == 400


# --- group comparisons and counts -------------------------------------------------------------


def test_median_ci_from_order_statistics():
    assert median_ci(np.arange(1, 11)) == (2.0, 9.0)
    assert median_ci([3.0, 1.0, 2.0, 5.0, 4.0, 6.0]) == (1.0, 6.0)
    assert all(math.isnan(v) for v in median_ci([1.0, 2.0, 3.0, 4.0, 5.0]))


def test_two_groups_use_mann_whitney():
    values = [1.0, 2.0, 3.0, 4.0, 10.0, 11.0, 12.0, np.nan]
    groups = ["a", "a", "a", "a", "b", "b", "b", "b"]
    result = compare_groups(values, groups, "v", "g")
    reference = stats.mannwhitneyu([1, 2, 3, 4], [10, 11, 12], alternative="two-sided")
    assert result.test == "Mann-Whitney U"
    assert result.p == pytest.approx(reference.pvalue)
    assert result.effect == 0.0  # every a below every b
    assert [(g.level, g.n, g.median) for g in result.groups] == [("a", 4, 2.5), ("b", 3, 11.0)]
    assert (result.group("a").minimum, result.group("a").maximum) == (1.0, 4.0)


def test_three_groups_use_kruskal_wallis_and_keep_category_order():
    groups = pd.Series(pd.Categorical(list("xxyyzz") * 2, categories=["z", "y", "x"]))
    values = np.arange(12.0)
    result = compare_groups(values, groups)
    assert result.test == "Kruskal-Wallis"
    assert [g.level for g in result.groups] == ["z", "y", "x"]
    samples = [values[(groups == c).to_numpy()] for c in ("z", "y", "x")]
    assert result.p == pytest.approx(stats.kruskal(*samples).pvalue)


def test_degenerate_comparisons_do_not_raise():
    assert compare_groups([1.0, 2.0], ["a", "a"]).test is None
    assert compare_groups([1.0, 1.0, 1.0], ["a", "b", "c"]).note


def test_counts_use_fisher_for_2x2_and_freeman_halton_beyond():
    rows = ["t"] * 4 + ["c"] * 4
    cols = [True, True, True, False, True, False, False, False]
    fisher = compare_counts(cols, rows, "event", "arm")
    assert fisher.test == "Fisher exact"
    assert fisher.p == pytest.approx(stats.fisher_exact([[1, 3], [3, 1]]).pvalue)
    assert fisher.counts == {"c": {"no": 3, "yes": 1}, "t": {"no": 1, "yes": 3}}
    bigger = compare_counts(list("abcabcabcabc"), list("xxxxxxyyyyyy"))
    assert bigger.test == "Fisher-Freeman-Halton exact" and bigger.dof == 2
    assert bigger.p == pytest.approx(1.0)  # the balanced table is the most probable one
    assert "expected count 2" in bigger.note


# --- ROC cut-points ---------------------------------------------------------------------------


def test_horizon_outcome_excludes_early_censoring():
    outcome = horizon_outcome([100, 400, 200, 365, 365], [1, 1, 0, 0, 1], 365)
    assert outcome[[0, 1, 3, 4]].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert math.isnan(outcome[2])


def test_separable_variable_gets_a_valid_youden_cut():
    values = np.array([1.0, 2.0, 3.0, 4.0, 10.0, 11.0, 12.0, 13.0])
    outcome = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    cut = cutpoint(values, outcome, "v", horizon_days=365)
    assert cut.roc.auc == 1.0 and cut.roc.direction == "higher"
    assert cut.valid and cut.method == "youden" and cut.value == 10.0
    assert cut.label == EXPLORATORY
    assert cut.groups(values).tolist() == ["< 10"] * 4 + ["≥ 10"] * 4


def test_protective_variable_is_oriented_lower():
    values = np.array([1.0, 2.0, 3.0, 4.0, 10.0, 11.0, 12.0, 13.0])
    cut = cutpoint(values, [1, 1, 1, 1, 0, 0, 0, 0])
    assert cut.roc.direction == "lower" and cut.roc.auc == 1.0
    assert cut.value == 4.0 and not cut.high_includes_cut
    assert cut.groups(values).tolist() == ["≤ 4"] * 4 + ["> 4"] * 4


def test_weak_variable_falls_back_to_the_median():
    rng = np.random.default_rng(1)
    values, outcome = rng.normal(size=40), np.tile([0, 1], 20)
    cut = cutpoint(values, outcome, min_auc=0.70)
    assert cut.roc.auc <= 0.70
    assert not cut.valid and cut.method == "median"
    assert cut.value == pytest.approx(np.median(values))
    assert cut.label == EXPLORATORY


def test_an_auc_of_exactly_the_minimum_is_not_valid():
    values, outcome = np.arange(1.0, 10.0), [1, 0, 0, 0, 0, 1, 0, 1, 1]  # AUC 14/20
    cut = cutpoint(values, outcome, min_auc=0.70)
    assert cut.roc.auc == pytest.approx(0.70)
    assert not cut.valid and cut.method == "median" and cut.value == 5.0


def test_cutpoint_without_both_classes_is_a_note_not_an_error():
    cut = cutpoint([1.0, 2.0, 3.0], [0, 0, np.nan])
    assert cut.roc is None and cut.method == "median" and cut.excluded == 1 and cut.note


def test_bootstrap_auc_interval_is_seeded_and_brackets_the_auc():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(5)
    y = np.tile([0, 1], 30)
    score = y + rng.normal(scale=1.0, size=60)
    first = bootstrap_auc_ci(y, score, n_boot=500, seed=7)
    assert first == bootstrap_auc_ci(y, score, n_boot=500, seed=7)
    assert first[0] < roc_auc_score(y, score) < first[1]


# --- configuration ----------------------------------------------------------------------------


def test_config_yaml_overrides_and_errors(tmp_path):
    path = tmp_path / "analysis.yaml"
    path.write_text(
        "variables: [car_t_auc14]\nhorizon_days: 180\ncensor_at_hsct: true\n"
        "cox_covariates: [burden_after_class, bridging]\nreference_levels: {bridging: chemo}\n",
        encoding="utf-8",
    )
    config = load_outcome_config(path)
    assert config.variables == ("car_t_auc14",)
    assert (config.horizon_days, config.censor_at_hsct) == (180.0, True)
    assert config.reference_levels == {"bridging": "chemo"}
    assert load_outcome_config(None) == OutcomeConfig()
    with pytest.raises(OutcomeInputError, match="unknown setting"):
        outcome_config({"horizon": 365})
    with pytest.raises(OutcomeInputError, match="horizon_days"):
        outcome_config({"horizon_days": "a year"})
    with pytest.raises(OutcomeInputError, match="censor_at_hsct"):
        outcome_config({"censor_at_hsct": "sometimes"})
    with pytest.raises(OutcomeInputError, match="figure_formats"):
        outcome_config({"figure_formats": ["png", "gif"]})


# --- a simulated cohort with known effects ----------------------------------------------------

EFFECT_SEED, EFFECT_PATIENTS = 8, 60


def patient_table(truth: pd.DataFrame) -> pd.DataFrame:
    """Per-patient variables as an upstream stage would name them, from the simulator's truth."""
    return pd.DataFrame(
        {
            "patient": truth["patient"],
            "car_t_cmax": truth["peak_car_t_per_ul"],
            "car_t_tmax_day": truth["peak_day"],
            "car_t_auc14": truth["auc14_car_t"],
            "scm_pct_of_cd8_car_at_peak": 100 * truth["scm_fraction_cd8_car_at_peak"],
        }
    )


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    config = SimulationConfig(
        patients=EFFECT_PATIENTS,
        seed=EFFECT_SEED,
        events=1000,
        tubes=("bcell",),
        timepoints=("D7", "D14", "M3"),
    )
    summary = simulate_cohort(tmp_path_factory.mktemp("cohort"), config)
    truth = pd.read_csv(summary.truth_dir / "patients.csv")
    return summary, truth


@pytest.fixture(scope="module")
def effects(cohort, tmp_path_factory):
    summary, truth = cohort
    config = OutcomeConfig(
        variables=(
            "car_t_cmax",
            "car_t_auc14",
            "scm_pct_of_cd8_car_at_peak",
            "tumour_burden_after_pct",
            "car_t_persistence_day",
        ),
        groupings=("bridging", "burden_after_class", "hematotox_risk", "expanded"),
        bootstrap=500,
        figures=False,
    )
    return run_outcomes(
        summary.clinical, patient_table(truth), tmp_path_factory.mktemp("o"), config
    )


def test_ino_bridging_lowers_burden_and_expansion_and_raises_scm(effects):
    burden = effects.comparison("bridging", "tumour_burden_after_pct")
    assert burden.group("InO").median < burden.group("chemo").median
    assert burden.effect < 0.35 and burden.p < 0.05
    peak = effects.comparison("bridging", "car_t_cmax")
    assert peak.test == "Mann-Whitney U"
    assert peak.group("InO").median < peak.group("chemo").median and peak.effect < 0.5
    scm = effects.comparison("bridging", "scm_pct_of_cd8_car_at_peak")
    assert scm.group("InO").median > scm.group("chemo").median
    assert scm.effect > 0.6 and scm.p < 0.05


def test_high_burden_worsens_efs(effects):
    term = effects.cox("efs", "burden_after_class").term("burden_after_class", "high")
    assert term.reference == "low"
    assert 1.2 < term.hr < 8  # simulated HR 2.5
    assert term.p < 0.05
    km = effects.km("efs", "burden_after_class")
    assert km.group("high").survival < km.group("low").survival
    assert km.logrank.p < 0.05


def test_low_scm_worsens_efs(effects):
    term = effects.cox("efs", "scm_pct_of_cd8_car_at_peak").term("scm_pct_of_cd8_car_at_peak")
    assert term.hr < 1  # per percentage point of SCM: more SCM, fewer events
    cut = effects.cut("scm_pct_of_cd8_car_at_peak")
    assert cut.roc.direction == "lower" and cut.label == EXPLORATORY
    km = effects.km("efs", "scm_pct_of_cd8_car_at_peak_cut")
    low, high = km.groups
    assert low.survival < high.survival


def test_multivariable_model_and_notes(effects):
    (efs,) = [r for r in effects.cox_multivariable if r.endpoint == "efs"]
    assert efs.covariates == ("burden_after_class", "scm_pct_of_cd8_car_at_peak")
    assert efs.term("burden_after_class", "high").hr > 1
    assert any("car_t_persistence_day" in n for n in effects.notes)  # missing variable: skipped
    assert any("expanded derived" in n for n in effects.notes)


def test_endpoints_and_followup_agree_with_truth(effects, cohort):
    _, truth = cohort
    merged = effects.patients.merge(truth, on="patient", suffixes=("", "_truth"))
    assert (merged["efs_event"] == merged["efs_event_truth"]).all()
    assert np.abs(merged["efs_days"] - merged["efs_days_truth"]).max() <= 1
    assert effects.followup.median_days > 0
    overall = effects.km("efs").groups[0]
    assert overall.events == int(truth["efs_event"].sum())


def test_hsct_censoring_changes_only_efs(cohort, tmp_path):
    summary, truth = cohort
    base = OutcomeConfig(
        variables=("car_t_auc14",), groupings=("bridging",), figures=False, bootstrap=100
    )
    plain = run_outcomes(summary.clinical, patient_table(truth), tmp_path / "a", base)
    censored = run_outcomes(
        summary.clinical,
        patient_table(truth),
        tmp_path / "b",
        outcome_config({**base.to_dict(), "censor_at_hsct": True}),
    )
    assert censored.km("efs").groups[0].events <= plain.km("efs").groups[0].events
    assert censored.km("os").groups[0] == plain.km("os").groups[0]


# --- files written ----------------------------------------------------------------------------


def test_patient_ids_read_from_a_file_stay_text(tmp_path):
    table = tmp_path / "patients.csv"
    table.write_text("patient,car_t_auc14\n001,420\n010,35.5\n", encoding="utf-8")
    assert read_patient_table(table)["patient"].tolist() == ["001", "010"]


def test_stage_writes_tables_json_and_figures(cohort, tmp_path):
    summary, truth = cohort
    points = pd.read_csv(summary.truth_dir / "timepoints.csv").rename(
        columns={"true_car_t_per_ul": "car_t_per_ul"}
    )
    config_path = tmp_path / "analysis.yaml"
    config_path.write_text(
        "variables: [car_t_auc14, scm_pct_of_cd8_car_at_peak]\ngroupings: [bridging]\n"
        "bootstrap: 200\nhorizon_days: 365\n",
        encoding="utf-8",
    )
    patients_csv = tmp_path / "patients.csv"
    patient_table(truth).to_csv(patients_csv, index=False)
    points_csv = tmp_path / "timepoints.csv"
    points.to_csv(points_csv, index=False)
    out = tmp_path / "out"
    report = run_outcomes_from_files(summary.clinical, patients_csv, out, config_path, points_csv)
    for name in (
        "patients",
        "group_summary",
        "group_tests",
        "count_tests",
        "cutpoints",
        "km_estimates",
        "logrank",
        "followup",
        "cox",
        "expansion_summary",
    ):
        assert (out / f"{name}.csv").is_file(), name
    for stem in (
        "km_efs_overall",
        "km_os_bridging",
        "km_efs_car_t_auc14_cut_landmark28",  # measured after infusion: from the D28 landmark
        "box_bridging",
        "roc_efs",
        "expansion_bridging",
    ):
        assert (out / f"{stem}.png").stat().st_size > 0
        assert (out / f"{stem}.svg").read_text(encoding="utf-8").lstrip().startswith("<?xml")
    payload = json.loads((out / "outcomes.json").read_text(encoding="utf-8"))
    assert payload["config"]["variables"] == ["car_t_auc14", "scm_pct_of_cd8_car_at_peak"]
    assert payload["hematotox_table"]["verified"] is False
    assert payload["cutpoints"][0]["label"] == EXPLORATORY
    assert payload["survival"][0]["groups"][0]["n"] == EFFECT_PATIENTS
    assert len(payload["patients"]) == EFFECT_PATIENTS
    assert {"efs_days", "hematotox_score", "car_t_auc14_cut"} <= set(payload["patients"][0])
    assert set(payload["tables"]) >= {"cox", "km_estimates", "expansion_summary"}
    assert len(payload["figures"]) == len(report.figures)
    km = pd.read_csv(out / "km_estimates.csv")
    assert set(km["grouping"]) == {
        "overall",
        "bridging",
        "car_t_auc14_cut",
        "scm_pct_of_cd8_car_at_peak_cut",
    }


def test_json_has_no_nan(cohort, tmp_path):
    summary, truth = cohort
    table = patient_table(truth).assign(car_t_auc14=np.nan)  # nothing to analyse: NaN everywhere
    config = OutcomeConfig(
        variables=("car_t_auc14", "car_t_tmax_day"),
        groupings=("bridging",),
        figures=False,
        bootstrap=50,
    )
    report = run_outcomes(summary.clinical, table, tmp_path, config)
    text = report.json_path.read_text(encoding="utf-8")
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in outcomes.json"))
    assert any("car_t_auc14 has no numeric values" in n for n in report.notes)


# --- bad input never crashes ------------------------------------------------------------------


def test_bad_clinical_input_raises_one_error_listing_problems(cohort, tmp_path):
    summary, truth = cohort
    clinical = pd.read_csv(summary.clinical, dtype=str, keep_default_na=False)
    clinical.loc[2, "relapse_date"] = "2001-01-01"
    clinical.loc[4, "platelets_per_nl"] = "many"
    with pytest.raises(ClinicalTableError) as caught:
        run_outcomes(
            clinical,
            patient_table(truth),
            tmp_path,
            OutcomeConfig(figures=False),
            known_patients=set(truth["patient"]) - {truth["patient"][0]},
        )
    found = [(p.row, p.column) for p in caught.value.problems]
    assert found == [(1, "patient"), (3, "relapse_date"), (5, "platelets_per_nl")]


def test_bad_patient_table_is_an_input_error(cohort, tmp_path):
    summary, truth = cohort
    with pytest.raises(OutcomeInputError, match="'patient' column"):
        run_outcomes(summary.clinical, patient_table(truth).drop(columns="patient"), tmp_path)
    doubled = pd.concat([patient_table(truth).head(2)] * 2)
    with pytest.raises(OutcomeInputError, match="more than one row"):
        run_outcomes(summary.clinical, doubled, tmp_path)


def test_patients_missing_on_either_side_are_notes(cohort, tmp_path):
    summary, truth = cohort
    table = pd.concat(
        [
            patient_table(truth).iloc[1:],
            pd.DataFrame({"patient": ["GHOST"], "car_t_tmax_day": [7.0]}),
        ]
    )
    config = OutcomeConfig(
        variables=("car_t_tmax_day",), groupings=("bridging",), figures=False, bootstrap=50
    )
    report = run_outcomes(summary.clinical, table, tmp_path, config)
    assert report.n_patients == EFFECT_PATIENTS
    assert any("GHOST" in n for n in report.notes)
    assert any(truth["patient"][0] in n for n in report.notes)
