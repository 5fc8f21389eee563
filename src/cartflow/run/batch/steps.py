"""The steps of a run after gating: counts and kinetics (follow-up), the outcome stage, the
review queue, and quarantining the files whose worker died."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from cartflow.io.outputs import write_csv, write_parquet
from cartflow.panels.config import LabConfig
from cartflow.pipeline.clinical import ClinicalTable, HematotoxTable, infusion_dates
from cartflow.pipeline.counts import CountSettings
from cartflow.pipeline.kinetics import KineticsOptions, patient_kinetics
from cartflow.pipeline.timepoints import Haematology, TimepointSettings, timepoint_table
from cartflow.pipeline.triage import StoreState
from cartflow.run.batch.work import GateWork
from cartflow.run.ingest import IngestReport
from cartflow.store import Store

if TYPE_CHECKING:
    from cartflow.pipeline.outcomes import OutcomeConfig


@dataclass(frozen=True)
class FollowUp:
    """The tables of the counts and kinetics stages and where they were written."""

    timepoints: pd.DataFrame
    kinetics: pd.DataFrame
    files: dict[str, Path] = field(default_factory=dict)


def follow_up(
    store: Store,
    run_id: int,
    out_dir: Path,
    *,
    clinical: ClinicalTable | None = None,
    options: KineticsOptions = KineticsOptions(),
    haematology: Haematology | None = None,
    count_settings: CountSettings = CountSettings(),
) -> FollowUp:
    """Counts per timepoint and kinetics per patient from the store; written as CSV and
    Parquet, and the kinetic summaries stored under ``run_id``. A haematology table gives
    dual-platform counts for tubes without beads; both tables come read (once per command)."""
    infusion, relapse = infusion_dates(clinical)
    settings = TimepointSettings(counts=count_settings)
    timepoints = timepoint_table(store.latest_counts(), infusion, haematology, settings)
    kinetics, long_rows = patient_kinetics(timepoints, options=options, relapse_days=relapse)
    store.record_kinetics(run_id, long_rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, table in (("timepoints", timepoints), ("kinetics", kinetics)):
        csv_path, parquet_path = out_dir / f"{name}.csv", out_dir / f"{name}.parquet"
        write_csv(table, csv_path)
        write_parquet(table, parquet_path)
        files[name] = csv_path
        files[f"{name}_parquet"] = parquet_path
    return FollowUp(timepoints, kinetics, files)


def review_state(
    store: Store,
    timepoints: pd.DataFrame,
    options: KineticsOptions = KineticsOptions(),
    counts: CountSettings = CountSettings(),
    patient: str | None = None,
    config: LabConfig | None = None,
):
    """The review queue of the store's current state (see :mod:`cartflow.pipeline.triage`)."""
    from cartflow.pipeline.kinetics import peak_days
    from cartflow.pipeline.triage import review_queue

    peaks = peak_days(timepoints, options)
    return review_queue(
        store_state(store), timepoints, peaks, counts.lod_events, counts.lloq_events, patient,
        config,
    )  # fmt: skip


def store_state(store: Store) -> StoreState:
    """What triage reads of the store, read once."""
    return StoreState(
        samples={s.sample_id: s for s in store.samples()},
        excluded=frozenset(store.excluded_samples()),
        flags=store.sample_flags(),
        fallbacks=store.fallback_reasons(),
        quarantined=tuple(store.quarantined()),
        accepted=store.accepted(),
        newest=store.newest_gatings(),
    )


def outcome_inputs(follow: FollowUp) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The per-patient table (kinetics.csv's columns, under the same names) and the timepoint
    table the outcome stage reads."""
    return follow.kinetics, follow.timepoints


def outcomes_stage(
    follow: FollowUp,
    clinical: ClinicalTable,
    out_dir: Path,
    settings: OutcomeConfig,
    hematotox: HematotoxTable | None = None,
):
    """The outcome-correlation stage on this store's patients, with the tables the command
    read: the clinical table (checked against the store's patients by the command that needs
    it) and ``hematotox``, the lab configuration's point table, used unless the analysis
    settings name one (read then by the stage; with neither, the shipped one)."""
    from dataclasses import replace

    from cartflow.pipeline.outcomes import run_outcomes

    patients, points = outcome_inputs(follow)
    if settings.hematotox_table is None and hematotox is not None:  # recorded as in force
        settings = replace(settings, hematotox_table=Path(hematotox.origin))
    else:
        hematotox = None
    return run_outcomes(
        clinical,
        patients,
        out_dir,
        settings,
        points if len(points) else None,
        hematotox=hematotox,
    )


def quarantine_lost_workers(
    store: Store, run_id: int, ingest: IngestReport, gated: Sequence[GateWork]
) -> bool:
    """Quarantine the files whose worker process died (the run goes on, exit 2); True when
    there were any."""
    from cartflow.run.ingest import FileOutcome

    lost = [work for work in gated if work.worker_died]
    for work in lost:
        reason = f"gating not done: {work.error}"
        store.quarantine(run_id, f"{work.sha256}:worker", str(work.path), work.sha256,
                         "worker", reason)  # fmt: skip
        ingest.outcomes.append(FileOutcome(work.path, "quarantined", work.sha256, reason, "worker"))
    return bool(lost)
