"""FlowJo 10 workspace (.wsp) export of one sample's gates, through FlowKit.

FlowKit writes the workspace around the sample (its keywords, group and spillover matrix) and
reads workspaces back; the gate tree is written here, because FlowKit's writer knows only
polygon and rectangle gates on linear and logicle scales. Each gate becomes FlowJo
populations as follows:

- range and rectangle gates: FlowJo range (1-D) or rectangle (2-D) gates; a box on more
  than two axes is a chain of nested rectangles, the last one named after the gate;
- polygons stay polygons; a 2-D ellipsoid becomes a polygon with enough vertices that every
  event of its parent population lies on the same side as for the ellipse;
- a quadrant gate becomes one rectangle population per quadrant;
- an 'and' of gates drawn on its own parent is nested (its first part, the others inside);
  any other boolean is a FlowJo And/Or/Not node, a complemented reference a Not node.

Compensated dimensions carry FlowJo's ``Comp-`` prefix and the matrix is stored in the
sample, where FlowJo and FlowKit look for it. Scales: flin, flog, logicle and fasinh have
FlowJo equivalents (flog as FlowJo's log, which clips below its offset); a range on another
scale is written at its raw cut, which selects the same events. Before anything is written
each gate is checked on the sample: on its parent's events, FlowKit's reading of the
workspace gate must select exactly the events the gate selects, or a :class:`GatingError`
names the gate. Gates a workspace cannot hold (fratio dimensions, polygons on a hyperlog
scale, 3-D ellipsoids, several compensation matrices) are refused the same way.
"""

from __future__ import annotations

import copy
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from lxml import etree

from gating.engine import Evaluator
from gating.errors import GatingError
from gating.gatingml import GATING_NS
from gating.model import (
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
from gating.transforms import Fasinh, Flin, Flog, FlowJoBiex, FlowJoLog, Logicle, ScaleTransform

COMP_PREFIX = "Comp-"
"""FlowJo's name prefix of a compensated parameter."""
FILE_MATRIX = "Acquisition-defined"
"""FlowJo's name of the data file's own spillover matrix."""
MIN_VERTICES = 64
MAX_VERTICES = 16_384
"""An ellipse becomes a polygon of MIN_VERTICES, doubled until it selects the same events."""

DATATYPE_NS = "http://www.isac-net.org/std/Gating-ML/v2.0/datatypes"
TRANSFORM_NS = "http://www.isac-net.org/std/Gating-ML/v2.0/transformations"
USE_GATINGML = "export Gating-ML instead"

NodeKind = Literal["rectangle", "polygon", "and", "or", "not"]


@dataclass(frozen=True)
class _Scale:
    """A FlowJo parameter transformation: its element, attributes and FlowKit reading."""

    tag: str
    attrs: tuple[tuple[str, float], ...]

    def flowkit(self) -> Any:
        """The transformation FlowKit builds when it reads this element."""
        from flowkit import transforms as fkt

        a = dict(self.attrs)
        if self.tag == "linear":
            return fkt.LinearTransform(a["maxRange"], a["minRange"])
        if self.tag == "log":
            return fkt.WSPLogTransform(a["offset"], a["decades"])
        if self.tag == "logicle":
            return fkt.LogicleTransform(a["T"], a["W"], a["M"], a["A"])
        if self.tag == "biex":
            return fkt.WSPBiexTransform(a["neg"], a["width"], a["pos"], a["maxRange"])
        return fkt.AsinhTransform(a["T"], a["M"], a["A"])


def _scale_for(transform: ScaleTransform | None) -> _Scale | None:
    """The FlowJo equivalent of a scale transformation, or None if it has none."""
    match transform:
        case Flin(t=t, a=a):
            low = -a if t - a > 0 else 0.0  # FlowJo's minRange is the display minimum, -A
            return _Scale("linear", (("minRange", low), ("maxRange", t)))
        case Flog(t=t, m=m):
            return _Scale("log", (("offset", t / 10**m), ("decades", m)))
        case Logicle(t=t, w=w, m=m, a=a):
            return _Scale("logicle", (("T", t), ("W", w), ("M", m), ("A", a), ("length", 256)))
        case Fasinh(t=t, m=m, a=a):
            return _Scale("fasinh", (("T", t), ("M", m), ("A", a), ("length", 256)))
        case FlowJoLog(offset=offset, decades=decades):
            return _Scale("log", (("offset", offset), ("decades", decades)))
        case FlowJoBiex(negative=neg, width=width, positive=pos, max_value=top):
            return _Scale(
                "biex",
                (("neg", neg), ("width", width), ("pos", pos), ("maxRange", top), ("length", 256)),
            )
    return None


@dataclass(frozen=True)
class _Node:
    """One FlowJo population: a gate on parameters (raw coordinates) or a boolean node."""

    name: str
    parent: str | None
    kind: NodeKind
    params: tuple[str, ...] = ()
    limits: tuple[tuple[float | None, float | None], ...] = ()
    vertices: tuple[tuple[float, float], ...] = ()
    refs: tuple[str, ...] = ()
    label: str | None = None
    """The name FlowJo shows, when not ``name`` (unique among its siblings only)."""

    @property
    def shown(self) -> str:
        """The population's name in the workspace."""
        return self.label or self.name


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


def _paths(nodes: dict[str, _Node]) -> dict[str, str]:
    """Each node's FlowJo path (names from the sample root, '/'-separated)."""
    paths: dict[str, str] = {}
    for node in nodes.values():
        parent = paths.get(node.parent) if node.parent else None
        paths[node.name] = node.shown if parent is None else f"{parent}/{node.shown}"
    return paths


def _write_tree(nodes: dict[str, _Node], root: etree._Element) -> None:
    """Add every node under ``root`` (the sample's Subpopulations element)."""
    paths = _paths(nodes)
    elements: dict[str | None, etree._Element] = {None: root}
    gate_ids: dict[str, str] = {}
    for number, node in enumerate(nodes.values(), start=1):
        parent_el = elements[node.parent]
        if node.parent is not None:
            subpops = parent_el.find("Subpopulations")
            if subpops is None:
                subpops = etree.SubElement(parent_el, "Subpopulations")
            parent_el = subpops
        if node.kind in ("and", "or", "not"):
            element = etree.SubElement(parent_el, f"{node.kind.capitalize()}Node")
            _population_attrs(element, node.shown)
            deps = etree.SubElement(element, "Dependents")
            for ref in node.refs:
                etree.SubElement(deps, "Dependent").set("name", paths[ref])
        else:
            element = etree.SubElement(parent_el, "Population")
            _population_attrs(element, node.shown)
            gate_id = f"ID{number}"
            gate_ids[node.name] = gate_id
            _write_gate(element, node, gate_id, gate_ids.get(node.parent or ""))
        elements[node.name] = element


def _write_gate(
    population: etree._Element, node: _Node, gate_id: str, parent_id: str | None
) -> None:
    holder = etree.SubElement(population, "Gate")
    holder.set(f"{{{GATING_NS}}}id", gate_id)
    tag = "RectangleGate" if node.kind == "rectangle" else "PolygonGate"
    gate = etree.SubElement(holder, f"{{{GATING_NS}}}{tag}")
    if node.kind == "rectangle":
        gate.set("percentX", "0")
        gate.set("percentY", "0")
    else:
        gate.set("quadID", "-1")
        gate.set("gateResolution", "256")
    gate.set(f"{{{GATING_NS}}}id", gate_id)
    if parent_id is not None:
        holder.set(f"{{{GATING_NS}}}parent_id", parent_id)
        gate.set(f"{{{GATING_NS}}}parent_id", parent_id)
    for i, param in enumerate(node.params):
        dimension = etree.SubElement(gate, f"{{{GATING_NS}}}dimension")
        if node.kind == "rectangle":
            low, high = node.limits[i]
            if low is not None:
                dimension.set(f"{{{GATING_NS}}}min", repr(float(low)))
            if high is not None:
                dimension.set(f"{{{GATING_NS}}}max", repr(float(high)))
        fcs = etree.SubElement(dimension, f"{{{DATATYPE_NS}}}fcs-dimension")
        fcs.set(f"{{{DATATYPE_NS}}}name", param)
    for vertex in node.vertices:
        vertex_el = etree.SubElement(gate, f"{{{GATING_NS}}}vertex")
        for value in vertex:
            coordinate = etree.SubElement(vertex_el, f"{{{GATING_NS}}}coordinate")
            coordinate.set(f"{{{DATATYPE_NS}}}value", repr(float(value)))


def _write_scales(scales: dict[str, _Scale | None], transformations: etree._Element) -> None:
    """One transformation per parameter; a compensated one also under its detector name,
    which is where FlowKit looks it up."""
    written: set[str] = set()
    for param, scale in scales.items():
        if scale is None:
            continue
        names = [param]
        if param.startswith(COMP_PREFIX):
            names.append(param.removeprefix(COMP_PREFIX))
        for name in names:
            if name in written:
                continue
            written.add(name)
            element = etree.SubElement(transformations, f"{{{TRANSFORM_NS}}}{scale.tag}")
            for key, value in scale.attrs:
                element.set(f"{{{TRANSFORM_NS}}}{key}", repr(float(value)))
            parameter = etree.SubElement(element, f"{{{DATATYPE_NS}}}parameter")
            parameter.set(f"{{{DATATYPE_NS}}}name", name)


def _population_attrs(element: etree._Element, name: str) -> None:
    element.set("name", name)
    element.set("annotation", "")
    element.set("owningGroup", "")


def _axes(gate: Gate) -> tuple[Axis, ...]:
    if isinstance(gate, QuadrantGate):
        return tuple(d.axis for d in gate.dividers)
    if isinstance(gate, BooleanGate):
        return ()
    return tuple(gate.axes)


def workspace_bytes(
    gate_set: GateSet,
    fcs_path: Path,
    events: np.ndarray,
    channel_names: Sequence[str],
    spill: tuple[Sequence[str], np.ndarray] | None,
    group: str = "cartflow",
    keywords: Mapping[str, str] | None = None,
) -> bytes:
    """The FlowJo 10 workspace document for one sample (see the module docstring);
    ``keywords`` are added to the sample's keywords (e.g. the evidence of each cut)."""
    import flowkit

    tree = _Workspace(gate_set, events, channel_names, spill)
    strategy = flowkit.GatingStrategy()
    if tree.matrix is not None:
        name, detectors, matrix = tree.matrix
        strategy.add_comp_matrix(name, flowkit.Matrix(matrix, list(detectors), list(detectors)))
    session = flowkit.Session(gating_strategy=strategy, fcs_samples=[flowkit.Sample(str(fcs_path))])
    buffer = io.BytesIO()
    session.export_wsp(buffer, group)
    document = etree.fromstring(buffer.getvalue(), etree.XMLParser(remove_blank_text=True))
    sample = document.find("SampleList/Sample")
    dataset = sample.find("DataSet")
    dataset.set("uri", Path(fcs_path).resolve().as_uri())
    for matrix_el in document.findall("Matrices/*"):
        dataset.addnext(copy.deepcopy(matrix_el))  # FlowJo and FlowKit read it from the sample
    _write_scales(tree.scales, sample.find("Transformations"))
    _write_tree(tree.nodes, sample.find("SampleNode/Subpopulations"))
    listed = sample.find("Keywords")
    for name, value in (keywords or {}).items():
        etree.SubElement(listed, "Keyword", name=name, value=value)
    return etree.tostring(document, xml_declaration=True, encoding="utf-8", pretty_print=True)


def batch_workspace(
    samples: Sequence[tuple[Path, bytes]],
    out: Path,
    group: str,
    groups: Mapping[str, Sequence[int]] | None = None,
) -> None:
    """Write :func:`batch_workspace_bytes` to ``out``."""
    data = batch_workspace_bytes(samples, out, group, groups)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    except OSError as exc:
        raise GatingError(out, f"cannot be written: {exc.strerror or exc}") from exc


def batch_workspace_bytes(
    samples: Sequence[tuple[Path, bytes]],
    out: Path,
    group: str,
    groups: Mapping[str, Sequence[int]] | None = None,
) -> bytes:
    """One FlowJo 10 workspace, to be written at ``out``, holding several samples, each given
    as the path of its FCS file and its one-sample document (from :func:`workspace_bytes`).
    Every sample is in the group ``group``; ``groups`` adds more (name → positions in
    ``samples``, e.g. one per patient). FCS paths are relative to the workspace, so the
    folder holding both can be moved."""
    from urllib.parse import quote

    if not samples:
        raise GatingError(out, "no sample to write")
    parser = etree.XMLParser(remove_blank_text=True)
    document = etree.fromstring(samples[0][1], parser)
    sample_list = document.find("SampleList")
    for child in list(sample_list):
        sample_list.remove(child)
    first = document.find("Groups/GroupNode")
    for child in list(first.find("Group/SampleRefs")):
        first.find("Group/SampleRefs").remove(child)
    template = copy.deepcopy(first)
    members = {group: range(len(samples)), **(groups or {})}
    for number, (name, positions) in enumerate(members.items()):
        node = first if number == 0 else copy.deepcopy(template)
        if number:
            first.getparent().append(node)
        node.set("name", name)
        node.set("owningGroup", name)
        node.find("Group").set("name", name)
        for position in positions:
            etree.SubElement(node.find("Group/SampleRefs"), "SampleRef", sampleID=str(position + 1))
    folder = out.resolve().parent
    for number, (fcs_path, one) in enumerate(samples, start=1):
        sample = etree.fromstring(one, parser).find("SampleList/Sample")
        relative = Path(os.path.relpath(Path(fcs_path).resolve(), folder)).as_posix()
        sample.find("DataSet").set("uri", quote(relative))
        sample.find("DataSet").set("sampleID", str(number))
        sample.find("SampleNode").set("sampleID", str(number))
        sample_list.append(sample)
    return etree.tostring(document, xml_declaration=True, encoding="utf-8", pretty_print=True)


def export_flowjo(
    gate_set: GateSet, fcs_path: str | Path, out: str | Path, group: str = "cartflow"
) -> None:
    """Write a FlowJo 10 workspace holding the sample ``fcs_path`` gated by ``gate_set``
    (its FCS path relative to the workspace).

    Raises :class:`GatingError` naming the gate when a gate cannot be written exactly, and
    naming ``out`` when the file cannot be written.
    """
    from pipeline.fcs import read_fcs

    fcs = read_fcs(Path(fcs_path))
    spill = (list(fcs.spillover.channels), fcs.spillover.matrix) if fcs.spillover else None
    data = workspace_bytes(gate_set, Path(fcs_path), fcs.events, fcs.channel_names, spill, group)
    batch_workspace([(Path(fcs_path), data)], Path(out), group)
