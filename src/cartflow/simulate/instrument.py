"""Simulated instruments and tubes: detectors, spillover, noise levels and acquisition constants."""

from __future__ import annotations

from datetime import date

import numpy as np

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


def spill_matrix(seed: int, cytometer: str, detectors: tuple[str, ...], day: date) -> np.ndarray:
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
