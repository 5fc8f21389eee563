"""Options shared by several commands, and the count and kinetics settings they give."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cartflow.cli.app import (
    _fail,
)
from cartflow.io.errors import CartflowError

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


KINETICS_HELP = "Anchor day 0 at 0 cells/µL in AUCs (recorded with the result)."
AnchorOption = Annotated[bool, typer.Option(help=KINETICS_HELP)]
LogDownOption = Annotated[bool, typer.Option(help="Linear-up/log-down AUCs.")]


LodOption = Annotated[int, typer.Option(min=1, help="Events below which a count is under the LOD.")]
LloqOption = Annotated[
    int, typer.Option(min=1, help="Events below which a count is under the LLOQ.")
]
BelowLodOption = Annotated[
    str,
    typer.Option(help="Interval of a count below the LOD: zero (from 0) or exact (Poisson)."),
]


def _analysis_settings(path: Path | None, read=None):
    """The analysis settings (an ``OutcomeConfig``) from the file ``path`` names, read once (a
    bad one fails naming file and line); without a path ``read`` (settings already read, e.g.
    the configuration's), else the defaults."""
    from cartflow.pipeline.outcomes import OutcomeConfig, load_outcome_config

    if path is None:
        return read if read is not None else OutcomeConfig()
    try:
        return load_outcome_config(path)
    except CartflowError as exc:
        raise _fail(str(exc)) from None


def _clinical_table(path: Path | None, known_patients=None):
    """The clinical table read once (None without one); a bad one fails listing its
    problems."""
    from cartflow.pipeline.clinical import load_clinical

    if path is None:
        return None
    try:
        return load_clinical(path, known_patients)
    except CartflowError as exc:
        raise _fail(str(exc)) from None


def _haematology(path: Path | None):
    """The haematology counts read once (None without a table); a bad one fails naming file
    and row."""
    from cartflow.pipeline.timepoints import load_haematology

    if path is None:
        return None
    try:
        return load_haematology(path)
    except CartflowError as exc:
        raise _fail(str(exc)) from None


def _kinetics_options(anchor_day0: bool, log_down: bool, settings=None):
    """Kinetics options; the expansion threshold comes from the analysis settings given (an
    ``OutcomeConfig`` as read; None: the defaults)."""
    from cartflow.pipeline.kinetics import KineticsOptions
    from cartflow.pipeline.outcomes import OutcomeConfig

    settings = settings if settings is not None else OutcomeConfig()
    return KineticsOptions(
        anchor_day0=anchor_day0,
        method="linear-up/log-down" if log_down else "linear",
        expansion_threshold_per_ul=settings.expansion_threshold_per_ul,
    )


def _count_settings(lod_events: int, lloq_events: int, below_lod_interval: str):
    from cartflow.pipeline.counts import CountSettings

    if below_lod_interval not in ("zero", "exact"):
        raise _fail(f"--below-lod-interval {below_lod_interval!r} is not zero or exact")
    if lloq_events < lod_events:
        raise _fail(f"--lloq-events {lloq_events} is below --lod-events {lod_events}")
    return CountSettings(
        lod_events=lod_events,
        lloq_events=lloq_events,
        below_lod_from_zero=below_lod_interval == "zero",
    )
