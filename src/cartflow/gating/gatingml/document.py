"""Safe reading of gating documents: size limits, no DTDs, entities or network."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

from lxml import etree

from cartflow.gating.errors import GatingError

MAX_DOCUMENT_BYTES = 10 * 2**20
"""Gating-ML documents larger than this (10 MiB) are refused unread."""
MAX_GATES = 500
"""Gates of one Gating-ML document or one workspace sample: FlowKit's parser takes time
growing with the square of their number (about 2 s for 500, 40 s for 2,000)."""
MAX_WORKSPACE_GATES = 20 * MAX_GATES
"""Gates of a whole FlowJo workspace (all its samples and groups)."""

GATING_NS = "http://www.isac-net.org/std/Gating-ML/v2.0/gating"
UNCOMPENSATED = "uncompensated"


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
