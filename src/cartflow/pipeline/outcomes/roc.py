"""ROC cut-points: AUC with a bootstrap CI, Youden's J, median fallback (exploratory)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

from cartflow.pipeline.outcomes.common import EXPLORATORY, _alpha, _series


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
    # an AUC is a ratio of counts: compared after rounding, so 14/20 is not 'above 0.70'
    # through floating-point noise
    valid = curve is not None and round(curve.auc, 12) > min_auc and math.isfinite(curve.youden_cut)
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
