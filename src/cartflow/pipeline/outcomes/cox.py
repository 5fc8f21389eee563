"""Cox proportional-hazards models (lifelines, Efron ties) with categorical dummies."""

from __future__ import annotations

import math
import warnings
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd

from cartflow.io.errors import first_line
from cartflow.pipeline.outcomes.common import _alpha, _levels, as_groups


@dataclass(frozen=True)
class CoxTerm:
    """One coefficient of a Cox model: HR per unit (or of a level against the reference)."""

    term: str
    covariate: str
    level: str | None
    reference: str | None
    transform: str | None
    coef: float
    se: float
    hr: float
    hr_ci_low: float
    hr_ci_high: float
    z: float
    p: float


@dataclass(frozen=True)
class CoxResult:
    """A Cox model (lifelines CoxPHFitter, Efron ties) on complete cases, and its terms."""

    endpoint: str
    model: str
    covariates: tuple[str, ...]
    n: int
    events: int
    terms: tuple[CoxTerm, ...] = ()
    concordance: float = math.nan
    likelihood_ratio_p: float = math.nan
    ties: str = "efron"
    note: str | None = None
    landmark_day: float = 0.0  # time counted from this day, among patients at risk then

    def term(self, covariate: str, level: str | None = None) -> CoxTerm:
        return next(t for t in self.terms if t.covariate == covariate and level in (None, t.level))


@dataclass(frozen=True)
class _Column:
    term: str
    covariate: str
    level: str | None = None
    reference: str | None = None
    transform: str | None = None


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _numeric_column(name: str, series: pd.Series, log10: bool) -> tuple[pd.Series, _Column]:
    if not log10:
        return series.astype(float), _Column(name, name)
    term = f"log10({name} + 1)"
    return np.log10(series.astype(float) + 1), _Column(term, name, transform="log10(x + 1)")


def _dummy_columns(
    name: str, series: pd.Series, reference: str | None, notes: list[str]
) -> dict[_Column, pd.Series]:
    groups = as_groups(series)
    levels = _levels(groups)
    if len(levels) < 2:
        notes.append(f"{name}: fewer than two levels, left out")
        return {}
    if reference not in levels:
        if reference is not None:
            notes.append(f"{name}: reference {reference!r} absent, using {levels[0]!r}")
        reference = levels[0]
    return {
        _Column(f"{name}[{lv}]", name, lv, reference): (groups == lv)
        .astype(float)
        .where(groups.notna())
        for lv in levels
        if lv != reference
    }


def _design(
    table: pd.DataFrame,
    covariates: Sequence[str],
    references: Mapping[str, str],
    log10: Collection[str],
    notes: list[str],
) -> dict[_Column, pd.Series]:
    columns: dict[_Column, pd.Series] = {}
    for name in covariates:
        series = table[name]
        if _is_numeric(series):
            values, column = _numeric_column(name, series, name in log10)
            columns[column] = values
        else:
            columns |= _dummy_columns(name, series, references.get(name), notes)
    return columns


def _cox_terms(fitter, specs: Iterable[_Column]) -> tuple[CoxTerm, ...]:
    s = fitter.summary
    low = next(c for c in s.columns if c.startswith("exp(coef) lower"))
    high = next(c for c in s.columns if c.startswith("exp(coef) upper"))
    return tuple(
        CoxTerm(
            **asdict(spec),
            coef=float(s.at[spec.term, "coef"]),
            se=float(s.at[spec.term, "se(coef)"]),
            hr=float(s.at[spec.term, "exp(coef)"]),
            hr_ci_low=float(s.at[spec.term, low]),
            hr_ci_high=float(s.at[spec.term, high]),
            z=float(s.at[spec.term, "z"]),
            p=float(s.at[spec.term, "p"]),
        )
        for spec in specs
    )


def _fit_cox(frame: pd.DataFrame, confidence: float, penalizer: float):
    """Fit on columns _T, _E and the rest; returns (fitter or None, messages)."""
    from lifelines import CoxPHFitter

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fitter = CoxPHFitter(alpha=_alpha(confidence), penalizer=penalizer)
            fitter.fit(frame, duration_col="_T", event_col="_E")
        except Exception as exc:  # lifelines: ConvergenceError; numpy: LinAlgError
            return None, [f"did not converge: {first_line(exc)}"]
    return fitter, sorted({str(w.message).strip().splitlines()[0] for w in caught})


def cox(
    table: pd.DataFrame,
    duration_col: str,
    event_col: str,
    covariates: Sequence[str],
    reference_levels: Mapping[str, str] | None = None,
    log10_variables: Collection[str] = (),
    endpoint: str = "",
    model: str = "",
    penalizer: float = 0.0,
    confidence: float = 0.95,
) -> CoxResult:
    """Cox proportional-hazards model on complete cases; categorical covariates as dummies.

    The reference level of a categorical covariate is its first level unless named in
    ``reference_levels``; ``log10_variables`` enter as log10(x + 1).
    """
    model = model or ("univariable" if len(covariates) == 1 else "multivariable")
    notes: list[str] = []
    design = _design(table, covariates, reference_levels or {}, log10_variables, notes)
    frame = pd.DataFrame({c.term: v for c, v in design.items()}, index=table.index)
    frame = frame.assign(_T=table[duration_col].astype(float), _E=table[event_col].astype(float))
    frame = frame.dropna()
    specs = [c for c in design if frame[c.term].nunique() > 1]
    frame = frame[[c.term for c in specs] + ["_T", "_E"]]
    result = CoxResult(endpoint, model, tuple(covariates), len(frame), int(frame["_E"].sum()))
    if not specs or result.events == 0:
        return replace(result, note="; ".join([*notes, "no usable covariate or no events"]))
    fitter, messages = _fit_cox(frame, confidence, penalizer)
    note = "; ".join([*notes, *messages]) or None
    if fitter is None:
        return replace(result, note=note)
    return replace(
        result,
        terms=_cox_terms(fitter, specs),
        concordance=float(fitter.concordance_index_),
        likelihood_ratio_p=float(fitter.log_likelihood_ratio_test().p_value),
        note=note,
    )
