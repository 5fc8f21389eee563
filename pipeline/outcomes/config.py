"""What the outcome stage analyses and how: :class:`OutcomeConfig` and its YAML loader."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import YamlPlaces, yaml_problem
from pipeline.outcomes.common import OutcomeInputError, _jsonable

DEFAULT_VARIABLES: tuple[str, ...] = (
    "cmax_car_t_per_ul",
    "tmax_day",
    "auc14_car_t",
    "auc28_car_t",
    "scm_pct_of_cd8_car_at_peak",
    "car_pct_of_cd3_at_peak",
    "persistence_day",
    "b_cell_aplasia_duration_days",
)
DEFAULT_GROUPINGS: tuple[str, ...] = (
    "bridging",
    "burden_before_class",
    "burden_after_class",
    "burden_dynamics",
    "hematotox_risk",
    "hematotox_risk3",
    "expanded",
)
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
    expansion_variable: str = "cmax_car_t_per_ul"
    expansion_threshold_per_ul: float = 5.0
    cox_covariates: tuple[str, ...] = ("burden_after_class", "scm_pct_of_cd8_car_at_peak")
    log10_variables: tuple[str, ...] = ("cmax_car_t_per_ul", "auc14_car_t", "auc28_car_t")
    reference_levels: Mapping[str, str] = field(default_factory=dict)
    roc_min_auc: float = 0.70
    bootstrap: int = 2000
    seed: int = 0
    confidence: float = 0.95
    cox_penalizer: float = 0.0
    hematotox_table: Path | None = None
    figures: bool = True
    figure_formats: tuple[str, ...] = ("png", "svg")

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(self)


_TUPLE_FIELDS = {
    "variables",
    "groupings",
    "categorical",
    "cutpoint_variables",
    "cox_covariates",
    "log10_variables",
    "figure_formats",
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
        return _names(name, value, source)
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
