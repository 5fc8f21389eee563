"""The outcome stage: per-patient data in, every configured analysis run and written."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import replace
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from cartflow.io.errors import first_line
from cartflow.io.outputs import restore
from cartflow.pipeline.clinical import (
    ClinicalTable,
    DeriveOptions,
    EndpointOptions,
    HematotoxTable,
    derive_patients,
    load_clinical,
    load_hematotox,
)
from cartflow.pipeline.outcomes.common import ENDPOINTS, OutcomeInputError, as_groups
from cartflow.pipeline.outcomes.config import (
    TIME_UNITS,
    OutcomeConfig,
    known_names,
    load_outcome_config,
)
from cartflow.pipeline.outcomes.cox import CoxResult, cox
from cartflow.pipeline.outcomes.figures import write_figures
from cartflow.pipeline.outcomes.groups import CountTest, compare_counts, compare_groups
from cartflow.pipeline.outcomes.results import OutcomeReport, PreparedPatients
from cartflow.pipeline.outcomes.roc import CutPoint, cutpoint, horizon_outcome
from cartflow.pipeline.outcomes.study_tables import study_tables
from cartflow.pipeline.outcomes.survival import (
    KmSummary,
    km_summary,
    landmark_frame,
    median_followup,
)
from cartflow.pipeline.outcomes.tables import write_json, write_tables
from cartflow.pipeline.patient_variables import BELOW_LOD_RULE, derive_variables


def _check_patient_table(patient_table: pd.DataFrame) -> pd.DataFrame:
    if "patient" not in patient_table.columns:
        raise OutcomeInputError("patient table", "needs a 'patient' column")
    table = patient_table.assign(patient=patient_table["patient"].astype(str).str.strip())
    repeated = sorted(set(table["patient"][table["patient"].duplicated()]))
    if repeated:
        raise OutcomeInputError("patient table", f"patients on more than one row: {repeated}")
    return table


def _merge(derived: pd.DataFrame, patient_table: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    table = _check_patient_table(patient_table)
    overlap = [c for c in table.columns if c != "patient" and c in derived.columns]
    if overlap:
        notes.append(
            f"patient-table column(s) {overlap} also in the clinical table: clinical values used"
        )
    clinical = set(derived["patient"])
    missing = sorted(set(table["patient"]) - clinical)
    if missing:
        notes.append(
            f"{len(missing)} patient(s) in the patient table without clinical data "
            f"left out: {missing}"
        )
    no_kinetics = sorted(clinical - set(table["patient"]))
    if no_kinetics:
        notes.append(f"{len(no_kinetics)} patient(s) without a patient-table row: {no_kinetics}")
    return derived.merge(table.drop(columns=overlap), on="patient", how="left")


def _add_expanded(data: pd.DataFrame, config: OutcomeConfig, notes: list[str]) -> pd.DataFrame:
    if "expanded" in data or config.expansion_variable not in data:
        return data
    peak = data[config.expansion_variable].astype(float)
    expanded = (peak > config.expansion_threshold_per_ul).astype(object).where(peak.notna())
    notes.append(
        f"expanded derived as {config.expansion_variable} > {config.expansion_threshold_per_ul:g}"
    )
    return data.assign(expanded=expanded)


def _present(
    data: pd.DataFrame, names: Iterable[str], what: str, notes: list[str], known: set[str]
) -> list[str]:
    """The names found in the data; a known name without data is a note, an unknown an error."""
    names = list(dict.fromkeys(names))
    missing = [n for n in names if n not in data.columns]
    unknown = [n for n in missing if n not in known and not n.startswith("hematotox_")]
    if unknown:
        raise OutcomeInputError("analysis configuration", f"{what}: unknown name(s) {unknown}")
    if missing:
        notes.append(f"{what} not in the data, skipped: {missing}")
    return [n for n in names if n in data.columns]


def _numeric(data: pd.DataFrame, names: list[str], notes: list[str]) -> list[str]:
    usable = []
    for name in names:
        converted = pd.to_numeric(data[name], errors="coerce")
        if converted.notna().sum() == 0 or pd.api.types.is_bool_dtype(data[name]):
            notes.append(f"variable {name} has no numeric values, skipped")
            continue
        data[name] = converted.astype(float)
        usable.append(name)
    return usable


def _group_frame(data: pd.DataFrame, groupings: list[str]) -> pd.DataFrame:
    return pd.DataFrame({g: as_groups(data[g]) for g in groupings}, index=data.index)


# --- when a variable is known: baseline, by a landmark day, or never at a fixed day -----------

_AT_EXPANSION = ("_cmax", "_tmax_day", "_auc28")


def known_by_day(name: str, config: OutcomeConfig) -> float | None:
    """0 for a baseline variable; the day after infusion by which a measured one is known;
    None for one with no fixed day (persistence, aplasia duration: time-dependent)."""
    from cartflow.pipeline.kinetics import KINETICS_COLUMNS

    name = name.removesuffix("_cut")
    declared = {v.name: v for v in config.patient_variables}
    if name in declared:
        day = declared[name].known_by_day
        return config.expansion_known_by_day if day is None else day
    if name == "expanded" or name.endswith(_AT_EXPANSION):
        return config.expansion_known_by_day
    if name.endswith("_auc14"):
        return 14.0
    if name in KINETICS_COLUMNS:
        return None
    return 0.0


def landmark_day(name: str | Iterable[str], config: OutcomeConfig) -> float | None:
    """Day from which a predictor enters EFS/OS analyses (0: from infusion; None: never)."""
    names = [name] if isinstance(name, str) else list(name)
    days = [known_by_day(n, config) for n in names]
    if any(d is None for d in days):
        return None
    needed = max(days, default=0.0)
    if needed <= 0:
        return 0.0
    return next((float(d) for d in config.landmark_days if d >= needed), None)


def _survival_predictors(names: list[str], config: OutcomeConfig, notes: list[str]):
    usable = {n: landmark_day(n, config) for n in names}
    never = [n for n, day in usable.items() if day is None]
    if never:
        notes.append(
            f"not used as predictors of EFS/OS (measured after infusion, no landmark covers "
            f"them; guarantee-time bias): {never}"
        )
    later = {n: d for n, d in usable.items() if d}
    if later:
        notes.append(
            "landmark analyses (time from the landmark day, patients event-free and followed "
            f"then): {', '.join(f'{n} from day {d:g}' for n, d in later.items())}"
        )
    return {n: d for n, d in usable.items() if d is not None}


def _cutpoints(
    data: pd.DataFrame, variables: dict[str, float], config: OutcomeConfig
) -> tuple[list[CutPoint], pd.DataFrame]:
    days, event = ENDPOINTS["efs"]
    options = (config.roc_min_auc, config.bootstrap, config.seed, config.confidence)
    cuts = []
    for v, day in variables.items():
        at_risk = data[days].astype(float) > day  # the landmark: event-free at day
        outcome = horizon_outcome(data[days], data[event], config.horizon_days)
        outcome = np.where(at_risk, outcome, np.nan)
        cuts.append(cutpoint(data[v], outcome, v, "efs", config.horizon_days, *options))
    groups = {f"{c.variable}_cut": c.groups(data[c.variable]).set_axis(data.index) for c in cuts}
    return cuts, pd.DataFrame(groups, index=data.index)


def _survival(
    data: pd.DataFrame, groups: pd.DataFrame, days_of: dict[str, float], config: OutcomeConfig
) -> list[KmSummary]:
    scale = TIME_UNITS[config.time_unit]
    results = []
    for endpoint, (days, event) in ENDPOINTS.items():
        for grouping in ["overall", *groups.columns]:
            day = 0.0 if grouping == "overall" else days_of[grouping]
            rows = landmark_frame(data.assign(**{grouping: groups.get(grouping)}), days, day)
            labels = None if grouping == "overall" else rows[grouping]
            summary = km_summary(
                rows[days] / scale,
                rows[event],
                labels,
                config.estimate_days / scale,
                endpoint,
                grouping,
                config.confidence,
                config.rmst_horizon_days / scale,
            )
            results.append(replace(summary, landmark_day=day, time_unit=config.time_unit))
    return results


def _cox_models(
    data: pd.DataFrame,
    predictors: dict[str, float],
    config: OutcomeConfig,
    notes: list[str],
    known: set[str],
) -> tuple[list[CoxResult], list[CoxResult]]:
    options = {
        "reference_levels": config.reference_levels,
        "log10_variables": config.log10_variables,
        "penalizer": config.cox_penalizer,
        "confidence": config.confidence,
    }
    joint = _present(data, config.cox_covariates, "Cox covariates", notes, known)
    joint_day = landmark_day(joint, config)
    if joint and joint_day is None:
        notes.append(f"multivariable Cox on {joint} skipped: a covariate has no landmark")
    uni, multi = [], []
    for endpoint, (days, event) in ENDPOINTS.items():
        for covariate, day in predictors.items():
            rows = landmark_frame(data, days, day)
            result = cox(rows, days, event, [covariate], endpoint=endpoint, model="univariable",
                         **options)  # fmt: skip
            uni.append(replace(result, landmark_day=day))
        if len(joint) >= 2 and joint_day is not None:
            rows = landmark_frame(data, days, joint_day)
            result = cox(rows, days, event, joint, endpoint=endpoint, model="multivariable",
                         **options)  # fmt: skip
            multi.append(_epv_note(replace(result, landmark_day=joint_day)))
    return uni, multi


def _epv_note(result: CoxResult) -> CoxResult:
    if result.terms and result.events < 10 * len(result.terms):
        note = f"only {result.events} events for {len(result.terms)} terms (< 10 per term)"
        return replace(result, note="; ".join(filter(None, [result.note, note])))
    return result


def _definitional(a: str, b: str, config: OutcomeConfig) -> bool:
    return (a, b) in config.definitional_pairs or (b, a) in config.definitional_pairs


def _count_tests(
    data: pd.DataFrame,
    groups: pd.DataFrame,
    groupings: list[str],
    config: OutcomeConfig,
    notes: list[str],
    known: set[str],
) -> list[CountTest]:
    present = _present(data, config.categorical, "categorical", notes, known)
    categorical = [c for c in present if c not in groupings]
    pairs = [(a, b) for a, b in combinations(groupings, 2) if not _definitional(a, b, config)]
    skipped = [f"{a} × {b}" for a, b in combinations(groupings, 2) if _definitional(a, b, config)]
    if skipped:
        notes.append(f"definitional pairs not tested: {', '.join(skipped)}")
    tests = [compare_counts(groups[b], groups[a], b, a) for a, b in pairs]
    tests += [compare_counts(data[c], groups[g], c, g) for g in groupings for c in categorical]
    return tests


def _cut_variables(
    variables: dict[str, float], config: OutcomeConfig, notes: list[str], known: set[str],
    data: pd.DataFrame,
) -> dict[str, float]:  # fmt: skip
    if config.cutpoint_variables is None:
        return variables
    named = _present(data, config.cutpoint_variables, "cut-point variables", notes, known)
    return {v: variables[v] for v in named if v in variables}


def _declared(
    data: pd.DataFrame, timepoints: pd.DataFrame | None, config: OutcomeConfig
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The configuration's patient variables from the timepoint table, with reasons."""
    if timepoints is None or "population" not in timepoints:
        return data, None
    derived = derive_variables(timepoints, config.patient_variables, data["patient"])
    values = derived.values.reset_index()
    for spec in config.patient_variables:
        if spec.measure == "detected":
            values[spec.name] = values[spec.name].map({1.0: True, 0.0: False}).astype(object)
    data = data.drop(columns=[c for c in values.columns if c != "patient" and c in data])
    return data.merge(values, on="patient", how="left"), derived.reasons


def prepare_patients(
    clinical: pd.DataFrame | Path | str | ClinicalTable,
    patient_table: pd.DataFrame,
    config: OutcomeConfig = OutcomeConfig(),
    known_patients: Collection[str] | None = None,
    notes: list[str] | None = None,
    timepoints: pd.DataFrame | None = None,
    hematotox: HematotoxTable | None = None,
) -> PreparedPatients:
    """Validated clinical table → per-patient endpoints, classes, scores and variables. A
    clinical table or ``hematotox`` point table already read is used as it is (``known_patients``
    then was the reader's business); without one it is read here (the configuration's
    ``hematotox_table``, else the shipped one)."""
    notes = [] if notes is None else notes
    if not isinstance(clinical, ClinicalTable):
        clinical = load_clinical(clinical, known_patients)
    if hematotox is None:
        hematotox = load_hematotox(config.hematotox_table)
    options = DeriveOptions(EndpointOptions(config.censor_at_hsct), config.burden_threshold_pct)
    derived = _merge(derive_patients(clinical, hematotox, options), patient_table, notes)
    derived, reasons = _declared(derived, timepoints, config)
    notes.append(f"below the LOD: {BELOW_LOD_RULE}; a peak with every count below the LOD is 0")
    return PreparedPatients(_add_expanded(derived, config, notes), clinical, hematotox, reasons)


def analyse(
    data: pd.DataFrame,
    config: OutcomeConfig,
    out_dir: Path,
    notes: list[str],
    reasons: pd.DataFrame | None = None,
) -> OutcomeReport:
    """Every analysis of the configuration on prepared per-patient data (nothing written)."""
    known = known_names(config) | set(data.columns)
    variables = _numeric(data, _present(data, config.variables, "variables", notes, known), notes)
    groupings = _present(data, config.groupings, "groupings", notes, known)
    groups = _group_frame(data, groupings)
    comparisons = [
        compare_groups(data[v], groups[g], v, g, config.confidence)
        for g in groupings
        for v in variables
    ]
    predictors = _survival_predictors([*groupings, *variables], config, notes)
    cut_on = _cut_variables(
        {v: predictors[v] for v in variables if v in predictors}, config, notes, known, data
    )
    cuts, cut_groups = _cutpoints(data, cut_on, config)
    data = pd.concat([data, cut_groups], axis=1)
    days_of = predictors | {f"{v}_cut": d for v, d in cut_on.items()}
    survival_groups = pd.concat([groups, cut_groups], axis=1)
    survival_groups = survival_groups[[c for c in survival_groups if c in days_of]]
    uni, multi = _cox_models(data, predictors, config, notes, known)
    return OutcomeReport(
        out_dir=out_dir,
        n_patients=len(data),
        patients=data,
        comparisons=tuple(comparisons),
        count_tests=tuple(_count_tests(data, groups, groupings, config, notes, known)),
        cutpoints=tuple(cuts),
        survival=tuple(_survival(data, survival_groups, days_of, config)),
        followup=median_followup(data["os_days"], data["os_event"], config.confidence),
        cox_univariable=tuple(uni),
        cox_multivariable=tuple(multi),
        tables={},
        figures=(),
        json_path=out_dir / "outcomes.json",
        notes=tuple(notes),
        config=config,
        groupings=tuple(groupings),
        reasons=reasons,
    )


def run_outcomes(
    clinical: pd.DataFrame | Path | str | ClinicalTable,
    patient_table: pd.DataFrame,
    out_dir: Path,
    config: OutcomeConfig = OutcomeConfig(),
    timepoints: pd.DataFrame | None = None,
    known_patients: Collection[str] | None = None,
    hematotox: HematotoxTable | None = None,
) -> OutcomeReport:
    """Run the outcome stage: derive endpoints, compare groups, cut-points, KM, Cox, the
    study's Tables 1-3; write all. ``timepoints``: the counts stage's timepoint table;
    ``hematotox``: the point table already read (None: read as :func:`prepare_patients` says).

    Raises ClinicalTableError (every problem of the clinical table, with row and column) and
    OutcomeInputError (unusable patient table or configuration).
    """
    notes: list[str] = []
    prepared = prepare_patients(
        clinical, patient_table, config, known_patients, notes, timepoints, hematotox
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = analyse(prepared.data, config, out_dir, notes, prepared.reasons)
    report = replace(report, study_tables=study_tables(report, prepared, timepoints, notes))
    tables = write_tables(report, prepared.hematotox.to_dict())
    figures = write_figures(report, timepoints, tables, notes) if config.figures else []
    report = replace(report, tables=tables, figures=tuple(figures), notes=tuple(notes))
    write_json(report, prepared.hematotox.to_dict(), prepared.clinical.source)
    return report


def read_patient_table(path: Path) -> pd.DataFrame:
    """A per-patient variable table from CSV or Parquet (patient ids stay text: '001')."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype={"patient": str}).map(restore)  # as cartflow wrote it
    except (OSError, ValueError) as exc:
        raise OutcomeInputError(path, f"cannot be read: {first_line(exc)}") from exc


def run_outcomes_from_files(
    clinical: Path,
    patient_table: Path,
    out_dir: Path,
    config_path: Path | None = None,
    timepoints: Path | None = None,
    known_patients: Collection[str] | None = None,
) -> OutcomeReport:
    """The file-level entry point (what a CLI command calls): paths in, report out."""
    config = load_outcome_config(config_path)
    points = read_patient_table(timepoints) if timepoints is not None else None
    return run_outcomes(
        clinical, read_patient_table(patient_table), out_dir, config, points, known_patients
    )
