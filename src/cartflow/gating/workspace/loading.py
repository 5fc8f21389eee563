"""A lab's gating file, told apart by its content and parsed safely."""

from __future__ import annotations

from pathlib import Path

from lxml import etree

from cartflow.gating.errors import GatingError
from cartflow.gating.workspace.flowjo10 import FlowJoWorkspace, read_flowjo_workspace
from cartflow.gating.workspace.sources import GatingMLGates

MAX_WORKSPACE_BYTES = 200 * 2**20
"""Workspaces larger than this (200 MiB) are refused unread."""


def load_lab_gates(path: str | Path):
    """A lab's fixed gates: a Gating-ML 2.0 document, a FlowJo 10 workspace or a FACSDiva
    experiment export, told apart by their content; ``lab.wsp#GROUP`` names a sample group
    of a FlowJo 10 workspace, whose own gates then serve every file. Any other format is
    refused with its name and the way forward."""
    from cartflow.gating.gatingml import load_gatingml

    path = Path(path)
    if not path.exists() and "#" in path.name:
        file, _, group = str(path).rpartition("#")
        workspace = load_lab_gates(file)
        if not isinstance(workspace, FlowJoWorkspace):
            raise GatingError(
                file, f"is not a FlowJo 10 workspace: it has no sample group {group!r}"
            )
        return workspace.group(group)
    root, document = _parse_document(path)
    if root == "Workspace":
        if not _is_flowjo10(document):
            from cartflow.gating.flowjo9 import Flowjo9Workspace

            return Flowjo9Workspace(path, document)
        return read_flowjo_workspace(path, document)
    if root == "bdfacs":
        from cartflow.gating.diva import DivaExperiment

        return DivaExperiment(path, document)
    if root.endswith("}Gating-ML"):
        return GatingMLGates(path, load_gatingml(path))
    raise GatingError(
        path,
        f"is neither Gating-ML 2.0, a FlowJo 10 workspace nor a FACSDiva export (its root "
        f"element is <{root}>)",
    )


def _is_flowjo10(document: etree._Element) -> bool:
    """FlowJo 10 writes workspace version 20 and up (FlowJo 9 wrote 1.x and 2.0)."""
    try:
        return float(document.get("version", "0")) >= 20
    except ValueError:
        return document.get("flowJoVersion", "").startswith("10")


def _parse_document(path: Path) -> tuple[str, etree._Element | None]:
    """The root element's name and, for a workspace or DIVA export, the parsed document.

    Parsed without DTDs, entities or network; FlowJo 9's bare ``<!DOCTYPE Workspace>`` is
    let through, any other DOCTYPE or an entity reference is refused."""
    from cartflow.gating.gatingml import (
        DoctypeFoundError,
        DoctypeGuard,
        TooManyGatesError,
        read_bounded,
        safe_parser,
    )

    data = read_bounded(path, MAX_WORKSPACE_BYTES)
    guard = DoctypeGuard()
    try:
        etree.fromstring(data, safe_parser(target=guard))
    except DoctypeFoundError as exc:
        if str(exc) != "Workspace":
            raise GatingError(
                path, "has a DOCTYPE declaration; such documents are refused"
            ) from exc
    except TooManyGatesError as exc:
        raise GatingError(path, str(exc)) from exc
    except etree.XMLSyntaxError as exc:
        raise GatingError(path, f"is not well-formed XML: {exc}") from exc
    root = guard.root or ""
    if root.endswith("}Gating-ML"):
        return root, None
    try:
        document = etree.fromstring(data, safe_parser())
    except etree.XMLSyntaxError as exc:
        raise GatingError(path, f"is not well-formed XML: {exc}") from exc
    tree = document.getroottree()
    internal = tree.docinfo.internalDTD
    if next(document.iter(etree.Entity), None) is not None or (
        internal is not None and (internal.entities() or internal.elements())
    ):
        raise GatingError(path, "declares or references entities; such documents are refused")
    return document.tag, document
