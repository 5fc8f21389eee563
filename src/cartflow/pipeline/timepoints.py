"""Counts stage: gated event counts → one row per patient × timepoint × population with
cells/µL (bead single-platform or dual-platform), exact intervals, LOD/LLOQ and percentages."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date

import pandas as pd

from cartflow.pipeline.counts import (
    Concentration,
    CountSettings,
    bead_concentration,
    dual_platform_concentration,
    percentage,
)
from cartflow.pipeline.records import PopulationCount

DRIFT_DAYS = 2


@dataclass(frozen=True)
class Haematology:
    """Haematology-analyser counts for dual-platform concentrations (cells/µL)."""

    table: pd.DataFrame  # columns: patient, date, and alc_per_ul and/or wbc_per_ul

    def lookup(self, patient: str, when: date | None, column: str) -> float | None:
        if when is None or column not in self.table:
            return None
        match = self.table[(self.table["patient"] == patient) & (self.table["date"] == when)]
        values = match[column].dropna()
        return float(values.iloc[0]) if len(values) else None


def load_haematology(path) -> Haematology:
    """A haematology-analyser table: patient, date and alc_per_ul and/or wbc_per_ul."""
    from cartflow.io.errors import CartflowError

    try:
        table = pd.read_csv(path, dtype={"patient": str})
    except (OSError, ValueError) as exc:
        raise CartflowError(path, f"cannot be read: {exc}") from exc
    missing = [c for c in ("patient", "date") if c not in table]
    if missing or not {"alc_per_ul", "wbc_per_ul"} & set(table.columns):
        raise CartflowError(path, "needs columns patient, date and alc_per_ul and/or wbc_per_ul")
    dates = pd.to_datetime(table["date"], errors="coerce")
    bad = table.index[dates.isna()].tolist()
    if bad:
        raise CartflowError(path, f"row {bad[0] + 1}, column date: not a date")
    table = table.assign(date=dates.dt.date)
    for column in sorted({"alc_per_ul", "wbc_per_ul"} & set(table.columns)):
        values = pd.to_numeric(table[column], errors="coerce")
        given = table[column].notna()
        wrong = table.index[given & ~(values.gt(0) & values.lt(float("inf")))].tolist()
        if wrong:
            value = table[column][wrong[0]]
            value = value.item() if hasattr(value, "item") else value  # -1500, not np.int64(…)
            problem = f"{value!r} is not a positive number of cells/µL"
            raise CartflowError(path, f"row {wrong[0] + 1}, column {column}: {problem}")
        table[column] = values
    repeated = table.duplicated(["patient", "date"], keep=False)
    if repeated.any():
        first = table[repeated].iloc[0]
        raise CartflowError(path, f"patient {first.patient} has two rows for {first.date}")
    return Haematology(table)


@dataclass(frozen=True)
class TimepointSettings:
    counts: CountSettings = field(default_factory=CountSettings)
    bead_population: str = "beads"
    dual_references: Mapping[str, str] = field(
        default_factory=lambda: {"lymphocytes": "alc_per_ul", "leukocytes": "wbc_per_ul"}
    )


def actual_day(sample_date: date | None, infusion: date | None) -> int | None:
    if sample_date is None or infusion is None:
        return None
    return (sample_date - infusion).days


def _concentration(
    sample: pd.DataFrame,
    counts: Mapping[str, int],
    events: int,
    haematology: Haematology | None,
    settings: TimepointSettings,
) -> Concentration | None:
    first = sample.iloc[0]
    beads = counts.get(settings.bead_population)
    if beads is not None:
        return bead_concentration(
            events,
            beads,
            _number(first["beads_per_tube"]),
            _number(first["blood_volume_ul"]),
            settings.counts,
        )
    if haematology is None:
        return None
    for reference, column in settings.dual_references.items():
        per_ul = haematology.lookup(first["patient"], first["sample_date"], column)
        if reference in counts and per_ul:
            return dual_platform_concentration(events, counts[reference], per_ul, settings.counts)
    return None


def _number(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def timepoint_table(
    rows: list[PopulationCount],
    infusion_dates: Mapping[str, date] | None = None,
    haematology: Haematology | None = None,
    settings: TimepointSettings = TimepointSettings(),
) -> pd.DataFrame:
    """One row per sample × population from the store's latest counts, samples in the order
    patient, day, tube (whatever order they were gated in), populations in template order."""
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows).sort_values(
        ["patient", "nominal_day", "tube", "sample_id"], kind="stable"
    )
    records = []
    infusion_dates = infusion_dates or {}
    for _, sample in frame.groupby("sample_id", sort=False):
        counts = dict(zip(sample["population"], sample["count"], strict=True))
        first = sample.iloc[0]
        day = actual_day(first["sample_date"], infusion_dates.get(first["patient"]))
        nominal = int(first["nominal_day"])
        for row in sample.itertuples(index=False):
            pct = percentage(row.count, int(_number(row.parent_count) or 0), settings.counts)
            conc = _concentration(sample, counts, row.count, haematology, settings)
            records.append(
                {
                    "patient": row.patient,
                    "timepoint": row.timepoint,
                    "nominal_day": nominal,
                    "actual_day": day,
                    "day_drift": day is not None
                    and nominal > 0
                    and abs(day - nominal) > DRIFT_DAYS,
                    "tube": row.tube,
                    "population": row.population,
                    "parent": row.parent,
                    "events": row.count,
                    "parent_events": row.parent_count,
                    "percent_of_parent": pct.percent,
                    "percent_ci_low": pct.ci_low,
                    "percent_ci_high": pct.ci_high,
                    "percent_evaluable": pct.evaluable,
                    "cells_per_ul": conc.cells_per_ul if conc else None,
                    "cells_ci_low": conc.ci_low if conc else None,
                    "cells_ci_high": conc.ci_high if conc else None,
                    "lod_cells_per_ul": conc.lod if conc else None,
                    "lloq_cells_per_ul": conc.lloq if conc else None,
                    "below_lod": conc.below_lod if conc else None,
                    "below_lloq": conc.below_lloq if conc else None,
                    "count_method": conc.method if conc else None,
                    "count_inputs": json.dumps(conc.inputs, default=str) if conc else None,
                    "count_flags": ";".join(conc.flags) if conc else "no_counting_reference",
                    "sample_id": row.sample_id,
                    "file": row.file,
                    "sha256": row.sha256,
                    "template_id": row.template_id,
                    "template_sha256": row.template_sha256,
                    "run_id": row.run_id,
                }
            )
    return pd.DataFrame.from_records(records)
