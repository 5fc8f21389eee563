"""Drafting a panel from a lab's FCS files, and saying which panel a file fits and, when
none, how the closest one differs."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cartflow.io.errors import CartflowError
from cartflow.io.fcs import Channel, FcsFile, read_fcs
from cartflow.panels import MARKER_NAME, MarkerNames, Panel, ReadAs, match_panel

SCATTER_ROLES = {"FSC-A": r"^FSC[\s_-]*A$", "FSC-H": r"^FSC[\s_-]*H$", "SSC-A": r"^SSC[\s_-]*A$"}


@dataclass(frozen=True)
class DraftChannel:
    """One fluorescence detector of the draft: its marker, or why it has none yet."""

    channel: str
    marker: str | None
    fluorochrome: str
    note: str = ""
    """How the marker was found, or what is unresolved (then ``marker`` is None)."""


@dataclass(frozen=True)
class DraftLayout:
    cytometer: str
    files: tuple[str, ...]
    scatter: tuple[str | None, ...]
    time: str | None
    channels: tuple[DraftChannel, ...]


@dataclass(frozen=True)
class PanelDraft:
    """A panel drafted from files: its layouts, what is unresolved, where files disagree."""

    tube: str
    layouts: tuple[DraftLayout, ...]
    disagreements: tuple[str, ...] = ()
    unused: tuple[str, ...] = field(default=())

    @property
    def unresolved(self) -> list[str]:
        found = []
        for layout in self.layouts:
            if None in layout.scatter:
                missing = [r for r, c in zip(SCATTER_ROLES, layout.scatter, strict=True) if not c]
                found.append(f"{layout.cytometer}: no {', '.join(missing)} channel found")
            where = layout.cytometer
            found += [f"{where}: {c.channel}: {c.note}" for c in layout.channels if not c.marker]
        return found

    def yaml(self) -> str:
        """The draft as panel YAML, unresolved entries marked to fill in by hand."""
        lines = [f"# Drafted by `cartflow panel draft` from {self._sources()}."]
        todo = self.unresolved
        if todo:
            lines.append("# UNRESOLVED (fill in by hand, then `cartflow config check DIR`):")
            lines += [f"#   - {item}" for item in todo]
        lines += [f"# files disagree: {d}" for d in self.disagreements]
        lines += [
            f"id: {_q(self.tube)}",
            "version: 1",
            f"tube: {_q(self.tube)}",
            f"tube_names: [{_q(self.tube)}]",
            "beads: false",
        ]
        if any(not c.note.startswith("$PnS") for lay in self.layouts for c in lay.channels):
            lines.append(
                "# some detectors carry no $PnS label in the files: the panel names their marker"
            )
            lines.append("marker_labels: optional")
        if len(self.layouts) == 1:
            lines += _layout_lines(self.layouts[0], "")
        else:
            lines.append("layouts:")
            for i, layout in enumerate(self.layouts, start=1):
                lines.append(f"  - id: {_q(_slug(layout.cytometer) or f'layout{i}')}")
                lines += _layout_lines(layout, "    ")
        return "\n".join(lines) + "\n"

    def _sources(self) -> str:
        names = [f for layout in self.layouts for f in layout.files]
        return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _q(text: str) -> str:
    """A YAML scalar: plain when safe, else double-quoted (JSON is valid YAML)."""
    if re.fullmatch(r"[A-Za-z0-9][\w .()/+-]*", text) and not text.endswith(" "):
        return text
    return json.dumps(text, ensure_ascii=False)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _layout_lines(layout: DraftLayout, indent: str) -> list[str]:
    scatter = ", ".join(_q(c) if c else "null" for c in layout.scatter)
    lines = [
        f"{indent}cytometer: {_q(layout.cytometer)}",
        f"{indent}scatter: [{scatter}]",
        f"{indent}time: {_q(layout.time) if layout.time else 'null'}"
        + ("" if layout.time else "  # no time channel: the stable-flow check is skipped"),
        f"{indent}channels:",
    ]
    for c in layout.channels:
        marker = _q(c.marker) if c.marker else "null"
        fluor = _q(c.fluorochrome) if c.fluorochrome else '""'
        entry = f"{{channel: {_q(c.channel)}, marker: {marker}, fluorochrome: {fluor}}}"
        comment = f"  # UNRESOLVED: {c.note}" if not c.marker else f"  # {c.note}"
        lines.append(f"{indent}  - {entry}{comment}")
    return lines


def _role(channel: Channel) -> str | None:
    name = channel.name.strip()
    if channel.is_time:
        return "time"
    for role, pattern in SCATTER_ROLES.items():
        if re.match(pattern, name, re.IGNORECASE):
            return role
    return "scatter-other" if channel.is_scatter else None


def _fluorochrome(detector: str, names: MarkerNames) -> str:
    """The fluorochrome a detector is named after (``PE-Cy7-A`` → ``PE-Cy7``), if known."""
    base = re.sub(r"[\s_-]*[AHW]$", "", detector.strip())
    squashed = re.sub(r"[\s\-_.]+", "", base).upper()
    return base if squashed in names.fluorochromes else ""


def draft_channel(channel: Channel, names: MarkerNames) -> DraftChannel:
    """A detector's marker from its $PnS: a declared spelling, else the label as written when
    it can be a marker name; never a guess."""
    fluor = _fluorochrome(channel.name, names)
    label = (channel.marker or "").strip()
    if not label:
        return DraftChannel(
            channel.name, None, fluor, "no $PnS label: name its marker, or delete the line"
        )
    marker = names.resolve(label)
    if marker is not None:
        return DraftChannel(channel.name, marker, fluor, f"$PnS {label!r} (markers.yaml)")
    stripped = _strip_fluorochrome(label, names)
    if MARKER_NAME.match(stripped):
        return DraftChannel(
            channel.name, stripped, fluor, f"$PnS {label!r} as written (not in markers.yaml)"
        )
    return DraftChannel(
        channel.name,
        None,
        fluor,
        f"$PnS {label!r} is not one marker name (no spaces): write the marker it names",
    )


def _strip_fluorochrome(label: str, names: MarkerNames) -> str:
    words = label.split()
    if len(words) > 1:
        for fluor in names.fluorochromes:
            kept = [w for w in words if re.sub(r"[\s\-_.]+", "", w).upper() != fluor]
            if len(kept) == 1:
                return kept[0]
    return label


def draft_panel(files: Sequence[Path], tube: str, names: MarkerNames) -> PanelDraft:
    """A panel for ``tube`` from the files' $PnN/$PnS, one layout per cytometer."""
    if not files:
        raise CartflowError("panel draft", "give at least one FCS file")
    read = [read_fcs(path, events=False) for path in files]
    groups: dict[str, list[FcsFile]] = {}
    for fcs in read:
        groups.setdefault((fcs.cytometer or "unknown cytometer").strip(), []).append(fcs)
    layouts, disagreements, unused = [], [], []
    for cytometer, members in groups.items():
        first = members[0]
        for other in members[1:]:
            disagreements += _differences(first, other)
        roles = {c.name: _role(c) for c in first.channels}
        scatter = tuple(
            next((n for n, r in roles.items() if r == role), None) for role in SCATTER_ROLES
        )
        time = next((n for n, r in roles.items() if r == "time"), None)
        unused += [n for n, r in roles.items() if r == "scatter-other"]
        channels = tuple(draft_channel(c, names) for c in first.channels if roles[c.name] is None)
        files_of = tuple(f.path.name for f in members)
        layouts.append(DraftLayout(cytometer, files_of, scatter, time, channels))
    return PanelDraft(tube, tuple(layouts), tuple(disagreements), tuple(unused))


def _differences(first: FcsFile, other: FcsFile) -> list[str]:
    """How a file's channels differ from the first file of its cytometer."""
    mine = {c.name: (c.marker or "").strip() for c in first.channels}
    theirs = {c.name: (c.marker or "").strip() for c in other.channels}
    found = [f"{other.path.name} lacks channel {n} that {first.path.name} has"
             for n in mine if n not in theirs]  # fmt: skip
    found += [f"{other.path.name} has channel {n} that {first.path.name} lacks"
              for n in theirs if n not in mine]  # fmt: skip
    found += [
        f"{n} is labelled {theirs[n]!r} in {other.path.name}, {mine[n]!r} in {first.path.name}"
        for n in mine
        if n in theirs and theirs[n] != mine[n]
    ]
    return found


@dataclass(frozen=True)
class PanelCheck:
    """Which panel a file fits, or the closest one and what differs."""

    file: Path
    panel: Panel | None
    closest: Panel | None
    differences: tuple[str, ...]
    marker_channels: dict[str, str]
    read_as: tuple[ReadAs, ...]
    problem: str | None = None


def check_file_panel(
    path: Path, panels: Sequence[Panel], names: MarkerNames, tube: str | None = None
) -> PanelCheck:
    """The panel a file matches (and any declared reading of one antigen as another it
    relies on), or the closest panel and exactly what differs from it."""
    fcs = read_fcs(path, events=False)
    pairs = [(c.name, c.marker) for c in fcs.channels]
    try:
        match = match_panel(path, pairs, panels, tube, names)
    except CartflowError as exc:

        def score(panel: Panel) -> tuple[int, str]:  # most markers agreeing, fewest not
            differ = len(panel_differences(panel, fcs, names))
            return (2 * differ - len(panel.channels), panel.id)

        ranked = sorted(panels, key=score)
        closest = ranked[0] if ranked else None
        differences = tuple(panel_differences(closest, fcs, names)) if closest else ()
        return PanelCheck(path, None, closest, differences, {}, (), exc.problem)
    used = _read_as_used(match.panel, fcs, names)
    return PanelCheck(path, match.panel, None, (), match.marker_channels, used)


def _read_as_used(panel: Panel, fcs: FcsFile, names: MarkerNames) -> tuple[ReadAs, ...]:
    labels = {c.name: re.sub(r"[\s\-_.]+", "", c.marker or "").upper() for c in fcs.channels}
    used = []
    for entry in names.read_as:
        antigen = re.sub(r"[\s\-_.]+", "", entry.antigen).upper()
        if entry.marker in panel.markers:
            label = labels.get(panel.channel_for(entry.marker), "")
            if label == antigen or label.startswith(antigen) or label.endswith(antigen):
                used.append(entry)
    return tuple(used)


def panel_differences(panel: Panel, fcs: FcsFile, names: MarkerNames) -> list[str]:
    """What keeps a file from fitting a panel: detectors, scatter, time and markers."""
    names = names.with_markers(panel.markers)
    present = {c.name: c for c in fcs.channels}
    by_marker: dict[str, list[str]] = {}
    for c in fcs.channels:
        marker = names.resolve(c.marker)
        if marker:
            by_marker.setdefault(marker, []).append(c.name)
    found = []
    for role, channel in zip(("FSC-A", "FSC-H", "SSC-A"), panel.scatter, strict=True):
        if channel not in present:
            found.append(f"scatter {role}: the panel's {channel!r} is not in the file")
    if panel.time and panel.time not in present:
        found.append(f"time: the panel's {panel.time!r} is not in the file")
    for entry in panel.channels:
        channel = present.get(entry.channel)
        elsewhere = [n for n in by_marker.get(entry.marker, []) if n != entry.channel]
        where = f" (the file has {entry.marker} on {', '.join(elsewhere)})" if elsewhere else ""
        if channel is None:
            found.append(f"{entry.marker}: detector {entry.channel!r} is not in the file{where}")
            continue
        label = (channel.marker or "").strip()
        got = names.resolve(label)
        if got == entry.marker or (not label and not panel.labels_required):
            continue
        said = f"labelled {label!r}" if label else "not labelled ($PnS)"
        found.append(f"{entry.marker}: detector {entry.channel!r} is {said}{where}")
    return found
