"""One evaluation's packed masks, counts and evidence, and how each kind of gate is run."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from cartflow.gating.engine.columns import _Columns
from cartflow.gating.engine.ranges import _bounds_mask, _ceil, _floor, _Side, _side
from cartflow.gating.engine.results import AxisCut, GateDiagnostics
from cartflow.gating.engine.shapes import (
    EXTENT_MARGIN,
    Extent,
    ellipsoid_extent,
    points_in_ellipsoid,
    points_in_polygon,
    polygon_extent,
)
from cartflow.gating.errors import GatingError
from cartflow.gating.model import (
    Axis,
    BooleanGate,
    Bound,
    EllipsoidGate,
    Gate,
    PolygonGate,
    QuadrantGate,
    RangeGate,
    RectangleGate,
)

SHAPE_CHUNK = 1 << 14
"""Events per chunk of a polygon or ellipsoid test (bounds its float64 temporaries)."""

SIDES = 64
"""Sides of cuts kept (packed, one bit per event each) for the gates that follow."""

RECENT_POSITIONS = 4
"""Event indices kept for the parents used last."""


def _check_events(events: np.ndarray, channel_names: Sequence[str]) -> np.ndarray:
    events = np.asarray(events)
    if events.ndim != 2 or events.shape[1] != len(channel_names):
        raise GatingError(
            "events", f"shape {events.shape} does not match {len(channel_names)} channel names"
        )
    if events.dtype not in (np.float32, np.float64):
        events = events.astype(np.float32)
    return events


class _Evaluation:
    """Masks so far (packed, one bit per event), counts and evidence for one evaluate() call.

    Ranges, rectangles, quadrants and booleans are combined on packed masks over all events:
    each side of a cut is computed once on its whole column and kept (a cut shared by several
    gates costs one compare), and a gate is its parent's bits ANDed with its sides' bits.
    Polygons and ellipsoids are tested on their parent's events only.
    """

    def __init__(self, columns: _Columns, raw_space: bool) -> None:
        self.columns = columns
        self.raw_space = raw_space
        self.n = columns.n
        self.packed: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}
        self.parents: dict[str, str | None] = {}
        self.diagnostics: dict[str, GateDiagnostics] = {}
        self._everything = np.packbits(np.ones(self.n, dtype=bool))
        self._sides: OrderedDict[tuple[Axis, float, bool], _Side] = OrderedDict()
        self._positions: OrderedDict[str, np.ndarray] = OrderedDict()

    def bits(self, population: str | None) -> np.ndarray:
        """A population's packed mask (None: all events); not to be modified."""
        return self._everything if population is None else self.packed[population]

    @staticmethod
    def _keep(cache: OrderedDict, key, value, size: int) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > size:
            cache.popitem(last=False)

    def positions(self, population: str | None) -> np.ndarray | None:
        """Indices of a population's events (None: all events)."""
        if population is None:
            return None
        found = self._positions.get(population)
        if found is None:
            bits = np.unpackbits(self.packed[population], count=self.n).view(bool)
            found = np.flatnonzero(bits)  # on bool: many times faster than on uint8
            if self.n < 2**31:
                found = found.astype(np.int32)
        self._keep(self._positions, population, found, RECENT_POSITIONS)
        return found

    def record(self, population: str, gate: Gate, packed: np.ndarray, **evidence) -> None:
        """Keep a population's packed mask (within its parent's), count and evidence."""
        count = int(np.bitwise_count(packed).sum())
        self.packed[population] = packed
        self._positions.pop(population, None)
        self.counts[population] = count
        self.parents[population] = gate.parent
        self.diagnostics[population] = GateDiagnostics(
            population=population,
            gate=gate,
            parent=gate.parent,
            evaluated_events=self._parent_count(gate.parent),
            count=count,
            **evidence,
        )

    def _parent_count(self, parent: str | None) -> int:
        return self.n if parent is None else self.counts[parent]

    def _scatter(self, idx: np.ndarray | None, local: np.ndarray) -> np.ndarray:
        """A mask over the parent's events ``idx``, packed over all events."""
        if idx is None:
            return np.packbits(local)
        full = np.zeros(self.n, dtype=bool)
        full[idx] = local
        return np.packbits(full)

    def forget(self, population: str) -> None:
        """Drop a population's mask, count and evidence."""
        for kept in (self.packed, self.counts, self.parents, self.diagnostics):
            del kept[population]
        self._positions.pop(population, None)

    def run(self, gate: Gate) -> None:
        """Evaluate one gate on its parent's events."""
        parent = self.bits(gate.parent)
        if isinstance(gate, RangeGate | RectangleGate):
            mask, cuts = _bounds_mask(gate.bounds, parent, self._side)
            self.record(gate.id, gate, mask, cuts=cuts, notes=self._notes(gate.axes))
        elif isinstance(gate, PolygonGate):
            mask, transformed = self._shape(
                gate.axes,
                gate.parent,
                polygon_extent(gate.vertices),
                lambda v: points_in_polygon(v[0], v[1], gate.vertices),
            )
            self.record(
                gate.id, gate, mask, transformed_axes=transformed, notes=self._notes(gate.axes)
            )
        elif isinstance(gate, EllipsoidGate):
            mask, transformed = self._shape(
                gate.axes,
                gate.parent,
                ellipsoid_extent(gate.mean, gate.covariance, gate.distance_square),
                lambda v: points_in_ellipsoid(v, gate.mean, gate.covariance, gate.distance_square),
            )
            notes = self._notes(gate.axes)
            if not np.array_equal(np.array(gate.covariance), np.array(gate.covariance).T):
                notes += ("covariance matrix is not symmetric; its inverse was used as given",)
            self.record(gate.id, gate, mask, transformed_axes=transformed, notes=notes)
        elif isinstance(gate, QuadrantGate):
            self._quadrants(gate, parent)
        elif isinstance(gate, BooleanGate):
            parts = [
                ~self.packed[ref.gate] if ref.complement else self.packed[ref.gate]
                for ref in gate.refs
            ]
            if gate.op == "not":
                mask = ~parts[0]
            elif gate.op == "and":
                mask = np.bitwise_and.reduce(parts)
            else:
                mask = np.bitwise_or.reduce(parts)
            # within the parent (which also clears the pad bits a complement set)
            self.record(gate.id, gate, np.bitwise_and(mask, parent, out=mask))
        else:  # pragma: no cover - the model admits no other gate
            raise GatingError(f"gate {gate.id!r}", f"unsupported gate type {type(gate).__name__}")

    def _notes(self, axes: Sequence[Axis]) -> tuple[str, ...]:
        return tuple(note for axis in axes for note in self.columns.notes(axis))

    def _shape(
        self,
        axes: Sequence[Axis],
        parent: str | None,
        extent: Extent | None,
        test: Callable[[list[np.ndarray]], np.ndarray],
    ) -> tuple[np.ndarray, tuple[str, ...]]:
        """A shape test on the transformed values of ``axes``, packed over all events.

        Only the parent's events within the shape's extent (its bounding box, mapped to raw
        values) are transformed and tested, chunk by chunk (no full-size float64 copy of
        every axis at once); the others lie outside the shape."""
        if extent is None:
            idx = self.positions(parent)
        else:
            candidates = self.bits(parent).copy()
            for axis, low, high in zip(axes, *extent, strict=True):
                np.bitwise_and(candidates, self._within(axis, low, high), out=candidates)
            idx = np.flatnonzero(np.unpackbits(candidates, count=self.n).view(bool))
        size = self.n if idx is None else idx.size
        mask = np.empty(size, dtype=bool)
        for start in range(0, size, SHAPE_CHUNK):
            stop = min(start + SHAPE_CHUNK, size)
            part = np.arange(start, stop) if idx is None else idx[start:stop]
            values = [self.columns.transformed(axis, part, cache=False) for axis in axes]
            mask[start:stop] = test(values)
        transformed = tuple(axis.label for axis in axes if axis.transform is not None)
        return self._scatter(idx, mask), transformed

    def _within(self, axis: Axis, low: float, high: float) -> np.ndarray:
        """Packed: the events whose transformed value may lie in [low, high]; every other
        event's provably does not (the range is widened a little before it is mapped to raw
        values, so rounding in the transform and its inverse cannot matter)."""
        margin = EXTENT_MARGIN * (high - low + abs(low) + abs(high)) + EXTENT_MARGIN**2
        low, high = low - margin, high + margin
        transform = self.columns.transform(axis)
        if transform is not None:
            low, high = (float(v) for v in transform.inverse(np.array([low, high])))
        x = self.columns.raw(axis, None)
        keep = np.ones(self.n, dtype=bool)
        with np.errstate(invalid="ignore"):
            if not math.isnan(low):  # NaN bounds (an undefined inverse) exclude nothing
                keep &= x >= _floor(low, x.dtype)
            if not math.isnan(high):
                keep &= x <= _ceil(high, x.dtype)
        return np.packbits(keep)

    def _side(self, axis: Axis, cut: float, upper: bool) -> _Side:
        """One side of a cut over all events, computed once while it is among those used
        last (gates on the same marker share their cuts)."""
        key = (axis, cut, upper)
        found = self._sides.get(key)
        if found is None:
            found = _side(self.columns, axis, cut, upper=upper, raw_space=self.raw_space)
        self._keep(self._sides, key, found, SIDES)
        return found

    def _quadrants(self, gate: QuadrantGate, parent: np.ndarray) -> None:
        axes = {d.id: d.axis for d in gate.dividers}
        all_cuts: list[AxisCut] = []
        for quadrant in gate.quadrants:
            bounds = [Bound(axes[r.divider], r.min, r.max) for r in quadrant.ranges]
            mask, cuts = _bounds_mask(bounds, parent, self._side)
            notes = self._notes([axes[r.divider] for r in quadrant.ranges])
            self.record(quadrant.id, gate, mask, cuts=cuts, notes=notes)
            all_cuts.extend(cuts)
        self.diagnostics[gate.id] = GateDiagnostics(
            population=gate.id,
            gate=gate,
            parent=gate.parent,
            evaluated_events=self._parent_count(gate.parent),
            count=sum(self.counts[q.id] for q in gate.quadrants),
            cuts=tuple(all_cuts),
            notes=self._notes([d.axis for d in gate.dividers]),
        )
