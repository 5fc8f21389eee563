"""A configuration folder checked whole: every file read with the stage that uses it, every
problem collected (``cartflow config check``), and a folder loaded for a command with its
clinical score table and analysis settings read at once, so that a bad one stops the command
before any work."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cartflow.gating.template import Template, load_template
from cartflow.io.errors import CartflowError
from cartflow.panels import Panel, read_marker_names
from cartflow.panels.config import (
    GATES_FOLDER,
    TEMPLATE_FOLDER,
    LabConfig,
    config_files,
    gate_options_problem,
    load_config,
)
from cartflow.panels.identity_rules import IdentityRules

if TYPE_CHECKING:
    from cartflow.pipeline.clinical import HematotoxTable
    from cartflow.pipeline.outcomes import OutcomeConfig


@dataclass(frozen=True)
class CheckedConfig:
    """A configuration folder with its ALL-Hematotox table and analysis settings as read."""

    config: LabConfig
    hematotox: HematotoxTable | None
    """The folder's point table (None: it has none, the shipped one applies)."""
    analysis: OutcomeConfig
    """The folder's analysis settings (the defaults when it has none)."""


def load_checked_setup(directory: Path | None = None) -> CheckedConfig:
    """:func:`load_config`, with the folder's ALL-Hematotox table and analysis settings read
    now (a bad one raises here, naming its file and line) and kept, for a command to hand
    down."""
    from cartflow.pipeline.outcomes import OutcomeConfig

    config = load_config(directory)
    hematotox = _read_hematotox(config.hematotox) if config.hematotox else None
    analysis = _read_analysis(config.analysis) if config.analysis else OutcomeConfig()
    return CheckedConfig(config, hematotox, analysis)


@dataclass(frozen=True)
class ConfigReport:
    """What ``config check`` found: the problems (each naming file and line) and, where a
    part could be read, what it holds."""

    directory: Path
    problems: tuple[str, ...]
    config: LabConfig | None
    templates: dict[str, Template]

    @property
    def ok(self) -> bool:
        return not self.problems


def check_config(directory: Path) -> ConfigReport:
    """Validate every file of a configuration folder, collecting all problems."""
    from cartflow.panels import load_panel_layouts, panel_files

    problems: list[str] = []
    if not directory.is_dir():
        return ConfigReport(directory, (f"{directory}: not a folder",), None, {})
    directory = directory.resolve()
    names = None
    try:
        names = read_marker_names(directory)
    except CartflowError as exc:
        problems.append(str(exc))
    panels: list[Panel] = []
    if names is not None:
        for path in panel_files(directory):
            try:
                panels.extend(load_panel_layouts(path, names))
            except CartflowError as exc:
                problems.append(str(exc))
    if not panels and not problems:
        problems.append(f"{directory}: holds no panel")
    templates: dict[str, Template] = {}
    for path in sorted((directory / TEMPLATE_FOLDER).glob("*.yaml")):
        try:
            templates[path.stem] = load_template(path)
        except CartflowError as exc:
            problems.append(str(exc))
    for path in sorted((directory / GATES_FOLDER).glob("*")):
        if path.suffix.lower() not in (".xml", ".wsp"):
            problems.append(f"{path}: not a lab's gates file (gates/TUBE.xml or .wsp)")
            continue
        try:  # a lab's fixed gates: read now, matched to each file when it is gated
            from cartflow.gating.workspace import load_lab_gates

            load_lab_gates(path)
        except CartflowError as exc:
            problems.append(str(exc))
    for path in config_files(directory):
        if path.parent == directory and path.suffix not in (".yaml", ".csv", ".md", ".txt"):
            problems.append(f"{path}: not part of the configuration layout")
    problems.extend(_cross_checks(directory, panels, templates, names))
    for name, reader in (("identity.yaml", IdentityRules.from_yaml),
                         ("hematotox.yaml", _read_hematotox),
                         ("analysis.yaml", _read_analysis)):  # fmt: skip
        path = directory / name
        if path.is_file():
            try:
                reader(path)
            except CartflowError as exc:
                problems.append(str(exc))
    config = None
    if not problems:
        config = load_config(directory)
    return ConfigReport(directory, tuple(problems), config, templates)


def _cross_checks(directory, panels, templates, names) -> list[str]:
    """Problems between files: a tube without a template, a template marker on no panel of
    its tube, a spillover file that is missing or unreadable, an id used twice."""
    from cartflow.io.fcs import read_spillover

    problems = []
    seen: dict[str, str] = {}
    for panel in panels:
        if panel.id in seen:
            problems.append(f"{panel.source}: panel id {panel.id!r} is also used by "
                            f"{seen[panel.id]}")  # fmt: skip
        seen[panel.id] = panel.source
        template = templates.get(panel.tube)
        fixed = any(
            p.stem == panel.tube and p.suffix.lower() in (".xml", ".wsp")
            for p in (directory / GATES_FOLDER).glob("*")
        )
        if template is None and not fixed:
            if not (directory / TEMPLATE_FOLDER / f"{panel.tube}.yaml").is_file():
                problems.append(
                    f"{panel.source}: tube {panel.tube!r} has no gating template: write "
                    f"{directory / TEMPLATE_FOLDER / (panel.tube + '.yaml')}"
                )
        elif template is not None:
            scatter = {*panel.scatter, panel.time}  # channels a template may cut directly
            absent = [m for m in template.markers
                      if m not in panel.markers and m not in panel.omitted
                      and m not in scatter and not m.startswith(("FSC", "SSC"))]  # fmt: skip
            if absent:
                problems.append(
                    f"{panel.source}: panel {panel.id} lacks marker(s) {', '.join(absent)} "
                    f"that template {template.source} places cuts on (add them, or list them "
                    "under omitted: with the reason)"
                )
            options = gate_options_problem(panel, template)
            if options is not None:
                problems.append(str(options))
        path = directory / panel.spillover if panel.spillover else None
        if path is not None:
            try:  # its detectors are checked against each file when it is gated
                read_spillover(path)
            except CartflowError as exc:
                problems.append(f"{panel.source}: spillover {panel.spillover}: {exc}")
    for entry in names.read_as if names is not None else ():
        if not any(entry.marker in p.markers for p in panels):
            problems.append(
                f"{entry.where}: read_as {entry.antigen}: {entry.marker} is no panel's marker"
            )
    return problems


def _read_hematotox(path: Path) -> HematotoxTable:
    from cartflow.pipeline.clinical import load_hematotox

    return load_hematotox(path)


def _read_analysis(path: Path) -> OutcomeConfig:
    from cartflow.pipeline.outcomes import load_outcome_config

    return load_outcome_config(path)
