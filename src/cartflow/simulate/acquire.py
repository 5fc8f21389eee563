"""Event generation: one tube's events drawn from the blood, stained, detected and timed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
from scipy.special import ndtri

from cartflow.panels import Panel
from cartflow.simulate.cohort_model import FUNCTION_MARKS, PatientModel
from cartflow.simulate.instrument import (
    _BRIGHTNESS,
    _DETECTOR,
    BLOOD_VOLUME_UL,
    CLOG_PROBABILITY,
    PHOTON_VARIANCE,
    RANGE,
    STAIN_SHIFT_SD,
    TIMESTEP,
    TUBE_LABELS,
)
from cartflow.simulate.populations import (
    _EXPR_MU,
    _EXPR_P,
    _EXPR_SD,
    _MARK_LEVEL,
    _MARKER,
    _N_CELLS,
    _ROW,
    _SCATTER,
    _SRC,
    MARKERS,
    ROWS,
    SOURCES,
    _source_to_label,
)


@dataclass(frozen=True)
class Plan:
    """One tube of one blood sample: who, when, which panel, and the blood it samples."""

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
class Acquisition:
    """One tube's acquired events, their truth labels and what the acquisition drew."""

    events: np.ndarray  # float32, events × (scatter + detectors + Time), as written
    labels: np.ndarray  # index into tube_labels(tube), per event in file order
    marks: np.ndarray  # bool, events × marks stained in the panel
    mark_names: tuple[str, ...]
    unstable: np.ndarray  # bool, events acquired while the flow was disturbed (a clog)
    expected: np.ndarray  # per SOURCES
    fraction: float
    duration: float
    spill: np.ndarray


@dataclass(frozen=True)
class _Scatter:
    """Scatter per event: FSC area, FSC height, SSC area."""

    fsc_a: np.ndarray
    fsc_h: np.ndarray
    ssc: np.ndarray


def _draw_counts(
    rng: np.random.Generator, plan: Plan, target: int, beads_per_tube: int | None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Expected and drawn events per source (cells, particles, beads, clog), and the share of
    the tube acquired to reach ``target`` events."""
    conc = plan.concentrations
    volume = plan.blood_volume_ul
    beads = float(beads_per_tube or 0)
    clog_expected = rng.uniform(0.015, 0.05) * target if rng.random() < CLOG_PROBABILITY else 0.0
    fraction = min((target - clog_expected) / (volume * conc.sum() + beads), 1.0)
    expected = np.concatenate([conc * volume * fraction, [beads * fraction, clog_expected]])
    return expected, rng.poisson(expected), fraction


def _event_rows(
    rng: np.random.Generator, conc: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, int, int]:
    """Generation row per event: the single events, then two cells per doublet (partners
    drawn in proportion to the cells in the blood); also the single and doublet counts."""
    n_doublets = int(counts[_SRC["doublets"]])
    single_rows = np.array([_ROW[s] for s in SOURCES if s != "doublets"])
    single_counts = np.delete(counts, _SRC["doublets"])
    rows = np.repeat(single_rows, single_counts)
    cell_share = conc[:_N_CELLS] / conc[:_N_CELLS].sum()
    partners = rng.choice(_N_CELLS, size=2 * n_doublets, p=cell_share)
    return np.concatenate([rows, partners]), rows.size, n_doublets


def _function_marks(
    rng: np.random.Generator, plan: Plan, rows: np.ndarray
) -> tuple[tuple[str, ...], np.ndarray]:
    """The panel's function marks and, per event, which it carries: correlated activation
    markers and an independent TCRgd, on T cells only."""
    n_all = rows.size
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
    return mark_names, marks


def _stain_signal(
    rng: np.random.Generator,
    plan: Plan,
    detectors: tuple[str, ...],
    rows: np.ndarray,
    marks: np.ndarray,
) -> np.ndarray:
    """Antibody signal per event and stained detector, with this file's staining shift;
    beads at their fixed levels, clog events anywhere low."""
    n_all, n_det = rows.size, len(detectors)
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
    levels = np.array([_DETECTOR[d][2] for d in detectors])
    is_bead, is_clog = rows == _ROW["beads"], rows == _ROW["clog"]
    signal[is_bead] = 10.0 ** (levels + 0.02 * rng.standard_normal((is_bead.sum(), n_det)))
    signal[is_clog] = 10.0 ** rng.normal(2.2, 0.6, (is_clog.sum(), n_det))
    return signal


def _detect(
    rng: np.random.Generator,
    signal: np.ndarray,
    rows: np.ndarray,
    detectors: tuple[str, ...],
    spill: np.ndarray,
) -> np.ndarray:
    """Compensated-space values: autofluorescence, instrument gain, and noise that grows
    with the light in each detector."""
    n_all, n_det = rows.size, len(detectors)
    info = np.array([_DETECTOR[d][:3] for d in detectors])
    table = _SCATTER[rows]
    noise = rng.standard_normal(n_all, dtype=np.float32)
    autofluorescence = (table[:, 6].astype(np.float32) * np.float32(10.0) ** (0.2 * noise))[:, None]
    gain = (10.0 ** rng.normal(0.0, 0.03, n_det)).astype(np.float32)
    light = (signal + autofluorescence * info[:, 1].astype(np.float32)) * gain
    variance = np.maximum(light @ spill.astype(np.float32), 0.0)
    variance *= np.float32(PHOTON_VARIANCE)
    variance += (info[:, 0] ** 2).astype(np.float32)
    return light + np.sqrt(variance) * rng.standard_normal((n_all, n_det), dtype=np.float32)


def _scatter(rng: np.random.Generator, rows: np.ndarray) -> _Scatter:
    """Forward and side scatter per event; debris small, clog events anywhere."""
    table = _SCATTER[rows]
    fsc = rng.normal(table[:, 0], table[:, 1])
    ssc = 10.0 ** rng.normal(table[:, 2], table[:, 3])
    ratio = rng.normal(table[:, 4], table[:, 5])
    is_debris, is_clog = rows == _ROW["debris"], rows == _ROW["clog"]
    fsc[is_debris] = rng.exponential(9_000.0, is_debris.sum())
    fsc[is_clog] = rng.uniform(5e3, 2.6e5, is_clog.sum())
    ssc[is_clog] = 10.0 ** rng.uniform(3.3, 5.3, is_clog.sum())
    ratio[is_clog] = rng.uniform(0.3, 1.0, is_clog.sum())
    return _Scatter(fsc_a=fsc, fsc_h=fsc * ratio, ssc=ssc)


def _merge_doublets(
    rng: np.random.Generator,
    comp: np.ndarray,
    scatter: _Scatter,
    marks: np.ndarray,
    n_single: int,
) -> tuple[np.ndarray, _Scatter, np.ndarray]:
    """Each doublet's two cells through the laser at once: one event whose fluorescence,
    area scatter and marks are the pair's, its FSC height a little above the taller one's."""
    a = n_single + 2 * np.arange((comp.shape[0] - n_single) // 2)
    b = a + 1
    comp = np.concatenate([comp[:n_single], comp[a] + comp[b]])
    fsc, fsc_h, ssc = scatter.fsc_a, scatter.fsc_h, scatter.ssc
    fsc_a = np.concatenate([fsc[:n_single], (fsc[a] + fsc[b]) * rng.normal(0.95, 0.02, a.size)])
    fsc_h = np.concatenate(
        [fsc_h[:n_single], np.maximum(fsc_h[a], fsc_h[b]) * rng.normal(1.12, 0.05, a.size)]
    )
    ssc = np.concatenate([ssc[:n_single], ssc[a] + ssc[b]])
    marks = np.concatenate([marks[:n_single], marks[a] | marks[b]])
    return comp, _Scatter(fsc_a=fsc_a, fsc_h=fsc_h, ssc=ssc), marks


def _event_labels(tube: str, rows: np.ndarray, n_single: int, n_doublets: int) -> np.ndarray:
    """Truth label per event (index into the tube's labels), doublets last."""
    to_label = _source_to_label(tube)
    row_to_label = np.array([to_label[_SRC[r]] for r in ROWS], dtype=np.int16)
    return np.concatenate(
        [row_to_label[rows[:n_single]], np.full(n_doublets, to_label[_SRC["doublets"]], np.int16)]
    )


def _acquisition_times(
    rng: np.random.Generator, clog_events: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Acquisition time per event in seconds, and whether the flow was disturbed then:
    uniform, except a clog window where few cells pass and the clog events sit."""
    n = clog_events.size
    duration = n / rng.uniform(400.0, 1500.0)
    times = np.empty(n)
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
    return times, unstable


def acquire(
    rng: np.random.Generator,
    plan: Plan,
    detectors: tuple[str, ...],
    spill: np.ndarray,
    target: int,
    beads_per_tube: int | None,
) -> Acquisition:
    """Draw one tube's events: counts from the blood, intensities, scatter, time order."""
    expected, counts, fraction = _draw_counts(rng, plan, target, beads_per_tube)
    rows, n_single, n_doublets = _event_rows(rng, plan.concentrations, counts)
    mark_names, marks = _function_marks(rng, plan, rows)
    signal = _stain_signal(rng, plan, detectors, rows, marks)
    comp = _detect(rng, signal, rows, detectors, spill)
    comp, scatter, marks = _merge_doublets(rng, comp, _scatter(rng, rows), marks, n_single)
    labels = _event_labels(plan.tube, rows, n_single, n_doublets)
    scatter_gain = 10.0 ** rng.normal(0.0, [0.03, 0.04])
    clog_events = labels == _source_to_label(plan.tube)[_SRC["clog"]]
    times, unstable = _acquisition_times(rng, clog_events)
    ticks = (times / TIMESTEP).astype(np.float32)
    order = np.argsort(ticks)

    events = np.empty((labels.size, 3 + len(detectors) + 1), dtype=np.float32)
    events[:, 0] = np.clip(scatter.fsc_a * scatter_gain[0], 0, RANGE - 1)
    events[:, 1] = np.clip(scatter.fsc_h * scatter_gain[0], 0, RANGE - 1)
    events[:, 2] = np.clip(scatter.ssc * scatter_gain[1], 0, RANGE - 1)
    events[:, 3:-1] = np.minimum(comp @ spill.astype(np.float32), RANGE - 1)
    events[:, -1] = ticks
    keep = [FUNCTION_MARKS.index(m) for m in mark_names]
    return Acquisition(
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
