"""The ``cartflow`` command line."""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from pipeline import __version__
from pipeline.errors import CartflowError

app = typer.Typer(
    name="cartflow",
    help="Flow-cytometry monitoring of CAR-T cell therapy: ingest, gate, count, follow up.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(highlight=False, markup=False)  # text from data is printed as it is
errors = Console(stderr=True, highlight=False, markup=False)

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE_COHORT = REPO_ROOT / "fixtures" / "cohort"

DbOption = Annotated[
    str | None,
    typer.Option("--db", help="Store URL (sqlite:///path or postgresql://…) or a SQLite path."),
]
ManifestOption = Annotated[
    Path | None,
    typer.Option("--manifest", help="CSV: file, patient, timepoint, tube, blood volume, beads."),
]
ClinicalOption = Annotated[
    Path | None, typer.Option(help="Clinical table (infusion dates, outcomes).")
]
OutOption = Annotated[Path, typer.Option("--out", help="Output folder.")]
HaematologyOption = Annotated[
    Path | None,
    typer.Option(help="CSV patient,date,alc_per_ul/wbc_per_ul for dual-platform counts."),
]
ForceOption = Annotated[
    bool,
    typer.Option("--force", help="Write into an --out folder holding others' files."),
]
OUT_MARK = ".cartflow-out"
"""Marks a folder cartflow writes its outputs into (so that it may write there again)."""
RulesOption = Annotated[
    Path | None,
    typer.Option("--rules", help="YAML identity rules (keywords and file-name patterns)."),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        envvar="CARTFLOW_CONFIG",
        help="Lab configuration folder: panels, templates, marker names, identity rules "
        "(default: the shipped CAR-T configuration; `cartflow config init DIR` writes a copy).",
    ),
]


def _fail(message: str, code: int = 1) -> typer.Exit:
    errors.print(Text.assemble(("error:", "red"), f" {message}"), soft_wrap=True)
    return typer.Exit(code)


def _fallback(decision) -> Text:
    """``fallback (reason)`` in yellow for a cut placed at its template default, else empty."""
    if not decision.fallback:
        return Text("")
    return Text.assemble(("fallback", "yellow"), f" ({decision.reason})")


def _writable(path: Path | None, *, folder: bool, create: bool = True) -> None:
    """Create an output folder (or an output file's folder) before any work, so that one that
    cannot be written fails at once, in one line naming it. With ``create=False`` (an output
    that may not be needed) only check that the folder could be made."""
    if path is None:
        return
    if path.exists() and path.is_dir() != folder:
        raise _fail(
            f"{path}: " + ("is a file, not a folder" if folder else "is a folder, not a file")
        )
    target = path if folder else path.parent
    if not create:
        existing = next(p for p in (target, *target.parents) if p.exists())
        if not existing.is_dir():
            raise _fail(f"{path}: cannot be written: {os.strerror(errno.ENOTDIR)}")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise _fail(f"{path}: cannot be written: {os.strerror(errno.EACCES)}")
        return
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _fail(f"{path}: cannot be written: {exc.strerror or exc}") from None


def _claim_out(out: Path, force: bool) -> None:
    """Make ``out`` cartflow's output folder; one holding files of unknown origin (no mark
    of an earlier cartflow output) is refused unless ``force``."""
    _writable(out, folder=True)
    mark = out / OUT_MARK
    if mark.is_file():
        return
    foreign = sorted(p.name for p in out.iterdir())
    if foreign and not force:
        shown = ", ".join(foreign[:3]) + (", …" if len(foreign) > 3 else "")
        raise _fail(
            f"{out}: holds files cartflow did not write ({shown}); choose another --out, or "
            "give --force to write there (its tables are then replaced)"
        )
    try:
        mark.write_text("cartflow output folder\n", encoding="utf-8")
    except OSError as exc:
        raise _fail(f"{mark}: cannot be written: {exc.strerror or exc}") from None


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"cartflow {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True)
    ] = False,
) -> None:
    """cartflow command line."""


def _lab_config(config: Path | None):
    """The lab configuration folder read (the shipped one without ``--config``); a bad one
    fails in one line naming the file and line."""
    from pipeline.config import load_config

    try:
        return load_config(config)
    except CartflowError as exc:
        raise _fail(f"{exc} (`cartflow config check DIR` lists every problem)") from None


def _load_context(manifest: Path | None, rules: Path | None, lab=None):
    """Manifest and identity rules: ``--rules``, else the configuration's, else the default."""
    from pipeline.identity import IdentityRules, load_manifest

    loaded_manifest = load_manifest(manifest) if manifest else None
    if rules:
        loaded_rules = IdentityRules.from_yaml(rules)
    else:
        loaded_rules = lab.identity if lab is not None else IdentityRules()
    return loaded_manifest, loaded_rules


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
    from panels import match_panel
    from pipeline.fcs import read_fcs
    from pipeline.identity import identify

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
    from pipeline.store import Store
    from pipeline.triage import severity

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


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=errors,
        transient=True,
    )


def _print_ingest(report, store_url: str, quarantine_report: Path | None) -> None:
    counts = {
        s: len(report.with_status(s)) for s in ("accepted", "known", "duplicate", "quarantined")
    }
    console.print(
        f"ingest: {counts['accepted']} accepted, {counts['known']} already known, "
        f"{counts['duplicate']} duplicate, {counts['quarantined']} quarantined "
        f"(store {store_url})"
    )
    for outcome in report.outcomes:
        if outcome.detail.startswith("identity corrected"):
            console.print(f"  {outcome.path.name}: {outcome.detail}", markup=False)
    for outcome in report.with_status("duplicate"):
        console.print(f"  duplicate: {outcome.path.name}: {outcome.detail}")
    for outcome in report.with_status("quarantined"):
        console.print(f"  quarantined: {outcome.path.name}: {outcome.detail}")
    for outcome in report.for_review:
        console.print(f"  stored for review: {outcome.path.name}: {outcome.review}")
    if quarantine_report:
        console.print(f"quarantine report: {quarantine_report}")


def run_ingest(
    batch_dir: Path,
    db: str | None,
    manifest: Path | None,
    rules: Path | None,
    out: Path,
    config: Path | None = None,
):
    """Ingest with a progress bar and a summary; returns the report."""
    from pipeline.ingest import ingest_batch, scan_batch, write_quarantine_report
    from pipeline.store import Store

    if not batch_dir.is_dir():
        raise _fail(f"{batch_dir}: not a folder")
    _writable(out, folder=True, create=False)  # only quarantine goes there
    lab = _lab_config(config)
    try:
        loaded_manifest, loaded_rules = _load_context(manifest, rules, lab)
    except CartflowError as exc:
        raise _fail(str(exc)) from None
    store = Store(db)
    try:
        total = len(scan_batch(batch_dir))
        with _progress() as progress:
            task = progress.add_task("ingest", total=total)
            report = ingest_batch(
                batch_dir,
                store,
                loaded_manifest,
                loaded_rules,
                on_file=lambda _outcome: progress.advance(task),
                config=lab,
            )
    finally:
        store.close()
    _print_ingest(report, store.display_url, write_quarantine_report(report, out))
    return report


@app.command()
def ingest(
    batch_dir: Annotated[
        Path, typer.Argument(help="Folder of FCS exports (searched recursively).")
    ],
    manifest: ManifestOption = None,
    db: DbOption = None,
    rules: RulesOption = None,
    out: Annotated[
        Path, typer.Option("--out", help="Where the quarantine/ report is written.")
    ] = Path("cartflow-out"),
    force: ForceOption = False,
    config: ConfigOption = None,
) -> None:
    """Scan, identify, validate and record a batch; bad files go to quarantine (exit 2)."""
    existed = out.is_dir()
    if existed:
        _claim_out(out, force)
    report = run_ingest(batch_dir, db, manifest, rules, out, config)
    if not existed and out.is_dir():  # made now, for the quarantine report
        (out / OUT_MARK).write_text("cartflow output folder\n", encoding="utf-8")
    raise typer.Exit(report.exit_code)


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
    from gating.flowjo import export_flowjo
    from gating.gatingml import export_gatingml
    from gating.template import load_template
    from pipeline.fcs import read_spillover
    from pipeline.gate import gate_file, membership_table
    from pipeline.pooling import read_cuts

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
        from pipeline.plots import gate_plots

        notes.print(f"plots: {len(gate_plots(gated, plots))} PNG files in {plots}")


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
    from gating.template import load_template
    from pipeline.pooling import pool_cuts, write_cuts

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


KINETICS_HELP = "Anchor day 0 at 0 cells/µL in AUCs (recorded with the result)."
AnchorOption = Annotated[bool, typer.Option(help=KINETICS_HELP)]
LogDownOption = Annotated[bool, typer.Option(help="Linear-up/log-down AUCs.")]


def _kinetics_options(anchor_day0: bool, log_down: bool, analysis: Path | None = None):
    """Kinetics options; the expansion threshold comes from the analysis settings given."""
    from pipeline.kinetics import KineticsOptions
    from pipeline.outcomes import load_outcome_config

    try:
        settings = load_outcome_config(analysis)
    except CartflowError as exc:
        raise _fail(str(exc)) from None
    return KineticsOptions(
        anchor_day0=anchor_day0,
        method="linear-up/log-down" if log_down else "linear",
        expansion_threshold_per_ul=settings.expansion_threshold_per_ul,
    )


LodOption = Annotated[int, typer.Option(min=1, help="Events below which a count is under the LOD.")]
LloqOption = Annotated[
    int, typer.Option(min=1, help="Events below which a count is under the LLOQ.")
]
BelowLodOption = Annotated[
    str,
    typer.Option(help="Interval of a count below the LOD: zero (from 0) or exact (Poisson)."),
]


def _count_settings(lod_events: int, lloq_events: int, below_lod_interval: str):
    from pipeline.counts import CountSettings

    if below_lod_interval not in ("zero", "exact"):
        raise _fail(f"--below-lod-interval {below_lod_interval!r} is not zero or exact")
    if lloq_events < lod_events:
        raise _fail(f"--lloq-events {lloq_events} is below --lod-events {lod_events}")
    return CountSettings(
        lod_events=lod_events,
        lloq_events=lloq_events,
        below_lod_from_zero=below_lod_interval == "zero",
    )


def _print_follow_up(follow) -> None:
    patients = len(follow.kinetics)
    console.print(
        f"kinetics: {patients} patient(s), {len(follow.timepoints)} timepoint rows; "
        + ", ".join(str(p) for k, p in follow.files.items() if not k.endswith("_parquet"))
    )


@app.command()
def run(
    batch_dir: Annotated[
        Path, typer.Argument(help="Folder of FCS exports (searched recursively).")
    ],
    manifest: ManifestOption = None,
    clinical: ClinicalOption = None,
    db: DbOption = None,
    rules: RulesOption = None,
    out: OutOption = Path("cartflow-out"),
    anchor_day0: AnchorOption = False,
    log_down: LogDownOption = False,
    lod_events: LodOption = 20,
    lloq_events: LloqOption = 50,
    below_lod_interval: BelowLodOption = "zero",
    workers: Annotated[
        int, typer.Option(min=1, help="Local worker processes (default: all cores).")
    ] = os.cpu_count() or 1,
    scheduler: Annotated[
        str | None, typer.Option(help="Dask distributed scheduler, e.g. tcp://host:8786.")
    ] = None,
    html_report: Annotated[
        bool, typer.Option("--report/--no-report", help="Write the HTML report and its plots.")
    ] = True,
    analysis: Annotated[
        Path | None, typer.Option(help="analysis.yaml for the outcome stage.")
    ] = None,
    haematology: HaematologyOption = None,
    force: ForceOption = False,
    file_names: Annotated[
        bool, typer.Option("--show-file-names", help="Name files in the HTML report (PHI).")
    ] = False,
    config: ConfigOption = None,
    review: Annotated[
        bool,
        typer.Option(
            "--review",
            help="Write OUT/review: a FlowJo 10 workspace of the batch (FCS paths relative "
            "to it) and Gating-ML per sample, for a cytometrist's review.",
        ),
    ] = False,
    lab_gates: Annotated[
        list[str] | None,
        typer.Option(
            "--gates",
            metavar="TUBE=FILE",
            help="Gate a tube with a lab's fixed gates (Gating-ML, FlowJo 10 workspace or "
            "FACSDiva export) instead of its template, e.g. --gates memory=lab.wsp "
            "(repeatable).",
        ),
    ] = None,
) -> None:
    """ingest → gate → counts → kinetics (→ outcomes with --clinical) → report for every new
    file of a batch (exit 2 if any file was quarantined)."""
    from pipeline.batch import RunSettings

    lab = _lab_config(config)  # a bad configuration stops the run before any work
    _claim_out(out, force)
    settings = RunSettings(
        out=out,
        clinical=clinical,
        kinetics=_kinetics_options(anchor_day0, log_down, analysis or lab.analysis),
        counts=_count_settings(lod_events, lloq_events, below_lod_interval),
        workers=workers,
        scheduler=scheduler,
        html_report=html_report,
        analysis=analysis or lab.analysis,
        haematology=haematology,
        file_names=file_names,
        config=lab,
        review=review,
        lab_gates=_lab_gates(lab_gates or [], lab),
    )
    summary = _run_once(batch_dir, db, manifest, rules, settings)
    raise typer.Exit(summary.exit_code)


def _lab_gates(entries: list[str], config=None) -> dict:
    """The configuration's fixed gates per tube (``gates/<tube>.xml|.wsp``), then the
    ``TUBE=FILE`` options, as tube → the lab's gates, each read now (fail before any work)."""
    from pipeline.gate import lab_gating

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


def _check_scheduler(address: str) -> None:
    """Fail before any work when no Dask scheduler answers at ``address``."""
    from dask.distributed import Client

    from pipeline.errors import first_line

    try:
        with Client(address, timeout="10s"):
            pass
    except (OSError, ValueError, TimeoutError) as exc:
        raise _fail(f"{address}: no Dask scheduler answers there: {first_line(exc)}") from None


def _run_once(batch_dir: Path, db, manifest, rules, settings, only=None):
    """One run with progress bars and a printed summary."""
    from dataclasses import replace

    from pipeline.batch import run_batch
    from pipeline.store import Store
    from pipeline.timepoints import load_haematology

    if not batch_dir.is_dir():
        raise _fail(f"{batch_dir}: not a folder")
    _writable(settings.out, folder=True)
    if settings.config is None:
        settings = replace(settings, config=_lab_config(None))
    try:
        loaded_manifest, loaded_rules = _load_context(manifest, rules, settings.config)
        if settings.haematology is not None:  # checked now, read again by the counts
            load_haematology(settings.haematology)
    except CartflowError as exc:
        raise _fail(str(exc)) from None
    if settings.scheduler:
        _check_scheduler(settings.scheduler)
    settings = replace(settings, manifest=loaded_manifest, rules=loaded_rules)
    store = Store(db)
    try:
        with _progress() as progress:

            def stage(name: str, total: int):
                task = progress.add_task(name, total=total)
                return lambda: progress.advance(task)

            summary = run_batch(batch_dir, store, settings, stage, only)
    finally:
        store.close()
    _print_ingest(summary.ingest, store.display_url, summary.quarantine_report)
    failed = summary.failed
    console.print(
        f"gate: {len(summary.gated) - len(failed)} gated, {summary.already_gated} already "
        f"gated, {len(failed)} failed, {len(summary.flagged)} flagged in this run"
    )
    for work in failed:
        console.print(f"  gating failed: {work.path.name}: {work.error}")
    _print_review_summary(summary.review_queue)
    _print_follow_up(summary.follow)
    if summary.outcome_error:
        console.print(
            Text.assemble(("outcomes not computed:", "red"), f" {summary.outcome_error}")
        )
    elif summary.outcomes is not None:
        where = summary.follow.files["kinetics"].parent / "outcomes"
        console.print(f"outcomes: {len(summary.outcomes.figures)} figures and tables in {where}")
    if summary.report:
        console.print(
            f"report: {summary.report.resolve()} ({summary.plots_drawn} samples' plots and "
            f"{summary.figures_drawn} patient figures drawn, the rest unchanged)"
        )
    if summary.review:
        console.print(f"review workspace: {summary.review}")
    return summary


def _print_review_summary(queue) -> None:
    """One line on the store's review queue (its state, not only this run's files)."""
    samples = {(i.sample_id, i.file) for i in queue}
    console.print(
        f"review: {len(queue)} item(s) on {len(samples)} sample(s) or file(s) in the store "
        "need review" + (" (`cartflow review` lists them)" if queue else "")
    )


def _by(name: str | None) -> str:
    import getpass

    return name or os.environ.get("CARTFLOW_USER") or getpass.getuser()


@app.command()
def review(
    db: DbOption = None,
    patient: Annotated[str | None, typer.Option(help="Only this patient's items.")] = None,
    accept: Annotated[
        int | None,
        typer.Option(min=1, help="Mark this sample reviewed and accepted as it is gated now."),
    ] = None,
    reason: Annotated[str | None, typer.Option(help="Why (with --accept).")] = None,
    by: Annotated[str | None, typer.Option(help="Who (default: the login name).")] = None,
    lod_events: LodOption = 20,
    lloq_events: LloqOption = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON array.")] = False,
    config: ConfigOption = None,
) -> None:
    """What needs a human: fallbacks on cuts that define reported populations, subsets not
    evaluable at the peak, bead problems, quarantined files…, each with its sample and why
    (informational flags are left out); --accept SAMPLE clears a sample until it is gated
    again."""
    from dataclasses import asdict

    from pipeline.batch import review_state
    from pipeline.store import Store
    from pipeline.timepoints import TimepointSettings, timepoint_table

    settings = _count_settings(lod_events, lloq_events, "zero")
    lab = _lab_config(config)  # a bad configuration stops the command before any work
    try:
        store = Store(db, existing=True)
    except CartflowError as exc:
        raise _fail(str(exc)) from None
    try:
        if accept is not None:
            _accept(store, accept, reason, _by(by))
        timepoints = timepoint_table(
            store.latest_counts(), settings=TimepointSettings(counts=settings)
        )
        queue = review_state(
            store, timepoints, counts=settings, patient=patient, config=lab
        )
    finally:
        store.close()
    if as_json:
        console.print_json(json.dumps([asdict(i) for i in queue], default=str))
        return
    if not queue:
        console.print(f"nothing needs review in {store.display_url}")
        return
    for item in queue:  # one item a line: nothing is cut short on a narrow terminal
        where = f"sample {item.sample_id}" if item.sample_id else "file"
        console.print(
            f"[{item.severity}] {where} {item.patient} {item.timepoint} {item.tube} "
            f"{item.file}: {item.flag}: {item.reason}",
            markup=False,
            soft_wrap=True,
        )
    console.print(
        f"{len(queue)} item(s); `cartflow inspect --sample ID` shows a sample's decisions, "
        "`cartflow override` corrects one, `cartflow review --accept ID` accepts one"
    )


def _accept(store, sample_id: int, reason: str | None, by: str) -> None:
    gating = store.newest_gatings().get(sample_id)
    if gating is None:
        raise _fail(f"no gated sample {sample_id} in {store.display_url}")
    if not reason:
        raise _fail("--accept needs --reason TEXT (kept in the audit trail)")
    store.add_correction(sample_id, "accept", reason, by, gating_id=gating)
    console.print(f"sample {sample_id} accepted by {by} (gating {gating})")


@app.command()
def override(
    sample: Annotated[int | None, typer.Argument(min=1, help="Stored sample id.")] = None,
    cut: Annotated[
        list[str] | None,
        typer.Option("--cut", help="MARKER[.bright]=VALUE, in the template's units; repeatable."),
    ] = None,
    gates: Annotated[
        Path | None,
        typer.Option(help="Gate the sample with a lab's gates (Gating-ML .xml, FlowJo .wsp)."),
    ] = None,
    exclude: Annotated[
        bool, typer.Option("--exclude", help="Leave the sample out of counts and kinetics.")
    ] = False,
    revoke: Annotated[
        int | None, typer.Option(min=1, help="Revoke the correction with this id.")
    ] = None,
    reason: Annotated[str | None, typer.Option(help="Why (kept in the audit trail).")] = None,
    by: Annotated[str | None, typer.Option(help="Who (default: the login name).")] = None,
    list_: Annotated[
        bool, typer.Option("--list", help="List the audit trail (of SAMPLE, or all).")
    ] = False,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Correct one sample by hand: set cuts (--cut CD27.bright=0.66), exclude it, or revoke a
    correction; stored with who, when and why, and the sample is gated again at once (the
    next `run` recomputes timepoints, kinetics, outcomes and the report)."""
    from pipeline.store import Store

    lab = _lab_config(config)  # a bad configuration stops the command before any work
    try:
        store = Store(db, existing=True)
    except CartflowError as exc:
        raise _fail(str(exc)) from None
    try:
        if list_:
            _list_corrections(store, sample)
            return
        if sample is None:
            raise _fail("give a SAMPLE id (or --list)")
        if not reason:
            raise _fail("a correction needs --reason TEXT (kept in the audit trail)")
        chosen = [bool(cut), gates is not None, exclude, revoke is not None]
        if sum(chosen) != 1:
            raise _fail("give one of --cut, --gates, --exclude or --revoke")
        if gates is not None:
            _set_gates(store, sample, gates, reason, _by(by))
        _correct(store, sample, cut or [], exclude, revoke, reason, _by(by), lab)
    finally:
        store.close()


def _correct(store, sample_id, cuts, exclude, revoke, reason, by, config=None) -> None:
    from pipeline.batch import regate_sample
    from pipeline.gate import template_for

    info = store.provenance(sample_id)
    if info is None:
        raise _fail(f"no sample {sample_id} in {store.display_url}")
    ok = [g for g in info["gatings"] if g["status"] == "ok"]
    current = ok[-1]["cuts"] if ok else {}
    if revoke is not None:
        entry = next((c for c in info["corrections"] if c["id"] == revoke), None)
        if entry is None or not entry["active"]:
            raise _fail(f"sample {sample_id} has no active correction {revoke}")
        store.add_correction(
            sample_id,
            "revoke",
            reason,
            by,
            target=entry["target"],
            old=entry["new"],
            revokes=revoke,
        )
        console.print(f"correction {revoke} revoked by {by}")
    elif exclude:
        store.add_correction(sample_id, "exclude", reason, by, old=False, new=True)
        console.print(f"sample {sample_id} excluded by {by}")
    for text in cuts:
        name, _, value = text.partition("=")
        try:
            number = float(value)
            (config.template(info["tube"]) if config else template_for(info["tube"])).cut(
                name.strip()
            )
        except ValueError:
            raise _fail(f"--cut {text!r}: give MARKER[.bright]=NUMBER") from None
        except CartflowError as exc:
            raise _fail(f"--cut {text!r}: {exc}") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise _fail(f"--cut {text!r}: the value must be finite")
        old = current.get(name.strip(), {}).get("value")
        store.add_correction(sample_id, "cut", reason, by, target=name.strip(), old=old, new=number)
        console.print(f"cut {name.strip()} of sample {sample_id}: {old} -> {number} by {by}")
    if exclude:
        return
    with store.recording("override", {"sample": sample_id}) as run_id:
        work = regate_sample(store, run_id, sample_id, config=config)
    if work is None:
        console.print("file not found under its known paths: the next `run` that sees it gates it")
    elif work.error:
        console.print(Text.assemble(("gating failed: ", "red"), work.error))
    else:
        console.print(f"sample {sample_id} gated again; `cartflow run` updates kinetics and report")


def _set_gates(store, sample_id: int, gates: Path, reason: str, by: str) -> None:
    """Record a lab's gate file on a sample (checked to load first; its text is kept in the
    audit trail, so re-gating does not depend on the file staying where it is)."""
    import hashlib

    from pipeline.gate import load_fixed_gates

    names = [s["file"] for s in store.samples() if s["sample_id"] == sample_id]
    if not names:
        raise _fail(f"no sample {sample_id} in {store.display_url}")
    try:
        load_fixed_gates(gates)
        content = gates.read_text(encoding="utf-8")
    except CartflowError as exc:
        raise _fail(str(exc)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(f"{gates}: cannot be read: {exc}") from None
    sha = hashlib.sha256(content.encode("utf-8")).hexdigest()
    new = {"file": gates.name, "sha256": sha, "content": content}
    store.add_correction(sample_id, "gates", reason, by, target=gates.name, new=new)
    console.print(f"gates {gates.name} (sha256 {sha[:16]}) set on sample {sample_id} by {by}")


def _shown(value) -> str:
    """An audit value as one short text (a gate file by its name and hash)."""
    if isinstance(value, dict) and "content" in value:
        return f"{value['file']} sha256 {value['sha256'][:16]}"
    return json.dumps(value, default=str)


def _list_corrections(store, sample: int | None) -> None:
    """The audit trail, one entry a line (nothing is cut short on a narrow terminal)."""
    trail = store.corrections(sample)
    if not trail:
        console.print("no corrections")
    for c in trail:
        state = "active" if c["active"] else ""
        if c["action"] in ("cut", "gates", "exclude") and not c["active"]:
            state = "revoked"
        if c["revokes"]:
            state = f"revokes #{c['revokes']}"
        change = f"{_shown(c['old'])} -> {_shown(c['new'])}"
        console.print(
            f"#{c['id']} sample {c['sample_id']} {c['action']} {c['target'] or ''} {change} "
            f"by {c['by']} at {c['at']:%Y-%m-%d %H:%M:%S} [{state}]: {c['reason']}",
            soft_wrap=True,
            markup=False,
        )


@app.command()
def watch(
    folder: Annotated[Path, typer.Argument(help="Folder the cytometer exports into.")],
    manifest: ManifestOption = None,
    clinical: ClinicalOption = None,
    db: DbOption = None,
    rules: RulesOption = None,
    out: OutOption = Path("cartflow-out"),
    interval: Annotated[float, typer.Option(min=0.05, help="Seconds between looks.")] = 10.0,
    cycles: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many looks (default: never).")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Local worker processes.")] = 1,
    html_report: Annotated[
        bool, typer.Option("--report/--no-report", help="Write the HTML report and its plots.")
    ] = True,
    force: ForceOption = False,
    config: ConfigOption = None,
) -> None:
    """Process files as they arrive, each once it is complete; bad files are quarantined and
    watching goes on."""
    import time

    from pipeline.batch import ArrivalWatch, RunSettings

    lab = _lab_config(config)
    if not folder.is_dir():
        raise _fail(f"{folder}: not a folder")
    _claim_out(out, force)
    settings = RunSettings(
        out=out,
        clinical=clinical,
        workers=workers,
        html_report=html_report,
        analysis=lab.analysis,
        config=lab,
        lab_gates=_lab_gates([], lab),
    )
    arrivals = ArrivalWatch(folder)
    look = 0
    console.print(f"watch: {folder} every {interval:g} s")
    while cycles is None or look < cycles:
        look += 1
        ready = arrivals.complete()
        if ready:
            console.print(f"watch: {len(ready)} new file(s)")
            _run_once(folder, db, manifest, rules, settings, only=ready)
        if cycles is None or look < cycles:
            time.sleep(interval)


@app.command()
def kinetics(
    db: DbOption = None,
    out: OutOption = Path("cartflow-out"),
    clinical: Annotated[
        Path | None, typer.Option(help="Clinical table (infusion dates for actual days).")
    ] = None,
    anchor_day0: AnchorOption = False,
    log_down: LogDownOption = False,
    haematology: HaematologyOption = None,
    lod_events: LodOption = 20,
    lloq_events: LloqOption = 50,
    below_lod_interval: BelowLodOption = "zero",
    config: ConfigOption = None,
    force: ForceOption = False,
) -> None:
    """Counts per timepoint and kinetics per patient from the store (kinetics.csv/.parquet,
    timepoints.csv/.parquet); the configuration's analysis settings give the expansion
    threshold."""
    from pipeline.batch import follow_up
    from pipeline.store import Store

    lab = _lab_config(config)
    counts = _count_settings(lod_events, lloq_events, below_lod_interval)
    options = _kinetics_options(anchor_day0, log_down, lab.analysis)
    _claim_out(out, force)
    store = Store(db, existing=True)
    parameters = {"anchor_day0": anchor_day0, "log_down": log_down, "counts": counts.__dict__,
                  "kinetics": options.__dict__, **lab.provenance()}  # fmt: skip
    try:
        with store.recording("kinetics", parameters) as run_id:
            follow = follow_up(
                store,
                run_id,
                out,
                clinical=clinical,
                options=options,
                haematology=haematology,
                count_settings=counts,
            )
    except CartflowError as exc:
        raise _fail(str(exc)) from None
    finally:
        store.close()
    _print_follow_up(follow)


@app.command()
def outcomes(
    clinical: Annotated[Path, typer.Option(help="Clinical table (CSV or Excel).")],
    db: DbOption = None,
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path(
        "cartflow-out/outcomes"
    ),
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            envvar="CARTFLOW_CONFIG",
            help="Lab configuration folder (its analysis.yaml and hematotox.yaml), or an "
            "analysis.yaml file overriding the defaults.",
        ),
    ] = None,
    analysis: Annotated[
        Path | None, typer.Option(help="analysis.yaml (default: the configuration's).")
    ] = None,
    anchor_day0: AnchorOption = False,
    log_down: LogDownOption = False,
    haematology: HaematologyOption = None,
    lod_events: LodOption = 20,
    lloq_events: LloqOption = 50,
    below_lod_interval: BelowLodOption = "zero",
) -> None:
    """Outcome correlation: group comparisons, ROC cut-points, Kaplan-Meier, log-rank, Cox.

    The per-patient variables come from the store with the same count and AUC options as
    `kinetics`; the timepoints and kinetics tables they come from are written into --out."""
    from pipeline.batch import follow_up, outcomes_stage
    from pipeline.store import Store

    counts = _count_settings(lod_events, lloq_events, below_lod_interval)
    hematotox = None
    if config is not None and config.is_dir():
        lab = _lab_config(config)
        analysis, hematotox = analysis or lab.analysis, lab.hematotox
    elif config is not None:  # an analysis.yaml, as before configuration folders
        analysis = analysis or config
    options = _kinetics_options(anchor_day0, log_down, analysis)
    _writable(out, folder=True)
    store = Store(db, existing=True)
    parameters = {"clinical": str(clinical), "config": str(config), "analysis": str(analysis),
                  "anchor_day0": anchor_day0, "log_down": log_down,
                  "counts": counts.__dict__}  # fmt: skip
    try:
        with store.recording("outcomes", parameters) as run_id:
            follow = follow_up(
                store,
                run_id,
                out,
                clinical=clinical,
                options=options,
                haematology=haematology,
                count_settings=counts,
            )
            known = {s["patient"] for s in store.samples()}
            report = outcomes_stage(follow, clinical, out, analysis, known, hematotox)
    except CartflowError as exc:
        raise _fail(str(exc)) from None
    finally:
        store.close()
    console.print(f"outcomes: {len(report.figures)} figures, tables and outcomes.json in {out}")
    for note in report.notes:
        console.print(f"  note: {note}")


@app.command()
def export(
    out: Annotated[Path, typer.Option("--out", help="Folder for the tables.")],
    fmt: Annotated[str, typer.Option("--format", help="csv or parquet.")] = "csv",
    db: DbOption = None,
    clinical: Annotated[
        Path | None, typer.Option(help="Clinical table (infusion dates for actual days).")
    ] = None,
    pseudonymise: Annotated[
        bool,
        typer.Option(
            help="Replace patient ids by keyed pseudonyms (key from CARTFLOW_PSEUDONYM_KEY)."
        ),
    ] = False,
    lod_events: LodOption = 20,
    lloq_events: LloqOption = 50,
    below_lod_interval: BelowLodOption = "zero",
    anchor_day0: AnchorOption = False,
    log_down: LogDownOption = False,
    review: Annotated[
        bool,
        typer.Option(
            "--review",
            help="Also write OUT/review: one FlowJo 10 workspace per patient and Gating-ML "
            "per sample (each sample's gates placed again from its file, written only if "
            "they give the stored counts).",
        ),
    ] = False,
    config: ConfigOption = None,
    force: ForceOption = False,
) -> None:
    """Tidy tables (samples, populations, timepoints, kinetics) with a data dictionary; the
    configuration gives the analysis settings (expansion threshold) and, with --review, the
    templates and panels the gates are placed again with."""
    from pipeline.export import export as export_tables
    from pipeline.store import Store

    lab = _lab_config(config)
    counts = _count_settings(lod_events, lloq_events, below_lod_interval)
    kinetics = _kinetics_options(anchor_day0, log_down, lab.analysis)
    key = None
    if pseudonymise:
        key = os.environ.get("CARTFLOW_PSEUDONYM_KEY")
        if not key:
            raise _fail("--pseudonymise needs a key in the CARTFLOW_PSEUDONYM_KEY variable")
    if review and pseudonymise:
        raise _fail("--review with --pseudonymise: workspaces carry the files' own keywords")
    _claim_out(out, force)
    store = Store(db, existing=True)
    try:
        written = export_tables(store, out, fmt, key, clinical, counts, kinetics)
        workspaces, notes = [], []
        if review:
            from pipeline.review import export_review

            workspaces, notes = export_review(store, out / "review", lab)
    except CartflowError as exc:
        raise _fail(str(exc)) from None
    finally:
        store.close()
    console.print(f"export: {len(written)} files in {out}")
    if review:
        console.print(f"review: {len(workspaces)} FlowJo workspace(s) in {out / 'review'}")
        for note in notes:
            console.print(f"  left out: {note}")


def _gate_fixed(file: Path, gates: Path, membership: Path | None, as_json: bool) -> None:
    import pandas as pd

    from pipeline.gate import gate_fixed, load_fixed_gates

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


MAX_EVENTS = 20_000_000
"""Events per simulated file: beyond the 5 M of the benchmark, within this machine's memory."""


@app.command()
def simulate(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the cohort into.")],
    patients: Annotated[int, typer.Option(min=1, help="Number of patients.")] = 6,
    seed: Annotated[
        int, typer.Option(min=0, help="Random seed; the same seed gives the same bytes.")
    ] = 0,
    events: Annotated[int, typer.Option(min=500, max=MAX_EVENTS, help="Events per file.")] = 50_000,
    cytometer: Annotated[
        str, typer.Option(help="FACSLyric (10 colours) or 'FACSCanto II' (8 colours).")
    ] = "FACSLyric",
    leukapheresis: Annotated[bool, typer.Option(help="Add a leukapheresis sample.")] = False,
    config: ConfigOption = None,
) -> None:
    """Write a synthetic CAR-T monitoring cohort with per-event ground truth (its files
    follow the shipped CAR-T panels; with --config, says which tubes no panel of the
    configuration fits)."""
    from pipeline.simulate import SimulationConfig, simulate_cohort

    lab = _lab_config(config)
    simulation = SimulationConfig(
        patients=patients,
        seed=seed,
        events=events,
        cytometer=cytometer,
        leukapheresis=leukapheresis,
    )
    _writable(out_dir, folder=True)
    if any(out_dir.iterdir()):
        raise _fail(f"{out_dir}: is not empty; simulate writes only into a new or empty folder")
    try:
        summary = simulate_cohort(out_dir, simulation)
    except (CartflowError, ValueError) as exc:
        raise _fail(str(exc)) from None
    for problem in _unfitted_tubes(summary.files, lab):
        console.print(f"  [yellow]warning:[/yellow] {problem}", soft_wrap=True)
    console.print(
        f"simulate: {len(summary.files)} FCS files in {summary.out_dir}; manifest "
        f"{summary.manifest.name}, clinical table {summary.clinical.name}, truth in "
        f"{summary.truth_dir.name}/"
    )


def _unfitted_tubes(files, lab) -> list[str]:
    """Files of a lab configuration's cohort that no panel of it fits, one line per
    distinct channel set (nothing for the shipped configuration, which they follow)."""
    from panels import match_panel
    from pipeline.fcs import read_fcs

    if lab.is_default:
        return []
    problems: dict[tuple, str] = {}
    seen: set[tuple] = set()
    for path in files:
        pairs = tuple((c.name, c.marker) for c in read_fcs(path, events=False).channels)
        if pairs in seen:
            continue
        seen.add(pairs)
        try:
            match_panel(path, pairs, lab.panels, None, lab.names)
        except CartflowError as exc:
            problems[pairs] = f"{exc} ({lab.directory} has no panel for it)"
    return list(problems.values())


@app.command()
def demo(
    out: Annotated[
        Path, typer.Option("--out", help="Folder for the demo store and results.")
    ] = Path("demo-out"),
    bundled: Annotated[
        bool, typer.Option(help="Use the small committed cohort in fixtures/ instead.")
    ] = False,
    events: Annotated[
        int, typer.Option(min=500, max=MAX_EVENTS, help="Events per file of the generated cohort.")
    ] = 20_000,
    config: ConfigOption = None,
    force: ForceOption = False,
) -> None:
    """Run the whole chain on a freshly generated demo cohort (or the bundled one), gated
    and analysed with the configuration (default: the shipped CAR-T one)."""
    lab = _lab_config(config)
    _claim_out(out, force)
    if bundled and (FIXTURE_COHORT / "manifest.csv").is_file():
        batch = FIXTURE_COHORT
    else:
        from pipeline.simulate import SimulationConfig, simulate_cohort

        batch = out / "cohort"
        if not (batch / "manifest.csv").is_file():
            simulate_cohort(batch, SimulationConfig(patients=3, seed=20251121, events=events))
        console.print(f"demo: cohort of 3 patients in {batch}")
    from pipeline.batch import RunSettings

    db_path = out / "cartflow.sqlite"
    settings = RunSettings(
        out=out,
        clinical=batch / "clinical.csv",
        workers=os.cpu_count() or 1,
        kinetics=_kinetics_options(False, False, lab.analysis),
        analysis=lab.analysis,
        config=lab,
        lab_gates=_lab_gates([], lab),
    )
    summary = _run_once(batch, str(db_path), batch / "manifest.csv", None, settings)
    console.print(f"demo: results are in {out.resolve()} (store {db_path.resolve()})")
    raise typer.Exit(summary.exit_code)


@app.command()
def spillover(
    controls: Annotated[
        Path, typer.Argument(help="Folder of single-stain controls and one unstained control.")
    ],
    out: Annotated[Path, typer.Option(help="Spillover matrix CSV to write.")] = Path(
        "spillover.csv"
    ),
    config: ConfigOption = None,
) -> None:
    """Compute a spillover matrix from single-stain controls (positive vs negative medians per
    detector, as FlowJo and FACSDiva do); use it with `gate --spillover` or a panel's
    `spillover:` (with --config, the panels whose detectors it covers are named)."""
    from pipeline.spillover import spillover_from_folder

    lab = _lab_config(config)
    if not controls.is_dir():
        raise _fail(f"{controls}: not a folder")
    _writable(out, folder=False)
    try:
        result = spillover_from_folder(controls)
    except CartflowError as exc:
        raise _fail(str(exc)) from None
    result.write_csv(out)
    console.print(f"spillover: {len(result.detectors)} detectors, negative: {result.unstained}")
    for c in result.controls:
        console.print(
            f"  {c.file}: {c.detector}, {c.positive_events:,} positive events (above "
            f"{c.threshold:.4g}, median {c.positive_median:.4g}) vs {c.negative_events:,} "
            f"unstained (median {c.negative_median:.4g})",
            soft_wrap=True,
        )
    console.print(f"matrix: {out}")
    covered = [p.id for p in lab.panels if {c.channel for c in p.channels} <= set(result.detectors)]
    if covered:
        console.print(f"  covers the detectors of panel(s) {', '.join(covered)} "
                      f"(name it there as `spillover: {out.name}`)", soft_wrap=True)  # fmt: skip


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
    from pipeline.config import init_config

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
    from pipeline.config import DEFAULT_CONFIG_DIR, check_config

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
    from panels import read_marker_names
    from pipeline.config import config_directory
    from pipeline.outputs import write_text
    from pipeline.panel_tools import draft_panel

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
    from pipeline.panel_tools import check_file_panel

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


def _store_failure(exc: BaseException) -> str | None:
    """The one-line problem of a store that failed mid-command (locked by another process,
    read-only, gone), or None for any other error."""
    if "sqlalchemy" not in sys.modules:  # not imported: the error cannot be one of its own
        return None
    from sqlalchemy.exc import SQLAlchemyError

    from pipeline.errors import first_line

    if not isinstance(exc, SQLAlchemyError):
        return None
    problem = first_line(getattr(exc, "orig", None) or exc)
    if "locked" in problem:
        problem += " (another process is writing to it; try again when it is done)"
    return problem


def _terminate(signum: int, _frame) -> None:
    """SIGTERM ends the command as Ctrl-C does: runs are marked failed, workers stop."""
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except SystemExit as exc:
        if exc.code == 130:  # typer's exit on Ctrl-C (and on SIGTERM, through _terminate)
            errors.print("interrupted: a run in progress is marked failed; run again to finish")
        raise
    except CartflowError as exc:
        errors.print(f"error: {exc}", soft_wrap=True)
        sys.exit(1)
    except OSError as exc:  # an output that could not be written after all (a full disk)
        where = f"{exc.filename}: " if exc.filename else ""
        errors.print(f"error: {where}{exc.strerror or exc}", soft_wrap=True)
        sys.exit(1)
    except Exception as exc:
        problem = _store_failure(exc)
        if problem is None:
            raise
        errors.print(f"error: the store failed: {problem}", soft_wrap=True)
        sys.exit(1)

