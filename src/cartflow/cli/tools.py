"""``cartflow simulate``, ``demo`` and ``spillover``: synthetic cohort, demo, spillover matrix."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from cartflow.cli.app import (
    _claim_out,
    _fail,
    _lab_config,
    _lab_setup,
    _writable,
    app,
    console,
)
from cartflow.cli.batch import _run_once
from cartflow.cli.gating import _lab_gates
from cartflow.cli.options import (
    ConfigOption,
    ForceOption,
    _kinetics_options,
)
from cartflow.io.errors import CartflowError

REPO_ROOT = Path(__file__).resolve().parents[3]
FIXTURE_COHORT = REPO_ROOT / "fixtures" / "cohort"


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
    from cartflow.simulate import SimulationConfig, simulate_cohort

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
    from cartflow.io.fcs import read_fcs
    from cartflow.panels import match_panel

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
    setup = _lab_setup(config)
    lab = setup.config
    _claim_out(out, force)
    if bundled and (FIXTURE_COHORT / "manifest.csv").is_file():
        batch = FIXTURE_COHORT
    else:
        from cartflow.simulate import SimulationConfig, simulate_cohort

        batch = out / "cohort"
        if not (batch / "manifest.csv").is_file():
            simulate_cohort(batch, SimulationConfig(patients=3, seed=20251121, events=events))
        console.print(f"demo: cohort of 3 patients in {batch}")
    from cartflow.run.batch import RunSettings

    db_path = out / "cartflow.sqlite"
    settings = RunSettings(
        out=out,
        clinical=batch / "clinical.csv",
        workers=os.cpu_count() or 1,
        kinetics=_kinetics_options(False, False, setup.analysis),
        analysis=setup.analysis,
        config=lab,
        lab_gates=_lab_gates([], lab),
        hematotox=setup.hematotox,
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
    from cartflow.pipeline.spillover import spillover_from_folder

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
