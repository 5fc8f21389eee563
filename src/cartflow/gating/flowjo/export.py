"""FlowJo 10 workspace documents: one sample's, several samples' in one, and the file export."""

from __future__ import annotations

import copy
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from lxml import etree

from cartflow.gating.errors import GatingError
from cartflow.gating.flowjo.builder import _Workspace
from cartflow.gating.flowjo.elements import _write_scales, _write_tree
from cartflow.gating.model import GateSet


def workspace_bytes(
    gate_set: GateSet,
    fcs_path: Path,
    events: np.ndarray,
    channel_names: Sequence[str],
    spill: tuple[Sequence[str], np.ndarray] | None,
    group: str = "cartflow",
    keywords: Mapping[str, str] | None = None,
) -> bytes:
    """The FlowJo 10 workspace document for one sample (see :mod:`cartflow.gating.flowjo`);
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
    from cartflow.io.fcs import read_fcs

    fcs = read_fcs(Path(fcs_path))
    spill = (list(fcs.spillover.channels), fcs.spillover.matrix) if fcs.spillover else None
    data = workspace_bytes(gate_set, Path(fcs_path), fcs.events, fcs.channel_names, spill, group)
    batch_workspace([(Path(fcs_path), data)], Path(out), group)
