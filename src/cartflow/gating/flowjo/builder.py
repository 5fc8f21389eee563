"""A gate set turned into FlowJo populations, each checked on the sample's events."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from cartflow.gating.engine import Evaluator
from cartflow.gating.errors import GatingError
from cartflow.gating.flowjo.nodes import COMP_PREFIX, FILE_MATRIX, _Node, _Scale, _scale_for
from cartflow.gating.model import (
    FCS_SPILL,
    Axis,
    BooleanGate,
    Bound,
    Dimension,
    EllipsoidGate,
    Gate,
    GateSet,
    PolygonGate,
    QuadrantGate,
    RangeGate,
    RatioDimension,
    RectangleGate,
)
from cartflow.gating.transforms import ScaleTransform

MIN_VERTICES = 64
MAX_VERTICES = 16_384
"""An ellipse becomes a polygon of MIN_VERTICES, doubled until it selects the same events."""
USE_GATINGML = "export Gating-ML instead"


HELPER_MARK = "::"
"""A gate id holding this is a helper of the population before it (``CAR_CD8_SCM::CD62L+``)."""


def _condition(gate_id: str) -> str | None:
    """What a helper gate tests (``CD62L+`` of ``CAR_CD8_SCM::CD62L+``), else None."""
    return gate_id.rsplit(HELPER_MARK, 1)[1] or None if HELPER_MARK in gate_id else None


def _error(gate_id: str, problem: str) -> GatingError:
    return GatingError(f"gate {gate_id!r}", f"{problem}; {USE_GATINGML}")


def _raw(transform: ScaleTransform | None, value: float) -> float | None:
    """A transformed coordinate as a raw one (None: the open end of a FlowJo scale)."""
    if transform is None:
        return value
    raw = float(transform.inverse(np.array([value]))[0])
    return raw if math.isfinite(raw) else None


def _clip_below(
    vertices: Sequence[tuple[float, float]], axis: int, low: float
) -> list[tuple[float, float]]:
    """The part of a polygon where coordinate ``axis`` >= low (one Sutherland-Hodgman step)."""
    kept: list[tuple[float, float]] = []
    for a, b in zip(vertices, [*vertices[1:], vertices[0]], strict=True):
        fa, fb = a[axis] - low, b[axis] - low
        if fa >= 0:
            kept.append(a)
        if (fa < 0 < fb) or (fb < 0 < fa):
            share = fa / (fa - fb)
            kept.append((a[0] + share * (b[0] - a[0]), a[1] + share * (b[1] - a[1])))
    return kept


class _Workspace:
    """Turns a gate set into FlowJo populations, checked on one sample's events."""

    def __init__(
        self,
        gate_set: GateSet,
        events: np.ndarray,
        channel_names: Sequence[str],
        spill: tuple[Sequence[str], np.ndarray] | None,
    ) -> None:
        self.gate_set = gate_set
        self.spill = spill
        self.evaluator = Evaluator(
            gate_set.transforms, gate_set.compensations, events, channel_names, spill
        )
        for gate in gate_set.gates:
            self.evaluator.add(gate, checked=True)
        self.result = self.evaluator.result()
        self.matrix = self._matrix()
        self.scales: dict[str, _Scale | None] = {}
        self.nodes: dict[str, _Node] = {}
        self._choose_scales()
        self.folded: set[str] = set()
        for gate in gate_set.gates:
            self._add_gate(gate)
        self._drop_folded_helpers()

    # ------------------------------------------------------------------ parameters and scales

    def _used_matrix(self, axis: Axis) -> str | None:
        if axis.compensation == FCS_SPILL:
            return FCS_SPILL if self.spill is not None else None
        return axis.compensation

    def _matrix(self) -> tuple[str, tuple[str, ...], np.ndarray] | None:
        """The one compensation matrix the gates use: (name, detectors, spillover)."""
        used: dict[str, str] = {}
        for gate in self.gate_set.gates:
            for axis in _axes(gate):
                ref = self._used_matrix(axis)
                if ref is not None:
                    used.setdefault(ref, gate.id)
        if len(used) > 1:
            first, second = list(used)[:2]
            raise GatingError(
                f"gate {used[second]!r}",
                f"uses compensation {second!r} besides {first!r}; a FlowJo workspace holds "
                f"one matrix per sample; {USE_GATINGML}",
            )
        if not used:
            return None
        ref = next(iter(used))
        if ref == FCS_SPILL:
            channels, matrix = self.spill
            return FILE_MATRIX, tuple(channels), np.asarray(matrix, dtype=np.float64)
        spectrum = self.gate_set.compensations[ref]
        return ref, spectrum.detectors, spectrum.matrix

    def _param(self, axis: Axis, gate_id: str) -> str:
        """The FlowJo parameter name of an axis: ``Comp-`` + detector when compensated."""
        if isinstance(axis, RatioDimension):
            raise _error(gate_id, f"{axis.label}: a FlowJo workspace has no ratio dimensions")
        detectors = self.matrix[1] if self.matrix else ()
        ref = self._used_matrix(axis)
        if ref is None:
            if axis.channel in detectors:
                raise _error(
                    gate_id,
                    f"{axis.label}: uncompensated {axis.channel} beside the compensated one "
                    "(FlowJo reads a matrix detector as compensated)",
                )
            return axis.channel
        if ref == FCS_SPILL:
            detector = axis.channel if axis.channel in detectors else None
        else:
            detector = self.gate_set.compensations[ref].detector_for(axis.channel)
        return axis.channel if detector is None else COMP_PREFIX + detector

    def _transform(self, axis: Axis) -> ScaleTransform | None:
        return self.gate_set.transforms[axis.transform] if axis.transform else None

    def _choose_scales(self) -> None:
        """One scale per parameter: that of its polygons and ellipses (which must agree),
        else that of its first range with a FlowJo equivalent (ranges are written raw)."""
        for gate in self.gate_set.gates:
            if not isinstance(gate, PolygonGate | EllipsoidGate):
                continue
            for axis in gate.axes:
                param = self._param(axis, gate.id)
                transform = self._transform(axis)
                scale = _scale_for(transform)
                if transform is not None and scale is None:
                    raise _error(
                        gate.id, f"{axis.label}: FlowJo has no {type(transform).__name__} scale"
                    )
                if param in self.scales and self.scales[param] != scale:
                    raise _error(gate.id, f"{axis.label}: drawn on two scales in this gate set")
                self.scales[param] = scale
        for gate in self.gate_set.gates:
            for axis in _axes(gate):
                scale = _scale_for(self._transform(axis))
                if scale is not None:
                    self.scales.setdefault(self._param(axis, gate.id), scale)

    # ------------------------------------------------------------------ gates into nodes

    def _put(self, node: _Node) -> None:
        if "/" in node.shown:
            raise _error(node.name, "FlowJo population names cannot contain '/'")
        if node.name in self.nodes:
            raise _error(node.name, "this name is used twice in the workspace")
        if node.label is not None and any(
            other.parent == node.parent and other.shown == node.label
            for other in self.nodes.values()
        ):
            node = replace(node, label=None)  # a sibling shows that name already
        self.nodes[node.name] = node

    def _drop_folded_helpers(self) -> None:
        """Helper gates whose test was folded into the chain of the population they serve,
        and that nothing else uses, are left out (their events are that chain's)."""
        used = {n.parent for n in self.nodes.values()}
        used |= {r for n in self.nodes.values() for r in n.refs}
        for name in self.folded - used:
            del self.nodes[name]

    def _add_gate(self, gate: Gate) -> None:
        if isinstance(gate, RangeGate | RectangleGate):
            self._add_box(gate.id, gate.parent, gate.bounds)
        elif isinstance(gate, PolygonGate):
            self._add_polygon(gate)
        elif isinstance(gate, EllipsoidGate):
            self._add_ellipse(gate)
        elif isinstance(gate, QuadrantGate):
            for quadrant in gate.quadrants:
                bounds = tuple(
                    Bound(gate.divider(r.divider).axis, r.min, r.max) for r in quadrant.ranges
                )
                if not bounds:
                    raise _error(quadrant.id, "a quadrant without ranges")
                self._add_box(quadrant.id, gate.parent, bounds)
        else:
            self._add_boolean(gate)

    def _add_box(self, name: str, parent: str | None, bounds: Sequence[Bound]) -> None:
        """Ranges and rectangles; more than two axes as nested rectangles."""
        parts = [tuple(bounds[i : i + 2]) for i in range(0, len(bounds), 2)]
        nodes = []
        for i, part in enumerate(parts, start=1):
            params, limits = [], []
            for bound in part:
                params.append(self._param(bound.axis, name))
                transform = self._transform(bound.axis)
                limits.append(
                    tuple(None if v is None else _raw(transform, v) for v in (bound.min, bound.max))
                )
            node_name = name if i == len(parts) else f"{name} ({i} of {len(parts)})"
            nodes.append(_Node(node_name, parent, "rectangle", tuple(params), tuple(limits)))
            parent = node_name
        self._check(name, nodes)
        for node in nodes:
            self._put(node)

    def _polygon_node(self, gate: PolygonGate | EllipsoidGate, vertices) -> _Node:
        """A polygon given in the gate's transformed coordinates, in raw coordinates; cut at
        the offset of a FlowJo log scale, below which FlowJo clips."""
        params = tuple(self._param(a, gate.id) for a in gate.axes)
        transforms = [self._transform(a) for a in gate.axes]
        for axis, param in enumerate(params):
            scale = self.scales.get(param)
            if scale is not None and scale.tag == "log":
                vertices = _clip_below(vertices, axis, 0.0)
        if len(vertices) < 3:
            raise _error(gate.id, "lies below the offset of a FlowJo log scale")
        raw = tuple(tuple(_raw(t, v) for t, v in zip(transforms, p, strict=True)) for p in vertices)
        if any(v is None for vertex in raw for v in vertex):
            raise _error(gate.id, "a vertex lies on the flat end of a FlowJo scale")
        return _Node(gate.id, gate.parent, "polygon", params, vertices=raw)

    def _add_polygon(self, gate: PolygonGate) -> None:
        node = self._polygon_node(gate, list(gate.vertices))
        self._check(gate.id, [node])
        self._put(node)

    def _add_ellipse(self, gate: EllipsoidGate) -> None:
        if len(gate.axes) != 2:
            raise _error(gate.id, f"a {len(gate.axes)}-D ellipsoid (FlowJo ellipses are 2-D)")
        root = np.linalg.cholesky(np.array(gate.covariance)) * math.sqrt(gate.distance_square)
        count, mismatch = MIN_VERTICES, None
        while count <= MAX_VERTICES:
            angles = np.linspace(0.0, 2 * math.pi, count, endpoint=False)
            # vertices just outside the ellipse, so the edges cross it: half in, half out
            circle = np.column_stack([np.cos(angles), np.sin(angles)]) / math.sqrt(
                math.cos(math.pi / count)
            )
            points = np.asarray(gate.mean) + circle @ root.T
            node = self._polygon_node(gate, [(float(x), float(y)) for x, y in points])
            mismatch = self._differences(gate.id, [node])
            if mismatch == 0:
                self._put(node)
                return
            count *= 2
        raise _error(
            gate.id,
            f"no polygon of up to {MAX_VERTICES} vertices selects the same events as the "
            f"ellipse ({mismatch} differ)",
        )

    def _add_boolean(self, gate: BooleanGate) -> None:
        parts = [self.nodes.get(r.gate) for r in gate.refs]
        nested = (
            gate.op == "and"
            and not any(r.complement for r in gate.refs)
            and all(p is not None and p.kind in ("rectangle", "polygon") for p in parts)
            and all(p.parent == gate.parent for p in parts)
        )
        if nested:
            # a chain: the first part, each other part inside the one before, the last one
            # named after the gate; a step shows what it tests (CD62L+) where it can
            parent = parts[0].name
            for i, part in enumerate(parts[1:], start=2):
                name = gate.id if i == len(parts) else f"{gate.id} ({i} of {len(parts)})"
                label = None if i == len(parts) else _condition(part.name)
                self._put(
                    _Node(name, parent, part.kind, part.params, part.limits, part.vertices,
                          label=label)
                )  # fmt: skip
                if _condition(part.name) is not None:
                    self.folded.add(part.name)
                parent = name
            return
        refs = []
        for ref in gate.refs:
            if ref.complement:
                name = f"NOT {ref.gate} [{gate.id}]"
                self._put(_Node(name, gate.parent, "not", refs=(ref.gate,)))
                refs.append(name)
            else:
                refs.append(ref.gate)
        self._put(_Node(gate.id, gate.parent, gate.op, refs=tuple(refs)))

    # ------------------------------------------------------------------ checks on the sample

    def _check(self, name: str, nodes: Sequence[_Node]) -> None:
        wrong = self._differences(name, nodes)
        if wrong:
            raise _error(
                name,
                f"{wrong} event(s) of its parent would fall on the other side of the FlowJo "
                "workspace gate",
            )

    def _differences(self, name: str, nodes: Sequence[_Node]) -> int:
        """Events of the parent on which FlowKit's reading of ``nodes`` (nested) disagrees
        with the population ``name``."""
        parent = nodes[0].parent
        positions = self.evaluator.positions(parent) if parent is not None else None
        expected = self.result.mask(name)
        expected = expected if positions is None else expected[positions]
        inside = np.ones(expected.shape[0], dtype=bool)
        for node in nodes:
            columns = [self._workspace_values(p, positions) for p in node.params]
            if node.kind == "rectangle":
                for values, limits, param in zip(columns, node.limits, node.params, strict=True):
                    low, high = (self._scaled(param, v) for v in limits)
                    with np.errstate(invalid="ignore"):
                        if low is not None:
                            inside &= values >= low
                        if high is not None:
                            inside &= values < high
            else:
                from flowutils import gating

                vertices = np.array(
                    [[self._scaled(p, v) for p, v in zip(node.params, xy, strict=True)]
                     for xy in node.vertices],
                    dtype=np.float64,
                )  # fmt: skip
                inside &= gating.points_in_polygon(vertices, np.column_stack(columns))
        return int(np.count_nonzero(inside != expected))

    def _workspace_values(self, param: str, positions: np.ndarray | None) -> np.ndarray:
        """Values of a FlowJo parameter on events, as FlowKit computes them from a workspace."""
        if param.startswith(COMP_PREFIX) and self.matrix is not None:
            ref = FCS_SPILL if self.matrix[0] == FILE_MATRIX else self.matrix[0]
            axis = Dimension(param.removeprefix(COMP_PREFIX), ref)
        else:
            axis = Dimension(param)
        values = self.evaluator.values(axis, None)
        values = values if positions is None else values[positions]
        scale = self.scales.get(param)
        if scale is None:
            return np.asarray(values, dtype=np.float64)
        return scale.flowkit().apply(np.asarray(values, dtype=np.float64).reshape(-1, 1))[:, 0]

    def _scaled(self, param: str, value: float | None) -> float | None:
        """A raw coordinate as FlowKit reads it back: parsed from its text, then scaled."""
        if value is None:
            return None
        scale = self.scales.get(param)
        number = float(repr(float(value)))
        if scale is None:
            return number
        return float(scale.flowkit().apply(np.array([[number]]))[0, 0])


def _axes(gate: Gate) -> tuple[Axis, ...]:
    if isinstance(gate, QuadrantGate):
        return tuple(d.axis for d in gate.dividers)
    if isinstance(gate, BooleanGate):
        return ()
    return tuple(gate.axes)
