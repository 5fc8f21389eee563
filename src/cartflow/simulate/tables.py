"""The cohort's tables: manifest, clinical data and the patient- and timepoint-level truth."""

from __future__ import annotations

import csv
import math
from datetime import date
from pathlib import Path

import numpy as np

from cartflow.simulate.acquire import Acquisition, Plan
from cartflow.simulate.cohort_model import CELL_POPULATIONS, LYMPH, PatientModel, day_to_date
from cartflow.simulate.populations import _N_CELLS, _SRC, _source_to_label, tube_labels


def write_csv(path: Path, header: list[str], rows: list[dict]) -> None:
    """A CSV table; missing values empty, floats in full, booleans true/false."""
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


_AUC_DAYS = (5, 7, 11, 14)


def _trapezoid(x, y) -> float:
    """Linear-trapezoid area under y(x)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)))


def patient_truth(p: PatientModel, days: dict[str, int]) -> dict:
    """A patient's true course: kinetics, peak, sampled summaries, outcomes."""
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


def clinical_row(p: PatientModel) -> dict:
    """A patient's row of the clinical table, as a site would report it."""
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


def timepoint_row(plan: Plan, acq: Acquisition, beads: int | None, lot: str | None) -> dict:
    """One file's truth: counts per label, true and bead-implied concentrations."""
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
