"""Outcome correlation: group comparisons, ROC cut-points, Kaplan-Meier, log-rank and Cox models.

The numerics come from scipy (Mann-Whitney U, Kruskal-Wallis, Fisher exact, chi-square),
scikit-learn (ROC) and lifelines (Kaplan-Meier, log-rank, Cox with Efron ties). Each building
block (:func:`compare_groups`, :func:`compare_counts`, :func:`cutpoint`, :func:`km_summary`,
:func:`cox`, :func:`median_followup`) takes plain columns and returns a frozen result;
:func:`run_outcomes` is the stage that derives per-patient endpoints from a clinical table,
runs every analysis its :class:`OutcomeConfig` names and writes CSV tables, figures and one
``outcomes.json``. Data-derived cut-points are labelled exploratory.
"""

from __future__ import annotations

import json
import math
import numbers
import warnings
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from pipeline.clinical import (
    ClinicalTable,
    DeriveOptions,
    EndpointOptions,
    HematotoxTable,
    derive_patients,
    load_clinical,
    load_hematotox,
)
from pipeline.errors import CartflowError, first_line, yaml_problem

EXPLORATORY = "exploratory (data-derived)"
ENDPOINTS: dict[str, tuple[str, str]] = {
    "efs": ("efs_days", "efs_event"),
    "os": ("os_days", "os_event"),
}
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


class OutcomeInputError(CartflowError):
    """The outcome configuration or the patient table is unusable."""

    code = "outcomes"


# --- configuration ----------------------------------------------------------------------------


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


def outcome_config(overrides: Mapping[str, Any], source: str = "<config>") -> OutcomeConfig:
    """An OutcomeConfig from a mapping of overrides; unknown keys are errors naming the key."""
    known = {f.name for f in fields(OutcomeConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise OutcomeInputError(source, f"unknown setting(s): {', '.join(unknown)}")
    values = {k: _config_value(k, v, source) for k, v in overrides.items()}
    return replace(OutcomeConfig(), **values)


def load_outcome_config(path: Path | None) -> OutcomeConfig:
    """Read an analysis YAML (a mapping of OutcomeConfig fields); None gives the defaults."""
    if path is None:
        return OutcomeConfig()
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise OutcomeInputError(path, f"cannot be read: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise OutcomeInputError(*yaml_problem(path, exc)) from exc
    if not isinstance(raw, dict):
        raise OutcomeInputError(path, "an analysis configuration must be a mapping")
    return outcome_config(raw, str(path))


# --- shared helpers ---------------------------------------------------------------------------


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _series(values: pd.Series | Sequence | np.ndarray) -> pd.Series:
    """A fresh 0..n-1 indexed Series; keeps a categorical dtype (and so its level order)."""
    if isinstance(values, pd.Series):
        return values.reset_index(drop=True)
    if isinstance(values, pd.Categorical):
        return pd.Series(values)
    return pd.Series(list(values), dtype=object)


def as_groups(values: pd.Series | Sequence) -> pd.Series:
    """Group labels as an ordered categorical of strings (booleans → 'no'/'yes').

    A categorical keeps its order; other values are sorted (numbers numerically).
    """
    series = values if isinstance(values, pd.Series) else _series(values)
    if isinstance(series.dtype, pd.CategoricalDtype):
        used = series.cat.remove_unused_categories()
        return used.cat.rename_categories([str(c) for c in used.cat.categories])
    present = series.dropna()
    if len(present) and present.map(lambda v: isinstance(v, bool | np.bool_)).all():
        labels = series.map({True: "yes", False: "no"}, na_action="ignore")
        used = [c for c in ("no", "yes") if (labels == c).any()]
        return pd.Series(pd.Categorical(labels, categories=used), index=series.index)
    order = sorted(present.unique(), key=lambda v: (not isinstance(v, numbers.Real), v))
    labels = series.map(str, na_action="ignore")
    categories = list(dict.fromkeys(str(v) for v in order))
    return pd.Series(pd.Categorical(labels, categories=categories), index=series.index)


def _levels(groups: pd.Series) -> list[str]:
    return list(groups.cat.categories)


def _alpha(confidence: float) -> float:
    return 1.0 - confidence


# --- group comparisons ------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupStats:
    """One group of a continuous variable: n, median (IQR, range) and a CI of the median."""

    level: str
    n: int
    median: float
    q1: float
    q3: float
    minimum: float
    maximum: float
    median_ci_low: float
    median_ci_high: float


@dataclass(frozen=True)
class GroupComparison:
    """A continuous variable across the groups of one grouping, with the rank test's result.

    ``effect`` (two groups): P(value in the first group > value in the second), ties count ½.
    """

    grouping: str
    variable: str
    groups: tuple[GroupStats, ...]
    test: str | None
    statistic: float
    p: float
    effect: float = math.nan
    note: str | None = None

    def group(self, level: str) -> GroupStats:
        return next(g for g in self.groups if g.level == level)


def median_ci(
    values: Sequence[float] | np.ndarray, confidence: float = 0.95
) -> tuple[float, float]:
    """Distribution-free CI of the median from binomial order statistics (NaN if n too small)."""
    x = np.sort(np.asarray(values, dtype=float))
    x = x[~np.isnan(x)]
    n = len(x)
    k = int(stats.binom.ppf(_alpha(confidence) / 2, n, 0.5)) if n else 0
    if k < 1:
        return math.nan, math.nan
    return float(x[k - 1]), float(x[n - k])


def _group_stats(level: str, values: np.ndarray, confidence: float) -> GroupStats:
    if len(values) == 0:
        return GroupStats(level, 0, *([math.nan] * 7))
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    low, high = median_ci(values, confidence)
    return GroupStats(
        level=level,
        n=len(values),
        median=float(median),
        q1=float(q1),
        q3=float(q3),
        minimum=float(values.min()),
        maximum=float(values.max()),
        median_ci_low=low,
        median_ci_high=high,
    )


@dataclass(frozen=True)
class _Test:
    name: str | None
    statistic: float = math.nan
    p: float = math.nan
    effect: float = math.nan
    dof: int | None = None
    note: str | None = None


def _mann_whitney(a: np.ndarray, b: np.ndarray) -> _Test:
    result = stats.mannwhitneyu(a, b, alternative="two-sided")
    effect = float(result.statistic) / (len(a) * len(b))
    return _Test("Mann-Whitney U", float(result.statistic), float(result.pvalue), effect)


def _kruskal(samples: list[np.ndarray]) -> _Test:
    try:
        result = stats.kruskal(*samples)
    except ValueError as exc:
        return _Test(None, note=str(exc))
    note = None if math.isfinite(result.pvalue) else "test undefined: all values equal"
    return _Test("Kruskal-Wallis", float(result.statistic), float(result.pvalue), note=note)


def _rank_test(samples: list[np.ndarray]) -> _Test:
    usable = [s for s in samples if len(s)]
    if len(usable) < 2:
        return _Test(None, note="fewer than two groups with values")
    return _mann_whitney(*usable) if len(usable) == 2 else _kruskal(usable)


def compare_groups(
    values: pd.Series | Sequence[float],
    groups: pd.Series | Sequence,
    variable: str = "value",
    grouping: str = "group",
    confidence: float = 0.95,
) -> GroupComparison:
    """Median (IQR, range, CI) per group; Mann-Whitney U for two groups, Kruskal-Wallis beyond."""
    x = pd.to_numeric(_series(values), errors="coerce").astype(float)
    g = as_groups(_series(groups))
    keep = x.notna() & g.notna()
    x, g = x[keep], g[keep]
    levels = _levels(g)
    samples = [x[g == level].to_numpy() for level in levels]
    per_group = tuple(
        _group_stats(lv, s, confidence) for lv, s in zip(levels, samples, strict=True)
    )
    test = _rank_test(samples)
    return GroupComparison(
        grouping, variable, per_group, test.name, test.statistic, test.p, test.effect, test.note
    )


@dataclass(frozen=True)
class CountTest:
    """A cross-table of two categorical columns with Fisher's exact (2×2) or chi-square test.

    ``statistic`` is the odds ratio for Fisher's test and χ² otherwise.
    """

    grouping: str
    variable: str
    counts: Mapping[str, Mapping[str, int]]  # grouping level → variable level → count
    test: str | None
    statistic: float
    p: float
    dof: int | None = None
    note: str | None = None


def _table_test(table: pd.DataFrame) -> _Test:
    if table.shape[0] < 2 or table.shape[1] < 2:
        return _Test(None, note="needs at least two levels on each side")
    if table.shape == (2, 2):
        result = stats.fisher_exact(table.to_numpy())
        return _Test("Fisher exact", _float(result.statistic), _float(result.pvalue), dof=1)
    result = stats.chi2_contingency(table.to_numpy())
    return _Test("chi-square", _float(result.statistic), _float(result.pvalue), dof=int(result.dof))


def compare_counts(
    values: pd.Series | Sequence,
    groups: pd.Series | Sequence,
    variable: str = "value",
    grouping: str = "group",
) -> CountTest:
    """Counts of a categorical variable per group; Fisher exact for 2×2, chi-square beyond."""
    v, g = as_groups(_series(values)), as_groups(_series(groups))
    keep = v.notna() & g.notna()
    table = pd.crosstab(g[keep], v[keep], dropna=False)
    counts = {str(r): {str(c): int(table.loc[r, c]) for c in table.columns} for r in table.index}
    test = _table_test(table)
    return CountTest(
        grouping, variable, counts, test.name, test.statistic, test.p, test.dof, test.note
    )


# --- ROC cut-points ---------------------------------------------------------------------------


def horizon_outcome(
    durations: Sequence[float] | pd.Series, events: Sequence[bool] | pd.Series, horizon: float
) -> np.ndarray:
    """1 if the event happened by the horizon, 0 if event-free at it, NaN if censored before."""
    d = np.asarray(durations, dtype=float)
    e = np.asarray(events, dtype=float) > 0
    return np.where(e & (d <= horizon), 1.0, np.where(d >= horizon, 0.0, np.nan))


@dataclass(frozen=True)
class Roc:
    """ROC of a variable against a binary outcome, oriented so that AUC ≥ 0.5.

    ``direction`` says which values go with the event ('higher' or 'lower'); ``youden_cut`` is
    the value at Youden's J maximum (event side: ≥ it for 'higher', ≤ it for 'lower').
    """

    n: int
    events: int
    auc: float
    auc_ci_low: float
    auc_ci_high: float
    ci_method: str
    direction: Literal["higher", "lower"]
    youden_cut: float
    youden_j: float
    sensitivity: float
    specificity: float
    fpr: tuple[float, ...]
    tpr: tuple[float, ...]


@dataclass(frozen=True)
class CutPoint:
    """A data-derived cut-point of one variable: ROC against an event within a horizon.

    The Youden cut is used when the ROC AUC > ``min_auc`` (``valid``), else the median.
    ``high`` is ≥ the cut when ``high_includes_cut``, else > the cut. Always exploratory.
    """

    variable: str
    endpoint: str
    horizon_days: float
    excluded: int  # censored before the horizon
    roc: Roc | None
    valid: bool
    method: Literal["youden", "median"]
    value: float
    high_includes_cut: bool
    min_auc: float
    label: str = EXPLORATORY
    note: str | None = None

    @property
    def high_label(self) -> str:
        return f"{'≥' if self.high_includes_cut else '>'} {self.value:.4g}"

    @property
    def low_label(self) -> str:
        return f"{'<' if self.high_includes_cut else '≤'} {self.value:.4g}"

    def groups(self, values: pd.Series | Sequence[float]) -> pd.Series:
        """Low/high side of the cut per value (labelled with the cut), NaN where missing."""
        x = pd.to_numeric(_series(values), errors="coerce").astype(float)
        high = x >= self.value if self.high_includes_cut else x > self.value
        labels = np.where(high, self.high_label, self.low_label)
        categories = [self.low_label, self.high_label]
        return pd.Series(pd.Categorical(labels, categories=categories)).where(x.notna())


def bootstrap_auc_ci(
    outcome: np.ndarray,
    score: np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the ROC AUC (rank formula, fixed seed, vectorised)."""
    y, s = np.asarray(outcome, dtype=float), np.asarray(score, dtype=float)
    n = len(y)
    if n < 2 or n_boot < 1:
        return math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    yb, ranks = y[idx], stats.rankdata(s[idx], axis=1)
    n1 = yb.sum(axis=1)
    n0 = n - n1
    ok = (n1 > 0) & (n0 > 0)
    auc = ((ranks * yb).sum(axis=1)[ok] - n1[ok] * (n1[ok] + 1) / 2) / (n1[ok] * n0[ok])
    if not len(auc):
        return math.nan, math.nan
    tail = 100 * _alpha(confidence) / 2
    low, high = np.percentile(auc, [tail, 100 - tail])
    return float(low), float(high)


def roc(
    values: Sequence[float] | np.ndarray,
    outcome: Sequence[float] | np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Roc | None:
    """ROC (scikit-learn), AUC with a bootstrap CI and Youden's J; None without both classes."""
    from sklearn.metrics import roc_auc_score, roc_curve

    x, y = np.asarray(values, dtype=float), np.asarray(outcome, dtype=float)
    keep = ~np.isnan(x) & ~np.isnan(y)
    x, y = x[keep], y[keep]
    if len(np.unique(y)) < 2:
        return None
    direction: Literal["higher", "lower"] = "higher" if roc_auc_score(y, x) >= 0.5 else "lower"
    score = x if direction == "higher" else -x
    fpr, tpr, thresholds = roc_curve(y, score)
    best = int(np.argmax(tpr - fpr))
    low, high = bootstrap_auc_ci(y, score, n_boot, seed, confidence)
    return Roc(
        n=len(x),
        events=int(y.sum()),
        auc=float(roc_auc_score(y, score)),
        auc_ci_low=low,
        auc_ci_high=high,
        ci_method=f"percentile bootstrap, {n_boot} resamples, seed {seed}",
        direction=direction,
        youden_cut=float(thresholds[best]) * (1 if direction == "higher" else -1),
        youden_j=float(tpr[best] - fpr[best]),
        sensitivity=float(tpr[best]),
        specificity=float(1 - fpr[best]),
        fpr=tuple(float(v) for v in fpr),
        tpr=tuple(float(v) for v in tpr),
    )


def cutpoint(
    values: pd.Series | Sequence[float],
    outcome: pd.Series | Sequence[float],
    variable: str = "value",
    endpoint: str = "efs",
    horizon_days: float = math.nan,
    min_auc: float = 0.70,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> CutPoint:
    """Cut-point of a variable against a 0/1 outcome (NaN: excluded): Youden if AUC > min_auc.

    Otherwise the median of all non-missing values. The cut is chosen on the data it is then
    judged on, so it is labelled exploratory.
    """
    x = np.asarray(values, dtype=float)
    y = np.asarray(outcome, dtype=float)
    excluded = int((~np.isnan(x) & np.isnan(y)).sum())
    curve = roc(x, y, n_boot, seed, confidence)
    valid = curve is not None and curve.auc > min_auc and math.isfinite(curve.youden_cut)
    median = float(np.nanmedian(x)) if (~np.isnan(x)).any() else math.nan
    return CutPoint(
        variable=variable,
        endpoint=endpoint,
        horizon_days=horizon_days,
        excluded=excluded,
        roc=curve,
        valid=valid,
        method="youden" if valid else "median",
        value=curve.youden_cut if valid else median,
        high_includes_cut=valid and curve.direction == "higher",
        min_auc=min_auc,
        note=None if curve else "needs patients with and without the event",
    )


# --- Kaplan-Meier and log-rank ----------------------------------------------------------------


@dataclass(frozen=True)
class LogRank:
    statistic: float
    df: int
    p: float


@dataclass(frozen=True)
class KmGroup:
    """Kaplan-Meier summary of one group: median (inf: not reached) and S(at_days), with CIs."""

    level: str
    n: int
    events: int
    median: float
    median_ci_low: float
    median_ci_high: float
    at_days: float
    survival: float
    survival_ci_low: float
    survival_ci_high: float


@dataclass(frozen=True)
class KmSummary:
    """Kaplan-Meier estimates of one endpoint, overall or by group, and the log-rank test.

    Confidence intervals are lifelines' (Greenwood variance on the log(-log) scale).
    """

    endpoint: str
    grouping: str
    groups: tuple[KmGroup, ...]
    logrank: LogRank | None

    def group(self, level: str) -> KmGroup:
        return next(g for g in self.groups if g.level == level)


def _clean_survival(durations, events, groups=None) -> tuple[np.ndarray, np.ndarray, pd.Series]:
    d = pd.to_numeric(_series(durations), errors="coerce").to_numpy(dtype=float)
    e = pd.to_numeric(_series(events).astype(object), errors="coerce").to_numpy(dtype=float)
    g = as_groups(_series(["all"] * len(d) if groups is None else groups))
    keep = ~np.isnan(d) & ~np.isnan(e) & g.notna().to_numpy()
    return d[keep], e[keep] > 0, g[keep].cat.remove_unused_categories().reset_index(drop=True)


def fit_km(durations: np.ndarray, events: np.ndarray, label: str, confidence: float = 0.95):
    """A lifelines KaplanMeierFitter on one group."""
    from lifelines import KaplanMeierFitter

    return KaplanMeierFitter(alpha=_alpha(confidence)).fit(durations, events, label=label)


def _survival_at(kmf, t: float) -> tuple[float, float, float]:
    last = float(kmf.survival_function_.iloc[-1, 0])
    if not t <= float(np.max(kmf.durations)) and last > 0:
        return math.nan, math.nan, math.nan  # not observed that long
    s = float(kmf.survival_function_at_times(t).iloc[0])
    ci = kmf.confidence_interval_survival_function_.loc[:t].iloc[-1]
    return s, float(ci.iloc[0]), float(ci.iloc[1])


def _km_group(level: str, d: np.ndarray, e: np.ndarray, at: float, confidence: float) -> KmGroup:
    from lifelines.utils import median_survival_times

    kmf = fit_km(d, e, level, confidence)
    median_low, median_high = median_survival_times(kmf.confidence_interval_).iloc[0]
    s, s_low, s_high = _survival_at(kmf, at)
    return KmGroup(
        level=level,
        n=len(d),
        events=int(e.sum()),
        median=float(kmf.median_survival_time_),
        median_ci_low=float(median_low),
        median_ci_high=float(median_high),
        at_days=at,
        survival=s,
        survival_ci_low=s_low,
        survival_ci_high=s_high,
    )


def logrank(
    durations: Sequence[float] | pd.Series,
    events: Sequence[bool] | pd.Series,
    groups: Sequence | pd.Series,
) -> LogRank | None:
    """Log-rank test across groups (lifelines); None with fewer than two groups."""
    from lifelines.statistics import multivariate_logrank_test

    d, e, g = _clean_survival(durations, events, groups)
    if len(_levels(g)) < 2:
        return None
    result = multivariate_logrank_test(d, g.astype(str).to_numpy(), e)
    return LogRank(
        float(result.test_statistic), int(result.degrees_of_freedom), float(result.p_value)
    )


def km_summary(
    durations: Sequence[float] | pd.Series,
    events: Sequence[bool] | pd.Series,
    groups: Sequence | pd.Series | None = None,
    at_days: float = 365.0,
    endpoint: str = "",
    grouping: str = "overall",
    confidence: float = 0.95,
) -> KmSummary:
    """Kaplan-Meier per group (n, events, median, S(at_days) with CIs) and the log-rank test."""
    d, e, g = _clean_survival(durations, events, groups)
    masks = {level: (g == level).to_numpy() for level in _levels(g)}
    per_group = tuple(
        _km_group(level, d[m], e[m], at_days, confidence) for level, m in masks.items()
    )
    test = logrank(d, e, g) if groups is not None else None
    return KmSummary(endpoint, grouping, per_group, test)


@dataclass(frozen=True)
class FollowUp:
    """Median follow-up by reverse Kaplan-Meier (censorings are the 'events')."""

    n: int
    median_days: float
    ci_low: float
    ci_high: float
    method: str = "reverse Kaplan-Meier"


def median_followup(
    durations: Sequence[float] | pd.Series,
    events: Sequence[bool] | pd.Series,
    confidence: float = 0.95,
) -> FollowUp:
    """Median potential follow-up: Kaplan-Meier with event and censoring swapped."""
    d, e, _ = _clean_survival(durations, events)
    if not len(d):
        return FollowUp(0, math.nan, math.nan, math.nan)
    reverse = _km_group("follow-up", d, ~e, math.nan, confidence)
    return FollowUp(len(d), reverse.median, reverse.median_ci_low, reverse.median_ci_high)


# --- Cox proportional hazards -----------------------------------------------------------------


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


# --- the stage --------------------------------------------------------------------------------


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
    from pipeline.outcome_figures import write_figures

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


# --- tables and JSON -------------------------------------------------------------------------


def _rows(items: Iterable[Any], drop: Collection[str] = ()) -> list[dict[str, Any]]:
    return [{k: v for k, v in asdict(item).items() if k not in drop} for item in items]


def _summary_table(comparisons: Iterable[GroupComparison]) -> pd.DataFrame:
    rows = [
        {"grouping": c.grouping, "variable": c.variable, **asdict(g)}
        for c in comparisons
        for g in c.groups
    ]
    return pd.DataFrame(rows)


def _count_table(tests: Iterable[CountTest]) -> pd.DataFrame:
    rows = [
        {
            "grouping": t.grouping,
            "grouping_level": g,
            "variable": t.variable,
            "variable_level": v,
            "count": n,
        }
        for t in tests
        for g, row in t.counts.items()
        for v, n in row.items()
    ]
    return pd.DataFrame(rows)


def _cut_row(cut: CutPoint) -> dict[str, Any]:
    row = {k: v for k, v in asdict(cut).items() if k != "roc"}
    curve = asdict(cut.roc) if cut.roc else {}
    row |= {f"roc_{k}": v for k, v in curve.items() if k not in ("fpr", "tpr")}
    return row | {"high_group": cut.high_label, "low_group": cut.low_label}


def _cut_table(cuts: Iterable[CutPoint]) -> pd.DataFrame:
    return pd.DataFrame([_cut_row(c) for c in cuts])


def _km_tables(survival: Iterable[KmSummary]) -> tuple[pd.DataFrame, pd.DataFrame]:
    survival = list(survival)
    estimates = [
        {"endpoint": k.endpoint, "grouping": k.grouping, **asdict(g)}
        for k in survival
        for g in k.groups
    ]
    tests = [
        {"endpoint": k.endpoint, "grouping": k.grouping, **asdict(k.logrank)}
        for k in survival
        if k.logrank is not None
    ]
    return pd.DataFrame(estimates), pd.DataFrame(tests)


def _cox_table(results: Iterable[CoxResult]) -> pd.DataFrame:
    rows = []
    for r in results:
        base = {
            "endpoint": r.endpoint,
            "model": r.model,
            "covariates": " + ".join(r.covariates),
            "n": r.n,
            "events": r.events,
            "concordance": r.concordance,
            "likelihood_ratio_p": r.likelihood_ratio_p,
            "ties": r.ties,
            "note": r.note,
        }
        rows += [{**base, **asdict(t)} for t in r.terms] or [base]
    return pd.DataFrame(rows)


def _patients_table(data: pd.DataFrame) -> pd.DataFrame:
    return data.apply(lambda c: c.astype(object) if isinstance(c.dtype, pd.CategoricalDtype) else c)


def write_tables(report: OutcomeReport) -> dict[str, Path]:
    """Write every result table as CSV into the report's folder; name → path."""
    km, logranks = _km_tables(report.survival)
    frames = {
        "patients": _patients_table(report.patients),
        "group_summary": _summary_table(report.comparisons),
        "group_tests": pd.DataFrame(_rows(report.comparisons, ("groups",))),
        "count_tests": pd.DataFrame(_rows(report.count_tests, ("counts",))),
        "count_table": _count_table(report.count_tests),
        "cutpoints": _cut_table(report.cutpoints),
        "km_estimates": km,
        "logrank": logranks,
        "followup": pd.DataFrame([asdict(report.followup)]),
        "cox": _cox_table([*report.cox_univariable, *report.cox_multivariable]),
    }
    paths = {}
    for name, frame in frames.items():
        paths[name] = report.out_dir / f"{name}.csv"
        frame.to_csv(paths[name], index=False)
    return paths


# --- JSON -------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """Plain JSON values: dataclasses → dicts, numpy → Python, NaN/inf → None, Path → str."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if value is None or isinstance(value, str | int | bool):
        return value
    return None if pd.isna(value) else str(value)


def _software() -> dict[str, str]:
    import lifelines
    import scipy
    import sklearn

    return {
        "lifelines": lifelines.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
        "pandas": pd.__version__,
    }


def report_dict(report: OutcomeReport, hematotox: Mapping, clinical_source: str) -> dict:
    """Every number of a report as JSON-safe values, with the configuration and provenance."""
    return _jsonable(
        {
            "schema": "cartflow-outcomes/1",
            "clinical_source": clinical_source,
            "n_patients": report.n_patients,
            "config": report.config,
            "hematotox_table": hematotox,
            "software": _software(),
            "notes": report.notes,
            "patients": _patients_table(report.patients).to_dict(orient="records"),
            "followup": report.followup,
            "group_comparisons": report.comparisons,
            "count_tests": report.count_tests,
            "cutpoints": report.cutpoints,
            "survival": report.survival,
            "cox": {
                "univariable": report.cox_univariable,
                "multivariable": report.cox_multivariable,
            },
            "tables": {k: p.name for k, p in report.tables.items()},
            "figures": [p.name for p in report.figures],
        }
    )


def write_json(report: OutcomeReport, hematotox: Mapping, clinical_source: str) -> Path:
    """Write outcomes.json (strict JSON: no NaN)."""
    payload = report_dict(report, hematotox, clinical_source)
    text = json.dumps(payload, indent=2, ensure_ascii=False, allow_nan=False)
    report.json_path.write_text(text + "\n", encoding="utf-8")
    return report.json_path


def read_patient_table(path: Path) -> pd.DataFrame:
    """A per-patient variable table from CSV or Parquet."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path)
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
