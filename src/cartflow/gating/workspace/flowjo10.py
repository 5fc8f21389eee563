"""FlowJo 10 workspaces read through FlowKit: samples, groups, stored populations, gates."""

from __future__ import annotations

import copy
import inspect
import io
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from dataclasses import replace as dataclass_replace
from pathlib import Path, PurePosixPath, PureWindowsPath
from urllib.parse import unquote, urlparse

import numpy as np
from lxml import etree

from cartflow.gating.errors import GatingError
from cartflow.gating.model import (
    Bound,
    EllipsoidGate,
    GateSet,
    PolygonGate,
    QuadrantGate,
    RangeGate,
    RectangleGate,
)
from cartflow.gating.samples import match_sample
from cartflow.gating.transforms import Hyperlog
from cartflow.gating.workspace.sources import WorkspaceGroup

FLOWKIT_RESERVED = (".", "..")
"""Gate names FlowKit's gate tree cannot hold; read under a stand-in and given back."""
_STAND_IN = "\u2024cartflow-name-{}\u2024"

NODE_TAGS = ("Population", "NotNode", "AndNode", "OrNode")
"""FlowJo 10 elements that are populations of a sample."""

READABLE_KINDS = frozenset(
    ("RectangleGate", "PolygonGate", "EllipsoidGate", "NotNode", "AndNode", "OrNode")
)
"""Population kinds FlowKit reads from a FlowJo 10 workspace (quadrants come as rectangles)."""

READABLE_SCALES = frozenset(("linear", "log", "logicle", "biex", "fasinh", "hyperlog"))
"""FlowJo 10 parameter scales read (hyperlog by cartflow, the others by FlowKit)."""


@dataclass(frozen=True)
class StoredPopulation:
    """A population of a workspace sample: its path, what FlowJo calls its gate, its count."""

    path: str
    kind: str
    count: int | None


@dataclass(frozen=True)
class WorkspaceSample:
    """One sample of a FlowJo workspace, as the workspace describes it."""

    sample_id: str
    name: str
    file_name: str | None
    keywords: Mapping[str, str]
    groups: tuple[str, ...]
    populations: tuple[StoredPopulation, ...]

    @property
    def event_count(self) -> int | None:
        """``$TOT`` as the workspace recorded it."""
        value = self.keywords.get("$TOT")
        return int(value) if value and value.strip().isdigit() else None

    def stored_counts(self) -> dict[str, int]:
        """FlowJo's count of each population (by path), where it stored one."""
        return {p.path: p.count for p in self.populations if p.count is not None}


class FlowJoWorkspace:
    """A FlowJo 10 workspace: its samples, groups, gates (as :class:`GateSet` per sample)."""

    def __init__(self, path: Path, document: etree._Element, flowkit_workspace) -> None:
        self.path = path
        self._document = document
        self._flowkit = flowkit_workspace
        self._hyperlogs = _hyperlogs(document)
        self.samples = tuple(_samples(document))
        self.groups = _group_names(document)

    def __iter__(self) -> Iterator[WorkspaceSample]:
        return iter(self.samples)

    def sample(self, name: str) -> WorkspaceSample:
        """The sample with this name."""
        for sample in self.samples:
            if sample.name == name:
                return sample
        raise KeyError(name)

    def match(
        self, file_name: str, fil: str | None = None, event_count: int | None = None
    ) -> WorkspaceSample:
        """The sample a data file belongs to: by name, then ``$FIL``, then a unique event
        count; a :class:`GatingError` naming the file and the samples when none fits."""
        return match_sample(self.samples, self.path, file_name, fil, event_count)

    def group(self, name: str) -> WorkspaceGroup:
        """A sample group's own gates (its template in FlowJo), for any data file; read on
        the scales and matrix of a sample of the group."""
        groups = {g.get("name"): g for g in self._document.iterfind("Groups/GroupNode")}
        if name not in groups:
            listed = ", ".join(groups) or "none"
            raise GatingError(self.path, f"has no sample group {name!r} (its groups: {listed})")
        template = groups[name].find("Subpopulations")
        members = [s for s in self.samples if name in s.groups]
        if template is None or not members:
            raise GatingError(
                self.path, f"sample group {name!r} holds no gates or no sample to read them on"
            )
        document = etree.fromstring(etree.tostring(self._document))
        sample_list = document.find("SampleList")
        keep = None
        for element in list(sample_list):
            node = element.find("SampleNode")
            if keep is None and node is not None and node.get("name") == members[0].name:
                keep = element
            else:
                sample_list.remove(element)
        node = keep.find("SampleNode")
        for ref in document.iterfind("Groups/GroupNode/Group/SampleRefs/SampleRef"):
            if ref.get("sampleID") != node.get("sampleID"):
                ref.getparent().remove(ref)
        old = node.find("Subpopulations")
        if old is not None:
            node.remove(old)
        node.append(copy.deepcopy(template))
        workspace = read_flowjo_workspace(self.path, document)
        gate_set = workspace.gate_set(workspace.samples[0])
        if not gate_set.gates:
            raise GatingError(self.path, f"sample group {name!r} holds no gates")
        return WorkspaceGroup(self.path, name, gate_set)

    def gates_for(
        self, file_name: str, fil: str | None = None, event_count: int | None = None
    ) -> GateSet:
        """The gates of the sample a data file belongs to (see :meth:`match`)."""
        sample = self.match(file_name, fil, event_count)
        gate_set = self.gate_set(sample)
        if not gate_set.gates:
            raise GatingError(
                self.path, f"sample {sample.name} (matching {file_name}) has no gates"
            )
        return gate_set

    def gate_set(self, sample: WorkspaceSample) -> GateSet:
        """The sample's gates, each with its full path as id; every population of the sample
        present, or a :class:`GatingError` naming the one that is not."""
        from cartflow.gating.gatingml import from_flowkit

        try:
            strategy = self._flowkit.get_gating_strategy(sample.name)
            gate_set = from_flowkit(strategy, path_ids=True, rename=_original_name)
            gate_set = _on_hyperlog(gate_set, self._hyperlogs.get(sample.name, {}))
        except GatingError as exc:
            raise GatingError(
                self.path, f"sample {sample.name}: {exc.source}: {exc.problem}"
            ) from exc
        read = set(gate_set.population_ids)
        for population in sample.populations:
            if population.path not in read:
                raise GatingError(
                    self.path,
                    f"sample {sample.name}: gate {population.path!r} ({population.kind}) "
                    "cannot be read: FlowKit does not read this kind of FlowJo gate",
                )
        return gate_set


def _original_name(name: str) -> str:
    for i, reserved in enumerate(FLOWKIT_RESERVED):
        if name == _STAND_IN.format(i):
            return reserved
    return name


def _stand_in(name: str) -> str:
    return _STAND_IN.format(FLOWKIT_RESERVED.index(name)) if name in FLOWKIT_RESERVED else name


def read_flowjo_workspace(path: Path, document: etree._Element) -> FlowJoWorkspace:
    """A parsed FlowJo 10 workspace document, read through FlowKit (the FCS files need not
    be at hand)."""
    import flowkit

    _check_readable(path, document)
    for_flowkit = _with_stand_ins(document)
    option = (
        "load_missing_file_data"
        if "load_missing_file_data" in inspect.signature(flowkit.Workspace).parameters
        else "ignore_missing_files"
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FlowKit warns about every FCS file not at hand
            workspace = flowkit.Workspace(io.BytesIO(for_flowkit), **{option: True})
    except Exception as exc:  # FlowKit's own parse errors, whatever their class
        raise GatingError(path, f"is not a FlowJo 10 workspace FlowKit can read: {exc}") from exc
    return FlowJoWorkspace(path, document, workspace)


def _check_readable(path: Path, document: etree._Element) -> None:
    """Refuse, by name, a population or a scale FlowKit cannot read (before FlowKit sees the
    workspace, whose own error would not name it)."""
    nodes = [
        *document.iterfind("Groups/GroupNode"),
        *document.iterfind("SampleList/Sample/SampleNode"),
    ]
    for node in nodes:
        where = "group" if node.tag == "GroupNode" else "sample"
        for population in _populations(node, ""):
            if population.kind not in READABLE_KINDS:
                raise GatingError(
                    path,
                    f"{where} {node.get('name')}: gate {population.path!r} is a FlowJo "
                    f"{population.kind}, which cartflow cannot read (it reads rectangle, "
                    "polygon, ellipse, quadrant and boolean gates)",
                )
    for sample in document.iterfind("SampleList/Sample"):
        for scale in sample.iterfind("Transformations/*"):
            kind = etree.QName(scale).localname
            if kind not in READABLE_SCALES:
                parameter = next(
                    (v for e in scale.iter() for k, v in e.attrib.items() if k.endswith("}name")),
                    "?",
                )
                node = sample.find("SampleNode")
                raise GatingError(
                    path,
                    f"sample {node.get('name') if node is not None else '?'}: parameter "
                    f"{parameter!r} is on FlowJo's {kind} scale, which cartflow cannot read "
                    "(it reads linear, log, biex, logicle, arcsinh and hyperlog): choose one of "
                    "those in FlowJo and save the workspace again",
                )


def _with_stand_ins(document: etree._Element) -> bytes:
    """The document with population names FlowKit cannot hold replaced by stand-ins (in
    boolean gates' references too)."""
    copy = etree.fromstring(etree.tostring(document))
    for element in copy.iter(*NODE_TAGS):
        if element.get("name") in FLOWKIT_RESERVED:
            element.set("name", _stand_in(element.get("name")))
    for dependent in copy.iter("Dependent"):
        parts = dependent.get("name", "").split("/")
        dependent.set("name", "/".join(_stand_in(p) for p in parts))
    for scale in copy.iterfind("SampleList/Sample/Transformations/*"):
        if etree.QName(scale).localname == "hyperlog":  # FlowKit reads it as logicle; see
            scale.tag = f"{{{etree.QName(scale).namespace}}}logicle"  # _on_hyperlog
    return etree.tostring(copy)


def _hyperlogs(document: etree._Element) -> dict[str, dict[str, Hyperlog]]:
    """Sample name → parameter → its FlowJo hyperlog scale (T, W, M, A as Gating-ML's)."""
    found: dict[str, dict[str, Hyperlog]] = {}
    for sample in document.iterfind("SampleList/Sample"):
        node = sample.find("SampleNode")
        for scale in sample.iterfind("Transformations/*"):
            if etree.QName(scale).localname != "hyperlog":
                continue
            values = {etree.QName(k).localname: v for k, v in scale.attrib.items()}
            parameter = next(
                (v for e in scale.iter() for k, v in e.attrib.items() if k.endswith("}name")),
                "",
            )
            hyperlog = Hyperlog(*(float(values.get(k, "nan")) for k in ("T", "W", "M", "A")))
            for name in (parameter, parameter.removeprefix("Comp-")):
                found.setdefault(node.get("name", "") if node is not None else "", {})[name] = (
                    hyperlog
                )
    return found


def _on_hyperlog(gate_set: GateSet, hyperlogs: dict[str, Hyperlog]) -> GateSet:
    """The gates as drawn on FlowJo's hyperlog scales: FlowKit read those scales as logicle
    with the same parameters, so each coordinate on them goes back to its data value
    through the logicle and onto the hyperlog."""
    swapped = {t: h for t, h in hyperlogs.items() if t in gate_set.transforms}
    if not swapped:
        return gate_set

    def moved(axis, value: float | None) -> float | None:
        if value is None or axis.transform not in swapped:
            return value
        raw = gate_set.transforms[axis.transform].inverse(np.array([value]))
        return float(swapped[axis.transform].apply(raw)[0])

    gates = []
    for gate in gate_set.gates:
        if isinstance(gate, RangeGate | RectangleGate):
            bounds = tuple(
                Bound(b.axis, moved(b.axis, b.min), moved(b.axis, b.max)) for b in gate.bounds
            )
            gate = dataclass_replace(
                gate,
                **({"bound": bounds[0]} if isinstance(gate, RangeGate) else {"bounds": bounds}),
            )
        elif isinstance(gate, PolygonGate):
            vertices = tuple(
                tuple(moved(a, v) for a, v in zip(gate.axes, vertex, strict=True))
                for vertex in gate.vertices
            )
            gate = dataclass_replace(gate, vertices=vertices)
        elif isinstance(gate, EllipsoidGate | QuadrantGate) and any(
            a.transform in swapped for a in _gate_axes(gate)
        ):
            raise GatingError(f"gate {gate.id!r}", "an ellipse or quadrant on a hyperlog scale")
        gates.append(gate)
    transforms = {**gate_set.transforms, **swapped}
    return GateSet(tuple(gates), transforms, gate_set.compensations)


def _gate_axes(gate) -> tuple:
    if isinstance(gate, QuadrantGate):
        return tuple(d.axis for d in gate.dividers)
    return tuple(gate.axes)


def _samples(document: etree._Element) -> Iterator[WorkspaceSample]:
    groups = _sample_groups(document)
    for sample in document.iterfind("SampleList/Sample"):
        node = sample.find("SampleNode")
        if node is None:
            continue
        sample_id = node.get("sampleID", "")
        dataset = sample.find("DataSet")
        keywords = {
            k.get("name", ""): k.get("value", "") for k in sample.iterfind("Keywords/Keyword")
        }
        yield WorkspaceSample(
            sample_id=sample_id,
            name=node.get("name", ""),
            file_name=_file_name(dataset.get("uri") if dataset is not None else None),
            keywords=keywords,
            groups=tuple(groups.get(sample_id, ())),
            populations=tuple(_populations(node, "")),
        )


def _file_name(uri: str | None) -> str | None:
    """The file name at the end of a DataSet uri (file:/V:/a/b.fcs, relative, or Windows)."""
    if not uri:
        return None
    path = unquote(urlparse(uri).path if "://" in uri or uri.startswith("file:") else uri)
    name = PureWindowsPath(path).name if "\\" in path else PurePosixPath(path).name
    return name or None


def _populations(node: etree._Element, prefix: str) -> Iterator[StoredPopulation]:
    subpopulations = node.find("Subpopulations")
    if subpopulations is None:
        return
    for child in subpopulations:
        if child.tag not in NODE_TAGS:
            continue
        path = f"{prefix}{child.get('name', '')}"
        yield StoredPopulation(path, _kind(child), _count(child.get("count")))
        yield from _populations(child, f"{path}/")


def _kind(element: etree._Element) -> str:
    """FlowJo's name of a population's gate: the gate element's name, or the node's."""
    if element.tag != "Population":
        return element.tag
    gate = element.find("Gate")
    shapes = [etree.QName(c).localname for c in gate] if gate is not None else []
    return shapes[0] if shapes else "Population without a gate"


def _count(value: str | None) -> int | None:
    try:
        count = int(value) if value is not None else None
    except ValueError:
        return None
    return count if count is not None and count >= 0 else None


def _sample_groups(document: etree._Element) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for group in document.iterfind("Groups/GroupNode"):
        for ref in group.iterfind("Group/SampleRefs/SampleRef"):
            groups.setdefault(ref.get("sampleID", ""), []).append(group.get("name", ""))
    return groups


def _group_names(document: etree._Element) -> tuple[str, ...]:
    return tuple(g.get("name", "") for g in document.iterfind("Groups/GroupNode"))
