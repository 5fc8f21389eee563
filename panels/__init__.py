"""Panel definitions (one YAML file per tube and cytometer) and the loader that matches files.

A panel says which detector carries which marker. A file is matched to a panel by its
channel names ($PnN) and checked by its marker labels ($PnS), whose spellings vary by lab:
``CD45RA BV421``, ``CD45RA-FITC`` and ``CD45RA`` all name CD45RA.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

from pipeline.errors import PanelError, PanelMismatchError, yaml_problem

PANEL_DIR = Path(__file__).resolve().parent
_NON_FILE_YAML = {"markers.yaml", "fluorochromes.yaml", "hematotox.yaml"}


@dataclass(frozen=True)
class PanelChannel:
    channel: str
    marker: str
    fluorochrome: str


@dataclass(frozen=True)
class Panel:
    """One tube on one cytometer: detector → marker → fluorochrome."""

    id: str
    version: int
    tube: str
    tube_names: tuple[str, ...]
    cytometer: str
    scatter: tuple[str, ...]
    time: str
    beads: bool
    channels: tuple[PanelChannel, ...]
    omitted: dict[str, str] = field(default_factory=dict)
    description: str = ""
    sha256: str = ""

    @property
    def markers(self) -> tuple[str, ...]:
        return tuple(c.marker for c in self.channels)

    def channel_for(self, marker: str) -> str:
        """The detector carrying a marker, e.g. ``channel_for('CD3') == 'APC-H7-A'``."""
        for entry in self.channels:
            if entry.marker == marker:
                return entry.channel
        raise KeyError(f"panel {self.id} has no marker {marker}")

    @property
    def required_channels(self) -> tuple[str, ...]:
        return (*self.scatter, self.time, *(c.channel for c in self.channels))

    def answers_to(self, tube_label: str) -> bool:
        """Whether a manifest or keyword tube label names this panel's tube."""
        wanted = _squash(tube_label)
        return any(_squash(name) == wanted for name in (self.tube, *self.tube_names))


@dataclass(frozen=True)
class PanelMatch:
    """The panel chosen for a file and the channel carrying each of its markers."""

    panel: Panel
    marker_channels: dict[str, str]


def _squash(text: str) -> str:
    return re.sub(r"[\s\-_.]+", "", text).upper()


@cache
def _marker_aliases(directory: Path) -> dict[str, str]:
    raw = _load_yaml(directory / "markers.yaml")
    aliases: dict[str, str] = {}
    for marker, spellings in raw.items():
        for spelling in (marker, *spellings):
            aliases[_squash(str(spelling))] = marker
    return aliases


@cache
def _fluorochromes(directory: Path) -> tuple[str, ...]:
    names = {_squash(str(n)) for n in _load_yaml(directory / "fluorochromes.yaml")}
    return tuple(sorted(names, key=len, reverse=True))


def marker_from_label(label: str | None, directory: Path = PANEL_DIR) -> str | None:
    """The canonical marker a $PnS label names, or None when it names none we know."""
    if not label:
        return None
    aliases = _marker_aliases(directory)
    squashed = _squash(label)
    if squashed in aliases:
        return aliases[squashed]
    for fluor in _fluorochromes(directory):
        for candidate in (squashed.removesuffix(fluor), squashed.removeprefix(fluor)):
            if candidate != squashed and candidate in aliases:
                return aliases[candidate]
    return None


def _load_yaml(path: Path):
    try:
        with path.open(encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise PanelError(*yaml_problem(path, exc)) from exc
    except OSError as exc:
        raise PanelError(path, f"cannot be read: {exc.strerror or exc}") from exc


def load_panel(path: Path) -> Panel:
    """Load and validate one panel YAML file."""
    raw = _load_yaml(path)
    if not isinstance(raw, dict):
        raise PanelError(path, "a panel file must be a mapping")
    missing = [
        k for k in ("id", "tube", "cytometer", "channels", "scatter", "time") if k not in raw
    ]
    if missing:
        raise PanelError(path, f"missing field(s): {', '.join(missing)}")
    known = set(_marker_aliases(path.parent).values())
    channels = []
    for i, entry in enumerate(raw["channels"], start=1):
        if not isinstance(entry, dict) or not {"channel", "marker"} <= entry.keys():
            raise PanelError(path, f"channels[{i}] needs 'channel' and 'marker'")
        if entry["marker"] not in known:
            raise PanelError(path, f"channels[{i}]: unknown marker {entry['marker']!r}")
        channels.append(
            PanelChannel(str(entry["channel"]), entry["marker"], str(entry.get("fluorochrome", "")))
        )
    duplicates = {c.marker for c in channels if [d.marker for d in channels].count(c.marker) > 1}
    if duplicates:
        raise PanelError(
            path, f"marker(s) on more than one channel: {', '.join(sorted(duplicates))}"
        )
    return Panel(
        id=str(raw["id"]),
        version=int(raw.get("version", 1)),
        tube=str(raw["tube"]),
        tube_names=tuple(str(n) for n in raw.get("tube_names", ())),
        cytometer=str(raw["cytometer"]),
        scatter=tuple(raw["scatter"]),
        time=str(raw["time"]),
        beads=bool(raw.get("beads", False)),
        channels=tuple(channels),
        omitted=dict(raw.get("omitted") or {}),
        description=str(raw.get("description", "")).strip(),
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
    )


@cache
def load_panels(directory: Path = PANEL_DIR) -> tuple[Panel, ...]:
    """Every panel YAML file in a directory, sorted by id (read once per process)."""
    files = sorted(p for p in directory.glob("*.yaml") if p.name not in _NON_FILE_YAML)
    panels = tuple(load_panel(p) for p in files)
    ids = [p.id for p in panels]
    if len(set(ids)) != len(ids):
        raise PanelError(directory, "two panel files share an id")
    return panels


def match_panel(
    source: str | Path,
    channels: Sequence[tuple[str, str | None]],
    panels: Iterable[Panel],
    tube: str | None = None,
) -> PanelMatch:
    """Choose the panel a file fits, from its (``$PnN``, ``$PnS``) pairs.

    Candidates are panels whose detectors all exist in the file (and whose tube is ``tube``
    when given); among them the one with the most markers confirmed by $PnS wins. A best
    candidate that misses markers raises :class:`PanelMismatchError` naming them.
    """
    raw_labels = dict(channels)
    labels = {name: marker_from_label(label) for name, label in channels}
    candidates = [p for p in panels if set(p.required_channels) <= labels.keys()]
    if tube is not None:
        by_tube = [p for p in candidates if p.answers_to(tube)]
        if not by_tube:
            layouts = ", ".join(sorted({p.cytometer for p in candidates})) or "none"
            raise PanelMismatchError(
                source, f"no panel for tube {tube!r} fits the file's channels (layouts: {layouts})"
            )
        candidates = by_tube
    if not candidates:
        raise PanelMismatchError(
            source, "channels fit no known panel layout: " + ", ".join(n for n, _ in channels)
        )

    def missing(panel: Panel) -> list[str]:
        return [c.marker for c in panel.channels if labels.get(c.channel) != c.marker]

    ranked = sorted(candidates, key=lambda p: (len(missing(p)), -len(p.channels), p.id))
    best = ranked[0]
    absent = missing(best)
    if absent:
        detail = ", ".join(
            f"{m} (channel {best.channel_for(m)} is labelled "
            f"{raw_labels.get(best.channel_for(m)) or 'nothing'!r})"
            for m in absent
        )
        raise PanelMismatchError(source, f"panel {best.id}: missing marker(s) {detail}")
    return PanelMatch(best, {c.marker: c.channel for c in best.channels})
