"""Gating-ML 2.0 import: a checked document read by FlowKit and converted into a GateSet."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from lxml import etree

from cartflow.gating.errors import GatingError
from cartflow.gating.gatingml.document import UNCOMPENSATED, _parse_safely, read_bounded
from cartflow.gating.model import (
    Axis,
    BooleanGate,
    Bound,
    Dimension,
    Divider,
    DividerRange,
    EllipsoidGate,
    Gate,
    GateRef,
    GateSet,
    PolygonGate,
    Quadrant,
    QuadrantGate,
    RangeGate,
    RatioDimension,
    RectangleGate,
    SpectrumMatrix,
)
from cartflow.gating.transforms import (
    Fasinh,
    Flin,
    Flog,
    FlowJoBiex,
    FlowJoLog,
    Fratio,
    Hyperlog,
    Logicle,
    Transform,
)

if TYPE_CHECKING:
    import flowkit


def load_gatingml(path: str | Path) -> GateSet:
    """Read a Gating-ML 2.0 document into a :class:`GateSet`.

    Raises :class:`GatingError` naming the file when it is too large, not XML, carries a
    DOCTYPE or entities, is not valid Gating-ML 2.0, or uses something our model lacks.
    """
    path = Path(path)
    data = read_bounded(path)
    tree = _parse_safely(data, path)
    strategy = _parse_with_flowkit(data, tree, path)
    try:
        return from_flowkit(strategy)
    except GatingError as exc:
        raise GatingError(path, f"{exc.source}: {exc.problem}") from exc


def _schema_problem(tree: etree._ElementTree) -> str | None:
    """The first Gating-ML 2.0 schema violation, from the schema FlowKit ships, if any."""
    try:
        from flowkit._resources import gml_schema
    except ImportError:  # a FlowKit without its bundled schema: FlowKit's own message stands
        return None
    if gml_schema.validate(tree):
        return None
    error = gml_schema.error_log[0] if len(gml_schema.error_log) else None
    return f"line {error.line}: {error.message}" if error is not None else None


def _parse_with_flowkit(
    data: bytes, tree: etree._ElementTree, path: Path
) -> flowkit.GatingStrategy:
    import flowkit

    problem = _schema_problem(tree)
    if problem:
        raise GatingError(path, f"is not valid Gating-ML 2.0 ({problem})")
    try:
        return flowkit.parse_gating_xml(io.BytesIO(data))
    except KeyError as exc:  # a reference to an id the document does not define
        problem = f"refers to {exc.args[0]!r}, which the document does not define"
        raise GatingError(path, f"is not valid Gating-ML 2.0: it {problem}") from exc
    except Exception as exc:  # FlowKit raises ValueError and its own errors
        raise GatingError(path, f"is not valid Gating-ML 2.0: {exc}") from exc


def from_flowkit(
    strategy: flowkit.GatingStrategy,
    *,
    path_ids: bool = False,
    rename: Callable[[str], str] = str,
) -> GateSet:
    """Convert a FlowKit GatingStrategy (template gates) into a :class:`GateSet`.

    ``path_ids``: each gate's id is its path from the root (names joined by '/', as in a
    FlowJo workspace, where names repeat under different parents); otherwise its name
    (Gating-ML ids are unique). ``rename`` maps FlowKit's gate names back to the source's.
    """
    from flowkit.exceptions import QuadrantReferenceError

    def population(name: str, path: tuple[str, ...]) -> str:
        if not path_ids:
            return rename(name)
        return "/".join(rename(p) for p in (*path[1:], name))

    transforms = {}
    for transform_id, transform in strategy.transformations.items():
        try:
            transforms[transform_id] = _transform_from_flowkit(transform)
        except GatingError as exc:
            raise GatingError(f"transformation {transform_id!r}", exc.problem) from exc
    compensations = {}
    for matrix_id, matrix in strategy.comp_matrices.items():
        try:
            compensations[matrix_id] = SpectrumMatrix(
                fluorochromes=tuple(matrix.fluorochromes),
                detectors=tuple(matrix.detectors),
                coefficients=tuple(tuple(row) for row in np.asarray(matrix.matrix)),
            )
        except GatingError as exc:
            raise GatingError(f"spectrumMatrix {matrix_id!r}", exc.problem) from exc
    gates = []
    for name, gate_path in strategy.get_gate_ids():
        try:
            fk_gate = strategy.get_gate(name, gate_path)
        except QuadrantReferenceError:
            continue  # quadrants come with their quadrant gate
        parent = None if gate_path[-1] == "root" else population(gate_path[-1], gate_path[:-1])
        gates.append(_gate_from_flowkit(fk_gate, population(name, gate_path), parent, population))
    return GateSet(tuple(_hierarchy_order(gates)), transforms, compensations)


def _transform_from_flowkit(transform: Any) -> Transform:
    from flowkit import transforms as fkt

    if isinstance(transform, fkt.RatioTransform):
        numerator, denominator = transform.dimensions
        return Fratio(
            numerator, denominator, transform.param_a, transform.param_b, transform.param_c
        )
    if isinstance(transform, fkt.LinearTransform):
        return Flin(t=transform.param_t, a=transform.param_a)
    if isinstance(transform, fkt.LogTransform):
        return Flog(t=transform.param_t, m=transform.param_m)
    if isinstance(transform, fkt.WSPLogTransform):
        return FlowJoLog(offset=transform.offset, decades=transform.decades)
    if isinstance(transform, fkt.WSPBiexTransform):
        return FlowJoBiex(
            negative=transform.negative,
            width=transform.width,
            positive=transform.positive,
            max_value=transform.max_value,
        )
    if isinstance(transform, fkt.AsinhTransform):
        return Fasinh(t=transform.param_t, m=transform.param_m, a=transform.param_a)
    if isinstance(transform, fkt.LogicleTransform):
        return Logicle(
            t=transform.param_t, w=transform.param_w, m=transform.param_m, a=transform.param_a
        )
    if isinstance(transform, fkt.HyperlogTransform):
        return Hyperlog(
            t=transform.param_t, w=transform.param_w, m=transform.param_m, a=transform.param_a
        )
    raise GatingError("transformation", f"{type(transform).__name__} is not a Gating-ML 2.0 one")


def _compensation_from_flowkit(reference: str | None) -> str | None:
    return None if reference in (None, UNCOMPENSATED) else reference


def _axis_from_flowkit(dimension: Any) -> Axis:
    import flowkit

    compensation = _compensation_from_flowkit(dimension.compensation_ref)
    if isinstance(dimension, flowkit.RatioDimension):
        return RatioDimension(dimension.ratio_ref, compensation, dimension.transformation_ref)
    return Dimension(dimension.id, compensation, dimension.transformation_ref)


def _gate_from_flowkit(
    gate: Any, name: str, parent: str | None, population: Callable[[str, tuple[str, ...]], str]
) -> Gate:
    from flowkit import gates as fkg

    if getattr(gate, "use_complement", False):
        raise GatingError(f"gate {name!r}", "use_complement is not Gating-ML 2.0; not supported")
    if isinstance(gate, fkg.RectangleGate):
        bounds = tuple(
            Bound(_axis_from_flowkit(d), getattr(d, "min", None), getattr(d, "max", None))
            for d in gate.dimensions
        )
        if len(bounds) == 1:
            return RangeGate(name, parent, bounds[0])
        return RectangleGate(name, parent, bounds)
    if isinstance(gate, fkg.PolygonGate):
        axes = tuple(_axis_from_flowkit(d) for d in gate.dimensions)
        return PolygonGate(name, parent, axes, tuple(tuple(v) for v in gate.vertices))
    if isinstance(gate, fkg.EllipsoidGate):
        return EllipsoidGate(
            name,
            parent,
            tuple(_axis_from_flowkit(d) for d in gate.dimensions),
            tuple(gate.coordinates),
            tuple(tuple(row) for row in gate.covariance_matrix),
            gate.distance_square,
        )
    if isinstance(gate, fkg.QuadrantGate):
        dividers = tuple(
            Divider(
                d.id,
                Dimension(
                    d.dimension_ref,
                    _compensation_from_flowkit(d.compensation_ref),
                    d.transformation_ref,
                ),
                tuple(d.values),
            )
            for d in gate.dimensions
        )
        quadrants = tuple(
            Quadrant(
                q.id,
                tuple(DividerRange(ref, *q.get_divider_range(ref)) for ref in q.divider_refs),
            )
            for q in gate.quadrants.values()
        )
        return QuadrantGate(name, parent, dividers, quadrants)
    if isinstance(gate, fkg.BooleanGate):
        refs = tuple(
            GateRef(population(r["ref"], tuple(r.get("path") or ())), bool(r["complement"]))
            for r in gate.gate_refs
        )
        return BooleanGate(name, parent, gate.type, refs)
    raise GatingError(f"gate {name!r}", f"{type(gate).__name__} is not supported")


def _hierarchy_order(gates: Iterable[Gate]) -> list[Gate]:
    """Gates with every parent and boolean reference before the gates that use them."""
    gates = list(gates)
    owner: dict[str, Gate] = {}
    for gate in gates:
        owner[gate.id] = gate
        if isinstance(gate, QuadrantGate):
            for quadrant in gate.quadrants:
                owner[quadrant.id] = gate
    ordered: list[Gate] = []
    state: dict[str, str] = {}

    def visit(gate: Gate) -> None:
        if state.get(gate.id) == "done":
            return
        if state.get(gate.id) == "visiting":
            raise GatingError(f"gate {gate.id!r}", "is part of a cycle of gate references")
        state[gate.id] = "visiting"
        needs = [gate.parent] if gate.parent else []
        if isinstance(gate, BooleanGate):
            needs += [ref.gate for ref in gate.refs]
        for population in needs:
            if population in owner:  # unknown references are reported by GateSet
                visit(owner[population])
        state[gate.id] = "done"
        ordered.append(gate)

    for gate in gates:
        visit(gate)
    return ordered
