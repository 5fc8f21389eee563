"""Writing one simulated tube: its FCS file (BD-style keywords) and its per-event truth."""

from __future__ import annotations

import io
from array import array
from datetime import date
from pathlib import Path

import flowio
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cartflow.simulate.acquire import Acquisition, Plan
from cartflow.simulate.instrument import (
    _DETECTOR,
    _MONTHS,
    _SCATTER_VOLTAGE,
    CYTOMETER_SERIAL,
    EXPERIMENT,
    RANGE,
    SCATTER,
    TIMESTEP,
    TUBE_LABELS,
)
from cartflow.simulate.populations import tube_labels


def _fcs_date(day: date) -> str:
    return f"{day.day:02d}-{_MONTHS[day.month - 1]}-{day.year}"


def _clock(seconds: float) -> str:
    whole = int(seconds) % 86_400
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _spill_text(detectors: tuple[str, ...], matrix: np.ndarray) -> str:
    values = (repr(round(float(v), 4)) for v in matrix.ravel())
    return ",".join([str(len(detectors)), *detectors, *values])


def write_fcs(
    path: Path, plan: Plan, acq: Acquisition, cytometer: str, detectors: tuple[str, ...]
) -> None:
    """One tube's events as an FCS 3.1 file, with the keywords a BD instrument writes."""
    names = [*SCATTER, *detectors, "Time"]
    stains = {c.channel: f"{c.marker} {c.fluorochrome}" for c in plan.panel.channels}
    labels = ["", "", "", *(stains.get(d, "") for d in detectors), ""]
    meta: dict[str, str] = {}
    for i, name in enumerate(names, start=1):
        meta[f"$P{i}R"] = str(RANGE)
        voltage = _SCATTER_VOLTAGE.get(name) or (_DETECTOR[name][3] if name in _DETECTOR else None)
        if voltage:
            meta[f"$P{i}V"] = str(voltage)
    meta.update(
        {
            "$CYT": cytometer,
            "$CYTSN": CYTOMETER_SERIAL[cytometer],
            "$DATE": _fcs_date(plan.sample_date),
            "$BTIM": _clock(plan.start_seconds),
            "$ETIM": _clock(plan.start_seconds + acq.duration),
            "$FIL": plan.file_name,
            "$SRC": plan.patient.src_name,
            "$TIMESTEP": repr(TIMESTEP),
            "$SPILLOVER": _spill_text(detectors, acq.spill),
            "EXPERIMENT NAME": EXPERIMENT,
            "TUBE NAME": TUBE_LABELS[plan.tube],
            "PATIENT ID": plan.patient.patient,
            "TIMEPOINT": plan.timepoint,
            "SAMPLE ID": _sample_id(plan),
        }
    )
    flat = array("f")
    flat.frombytes(acq.events.astype("<f4").tobytes())  # create_fcs copies an array('f') fast
    buffer = io.BytesIO()
    flowio.create_fcs(buffer, flat, names, labels, meta)
    path.write_bytes(buffer.getvalue())


def _sample_id(plan: Plan) -> str:
    """A laboratory accession number: year, patient and timepoint, no personal data."""
    return f"FC{plan.sample_date:%y}-{plan.patient.index + 1:03d}{plan.nominal_day + 100:03d}"


def write_truth(path: Path, tube: str, acq: Acquisition) -> None:
    """Per-event truth of one tube: population label, disturbed flow, function marks."""
    columns = {
        "population": pa.DictionaryArray.from_arrays(
            pa.array(acq.labels, type=pa.int16()), pa.array(tube_labels(tube), type=pa.string())
        )
    }
    columns["unstable_flow"] = pa.array(acq.unstable, type=pa.bool_())
    for k, name in enumerate(acq.mark_names):
        columns[name] = pa.array(acq.marks[:, k], type=pa.bool_())
    pq.write_table(pa.table(columns), path, compression="zstd")
