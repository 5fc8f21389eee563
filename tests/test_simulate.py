"""The synthetic cohort: readable FCS files, consistent ground truth, determinism, effects."""

from __future__ import annotations

import ast
import csv
import hashlib
import math
import re
from datetime import date
from pathlib import Path

import flowio
import numpy as np
import pandas as pd
import pytest

from cartflow.io.fcs import read_fcs
from cartflow.panels import load_panels, match_panel
from cartflow.simulate import (
    CohortEffects,
    SimulationConfig,
    draw_patient,
    simulate_cohort,
    tube_labels,
)
from cartflow.simulate.accuracy import score_file, table
from tests import fcsparser_reference
from tests.conftest import FIXTURE_COHORT

TIMEPOINTS = ("D5", "D7", "D11", "D14", "M3")
NAME = re.compile(r"^(CART-\d{3}) (\w+)_(CAR-T memory|CAR-T function|BCELL COUNT)_(\d{3})\.fcs$")
TUBE_OF_LABEL = {"CAR-T memory": "memory", "CAR-T function": "function", "BCELL COUNT": "bcell"}


def _config(cytometer: str = "FACSLyric", **changes) -> SimulationConfig:
    base = {"patients": 2, "seed": 7, "events": 2000, "cytometer": cytometer}
    return SimulationConfig(**{**base, "timepoints": TIMEPOINTS, **changes})


@pytest.fixture(scope="module", params=["FACSLyric", "FACSCanto II"])
def cohort(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param.replace(" ", "_"))
    return simulate_cohort(out, _config(request.param)), request.param


def _manifest(summary) -> list[dict[str, str]]:
    with summary.manifest.open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _truth(summary, path: Path) -> pd.DataFrame:
    return pd.read_parquet(summary.truth_dir / f"{path.stem}.parquet")


def _labels(summary, path: Path) -> np.ndarray:
    return _truth(summary, path)["population"].to_numpy(dtype=str)


def _timepoints(summary) -> pd.DataFrame:
    return pd.read_csv(summary.truth_dir / "timepoints.csv").set_index("file")


def _compensated(fcs) -> tuple[np.ndarray, dict[str, int]]:
    events = fcs.events.astype(np.float64)
    names = fcs.channel_names
    columns = [names.index(c) for c in fcs.spillover.channels]
    events[:, columns] = events[:, columns] @ np.linalg.inv(fcs.spillover.matrix)
    markers = {c.marker.split()[0]: c.index - 1 for c in fcs.channels if c.marker}
    return events, markers


def _digest(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


# --- files, names, manifest ----------------------------------------------------------------
def test_files_are_named_like_exports_and_listed_in_the_manifest(cohort):
    summary, _ = cohort
    rows = _manifest(summary)
    assert list(rows[0]) == [
        "file", "patient", "timepoint", "tube", "blood_volume_ul", "beads_per_tube", "sample_date",
    ]  # fmt: skip
    assert [r["file"] for r in rows] == [p.name for p in summary.files]
    assert len(rows) == 2 * len(TIMEPOINTS) * 3
    numbers: dict[str, list[int]] = {}
    for row in rows:
        match = NAME.match(row["file"])
        assert match, row["file"]
        patient, timepoint, label, number = match.groups()
        assert (patient, timepoint, TUBE_OF_LABEL[label]) == (
            row["patient"],
            row["timepoint"],
            row["tube"],
        )
        numbers.setdefault(patient, []).append(int(number))
        assert (row["beads_per_tube"] == "") == (row["tube"] == "function")
        if row["beads_per_tube"]:
            assert 45_000 < int(row["beads_per_tube"]) < 55_000
        assert float(row["blood_volume_ul"]) in {50.0, 100.0}
    assert all(n == list(range(1, len(n) + 1)) for n in numbers.values())


def test_sample_dates_drift_around_the_nominal_day(cohort):
    summary, _ = cohort
    with summary.clinical.open(encoding="utf-8") as fh:
        infusion = {
            r["patient"]: date.fromisoformat(r["infusion_date"]) for r in csv.DictReader(fh)
        }
    nominal = {"D5": 5, "D7": 7, "D11": 11, "D14": 14, "M3": 90}
    for row in _manifest(summary):
        day = (date.fromisoformat(row["sample_date"]) - infusion[row["patient"]]).days
        assert abs(day - nominal[row["timepoint"]]) <= 2


# --- reading back with three readers ---------------------------------------------------------
def test_fcsparser_flowio_and_cartflow_read_the_same_events_and_keywords(cohort):
    summary, cytometer = cohort
    rows = _manifest(summary)
    parsed = fcsparser_reference.parse_many(list(summary.files), reformat_meta=True)
    for row, path in zip(rows, summary.files, strict=True):
        meta, columns, data = parsed[path]
        flow = flowio.FlowData(str(path))
        ours = read_fcs(path, scale=False)
        n_channels = ours.events.shape[1]
        from_flowio = np.asarray(flow.events, dtype=np.float32).reshape(-1, n_channels)
        np.testing.assert_array_equal(data.astype(np.float32), ours.events)
        np.testing.assert_array_equal(from_flowio, ours.events)
        assert int(meta["$TOT"]) == flow.event_count == ours.event_count > 0

        assert meta["$CYT"] == flow.text["cyt"] == ours.text["$CYT"] == cytometer
        assert meta["TUBE NAME"] == ours.text["TUBE NAME"] == NAME.match(path.name).group(3)
        assert meta["PATIENT ID"] == ours.text["PATIENT ID"] == row["patient"]
        assert ours.text["TIMEPOINT"] == row["timepoint"]
        assert meta["$SPILLOVER"] == flow.text["spillover"] == ours.text["$SPILLOVER"]
        assert re.fullmatch(r"[A-Z]+\^[A-Z]+ \d{4}", ours.text["$SRC"])
        assert re.fullmatch(r"\d{2}-[A-Z]{3}-\d{4}", ours.text["$DATE"])
        assert ours.text["$TIMESTEP"] == "0.01"
        assert all(ours.text[f"$P{i}R"] == "262144" for i in range(1, n_channels + 1))

        names = [c.name for c in ours.channels]
        assert names[:3] == ["FSC-A", "FSC-H", "SSC-A"] and names[-1] == "Time"
        assert ours.spillover.channels == tuple(names[3:-1])
        labels = [c.marker for c in ours.channels]
        assert [(flow.channels[i]["pns"] or None) for i in range(1, n_channels + 1)] == labels
        assert columns == [c.marker or c.name for c in ours.channels]
        assert all(re.fullmatch(r"\S+ \S+", label) for label in labels if label)
        assert np.all(np.diff(ours.events[:, -1]) >= 0), "events are not in acquisition order"


def test_every_file_matches_its_manifest_tube_panel(cohort):
    summary, cytometer = cohort
    panels = load_panels()
    for row, path in zip(_manifest(summary), summary.files, strict=True):
        fcs = read_fcs(path, events=False)
        match = match_panel(
            path, [(c.name, c.marker) for c in fcs.channels], panels, tube=row["tube"]
        )
        assert match.panel.tube == row["tube"]
        assert match.panel.cytometer == cytometer
        stained = {c.marker.split()[0] for c in fcs.channels if c.marker}
        assert stained == set(match.panel.markers)


# --- compensation and what the truth labels mean ---------------------------------------------
def test_compensation_recovers_separated_truth_populations(cohort):
    summary, _ = cohort
    for path in summary.files:
        fcs = read_fcs(path)
        events, marker = _compensated(fcs)
        population = _labels(summary, path)
        assert len(population) == len(events)
        t_cells = np.char.find(population, "/lymphocytes/CD3/") >= 0
        lymph_cd3neg = np.char.find(population, "/lymphocytes/CD3neg") >= 0
        if t_cells.sum() < 20 or lymph_cd3neg.sum() < 20:
            continue
        cd3 = events[:, marker["CD3"]]
        assert np.median(cd3[t_cells]) > 5 * max(np.median(cd3[lymph_cd3neg]), 100.0)
        granulocytes = population == "leukocytes/granulocytes"
        assert abs(np.median(cd3[granulocytes])) < 150  # compensated negatives sit near 0
        cd45 = events[:, marker["CD45"]]
        assert np.median(cd45[t_cells]) > 3 * np.median(cd45[granulocytes])


def test_compensation_removes_spillover_between_neighbouring_detectors(tmp_path):
    summary = simulate_cohort(tmp_path, _config(patients=1, timepoints=("M3",), tubes=("memory",)))
    fcs = read_fcs(summary.files[0])
    population = _labels(summary, summary.files[0])
    cd8 = np.char.find(population, "/CD8/") >= 0
    raw_cd4 = fcs.events[cd8, fcs.channel_names.index("APC-R700-A")]
    events, marker = _compensated(fcs)
    assert marker["CD4"] == fcs.channel_names.index("APC-R700-A")
    # CD8 PerCP-Cy5.5 spills ~12 % into APC-R700 (CD4); compensation takes it out
    assert np.median(raw_cd4) > 800
    assert abs(np.median(events[cd8, marker["CD4"]])) < 200


def test_car_t_cells_are_bright_with_a_dim_shoulder_clear_of_the_negatives(cohort):
    summary, _ = cohort
    frames = []
    for path in summary.files:
        if "memory" not in path.name:
            continue
        events, marker = _compensated(read_fcs(path))
        population = _truth(summary, path)["population"].astype(str)
        frames.append(pd.DataFrame({"car": events[:, marker["CAR"]], "population": population}))
    pooled = pd.concat(frames)
    car = pooled[pooled.population.str.contains("/CD3/CAR/")].car
    negative = pooled[pooled.population.str.contains("/CD3/CARneg/")].car
    assert len(car) > 30
    assert np.median(car) > 4 * max(np.quantile(negative, 0.95), 100.0)
    assert (car < np.quantile(negative, 0.995)).mean() < 0.02  # resolvable from the negatives
    assert (car < np.median(car) / 2.5).mean() > 0.05  # the CAR-dim shoulder


def test_function_tube_marks_are_truth_columns_that_separate(cohort):
    summary, cytometer = cohort
    wanted = {"PD1", "LAG3", "CD71", "Ki67"} | ({"TCRgd"} if cytometer == "FACSLyric" else set())
    for path in summary.files:
        truth = _truth(summary, path)
        marks = set(truth.columns) - {"population", "unstable_flow"}
        if "function" not in path.name:
            assert marks == set()
            continue
        assert marks == wanted
        events, marker = _compensated(read_fcs(path))
        t_cells = truth.population.astype(str).str.contains("/CD3/").to_numpy()
        assert not truth.loc[~t_cells & ~(truth.population == "doublets"), list(marks)].any().any()
        for name in ("PD1", "Ki67"):
            positive = truth[name].to_numpy() & t_cells
            negative = ~truth[name].to_numpy() & t_cells
            if positive.sum() >= 10 and negative.sum() >= 10:
                value = events[:, marker[name]]
                assert np.median(value[positive]) > 5 * max(np.median(value[negative]), 100.0)


def test_scatter_artefacts_look_like_artefacts(cohort):
    summary, _ = cohort
    for path in summary.files:
        fcs = read_fcs(path)
        population = _labels(summary, path)
        fsc_a, fsc_h = fcs.events[:, 0], fcs.events[:, 1]
        ratio = fsc_a / np.maximum(fsc_h, 1.0)
        doublets, lymph = population == "doublets", np.char.find(population, "lymphocytes") >= 0
        if doublets.sum() >= 5:
            assert np.median(ratio[doublets]) > 1.4 > 1.15 > np.median(ratio[lymph])
        debris = population == "debris"
        assert np.median(fsc_a[debris]) < 0.5 * np.median(fsc_a[lymph])
        clog = population == "clog"
        if clog.sum():
            seconds = fcs.events[:, -1] * 0.01
            window = seconds[clog].max() - seconds[clog].min()
            assert window < 0.1 * seconds.max()
        beads = population == "beads"
        if beads.sum():
            events, _ = _compensated(fcs)
            assert np.all(np.median(events[beads, 3:-1], axis=0) > 10_000)


# --- ground-truth consistency ---------------------------------------------------------------
def test_truth_counts_match_timepoints_csv(cohort):
    summary, _ = cohort
    table = _timepoints(summary)
    for row, path in zip(_manifest(summary), summary.files, strict=True):
        entry = table.loc[path.name]
        assert (entry.patient, entry.timepoint, entry.tube) == (
            row["patient"],
            row["timepoint"],
            row["tube"],
        )
        counts = _truth(summary, path)["population"].astype(str).value_counts()
        assert read_fcs(path, events=False).event_count == entry.total_events == counts.sum()
        for label in tube_labels(row["tube"]):
            assert counts.get(label, 0) == entry[f"events:{label}"], label
        assert entry.bead_events == counts.get("beads", 0)
        assert entry.clog_events == counts.get("clog", 0)
        assert abs(entry.total_events - 2000) < 6 * math.sqrt(2000)


def test_count_implied_concentration_is_the_bead_formula(cohort):
    summary, _ = cohort
    table = _timepoints(summary)
    checked = 0
    for _, entry in table.iterrows():
        for label in tube_labels(entry.tube):
            implied = entry[f"implied_per_ul:{label}"]
            if entry.tube == "function" or label in {"beads", "clog"}:
                assert math.isnan(implied)
                continue
            formula = (
                entry[f"events:{label}"]
                / entry.bead_events
                * entry.beads_per_tube
                / entry.blood_volume_ul
            )
            assert implied == pytest.approx(formula, rel=1e-12)
            count, true = entry[f"events:{label}"], entry[f"true_per_ul:{label}"]
            if count >= 100:  # Poisson error of events and beads, 5 sd
                error = math.sqrt(1 / count + 1 / entry.bead_events)
                assert abs(math.log(implied / true)) < 5 * error, (entry.name, label)
                checked += 1
    assert checked > 10


def test_patient_truth_agrees_with_timepoint_truth(cohort):
    summary, _ = cohort
    patients = pd.read_csv(summary.truth_dir / "patients.csv").set_index("patient")
    table = _timepoints(summary)
    memory = table[table.tube == "memory"]
    for patient, rows in memory.groupby("patient"):
        early = rows[rows.timepoint.isin(["D5", "D7", "D11", "D14"])].sort_values("actual_day")
        x, y = early.actual_day.to_numpy(float), early.true_car_t_per_ul.to_numpy()
        auc = float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)))
        assert patients.loc[patient, "auc14_car_t_sampled"] == pytest.approx(auc, rel=1e-9)
        peak = rows.true_car_t_per_ul.max()
        assert patients.loc[patient, "sampled_peak_car_t_per_ul"] == pytest.approx(peak)
        for _, entry in rows.iterrows():
            labels = [label for label in tube_labels("memory") if "/CAR/" in label]
            car = sum(entry[f"true_per_ul:{label}"] for label in labels)
            assert car == pytest.approx(entry.true_car_t_per_ul)


def test_clinical_table_has_one_row_per_patient(cohort):
    summary, _ = cohort
    clinical = pd.read_csv(summary.clinical, dtype=str, keep_default_na=False)
    assert list(clinical.columns) == [
        "patient", "infusion_date", "bridging", "tumour_burden_before_pct",
        "tumour_burden_after_pct", "anc_per_nl", "platelets_per_nl", "haemoglobin_g_dl",
        "crp_mg_l", "relapse_date", "cd19_negative_relapse", "death_date", "hsct_date",
        "last_followup_date",
    ]  # fmt: skip
    assert list(clinical.patient) == ["CART-001", "CART-002"]
    assert set(clinical.bridging) <= {"InO", "chemo"}
    for _, row in clinical.iterrows():
        infusion = date.fromisoformat(row.infusion_date)
        last = date.fromisoformat(row.last_followup_date)
        for column in ("relapse_date", "death_date", "hsct_date"):
            if row[column]:
                assert infusion < date.fromisoformat(row[column]) <= last
        assert float(row.tumour_burden_after_pct) <= float(row.tumour_burden_before_pct)


# --- determinism -------------------------------------------------------------------------------
def test_same_seed_gives_identical_bytes_and_another_seed_does_not(tmp_path):
    config = _config(patients=2, timepoints=("D7", "M3"))
    first = _digest(simulate_cohort(tmp_path / "a", config).out_dir)
    again = _digest(simulate_cohort(tmp_path / "b", config, workers=2).out_dir)
    assert first == again
    other = _digest(
        simulate_cohort(tmp_path / "c", _config(seed=8, timepoints=("D7", "M3"))).out_dir
    )
    assert first.keys() == other.keys()
    fcs_names = [n for n in first if n.endswith(".fcs")]
    assert all(first[n] != other[n] for n in fcs_names)


def test_a_patient_does_not_depend_on_cohort_size(tmp_path):
    small = simulate_cohort(tmp_path / "one", _config(patients=1, timepoints=("D7",)))
    large = simulate_cohort(tmp_path / "three", _config(patients=3, timepoints=("D7",)))
    for path in small.files:
        assert path.read_bytes() == (large.out_dir / path.name).read_bytes()


def test_leukapheresis_sample_precedes_infusion_without_car_t(tmp_path):
    summary = simulate_cohort(
        tmp_path, _config(patients=1, timepoints=("D7",), leukapheresis=True, tubes=("bcell",))
    )
    table = _timepoints(summary).set_index("timepoint")
    assert table.loc["LA", "actual_day"] < -20
    assert table.loc["LA", "true_car_t_per_ul"] == 0
    assert table.loc["LA", "events:leukocytes/lymphocytes/CD3/CAR"] == 0
    assert summary.files[0].name.startswith("CART-001 LA_BCELL COUNT_001")


def test_bad_configuration_is_refused(tmp_path):
    with pytest.raises(ValueError, match="cytometer"):
        simulate_cohort(tmp_path, _config(cytometer="Aurora"))
    with pytest.raises(ValueError, match="timepoint"):
        simulate_cohort(tmp_path, _config(timepoints=("week 2",)))
    with pytest.raises(ValueError, match="tube"):
        simulate_cohort(tmp_path, _config(tubes=("memory", "stem cells")))


# --- the patient model and cohort effects ------------------------------------------------------
@pytest.fixture(scope="module")
def population():
    return [draw_patient(11, i, CohortEffects()) for i in range(600)]


def test_inotuzumab_lowers_burden_and_expansion_and_raises_scm(population):
    ino = [p for p in population if p.bridging == "InO"]
    chemo = [p for p in population if p.bridging == "chemo"]
    assert 0.4 < len(ino) / len(population) < 0.6

    def median(group, attribute):
        return float(np.median([getattr(p, attribute) for p in group]))

    assert median(ino, "burden_after_pct") < 0.5 * median(chemo, "burden_after_pct")
    ino_peaks = [p.peak for p in ino if p.expander]
    chemo_peaks = [p.peak for p in chemo if p.expander]
    assert np.median(ino_peaks) < 0.7 * np.median(chemo_peaks)
    assert 1.3 < median(ino, "scm_peak") / median(chemo, "scm_peak") < 1.7


def test_high_burden_and_low_scm_shorten_event_free_survival(population):
    effects = CohortEffects()

    def efs(patient):
        return min(patient.relapse_day, patient.death_day, patient.followup_days)

    def event_rate(group):
        events = sum(math.isfinite(p.relapse_day) or math.isfinite(p.death_day) for p in group)
        exposure = sum(efs(p) for p in group)
        return events / exposure

    high = [p for p in population if p.burden_after_pct >= effects.high_burden_pct]
    low = [p for p in population if p.burden_after_pct < effects.high_burden_pct]
    assert len(high) > 60 and len(low) > 60
    assert event_rate(high) > 1.5 * event_rate(low)
    low_scm = [p for p in population if p.scm_peak < effects.low_scm_fraction]
    high_scm = [p for p in population if p.scm_peak >= effects.low_scm_fraction]
    assert event_rate(low_scm) > 1.3 * event_rate(high_scm)


def test_kinetics_expand_contract_and_b_cells_follow_persistence(population):
    expanders = [p for p in population if p.expander]
    assert 0.75 < len(expanders) / len(population) < 0.95
    peaks = np.array([p.peak for p in expanders])
    assert peaks.min() < 10 and peaks.max() > 5_000
    for p in population:
        assert 7 <= p.peak_day <= 14
        assert p.car_t(p.peak_day) >= p.car_t(5) and p.car_t(p.peak_day) >= p.car_t(28)
        b_cells = p.concentrations(90)[2]
        if p.persistent and not math.isfinite(p.b_recovery_day):
            assert b_cells < 1.0
        if p.b_recovery_day < 60:
            assert b_cells > 1.0
    non_expanders = [p for p in population if not p.expander]
    assert max(p.peak for p in non_expanders) <= 5.0


def test_accuracy_scoring_compares_each_gated_population_with_the_truth():
    """The scoring tests and bench/ share: F1 per population of one gated fixture file."""
    score = score_file(FIXTURE_COHORT / "CART-001 D11_CAR-T memory_007.fcs", "memory")
    rows = table([score]).set_index("population")
    assert {"singlets", "T", "CAR", "CARneg", "CAR_CD8_SCM"} <= set(rows.index)
    assert (rows["tp"] <= rows[["true", "gated"]].min(axis=1)).all()
    f1 = 2 * rows["tp"] / (rows["true"] + rows["gated"])
    assert np.allclose(rows["f1"], f1)
    assert rows.loc["T", "f1"] > 0.97 and rows.loc["CAR", "f1"] > 0.97
    assert (score.car_true, score.car_gated) == (rows.loc["CAR", "true"], rows.loc["CAR", "gated"])
    assert score.car_covered


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def test_no_test_imports_the_benchmarks():
    """Scoring lives in the package (cartflow.simulate.accuracy, cartflow.pipeline.expert_accuracy);
    bench/ scripts import it from there and no test imports bench/."""
    tests = sorted(Path(__file__).parent.glob("*.py"))
    assert Path(__file__) in tests
    found = [
        f"{path.name}:{line} imports {module}"
        for path in tests
        for line, module in _imported_modules(path)
        if module == "bench" or module.startswith("bench.")
    ]
    assert not found, found
