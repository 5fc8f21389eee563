"""Exact tests of r×c tables: Fisher–Freeman–Halton by full enumeration, Monte Carlo beyond.

The p-value is the probability, under independence with both margins fixed, of every table no
more probable than the one observed (tables within a relative 1e-7 of it count, as in R's
``fisher.test``). Tables are enumerated column by column; the last two columns are completed
per distinct state of the remaining row sums, so that each state's completions are listed once.
When the enumeration would pass ``max_tables`` partial tables, SciPy's Monte Carlo version of
the same test is used (a fixed seed, the number of resamples recorded).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np
from scipy import stats
from scipy.special import gammaln

RELATIVE_TOLERANCE = 1e-7


@dataclass(frozen=True)
class ExactResult:
    """p-value of an r×c table and how it was computed ('exact' or 'Monte Carlo')."""

    p: float
    method: str
    tables: int | None = None  # tables enumerated (exact)
    resamples: int | None = None  # Monte Carlo


def _compositions(total: int, bounds: np.ndarray) -> np.ndarray:
    """Every non-negative integer vector summing to ``total`` with x ≤ bounds (rows)."""
    parts = len(bounds)
    if parts == 1:
        return np.array([[total]]) if total <= bounds[0] else np.empty((0, 1), dtype=int)
    ranges = [range(min(int(b), total) + 1) for b in bounds[:-1]]
    head = np.array(list(product(*ranges)), dtype=int).reshape(-1, parts - 1)
    last = total - head.sum(axis=1)
    keep = (last >= 0) & (last <= bounds[-1])
    return np.column_stack([head[keep], last[keep]])


def _log_factorial(x: np.ndarray) -> np.ndarray:
    return gammaln(np.asarray(x, dtype=float) + 1)


class _TooManyTablesError(Exception):
    pass


def _head_tables(rows: np.ndarray, columns: list[int], cap: int) -> tuple[np.ndarray, np.ndarray]:
    """Remaining row sums and log weights (−Σ log x!) of every table of the first columns."""
    states = rows[None, :].astype(int)
    weights = np.zeros(1)
    for total in columns:
        grown_states, grown_weights = [], []
        for state, weight in zip(states, weights, strict=True):
            options = _compositions(total, state)
            grown_states.append(state - options)
            grown_weights.append(weight - _log_factorial(options).sum(axis=1))
        states, weights = np.concatenate(grown_states), np.concatenate(grown_weights)
        if len(states) > cap:
            raise _TooManyTablesError
    return states, weights


def fisher_freeman_halton(table, max_tables: int = 200_000, seed: int = 0) -> ExactResult:
    """Two-sided Fisher–Freeman–Halton p of an r×c table (exact; Monte Carlo when too large)."""
    x = np.asarray(table, dtype=int)
    if x.ndim != 2 or (x < 0).any():
        raise ValueError("a contingency table is a 2-D array of non-negative counts")
    x = x[x.sum(axis=1) > 0][:, x.sum(axis=0) > 0]
    if min(x.shape) < 2:
        return ExactResult(1.0, "exact", 1)
    if x.shape[0] > x.shape[1]:
        x = x.T  # rows: the shorter side, so each column's compositions are few
    rows, cols = x.sum(axis=1), np.sort(x.sum(axis=0))
    n = int(rows.sum())
    constant = _log_factorial(rows).sum() + _log_factorial(cols).sum() - _log_factorial(n)
    observed = constant - _log_factorial(x).sum()
    threshold = observed + np.log1p(RELATIVE_TOLERANCE)
    try:
        states, weights = _head_tables(rows, [int(c) for c in cols[:-2]], max_tables)
    except _TooManyTablesError:
        return _monte_carlo(x, seed)
    p, count = 0.0, 0
    keys, inverse = np.unique(states, axis=0, return_inverse=True)
    for k, state in enumerate(keys):
        third = _compositions(int(cols[-2]), state)
        fourth = state - third
        ok = (fourth >= 0).all(axis=1)
        tail = -(_log_factorial(third[ok]).sum(axis=1) + _log_factorial(fourth[ok]).sum(axis=1))
        tail = np.sort(tail)
        cumulative = np.cumsum(np.exp(tail - tail[-1]))
        heads = weights[inverse.ravel() == k] + constant
        index = np.searchsorted(tail, threshold - heads, side="right")
        p += float(np.sum(np.exp(heads + tail[-1])[index > 0] * cumulative[index[index > 0] - 1]))
        count += len(heads) * len(tail)
    return ExactResult(min(p, 1.0), "exact", count)


def _monte_carlo(x: np.ndarray, seed: int, resamples: int = 100_000) -> ExactResult:
    method = stats.MonteCarloMethod(n_resamples=resamples, rng=np.random.default_rng(seed))
    result = stats.fisher_exact(x, method=method)
    return ExactResult(float(result.pvalue), "Monte Carlo", resamples=resamples)
