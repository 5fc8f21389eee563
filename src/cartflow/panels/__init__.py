"""Panel definitions (one YAML file per tube, with one layout per cytometer) and the loader
that matches files.

A panel says which detector carries which marker. A file is matched to a panel by its
channel names ($PnN) and checked by its marker labels ($PnS), whose spellings vary by lab:
``CD45RA BV421``, ``CD45RA-FITC`` and ``CD45RA`` all name CD45RA. Spellings of one marker
are declared in ``markers.yaml``; one antigen read as another (a lab staining CCR7 where
the templates ask for CD62L) only when declared there under ``read_as``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from cartflow.io.errors import PanelError, PanelMismatchError, YamlPlaces, yaml_problem

PANEL_DIR = Path(__file__).resolve().parent
NON_PANEL_YAML = frozenset(
    {"markers.yaml", "fluorochromes.yaml", "hematotox.yaml", "analysis.yaml", "identity.yaml",
     "lab.yaml"}
)  # fmt: skip
"""Files of a configuration folder that are not panels."""
_NON_FILE_YAML = NON_PANEL_YAML
MARKER_NAME = re.compile(r"^[^\s+]+$")
"""A marker name as a template phenotype writes it: no spaces and no '+' (``NK1.1``,
``TCRγδ``, ``Live/Dead``, ``HLA-DR``)."""
PANEL_FIELDS = frozenset(
    {"id", "version", "tube", "tube_names", "cytometer", "description", "scatter", "time",
     "beads", "omitted", "channels", "layouts", "spillover", "marker_labels", "gate_options"}
)  # fmt: skip
LAYOUT_FIELDS = frozenset(
    {"id", "cytometer", "scatter", "time", "channels", "spillover", "gate_options"}
)


@dataclass(frozen=True)
class PanelChannel:
    channel: str
    marker: str
    fluorochrome: str


@dataclass(frozen=True)
class Panel:
    """One tube on one cytometer (one layout of a panel file): detector → marker."""

    id: str
    version: int
    tube: str
    tube_names: tuple[str, ...]
    cytometer: str
    scatter: tuple[str, ...]
    time: str | None
    beads: bool
    channels: tuple[PanelChannel, ...]
    omitted: dict[str, str] = field(default_factory=dict)
    description: str = ""
    sha256: str = ""
    source: str = ""
    spillover: str | None = None
    """A spillover matrix CSV (relative to the configuration folder) to compensate with."""
    labels_required: bool = True
    """Whether each detector's $PnS must name its marker (``marker_labels: required``); with
    ``optional`` a detector without a label is taken to carry the panel's marker (a label
    that is there must still agree)."""
    gate_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """This cytometer's settings for the tube's template: population id → options of its
    gate (``{cells: {start: anchors}}``), set over the template's own when a file is gated;
    checked against the template when the configuration is read."""
    gate_option_lines: Mapping[tuple[str, str], int] = field(
        default_factory=dict, compare=False, repr=False
    )
    """The line of each ``gate_options`` entry: ``(population, option)``, option ``""`` for
    the population's own line."""

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
        time = (self.time,) if self.time else ()
        return (*self.scatter, *time, *(c.channel for c in self.channels))

    def answers_to(self, tube_label: str) -> bool:
        """Whether a manifest or keyword tube label names this panel's tube."""
        wanted = _squash(tube_label)
        return any(_squash(name) == wanted for name in (self.tube, *self.tube_names))


@dataclass(frozen=True)
class PanelMatch:
    """The panel chosen for a file and the channel carrying each of its markers."""

    panel: Panel
    marker_channels: dict[str, str]


@dataclass(frozen=True)
class ReadAs:
    """One antigen read as another, as the lab declared it (``CCR7`` read as ``CD62L``)."""

    antigen: str
    marker: str
    where: str


@dataclass(frozen=True)
class MarkerNames:
    """Marker spellings (squashed spelling → marker), fluorochrome names to strip from a
    label, and the declared reading of one antigen as another."""

    aliases: Mapping[str, str]
    fluorochromes: tuple[str, ...]
    read_as: tuple[ReadAs, ...] = ()

    def with_markers(self, markers: Iterable[str]) -> MarkerNames:
        """These names, plus each of ``markers`` as a spelling of itself."""
        extra = {_squash(m): m for m in markers if _squash(m) not in self.aliases}
        if not extra:
            return self
        return MarkerNames({**self.aliases, **extra}, self.fluorochromes, self.read_as)

    def resolve(self, label: str | None) -> str | None:
        """The marker a $PnS label names, or None when it names none known."""
        if not label:
            return None
        squashed = _squash(label)
        if squashed in self.aliases:
            return self.aliases[squashed]
        for fluor in self.fluorochromes:
            for candidate in (squashed.removesuffix(fluor), squashed.removeprefix(fluor)):
                if candidate != squashed and candidate in self.aliases:
                    return self.aliases[candidate]
        return None

    def canonical(self, marker: str) -> str:
        """A panel's marker name as the templates know it (its declared spelling, else
        itself)."""
        return self.aliases.get(_squash(marker), marker)


def _squash(text: str) -> str:
    return re.sub(r"[\s\-_.]+", "", text).upper()


class _Located(YamlPlaces):
    """Errors of one YAML file, each naming the line of the key it is about."""

    def __init__(self, path: Path, text: str) -> None:
        super().__init__(path, YamlPlaces.of_text(path, text).lines)

    def error(self, key: str, problem: str, error=PanelError) -> PanelError:
        return error(self.where(key), problem)


def _read_yaml(path: Path) -> tuple[object, str]:
    try:
        text = path.read_text(encoding="utf-8")
        return yaml.safe_load(text), text
    except yaml.YAMLError as exc:
        raise PanelError(*yaml_problem(path, exc)) from exc
    except (OSError, UnicodeDecodeError) as exc:
        problem = getattr(exc, "strerror", None) or exc
        raise PanelError(path, f"cannot be read: {problem}") from exc


def read_marker_names(directory: Path = PANEL_DIR) -> MarkerNames:
    """``markers.yaml`` (marker: [spellings], and ``read_as: {antigen: marker}``) and
    ``fluorochromes.yaml`` of a configuration folder."""
    path = directory / "markers.yaml"
    raw, text = _read_yaml(path) if path.is_file() else ({}, "")
    where = _Located(path, text)
    if not isinstance(raw, dict):
        raise where.error("", "must be a mapping of marker: [spellings]")
    aliases: dict[str, str] = {}
    read_as = []
    for marker, spellings in raw.items():
        if marker == "read_as":
            if not isinstance(spellings, dict):
                raise where.error("read_as", "read_as must be a mapping of antigen: marker")
            for antigen, target in spellings.items():
                if not isinstance(target, str) or not MARKER_NAME.match(target):
                    raise where.error(f"read_as.{antigen}", f"read_as {antigen}: {target!r} "
                                      "is not a marker name")  # fmt: skip
                read_as.append(ReadAs(str(antigen), target, where.where(f"read_as.{antigen}")))
            continue
        if not MARKER_NAME.match(str(marker)):
            raise where.error(str(marker), f"marker {marker!r} has a space or '+' in its name")
        if not isinstance(spellings, list):
            raise where.error(str(marker), f"{marker}: expected a list of spellings")
        for spelling in (marker, *spellings):
            key = _squash(str(spelling))
            if aliases.get(key, marker) != marker:
                raise where.error(
                    str(marker),
                    f"spelling {spelling!r} names both {aliases[key]} and {marker}; an antigen "
                    "read as another belongs under read_as",
                )
            aliases[key] = str(marker)
    for entry in read_as:
        key = _squash(entry.antigen)
        if aliases.get(key, entry.marker) != entry.marker:
            raise PanelError(
                entry.where,
                f"read_as: {entry.antigen} is a spelling of {aliases[key]}, "
                f"it cannot also be read as {entry.marker}",
            )
        aliases[key] = entry.marker
    fluor_path = directory / "fluorochromes.yaml"
    fluors, fluor_text = _read_yaml(fluor_path) if fluor_path.is_file() else ([], "")
    fluor_places = _Located(fluor_path, fluor_text)
    if not isinstance(fluors, list):
        raise fluor_places.error("", "must be a list of fluorochrome names")
    for i, name in enumerate(fluors):
        if not isinstance(name, str) or not name.strip():
            raise fluor_places.error(f"[{i}]", f"{name!r} is not a fluorochrome name")
    names = {_squash(str(n)) for n in fluors}
    # longest first, so that a name within a longer one is tried after it; then alphabetical,
    # so the order (and every hash over it) is the same in every process
    ordered = tuple(sorted(names, key=lambda name: (-len(name), name)))
    return MarkerNames(aliases, ordered, tuple(read_as))


load_marker_names = cache(read_marker_names)
""":func:`read_marker_names`, read once per process and folder."""


def marker_from_label(label: str | None, directory: Path = PANEL_DIR) -> str | None:
    """The canonical marker a $PnS label names, or None when it names none we know."""
    return load_marker_names(directory).resolve(label)


def _channels(where: _Located, raw, key: str, names: MarkerNames) -> tuple[PanelChannel, ...]:
    if not isinstance(raw, list) or not raw:
        raise where.error(key, f"{key} must be a list of {{channel, marker}}")
    channels = []
    for i, entry in enumerate(raw):
        item = f"{key}[{i}]"
        if not isinstance(entry, dict) or not {"channel", "marker"} <= entry.keys():
            raise where.error(item, f"{item} needs 'channel' and 'marker'")
        if entry["marker"] is None or not str(entry["marker"]).strip():
            raise where.error(
                item, f"{item}: channel {entry['channel']!r} has no marker: name the marker it "
                "carries, or remove the line if it carries none"
            )  # fmt: skip
        marker = str(entry["marker"]).strip()
        if not MARKER_NAME.match(marker):
            raise where.error(
                f"{item}.marker", f"marker {marker!r}: a marker name has no spaces and no '+'"
            )
        channels.append(
            PanelChannel(str(entry["channel"]), names.canonical(marker),
                         str(entry.get("fluorochrome") or ""))
        )  # fmt: skip
    markers = [c.marker for c in channels]
    duplicates = sorted({m for m in markers if markers.count(m) > 1})
    if duplicates:
        raise where.error(key, f"marker(s) on more than one channel: {', '.join(duplicates)}")
    detectors = [c.channel for c in channels]
    doubled = sorted({d for d in detectors if detectors.count(d) > 1})
    if doubled:
        raise where.error(key, f"detector(s) listed twice: {', '.join(doubled)}")
    return tuple(channels)


def _gate_options(
    where: _Located, raw: dict, layout: dict, key: str
) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], int]]:
    """A layout's ``gate_options`` (the file's, each population's options updated by the
    layout's own) and the line of each entry; only their shape is checked here, their
    names and values against the tube's template when the configuration is read."""
    merged: dict[str, dict[str, Any]] = {}
    lines: dict[tuple[str, str], int] = {}
    for prefix, entry in (("", raw), *(((f"{key}.", layout),) if key else ())):
        given = entry.get("gate_options")
        if given is None:
            continue
        at = f"{prefix}gate_options"
        if not isinstance(given, dict):
            raise where.error(at, "gate_options must map population ids to their options")
        for population, options in given.items():
            if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
                raise where.error(
                    f"{at}.{population}",
                    f"gate_options {population}: expected a mapping of option: value "
                    "(e.g. {start: anchors})",
                )
            merged.setdefault(str(population), {}).update(options)
            lines[(str(population), "")] = where.line(f"{at}.{population}")
            for option in options:
                lines[(str(population), option)] = where.line(f"{at}.{population}.{option}")
    return merged, lines


def load_panel_layouts(path: Path, names: MarkerNames | None = None) -> tuple[Panel, ...]:
    """Load and validate one panel YAML file: one Panel per layout (a file without
    ``layouts`` is one layout). Each problem names the file and line."""
    names = names or load_marker_names(path.parent)
    raw, text = _read_yaml(path)
    where = _Located(path, text)
    if not isinstance(raw, dict):
        raise where.error("", "a panel file must be a mapping")
    unknown = sorted(map(str, set(raw) - PANEL_FIELDS))
    if unknown:
        raise where.error(unknown[0], f"unknown field {unknown[0]!r} (known: "
                          f"{', '.join(sorted(PANEL_FIELDS))})")  # fmt: skip
    layout_keys = ("cytometer", "channels", "scatter", "time")
    needed = ("id", "tube") + (() if "layouts" in raw else layout_keys)
    missing = [k for k in needed if k not in raw]
    if missing:
        raise where.error("", f"missing field(s): {', '.join(missing)}")
    layouts = raw.get("layouts")
    if layouts is None:
        entries = [("", {k: raw.get(k) for k in (*layout_keys, "spillover")}, raw)]
    elif not isinstance(layouts, list) or not layouts:
        raise where.error("layouts", "layouts must be a list of {id, cytometer, channels, …}")
    else:
        entries = []
        for i, layout in enumerate(layouts):
            key = f"layouts[{i}]"
            if not isinstance(layout, dict) or "id" not in layout:
                raise where.error(key, f"{key} needs an 'id'")
            unknown = sorted(map(str, set(layout) - LAYOUT_FIELDS))
            if unknown:
                raise where.error(f"{key}.{unknown[0]}", f"unknown layout field {unknown[0]!r}")
            merged = {k: layout.get(k, raw.get(k)) for k in (*layout_keys, "spillover")}
            absent = [k for k in layout_keys if k != "time" and merged[k] is None]
            if absent:
                raise where.error(key, f"{key} misses {', '.join(absent)}")
            entries.append((key, merged | {"id": str(layout["id"])}, layout))
    try:
        version = int(raw.get("version", 1))
    except (TypeError, ValueError):
        raise where.error("version", f"version must be a number, not {raw['version']!r}") from None
    omitted = raw.get("omitted") or {}
    if not isinstance(omitted, dict):
        raise where.error("omitted", "omitted must be a mapping of marker: reason")
    labels = raw.get("marker_labels", "required")
    if labels not in ("required", "optional"):
        raise where.error("marker_labels", "marker_labels must be 'required' or 'optional'")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    panels = []
    for key, entry, own in entries:
        prefix = f"{key}." if key else ""
        gate_options, option_lines = _gate_options(where, raw, own, key)
        scatter = entry["scatter"]
        if not isinstance(scatter, list) or len(scatter) != 3:
            raise where.error(f"{prefix}scatter", "scatter must list [FSC-A, FSC-H, SSC-A]")
        time = entry.get("time")
        panels.append(
            Panel(
                id=str(raw["id"]) + (f"/{entry['id']}" if key else ""),
                version=version,
                tube=str(raw["tube"]),
                tube_names=tuple(str(n) for n in raw.get("tube_names") or ()),
                cytometer=str(entry["cytometer"]),
                scatter=tuple(str(s) for s in scatter),
                time=str(time) if time else None,
                beads=bool(raw.get("beads", False)),
                channels=_channels(where, entry["channels"], f"{prefix}channels", names),
                omitted={names.canonical(str(k)): str(v) for k, v in omitted.items()},
                description=str(raw.get("description", "")).strip(),
                sha256=digest,
                source=str(path),
                spillover=str(entry["spillover"]) if entry.get("spillover") else None,
                labels_required=labels == "required",
                gate_options=gate_options,
                gate_option_lines=option_lines,
            )
        )
    return tuple(panels)


def load_panel(path: Path, names: MarkerNames | None = None) -> Panel:
    """Load one panel YAML file of a single layout."""
    panels = load_panel_layouts(path, names)
    if len(panels) != 1:
        raise PanelError(path, f"has {len(panels)} layouts; load it with load_panel_layouts")
    return panels[0]


def panel_files(directory: Path) -> list[Path]:
    """The panel YAML files of a configuration folder."""
    return sorted(p for p in directory.glob("*.yaml") if p.name not in NON_PANEL_YAML)


def read_panels(directory: Path, names: MarkerNames) -> tuple[Panel, ...]:
    """Every panel (layout) of a configuration folder, sorted by file."""
    panels = tuple(p for path in panel_files(directory) for p in load_panel_layouts(path, names))
    seen: dict[str, str] = {}
    for panel in panels:
        if panel.id in seen:
            raise PanelError(panel.source, f"panel id {panel.id!r} is used by {seen[panel.id]} too")
        seen[panel.id] = panel.source
    return panels


@cache
def load_panels(directory: Path = PANEL_DIR) -> tuple[Panel, ...]:
    """:func:`read_panels` of a folder with its own marker names, read once per process."""
    return read_panels(directory, load_marker_names(directory))


def match_panel(
    source: str | Path,
    channels: Sequence[tuple[str, str | None]],
    panels: Iterable[Panel],
    tube: str | None = None,
    names: MarkerNames | None = None,
) -> PanelMatch:
    """Choose the panel a file fits, from its (``$PnN``, ``$PnS``) pairs.

    Candidates are panels whose detectors all exist in the file (and whose tube is ``tube``
    when given); among them the one with the most markers confirmed by $PnS wins. A best
    candidate that misses markers raises :class:`PanelMismatchError` naming them.
    """
    panels = tuple(panels)
    names = (names or load_marker_names()).with_markers(m for p in panels for m in p.markers)
    raw_labels = dict(channels)
    labels = {name: names.resolve(label) for name, label in channels}
    candidates = [p for p in panels if set(p.required_channels) <= labels.keys()]
    hint = " (`cartflow panel check FILE` shows the closest panel and what differs)"
    if tube is not None:
        by_tube = [p for p in candidates if p.answers_to(tube)]
        if not by_tube:
            layouts = ", ".join(sorted({p.cytometer for p in candidates})) or "none"
            raise PanelMismatchError(
                source,
                f"no panel for tube {tube!r} fits the file's channels (layouts: {layouts})" + hint,
            )
        candidates = by_tube
    if not candidates:
        raise PanelMismatchError(
            source,
            "channels fit no known panel layout: " + ", ".join(n for n, _ in channels) + hint,
        )

    def missing(panel: Panel) -> list[str]:
        return [
            c.marker
            for c in panel.channels
            if labels.get(c.channel) != c.marker
            and (panel.labels_required or raw_labels.get(c.channel))
        ]

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
