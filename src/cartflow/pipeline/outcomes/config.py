"""What the outcome stage analyses and how: :class:`OutcomeConfig` and its YAML loader."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from cartflow.io.errors import YamlPlaces, yaml_problem
from cartflow.pipeline.outcomes.common import OutcomeInputError, _jsonable
from cartflow.pipeline.patient_variables import DEFAULT_VARIABLES as PATIENT_VARIABLES
from cartflow.pipeline.patient_variables import PatientVariable, VariableSpecError, parse_variables

DEFAULT_VARIABLES: tuple[str, ...] = (
    "car_t_cmax",
    "car_t_tmax_day",
    "car_t_auc14",
    "car_t_auc28",
    "scm_pct_of_cd8_car_at_peak",
    "car_pct_of_cd3_at_peak",
    "car_neg_cd8_scm_per_ul_d28",
    "car_neg_cd8_scm_per_ul_d90",
)
DEFAULT_GROUPINGS: tuple[str, ...] = (
    "bridging",
    "burden_before_class",
    "burden_after_class",
    "burden_dynamics",
    "hematotox_risk",
    "hematotox_risk3",
    "expanded",
    "car_t_detected_d90",
)
# pairs of groupings where one is defined from the other: never tested against each other
DEFINITIONAL_PAIRS: tuple[tuple[str, str], ...] = (
    ("burden_before_class", "burden_dynamics"),
    ("burden_after_class", "burden_dynamics"),
    ("burden_after_class", "hematotox_risk"),
    ("burden_after_class", "hematotox_risk3"),
    ("hematotox_risk", "hematotox_risk3"),
    ("expanded", "car_t_detected_d90"),
)
TABLE1_VARIABLES: tuple[str, ...] = (
    "tumour_burden_before_pct",
    "burden_before_class",
    "tumour_burden_after_pct",
    "burden_after_class",
    "burden_dynamics",
    "anc_per_nl",
    "platelets_per_nl",
    "haemoglobin_g_dl",
    "crp_mg_l",
    "hematotox_score",
    "hematotox_risk",
)
TABLE3_VARIABLES: tuple[str, ...] = (
    "car_t_cmax",
    "car_t_tmax_day",
    "car_t_auc14",
    "car_t_auc28",
    "car_pct_of_cd3_at_peak",
    "cd8_pct_of_car_at_peak",
    "cd4_pct_of_car_at_peak",
    "naive_pct_of_cd8_car_at_peak",
    "scm_pct_of_cd8_car_at_peak",
    "cm_pct_of_cd8_car_at_peak",
    "em_pct_of_cd8_car_at_peak",
    "temra_pct_of_cd8_car_at_peak",
    "pd1_pct_of_cd8_car_at_peak",
    "lag3_pct_of_cd8_car_at_peak",
    "ki67_pct_of_cd8_car_at_peak",
    "cd71_pct_of_cd8_car_at_peak",
    "ki67_pct_of_cd4_car_at_peak",
    "car_neg_cd8_scm_per_ul_d28",
    "car_neg_cd8_scm_per_ul_d90",
)
# names analysis.yaml used before kinetics.csv's names were adopted everywhere
RENAMED: dict[str, str] = {
    "cmax_car_t_per_ul": "car_t_cmax",
    "tmax_day": "car_t_tmax_day",
    "auc14_car_t": "car_t_auc14",
    "auc28_car_t": "car_t_auc28",
    "persistence_day": "car_t_persistence_day",
}
TIME_UNITS = {"days": 1.0, "months": 365.25 / 12}
DEFAULT_CATEGORICAL: tuple[str, ...] = ("efs_event", "os_event", "hsct", "cd19_negative_relapse")
FIGURE_FORMATS = frozenset({"png", "svg", "pdf"})


@dataclass(frozen=True)
class OutcomeConfig:
    """What the outcome stage analyses and how; every field is recorded in outcomes.json."""

    variables: tuple[str, ...] = DEFAULT_VARIABLES
    groupings: tuple[str, ...] = DEFAULT_GROUPINGS
    categorical: tuple[str, ...] = DEFAULT_CATEGORICAL
    cutpoint_variables: tuple[str, ...] | None = None  # None: every variable
    horizon_days: float = 365.0  # ROC: EFS event within this many days
    estimate_days: float = 365.0  # Kaplan-Meier estimates reported at this day (12 months)
    censor_at_hsct: bool = False
    burden_threshold_pct: float = 5.0
    expansion_variable: str = "car_t_cmax"
    expansion_threshold_per_ul: float = 5.0
    cox_covariates: tuple[str, ...] = ("burden_after_class", "scm_pct_of_cd8_car_at_peak")
    log10_variables: tuple[str, ...] = (
        "car_t_cmax",
        "car_t_auc14",
        "car_t_auc28",
        "car_neg_cd8_scm_per_ul_d28",
        "car_neg_cd8_scm_per_ul_d90",
    )
    reference_levels: Mapping[str, str] = field(default_factory=dict)
    roc_min_auc: float = 0.70
    bootstrap: int = 2000
    seed: int = 0
    confidence: float = 0.95
    cox_penalizer: float = 0.0
    hematotox_table: Path | None = None
    figures: bool = True
    figure_formats: tuple[str, ...] = ("png", "svg")
    # variables measured after infusion enter survival analyses only from a landmark day by
    # which they are known, among patients event-free and followed at that day
    landmark_days: tuple[float, ...] = (28.0, 90.0)
    expansion_known_by_day: float = 28.0  # the CAR-T peak and values at it
    definitional_pairs: tuple[tuple[str, str], ...] = DEFINITIONAL_PAIRS
    patient_variables: tuple[PatientVariable, ...] = PATIENT_VARIABLES
    subgroups: Mapping[str, str] = field(
        default_factory=lambda: {"low_burden": "burden_after_class == low"}
    )
    table_grouping: str = "bridging"
    table1_variables: tuple[str, ...] = TABLE1_VARIABLES
    table3_variables: tuple[str, ...] = TABLE3_VARIABLES
    table3_subgroups: tuple[str, ...] = ("low_burden",)
    early_recovery_days: float = 180.0  # Table 2: B-cell recovery in remission up to this day
    time_unit: str = "days"  # or months (days / 30.44) for time axes and estimates
    rmst_horizon_days: float = 365.0  # restricted mean EFS/OS up to this day

    def to_dict(self) -> dict[str, Any]:
        """Every setting as plain values, in the form analysis.yaml takes them."""
        values = _jsonable(self)
        values["patient_variables"] = {v.name: v.to_yaml() for v in self.patient_variables}
        return values


_TUPLE_FIELDS = {
    "variables",
    "groupings",
    "categorical",
    "cutpoint_variables",
    "cox_covariates",
    "log10_variables",
    "figure_formats",
    "table1_variables",
    "table3_variables",
    "table3_subgroups",
}


def _names(name: str, value: Any, source: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise OutcomeInputError(source, f"{name}: expected a list of names")
    return tuple(value)


def _config_value(name: str, value: Any, source: str) -> Any:
    default = getattr(OutcomeConfig(), name)
    if name == "cutpoint_variables" and value is None:
        return None
    if name == "figure_formats":
        formats = _names(name, value, source)
        unknown = sorted(set(formats) - FIGURE_FORMATS)
        if unknown:
            raise OutcomeInputError(source, f"{name}: {unknown} not among {sorted(FIGURE_FORMATS)}")
        return formats
    if name in _TUPLE_FIELDS:
        names = _names(name, value, source)
        renamed = {n: RENAMED[n] for n in names if n in RENAMED}
        if renamed:
            listed = ", ".join(f"{old} → {new}" for old, new in renamed.items())
            raise OutcomeInputError(source, f"{name}: renamed (kinetics.csv's names): {listed}")
        return names
    if name == "patient_variables":
        try:  # declared in addition to the defaults; a default's name may be redefined
            declared = parse_variables(value or {}, str(source))
        except VariableSpecError as exc:
            raise OutcomeInputError(source, str(exc)) from None
        mine = {v.name for v in declared}
        return (*(v for v in PATIENT_VARIABLES if v.name not in mine), *declared)
    if name == "landmark_days":
        try:
            return tuple(sorted(float(v) for v in value))
        except (TypeError, ValueError):
            raise OutcomeInputError(source, f"{name}: expected a list of days") from None
    if name == "definitional_pairs":
        if not all(isinstance(p, list | tuple) and len(p) == 2 for p in value or []):
            raise OutcomeInputError(source, f"{name}: expected a list of [grouping, grouping]")
        return tuple((str(a), str(b)) for a, b in value or [])
    if name == "subgroups":
        if not isinstance(value, dict):
            raise OutcomeInputError(source, f"{name}: expected a mapping name → 'column == level'")
        from cartflow.pipeline.outcomes.subsets import parse_where

        for text in value.values():
            parse_where(str(text), source)
        return {str(k): str(v) for k, v in value.items()}
    if name == "time_unit":
        if value not in TIME_UNITS:
            raise OutcomeInputError(source, f"{name}: {value!r} is not one of {list(TIME_UNITS)}")
        return value
    if name == "reference_levels":
        if not isinstance(value, dict):
            raise OutcomeInputError(source, f"{name}: expected a mapping column → level")
        return {str(k): str(v) for k, v in value.items()}
    if name == "hematotox_table":
        return None if value is None else Path(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise OutcomeInputError(source, f"{name}: expected true or false")
        return value
    if isinstance(default, str):
        return str(value)
    try:
        return type(default)(value)
    except (TypeError, ValueError):
        raise OutcomeInputError(source, f"{name}: {value!r} is not a number") from None


def outcome_config(
    overrides: Mapping[str, Any], source: str = "<config>", places: YamlPlaces | None = None
) -> OutcomeConfig:
    """An OutcomeConfig from a mapping of overrides; unknown keys are errors naming the key
    (and, with the ``places`` of its file, the line)."""

    def where(key: str) -> str:
        return places.where(key) if places is not None else source

    known = {f.name for f in fields(OutcomeConfig)}
    unknown = [str(k) for k in overrides if k not in known]
    if unknown:
        raise OutcomeInputError(where(unknown[0]), f"unknown setting(s): {', '.join(unknown)}")
    values = {k: _config_value(k, v, where(k)) for k, v in overrides.items()}
    return replace(OutcomeConfig(), **values)


def load_outcome_config(path: Path | None) -> OutcomeConfig:
    """Read an analysis YAML (a mapping of OutcomeConfig fields); None gives the defaults."""
    if path is None:
        return OutcomeConfig()
    try:
        text = Path(path).read_text(encoding="utf-8")
        raw = yaml.safe_load(text) or {}
    except (OSError, UnicodeDecodeError) as exc:
        problem = getattr(exc, "strerror", None) or exc
        raise OutcomeInputError(path, f"cannot be read: {problem}") from exc
    except yaml.YAMLError as exc:
        raise OutcomeInputError(*yaml_problem(path, exc)) from exc
    places = YamlPlaces.of_text(path, text)
    if not isinstance(raw, dict):
        raise OutcomeInputError(places.where(), "an analysis configuration must be a mapping")
    return outcome_config(raw, str(path), places)


def known_names(config: OutcomeConfig) -> set[str]:
    """Every name an analysis may use besides the columns of the data themselves."""
    from cartflow.pipeline.clinical import BOOL_COLUMNS, DATE_COLUMNS, NUMERIC_COLUMNS
    from cartflow.pipeline.kinetics import KINETICS_COLUMNS

    derived = {
        *("efs_days", "efs_event", "efs_event_type", "os_days", "os_event", "hsct"),
        *("followup_days", "burden_before_class", "burden_after_class", "burden_dynamics"),
        *("hematotox_score", "hematotox_risk", "hematotox_risk3", "expanded", "bridging"),
    }
    return (
        set(KINETICS_COLUMNS)
        | {v.name for v in config.patient_variables}
        | set(NUMERIC_COLUMNS)
        | set(BOOL_COLUMNS)
        | set(DATE_COLUMNS)
        | derived
    )
