"""Benjamini-Hochberg q-values beside the p-values of each family of tests (statsmodels)."""

from __future__ import annotations

import numpy as np
import pandas as pd

METHOD = "Benjamini-Hochberg (statsmodels multipletests, fdr_bh)"


def q_values(p: pd.Series | np.ndarray) -> np.ndarray:
    """BH q-values of the finite p-values; NaN where p is missing (not counted as a test)."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p, dtype=float)
    q = np.full(len(p), np.nan)
    finite = np.isfinite(p)
    if finite.any():
        q[finite] = multipletests(p[finite], method="fdr_bh")[1]
    return q


def with_q(frame: pd.DataFrame, p_column: str = "p") -> pd.DataFrame:
    """The frame with a ``q`` column right after ``p_column`` (one family: the whole frame)."""
    if frame.empty or p_column not in frame:
        return frame
    q = q_values(frame[p_column].to_numpy(dtype=float))
    at = list(frame.columns).index(p_column) + 1
    out = frame.copy()
    out.insert(at, "q" if p_column == "p" else f"{p_column}_q", q)
    return out


def number_of_tests(frame: pd.DataFrame, p_column: str = "p") -> int:
    return int(np.isfinite(frame[p_column].to_numpy(dtype=float)).sum()) if p_column in frame else 0
