"""The exceptions cartflow raises for bad input: each names the file and the problem."""

from __future__ import annotations

import re
from pathlib import Path


class CartflowError(Exception):
    """Base class: a problem with the input, reported to the user in one line."""

    def __init__(self, source: str | Path | None, problem: str) -> None:
        self.source = str(source) if source is not None else None
        self.problem = problem
        message = f"{self.source}: {problem}" if self.source else problem
        super().__init__(_one_line(message))

    @property
    def kind(self) -> str:
        """Short machine-readable name of the error class, e.g. ``fcs-format``."""
        return getattr(self, "code", "error")


def _one_line(text: str) -> str:
    """Control characters (a newline in a file name) escaped, so a message stays one line."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


class FcsError(CartflowError):
    """The file is not a readable FCS data set."""

    code = "fcs-format"


class FcsUnsupportedError(FcsError):
    """A valid FCS feature this reader deliberately does not handle."""

    code = "fcs-unsupported"


class PanelError(CartflowError):
    """A panel definition is invalid, or a file does not fit any panel."""

    code = "panel"


class PanelMismatchError(PanelError):
    """The file's channels or markers do not fit the panel its tube needs."""

    code = "panel-mismatch"


class IdentityError(CartflowError):
    """Patient, timepoint or tube cannot be established for a file."""

    code = "identity"


class ManifestError(CartflowError):
    """The manifest CSV is malformed."""

    code = "manifest"


class StoreError(CartflowError):
    """The results store cannot be opened, or it is not a cartflow store of this schema."""

    code = "store"


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its class name when it has none)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def yaml_problem(source: str | Path, exc: Exception) -> tuple[str, str]:
    """``(source, problem)`` of a YAML parse error in one line each: the source gains the
    line number where the parser stopped, the problem is the parser's own words."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{source} line {mark.line + 1}" if mark else str(source)
    problem = getattr(exc, "problem", None) or first_line(exc)
    return where, f"invalid YAML: {problem}"


def yaml_node_lines(node) -> dict[str, int]:
    """1-based line of every mapping key and sequence item of a composed YAML node tree, by
    a dotted path (``populations[2].gate``, ``''`` for the whole document)."""
    import yaml

    found: dict[str, int] = {}

    def walk(node: yaml.Node, path: str) -> None:
        found.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = f"{path}.{key.value}" if path else str(key.value)
                found[name] = key.start_mark.line + 1
                walk(value, name)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{path}[{i}]")

    if node is not None:
        walk(node, "")
    return found


_LAST_STEP = re.compile(r"(\.[^.\[\]]+|\[\d+\])$")


class YamlPlaces:
    """Where each key of a YAML file lies, so that an error about a key names the file and
    its line (a key not found falls back to the nearest enclosing one, then line 1)."""

    def __init__(self, source: str | Path, lines: dict[str, int]) -> None:
        self.source = source
        self.lines = lines

    @classmethod
    def of_text(cls, source: str | Path, text: str) -> YamlPlaces:
        """The places of a YAML text (none when it does not compose)."""
        import yaml

        try:
            return cls(source, yaml_node_lines(yaml.compose(text)))
        except yaml.YAMLError:
            return cls(source, {})

    def line(self, key: str) -> int:
        line = self.lines.get(key)
        while line is None and key:
            key = _LAST_STEP.sub("", key) if _LAST_STEP.search(key) else ""
            line = self.lines.get(key)
        return line or 1

    def where(self, key: str = "") -> str:
        """``'<file> line <n>'`` of a key."""
        return f"{self.source} line {self.line(key)}"
