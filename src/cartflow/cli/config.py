"""``cartflow config`` and ``cartflow panel``: a lab's configuration folder and its panels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from cartflow.cli.app import (
    _fail,
    _lab_config,
    _writable,
    app,
    console,
    errors,
)
from cartflow.cli.options import (
    ConfigOption,
)
from cartflow.io.errors import CartflowError

config_app = typer.Typer(
    help="A lab's configuration folder: panels, templates, marker names, identity rules.",
    no_args_is_help=True,
)
app.add_typer(config_app, name="config")
panel_app = typer.Typer(help="Draft a panel from FCS files, or check a file against panels.",
                        no_args_is_help=True)  # fmt: skip
app.add_typer(panel_app, name="panel")


@config_app.command("init")
def config_init(
    directory: Annotated[Path, typer.Argument(help="New folder for the configuration.")],
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            envvar="CARTFLOW_CONFIG",
            help="Configuration to copy (default: the shipped CAR-T configuration).",
        ),
    ] = None,
) -> None:
    """Write a copy of the shipped CAR-T configuration (or of --config) to edit."""
    from cartflow.panels.config import init_config

    source = _lab_config(config).directory
    try:
        written = init_config(directory, source)
    except CartflowError as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"{directory}: cannot be written: {exc.strerror or exc}") from None
    console.print(f"config: {len(written)} files written to {directory}")
    console.print(f"  next: `cartflow panel draft FILE --tube NAME --config {directory}`")


@config_app.command("check")
def config_check(
    directory: Annotated[
        Path | None, typer.Argument(help="A configuration folder (default: --config).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Validate every file of a configuration folder (each problem with file and line) and
    print what it holds."""
    from cartflow.panels.config import DEFAULT_CONFIG_DIR
    from cartflow.pipeline.config_check import check_config

    directory = directory or config or DEFAULT_CONFIG_DIR
    report = check_config(directory)
    for problem in report.problems:
        errors.print(Text.assemble(("problem:", "red"), f" {problem}"), soft_wrap=True)
    if not report.ok:
        raise _fail(f"{directory}: {len(report.problems)} problem(s)")
    _print_config(report)


def _print_config(report) -> None:
    config = report.config
    console.print(
        Text.assemble((str(config.directory), "bold"), f"  sha256 {config.sha256}"),
        soft_wrap=True,
    )
    for panel in config.panels:
        time = panel.time or "none (stable-flow check skipped)"
        console.print(
            f"  panel {panel.id} (tube {panel.tube}, {panel.cytometer}): "
            f"scatter {', '.join(panel.scatter)}; time {time}"
            + (f"; spillover {panel.spillover}" if panel.spillover else ""),
            soft_wrap=True,
        )
        console.print(
            "    " + ", ".join(f"{c.marker} on {c.channel}" for c in panel.channels),
            soft_wrap=True,
        )
        for marker, reason in panel.omitted.items():
            console.print(f"    omitted {marker}: {reason}")
        for population, options in panel.gate_options.items():
            given = ", ".join(f"{name}: {value}" for name, value in options.items())
            console.print(f"    gate options for {population}: {given}", soft_wrap=True)
    for entry in config.names.read_as:
        console.print(
            f"  read as: {entry.antigen} is read as {entry.marker} ({entry.where})",
            soft_wrap=True,
        )
    for tube, template in report.templates.items():
        console.print(
            f"  template {tube}: {template.id} v{template.version}, "
            f"{len(template.populations)} populations, cuts on {', '.join(template.markers)}",
            soft_wrap=True,
        )
    identity = config.identity_file or "default rules"
    console.print(f"  identity: {identity}")
    console.print(f"  hematotox: {config.hematotox or 'the shipped table (panels/hematotox.yaml)'}")
    console.print(f"  analysis: {config.analysis or 'defaults'}")


@panel_app.command("draft")
def panel_draft(
    files: Annotated[list[Path], typer.Argument(help="FCS files of one tube.")],
    tube: Annotated[str, typer.Option(help="The tube's name (also the template's name).")],
    config: ConfigOption = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Panel YAML to write (default: TUBE.yaml in --config, else here)."),
    ] = None,
) -> None:
    """Write a panel YAML from the files' $PnN/$PnS: scatter, time, fluorescence detectors
    and their markers, with a plain list of what could not be resolved."""
    from cartflow.io.outputs import write_text
    from cartflow.panels import read_marker_names
    from cartflow.panels.config import config_directory
    from cartflow.panels.draft import draft_panel

    try:  # only the marker names: the folder may hold other drafts not yet filled in
        names = read_marker_names(config_directory(config))
    except CartflowError as exc:
        raise _fail(str(exc)) from None
    target = out or ((config or Path(".")) / f"{tube}.yaml")
    if target.exists():
        raise _fail(f"{target}: exists already; give another --out or remove it")
    _writable(target, folder=False)
    try:
        draft = draft_panel(files, tube, names)
    except CartflowError as exc:
        raise _fail(str(exc)) from None
    write_text(target, draft.yaml())
    console.print(f"panel draft: {target} ({len(draft.layouts)} layout(s))")
    for disagreement in draft.disagreements:
        console.print(
            Text.assemble("  ", ("files disagree:", "yellow"), f" {disagreement}"),
            soft_wrap=True,
        )
    unresolved = draft.unresolved
    for item in unresolved:
        console.print(f"  unresolved: {item}", soft_wrap=True)
    if unresolved:
        console.print(f"  fill these in {target}, then `cartflow config check DIR`")


@panel_app.command("check")
def panel_check(
    file: Annotated[Path, typer.Argument(help="An FCS file.")],
    config: ConfigOption = None,
    tube: Annotated[str | None, typer.Option(help="Only panels of this tube.")] = None,
) -> None:
    """Say which panel a file matches, or the closest panel and exactly what differs."""
    from cartflow.panels.draft import check_file_panel

    lab = _lab_config(config)
    try:
        check = check_file_panel(file, lab.panels, lab.names, tube)
    except CartflowError as exc:
        raise _fail(str(exc)) from None
    if check.panel is not None:
        console.print(f"{file.name}: panel {check.panel.id} (tube {check.panel.tube}, "
                      f"{check.panel.cytometer})")  # fmt: skip
        for marker, channel in check.marker_channels.items():
            console.print(f"  {marker} on {channel}")
        for entry in check.read_as:
            console.print(
                Text.assemble(
                    "  ",
                    ("read as:", "yellow"),
                    f" {entry.antigen} is read as {entry.marker} (declared in {entry.where})",
                ),
                soft_wrap=True,
            )
        return
    console.print(f"{file.name}: no panel fits: {check.problem}", soft_wrap=True)
    if check.closest is not None:
        console.print(
            f"  closest: panel {check.closest.id} ({check.closest.source})", soft_wrap=True
        )
        for difference in check.differences:
            console.print(f"    {difference}", soft_wrap=True)
    console.print(
        f"  `cartflow panel draft {file} --tube NAME --config DIR` drafts a panel", soft_wrap=True
    )
    raise typer.Exit(1)
