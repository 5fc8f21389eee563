"""Group comparisons: medians with CIs, Mann-Whitney / Kruskal-Wallis, Fisher exact (r×c too)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from cartflow.pipeline.outcomes.common import _alpha, _float, _levels, _series, as_groups
from cartflow.pipeline.outcomes.exact import fisher_freeman_halton


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
    """A cross-table of two categorical columns with Fisher's exact test (2×2) or the exact
    Fisher–Freeman–Halton test (r×c; Monte Carlo when the enumeration is too large).

    ``statistic`` is the odds ratio of a 2×2 table (NaN otherwise).
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
    table = table.loc[table.sum(axis=1) > 0, table.sum(axis=0) > 0]
    if table.shape[0] < 2 or table.shape[1] < 2:
        return _Test(None, note="needs at least two levels on each side")
    if table.shape == (2, 2):
        result = stats.fisher_exact(table.to_numpy())
        return _Test("Fisher exact", _float(result.statistic), _float(result.pvalue), dof=1)
    expected = stats.contingency.expected_freq(table.to_numpy())
    exact = fisher_freeman_halton(table.to_numpy())
    name = "Fisher-Freeman-Halton exact" + (" (Monte Carlo)" if exact.method != "exact" else "")
    note = f"smallest expected count {expected.min():.2g}" if expected.min() < 5 else None
    dof = (table.shape[0] - 1) * (table.shape[1] - 1)
    return _Test(name, math.nan, exact.p, dof=dof, note=note)


def compare_counts(
    values: pd.Series | Sequence,
    groups: pd.Series | Sequence,
    variable: str = "value",
    grouping: str = "group",
) -> CountTest:
    """Counts of a categorical variable per group; Fisher exact for 2×2, Freeman-Halton beyond."""
    v, g = as_groups(_series(values)), as_groups(_series(groups))
    keep = v.notna() & g.notna()
    table = pd.crosstab(g[keep], v[keep], dropna=False)
    counts = {str(r): {str(c): int(table.loc[r, c]) for c in table.columns} for r in table.index}
    test = _table_test(table)
    return CountTest(
        grouping, variable, counts, test.name, test.statistic, test.p, test.dof, test.note
    )
