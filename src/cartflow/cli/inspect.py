"""``cartflow inspect``: an FCS file, or the trail behind a stored sample."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from cartflow.cli.app import (
    _fail,
    _lab_config,
    _load_context,
    app,
    console,
)
from cartflow.cli.options import (
    ConfigOption,
    DbOption,
    ManifestOption,
    RulesOption,
)
from cartflow.cli.review import _shown
from cartflow.io.errors import CartflowError


@app.command()
def inspect(
    file: Annotated[Path | None, typer.Argument(help="An FCS file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    manifest: ManifestOption = None,
    rules: RulesOption = None,
    sample: Annotated[
        int | None,
        typer.Option(
            "--sample", min=1, max=2**63 - 1, help="Show the provenance of a stored sample."
        ),
    ] = None,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Show an FCS file (version, cytometer, events, channels, spillover, panel, identity),
    or with --sample the trail behind a stored sample's numbers."""
    from cartflow.io.fcs import read_fcs
    from cartflow.panels import match_panel
    from cartflow.pipeline.identity import identify

    if sample is not None:
        _inspect_sample(sample, db, as_json)
        return
    if file is None:
        raise _fail("give an FCS file or --sample ID")

    lab = _lab_config(config)
    try:
        loaded_manifest, loaded_rules = _load_context(manifest, rules, lab)
        fcs = read_fcs(file, events=False)
    except CartflowError as exc:
        if as_json:
            console.print_json(json.dumps({"file": str(file), "error": str(exc)}))
        raise _fail(str(exc)) from None
    info: dict = {
        "file": str(file),
        "fcs_version": fcs.version,
        "cytometer": fcs.cytometer,
        "events": fcs.event_count,
        "channels": [{"name": c.name, "marker": c.marker} for c in fcs.channels],
        "spillover": fcs.spillover.keyword if fcs.spillover else None,
        "warnings": fcs.warnings,
    }
    tube = None
    try:
        ident = identify(file, fcs.text, loaded_manifest, loaded_rules)
        tube = ident.tube
        info["identity"] = {
            "patient": ident.patient,
            "timepoint": ident.timepoint.label,
            "nominal_day": ident.timepoint.nominal_day,
            "tube": ident.tube,
            "source": ident.source,
        }
    except CartflowError as exc:
        info["identity"] = {"error": exc.problem}
    try:
        pairs = [(c.name, c.marker) for c in fcs.channels]
        info["panel"] = match_panel(file, pairs, lab.panels, tube, lab.names).panel.id
    except CartflowError as exc:
        info["panel"] = {"error": exc.problem}
    if as_json:
        console.print_json(json.dumps(info, default=str))
        return
    _print_inspection(info)


def _inspect_sample(sample_id: int, db: str | None, as_json: bool) -> None:
    from cartflow.pipeline.triage import severity
    from cartflow.store import Store

    store = Store(db, existing=True)
    try:
        trail = store.provenance(sample_id)
    finally:
        store.close()
    if trail is None:
        raise _fail(f"no sample {sample_id} in {store.display_url}")
    if as_json:
        console.print_json(json.dumps(trail, default=str))
        return
    file = trail["file"]
    console.print(
        Text.assemble(
            (f"sample {trail['sample_id']}", "bold"),
            f": {trail['patient']} {trail['timepoint']} (day {trail['nominal_day']}), "
            f"tube {trail['tube']} [{trail['identity_source']}]",
        )
    )
    console.print(
        f"  file sha256 {file['sha256']} ({file['fcs_version']}, {file['events']:,} events)"
    )
    for name in file["names"]:
        console.print(f"    seen as {name}")
    panel = trail["panel"]
    console.print(f"  panel {panel['id']} v{panel['version']} sha256 {panel['sha256']}")
    ingest = trail["ingest"]
    console.print(
        f"  ingested by run {ingest['run_id']} (cartflow {ingest['software_version']}, "
        f"{ingest['started_at']})"
    )
    for gating in trail["gatings"]:
        run = gating["run"]
        console.print(
            f"  gated by run {run['run_id']} ({run['command']}, cartflow "
            f"{run['software_version']}, {run['started_at']}): template {gating['template_id']} "
            f"sha256 {gating['template_sha256']}, {gating['status']}"
        )
        if gating["panel_sha256"]:
            console.print(
                f"    panels and marker names of the tube: sha256 {gating['panel_sha256']}"
            )
        if gating["corrections_key"]:
            console.print(f"    with corrections #{gating['corrections_key']}")
        for name, cut in gating["cuts"].items():
            if cut["value"] is not None:
                console.print(f"    cut {_cut_line(name, cut)}", markup=False, soft_wrap=True)
        for row in gating["populations"]:
            parent = row["parent_count"]
            share = (
                f" ({100 * row['count'] / parent:.2f} % of {parent:,} {row['parent'] or 'events'})"
                if parent
                else ""
            )
            console.print(f"    population {row['population']}: {row['count']:,} events{share}")
        for flag in gating["flags"]:
            console.print(f"    flag {flag} [{severity(flag)}]", markup=False)
    for c in trail["corrections"]:
        change = (
            ""
            if c["old"] is None and c["new"] is None
            else (f" {_shown(c['old'])} -> {_shown(c['new'])}")
        )
        console.print(
            f"  correction #{c['id']} {c['action']}{' ' + c['target'] if c['target'] else ''}"
            f"{change} by {c['by']} at {c['at']}: {c['reason']}"
            + (" (active)" if c["active"] else ""),
            markup=False,
            soft_wrap=True,
        )


def _cut_line(name: str, cut: dict) -> str:
    """A cut with its evidence: value, method, bounds, what it was placed on, fallback."""
    evidence = cut.get("evidence") or {}
    parts = [f"{name} = {cut['value']:.4g} by {cut['method']}"]
    if evidence.get("bounds"):
        low, high = evidence["bounds"]
        parts.append(f"bounds {low:.3g}-{high:.3g} (default {evidence.get('default', 0):.3g})")
    if evidence.get("estimated_on"):
        parts.append(f"placed on {evidence['estimated_on']} ({evidence.get('events', 0):,} events)")
    if evidence.get("source"):
        parts.append(f"given by {evidence['source']}")
    for key in ("valley", "depth_ratio"):
        if isinstance(evidence.get(key), int | float):
            parts.append(f"{key} {evidence[key]:.3g}")
    if cut["fallback"]:
        parts.append(f"FALLBACK: {evidence.get('reason')}")
    return ", ".join(parts)


def _print_inspection(info: dict) -> None:
    console.print(Text(info["file"], style="bold"))
    console.print(
        f"  {info['fcs_version']}  cytometer {info['cytometer'] or '?'}  "
        f"{info['events']:,} events  {len(info['channels'])} channels  "
        f"spillover {info['spillover'] or 'none'}"
    )
    table = Table("#", "channel", "marker", box=None, pad_edge=False)
    for i, channel in enumerate(info["channels"], start=1):
        table.add_row(str(i), channel["name"], channel["marker"] or "")
    console.print(table)
    panel = info["panel"]
    console.print(f"  panel: {panel if isinstance(panel, str) else 'none — ' + panel['error']}")
    ident = info["identity"]
    if "error" in ident:
        console.print(f"  identity: not established — {ident['error']}")
    else:
        console.print(
            f"  identity: patient {ident['patient']}, {ident['timepoint']} (day "
            f"{ident['nominal_day']}), tube {ident['tube'] or '?'} [{ident['source']}]"
        )
    for warning in info["warnings"]:
        console.print(Text.assemble("  ", ("warning:", "yellow"), f" {warning}"))
