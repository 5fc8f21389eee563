"""Gating-ML 2.0 export: a GateSet as a FlowKit GatingStrategy, written by FlowKit."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cartflow.gating.errors import GatingError
from cartflow.gating.gatingml.document import UNCOMPENSATED
from cartflow.gating.model import (
    Axis,
    BooleanGate,
    EllipsoidGate,
    Gate,
    GateSet,
    PolygonGate,
    QuadrantGate,
    RangeGate,
    RatioDimension,
    RectangleGate,
)
from cartflow.gating.transforms import Fasinh, Flin, Flog, Fratio, Hyperlog, Logicle, Transform

if TYPE_CHECKING:
    import flowkit

_NCNAME_REPLACEMENTS = (("::", "__"), (":", "_"), ("++", "bright"), ("+", "pos"), (" ", "_"))


def xml_id(gate_id: str) -> str:
    """A gate id as an XML NCName (Gating-ML ids are xs:ID): ``A::CD3+`` → ``A__CD3pos``."""
    for old, new in _NCNAME_REPLACEMENTS:
        gate_id = gate_id.replace(old, new)
    return gate_id if gate_id[:1].isalpha() or gate_id[:1] == "_" else f"_{gate_id}"


def with_xml_ids(gate_set: GateSet) -> GateSet:
    """The same gates with every id (and reference to it) made a valid XML id."""
    from dataclasses import replace

    def renamed(gate: Gate) -> Gate:
        changes: dict[str, Any] = {"id": xml_id(gate.id)}
        if gate.parent is not None:
            changes["parent"] = xml_id(gate.parent)
        if isinstance(gate, BooleanGate):
            changes["refs"] = tuple(replace(r, gate=xml_id(r.gate)) for r in gate.refs)
        if isinstance(gate, QuadrantGate):
            changes["quadrants"] = tuple(replace(q, id=xml_id(q.id)) for q in gate.quadrants)
        return replace(gate, **changes)

    return GateSet(
        tuple(renamed(g) for g in gate_set.gates), gate_set.transforms, gate_set.compensations
    )


def export_gatingml(gate_set: GateSet, path: str | Path) -> None:
    """Write :func:`gatingml_bytes` of ``gate_set`` to ``path``."""
    path = Path(path)
    data = gatingml_bytes(gate_set, path)
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise GatingError(path, f"cannot be written: {exc.strerror or exc}") from exc


def gatingml_bytes(gate_set: GateSet, path: str | Path = "gates") -> bytes:
    """``gate_set`` as a Gating-ML 2.0 document (FlowKit's writer), to be written at ``path``
    (named in errors); ids that are not valid XML ids are rewritten with :func:`xml_id`."""
    import io

    import flowkit

    try:
        strategy = to_flowkit(with_xml_ids(gate_set))
    except GatingError as exc:
        raise GatingError(path, f"cannot export: {exc.source}: {exc.problem}") from exc
    buffer = io.BytesIO()
    flowkit.export_gatingml(strategy, buffer)
    return buffer.getvalue()


def to_flowkit(gate_set: GateSet) -> flowkit.GatingStrategy:
    """Build the FlowKit GatingStrategy equivalent to ``gate_set``."""
    import flowkit

    strategy = flowkit.GatingStrategy()
    for transform_id, transform in gate_set.transforms.items():
        strategy.add_transform(transform_id, _transform_to_flowkit(transform))
    for matrix_id, matrix in gate_set.compensations.items():
        strategy.add_comp_matrix(
            matrix_id,
            flowkit.Matrix(matrix.matrix, list(matrix.detectors), list(matrix.fluorochromes)),
        )
    paths: dict[str, tuple[str, ...]] = {}  # population -> its path, itself included
    for gate in gate_set.gates:
        parent_path = ("root",) if gate.parent is None else paths[gate.parent]
        strategy.add_gate(_gate_to_flowkit(gate, paths), parent_path)
        paths[gate.id] = (*parent_path, gate.id)
        if isinstance(gate, QuadrantGate):
            for quadrant in gate.quadrants:
                paths[quadrant.id] = (*parent_path, gate.id, quadrant.id)
    return strategy


def _transform_to_flowkit(transform: Transform) -> Any:
    from flowkit import transforms as fkt

    match transform:
        case Fratio():
            return fkt.RatioTransform(
                [transform.numerator, transform.denominator],
                transform.a,
                transform.b,
                transform.c,
            )
        case Flin():
            return fkt.LinearTransform(transform.t, transform.a)
        case Flog():
            return fkt.LogTransform(transform.t, transform.m)
        case Fasinh():
            return fkt.AsinhTransform(transform.t, transform.m, transform.a)
        case Logicle():
            return fkt.LogicleTransform(transform.t, transform.w, transform.m, transform.a)
        case Hyperlog():
            return fkt.HyperlogTransform(transform.t, transform.w, transform.m, transform.a)
    raise GatingError("transformation", f"{type(transform).__name__} cannot be exported")


def _axis_to_flowkit(axis: Axis, low: float | None = None, high: float | None = None) -> Any:
    import flowkit

    compensation = axis.compensation or UNCOMPENSATED
    if isinstance(axis, RatioDimension):
        dimension = flowkit.RatioDimension(axis.ratio, compensation, axis.transform, low, high)
        # FlowKit leaves min/max unset when None, and its writer then fails on them
        dimension.min, dimension.max = low, high
        return dimension
    return flowkit.Dimension(axis.channel, compensation, axis.transform, low, high)


def _location(low: float | None, high: float | None) -> float:
    """A point strictly inside [low, high): where a Gating-ML quadrant 'position' lies."""
    if low is None and high is None:
        return 0.0
    if low is None:
        return high - max(1.0, abs(high))
    if high is None:
        return low + max(1.0, abs(low))
    middle = (low + high) / 2
    return middle if middle < high else low


def _gate_to_flowkit(gate: Gate, paths: dict[str, tuple[str, ...]]) -> Any:
    import flowkit
    from flowkit import gates as fkg

    if isinstance(gate, RangeGate | RectangleGate):
        dimensions = [_axis_to_flowkit(b.axis, b.min, b.max) for b in gate.bounds]
        return fkg.RectangleGate(gate.id, dimensions)
    if isinstance(gate, PolygonGate):
        dimensions = [_axis_to_flowkit(a) for a in gate.axes]
        return fkg.PolygonGate(gate.id, dimensions, [list(v) for v in gate.vertices])
    if isinstance(gate, EllipsoidGate):
        return fkg.EllipsoidGate(
            gate.id,
            [_axis_to_flowkit(a) for a in gate.axes],
            list(gate.mean),
            [list(row) for row in gate.covariance],
            gate.distance_square,
        )
    if isinstance(gate, QuadrantGate):
        dividers = [
            flowkit.QuadrantDivider(
                d.id,
                d.axis.channel,
                d.axis.compensation or UNCOMPENSATED,
                list(d.values),
                d.axis.transform,
            )
            for d in gate.dividers
        ]
        # FlowKit's writer derives each position's 'location' from the range it is given
        # (max/2 when open below, min*2 when open above), which falls on the wrong side of
        # zero or negative dividers. Give it a point strictly inside the range instead.
        quadrants = [
            fkg.Quadrant(
                q.id,
                [r.divider for r in q.ranges],
                [(loc, loc) for loc in (_location(r.min, r.max) for r in q.ranges)],
            )
            for q in gate.quadrants
        ]
        return fkg.QuadrantGate(gate.id, dividers, quadrants)
    if isinstance(gate, BooleanGate):
        refs = [
            {"ref": r.gate, "path": paths[r.gate][:-1], "complement": r.complement}
            for r in gate.refs
        ]
        return fkg.BooleanGate(gate.id, gate.op, refs)
    raise GatingError(f"gate {gate.id!r}", f"{type(gate).__name__} cannot be exported")
