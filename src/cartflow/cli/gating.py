"""``cartflow gate`` and ``cartflow pool``, and the lab's fixed gates per tube."""

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
    _writable,
    app,
    console,
    errors,
)
from cartflow.cli.options import (
    ConfigOption,
)
from cartflow.io.errors import CartflowError


def _fallback(decision) -> Text:
    """``fallback (reason)`` in yellow for a cut placed at its template default, else empty."""
    if not decision.fallback:
        return Text("")
    return Text.assemble(("fallback", "yellow"), f" ({decision.reason})")


@app.command()
def gate(
    file: Annotated[Path, typer.Argument(help="An FCS file.")],
    template: Annotated[
        Path | None, typer.Option(help="Gating template YAML (default: the tube's template).")
    ] = None,
    tube: Annotated[str | None, typer.Option(help="Tube, when the file does not say.")] = None,
    membership: Annotated[
        Path | None,
        typer.Option(help="Parquet file: one boolean column per population, one row per event."),
    ] = None,
    plots: Annotated[Path | None, typer.Option(help="Folder for one PNG per gate.")] = None,
    gatingml: Annotated[
        Path | None, typer.Option("--gatingml", help="Write the placed gates as Gating-ML 2.0.")
    ] = None,
    flowjo: Annotated[
        Path | None,
        typer.Option(
            "--flowjo", help="Write the file and its placed gates as a FlowJo 10 workspace."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    gates: Annotated[
        Path | None,
        typer.Option(help="Apply a lab's fixed gates (Gating-ML .xml or FlowJo .wsp) instead."),
    ] = None,
    cuts: Annotated[
        Path | None,
        typer.Option(help="JSON of cuts to use as given (e.g. written by `cartflow pool`)."),
    ] = None,
    spillover: Annotated[
        Path | None,
        typer.Option(help="Spillover matrix CSV to compensate with instead of the file's own."),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Gate one file automatically: counts per population, cuts and their evidence (or apply
    fixed gates with --gates)."""
    from cartflow.gating.flowjo import export_flowjo
    from cartflow.gating.gatingml import export_gatingml
    from cartflow.gating.template import load_template
    from cartflow.io.fcs import read_spillover
    from cartflow.pipeline.gate import gate_file, membership_table
    from cartflow.pipeline.pooling import read_cuts

    if gates is not None:
        given = {"--template": template, "--cuts": cuts, "--spillover": spillover,
                 "--plots": plots, "--gatingml": gatingml, "--flowjo": flowjo}  # fmt: skip
        unused = [option for option, value in given.items() if value is not None]
        if unused:
            raise _fail(
                f"--gates applies a lab's gates as they are: {', '.join(unused)} do not apply"
            )
    if spillover is not None and (gatingml or flowjo):
        raise _fail(
            "--gatingml/--flowjo with --spillover: the exported gates would compensate with the "
            "file's own matrix; export without the override"
        )
    _writable(membership, folder=False)
    _writable(plots, folder=True)
    if gates is not None:
        _gate_fixed(file, gates, membership, as_json)
        return

    lab = _lab_config(config)
    try:
        loaded = load_template(template) if template else None
        given = read_cuts(cuts) if cuts else None
        matrix = read_spillover(spillover) if spillover else None
        gated = gate_file(
            file, template=loaded, tube=tube, fixed_cuts=given, spillover=matrix, config=lab
        )
        decisions = gated.placed.decisions
        unused = sorted(name for name in given or {} if decisions.get(name) is not given[name])
        if unused:  # a misspelt name, or a gate that places its cut itself (singlets, cells)
            raise CartflowError(cuts, f"cut(s) {unused} were not used as given on this file")
        if gatingml:
            export_gatingml(gated.placed.gate_set, gatingml)
        if flowjo:
            export_flowjo(gated.placed.gate_set, file, flowjo)
    except CartflowError as exc:
        raise _fail(str(exc)) from None
    counts, parents = gated.counts(), gated.parent_counts()
    decisions = gated.placed.decisions
    if as_json:
        console.print_json(
            json.dumps(
                {
                    "file": str(file),
                    "panel": gated.panel.id,
                    "template": gated.template.id,
                    "counts": counts,
                    "cuts": {k: d.value for k, d in decisions.items()},
                    "fallbacks": {k: d.reason for k, d in decisions.items() if d.fallback},
                    "flags": list(gated.placed.flags),
                    "skipped": dict(gated.placed.skipped),
                    "approximations": dict(gated.placed.approximations),
                },
                default=str,
            )
        )
    else:
        table = Table("population", "events", "% of parent", box=None, pad_edge=False)
        for population, count in counts.items():
            parent = parents[population]
            share = f"{100 * count / parent:.2f}" if parent else "–"
            table.add_row(population, f"{count:,}", share)
        console.print(
            Text.assemble(
                (file.name, "bold"), f"  panel {gated.panel.id}, template {gated.template.id}"
            )
        )
        console.print(table)
        for name, decision in decisions.items():
            console.print(
                Text.assemble(
                    f"  cut {name}: {decision.value:.4g} by {decision.method} ",
                    _fallback(decision),
                )
            )
        for flag in gated.placed.flags:
            console.print(f"  flag: {flag}")
        for population, note in gated.placed.approximations.items():
            console.print(f"  approximated: {population} {note}")
    notes = errors if as_json else console  # --json keeps standard output one JSON object
    if membership:
        membership_table(gated).to_parquet(membership)
        notes.print(f"membership: {membership}")
    if plots:
        from cartflow.report.plots import gate_plots

        notes.print(f"plots: {len(gate_plots(gated, plots))} PNG files in {plots}")


def _gate_fixed(file: Path, gates: Path, membership: Path | None, as_json: bool) -> None:
    import pandas as pd

    from cartflow.pipeline.gate import gate_fixed, load_fixed_gates

    try:
        lab_gates = load_fixed_gates(gates)
    except CartflowError as exc:
        raise _fail(str(exc)) from None
    try:
        fcs, _, result = gate_fixed(file, lab_gates)
        source = lab_gates.match(fcs.path.name, fcs.keyword("$FIL"), fcs.event_count)
    except CartflowError as exc:  # the gates do not fit this file: name both
        raise _fail(f"{gates} on {file}: {exc}") from None
    counts = {p: result.count(p) for p in result.populations}
    stored = source.stored_counts()  # the lab software's own counts, where it kept them
    if as_json:
        console.print_json(
            json.dumps(
                {"file": str(file), "gates": str(gates), "sample": source.name,
                 "counts": counts, "lab_counts": stored}
            )
        )  # fmt: skip
    else:
        columns = ["population", "events", "% of parent"] + (["lab's count"] if stored else [])
        table = Table(*columns, box=None, pad_edge=False)
        for population, count in counts.items():
            row = [population, f"{count:,}", f"{100 * result.fraction_of_parent(population):.2f}"]
            if stored:
                lab = stored.get(population)
                row.append("" if lab is None else f"{lab:,}")
            table.add_row(*row)
        console.print(
            Text.assemble((file.name, "bold"), f"  fixed gates from {gates.name} ({source.name})")
        )
        console.print(table)
    if membership:
        pd.DataFrame({p: result.mask(p) for p in result.populations}).to_parquet(membership)
        console.print(f"membership: {membership}")


@app.command()
def pool(
    files: Annotated[list[Path], typer.Argument(help="FCS files to pool, e.g. one patient's.")],
    cut: Annotated[
        list[str], typer.Option("--cut", help="Cut to pool (CAR, CD3, CD27.bright); repeatable.")
    ],
    out: Annotated[Path, typer.Option(help="JSON file for `cartflow gate --cuts`.")] = Path(
        "pooled-cuts.json"
    ),
    template: Annotated[
        Path | None, typer.Option(help="Gating template YAML (default: the tube's template).")
    ] = None,
    tube: Annotated[str | None, typer.Option(help="Tube, when the files do not say.")] = None,
    config: ConfigOption = None,
) -> None:
    """Place cuts once on the pooled events of several files (openCyto's groupBy), e.g. all
    timepoints of a patient, and write them for `cartflow gate --cuts`."""
    from cartflow.gating.template import load_template
    from cartflow.pipeline.pooling import pool_cuts, write_cuts

    _writable(out, folder=False)
    try:
        loaded = load_template(template) if template else None
        pooled = pool_cuts(files, cut, template=loaded, tube=tube, config=_lab_config(config))
        write_cuts(pooled, out)
    except CartflowError as exc:
        raise _fail(str(exc)) from None
    for name, decision in pooled.items():
        own = ", ".join(f"{v:.4g}" for v in decision.evidence["per_sample_cuts"])
        console.print(
            Text.assemble(
                f"cut {name}: {decision.value:.4g} by {decision.method} over {len(files)} files "
                f"(each on its own: {own}) ",
                _fallback(decision),
            )
        )
    console.print(f"cuts: {out}")


def _lab_gates(entries: list[str], config=None) -> dict:
    """The configuration's fixed gates per tube (``gates/<tube>.xml|.wsp``), then the
    ``TUBE=FILE`` options, as tube → the lab's gates, each read now (fail before any work)."""
    from cartflow.pipeline.gate import lab_gating

    gatings = {}
    given: set[str] = set()
    for entry in entries:
        tube, sep, file = entry.partition("=")
        if not sep or not tube.strip() or not file.strip():
            raise _fail(f"--gates {entry!r}: give TUBE=FILE, e.g. --gates memory=lab.wsp")
        if tube.strip() in given:
            raise _fail(f"--gates: tube {tube.strip()!r} is given twice")
        given.add(tube.strip())
        try:
            gatings[tube.strip()] = lab_gating(Path(file.strip()))
        except CartflowError as exc:
            raise _fail(str(exc)) from None
    for tube, path in (config.lab_gate_files() if config else {}).items():
        if tube not in given:
            try:
                gatings[tube] = lab_gating(path)
            except CartflowError as exc:
                raise _fail(str(exc)) from None
    return dict(sorted(gatings.items()))
