"""Names and helpers the outcome analyses share: endpoints, group labels, JSON values."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cartflow.io.errors import CartflowError

EXPLORATORY = "exploratory (data-derived)"
ENDPOINTS: dict[str, tuple[str, str]] = {
    "efs": ("efs_days", "efs_event"),
    "os": ("os_days", "os_event"),
}


class OutcomeInputError(CartflowError):
    """The outcome configuration or the patient table is unusable."""

    code = "outcomes"


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
