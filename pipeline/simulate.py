"""Synthetic CAR-T monitoring cohort: BD-style FCS files with per-event ground truth.

Each file is one tube (memory, function, B-cell count) of one blood sample. Events are drawn
in compensated space from a population hierarchy, mixed back through the file's $SPILLOVER
matrix and written in acquisition order with FlowIO. Counting beads and the blood volume
make absolute counts recoverable: cells/µL = events / bead events × beads per tube / µL.
Everything is deterministic per seed; every file and patient has its own random stream.
"""

from __future__ import annotations

import csv
import io
import math
import multiprocessing
import os
from array import array
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import partial
from pathlib import Path

import flowio
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.special import ndtri

from panels import Panel, load_panels
from pipeline.cohort_model import (
    CELL_POPULATIONS,
    FUNCTION_MARKS,
    LYMPH,
    PARTICLES,
    STUDY_START,
    CohortEffects,
    PatientModel,
    day_to_date,
    draw_patient,
    nominal_day,
    sample_days,
)

__all__ = [
    "CohortEffects",
    "CohortSummary",
    "SimulationConfig",
    "simulate_cohort",
    "tube_label",
    "tube_labels",
]

TUBE_LABELS = {"memory": "CAR-T memory", "function": "CAR-T function", "bcell": "BCELL COUNT"}
BLOOD_VOLUME_UL = {"memory": 100.0, "function": 100.0, "bcell": 50.0}
NOMINAL_BEADS = 50_000
TIMESTEP = 0.01
RANGE = 262144
EXPERIMENT = "CAR-T monitoring"
CLOG_PROBABILITY = 0.3
PARALLEL_MIN_EVENTS = 5_000_000  # cohorts smaller than this are simulated in one process
STAIN_SHIFT_SD = 0.08  # log10 sd of each marker's positive median, per file (standardised settings)
PHOTON_VARIANCE = 25.0  # extra variance per unit of light in a detector (spreading)
SCATTER = ("FSC-A", "FSC-H", "SSC-A")
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")

DETECTORS = {
    "FACSLyric": (
        "BV421-A", "BV510-A", "BV605-A", "FITC-A", "PE-A", "PerCP-Cy5.5-A", "PE-Cy7-A",
        "APC-A", "APC-R700-A", "APC-H7-A",
    ),
    "FACSCanto II": (
        "V450-A", "V500-C-A", "FITC-A", "PE-A", "PerCP-Cy5-5-A", "PE-Cy7-A", "APC-A", "APC-H7-A",
    ),
}  # fmt: skip
CYTOMETER_SERIAL = {"FACSLyric": "R658800412", "FACSCanto II": "V96300157"}

# detector: (electronic noise sd, autofluorescence factor, bead log10 level, voltage)
_DETECTOR = {
    "BV421-A": (70.0, 1.0, 4.55, 452), "V450-A": (65.0, 1.0, 4.50, 436),
    "BV510-A": (100.0, 1.4, 4.60, 468), "V500-C-A": (100.0, 1.4, 4.55, 471),
    "BV605-A": (90.0, 0.6, 4.50, 505), "FITC-A": (60.0, 1.0, 4.70, 487),
    "PE-A": (55.0, 0.6, 4.80, 455), "PerCP-Cy5.5-A": (85.0, 0.5, 4.50, 522),
    "PerCP-Cy5-5-A": (85.0, 0.5, 4.50, 530), "PE-Cy7-A": (50.0, 0.3, 4.60, 560),
    "APC-A": (45.0, 0.25, 4.65, 548), "APC-R700-A": (65.0, 0.25, 4.40, 575),
    "APC-H7-A": (55.0, 0.2, 4.45, 520),
}  # fmt: skip
_SCATTER_VOLTAGE = {"FSC-A": 380, "FSC-H": 380, "SSC-A": 340}
_BRIGHTNESS = {
    "BV421": 0.15, "BV510": -0.1, "V500-C": -0.15, "BV605": 0.05, "FITC": -0.1, "PE": 0.2,
    "PerCP-Cy5.5": -0.1, "PE-Cy7": 0.05, "APC": 0.1, "APC-R700": -0.1, "APC-H7": -0.15,
}  # fmt: skip

# (source detector, receiving detector): fraction of the source's signal seen there
_SPILL = {
    "FACSLyric": {
        ("BV421-A", "BV510-A"): 0.16, ("BV421-A", "BV605-A"): 0.02,
        ("BV510-A", "BV605-A"): 0.12, ("BV510-A", "FITC-A"): 0.06,
        ("BV605-A", "PE-A"): 0.02, ("BV605-A", "PerCP-Cy5.5-A"): 0.03,
        ("FITC-A", "PE-A"): 0.22, ("FITC-A", "PerCP-Cy5.5-A"): 0.03,
        ("PE-A", "BV605-A"): 0.05, ("PE-A", "PerCP-Cy5.5-A"): 0.14, ("PE-A", "PE-Cy7-A"): 0.03,
        ("PerCP-Cy5.5-A", "PE-Cy7-A"): 0.09, ("PerCP-Cy5.5-A", "APC-A"): 0.02,
        ("PerCP-Cy5.5-A", "APC-R700-A"): 0.12, ("PE-Cy7-A", "PerCP-Cy5.5-A"): 0.02,
        ("PE-Cy7-A", "APC-H7-A"): 0.04, ("APC-A", "APC-R700-A"): 0.28, ("APC-A", "APC-H7-A"): 0.06,
        ("APC-R700-A", "APC-A"): 0.02, ("APC-R700-A", "APC-H7-A"): 0.18,
        ("APC-H7-A", "PE-Cy7-A"): 0.07, ("APC-H7-A", "APC-R700-A"): 0.05,
    },
    "FACSCanto II": {
        ("V450-A", "V500-C-A"): 0.14, ("V500-C-A", "FITC-A"): 0.05, ("FITC-A", "PE-A"): 0.20,
        ("FITC-A", "PerCP-Cy5-5-A"): 0.03, ("PE-A", "PerCP-Cy5-5-A"): 0.15,
        ("PE-A", "PE-Cy7-A"): 0.03, ("PerCP-Cy5-5-A", "PE-Cy7-A"): 0.10,
        ("PerCP-Cy5-5-A", "APC-A"): 0.02, ("PE-Cy7-A", "APC-H7-A"): 0.04,
        ("APC-A", "APC-H7-A"): 0.08, ("APC-H7-A", "PE-Cy7-A"): 0.06, ("APC-H7-A", "APC-A"): 0.02,
    },
}  # fmt: skip

# ---------------------------------------------------------------------------------------------
# Populations: generation rows, their expression and scatter, and the labels each tube reports
# ---------------------------------------------------------------------------------------------
ROWS: tuple[str, ...] = (*CELL_POPULATIONS, "debris", "dead", "beads", "clog")
SOURCES: tuple[str, ...] = (*CELL_POPULATIONS, *PARTICLES, "beads", "clog")
_N_CELLS = len(CELL_POPULATIONS)
_ROW = {name: i for i, name in enumerate(ROWS)}
_SRC = {name: i for i, name in enumerate(SOURCES)}
MARKERS = ("CD45", "CD3", "CAR", "CD4", "CD8", "CD45RA", "CD62L", "CD27", "CD95", "CD19",
           *FUNCTION_MARKS)  # fmt: skip
_MARKER = {m: i for i, m in enumerate(MARKERS)}
_MARK_LEVEL = {"PD1": (3.35, 0.2), "LAG3": (3.45, 0.2), "CD71": (3.4, 0.2), "Ki67": (3.5, 0.22),
               "TCRgd": (3.8, 0.15)}  # fmt: skip

Component = tuple[float, float, float]  # probability, log10 median, log10 sd

_SUBSET_EXPRESSION: dict[str, dict[str, tuple[Component, ...]]] = {
    "naive": {"CD45RA": ((1, 3.5, 0.12),), "CD62L": ((1, 3.3, 0.15),), "CD27": ((1, 3.3, 0.12),)},
    "SCM": {
        "CD45RA": ((1, 3.4, 0.15),),
        "CD62L": ((1, 3.3, 0.15),),
        "CD27": ((1, 4.05, 0.1),),  # CD27 bright: what sets SCM apart
        "CD95": ((1, 3.2, 0.15),),  # CD95 clear of the negatives: what sets SCM apart from naive
    },
    "CM": {
        "CD45RA": ((0.1, 2.3, 0.2),),
        "CD62L": ((1, 3.2, 0.15),),
        "CD27": ((1, 3.45, 0.12),),
        "CD95": ((1, 3.3, 0.15),),
    },
    "EM": {"CD45RA": ((0.1, 2.3, 0.2),), "CD27": ((0.5, 3.2, 0.2),), "CD95": ((1, 3.5, 0.15),)},
    "TEMRA": {
        "CD45RA": ((1, 3.6, 0.15),),
        "CD27": ((0.15, 2.8, 0.25),),
        "CD95": ((1, 3.4, 0.15),),
    },
    "DN": {
        "CD45RA": ((0.5, 3.3, 0.2),),
        "CD62L": ((0.4, 2.8, 0.2),),
        "CD27": ((0.6, 3.3, 0.2),),
        "CD95": ((0.7, 3.2, 0.2),),
    },
}


def _expression(row: str) -> dict[str, tuple[Component, ...]]:
    """Positive components of each marker on a population; absent markers are negative."""
    parts = row.split("/")
    if row == "debris":
        return {"CD45": ((0.15, 2.3, 0.4),)}
    if row == "dead":
        return {"CD45": ((0.7, 3.0, 0.35),), "CD3": ((0.2, 2.8, 0.4),)}
    if parts[0] != "leukocytes":
        return {}
    if parts[1] == "granulocytes":
        return {"CD45": ((1, 3.05, 0.12),), "CD62L": ((0.9, 3.1, 0.2),),
                "CD95": ((0.8, 2.7, 0.2),), "CD45RA": ((0.15, 2.4, 0.25),)}  # fmt: skip
    if parts[1] == "monocytes":
        return {"CD45": ((1, 3.5, 0.1),), "CD4": ((1, 2.75, 0.15),), "CD95": ((1, 3.1, 0.15),),
                "CD45RA": ((0.5, 2.6, 0.25),), "CD62L": ((0.6, 2.8, 0.25),)}  # fmt: skip
    if parts[2] == "CD3neg":
        if parts[3] == "CD19":
            return {"CD45": ((1, 3.85, 0.1),), "CD19": ((1, 3.5, 0.12),),
                    "CD45RA": ((1, 3.7, 0.1),), "CD62L": ((0.8, 2.9, 0.2),),
                    "CD27": ((0.25, 3.2, 0.2),), "CD95": ((0.1, 2.8, 0.2),)}  # fmt: skip
        return {"CD45": ((1, 3.9, 0.1),), "CD45RA": ((0.9, 3.3, 0.15),),
                "CD8": ((0.35, 2.9, 0.2),), "CD62L": ((0.5, 2.6, 0.2),),
                "CD95": ((0.5, 3.0, 0.2),), "CD27": ((0.3, 3.0, 0.2),)}  # fmt: skip
    arm, lineage = parts[3], parts[4]
    expression: dict[str, tuple[Component, ...]] = {
        "CD45": ((1, 3.95, 0.1),),
        "CD3": ((1, 3.8, 0.12),),
    }
    if arm == "CAR":  # a bright population and a dim shoulder that can reach the negatives
        expression["CAR"] = ((0.85, 3.6, 0.2), (0.15, 3.15, 0.15))
    if lineage == "CD4":
        expression["CD4"] = ((1, 3.6, 0.1),)
    elif lineage == "CD8":
        expression["CD8"] = ((1, 4.0, 0.12),)
    else:
        expression["CD8"] = ((0.25, 2.8, 0.2),)
    expression.update(_SUBSET_EXPRESSION["DN" if lineage == "DN" else parts[5]])
    return expression


def _expression_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probability, log10 median, log10 sd) arrays of shape rows × markers × 2 components."""
    shape = (len(ROWS), len(MARKERS), 2)
    prob, mu, sd = np.zeros(shape), np.full(shape, 2.0), np.full(shape, 0.2)
    for r, row in enumerate(ROWS):
        for marker, components in _expression(row).items():
            for c, (p, m, s) in enumerate(components):
                prob[r, _MARKER[marker], c], mu[r, _MARKER[marker], c] = p, m
                sd[r, _MARKER[marker], c] = s
    return prob, mu, sd


def _scatter_table() -> np.ndarray:
    """Per row: FSC-A mean, FSC-A sd, log10 SSC-A, its sd, FSC-H/FSC-A ratio, its sd, AF."""
    table = np.zeros((len(ROWS), 7))
    for r, row in enumerate(ROWS):
        if row == "leukocytes/granulocytes":
            table[r] = (95_000, 12_000, 5.05, 0.08, 0.93, 0.025, 250)
        elif row == "leukocytes/monocytes":
            table[r] = (82_000, 9_000, 4.62, 0.08, 0.93, 0.025, 120)
        elif row.startswith(f"{LYMPH}/CD3neg/CD19neg"):
            table[r] = (56_000, 6_500, 4.15, 0.10, 0.93, 0.025, 45)
        elif row.startswith(f"{LYMPH}/CD3neg"):
            table[r] = (52_000, 6_000, 4.05, 0.10, 0.93, 0.025, 40)
        elif row.startswith(f"{LYMPH}/CD3/CAR/"):
            table[r] = (60_000, 8_000, 4.10, 0.10, 0.93, 0.025, 50)
        elif row.startswith(LYMPH):
            table[r] = (52_000, 6_000, 4.05, 0.09, 0.93, 0.025, 40)
        elif row == "debris":
            table[r] = (0, 0, 3.4, 0.35, 0.95, 0.06, 10)
        elif row == "dead":
            table[r] = (32_000, 9_000, 4.45, 0.15, 0.9, 0.05, 300)
        elif row == "beads":
            table[r] = (26_000, 1_500, 4.68, 0.025, 0.97, 0.01, 0)
        else:  # clog
            table[r] = (0, 0, 0, 0, 0, 0, 100)
    return table


_EXPR_P, _EXPR_MU, _EXPR_SD = _expression_tables()
_SCATTER = _scatter_table()


def tube_label(population: str, tube: str) -> str:
    """The truth label a tube reports: the population path truncated to what it resolves."""
    parts = population.split("/")
    if parts[0] != "leukocytes" or len(parts) < 3:
        return population
    if parts[2] == "CD3neg":
        return population if tube == "bcell" else f"{LYMPH}/CD3neg"
    return "/".join(parts[: {"memory": 6, "function": 5, "bcell": 4}[tube]])


def tube_labels(tube: str) -> tuple[str, ...]:
    """Every label a tube's truth files use, in a fixed order."""
    cells = dict.fromkeys(tube_label(p, tube) for p in CELL_POPULATIONS)
    return (*cells, "debris", "dead", "doublets", "beads", "clog")


def _source_to_label(tube: str) -> np.ndarray:
    labels = tube_labels(tube)
    return np.array([labels.index(tube_label(s, tube)) for s in SOURCES], dtype=np.int16)


# ---------------------------------------------------------------------------------------------
# Public configuration and result
# ---------------------------------------------------------------------------------------------
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


@dataclass(frozen=True)
class _Plan:
    patient: PatientModel
    timepoint: str
    nominal_day: int
    day: int
    sample_date: date
    tube: str
    panel: Panel
    number: int
    start_seconds: float
    concentrations: np.ndarray
    marks: np.ndarray

    @property
    def file_name(self) -> str:
        tube = TUBE_LABELS[self.tube]
        return f"{self.patient.patient} {self.timepoint}_{tube}_{self.number:03d}.fcs"

    @property
    def blood_volume_ul(self) -> float:
        return BLOOD_VOLUME_UL[self.tube]


@dataclass(frozen=True)
class _Acquisition:
    events: np.ndarray  # float32, events × (scatter + detectors + Time), as written
    labels: np.ndarray  # index into tube_labels(tube), per event in file order
    marks: np.ndarray  # bool, events × marks stained in the panel
    mark_names: tuple[str, ...]
    unstable: np.ndarray  # bool, events acquired while the flow was disturbed (a clog)
    expected: np.ndarray  # per SOURCES
    fraction: float
    duration: float
    spill: np.ndarray


# ---------------------------------------------------------------------------------------------
# Event generation
# ---------------------------------------------------------------------------------------------
def _spill_matrix(seed: int, cytometer: str, detectors: tuple[str, ...], day: date) -> np.ndarray:
    """The instrument's spillover on a given day: fixed pattern, small day-to-day drift."""
    key = (6, list(DETECTORS).index(cytometer), day.toordinal())
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))
    matrix = np.eye(len(detectors))
    for (source, target), value in sorted(_SPILL[cytometer].items()):
        matrix[detectors.index(source), detectors.index(target)] = value
    drift = 10 ** rng.normal(0.0, 0.04, matrix.shape)
    off = ~np.eye(len(detectors), dtype=bool)
    matrix[off] = np.round(matrix[off] * drift[off], 4)
    return matrix


def _acquire(
    rng: np.random.Generator,
    plan: _Plan,
    detectors: tuple[str, ...],
    spill: np.ndarray,
    target: int,
    beads_per_tube: int | None,
) -> _Acquisition:
    """Draw one tube's events: counts from the blood, intensities, scatter, time order."""
    conc = plan.concentrations
    volume = plan.blood_volume_ul
    beads = float(beads_per_tube or 0)
    clog_expected = rng.uniform(0.015, 0.05) * target if rng.random() < CLOG_PROBABILITY else 0.0
    fraction = min((target - clog_expected) / (volume * conc.sum() + beads), 1.0)
    expected = np.concatenate([conc * volume * fraction, [beads * fraction, clog_expected]])
    counts = rng.poisson(expected)

    n_doublets = int(counts[_SRC["doublets"]])
    single_rows = np.array([_ROW[s] for s in SOURCES if s != "doublets"])
    single_counts = np.delete(counts, _SRC["doublets"])
    rows = np.repeat(single_rows, single_counts)
    n_single = rows.size
    cell_share = conc[:_N_CELLS] / conc[:_N_CELLS].sum()
    partners = rng.choice(_N_CELLS, size=2 * n_doublets, p=cell_share)
    rows = np.concatenate([rows, partners])
    n_all, n_det = rows.size, len(detectors)

    # function marks (correlated activation markers, independent TCRgd), T cells only
    mark_names = tuple(m for m in plan.panel.markers if m in FUNCTION_MARKS)
    marks = np.zeros((n_all, len(FUNCTION_MARKS)), dtype=bool)
    if mark_names:
        probs = plan.marks[np.minimum(rows, _N_CELLS - 1)]
        probs[rows >= _N_CELLS] = 0.0
        latent = np.sqrt(0.5) * rng.standard_normal((n_all, 1)) + np.sqrt(0.5) * (
            rng.standard_normal((n_all, len(FUNCTION_MARKS)))
        )
        latent[:, -1] = rng.standard_normal(n_all)
        marks = latent < ndtri(probs)

    # antibody signal per stained detector, with this file's staining shift
    signal = np.zeros((n_all, n_det), dtype=np.float32)
    shift = rng.normal(0.0, STAIN_SHIFT_SD, len(MARKERS))
    for channel in plan.panel.channels:
        j, m = detectors.index(channel.channel), _MARKER[channel.marker]
        if channel.marker in FUNCTION_MARKS:
            on = np.flatnonzero(marks[:, FUNCTION_MARKS.index(channel.marker)])
            mu, sd = _MARK_LEVEL[channel.marker]
        else:
            u = rng.random(n_all)
            first = _EXPR_P[:, m, 0]
            on = np.flatnonzero(u < (first + _EXPR_P[:, m, 1])[rows])
            hit = rows[on]
            second = (u[on] >= first[hit]).astype(np.intp)
            mu, sd = _EXPR_MU[:, m][hit, second], _EXPR_SD[:, m][hit, second]
        z = rng.standard_normal(on.size, dtype=np.float32)
        signal[on, j] = 10.0 ** (mu + sd * z + shift[m] + _BRIGHTNESS[channel.fluorochrome])
    info = np.array([_DETECTOR[d][:3] for d in detectors])
    is_bead, is_clog = rows == _ROW["beads"], rows == _ROW["clog"]
    signal[is_bead] = 10.0 ** (info[:, 2] + 0.02 * rng.standard_normal((is_bead.sum(), n_det)))
    signal[is_clog] = 10.0 ** rng.normal(2.2, 0.6, (is_clog.sum(), n_det))

    # autofluorescence, instrument gain, noise that grows with the light in each detector
    table = _SCATTER[rows]
    noise = rng.standard_normal(n_all, dtype=np.float32)
    autofluorescence = (table[:, 6].astype(np.float32) * np.float32(10.0) ** (0.2 * noise))[:, None]
    gain = (10.0 ** rng.normal(0.0, 0.03, n_det)).astype(np.float32)
    light = (signal + autofluorescence * info[:, 1].astype(np.float32)) * gain
    variance = np.maximum(light @ spill.astype(np.float32), 0.0)
    variance *= np.float32(PHOTON_VARIANCE)
    variance += (info[:, 0] ** 2).astype(np.float32)
    comp = light + np.sqrt(variance) * rng.standard_normal((n_all, n_det), dtype=np.float32)

    # scatter
    fsc = rng.normal(table[:, 0], table[:, 1])
    ssc = 10.0 ** rng.normal(table[:, 2], table[:, 3])
    ratio = rng.normal(table[:, 4], table[:, 5])
    is_debris = rows == _ROW["debris"]
    fsc[is_debris] = rng.exponential(9_000.0, is_debris.sum())
    fsc[is_clog] = rng.uniform(5e3, 2.6e5, is_clog.sum())
    ssc[is_clog] = 10.0 ** rng.uniform(3.3, 5.3, is_clog.sum())
    ratio[is_clog] = rng.uniform(0.3, 1.0, is_clog.sum())
    fsc_h = fsc * ratio

    # doublets: two cells through the laser at once
    a = n_single + 2 * np.arange(n_doublets)
    b = a + 1
    comp = np.concatenate([comp[:n_single], comp[a] + comp[b]])
    fsc_a = np.concatenate([fsc[:n_single], (fsc[a] + fsc[b]) * rng.normal(0.95, 0.02, a.size)])
    fsc_h = np.concatenate(
        [fsc_h[:n_single], np.maximum(fsc_h[a], fsc_h[b]) * rng.normal(1.12, 0.05, a.size)]
    )
    ssc = np.concatenate([ssc[:n_single], ssc[a] + ssc[b]])
    marks = np.concatenate([marks[:n_single], marks[a] | marks[b]])
    to_label = _source_to_label(plan.tube)
    row_to_label = np.array([to_label[_SRC[r]] for r in ROWS], dtype=np.int16)
    labels = np.concatenate(
        [row_to_label[rows[:n_single]], np.full(n_doublets, to_label[_SRC["doublets"]], np.int16)]
    )
    n = labels.size
    scatter_gain = 10.0 ** rng.normal(0.0, [0.03, 0.04])

    # acquisition time: uniform, except a clog window where few cells pass and clog events sit
    duration = n / rng.uniform(400.0, 1500.0)
    times = np.empty(n)
    clog_events = labels == to_label[_SRC["clog"]]
    n_clog, n_flow = int(clog_events.sum()), n - int(clog_events.sum())
    unstable = np.zeros(n, dtype=bool)
    if n_clog:
        width = duration * rng.uniform(0.02, 0.06)
        start = duration * rng.uniform(0.15, 0.8)
        u = rng.uniform(0.0, duration - 0.7 * width, n_flow)
        slowed = np.where(u < start + 0.3 * width, start + (u - start) / 0.3, u + 0.7 * width)
        times[~clog_events] = np.where(u < start, u, slowed)
        times[clog_events] = rng.uniform(start, start + width, n_clog)
        unstable = (times >= start) & (times <= start + width)
    else:
        times[:] = rng.uniform(0.0, duration, n)
    ticks = (times / TIMESTEP).astype(np.float32)
    order = np.argsort(ticks)

    events = np.empty((n, 3 + n_det + 1), dtype=np.float32)
    events[:, 0] = np.clip(fsc_a * scatter_gain[0], 0, RANGE - 1)
    events[:, 1] = np.clip(fsc_h * scatter_gain[0], 0, RANGE - 1)
    events[:, 2] = np.clip(ssc * scatter_gain[1], 0, RANGE - 1)
    events[:, 3:-1] = np.minimum(comp @ spill.astype(np.float32), RANGE - 1)
    events[:, -1] = ticks
    keep = [FUNCTION_MARKS.index(m) for m in mark_names]
    return _Acquisition(
        events=events[order],
        labels=labels[order],
        marks=marks[order][:, keep],
        mark_names=mark_names,
        unstable=unstable[order],
        expected=expected,
        fraction=fraction,
        duration=float(times.max(initial=0.0)),
        spill=spill,
    )


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def _fcs_date(day: date) -> str:
    return f"{day.day:02d}-{_MONTHS[day.month - 1]}-{day.year}"


def _clock(seconds: float) -> str:
    whole = int(seconds) % 86_400
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _spill_text(detectors: tuple[str, ...], matrix: np.ndarray) -> str:
    values = (repr(round(float(v), 4)) for v in matrix.ravel())
    return ",".join([str(len(detectors)), *detectors, *values])


def _write_fcs(
    path: Path, plan: _Plan, acq: _Acquisition, cytometer: str, detectors: tuple[str, ...]
) -> None:
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


def _sample_id(plan: _Plan) -> str:
    """A laboratory accession number: year, patient and timepoint, no personal data."""
    return f"FC{plan.sample_date:%y}-{plan.patient.index + 1:03d}{plan.nominal_day + 100:03d}"


def _write_truth(path: Path, tube: str, acq: _Acquisition) -> None:
    columns = {
        "population": pa.DictionaryArray.from_arrays(
            pa.array(acq.labels, type=pa.int16()), pa.array(tube_labels(tube), type=pa.string())
        )
    }
    columns["unstable_flow"] = pa.array(acq.unstable, type=pa.bool_())
    for k, name in enumerate(acq.mark_names):
        columns[name] = pa.array(acq.marks[:, k], type=pa.bool_())
    pq.write_table(pa.table(columns), path, compression="zstd")


def _write_csv(path: Path, header: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in header})


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(float(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _iso(day: date | None) -> str:
    return day.isoformat() if day else ""


# ---------------------------------------------------------------------------------------------
# Cohort
# ---------------------------------------------------------------------------------------------
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


_AUC_DAYS = (5, 7, 11, 14)


def _trapezoid(x, y) -> float:
    """Linear-trapezoid area under y(x)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)))


def _patient_truth(p: PatientModel, days: dict[str, int]) -> dict:
    sampled = {label: day for label, day in days.items() if day > 0}
    peak_label = max(sampled, key=lambda label: p.car_t(sampled[label]), default=None)
    early = [days[f"D{d}"] for d in _AUC_DAYS if f"D{d}" in days]
    efs = min(p.relapse_day, p.death_day, p.followup_days)
    return {
        "patient": p.patient,
        "src_keyword": p.src_name,
        "bridging": p.bridging,
        "tumour_burden_before_pct": p.burden_before_pct,
        "tumour_burden_after_pct": p.burden_after_pct,
        "expander": p.expander,
        "peak_car_t_per_ul": p.peak,
        "peak_day": p.peak_day,
        "scm_fraction_cd8_car_at_peak": p.scm_fraction(p.peak_day),
        "auc14_car_t": _trapezoid(_AUC_DAYS, [p.car_t(d) for d in _AUC_DAYS]),
        "auc14_car_t_sampled": (
            _trapezoid(early, [p.car_t(d) for d in early]) if len(early) == 4 else math.nan
        ),
        "sampled_peak_timepoint": peak_label or "",
        "sampled_peak_car_t_per_ul": p.car_t(sampled[peak_label]) if peak_label else math.nan,
        "sampled_peak_scm_fraction_cd8_car": (
            p.scm_fraction(sampled[peak_label]) if peak_label else math.nan
        ),
        "car_t_persistent": p.persistent,
        "car_t_loss_day": p.loss_day if math.isfinite(p.loss_day) else math.nan,
        "b_cell_recovery_day": p.b_recovery_day if math.isfinite(p.b_recovery_day) else math.nan,
        "hazard_ratio": p.hazard_ratio,
        "relapse_day": p.relapse_day if math.isfinite(p.relapse_day) else math.nan,
        "cd19_negative_relapse": p.cd19_negative_relapse,
        "death_day": p.death_day if math.isfinite(p.death_day) else math.nan,
        "hsct_day": p.hsct_day if math.isfinite(p.hsct_day) else math.nan,
        "efs_days": float(efs),
        "efs_event": bool(efs < p.followup_days),
        "os_days": float(min(p.death_day, p.followup_days)),
        "os_event": bool(math.isfinite(p.death_day)),
        "samples": len(days),
    }


PATIENT_HEADER = [
    "patient",
    "src_keyword",
    "bridging",
    "tumour_burden_before_pct",
    "tumour_burden_after_pct",
    "expander",
    "peak_car_t_per_ul",
    "peak_day",
    "scm_fraction_cd8_car_at_peak",
    "auc14_car_t",
    "auc14_car_t_sampled",
    "sampled_peak_timepoint",
    "sampled_peak_car_t_per_ul",
    "sampled_peak_scm_fraction_cd8_car",
    "car_t_persistent",
    "car_t_loss_day",
    "b_cell_recovery_day",
    "hazard_ratio",
    "relapse_day",
    "cd19_negative_relapse",
    "death_day",
    "hsct_day",
    "efs_days",
    "efs_event",
    "os_days",
    "os_event",
    "samples",
]


def _clinical_row(p: PatientModel) -> dict:
    return {
        "patient": p.patient,
        "infusion_date": p.infusion_date.isoformat(),
        "bridging": p.bridging,
        "tumour_burden_before_pct": p.burden_before_pct,
        "tumour_burden_after_pct": p.burden_after_pct,
        "anc_per_nl": round(float(p.concentrations(0.0)[0]) / 1000.0, 2),
        "platelets_per_nl": p.platelets_per_nl,
        "haemoglobin_g_dl": p.haemoglobin_g_dl,
        "crp_mg_l": p.crp_mg_l,
        "relapse_date": _iso(day_to_date(p, p.relapse_day)),
        "cd19_negative_relapse": p.cd19_negative_relapse,
        "death_date": _iso(day_to_date(p, p.death_day)),
        "hsct_date": _iso(day_to_date(p, p.hsct_day)),
        "last_followup_date": _iso(day_to_date(p, min(p.death_day, p.followup_days))),
    }


MANIFEST_HEADER = ["file", "patient", "timepoint", "tube", "blood_volume_ul", "beads_per_tube",
                   "sample_date"]  # fmt: skip
CLINICAL_HEADER = ["patient", "infusion_date", "bridging", "tumour_burden_before_pct",
                   "tumour_burden_after_pct", "anc_per_nl", "platelets_per_nl",
                   "haemoglobin_g_dl", "crp_mg_l", "relapse_date", "cd19_negative_relapse",
                   "death_date", "hsct_date", "last_followup_date"]  # fmt: skip
TIMEPOINT_HEADER = ["patient", "timepoint", "nominal_day", "actual_day", "sample_date", "tube",
                    "file", "cytometer", "blood_volume_ul", "beads_per_tube", "bead_lot",
                    "acquired_fraction", "total_events", "bead_events_expected", "bead_events",
                    "clog_events", "true_car_t_per_ul", "true_t_cells_per_ul",
                    "true_b_cells_per_ul", "true_wbc_per_ul"]  # fmt: skip
_PREFIXES = ("true_per_ul", "implied_per_ul", "expected_events", "events")


def _timepoint_row(plan: _Plan, acq: _Acquisition, beads: int | None, lot: str | None) -> dict:
    labels = tube_labels(plan.tube)
    to_label = _source_to_label(plan.tube)
    conc = np.concatenate([plan.concentrations, [np.nan, np.nan]])  # beads, clog: no µL
    true = np.bincount(to_label, weights=np.nan_to_num(conc), minlength=len(labels))
    expected = np.bincount(to_label, weights=acq.expected, minlength=len(labels))
    counts = np.bincount(acq.labels, minlength=len(labels))
    bead_events = int(counts[labels.index("beads")])
    cells = plan.concentrations[:_N_CELLS]
    is_car = np.array(["/CD3/CAR/" in s for s in CELL_POPULATIONS])
    is_t = np.array(["/CD3/" in s for s in CELL_POPULATIONS])
    row = {
        "patient": plan.patient.patient,
        "timepoint": plan.timepoint,
        "nominal_day": plan.nominal_day,
        "actual_day": plan.day,
        "sample_date": plan.sample_date.isoformat(),
        "tube": plan.tube,
        "file": plan.file_name,
        "cytometer": plan.panel.cytometer,
        "blood_volume_ul": plan.blood_volume_ul,
        "beads_per_tube": beads,
        "bead_lot": lot,
        "acquired_fraction": acq.fraction,
        "total_events": int(acq.labels.size),
        "bead_events_expected": float(acq.expected[_SRC["beads"]]),
        "bead_events": bead_events,
        "clog_events": int(counts[labels.index("clog")]),
        "true_car_t_per_ul": float(cells[is_car].sum()),
        "true_t_cells_per_ul": float(cells[is_t].sum()),
        "true_b_cells_per_ul": float(cells[CELL_POPULATIONS.index(f"{LYMPH}/CD3neg/CD19")]),
        "true_wbc_per_ul": float(cells.sum()),
    }
    for i, label in enumerate(labels):
        countable = label not in {"beads", "clog"}
        row[f"true_per_ul:{label}"] = float(true[i]) if countable else math.nan
        implied = math.nan
        if countable and beads and bead_events:
            implied = counts[i] / bead_events * beads / plan.blood_volume_ul
        row[f"implied_per_ul:{label}"] = float(implied)
        row[f"expected_events:{label}"] = float(expected[i])
        row[f"events:{label}"] = int(counts[i])
    return row


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
        spill = _spill_matrix(config.seed, config.cytometer, detectors, when)
        concentrations = patient.concentrations(day)
        marks = patient.mark_probabilities(day)
        for tube in config.tubes:
            number += 1
            panel = tube_panels[tube]
            plan = _Plan(
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
            acq = _acquire(rng, plan, detectors, spill, config.events, beads)
            path = out_dir / plan.file_name
            _write_fcs(path, plan, acq, config.cytometer, detectors)
            _write_truth(out_dir / "truth" / f"{path.stem}.parquet", tube, acq)
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
            timepoints.append(_timepoint_row(plan, acq, beads, lot))
    return _PatientOutput(
        files=tuple(files),
        manifest=tuple(manifest),
        timepoints=tuple(timepoints),
        clinical=_clinical_row(patient),
        truth=_patient_truth(patient, days),
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
    _write_csv(manifest_path, MANIFEST_HEADER, [r for o in outputs for r in o.manifest])
    _write_csv(clinical_path, CLINICAL_HEADER, [o.clinical for o in outputs])
    labels = dict.fromkeys(label for tube in config.tubes for label in tube_labels(tube))
    columns = [f"{prefix}:{label}" for prefix in _PREFIXES for label in labels]
    _write_csv(
        out_dir / "truth" / "timepoints.csv",
        TIMEPOINT_HEADER + columns,
        [r for o in outputs for r in o.timepoints],
    )
    truth = [o.truth for o in outputs]
    _write_csv(out_dir / "truth" / "patients.csv", PATIENT_HEADER, truth)
    return CohortSummary(
        out_dir=out_dir,
        files=tuple(f for o in outputs for f in o.files),
        manifest=manifest_path,
        clinical=clinical_path,
        truth_dir=out_dir / "truth",
    )


def _tube_code(tube: str) -> int:
    return ("memory", "function", "bcell").index(tube)
