"""Evaluate a :class:`GateSet` on an event matrix: one mask per population, with its evidence.

How the work is kept small:

- Events stay float32. Each compensated column (one matrix multiply per compensation) and each
  ratio column is computed once per evaluation and cached; transformed values asked for on
  most of the events are cached per event, so those are not transformed twice for an axis.
- Every Gating-ML scale transformation is monotone increasing, so a range on a transformed axis
  is the same range on the untransformed axis at the inverse-transformed cut. Range, rectangle
  and quadrant gates are evaluated that way, without transforming events. Events within a hair
  of a mapped cut (a relative band of 1e-7 of the scale) are transformed and compared with the
  cut as written, so membership is exactly what comparing transformed values gives.
- Masks are packed (one bit per event). Each side of a cut is computed once over its whole
  column and kept for the gates that follow (phenotypes share their cuts); a range, rectangle
  or quadrant is its parent's bits ANDed with its sides' bits, a boolean gate its operands'
  bits combined within its parent's: no event values are gathered and no masks scattered.
- Polygons and ellipsoids transform only their own axes, and only on those of their parent's
  events that lie within their bounding box (mapped to raw values, slightly widened), chunk by
  chunk, so no full-size float64 copy of an axis is made.
- Memory stays a small multiple of the event matrix: population masks and sides of cuts are
  packed; only the event indices of the populations used last are kept.

Gating-ML semantics: ranges are min <= x < max; polygons use the even-odd rule with edges
crossed half-open in y (the convention of flowutils); ellipsoids include their boundary;
membership always includes the parent's.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Literal

import numpy as np

from gating.compensation import compensated_columns
from gating.errors import GatingError
from gating.model import (
    FCS_SPILL,
    Axis,
    BooleanGate,
    Bound,
    Dimension,
    EllipsoidGate,
    Gate,
    GateHierarchy,
    GateSet,
    PolygonGate,
    QuadrantGate,
    RangeGate,
    RatioDimension,
    RectangleGate,
)
from gating.transforms import Fratio, ScaleTransform

BOUNDARY_BAND = 1e-7
"""Half-width of the band around a mapped cut, relative to |cut| + the transform's T."""

Spill = tuple[Sequence[str], np.ndarray]

SMALL_REQUEST = 4
"""Transformed values for fewer than 1/SMALL_REQUEST of the events are not cached per event."""

SHAPE_CHUNK = 1 << 14
"""Events per chunk of a polygon or ellipsoid test (bounds its float64 temporaries)."""

SIDES = 64
"""Sides of cuts kept (packed, one bit per event each) for the gates that follow."""

RECENT_POSITIONS = 4
"""Event indices kept for the parents used last."""

SUBSAMPLES = 4
"""Estimation subsamples kept (the ones asked for last)."""


@dataclass(frozen=True)
class AxisCut:
    """What a range decided on one axis: the cuts as written and as applied to raw values.

    ``raw_min``/``raw_max`` are the cuts in compensated, untransformed units (equal to
    ``min``/``max`` on an untransformed axis; None when the transformed values were compared).
    ``boundary_events`` counts events so close to a mapped cut that they were transformed.
    """

    axis: str
    min: float | None
    max: float | None
    raw_min: float | None
    raw_max: float | None
    space: Literal["raw", "transformed"]
    boundary_events: int = 0


@dataclass(frozen=True)
class GateDiagnostics:
    """The evidence for one population: its gate, what was evaluated and what was decided."""

    population: str
    gate: Gate
    parent: str | None
    evaluated_events: int
    count: int
    cuts: tuple[AxisCut, ...] = ()
    transformed_axes: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def gate_type(self) -> str:
        """The gate's class name, e.g. ``RectangleGate``."""
        return type(self.gate).__name__


class PackedMasks(Mapping[str, np.ndarray]):
    """Population masks kept as packed bits (one bit per event), unpacked when asked for.

    Each lookup returns a fresh read-only boolean array over all events in file order.
    """

    def __init__(self, packed: Mapping[str, np.ndarray], event_count: int) -> None:
        self._packed = packed
        self._n = event_count

    def __getitem__(self, population: str) -> np.ndarray:
        mask = np.unpackbits(self._packed[population], count=self._n).view(bool)
        mask.setflags(write=False)
        return mask

    def __contains__(self, population: object) -> bool:
        return population in self._packed

    def __iter__(self) -> Iterator[str]:
        return iter(self._packed)

    def __len__(self) -> int:
        return len(self._packed)


@dataclass(frozen=True, eq=False)
class GatingResult:
    """Per population: a read-only boolean mask over all events in file order, its count,
    its parent and its diagnostics. Quadrants are populations; a quadrant gate is not."""

    event_count: int
    masks: Mapping[str, np.ndarray]
    counts: Mapping[str, int]
    parents: Mapping[str, str | None]
    diagnostics: Mapping[str, GateDiagnostics]

    def _known(self, population: str) -> None:
        if population not in self.masks:
            raise KeyError(f"{population!r} is not a population of this result")

    def mask(self, population: str) -> np.ndarray:
        """Events in the population (including its parents)."""
        self._known(population)
        return self.masks[population]

    def count(self, population: str) -> int:
        """Number of events in the population."""
        self._known(population)
        return self.counts[population]

    def fraction_of_parent(self, population: str) -> float:
        """Count over the parent's count (over all events for a top-level gate); 0 if empty."""
        self._known(population)
        parent = self.parents[population]
        total = self.event_count if parent is None else self.counts[parent]
        return self.counts[population] / total if total else 0.0

    @property
    def populations(self) -> tuple[str, ...]:
        """Population ids in evaluation order."""
        return tuple(self.masks)


# ---------------------------------------------------------------------------------- columns


class _Columns:
    """Per-evaluation cache of raw (compensated) axis columns and transformed values."""

    def __init__(
        self,
        gate_set: GateSet,
        events: np.ndarray,
        channel_names: Sequence[str],
        spill: Spill | None,
    ) -> None:
        self.gate_set = gate_set
        self.events = events
        self.n = events.shape[0]
        self.channel_names = list(channel_names)
        self.index: dict[str, int] = {}
        for i, name in enumerate(channel_names):
            self.index.setdefault(name, i)
        self.spill = _check_spill(spill, self.index)
        self._plain: dict[int, np.ndarray] = {}
        self._blocks: dict[str, tuple[dict[str, int], np.ndarray]] = {}
        self._raw: dict[Axis, np.ndarray] = {}
        self._transformed: dict[Axis, tuple[np.ndarray, np.ndarray]] = {}

    # raw values --------------------------------------------------------------------------

    def transform(self, axis: Axis) -> ScaleTransform | None:
        """The axis's scale transformation, if any."""
        if axis.transform is None:
            return None
        return self.gate_set.transforms[axis.transform]  # type: ignore[return-value]

    def notes(self, axis: Axis) -> list[str]:
        """Remarks on how an axis was resolved (e.g. 'FCS' compensation without a spill)."""
        if axis.compensation == FCS_SPILL and self.spill is None:
            return [
                f"{axis.label}: the data has no spillover matrix, so 'FCS' compensation "
                "leaves it uncompensated (Gating-ML 2.0, section 4)"
            ]
        return []

    def raw(self, axis: Axis, idx: np.ndarray | None) -> np.ndarray:
        """Compensated, untransformed values of an axis for events ``idx`` (None: all)."""
        key = replace(axis, transform=None)
        column = self._raw.get(key)
        if column is None and idx is not None and self._uncompensated(key):
            return self.events[idx, self.index[key.channel]]  # a few events: no column copy
        if column is None:
            column = self._compute_raw(key)
            self._raw[key] = column
        return column if idx is None else np.take(column, idx)

    def _uncompensated(self, axis: Axis) -> bool:
        return (
            isinstance(axis, Dimension)
            and axis.channel in self.index
            and (axis.compensation is None or (axis.compensation == FCS_SPILL and not self.spill))
        )

    def _compute_raw(self, axis: Axis) -> np.ndarray:
        if isinstance(axis, RatioDimension):
            ratio = self.gate_set.transforms[axis.ratio]
            assert isinstance(ratio, Fratio)
            numerator = self.raw(Dimension(ratio.numerator, axis.compensation), None)
            denominator = self.raw(Dimension(ratio.denominator, axis.compensation), None)
            return ratio.apply(np.column_stack((numerator, denominator)))
        comp = axis.compensation
        if comp is None or (comp == FCS_SPILL and self.spill is None):
            return self._plain_column(axis.channel)
        if comp == FCS_SPILL:
            assert self.spill is not None
            detectors, matrix = self.spill
            channel = axis.channel
        else:
            spectrum = self.gate_set.compensations[comp]
            detectors, matrix = spectrum.detectors, spectrum.matrix
            channel = spectrum.detector_for(axis.channel) or axis.channel
        if channel not in detectors:
            return self._plain_column(channel)  # not a detector of this matrix: unchanged
        positions, block = self._block(comp, detectors, matrix)
        return block[:, positions[channel]]

    def _plain_column(self, channel: str) -> np.ndarray:
        if channel not in self.index:
            raise GatingError(
                f"channel {channel!r}",
                f"is not in the data (channels: {', '.join(self.channel_names)})",
            )
        i = self.index[channel]
        if i not in self._plain:
            self._plain[i] = np.ascontiguousarray(self.events[:, i])
        return self._plain[i]

    def _block(
        self, comp: str, detectors: Sequence[str], matrix: np.ndarray
    ) -> tuple[dict[str, int], np.ndarray]:
        if comp not in self._blocks:
            for detector in detectors:
                if detector not in self.index:
                    raise GatingError(
                        f"compensation {comp!r}", f"detector {detector!r} is not in the data"
                    )
            block = compensated_columns(self.events, self.channel_names, list(detectors), matrix)
            # column-major already (contiguous columns compare fast): asfortranarray is a no-op
            self._blocks[comp] = ({d: i for i, d in enumerate(detectors)}, np.asfortranarray(block))
        return self._blocks[comp]

    # transformed values --------------------------------------------------------------------

    def transformed(self, axis: Axis, idx: np.ndarray | None, *, cache: bool = True) -> np.ndarray:
        """Transformed (float64) values of an axis for events ``idx``, each computed once
        (``cache=False``: computed now unless already kept, and not kept)."""
        transform = self.transform(axis)
        if transform is None:
            return np.asarray(self.raw(axis, idx), dtype=np.float64)
        entry = self._transformed.get(axis)
        small = idx is not None and (not cache or idx.size * SMALL_REQUEST < self.n)
        if entry is None and small:
            return transform.apply(self.raw(axis, idx))  # a subsample: not worth a full cache
        if entry is None:
            if idx is None:
                values = transform.apply(self.raw(axis, None))
                self._transformed[axis] = (values, np.ones(self.n, dtype=bool))
                return values
            entry = (np.full(self.n, np.nan), np.zeros(self.n, dtype=bool))
            self._transformed[axis] = entry
        values, done = entry
        todo = np.flatnonzero(~done) if idx is None else idx[~done[idx]]
        if todo.size:
            values[todo] = transform.apply(self.raw(axis, todo))
            done[todo] = True
        return values if idx is None else values[idx]


def _check_spill(spill: Spill | None, index: Mapping[str, int]) -> Spill | None:
    if spill is None:
        return None
    channels, matrix = spill
    channels = list(channels)
    missing = [c for c in channels if c not in index]
    if missing:
        raise GatingError("spillover", f"names channels not in the data: {', '.join(missing)}")
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (len(channels), len(channels)):
        raise GatingError("spillover", f"matrix is {matrix.shape} for {len(channels)} channels")
    return channels, matrix


# ------------------------------------------------------------------------- ranges and cuts


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


# ------------------------------------------------------------------------------ shapes


Extent = tuple[tuple[float, ...], tuple[float, ...]]
"""A shape's bounding box: its lowest and highest value on each axis."""

EXTENT_MARGIN = 1e-5
"""How much a shape's extent is widened (relative) before events outside it are skipped."""


def polygon_extent(vertices: Sequence[tuple[float, float]]) -> Extent:
    """The bounding box of a polygon's vertices (no point outside it is inside)."""
    v = np.asarray(vertices, dtype=np.float64)
    return tuple(v.min(axis=0).tolist()), tuple(v.max(axis=0).tolist())


def ellipsoid_extent(
    mean: Sequence[float], covariance: Sequence[Sequence[float]], distance_square: float
) -> Extent | None:
    """mean +- sqrt(distance_square * covariance_ii) per axis: the bounding box of an
    ellipsoid with a symmetric, positive definite covariance (None for any other)."""
    matrix = np.asarray(covariance, dtype=np.float64)
    if not (distance_square >= 0 and np.array_equal(matrix, matrix.T)):
        return None
    if not np.all(np.linalg.eigvalsh(matrix) > 0):
        return None
    half = np.sqrt(distance_square * np.diag(matrix))
    centre = np.asarray(mean, dtype=np.float64)
    return tuple((centre - half).tolist()), tuple((centre + half).tolist())


def points_in_polygon(
    x: np.ndarray, y: np.ndarray, vertices: Sequence[tuple[float, float]]
) -> np.ndarray:
    """Even-odd rule, vectorised over points, one pass per edge (self-intersecting allowed).

    An edge counts when it spans the point's y half-open (low <= y < high) and lies strictly
    to the right of the point, decided by the sign of the cross product as in flowutils.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    inside = np.zeros(x.shape[0], dtype=bool)
    v = np.asarray(vertices, dtype=np.float64)
    # points outside the polygon's y extent span no edge: test only the rest
    with np.errstate(invalid="ignore"):
        rows = np.flatnonzero((y >= v[:, 1].min()) & (y <= v[:, 1].max()))
    px, py = x[rows], y[rows]
    odd = np.zeros(rows.size, dtype=bool)
    for (ax, ay), (bx, by) in zip(v, np.roll(v, -1, axis=0), strict=True):
        if ay == by:
            continue
        cross = (bx - ax) * (py - ay) - (px - ax) * (by - ay)
        if ay < by:
            odd ^= (ay <= py) & (py < by) & (cross > 0)
        else:
            odd ^= (by <= py) & (py < ay) & (cross < 0)
    inside[rows] = odd
    return inside


def points_in_ellipsoid(
    columns: Sequence[np.ndarray],
    mean: Sequence[float],
    covariance: Sequence[Sequence[float]],
    distance_square: float,
) -> np.ndarray:
    """(x - mean)' inv(covariance) (x - mean) <= distance_square, one value per event.

    ``columns`` holds one array per dimension; the sum runs column by column in float64.
    """
    inverse = np.linalg.inv(np.asarray(covariance, dtype=np.float64))
    centred = [np.asarray(c, dtype=np.float64) - m for c, m in zip(columns, mean, strict=True)]
    k = len(centred)
    total = np.zeros(centred[0].shape[0])
    for j in range(k):
        rotated = centred[0] * inverse[0, j]
        for i in range(1, k):
            rotated += centred[i] * inverse[i, j]
        total += rotated * centred[j]
    with np.errstate(invalid="ignore"):
        return total <= distance_square


# ------------------------------------------------------------------------------ engine


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


class Evaluator:
    """Gates evaluated one at a time on one event matrix, sharing every column cache.

    Data-driven placement adds a gate, looks at the values of the population it made, places
    the next cut and adds the next gate; ``result()`` then equals what :func:`evaluate` gives
    for the same gates.
    """

    def __init__(
        self,
        transforms: Mapping,
        compensations: Mapping,
        events: np.ndarray,
        channel_names: Sequence[str],
        spill: tuple[Sequence[str], np.ndarray] | None = None,
        *,
        ranges_in_raw_space: bool = True,
    ) -> None:
        self._transforms = dict(transforms)
        self._compensations = dict(compensations)
        self._gates: list[Gate] = []
        self._hierarchy = GateHierarchy(self._transforms, self._compensations)
        self._gate_set: GateSet | None = None
        events = _check_events(events, channel_names)
        base = GateSet((), self._transforms, self._compensations)
        self._columns = _Columns(base, events, channel_names, spill)
        self._evaluation = _Evaluation(self._columns, ranges_in_raw_space)
        self._subsamples: OrderedDict[tuple, np.ndarray] = OrderedDict()

    @property
    def event_count(self) -> int:
        """Number of events."""
        return self._columns.n

    @property
    def gate_set(self) -> GateSet:
        """The gates added so far, with the transforms and matrices."""
        if self._gate_set is None:
            self._gate_set = GateSet.checked(
                tuple(self._gates), self._transforms, self._compensations
            )
        return self._gate_set

    def add(self, gate: Gate, *, checked: bool = False) -> None:
        """Evaluate one more gate (its parent and references must be there already).

        Only the new gate is checked against those added before (what constructing the
        :class:`GateSet` of all of them would check); ``checked``: it was, as part of one."""
        if not checked:
            self._hierarchy.check(gate)
        try:
            self._evaluation.run(gate)
        except GatingError as exc:
            if exc.source and exc.source.startswith("gate "):
                raise
            raise GatingError(f"gate {gate.id!r}", f"{exc.source}: {exc.problem}") from exc
        self._hierarchy.admit(gate)
        self._gates.append(gate)
        self._gate_set = None

    def withdraw(self, gate_id: str) -> None:
        """Take back the gate added last, as if it had never been added."""
        if not self._gates or self._gates[-1].id != gate_id:
            raise ValueError(f"{gate_id!r} is not the gate added last")
        gate = self._gates.pop()
        for population in self._hierarchy.withdraw(gate):
            self._evaluation.forget(population)
            for key in [k for k in self._subsamples if k[1] == population]:
                del self._subsamples[key]
        self._gate_set = None

    def count(self, population: str) -> int:
        """Events in a population evaluated so far."""
        return self._evaluation.counts[population]

    def positions(self, population: str | None) -> np.ndarray:
        """Indices of a population's events (None: all events)."""
        idx = self._evaluation.positions(population)
        return np.arange(self._columns.n) if idx is None else idx

    def within(self, bounds: Sequence[Bound], population: str | None = None) -> np.ndarray:
        """Indices of a population's events (None: all events) with min <= value < max on
        every bound, decided as a range gate's are (each side of a cut computed once and
        shared with the gates that use it)."""
        evaluation = self._evaluation
        mask, _ = _bounds_mask(bounds, evaluation.bits(population), evaluation._side)
        return np.flatnonzero(np.unpackbits(mask, count=self.event_count).view(bool))

    def raw_values(self, axis: Axis, population: str | None = None) -> np.ndarray:
        """Compensated, untransformed values of an axis, as stored (float32 or float64), on
        a population's events (None: every event; that column is computed once and kept,
        so it is returned read-only)."""
        idx = self._evaluation.positions(population)
        if idx is not None:
            return self._columns.raw(axis, idx)
        column = self._columns.raw(axis, None).view()
        column.setflags(write=False)
        return column

    def values(self, axis: Axis, population: str | None, limit: int | None = None) -> np.ndarray:
        """Transformed values of an axis on a population's events (an even subsample of at
        most ``limit`` of them, in file order, when given). Subsamples are kept, so asking
        twice costs one transform."""
        key = (axis, population, limit)
        if key in self._subsamples:
            self._subsamples.move_to_end(key)
            return self._subsamples[key]
        n = self._columns.n
        if population is None:
            idx = None if limit is None or n <= limit else np.arange(0, n, math.ceil(n / limit))
        else:
            idx = self._evaluation.positions(population)
            if limit is not None and idx.size > limit:
                idx = idx[:: math.ceil(idx.size / limit)]
        values = self._columns.transformed(axis, idx)
        if limit is not None:
            self._subsamples[key] = values
            while len(self._subsamples) > SUBSAMPLES:
                self._subsamples.popitem(last=False)
        return values

    def result(self) -> GatingResult:
        """Masks, counts, parents and diagnostics of every population added."""
        evaluation = self._evaluation
        return GatingResult(
            event_count=self._columns.n,
            masks=PackedMasks(dict(evaluation.packed), self._columns.n),
            counts=MappingProxyType(dict(evaluation.counts)),
            parents=MappingProxyType(dict(evaluation.parents)),
            diagnostics=MappingProxyType(dict(evaluation.diagnostics)),
        )


def evaluate(
    gate_set: GateSet,
    events: np.ndarray,
    channel_names: Sequence[str],
    spill: tuple[Sequence[str], np.ndarray] | None = None,
    *,
    ranges_in_raw_space: bool = True,
) -> GatingResult:
    """Gate ``events`` (n x channels, in file order) with ``gate_set``.

    ``spill`` is the data file's spillover matrix (its channel names and the matrix), used by
    dimensions whose compensation is ``"FCS"``; without it they stay uncompensated, as
    Gating-ML 2.0 specifies. ``ranges_in_raw_space=False`` compares transformed values for
    range, rectangle and quadrant gates instead of mapping their cuts (same membership; used
    to check that claim). Raises :class:`GatingError` for channels missing from the data or a
    bad spillover matrix.
    """
    evaluator = Evaluator(
        gate_set.transforms,
        gate_set.compensations,
        events,
        channel_names,
        spill,
        ranges_in_raw_space=ranges_in_raw_space,
    )
    for gate in gate_set.gates:
        evaluator.add(gate, checked=True)
    return evaluator.result()
