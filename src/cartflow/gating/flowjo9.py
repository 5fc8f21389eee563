"""FlowJo 9 (pre-10) workspaces: each sample's polygon gates, with FlowJo's stored counts.

FlowJo 9 stores a polygon's vertices as data values, and draws its edges straight on the
display scale of each axis. That scale is a calibration table of the workspace (display
channel → value, one table per compensation matrix and parameter); a gate's axes are read
on that table (:class:`~cartflow.gating.transforms.TableScale`), so its edges are straight where
FlowJo drew them. An axis written ``<FITC-A>`` is compensated with the sample's matrix of the
workspace; a linear parameter has no table. Polygon gates are read; any other gate is an
error naming it, with the way forward (open and save the workspace in FlowJo 10).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
from lxml import etree

from cartflow.gating.errors import GatingError
from cartflow.gating.model import Bound, Dimension, GateSet, PolygonGate, RangeGate, SpectrumMatrix
from cartflow.gating.samples import match_sample
from cartflow.gating.transforms import TableScale

SAVE_IN_FLOWJO10 = "open the workspace in FlowJo 10 and save it again"


@dataclass(frozen=True)
class Flowjo9Population:
    """A population of a FlowJo 9 sample: its path, gate kind and FlowJo's count."""

    path: str
    kind: str
    count: int | None
    element: etree._Element


@dataclass(frozen=True)
class Flowjo9Sample:
    """One sample of a FlowJo 9 workspace."""

    sample_id: str
    name: str
    file_name: str | None
    keywords: MappingProxyType
    event_count: int | None
    compensation: str | None
    parameters: MappingProxyType
    populations: tuple[Flowjo9Population, ...]

    def stored_counts(self) -> dict[str, int]:
        """FlowJo's count of each population (by path), where it stored one."""
        return {p.path: p.count for p in self.populations if p.count is not None}


class Flowjo9Workspace:
    """A FlowJo 9 workspace: samples, matrices and calibration tables."""

    def __init__(self, path: Path, document: etree._Element) -> None:
        self.path = path
        self.version = document.get("flowJoVersion", "9")
        self.matrices = _matrices(document)
        self.tables = _tables(document)
        self.samples = tuple(_samples(document, self.matrices))

    def match(self, file_name: str, fil: str | None = None, event_count: int | None = None):
        """The sample a data file belongs to (by $FIL name, then a unique event count)."""
        return match_sample(self.samples, self.path, file_name, fil, event_count)

    def gates_for(
        self, file_name: str, fil: str | None = None, event_count: int | None = None
    ) -> GateSet:
        """The gates of the sample a data file belongs to."""
        sample = self.match(file_name, fil, event_count)
        gate_set = self.gate_set(sample)
        if not gate_set.gates:
            raise GatingError(self.path, f"sample {sample.name} has no gates")
        return gate_set

    def gate_set(self, sample: Flowjo9Sample) -> GateSet:
        """The sample's gates, each with its full path as id."""
        transforms: dict[str, TableScale] = {}
        compensations: dict[str, SpectrumMatrix] = {}
        gates = []
        for population in sample.populations:
            where = f"FlowJo {self.version} sample {sample.name}: gate {population.path!r}"
            if population.kind != "PolygonGate":
                raise GatingError(
                    self.path,
                    f"{where} is a {population.kind}, which cartflow cannot read from a "
                    f"FlowJo 9 workspace (it reads polygons): {SAVE_IN_FLOWJO10}",
                )
            gate = population.element.find("PolygonGate")
            names = [s.text for s in gate.iterfind("ParameterNames/StringArray/String")]
            vertices = tuple(
                (float(v.get("x")), float(v.get("y"))) for v in gate.iterfind(".//Polygon/Vertex")
            )
            parent = population.path.rpartition("/")[0] or None
            if len(names) == 2 and names[0] and not names[1] and len(vertices) == 2:
                # a range drawn on a histogram: its two ends on the one parameter
                axis = self._axis(sample, names[0], where, None, compensations)
                low, high = sorted(x for x, _ in vertices)
                gates.append(RangeGate(population.path, parent, Bound(axis, low, high)))
                continue
            if len(names) != 2 or not all(names) or len(vertices) < 3:
                raise GatingError(
                    self.path,
                    f"{where} is not a two-parameter polygon (parameters {names}, "
                    f"{len(vertices)} vertices): {SAVE_IN_FLOWJO10}",
                )
            axes = tuple(
                self._axis(sample, name, where, transforms, compensations) for name in names
            )
            scaled = tuple(
                tuple(
                    float(transforms[a.transform].apply(np.array([v]))[0]) if a.transform else v
                    for a, v in zip(axes, vertex, strict=True)
                )
                for vertex in vertices
            )
            gates.append(PolygonGate(population.path, parent, axes, scaled))
        return GateSet(tuple(gates), transforms, compensations)

    def _axis(self, sample, name, where, transforms, compensations) -> Dimension:
        """An axis of a gate (a range passes no ``transforms``: it is read on raw values)."""
        compensated = name.startswith("<") and name.endswith(">")
        channel = name[1:-1] if compensated else name
        parameter = sample.parameters.get(channel)
        if parameter is None:
            raise GatingError(self.path, f"{where} uses {name}, not a parameter of the sample")
        matrix = None
        if compensated:
            if sample.compensation not in self.matrices:
                raise GatingError(self.path, f"{where} uses {name}, but the sample has no matrix")
            matrix = sample.compensation
            compensations[matrix] = self.matrices[matrix]
        if parameter.get("log") != "1":
            return Dimension(channel, matrix)
        table_name = f"{matrix} {name}" if compensated else None
        if table_name is None or table_name not in self.tables:
            raise GatingError(
                self.path,
                f"{where} is drawn on the log scale of {name}, whose calibration table is not "
                f"in the workspace: {SAVE_IN_FLOWJO10}",
            )
        if transforms is None:
            return Dimension(channel, matrix)
        transforms[table_name] = self.tables[table_name]
        return Dimension(channel, matrix, table_name)


def _matrices(document: etree._Element) -> dict[str, SpectrumMatrix]:
    matrices = {}
    for element in document.iterfind("CompensationMatrices/CompensationMatrix"):
        rows = element.findall("Channel")
        detectors = tuple(r.get("name") for r in rows)
        coefficients = tuple(
            tuple(float(v.get("value")) for v in r.findall("ChannelValue")) for r in rows
        )
        matrices[element.get("name")] = SpectrumMatrix(detectors, detectors, coefficients)
    return matrices


def _tables(document: etree._Element) -> dict[str, TableScale]:
    tables = {}
    for element in document.iterfind("CalibrationTables/Table"):
        numbers = [float(v) for v in (element.text or "").split(",") if v.strip()]
        values = tuple(numbers[1::2])
        if len(values) > 1 and bool(np.all(np.diff(values) > 0)):  # else a gate on it is refused
            tables[element.get("name")] = TableScale(values)
    return tables


def _samples(document: etree._Element, matrices) -> Iterator[Flowjo9Sample]:
    ids = {m: str(i) for i, m in enumerate(matrices, start=1)}
    by_id = {v: k for k, v in ids.items()}
    for sample in document.iterfind("SampleList/Sample"):
        node = sample.find("SampleNode")
        if node is None:
            continue
        keywords = {
            k.get("name", ""): (k.get("value") or "").strip()
            for k in sample.iterfind("Keywords/Keyword")
        }
        fil = keywords.get("$FIL") or None
        yield Flowjo9Sample(
            sample_id=sample.get("sampleID", ""),
            name=fil or node.get("name", ""),
            file_name=fil,
            keywords=MappingProxyType(keywords),
            event_count=_int(sample.get("eventCount")),
            compensation=by_id.get(sample.get("compensationID", "")),
            parameters=MappingProxyType({p.get("name"): p for p in sample.iterfind("Parameter")}),
            populations=tuple(_populations(node, "")),
        )


def _populations(node: etree._Element, prefix: str) -> Iterator[Flowjo9Population]:
    for child in node.iterfind("Population"):
        path = f"{prefix}{child.get('name', '')}"
        gates = [c.tag for c in child if c.tag.endswith("Gate")]
        kind = gates[0] if gates else "population without a gate"
        yield Flowjo9Population(path, kind, _int(child.get("count")), child)
        yield from _populations(child, f"{path}/")


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
