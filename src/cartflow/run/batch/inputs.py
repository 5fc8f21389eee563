"""A run's input tables, each read once at its start and handed down to the steps as the
typed object it is: the clinical table and the haematology counts. (The analysis settings
and the lab's ALL-Hematotox table come read with the configuration, in the run's settings.)"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cartflow.io.errors import CartflowError
from cartflow.pipeline.clinical import ClinicalTable, load_clinical
from cartflow.pipeline.timepoints import Haematology, load_haematology


@dataclass(frozen=True)
class RunInputs:
    """The tables a run reads, as read."""

    clinical: ClinicalTable | None = None
    clinical_error: str | None = None
    """Why the clinical table cannot be used (it does not stop the batch: the samples are not
    dated against it and the outcomes are not computed)."""
    haematology: Haematology | None = None


def read_run_inputs(clinical: Path | None, haematology: Path | None) -> RunInputs:
    """Read each table once. A bad haematology table raises (naming file and row: it stops
    the command before any work); a bad clinical table is kept as ``clinical_error``."""
    counts = load_haematology(haematology) if haematology is not None else None
    table, error = None, None
    if clinical is not None:
        try:
            table = load_clinical(clinical)
        except CartflowError as exc:
            error = str(exc)
    return RunInputs(table, error, counts)
