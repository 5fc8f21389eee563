"""The FlowJo XML of the population tree, its gates and its parameter scales."""

from __future__ import annotations

from lxml import etree

from cartflow.gating.flowjo.nodes import COMP_PREFIX, _Node, _Scale
from cartflow.gating.gatingml import GATING_NS

DATATYPE_NS = "http://www.isac-net.org/std/Gating-ML/v2.0/datatypes"
TRANSFORM_NS = "http://www.isac-net.org/std/Gating-ML/v2.0/transformations"


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
