"""Gating-ML 2.0 in and out, through FlowKit's parser and writer.

FlowKit reads the XML into its GatingStrategy, which is then converted into our model; export
builds a GatingStrategy from our model and lets FlowKit write it. Before FlowKit sees a
document it is checked here: size-limited, parsed without DTDs, entities or network, and
refused if it has a DOCTYPE or entity references. FlowKit is imported lazily (it is slow to
import).
"""

from __future__ import annotations

import io
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from lxml import etree

from gating.errors import GatingError
from gating.model import (
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
from gating.transforms import (
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

MAX_DOCUMENT_BYTES = 10 * 2**20
"""Gating-ML documents larger than this (10 MiB) are refused unread."""
MAX_GATES = 500
"""Gates of one Gating-ML document or one workspace sample: FlowKit's parser takes time
growing with the square of their number (about 2 s for 500, 40 s for 2,000)."""
MAX_WORKSPACE_GATES = 20 * MAX_GATES
"""Gates of a whole FlowJo workspace (all its samples and groups)."""

GATING_NS = "http://www.isac-net.org/std/Gating-ML/v2.0/gating"
UNCOMPENSATED = "uncompensated"


# ----------------------------------------------------------------------------------- import


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


def read_bounded(path: Path, limit: int = MAX_DOCUMENT_BYTES) -> bytes:
    """The bytes of a document of at most ``limit`` bytes (else a :class:`GatingError`)."""
    try:
        status = path.stat()
        if not stat.S_ISREG(status.st_mode) and not stat.S_ISDIR(status.st_mode):
            raise GatingError(path, "is not a regular file (a FIFO or device would block)")
        size = status.st_size
        if size > limit:
            raise GatingError(path, _too_large(size, limit))
        with path.open("rb") as fh:
            # one byte more than expected reveals a file that grew past the limit meanwhile
            data = fh.read(min(size, limit) + 1)
    except IsADirectoryError as exc:
        raise GatingError(path, "is a directory, not a gating document") from exc
    except OSError as exc:
        raise GatingError(path, f"cannot be read: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise GatingError(path, _too_large(len(data), limit))
    if not data.strip():
        raise GatingError(path, "is empty")
    return data


def _too_large(size: int, limit: int) -> str:
    return (
        f"is {size:,} bytes; gating documents over {limit:,} bytes "
        f"({limit // 2**20} MiB) are refused"
    )


class DoctypeFoundError(Exception):
    pass


class TooManyGatesError(Exception):
    pass


_STRATEGY_ELEMENTS = frozenset({"Sample", "GroupNode"})
"""Workspace elements that each hold one gating strategy."""


class DoctypeGuard:
    """Parser target that stops at a DOCTYPE, before any of its declarations are used, or
    at more gates than FlowKit parses in bounded time, and notes the root element."""

    root: str | None = None

    def __init__(self) -> None:
        self.gates = 0  # in the whole document
        self.in_strategy = 0  # in the current workspace sample or group (or the document)

    def doctype(self, name: str, public_id: str | None, system_url: str | None) -> None:
        raise DoctypeFoundError(system_url or public_id or name)

    def start(self, tag: str, attrib: dict) -> None:
        if self.root is None:
            self.root = tag
        local = tag.rsplit("}", 1)[-1]
        if local in _STRATEGY_ELEMENTS:
            self.in_strategy = 0
        elif local.endswith("Gate") and tag.startswith(f"{{{GATING_NS}}}"):
            self.gates += 1
            self.in_strategy += 1
            if self.in_strategy > MAX_GATES:
                raise TooManyGatesError(
                    f"holds more than {MAX_GATES} gates in one gating strategy; documents with "
                    "more are refused (reading them would take minutes)"
                )
            if self.gates > MAX_WORKSPACE_GATES:
                raise TooManyGatesError(
                    f"holds more than {MAX_WORKSPACE_GATES} gates; documents with more are "
                    "refused (reading them would take minutes)"
                )

    def end(self, tag: str) -> None:
        pass

    def data(self, data: str) -> None:
        pass

    def comment(self, text: str) -> None:
        pass

    def pi(self, target: str, data: str) -> None:
        pass

    def close(self) -> None:
        return None


_DOCTYPE_REFUSED = (
    "has a DOCTYPE declaration; Gating-ML needs none, and documents with one are refused "
    "(a DTD can declare expanding or external entities)"
)


def safe_parser(**extra: Any) -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, **extra
    )


def _parse_safely(data: bytes, path: Path) -> etree._ElementTree:
    """Parse without DTD loading, entity substitution or network; refuse DTDs and entities.

    A first streaming pass stops at a DOCTYPE before its declarations are used; only a
    document without one is parsed into a tree.
    """
    try:
        etree.fromstring(data, safe_parser(target=DoctypeGuard()))
        root = etree.fromstring(data, safe_parser())
    except DoctypeFoundError as exc:
        raise GatingError(path, _DOCTYPE_REFUSED) from exc
    except TooManyGatesError as exc:
        raise GatingError(path, str(exc)) from exc
    except etree.XMLSyntaxError as exc:
        raise GatingError(path, f"is not well-formed XML: {exc}") from exc
    tree = root.getroottree()
    docinfo = tree.docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise GatingError(path, _DOCTYPE_REFUSED)
    if next(root.iter(etree.Entity), None) is not None:
        raise GatingError(path, "contains entity references; they are refused")
    if root.tag != f"{{{GATING_NS}}}Gating-ML":
        raise GatingError(path, f"root element is {root.tag!r}, not a Gating-ML 2.0 document")
    return tree


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


# ----------------------------------------------------------------------------------- export


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
