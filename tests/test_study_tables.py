"""The study's analyses out of the box: Tables 1-3 from `run --clinical` on a simulated
24-patient cohort, each value recomputed here from timepoints.csv and clinical.csv; non-expanders
kept; landmark analyses; q-values; the exact r×c test against a published value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cartflow.pipeline.outcomes import OutcomeConfig, OutcomeInputError, outcome_config
from cartflow.pipeline.outcomes.exact import fisher_freeman_halton
from cartflow.pipeline.outcomes.stage import landmark_day
from cartflow.simulate import SimulationConfig, simulate_cohort

PATIENTS = 24


def _cartflow(*arguments: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cartflow.cli", *arguments],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture(scope="session")
def study(tmp_path_factory) -> Path:
    """`cartflow run --clinical` on a simulated 24-patient cohort (3000 events per file, the
    four timepoints the tables and the D90 landmark need). The files are gated first by a run
    without the report, so that the per-file gating plots (seconds each, not under test here)
    are skipped; the `run --clinical` that follows writes kinetics, outcomes and the report."""
    root = tmp_path_factory.mktemp("study")
    config = SimulationConfig(
        patients=PATIENTS, seed=22, events=3000, timepoints=("D7", "D14", "D28", "M3")
    )
    cohort = simulate_cohort(root / "cohort", config)
    out = root / "out"
    common = [str(cohort.out_dir), "--manifest", str(cohort.manifest),
              "--db", str(root / "store.sqlite"), "--out", str(out), "--workers", "2"]  # fmt: skip
    _cartflow("run", *common, "--no-report")
    _cartflow("run", *common, "--clinical", str(cohort.clinical))
    return out


def _clinical(study: Path) -> pd.DataFrame:
    return pd.read_csv(study.parent / "cohort" / "clinical.csv", dtype={"patient": str})


def _points(study: Path) -> pd.DataFrame:
    return pd.read_csv(study / "timepoints.csv", dtype={"patient": str})


def _median_iqr(values: np.ndarray) -> tuple[float, float, float]:
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return median, q1, q3


@pytest.mark.slow
def test_tables_exist_and_are_in_the_report(study):
    outcomes = study / "outcomes"
    for name in ("table1", "table2_aplasia", "table3_expansion"):
        assert (outcomes / f"{name}.csv").is_file()
    cohort = (study / "report" / "cohort.html").read_text(encoding="utf-8")
    for title in ("Table 1.", "Table 2.", "Table 3.", "unverified", "Analysis notes"):
        assert title in cohort


CONTINUOUS_BASELINE = (
    "tumour_burden_before_pct",
    "tumour_burden_after_pct",
    "anc_per_nl",
    "platelets_per_nl",
    "haemoglobin_g_dl",
    "crp_mg_l",
)


def _exact_rxc_p(table: np.ndarray) -> float:
    """Fisher-Freeman-Halton p of a 2×k table by brute force over every table with its margins
    (the probability of a table: multivariate hypergeometric)."""
    import itertools
    from math import comb, prod

    rows, columns = table.sum(axis=1), table.sum(axis=0)

    def probability(first: tuple[int, ...]) -> float:
        return prod(comb(c, a) for c, a in zip(columns, first, strict=True)) / comb(
            int(columns.sum()), int(rows[0])
        )

    observed = probability(tuple(table[0]))
    total = 0.0
    for first in itertools.product(*(range(c + 1) for c in columns)):
        if sum(first) == rows[0]:
            p = probability(first)
            total += p if p <= observed * (1 + 1e-7) else 0.0
    return total


def _check_counts(rows: pd.DataFrame, labels: pd.Series, groups: pd.Series) -> None:
    """Every level's n (%) overall and per group, and the test's p, against ``labels``."""
    for level, part in rows.groupby("level"):
        part = part.set_index("column")
        for column, members in [("overall", labels), *labels.groupby(groups)]:
            count = int((members == level).sum())
            assert part.loc[column, "count"] == count, (level, column)
            assert part.loc[column, "percent"] == pytest.approx(100 * count / len(members))
    cross = pd.crosstab(groups, labels).to_numpy()
    expected = stats.fisher_exact(cross).pvalue if cross.shape == (2, 2) else _exact_rxc_p(cross)
    assert rows["p"].iloc[0] == pytest.approx(expected)


@pytest.mark.slow
def test_table1_against_the_clinical_table(study):
    table = pd.read_csv(study / "outcomes" / "table1.csv")
    clinical = _clinical(study)
    for column in CONTINUOUS_BASELINE:
        rows = table[table.variable == column].set_index("column")
        for level, part in [("overall", clinical), *clinical.groupby("bridging")]:
            values = part[column].dropna().to_numpy(float)
            median, q1, q3 = _median_iqr(values)
            row = rows.loc[level]
            assert row["n"] == len(values)
            numbers = [row["median"], row["q1"], row["q3"], row["min"], row["max"]]
            assert numbers == pytest.approx([median, q1, q3, values.min(), values.max()])
        groups = [g[column].dropna() for _, g in clinical.groupby("bridging")]
        assert rows["p"].iloc[0] == pytest.approx(stats.mannwhitneyu(*groups).pvalue)
        assert set(rows["test"]) == {"Mann-Whitney U"}
    # burden classes: high is > 5 % marrow blasts; dynamics is before→after
    before = np.where(clinical["tumour_burden_before_pct"] > 5, "high", "low")
    after = np.where(clinical["tumour_burden_after_pct"] > 5, "high", "low")
    labels = {
        "burden_before_class": pd.Series(before),
        "burden_after_class": pd.Series(after),
        "burden_dynamics": pd.Series(before) + "→" + pd.Series(after),
    }
    for name, values in labels.items():
        _check_counts(table[table.variable == name], values, clinical["bridging"])
    dynamics = table[table.variable == "burden_dynamics"]
    if dynamics["level"].nunique() > 2:
        assert dynamics["test"].iloc[0] == "Fisher-Freeman-Halton exact"


def _peak_percent(points: pd.DataFrame, tube: str, population: str) -> dict[str, float]:
    """% of parent on the day of each patient's highest CAR-T count at or above the LOD."""
    car = points[
        (points.tube == "memory") & (points.population == "CAR") & (points.nominal_day >= 0)
    ]
    car = car[~car.below_lod.astype(bool) & car.cells_per_ul.notna()]
    peak = car.sort_values("nominal_day").groupby("patient")["cells_per_ul"].idxmax()
    days = car.loc[peak].set_index("patient")["nominal_day"]
    rows = points[(points.tube == tube) & (points.population == population)]
    out = {}
    for patient, day in days.items():
        hit = rows[(rows.patient == patient) & (rows.nominal_day == day)]
        if (
            len(hit)
            and bool(hit.percent_evaluable.iloc[0])
            and pd.notna(hit.percent_of_parent.iloc[0])
        ):
            out[patient] = float(hit.percent_of_parent.iloc[0])
    return out


def _check_continuous(rows: pd.DataFrame, values: pd.Series, groups: pd.Series) -> None:
    """n, median, IQR, range overall and per group, and the Mann-Whitney p, against ``values``
    (one per patient, NaN where unknown)."""
    rows = rows.set_index("column")
    known = values.dropna()
    for column in rows.index:
        part = known if column == "overall" else known[groups.loc[known.index] == column]
        assert rows.loc[column, "n"] == len(part), column
        if len(part):
            median, q1, q3 = _median_iqr(part.to_numpy(float))
            numbers = [rows.loc[column, k] for k in ("median", "q1", "q3", "min", "max")]
            assert numbers == pytest.approx([median, q1, q3, part.min(), part.max()]), column
    parts = [g for _, g in known.groupby(groups.loc[known.index]) if len(g)]
    if len(parts) == 2:
        assert rows["p"].iloc[0] == pytest.approx(stats.mannwhitneyu(*parts).pvalue)


@pytest.mark.slow
def test_table3_against_the_timepoints(study):
    """Every marker at the peak and the CAR-T peak itself, overall, by bridging and within the
    low-burden patients, recomputed from timepoints.csv and clinical.csv."""
    table = pd.read_csv(study / "outcomes" / "table3_expansion.csv")
    points, clinical = _points(study), _clinical(study)
    bridging = clinical.set_index("patient")["bridging"]
    low = set(clinical.loc[clinical["tumour_burden_after_pct"] <= 5, "patient"])
    assert set(table["section"]) == {"all", "burden_after_class == low"}
    # the peak itself: the highest count at or above the LOD, 0 for a non-expander
    car = points[
        (points.tube == "memory") & (points.population == "CAR") & (points.nominal_day >= 0)
    ]
    counted = car.cells_per_ul.where(~car.below_lod.astype(bool), 0.0)
    peak = counted.groupby(car.patient).max()
    assert peak.notna().all() and len(peak) == PATIENTS
    at_peak = {
        v.name: (v.tube, v.population)
        for v in OutcomeConfig().patient_variables
        if v.when == "peak" and v.measure == "percent" and v.name in set(table.variable)
    }
    assert {"pd1_pct_of_cd8_car_at_peak", "ki67_pct_of_cd4_car_at_peak"} <= set(at_peak)
    checked = {"car_t_cmax": peak} | {
        name: pd.Series(_peak_percent(points, *where), index=bridging.index, dtype=float)
        for name, where in at_peak.items()
    }
    scm = points[(points.tube == "memory") & (points.population == "CARneg_CD8_SCM")]
    for day in (28, 90):  # CD8+ CAR- SCM/µL on the day (below the LOD: 0)
        on_day = scm[scm.nominal_day == day].set_index("patient")
        per_ul = on_day.cells_per_ul.where(~on_day.below_lod.astype(bool), 0.0)
        checked[f"car_neg_cd8_scm_per_ul_d{day}"] = per_ul.reindex(bridging.index)
    for section, keep in (("all", bridging.index), ("burden_after_class == low", low)):
        for name, values in checked.items():
            rows = table[(table.variable == name) & (table.section == section)]
            _check_continuous(rows, values[values.index.isin(keep)], bridging)
    rows = table[(table.variable == "car_t_cmax") & (table.section == "all")]
    assert rows.set_index("column").loc["overall", "n"] == PATIENTS


@pytest.mark.slow
def test_table2_against_clinical_events_and_counts(study):
    table = pd.read_csv(study / "outcomes" / "table2_aplasia.csv")
    patients = pd.read_csv(study / "outcomes" / "aplasia_patients.csv", dtype={"patient": str})
    clinical = _clinical(study).set_index("patient")
    infusion = pd.to_datetime(clinical["infusion_date"])
    points = _points(study)
    b = points[(points.tube == "bcell") & (points.population == "B") & (points.nominal_day >= 0)]
    for row in patients.itertuples():
        mine = b[b.patient == row.patient].sort_values("nominal_day")
        aplastic = mine.below_lod.astype(bool) | (mine.cells_per_ul <= 1)
        days = mine.actual_day.fillna(mine.nominal_day)[aplastic]  # from the sample dates
        assert row.onset_day == (days.iloc[0] if len(days) else None) or (
            pd.isna(row.onset_day) and days.empty
        )
        relapse = (
            pd.to_datetime(clinical.at[row.patient, "relapse_date"]) - infusion[row.patient]
        ).days
        if pd.isna(row.onset_day):
            continue
        recovered = pd.notna(row.loss_day) and (pd.isna(relapse) or row.loss_day <= relapse)
        if "relapse during aplasia" in row.category:
            assert not recovered and relapse == row.relapse_day
            negative = str(clinical.at[row.patient, "cd19_negative_relapse"]).lower() == "true"
            assert row.category.startswith("CD19-negative" if negative else "CD19-positive")
            assert row.censored_at == "relapse" and row.duration_days == relapse - row.onset_day
        if "recovery in remission" in row.category:
            assert row.duration_days == row.loss_day - row.onset_day
    # each patient's category from the counts and the clinical events alone: aplasia lost at
    # the first non-aplastic sample after onset that the next sample does not contradict;
    # recovery before relapse/HSCT/last follow-up is in remission, else the first of these
    expected = {}
    for patient, info in clinical.iterrows():
        mine = b[b.patient == patient].sort_values("nominal_day")
        aplastic = (mine.below_lod.astype(bool) | (mine.cells_per_ul <= 1)).to_list()
        days = mine.actual_day.fillna(mine.nominal_day).to_list()
        if True not in aplastic:
            expected[patient] = "no B-cell aplasia"
            continue
        onset = aplastic.index(True)
        loss = next(
            (days[i] for i in range(onset + 1, len(days))
             if not aplastic[i] and (i + 1 == len(days) or not aplastic[i + 1])),
            None,
        )  # fmt: skip
        ends = {
            reason: (pd.to_datetime(info[column]) - infusion[patient]).days
            for reason, column in (("relapse", "relapse_date"), ("HSCT", "hsct_date"),
                                   ("follow-up", "last_followup_date"))
            if pd.notna(info[column])
        }  # fmt: skip
        reason, end = min(ends.items(), key=lambda kv: kv[1])
        if loss is not None and loss <= end:
            expected[patient] = (
                f"{'early' if loss <= 180 else 'later'} B-cell recovery in remission"
            )
        elif reason == "relapse":
            negative = str(info["cd19_negative_relapse"]).lower() != "false"
            expected[patient] = (
                f"CD19-{'negative' if negative else 'positive'} relapse during aplasia"
            )
        else:
            expected[patient] = "HSCT during aplasia" if reason == "HSCT" else "persistent aplasia"
    assert patients.set_index("patient")["category"].to_dict() == expected
    labels = pd.Series(expected)
    rows = table[table.section == "categories"]
    assert set(rows["level"]) == set(labels)
    _check_counts(rows, labels, clinical["bridging"].loc[labels.index])


@pytest.mark.slow
def test_non_expanders_stay_in_the_peak_analyses(study):
    kinetics = pd.read_csv(study / "kinetics.csv", dtype={"patient": str})
    assert (kinetics["car_t_cmax"] == 0).any(), "the cohort should hold a non-expander"
    tests = pd.read_csv(study / "outcomes" / "group_tests.csv")
    peak = tests[(tests.variable == "car_t_cmax") & (tests.grouping == "bridging")]
    assert peak["n"].iloc[0] == PATIENTS and pd.isna(peak["left_out"].iloc[0])
    summary = pd.read_csv(study / "outcomes" / "group_summary.csv")
    rows = summary[(summary.variable == "car_t_cmax") & (summary.grouping == "bridging")]
    assert rows["n"].sum() == PATIENTS
    # ROC (from the D28 landmark): left out only for an event or censoring by day 28, or
    # censoring before the horizon — never for a peak below the LOD
    roc = pd.read_csv(study / "outcomes" / "cutpoints.csv")
    roc = roc[(roc.variable == "car_t_cmax") & (roc.endpoint == "efs")].iloc[0]
    patients = pd.read_csv(study / "outcomes" / "patients.csv")
    censored = (patients.efs_days < roc.horizon_days) & ~patients.efs_event.astype(bool)
    unknown = (patients.efs_days <= 28) | censored
    assert roc.roc_n == PATIENTS - unknown.sum() and roc.excluded == unknown.sum()


@pytest.mark.slow
def test_landmark_km_and_logrank_for_persistence_at_day_90(study):
    """CAR-T detected on day 90 (from timepoints.csv: a count at or above the LOD), compared
    only among patients event-free and followed beyond day 90, time counted from day 90."""
    from lifelines.statistics import logrank_test

    points = _points(study)
    car = points[(points.tube == "memory") & (points.population == "CAR")]
    on_day = car[car.nominal_day == 90].set_index("patient")
    detected = ~on_day.below_lod.astype(bool) & on_day.cells_per_ul.notna()
    patients = pd.read_csv(study / "outcomes" / "patients.csv", dtype={"patient": str})
    patients = patients.set_index("patient")
    logrank = pd.read_csv(study / "outcomes" / "logrank.csv")
    km = pd.read_csv(study / "outcomes" / "km_estimates.csv")
    for endpoint in ("efs", "os"):
        days, event = patients[f"{endpoint}_days"], patients[f"{endpoint}_event"].astype(bool)
        at_risk = days[(days > 90) & days.index.isin(on_day.index)].index
        yes = [p for p in at_risk if detected[p]]
        no = [p for p in at_risk if not detected[p]]
        row = logrank[(logrank.grouping == "car_t_detected_d90") & (logrank.endpoint == endpoint)]
        assert row["landmark_day"].iloc[0] == 90 and row["n"].iloc[0] == len(at_risk)
        expected = logrank_test(days[yes] - 90, days[no] - 90, event[yes], event[no])
        assert row["p"].iloc[0] == pytest.approx(expected.p_value)
        curves = km[(km.grouping == "car_t_detected_d90") & (km.endpoint == endpoint)]
        assert (curves["landmark_day"] == 90).all()
        assert curves.set_index("level")["n"].to_dict() == {"yes": len(yes), "no": len(no)}
        figure = study / "outcomes" / f"km_{endpoint}_car_t_detected_d90_landmark90.png"
        assert figure.stat().st_size > 0


def test_no_default_analysis_uses_a_post_infusion_variable_as_baseline():
    config = OutcomeConfig()
    post_infusion = [*config.variables, "expanded", "car_t_detected_d90"]
    for name in post_infusion:
        day = landmark_day(name, config)
        assert day is None or day >= 14, name  # a landmark, never time zero
    assert landmark_day("car_t_detected_d90", config) == 90
    for name in ("car_t_persistence_day", "b_cell_aplasia_duration_days"):
        assert landmark_day(name, config) is None
    assert landmark_day(config.cox_covariates, config) == 28
    for name in ("bridging", "burden_after_class", "hematotox_risk"):
        assert landmark_day(name, config) == 0


BASELINE = {
    "overall",
    "bridging",
    "burden_before_class",
    "burden_after_class",
    "burden_dynamics",
    "hematotox_score",
    "hematotox_risk",
    "hematotox_risk3",
    *CONTINUOUS_BASELINE,
}


@pytest.mark.slow
def test_survival_analyses_from_infusion_use_only_baseline_predictors(study):
    """Every Kaplan-Meier, log-rank and Cox row that counts time from infusion (landmark 0)
    uses a predictor known at infusion; nothing measured later enters there."""
    outcomes = study / "outcomes"
    used = set()
    for name, column in (
        ("logrank", "grouping"),
        ("km_estimates", "grouping"),
        ("cox", "covariate"),
    ):
        table = pd.read_csv(outcomes / f"{name}.csv")
        names = table.loc[table["landmark_day"] == 0, column].dropna()
        used |= {n.removesuffix("_cut") for n in names}
    assert used and used <= BASELINE, sorted(used - BASELINE)
    landmarked = pd.read_csv(outcomes / "logrank.csv").query("landmark_day > 0")["grouping"]
    assert {"car_t_detected_d90", "car_t_cmax_cut"} <= set(landmarked)


@pytest.mark.slow
def test_cox_rows_of_post_infusion_variables_are_landmarked(study):
    cox = pd.read_csv(study / "outcomes" / "cox.csv")
    for covariate in ("car_t_cmax", "scm_pct_of_cd8_car_at_peak", "car_t_auc14"):
        assert (cox[cox.covariate == covariate]["landmark_day"] >= 28).all()
    assert (
        not cox["covariate"].isin(["car_t_persistence_day", "b_cell_aplasia_duration_days"]).any()
    )


@pytest.mark.slow
def test_q_values_are_statsmodels_bh(study):
    from statsmodels.stats.multitest import multipletests

    for name in ("group_tests", "count_tests", "logrank"):
        table = pd.read_csv(study / "outcomes" / f"{name}.csv")
        tested = table[table["p"].notna()]
        assert len(tested) > 1
        expected = multipletests(tested["p"], method="fdr_bh")[1]
        assert np.allclose(tested["q"], expected)
    cox = pd.read_csv(study / "outcomes" / "cox.csv").query("model == 'univariable'")
    cox = cox[cox["p"].notna()]
    assert np.allclose(cox["q"], multipletests(cox["p"], method="fdr_bh")[1])
    for name in ("table1", "table2_aplasia", "table3_expansion"):  # one test per row label
        table = pd.read_csv(study / "outcomes" / f"{name}.csv")
        tested = table.drop_duplicates(["section", "variable"]).dropna(subset=["p"])
        assert len(tested) > 1, name
        assert np.allclose(tested["q"], multipletests(tested["p"], method="fdr_bh")[1]), name
    counts = pd.read_csv(study / "outcomes" / "multiplicity.csv").set_index("family")
    assert counts.loc["group_tests", "tests"] == len(
        pd.read_csv(study / "outcomes" / "group_tests.csv").dropna(subset=["p"])
    )
    assert counts.loc["cox_univariable", "tests"] == len(cox)


@pytest.mark.slow
def test_exact_rxc_matches_the_published_job_satisfaction_value():
    # R's fisher.test documentation (Agresti 2002, job satisfaction by income): p = 0.7827
    job = np.array([[1, 2, 1, 0], [3, 3, 6, 1], [10, 10, 14, 9], [6, 7, 12, 11]]).T
    result = fisher_freeman_halton(job, max_tables=10**7)
    assert result.method == "exact"
    assert result.p == pytest.approx(0.7827, abs=5e-5)
    two_by_two = fisher_freeman_halton([[8, 2], [1, 5]])
    assert two_by_two.p == pytest.approx(stats.fisher_exact([[8, 2], [1, 5]]).pvalue)


def test_unknown_and_renamed_names_are_errors():
    with pytest.raises(OutcomeInputError, match="car_t_cmax"):
        outcome_config({"variables": ["cmax_car_t_per_ul"]})
    with pytest.raises(OutcomeInputError, match="population must be"):
        outcome_config({"patient_variables": {"x": {"population": "CAR", "day": 28}}})
    declared = outcome_config(
        {"patient_variables": {"cd8_car_per_ul_d14": {"population": "memory/CAR_CD8", "day": 14}}}
    )
    assert declared.patient_variables[-1].known_by_day == 14


@pytest.mark.slow
def test_unknown_variable_in_a_run_is_an_error(study, tmp_path):
    from cartflow.pipeline.outcomes import run_outcomes

    kinetics = pd.read_csv(study / "kinetics.csv", dtype={"patient": str})
    config = OutcomeConfig(variables=("no_such_variable",), figures=False, bootstrap=10)
    with pytest.raises(OutcomeInputError, match="no_such_variable"):
        run_outcomes(study.parent / "cohort" / "clinical.csv", kinetics, tmp_path, config)


def test_rmst_and_its_standard_error_without_censoring_are_the_sample_mean_and_its_se():
    # no censoring: the Kaplan-Meier area to the horizon is the mean of min(T, horizon), and its
    # standard error the plug-in (ddof=0) standard error of that mean
    from cartflow.pipeline.outcomes.survival import km_summary

    times = np.random.default_rng(5).exponential(200.0, 40).round(1)
    summary = km_summary(times, np.ones(40, bool), rmst_horizon=250.0)
    clipped = np.minimum(times, 250.0)
    group = summary.groups[0]
    assert group.rmst == pytest.approx(clipped.mean())
    assert group.rmst_se == pytest.approx(clipped.std(ddof=0) / np.sqrt(len(clipped)))


def _all_hematotox(clinical: pd.DataFrame) -> pd.Series:
    """ALL-Hematotox computed here from its definition (CAR-HEMATOTOX's ANC, platelet,
    haemoglobin and CRP points, marrow blasts in place of ferritin), not from the shipped
    table: ANC < 1.2/nL 1; platelets < 75/nL 2, 75–175/nL 1; haemoglobin < 9.0 g/dL 1;
    CRP > 3.0 mg/dL 1; marrow blasts > 25 % 2, > 5 % 1."""
    platelets = clinical["platelets_per_nl"]
    blasts = clinical["tumour_burden_after_pct"]
    score = (
        (clinical["anc_per_nl"] < 1.2).astype(int)
        + np.select([platelets < 75, platelets <= 175], [2, 1], 0)
        + (clinical["haemoglobin_g_dl"] < 9.0).astype(int)
        + (clinical["crp_mg_l"] > 30).astype(int)
        + np.select([blasts > 25, blasts > 5], [2, 1], 0)
    )
    inputs = ["anc_per_nl", "platelets_per_nl", "haemoglobin_g_dl", "crp_mg_l",
              "tumour_burden_after_pct"]  # fmt: skip
    return score.where(clinical[inputs].notna().all(axis=1))


@pytest.mark.slow
def test_table1_hematotox_rows_against_an_independent_score(study):
    """Table 1's ALL-Hematotox score (median, IQR, range, Mann-Whitney by bridging) and its
    risk groups (low ≤ 3, high ≥ 4: n (%) and Fisher) from the score computed here."""
    table = pd.read_csv(study / "outcomes" / "table1.csv")
    clinical = _clinical(study)
    score = _all_hematotox(clinical)
    assert score.notna().sum() >= PATIENTS - 2 and score.nunique() >= 3  # a real spread
    rows = table[table.variable == "hematotox_score"].set_index("column")
    for level, part in [("overall", score), *score.groupby(clinical["bridging"])]:
        values = part.dropna().to_numpy(float)
        median, q1, q3 = _median_iqr(values)
        row = rows.loc[level]
        assert row["n"] == len(values), level
        numbers = [row["median"], row["q1"], row["q3"], row["min"], row["max"]]
        assert numbers == pytest.approx([median, q1, q3, values.min(), values.max()]), level
    groups = [g.dropna() for _, g in score.groupby(clinical["bridging"])]
    assert rows["p"].iloc[0] == pytest.approx(stats.mannwhitneyu(*groups).pvalue)
    known = score.notna()
    risk = pd.Series(np.where(score[known] >= 4, "high (≥4)", "low (<4)"))
    risk_rows = table[table.variable == "hematotox_risk"]
    assert set(risk_rows["level"]) == set(risk)
    _check_counts(risk_rows, risk, clinical.loc[known, "bridging"].reset_index(drop=True))
