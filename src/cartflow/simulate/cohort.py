"""Simulating a cohort: its configuration, one patient's files, and the cohort's outputs."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import partial
from pathlib import Path

import numpy as np

from cartflow.panels import Panel, load_panels
from cartflow.simulate.acquire import Plan, acquire
from cartflow.simulate.cohort_model import (
    STUDY_START,
    CohortEffects,
    draw_patient,
    nominal_day,
    sample_days,
)
from cartflow.simulate.fcs_writer import write_fcs, write_truth
from cartflow.simulate.instrument import DETECTORS, NOMINAL_BEADS, PARALLEL_MIN_EVENTS, spill_matrix
from cartflow.simulate.populations import tube_labels
from cartflow.simulate.tables import (
    _PREFIXES,
    CLINICAL_HEADER,
    MANIFEST_HEADER,
    PATIENT_HEADER,
    TIMEPOINT_HEADER,
    clinical_row,
    patient_truth,
    timepoint_row,
    write_csv,
)


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate: cohort size, seed, events per file, layout, tubes and timepoints."""

    patients: int = 6
    seed: int = 0
    events: int = 50_000  # per file: cells, beads, debris, doublets and clog events together
    cytometer: str = "FACSLyric"  # or "FACSCanto II"
    tubes: tuple[str, ...] = ("memory", "function", "bcell")
    timepoints: tuple[str, ...] = ("D5", "D7", "D11", "D14", "D21", "D28", "M3", "M6", "M12")
    leukapheresis: bool = False  # add an "LA" sample at nominal day -30
    effects: CohortEffects = field(default_factory=CohortEffects)


@dataclass(frozen=True)
class CohortSummary:
    """Where simulate_cohort wrote the cohort."""

    out_dir: Path
    files: tuple[Path, ...]
    manifest: Path
    clinical: Path
    truth_dir: Path


def _bead_lot(seed: int, sample_date: date) -> tuple[str, int]:
    """Counting-bead lot in use on a date (a new lot every 120 days) and its beads per tube."""
    lot = (sample_date - STUDY_START).days // 120
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(4, lot + 100)))
    return f"TC{lot + 31:04d}", round(NOMINAL_BEADS * (1 + 0.03 * float(rng.standard_normal())))


def _panel_for(panels: tuple[Panel, ...], tube: str, cytometer: str) -> Panel:
    for panel in panels:
        if panel.tube == tube and panel.cytometer == cytometer:
            return panel
    raise ValueError(f"no panel for tube {tube!r} on {cytometer!r}")


def _detectors(panels: tuple[Panel, ...], cytometer: str) -> tuple[str, ...]:
    if cytometer not in DETECTORS:
        raise ValueError(f"cytometer must be one of {', '.join(DETECTORS)}, not {cytometer!r}")
    used = {c.channel for p in panels if p.cytometer == cytometer for c in p.channels}
    unknown = used - set(DETECTORS[cytometer])
    if unknown:
        raise ValueError(f"panels use detectors the {cytometer} model lacks: {sorted(unknown)}")
    return tuple(d for d in DETECTORS[cytometer] if d in used)


@dataclass(frozen=True)
class _PatientOutput:
    files: tuple[Path, ...]
    manifest: tuple[dict, ...]
    timepoints: tuple[dict, ...]
    clinical: dict
    truth: dict


def _simulate_patient(out_dir: Path, config: SimulationConfig, index: int) -> _PatientOutput:
    """Every file of one patient, with its manifest, truth and clinical rows."""
    panels = load_panels()
    detectors = _detectors(panels, config.cytometer)
    tube_panels = {tube: _panel_for(panels, tube, config.cytometer) for tube in config.tubes}
    patient = draw_patient(config.seed, index, config.effects)
    days = sample_days(config.seed, patient, _timepoint_labels(config))
    files: list[Path] = []
    manifest, timepoints = [], []
    number = 0
    for label in sorted(days, key=nominal_day):
        day, nominal = days[label], nominal_day(label)
        when = patient.infusion_date + timedelta(days=day)
        clock = np.random.default_rng(
            np.random.SeedSequence(config.seed, spawn_key=(5, index, nominal + 1000))
        ).uniform(8 * 3600, 15 * 3600)
        spill = spill_matrix(config.seed, config.cytometer, detectors, when)
        concentrations = patient.concentrations(day)
        marks = patient.mark_probabilities(day)
        for tube in config.tubes:
            number += 1
            panel = tube_panels[tube]
            plan = Plan(
                patient=patient,
                timepoint=label,
                nominal_day=nominal,
                day=day,
                sample_date=when,
                tube=tube,
                panel=panel,
                number=number,
                start_seconds=clock + 600.0 * _tube_code(tube),
                concentrations=concentrations,
                marks=marks,
            )
            lot, beads = _bead_lot(config.seed, when) if panel.beads else (None, None)
            key = (3, index, nominal + 1000, _tube_code(tube))
            rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=key))
            acq = acquire(rng, plan, detectors, spill, config.events, beads)
            path = out_dir / plan.file_name
            write_fcs(path, plan, acq, config.cytometer, detectors)
            write_truth(out_dir / "truth" / f"{path.stem}.parquet", tube, acq)
            files.append(path)
            manifest.append(
                {
                    "file": plan.file_name,
                    "patient": patient.patient,
                    "timepoint": label,
                    "tube": tube,
                    "blood_volume_ul": plan.blood_volume_ul,
                    "beads_per_tube": beads,
                    "sample_date": when.isoformat(),
                }
            )
            timepoints.append(timepoint_row(plan, acq, beads, lot))
    return _PatientOutput(
        files=tuple(files),
        manifest=tuple(manifest),
        timepoints=tuple(timepoints),
        clinical=clinical_row(patient),
        truth=patient_truth(patient, days),
    )


def _timepoint_labels(config: SimulationConfig) -> tuple[str, ...]:
    labels = (("LA",) if config.leukapheresis else ()) + tuple(config.timepoints)
    for label in labels:
        nominal_day(label)
    return labels


def _auto_workers(config: SimulationConfig) -> int:
    work = config.patients * len(config.tubes) * len(config.timepoints) * config.events
    if work < PARALLEL_MIN_EVENTS:
        return 1
    return max(1, min(os.cpu_count() or 1, config.patients))


def simulate_cohort(
    out_dir: Path, config: SimulationConfig, *, workers: int | None = None
) -> CohortSummary:
    """Write a synthetic cohort (FCS files, manifest, clinical data, ground truth) to out_dir.

    ``workers`` > 1 simulates patients in that many processes (default: one per core for
    large cohorts, else none); the output is byte-identical whatever the number.
    """
    out_dir = Path(out_dir)
    (out_dir / "truth").mkdir(parents=True, exist_ok=True)
    panels = load_panels()
    _detectors(panels, config.cytometer)
    for tube in config.tubes:
        _panel_for(panels, tube, config.cytometer)
    _timepoint_labels(config)
    workers = _auto_workers(config) if workers is None else max(1, workers)
    indices = range(config.patients)
    if workers > 1 and config.patients > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            outputs = list(pool.map(partial(_simulate_patient, out_dir, config), indices))
    else:
        outputs = [_simulate_patient(out_dir, config, i) for i in indices]

    manifest_path, clinical_path = out_dir / "manifest.csv", out_dir / "clinical.csv"
    write_csv(manifest_path, MANIFEST_HEADER, [r for o in outputs for r in o.manifest])
    write_csv(clinical_path, CLINICAL_HEADER, [o.clinical for o in outputs])
    labels = dict.fromkeys(label for tube in config.tubes for label in tube_labels(tube))
    columns = [f"{prefix}:{label}" for prefix in _PREFIXES for label in labels]
    write_csv(
        out_dir / "truth" / "timepoints.csv",
        TIMEPOINT_HEADER + columns,
        [r for o in outputs for r in o.timepoints],
    )
    truth = [o.truth for o in outputs]
    write_csv(out_dir / "truth" / "patients.csv", PATIENT_HEADER, truth)
    return CohortSummary(
        out_dir=out_dir,
        files=tuple(f for o in outputs for f in o.files),
        manifest=manifest_path,
        clinical=clinical_path,
        truth_dir=out_dir / "truth",
    )


def _tube_code(tube: str) -> int:
    return ("memory", "function", "bcell").index(tube)
