"""The outcome stage: per-patient data in, every configured analysis run and written."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from itertools import combinations
from pathlib import Path

import pandas as pd

from pipeline.clinical import (
    ClinicalTable,
    DeriveOptions,
    EndpointOptions,
    HematotoxTable,
    derive_patients,
    load_clinical,
    load_hematotox,
)
from pipeline.errors import first_line
from pipeline.outcomes.common import ENDPOINTS, OutcomeInputError, as_groups
from pipeline.outcomes.config import OutcomeConfig, load_outcome_config
from pipeline.outcomes.cox import CoxResult, cox
from pipeline.outcomes.groups import CountTest, GroupComparison, compare_counts, compare_groups
from pipeline.outcomes.roc import CutPoint, cutpoint, horizon_outcome
from pipeline.outcomes.survival import FollowUp, KmSummary, km_summary, median_followup
from pipeline.outcomes.tables import write_json, write_tables
from pipeline.outputs import restore


@dataclass(frozen=True)
class OutcomeReport:
    """Everything the outcome stage computed, where it wrote it, and what it skipped."""

    out_dir: Path
    n_patients: int
    patients: pd.DataFrame
    comparisons: tuple[GroupComparison, ...]
    count_tests: tuple[CountTest, ...]
    cutpoints: tuple[CutPoint, ...]
    survival: tuple[KmSummary, ...]
    followup: FollowUp
    cox_univariable: tuple[CoxResult, ...]
    cox_multivariable: tuple[CoxResult, ...]
    tables: Mapping[str, Path]
    figures: tuple[Path, ...]
    json_path: Path
    notes: tuple[str, ...]
    config: OutcomeConfig
    groupings: tuple[str, ...] = ()

    def comparison(self, grouping: str, variable: str) -> GroupComparison:
        return next(
            c for c in self.comparisons if c.grouping == grouping and c.variable == variable
        )

    def km(self, endpoint: str, grouping: str = "overall") -> KmSummary:
        return next(k for k in self.survival if k.endpoint == endpoint and k.grouping == grouping)

    def cut(self, variable: str) -> CutPoint:
        return next(c for c in self.cutpoints if c.variable == variable)

    def cox(self, endpoint: str, covariate: str, model: str = "univariable") -> CoxResult:
        pool = self.cox_univariable if model == "univariable" else self.cox_multivariable
        return next(r for r in pool if r.endpoint == endpoint and covariate in r.covariates)


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


def _present(data: pd.DataFrame, names: Iterable[str], what: str, notes: list[str]) -> list[str]:
    names = list(dict.fromkeys(names))
    missing = [n for n in names if n not in data.columns]
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


def _cutpoints(
    data: pd.DataFrame, variables: list[str], config: OutcomeConfig
) -> tuple[list[CutPoint], pd.DataFrame]:
    days, event = ENDPOINTS["efs"]
    outcome = horizon_outcome(data[days], data[event], config.horizon_days)
    options = (config.roc_min_auc, config.bootstrap, config.seed, config.confidence)
    cuts = [cutpoint(data[v], outcome, v, "efs", config.horizon_days, *options) for v in variables]
    groups = {f"{c.variable}_cut": c.groups(data[c.variable]).set_axis(data.index) for c in cuts}
    return cuts, pd.DataFrame(groups, index=data.index)


def _survival(data: pd.DataFrame, groups: pd.DataFrame, config: OutcomeConfig) -> list[KmSummary]:
    results = []
    for endpoint, (days, event) in ENDPOINTS.items():
        for grouping in ["overall", *groups.columns]:
            labels = None if grouping == "overall" else groups[grouping]
            results.append(
                km_summary(
                    data[days],
                    data[event],
                    labels,
                    config.estimate_days,
                    endpoint,
                    grouping,
                    config.confidence,
                )
            )
    return results


def _cox_models(
    data: pd.DataFrame,
    groupings: list[str],
    variables: list[str],
    config: OutcomeConfig,
    notes: list[str],
) -> tuple[list[CoxResult], list[CoxResult]]:
    options = {
        "reference_levels": config.reference_levels,
        "log10_variables": config.log10_variables,
        "penalizer": config.cox_penalizer,
        "confidence": config.confidence,
    }
    joint = _present(data, config.cox_covariates, "Cox covariates", notes)
    uni, multi = [], []
    for endpoint, (days, event) in ENDPOINTS.items():
        uni += [
            cox(data, days, event, [c], endpoint=endpoint, model="univariable", **options)
            for c in [*groupings, *variables]
        ]
        if len(joint) >= 2:
            result = cox(
                data, days, event, joint, endpoint=endpoint, model="multivariable", **options
            )
            multi.append(_epv_note(result))
    return uni, multi


def _epv_note(result: CoxResult) -> CoxResult:
    if result.terms and result.events < 10 * len(result.terms):
        note = f"only {result.events} events for {len(result.terms)} terms (< 10 per term)"
        return replace(result, note="; ".join(filter(None, [result.note, note])))
    return result


def _count_tests(
    data: pd.DataFrame,
    groups: pd.DataFrame,
    groupings: list[str],
    config: OutcomeConfig,
    notes: list[str],
) -> list[CountTest]:
    present = _present(data, config.categorical, "categorical", notes)
    categorical = [c for c in present if c not in groupings]
    tests = [compare_counts(groups[b], groups[a], b, a) for a, b in combinations(groupings, 2)]
    tests += [compare_counts(data[c], groups[g], c, g) for g in groupings for c in categorical]
    return tests


def _cut_variables(
    data: pd.DataFrame, variables: list[str], config: OutcomeConfig, notes: list[str]
) -> list[str]:
    if config.cutpoint_variables is None:
        return variables
    named = _present(data, config.cutpoint_variables, "cut-point variables", notes)
    return [v for v in named if v in variables]


@dataclass(frozen=True)
class PreparedPatients:
    """Per-patient analysis data with the clinical table and point table it came from."""

    data: pd.DataFrame
    clinical: ClinicalTable
    hematotox: HematotoxTable


def prepare_patients(
    clinical: pd.DataFrame | Path | str | ClinicalTable,
    patient_table: pd.DataFrame,
    config: OutcomeConfig = OutcomeConfig(),
    known_patients: Collection[str] | None = None,
    notes: list[str] | None = None,
) -> PreparedPatients:
    """Validated clinical table → per-patient endpoints, classes, scores and variables."""
    notes = [] if notes is None else notes
    if not isinstance(clinical, ClinicalTable):
        clinical = load_clinical(clinical, known_patients)
    hematotox = load_hematotox(config.hematotox_table)
    options = DeriveOptions(EndpointOptions(config.censor_at_hsct), config.burden_threshold_pct)
    derived = _merge(derive_patients(clinical, hematotox, options), patient_table, notes)
    return PreparedPatients(_add_expanded(derived, config, notes), clinical, hematotox)


def analyse(
    data: pd.DataFrame, config: OutcomeConfig, out_dir: Path, notes: list[str]
) -> OutcomeReport:
    """Every analysis of the configuration on prepared per-patient data (nothing written)."""
    variables = _numeric(data, _present(data, config.variables, "variables", notes), notes)
    groupings = _present(data, config.groupings, "groupings", notes)
    groups = _group_frame(data, groupings)
    comparisons = [
        compare_groups(data[v], groups[g], v, g, config.confidence)
        for g in groupings
        for v in variables
    ]
    cuts, cut_groups = _cutpoints(data, _cut_variables(data, variables, config, notes), config)
    data = pd.concat([data, cut_groups], axis=1)
    uni, multi = _cox_models(data, groupings, variables, config, notes)
    return OutcomeReport(
        out_dir=out_dir,
        n_patients=len(data),
        patients=data,
        comparisons=tuple(comparisons),
        count_tests=tuple(_count_tests(data, groups, groupings, config, notes)),
        cutpoints=tuple(cuts),
        survival=tuple(_survival(data, pd.concat([groups, cut_groups], axis=1), config)),
        followup=median_followup(data["os_days"], data["os_event"], config.confidence),
        cox_univariable=tuple(uni),
        cox_multivariable=tuple(multi),
        tables={},
        figures=(),
        json_path=out_dir / "outcomes.json",
        notes=tuple(notes),
        config=config,
        groupings=tuple(groupings),
    )


def run_outcomes(
    clinical: pd.DataFrame | Path | str | ClinicalTable,
    patient_table: pd.DataFrame,
    out_dir: Path,
    config: OutcomeConfig = OutcomeConfig(),
    timepoints: pd.DataFrame | None = None,
    known_patients: Collection[str] | None = None,
) -> OutcomeReport:
    """Run the outcome stage: derive endpoints, compare groups, cut-points, KM, Cox; write all.

    Raises ClinicalTableError (every problem of the clinical table, with row and column) and
    OutcomeInputError (unusable patient table or configuration).
    """
    from pipeline.outcomes.figures import write_figures

    notes: list[str] = []
    prepared = prepare_patients(clinical, patient_table, config, known_patients, notes)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = analyse(prepared.data, config, out_dir, notes)
    tables = write_tables(report)
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
