"""Tidy tables for downstream analyses, with a data dictionary, and an optional pseudonymisation.

Only identities established through the manifest or the identity rules leave the store: FCS
keywords (``$SRC`` and other patient-name fields) are never exported, and with a key every
patient id becomes a stable keyed pseudonym (HMAC-SHA-256) while file names are left out.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from cartflow.io.errors import CartflowError
from cartflow.io.outputs import write_csv, write_parquet
from cartflow.pipeline.clinical import ClinicalTable, infusion_dates
from cartflow.pipeline.counts import CountSettings
from cartflow.pipeline.kinetics import KINETICS_COLUMNS, KineticsOptions, patient_kinetics
from cartflow.pipeline.timepoints import TimepointSettings, timepoint_table
from cartflow.store import Store

Format = Literal["csv", "parquet"]



DICTIONARY: dict[str, dict[str, str]] = {
    "samples": {
        "sample_id": "store id of the sample",
        "patient": "patient id (from the manifest or identity rules; pseudonymised on request)",
        "timepoint": "timepoint label (D5 … M12, LA)",
        "nominal_day": "nominal day after infusion (M3 = 90, M6 = 180, M12 = 365)",
        "tube": "tube (memory, function, bcell)",
        "panel_id": "panel the file was checked against",
        "sha256": "SHA-256 of the FCS file's bytes",
        "file": "file name (left out when pseudonymised)",
        "blood_volume_ul": "blood volume stained, µL",
        "beads_per_tube": "counting beads per tube (lot-specific)",
        "sample_date": "date the sample was drawn",
    },
    "populations": {
        "sample_id": "store id of the sample",
        "patient": "patient id",
        "timepoint": "timepoint label",
        "tube": "tube",
        "population": "population id of the gating template",
        "parent": "parent population",
        "count": "events in the population",
        "parent_count": "events in the parent",
        "template_sha256": "SHA-256 of the gating template used",
        "run_id": "run that gated the sample",
    },
    "timepoints": {
        "patient": "patient id",
        "timepoint": "timepoint label",
        "nominal_day": "nominal day after infusion",
        "actual_day": "day after infusion from sample and infusion dates, when both are known",
        "day_drift": "actual day more than 2 days from the nominal one",
        "tube": "tube",
        "population": "population id",
        "events": "events in the population",
        "percent_of_parent": "events as % of the parent (empty when not evaluable)",
        "percent_ci_low": "lower 95 % binomial limit of the percentage",
        "percent_ci_high": "upper 95 % binomial limit of the percentage",
        "percent_evaluable": "parent has at least LLOQ events",
        "cells_per_ul": "cells/µL of blood",
        "cells_ci_low": "lower exact 95 % limit, cells/µL",
        "cells_ci_high": "upper exact 95 % limit, cells/µL",
        "lod_cells_per_ul": "limit of detection for this sample, cells/µL (--lod-events, 20)",
        "lloq_cells_per_ul": "lower limit of quantification, cells/µL (--lloq-events, 50)",
        "below_lod": "fewer events than the LOD",
        "below_lloq": "fewer events than the LLOQ",
        "count_method": "single-platform beads or dual-platform",
        "count_inputs": "inputs of the concentration (JSON)",
        "count_flags": "why no concentration was given, or what to watch",
        "parent": "parent population",
        "parent_events": "events in the parent",
        "sample_id": "store id of the sample",
        "sha256": "SHA-256 of the FCS file's bytes",
        "template_id": "gating template used",
        "template_sha256": "SHA-256 of the gating template used",
        "run_id": "run that gated the sample",
    },
    "kinetics": {"patient": "patient id"} | KINETICS_COLUMNS,
}


@dataclass(frozen=True)
class Pseudonymiser:
    """Stable keyed pseudonyms: the same key always gives the same pseudonym."""

    key: bytes

    def __call__(self, patient: str) -> str:
        digest = hmac.new(self.key, patient.encode("utf-8"), hashlib.sha256).hexdigest()
        return f"P-{digest[:10]}"

    def date_shift_days(self, patient: str) -> int:
        """A keyed shift of this patient's dates, within ±MAX_DATE_SHIFT_DAYS, never 0."""
        message = f"date-shift:{patient}".encode()
        value = int(hmac.new(self.key, message, hashlib.sha256).hexdigest()[:8], 16)
        days = value % (2 * MAX_DATE_SHIFT_DAYS) - MAX_DATE_SHIFT_DAYS
        return days or MAX_DATE_SHIFT_DAYS


def tables(
    store: Store,
    clinical: ClinicalTable | None = None,
    count_settings: CountSettings = CountSettings(),
    kinetics_options: KineticsOptions = KineticsOptions(),
) -> dict[str, pd.DataFrame]:
    """The tidy tables from the store's newest gatings (``clinical``: the table as read)."""
    counts = store.latest_counts()
    infusion, relapse = infusion_dates(clinical)
    settings = TimepointSettings(counts=count_settings)
    timepoints = timepoint_table(counts, infusion, settings=settings)
    kinetics, _ = patient_kinetics(timepoints, options=kinetics_options, relapse_days=relapse)
    samples = pd.DataFrame(store.samples())
    populations = pd.DataFrame(counts)
    if len(populations):
        populations = populations[list(DICTIONARY["populations"])]
    if len(timepoints):
        timepoints = timepoints.drop(columns=["file"])
    return {
        "samples": samples,
        "populations": populations,
        "timepoints": timepoints,
        "kinetics": kinetics,
    }


MAX_DATE_SHIFT_DAYS = 180
IDENTIFYING_COLUMNS = ("file", "sha256")
"""Left out of a pseudonymised export: a file's name or hash leads back to the file."""


def _pseudonymise(frame: pd.DataFrame, alias: Pseudonymiser) -> pd.DataFrame:
    """Patients replaced by pseudonyms, file names and hashes dropped, and every date
    shifted by a keyed number of days per patient (intervals within a patient kept)."""
    frame = frame.copy()
    if "patient" in frame:
        shift = pd.to_timedelta(frame["patient"].map(alias.date_shift_days), unit="D")
        for column in (c for c in frame.columns if c == "date" or c.endswith("_date")):
            dates = pd.to_datetime(frame[column], errors="coerce")
            frame[column] = (dates + shift).dt.date.where(dates.notna(), None)
        frame["patient"] = frame["patient"].map(alias)
    return frame.drop(columns=[c for c in IDENTIFYING_COLUMNS if c in frame])


def export(
    store: Store,
    out_dir: Path,
    fmt: Format = "csv",
    key: str | None = None,
    clinical: ClinicalTable | None = None,
    count_settings: CountSettings = CountSettings(),
    kinetics_options: KineticsOptions = KineticsOptions(),
) -> dict[str, Path]:
    """Write samples, populations, timepoints and kinetics plus data_dictionary.csv."""
    if fmt not in ("csv", "parquet"):
        raise CartflowError(None, f"export format {fmt!r} is not csv or parquet")
    out_dir.mkdir(parents=True, exist_ok=True)
    alias = Pseudonymiser(key.encode("utf-8")) if key else None
    written = {}
    for name, frame in tables(store, clinical, count_settings, kinetics_options).items():
        if alias is not None:
            frame = _pseudonymise(frame, alias)
        path = out_dir / f"{name}.{fmt}"
        if fmt == "csv":
            write_csv(frame, path)
        else:
            write_parquet(frame, path)
        written[name] = path
    rows = [
        {"table": table, "column": column, "description": text}
        for table, columns in DICTIONARY.items()
        for column, text in columns.items()
        if not (alias and column in IDENTIFYING_COLUMNS)
    ]
    dictionary = out_dir / "data_dictionary.csv"
    write_csv(pd.DataFrame(rows), dictionary)
    written["data_dictionary"] = dictionary
    return written
