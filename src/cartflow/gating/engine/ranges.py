"""Sides of cuts: ranges compared on raw values at mapped cuts, exact at the boundary."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from cartflow.gating.engine.columns import _Columns
from cartflow.gating.engine.results import AxisCut
from cartflow.gating.model import Axis, Bound

BOUNDARY_BAND = 1e-7
"""Half-width of the band around a mapped cut, relative to |cut| + the transform's T."""


def _ceil(value: float, dtype: np.dtype) -> float | np.floating:
    """The smallest number of ``dtype`` >= value: ``x >= it`` is exactly ``x >= value``."""
    if dtype == np.float64:
        return value
    with np.errstate(over="ignore"):
        rounded = np.array(value, dtype=dtype)[()]
    if float(rounded) < value:  # compared in float64 (a float32 compare rounds value too)
        rounded = np.nextafter(rounded, np.array(np.inf, dtype=dtype))
    return rounded


def _floor(value: float, dtype: np.dtype) -> float | np.floating:
    """The largest number of ``dtype`` <= value."""
    if dtype == np.float64:
        return value
    with np.errstate(over="ignore"):
        rounded = np.array(value, dtype=dtype)[()]
    if float(rounded) > value:
        rounded = np.nextafter(rounded, np.array(-np.inf, dtype=dtype))
    return rounded


@dataclass(frozen=True)
class _Side:
    """One side of one cut, over all events: packed membership, the cut in raw units, and
    the events so near a mapped cut that their transformed values decided them."""

    packed: np.ndarray
    raw_cut: float | None
    near: np.ndarray
    space: Literal["raw", "transformed"]


_NONE = np.empty(0, dtype=np.intp)


def _side(columns: _Columns, axis: Axis, cut: float, *, upper: bool, raw_space: bool) -> _Side:
    """Events whose transformed value is >= cut (or < cut when ``upper``), over all events."""
    transform = columns.transform(axis)
    x = columns.raw(axis, None)
    if transform is None:
        with np.errstate(invalid="ignore"):
            threshold = _ceil(cut, x.dtype)
            inside = x < threshold if upper else x >= threshold
        return _Side(np.packbits(inside), cut, _NONE, "raw")
    raw_cut = float(transform.inverse(np.array([cut]))[0]) if raw_space else math.nan
    if not math.isfinite(raw_cut):
        y = columns.transformed(axis, None)
        with np.errstate(invalid="ignore"):
            return _Side(np.packbits(y < cut if upper else y >= cut), None, _NONE, "transformed")
    half = BOUNDARY_BAND * (abs(raw_cut) + transform.top)
    low, high = _floor(raw_cut - half, x.dtype), _ceil(raw_cut + half, x.dtype)
    with np.errstate(invalid="ignore"):
        inside = x < low if upper else x >= high  # clear of the band around the cut
        wider = x < high if upper else x >= low  # ... and the band's events too
        near = _NONE
        if np.count_nonzero(wider) != np.count_nonzero(inside):
            near = np.flatnonzero(wider & ~inside)
        if upper and transform.domain_min > -math.inf:  # flog: undefined (NaN) below 0
            inside &= x >= transform.domain_min
    if near.size:
        y = columns.transformed(axis, near)
        inside[near] = y < cut if upper else y >= cut
    return _Side(np.packbits(inside), raw_cut, near, "raw")


def _bits(packed: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The bits of events ``idx`` in a packed mask (0 or 1 each)."""
    return (packed[idx >> 3] >> (7 - (idx & 7)).astype(np.uint8)) & 1


SideFn = Callable[[Axis, float, bool], _Side]


def _bounds_mask(
    bounds: Sequence[Bound], parent: np.ndarray, side: SideFn
) -> tuple[np.ndarray, tuple[AxisCut, ...]]:
    """The parent's events with min <= value < max on every bound (packed), one AxisCut each."""
    mask = parent.copy()
    cuts = []
    for bound in bounds:
        low = side(bound.axis, bound.min, False) if bound.min is not None else None
        high = side(bound.axis, bound.max, True) if bound.max is not None else None
        parts = [s for s in (low, high) if s is not None]
        for part in parts:
            np.bitwise_and(mask, part.packed, out=mask)
        cuts.append(
            AxisCut(
                axis=bound.axis.label,
                min=bound.min,
                max=bound.max,
                raw_min=low.raw_cut if low else None,
                raw_max=high.raw_cut if high else None,
                space="transformed" if any(s.space == "transformed" for s in parts) else "raw",
                boundary_events=sum(int(_bits(parent, s.near).sum()) for s in parts),
            )
        )
    return mask, tuple(cuts)
