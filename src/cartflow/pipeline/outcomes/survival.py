"""Kaplan-Meier estimates, log-rank tests and median follow-up (lifelines)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cartflow.pipeline.outcomes.common import _alpha, _levels, _series, as_groups


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
    rmst: float = math.nan  # restricted mean survival time up to rmst_horizon (lifelines)
    rmst_se: float = math.nan  # standard error of the estimate (Klein & Moeschberger)
    rmst_horizon: float = math.nan


@dataclass(frozen=True)
class KmSummary:
    """Kaplan-Meier estimates of one endpoint, overall or by group, and the log-rank test.

    Confidence intervals are lifelines' (Greenwood variance on the log(-log) scale). Times
    (median, ``at_days``, RMST) are in ``time_unit``; a landmark analysis counts time from
    ``landmark_day`` among the patients event-free and followed at that day.
    """

    endpoint: str
    grouping: str
    groups: tuple[KmGroup, ...]
    logrank: LogRank | None
    landmark_day: float = 0.0
    time_unit: str = "days"

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


def _rmst(kmf, horizon: float) -> tuple[float, float]:
    """Restricted mean survival time to ``horizon`` (lifelines, exact for Kaplan-Meier) and its
    standard error: Var = sum over event times t_i <= horizon of A_i^2 d_i / (Y_i (Y_i - d_i)),
    A_i the area under the curve from t_i to the horizon (Klein & Moeschberger, sec. 4.5)."""
    from lifelines.utils import restricted_mean_survival_time

    if not math.isfinite(horizon):
        return math.nan, math.nan
    mean = float(restricted_mean_survival_time(kmf, t=horizon))
    curve = kmf.survival_function_.iloc[:, 0]
    knots = np.minimum(curve.index.to_numpy(dtype=float), horizon)
    widths = np.diff(np.append(knots, horizon))
    area_after = np.cumsum((curve.to_numpy() * widths)[::-1])[::-1]  # from each knot to horizon
    table = kmf.event_table
    times = table.index.to_numpy(dtype=float)
    deaths, at_risk = table["observed"].to_numpy(float), table["at_risk"].to_numpy(float)
    used = (deaths > 0) & (times <= horizon) & (at_risk > deaths)  # Y = d: nothing after, A = 0
    area = area_after[np.searchsorted(curve.index.to_numpy(dtype=float), times[used])]
    variance = np.sum(area**2 * deaths[used] / (at_risk[used] * (at_risk[used] - deaths[used])))
    return mean, float(math.sqrt(variance))


def _km_group(
    level: str, d: np.ndarray, e: np.ndarray, at: float, confidence: float, horizon=math.nan
) -> KmGroup:
    from lifelines.utils import median_survival_times

    kmf = fit_km(d, e, level, confidence)
    rmst, rmst_se = _rmst(kmf, horizon)
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
        rmst=rmst,
        rmst_se=rmst_se,
        rmst_horizon=horizon,
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
    rmst_horizon: float = math.nan,
) -> KmSummary:
    """Kaplan-Meier per group (n, events, median, S(at_days), RMST to ``rmst_horizon``, with
    CIs) and the log-rank test."""
    d, e, g = _clean_survival(durations, events, groups)
    masks = {level: (g == level).to_numpy() for level in _levels(g)}
    per_group = tuple(
        _km_group(level, d[m], e[m], at_days, confidence, rmst_horizon)
        for level, m in masks.items()
    )
    test = logrank(d, e, g) if groups is not None else None
    return KmSummary(endpoint, grouping, per_group, test)


def landmark_frame(data: pd.DataFrame, days: str, day: float) -> pd.DataFrame:
    """Patients still at risk (no event, not censored) after ``day``, time counted from it."""
    if day <= 0:
        return data
    at_risk = data[pd.to_numeric(data[days], errors="coerce") > day]
    return at_risk.assign(**{days: at_risk[days].astype(float) - day})


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
