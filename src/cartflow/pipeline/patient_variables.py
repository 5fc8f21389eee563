"""Patient-level variables declared as data: the value of a population on a day, at the CAR-T
peak, or its AUC over a span of days, in cells/µL or % of parent.

A :class:`PatientVariable` names the population (``tube/population``), the measure
(``per_ul``, ``percent`` of parent, or ``detected``: at or above the LOD) and when
(``day`` ± ``window``, ``at: peak`` — the nominal day of the patient's CAR-T peak — or ``auc``
over ``[a, b]``). :func:`derive_variables` computes every declared variable from the timepoint
table and says, per patient, why a value is missing. The same names are the columns of
``kinetics.csv``, the rows of the data dictionary and the names ``analysis.yaml`` uses.

Below-LOD rule (stated and recorded): a count below the LOD is taken as 0 cells/µL; a
percentage is taken only where its parent is evaluable (at least LLOQ events).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

Measure = Literal["per_ul", "percent", "detected"]
When = Literal["day", "peak", "auc"]
PEAK_POPULATION = ("memory", "CAR")
BELOW_LOD_RULE = "a count below the LOD is taken as 0 cells/µL (its row is kept)"
MEASURES = ("per_ul", "percent", "detected")


class VariableSpecError(ValueError):
    """A declared patient variable is malformed (the message names it)."""


@dataclass(frozen=True)
class PatientVariable:
    """One declared patient-level variable; ``known_by_day``: when its value is known."""

    name: str
    tube: str
    population: str
    measure: Measure
    when: When
    day: float | None = None
    window: float = 0.0
    span: tuple[float, float] | None = None
    description: str = ""

    @property
    def known_by_day(self) -> float | None:
        """Nominal day after infusion by which the value is known (None for the peak: the
        analysis configuration says when the peak is known)."""
        if self.when == "day":
            return float(self.day)
        if self.when == "auc":
            return float(self.span[1])
        return None

    def to_yaml(self) -> dict[str, Any]:
        """The spec as analysis.yaml declares it."""
        spec: dict[str, Any] = {"population": f"{self.tube}/{self.population}",
                                "measure": self.measure}  # fmt: skip
        if self.when == "day":
            spec |= {"day": self.day, "window": self.window}
        elif self.when == "peak":
            spec["at"] = "peak"
        else:
            spec["auc"] = list(self.span)
        return spec | ({"text": self.description} if self.description else {})

    def describe(self) -> str:
        if self.description:
            return self.description
        what = {"per_ul": "cells/µL", "percent": "% of parent", "detected": "at or above LOD"}
        where = {
            "day": f"on day {self.day:g} (± {self.window:g})",
            "peak": "at the CAR-T peak",
            "auc": f"AUC over days {self.span[0]:g}–{self.span[1]:g}" if self.span else "",
        }[self.when]
        return f"{self.tube}/{self.population}, {what[self.measure]}, {where}"


def _spec(name: str, tube_population: str, measure: Measure, when: When, **kw) -> PatientVariable:
    tube, population = tube_population.split("/", 1)
    return PatientVariable(name, tube, population, measure, when, **kw)


_PEAK_PERCENT = {
    "car_pct_of_cd3_at_peak": ("memory/CAR", "CAR-T as % of CD3+ at the CAR-T peak"),
    "cd8_pct_of_car_at_peak": ("memory/CAR_CD8", "CD8 as % of CAR-T at the CAR-T peak"),
    "cd4_pct_of_car_at_peak": ("memory/CAR_CD4", "CD4 as % of CAR-T at the CAR-T peak"),
    **{
        f"{subset.lower()}_pct_of_cd8_car_at_peak": (
            f"memory/CAR_CD8_{subset}",
            f"{label} as % of CD8 CAR-T at the CAR-T peak",
        )
        for subset, label in (
            ("naive", "naive"),
            ("SCM", "stem-cell memory"),
            ("CM", "central memory"),
            ("EM", "effector memory"),
            ("TEMRA", "TEMRA"),
        )
    },
    **{
        f"{marker.lower()}_pct_of_{lineage.lower()}_car_at_peak": (
            f"function/CAR_{lineage}_{marker}",
            f"{marker}+ as % of {lineage} CAR-T at the CAR-T peak",
        )
        for lineage, markers in (("CD8", ("PD1", "LAG3", "Ki67", "CD71")), ("CD4", ("Ki67",)))
        for marker in markers
    },
}

DEFAULT_VARIABLES: tuple[PatientVariable, ...] = (
    *(
        _spec(name, where, "percent", "peak", description=text)
        for name, (where, text) in _PEAK_PERCENT.items()
    ),
    *(
        _spec(
            f"car_neg_cd8_scm_per_ul_d{day}",
            "memory/CARneg_CD8_SCM",
            "per_ul",
            "day",
            day=day,
            window=window,
            description=f"CAR- CD8 stem-cell memory T cells/µL on day {day} (± {window})",
        )
        for day, window in ((28, 3), (90, 14))
    ),
    _spec(
        "car_t_detected_d90",
        "memory/CAR",
        "detected",
        "day",
        day=90,
        window=14,
        description="CAR-T at or above the LOD on day 90 (± 14): persistence at the landmark",
    ),
)


def parse_variables(raw: Mapping[str, Any], source: str) -> tuple[PatientVariable, ...]:
    """Declared variables from analysis.yaml's ``patient_variables`` mapping (name → spec)."""
    if not isinstance(raw, Mapping):
        raise VariableSpecError(f"{source}: patient_variables must map names to specs")
    return tuple(_parse_one(str(name), spec, source) for name, spec in raw.items())


def _parse_one(name: str, spec: Any, source: str) -> PatientVariable:
    where = f"{source}: patient variable {name}"
    if not isinstance(spec, Mapping):
        raise VariableSpecError(f"{where}: expected a mapping")
    unknown = sorted(set(spec) - {"population", "measure", "day", "window", "at", "auc", "text"})
    if unknown:
        raise VariableSpecError(f"{where}: unknown key(s) {unknown}")
    population = str(spec.get("population", ""))
    if population.count("/") != 1 or not all(population.split("/")):
        raise VariableSpecError(f"{where}: population must be TUBE/POPULATION, e.g. memory/CAR")
    measure = spec.get("measure", "per_ul")
    if measure not in MEASURES:
        raise VariableSpecError(f"{where}: measure {measure!r} is not one of {MEASURES}")
    chosen = [k for k in ("day", "at", "auc") if k in spec]
    if len(chosen) != 1:
        raise VariableSpecError(f"{where}: give exactly one of day, at: peak, auc: [a, b]")
    text = str(spec.get("text", ""))
    try:
        if chosen == ["day"]:
            window = float(spec.get("window", 0))
            return _spec(name, population, measure, "day", day=float(spec["day"]), window=window,
                         description=text)  # fmt: skip
        if chosen == ["at"]:
            if spec["at"] != "peak":
                raise VariableSpecError(f"{where}: 'at' can only be peak")
            return _spec(name, population, measure, "peak", description=text)
        a, b = (float(v) for v in spec["auc"])
    except (TypeError, ValueError) as exc:
        if isinstance(exc, VariableSpecError):
            raise
        raise VariableSpecError(f"{where}: day, window and auc bounds must be numbers") from None
    if not a < b or measure != "per_ul":
        raise VariableSpecError(f"{where}: auc needs a < b and measure per_ul")
    return _spec(name, population, "per_ul", "auc", span=(a, b), description=text)


# --- derivation -------------------------------------------------------------------------------


def _usable(timepoints: pd.DataFrame) -> pd.DataFrame:
    """Rows from infusion on; one sample per patient, tube and day (the newest stored)."""
    rows = timepoints[pd.to_numeric(timepoints["nominal_day"], errors="coerce") >= 0]
    if "sample_id" in rows:
        newest = rows.groupby(["patient", "tube", "nominal_day"])["sample_id"].transform("max")
        rows = rows[rows["sample_id"] == newest]
    return rows.assign(patient=rows["patient"].astype(str))


def _below_lod(rows: pd.DataFrame) -> pd.Series:
    flag = rows["below_lod"] if "below_lod" in rows else pd.Series(False, index=rows.index)
    return flag.astype("boolean").fillna(False).astype(bool)


def peak_days(timepoints: pd.DataFrame) -> pd.Series:
    """Nominal day of each patient's CAR-T peak (highest count at or above the LOD, first on
    ties); patients whose every CAR-T count is below the LOD are absent."""
    rows = _usable(timepoints)
    tube, population = PEAK_POPULATION
    car = rows[(rows.tube == tube) & (rows.population == population) & ~_below_lod(rows)]
    car = car[pd.to_numeric(car["cells_per_ul"], errors="coerce").notna()]
    car = car.sort_values(["patient", "nominal_day"])
    values = car["cells_per_ul"].astype(float)
    best = car.loc[values.groupby(car["patient"]).idxmax()]
    return best.set_index("patient")["nominal_day"].astype(float)


def _value(row: pd.Series, measure: Measure) -> tuple[float, str | None]:
    below = bool(row.get("below_lod")) if pd.notna(row.get("below_lod")) else False
    if measure == "detected":
        if pd.isna(row.get("cells_per_ul")):
            return math.nan, "no count (no counting reference)"
        return (0.0 if below else 1.0), None
    if measure == "percent":
        evaluable = row.get("percent_evaluable")
        if pd.notna(evaluable) and not bool(evaluable):
            return math.nan, "parent below the LLOQ: % not evaluable"
        value = row.get("percent_of_parent")
        return (math.nan, "no % of parent") if pd.isna(value) else (float(value), None)
    value = row.get("cells_per_ul")
    if pd.isna(value):
        return math.nan, "no count (no counting reference)"
    return (0.0 if below else float(value)), None


def _nearest(rows: pd.DataFrame, day: float, window: float) -> pd.Series | None:
    distance = (rows["nominal_day"].astype(float) - day).abs()
    close = rows[distance <= window]
    if close.empty:
        return None
    return close.loc[distance[close.index].sort_values(kind="stable").index[0]]


def _auc(rows: pd.DataFrame, span: tuple[float, float]) -> tuple[float, str | None]:
    inside = rows[(rows.nominal_day >= span[0]) & (rows.nominal_day <= span[1])]
    inside = inside.sort_values("nominal_day")
    values = pd.to_numeric(inside["cells_per_ul"], errors="coerce").where(~_below_lod(inside), 0.0)
    inside = inside[values.notna()]
    if len(inside) < 2:
        return math.nan, f"{len(inside)} sample(s) in days {span[0]:g}–{span[1]:g}, 2 needed"
    return float(np.trapezoid(values[inside.index], inside["nominal_day"].astype(float))), None


def _one(spec: PatientVariable, rows: pd.DataFrame, peak: float | None):
    chosen = rows[(rows.tube == spec.tube) & (rows.population == spec.population)]
    if chosen.empty:
        return math.nan, f"{spec.tube}/{spec.population} not measured"
    if spec.when == "auc":
        return _auc(chosen, spec.span)
    if spec.when == "peak":
        if peak is None:
            return math.nan, "no CAR-T count at or above the LOD: no peak day"
        row = _nearest(chosen, peak, 0.0)
        if row is None:
            return math.nan, f"no {spec.tube} sample on the peak day ({peak:g})"
        return _value(row, spec.measure)
    row = _nearest(chosen, float(spec.day), spec.window)
    if row is None:
        return math.nan, f"no {spec.tube} sample within day {spec.day:g} ± {spec.window:g}"
    return _value(row, spec.measure)


@dataclass(frozen=True)
class DerivedVariables:
    """Values (patient × variable) and, where a value is missing, why."""

    values: pd.DataFrame
    reasons: pd.DataFrame


def derive_variables(
    timepoints: pd.DataFrame, specs: Sequence[PatientVariable], patients: Sequence[str] = ()
) -> DerivedVariables:
    """Every declared variable for every patient of the timepoint table (and ``patients``)."""
    names = [s.name for s in specs]
    if timepoints is None or len(timepoints) == 0:
        index = pd.Index(sorted(set(map(str, patients))), name="patient")
        empty = pd.DataFrame(math.nan, index=index, columns=names)
        reasons = pd.DataFrame("no timepoint data", index=index, columns=names)
        return DerivedVariables(empty, reasons)
    rows = _usable(timepoints)
    peaks = peak_days(timepoints)
    everyone = sorted(set(rows["patient"]) | set(map(str, patients)))
    values = pd.DataFrame(math.nan, index=pd.Index(everyone, name="patient"), columns=names)
    reasons = pd.DataFrame(None, index=values.index, columns=names, dtype=object)
    grouped = dict(tuple(rows.groupby("patient")))
    for patient in everyone:
        mine = grouped.get(patient)
        for spec in specs:
            if mine is None:
                value, reason = math.nan, "no samples"
            else:
                value, reason = _one(spec, mine, peaks.get(patient))
            values.at[patient, spec.name] = value
            reasons.at[patient, spec.name] = reason
    return DerivedVariables(values, reasons)
