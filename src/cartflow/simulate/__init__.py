"""Synthetic CAR-T monitoring cohort: BD-style FCS files with per-event ground truth.

Each file is one tube (memory, function, B-cell count) of one blood sample. Events are drawn
in compensated space from a population hierarchy, mixed back through the file's $SPILLOVER
matrix and written in acquisition order with FlowIO. Counting beads and the blood volume
make absolute counts recoverable: cells/µL = events / bead events × beads per tube / µL.
Everything is deterministic per seed; every file and patient has its own random stream.

A tool beside the pipeline, not a stage of it: :mod:`.cohort_model` holds the patients' true
course, :mod:`.acquire` draws one tube's events, :mod:`.fcs_writer` and :mod:`.tables` write
them, :mod:`.cohort` runs a cohort, and :mod:`.accuracy` scores automated gating against the
simulated per-event truth.
"""

from cartflow.simulate.cohort import CohortSummary, SimulationConfig, simulate_cohort
from cartflow.simulate.cohort_model import (
    ACCRUAL_DAYS,
    CELL_POPULATIONS,
    DATA_CUTOFF,
    FUNCTION_MARKS,
    LEUKAPHERESIS_DAY,
    LYMPH,
    PARTICLES,
    STUDY_START,
    SUBSETS,
    T_ARMS,
    T_LINEAGES,
    CohortEffects,
    PatientModel,
    day_to_date,
    draw_patient,
    nominal_day,
    sample_days,
)
from cartflow.simulate.instrument import (
    BLOOD_VOLUME_UL,
    CLOG_PROBABILITY,
    CYTOMETER_SERIAL,
    DETECTORS,
    EXPERIMENT,
    NOMINAL_BEADS,
    PARALLEL_MIN_EVENTS,
    PHOTON_VARIANCE,
    RANGE,
    SCATTER,
    STAIN_SHIFT_SD,
    TIMESTEP,
    TUBE_LABELS,
)
from cartflow.simulate.populations import MARKERS, ROWS, SOURCES, Component, tube_label, tube_labels
from cartflow.simulate.tables import (
    CLINICAL_HEADER,
    MANIFEST_HEADER,
    PATIENT_HEADER,
    TIMEPOINT_HEADER,
)

__all__ = [
    "ACCRUAL_DAYS",
    "BLOOD_VOLUME_UL",
    "CELL_POPULATIONS",
    "CLINICAL_HEADER",
    "CLOG_PROBABILITY",
    "CYTOMETER_SERIAL",
    "DATA_CUTOFF",
    "DETECTORS",
    "EXPERIMENT",
    "FUNCTION_MARKS",
    "LEUKAPHERESIS_DAY",
    "LYMPH",
    "MANIFEST_HEADER",
    "MARKERS",
    "NOMINAL_BEADS",
    "PARALLEL_MIN_EVENTS",
    "PARTICLES",
    "PATIENT_HEADER",
    "PHOTON_VARIANCE",
    "RANGE",
    "ROWS",
    "SCATTER",
    "SOURCES",
    "STAIN_SHIFT_SD",
    "STUDY_START",
    "SUBSETS",
    "TIMEPOINT_HEADER",
    "TIMESTEP",
    "TUBE_LABELS",
    "T_ARMS",
    "T_LINEAGES",
    "CohortEffects",
    "CohortSummary",
    "Component",
    "PatientModel",
    "SimulationConfig",
    "day_to_date",
    "draw_patient",
    "nominal_day",
    "sample_days",
    "simulate_cohort",
    "tube_label",
    "tube_labels",
]
