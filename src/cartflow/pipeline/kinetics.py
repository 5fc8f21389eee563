"""Non-compartmental CAR-T kinetics per patient, following PKNCA's conventions.

Cmax/Tmax (first occurrence on ties), Clast/Tlast (last value at or above LOD), AUC by the
linear trapezoid (or linear-up/log-down) between observed points, no extrapolation before the
first point unless day 0 is anchored at 0. Below-LOD values: leading ones count as 0, middle
ones are dropped, trailing ones count as 0. Every option is returned with the result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, Literal

from cartflow.pipeline.patient_variables import DEFAULT_VARIABLES, derive_variables

if TYPE_CHECKING:
    import pandas as pd

AucMethod = Literal["linear", "linear-up/log-down"]
AUC14_DAYS = (5, 7, 11, 14)
AUC28_DAYS = (5, 7, 11, 14, 21, 28)
DEFAULT_DRIFT_DAYS = 2.0


@dataclass(frozen=True)
class Observation:
    """One timepoint of one population: nominal and actual day, value, detection status."""

    nominal_day: int
    value: float | None
    below_lod: bool = False
    actual_day: float | None = None

    @property
    def day(self) -> float:
        return self.actual_day if self.actual_day is not None else float(self.nominal_day)


@dataclass(frozen=True)
class KineticsOptions:
    anchor_day0: bool = False
    method: AucMethod = "linear"
    min_points: int = 3
    use_actual_days: bool = True
    drift_days: float = DEFAULT_DRIFT_DAYS
    expansion_threshold_per_ul: float = 5.0
    """A patient whose CAR-T peak exceeds this has expanded (the analysis settings'
    ``expansion_threshold_per_ul``)."""
    # a population measured but never at or above the LOD (a non-expander) has peak 0, not a
    # blank, so that it stays in every analysis of the peak; "missing" leaves it blank
    below_lod_peak: Literal["zero", "missing"] = "zero"


@dataclass(frozen=True)
class Auc:
    value: float | None
    points: int
    reason: str | None = None


@dataclass(frozen=True)
class KineticsSummary:
    cmax: float | None
    tmax: float | None
    clast: float | None
    tlast: float | None
    auc14: Auc
    auc28: Auc
    auclast: Auc
    persistence_day: float | None
    drift_flags: tuple[str, ...]
    options: dict


def _day(obs: Observation, options: KineticsOptions) -> float:
    return obs.day if options.use_actual_days else float(obs.nominal_day)


def _by_day(observations: Sequence[Observation]) -> list[Observation]:
    """Observations in nominal-day order; two on one day are an error (as in PKNCA)."""
    ordered = sorted(observations, key=lambda o: o.nominal_day)
    repeated = sorted(
        {a.nominal_day for a, b in pairwise(ordered) if a.nominal_day == b.nominal_day}
    )
    if repeated:
        raise ValueError(f"one observation per day needed; day(s) {repeated} appear twice")
    return ordered


def blq_adjusted(observations: Sequence[Observation]) -> list[Observation]:
    """PKNCA's default: leading and trailing below-LOD values → 0, middle ones dropped."""
    usable = [o for o in observations if o.value is not None or o.below_lod]
    quantified = [i for i, o in enumerate(usable) if not o.below_lod]
    if not quantified:
        return [Observation(o.nominal_day, 0.0, True, o.actual_day) for o in usable]
    first, last = quantified[0], quantified[-1]
    adjusted = []
    for i, obs in enumerate(usable):
        if not obs.below_lod:
            adjusted.append(obs)
        elif i < first or i > last:
            adjusted.append(Observation(obs.nominal_day, 0.0, True, obs.actual_day))
    return adjusted


def _segment(t0: float, c0: float, t1: float, c1: float, method: AucMethod) -> float:
    if method == "linear-up/log-down" and c1 < c0 and c1 > 0:
        return (c0 - c1) / math.log(c0 / c1) * (t1 - t0)
    return (c0 + c1) / 2 * (t1 - t0)


def auc(
    observations: Sequence[Observation],
    nominal_days: Sequence[int] | None,
    options: KineticsOptions = KineticsOptions(),
) -> Auc:
    """Area under the curve over the observations at the given nominal days (None: all).

    As in PKNCA, the window is taken first and the below-LOD rules apply within it, so a
    window's AUC does not change when later timepoints arrive. Missing timepoints are
    bridged; fewer than ``options.min_points`` gives no value and a reason.
    """
    in_window = [o for o in observations if nominal_days is None or o.nominal_day in nominal_days]
    points = blq_adjusted(_by_day(in_window))
    if len(points) < options.min_points:
        return Auc(
            None, len(points), f"{len(points)} point(s), at least {options.min_points} needed"
        )
    xy = [(_day(o, options), float(o.value)) for o in points]
    if options.anchor_day0:
        xy.insert(0, (0.0, 0.0))
    total = sum(_segment(t0, c0, t1, c1, options.method) for (t0, c0), (t1, c1) in pairwise(xy))
    return Auc(total, len(points))


def summarise(
    observations: Sequence[Observation], options: KineticsOptions = KineticsOptions()
) -> KineticsSummary:
    """Cmax, Tmax, Clast, Tlast, AUC14, AUC28, AUClast and persistence of one population."""
    ordered = _by_day(observations)
    quantified = [o for o in ordered if o.value is not None and not o.below_lod]
    peak = max(quantified, key=lambda o: o.value, default=None)  # first on ties
    last = quantified[-1] if quantified else None
    never_detected = peak is None and any(o.below_lod for o in ordered)
    cmax = peak.value if peak else (0.0 if never_detected and options.below_lod_peak == "zero"
                                    else None)  # fmt: skip
    drift = tuple(
        f"day {o.nominal_day}: sampled on day {o.actual_day:g}"
        for o in ordered
        if o.actual_day is not None
        and o.nominal_day > 0
        and abs(o.actual_day - o.nominal_day) > options.drift_days
    )
    through_last = [o for o in ordered if last is not None and o.nominal_day <= last.nominal_day]
    return KineticsSummary(
        cmax=cmax,
        tmax=_day(peak, options) if peak else None,
        clast=last.value if last else None,
        tlast=_day(last, options) if last else None,
        auc14=auc(ordered, AUC14_DAYS, options),
        auc28=auc(ordered, AUC28_DAYS, options),
        auclast=auc(through_last, None, options) if last else Auc(None, 0, "no value above LOD"),
        persistence_day=_day(last, options) if last else None,
        drift_flags=drift,
        options=asdict(options),
    )


@dataclass(frozen=True)
class AplasiaStatus:
    nominal_day: int
    b_cells_per_ul: float | None
    aplastic: bool | None


@dataclass(frozen=True)
class AplasiaSummary:
    statuses: tuple[AplasiaStatus, ...]
    onset_day: float | None
    loss_day: float | None
    loss_confirmed: bool
    duration_days: float | None
    cd19_negative_relapse_pattern: bool


def b_cell_aplasia(
    observations: Sequence[Observation],
    threshold_per_ul: float = 1.0,
    relapse_day: float | None = None,
    last_followup_day: float | None = None,
    options: KineticsOptions = KineticsOptions(),
) -> AplasiaSummary:
    """B-cell aplasia per timepoint, its loss and a CD19-negative-relapse-compatible flag
    (relapse while aplasia persists).

    A timepoint is aplastic when its B cells are at most ``threshold_per_ul`` or below the
    LOD (a count under the LOD is not a detection). Aplasia is lost at the first later
    timepoint with B cells that the next timepoint does not contradict (a single rise
    followed by aplasia is not a loss); the loss is confirmed when the next timepoint shows a
    rising count.
    """
    ordered = _by_day(observations)
    statuses = tuple(
        AplasiaStatus(
            o.nominal_day,
            o.value,
            None
            if o.value is None and not o.below_lod
            else o.below_lod or o.value <= threshold_per_ul,
        )
        for o in ordered
    )
    days = [_day(o, options) for o in ordered]
    onset = next((d for d, s in zip(days, statuses, strict=True) if s.aplastic), None)
    loss, confirmed = None, False
    if onset is not None:
        after = [
            (d, s)
            for d, s in zip(days, statuses, strict=True)
            if d > onset and s.aplastic is not None
        ]
        for i, (day, status) in enumerate(after):
            if not status.aplastic:
                nxt = after[i + 1][1] if i + 1 < len(after) else None
                if nxt is None or not nxt.aplastic:
                    loss = day
                    confirmed = nxt is not None and nxt.b_cells_per_ul > status.b_cells_per_ul
                    break
    end = loss if loss is not None else last_followup_day
    if end is None and onset is not None:
        end = days[-1]
    aplastic_at_relapse = (
        relapse_day is not None
        and onset is not None
        and onset <= relapse_day
        and (loss is None or loss > relapse_day)
    )
    return AplasiaSummary(
        statuses=statuses,
        onset_day=onset,
        loss_day=loss,
        loss_confirmed=confirmed,
        duration_days=(end - onset) if onset is not None and end is not None else None,
        cd19_negative_relapse_pattern=aplastic_at_relapse,
    )


@dataclass(frozen=True)
class KineticPopulation:
    """A population followed over time: where it is counted and what it is called."""

    name: str
    tube: str
    population: str
    unit: str = "cells/µL"


DEFAULT_POPULATIONS = (
    KineticPopulation("car_t", "memory", "CAR"),
    KineticPopulation("cd8_car_t", "memory", "CAR_CD8"),
    KineticPopulation("cd8_scm_car_t", "memory", "CAR_CD8_SCM"),
    KineticPopulation("car_neg_cd8_scm", "memory", "CARneg_CD8_SCM"),
)
B_CELLS = KineticPopulation("b_cells", "bcell", "B")


def _kinetic_columns() -> dict[str, str]:
    """Every column of the per-patient kinetics table, described."""
    metrics = {
        "cmax": "peak {what}/µL",
        "tmax_day": "day of the peak of {what} (first on ties)",
        "clast": "last {what}/µL at or above the LOD",
        "tlast_day": "day of that last value",
        "auc14": "AUC of {what}/µL over days 5, 7, 11, 14 (≥ 3 points; options recorded)",
        "auc28": "AUC of {what}/µL over days 5 … 28",
        "auclast": "AUC of {what}/µL up to the last value at or above the LOD",
        "persistence_day": "last day with {what} at or above the LOD",
    }
    names = {
        "car_t": "CAR-T cells",
        "cd8_car_t": "CD8 CAR-T cells",
        "cd8_scm_car_t": "CD8 stem-cell-memory CAR-T cells",
        "car_neg_cd8_scm": "CAR- CD8 stem-cell-memory T cells",
    }
    columns = {
        f"{followed.name}_{metric}": text.format(what=names[followed.name])
        for followed in DEFAULT_POPULATIONS
        for metric, text in metrics.items()
    }
    columns["car_t_cmax"] += " (0 when every count is below the LOD: a non-expander)"
    return columns | {
        "expanded": "peak above 5 CAR-T/µL",
        **{v.name: v.describe() for v in DEFAULT_VARIABLES},
        "b_cell_aplasia_onset_day": "first day of B-cell aplasia (≤ 1 B cell/µL or below LOD)",
        "b_cell_aplasia_loss_day": "day B cells came back after aplasia",
        "b_cell_aplasia_loss_confirmed": "the next count rose after that day",
        "b_cell_aplasia_duration_days": (
            "days from onset to loss (or to the last sample); censored: table2_aplasia"
        ),
        "cd19_negative_relapse_pattern": "relapse while B-cell aplasia persisted",
    }


KINETICS_COLUMNS = _kinetic_columns()
"""Every column of kinetics.csv, described: the names analysis.yaml uses too."""


def _observations(rows) -> list[Observation]:
    return [
        Observation(
            nominal_day=int(r.nominal_day),
            value=None
            if r.cells_per_ul is None or r.cells_per_ul != r.cells_per_ul
            else float(r.cells_per_ul),
            below_lod=bool(r.below_lod) if r.below_lod is not None else False,
            actual_day=None
            if r.actual_day is None or r.actual_day != r.actual_day
            else float(r.actual_day),
        )
        for r in rows.itertuples(index=False)
    ]


def _after_infusion(rows: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """A patient's timepoint rows from infusion on (the leukapheresis product is not part of
    the kinetics), one sample per tube and day: the newest stored, with a note per tube
    naming each day measured more than once."""
    post = rows[rows.nominal_day >= 0]
    per_day = post.groupby(["tube", "nominal_day"])["sample_id"]
    samples = per_day.agg(["nunique", "max"])
    notes: dict[str, list[str]] = {}
    for (tube, day), count, newest in samples[samples["nunique"] > 1].itertuples():
        notes.setdefault(tube, []).append(
            f"day {day}: {count} samples, the newest stored (sample {newest}) used"
        )
    return post[post.sample_id == per_day.transform("max")], notes


def patient_kinetics(
    timepoints,
    populations: Sequence[KineticPopulation] = DEFAULT_POPULATIONS,
    options: KineticsOptions = KineticsOptions(),
    relapse_days: dict[str, float] | None = None,
):
    """One row per patient (wide) and the same numbers as long rows for the store."""
    import pandas as pd

    relapse_days = relapse_days or {}
    wide, long = [], []
    if timepoints is None or len(timepoints) == 0:
        return pd.DataFrame(), long
    for patient, all_rows in timepoints.groupby("patient", sort=True):
        rows, repeated = _after_infusion(all_rows)
        record: dict = {"patient": patient}
        for followed in populations:
            selected = rows[(rows.tube == followed.tube) & (rows.population == followed.population)]
            summary = summarise(_observations(selected), options)
            values = {
                "cmax": summary.cmax,
                "tmax_day": summary.tmax,
                "clast": summary.clast,
                "tlast_day": summary.tlast,
                "auc14": summary.auc14.value,
                "auc28": summary.auc28.value,
                "auclast": summary.auclast.value,
                "persistence_day": summary.persistence_day,
            }
            notes = {
                "auc14": summary.auc14.reason,
                "auc28": summary.auc28.reason,
                "auclast": summary.auclast.reason,
            }
            for metric, value in values.items():
                record[f"{followed.name}_{metric}"] = value
                note = notes.get(metric) or ("; ".join(summary.drift_flags) or None)
                long.append(
                    {
                        "patient": patient,
                        "population": f"{followed.tube}/{followed.population}",
                        "metric": metric,
                        "value": value,
                        "unit": "day"
                        if metric.endswith("day")
                        else (
                            f"{followed.unit}·day" if metric.startswith("auc") else followed.unit
                        ),
                        "note": "; ".join(filter(None, [note, *repeated.get(followed.tube, [])]))
                        or None,
                        "parameters": summary.options,
                    }
                )
            if followed.name == "car_t":
                record["expanded"] = (
                    summary.cmax is not None and summary.cmax > options.expansion_threshold_per_ul
                )
        b_rows = rows[(rows.tube == B_CELLS.tube) & (rows.population == B_CELLS.population)]
        if len(b_rows):
            aplasia = b_cell_aplasia(
                _observations(b_rows), relapse_day=relapse_days.get(patient), options=options
            )
            record.update(
                b_cell_aplasia_onset_day=aplasia.onset_day,
                b_cell_aplasia_loss_day=aplasia.loss_day,
                b_cell_aplasia_loss_confirmed=aplasia.loss_confirmed,
                b_cell_aplasia_duration_days=aplasia.duration_days,
                cd19_negative_relapse_pattern=aplasia.cd19_negative_relapse_pattern,
            )
        wide.append(record)
    table = pd.DataFrame.from_records(wide)
    derived = derive_variables(timepoints, DEFAULT_VARIABLES, table["patient"]).values
    return table.merge(derived.reset_index(), on="patient", how="left"), long



def _peak_nominal_day(rows, cmax: float | None) -> int | None:
    if not cmax:  # no quantified count, or a non-expander (peak 0): no peak to read at
        return None
    hit = rows[rows.cells_per_ul == cmax]
    return int(hit.nominal_day.min()) if len(hit) else None


def peak_days(timepoints, options: KineticsOptions = KineticsOptions()) -> dict[str, int]:
    """Each patient's CAR-T peak (nominal day of Cmax), where the percentages at the peak
    are read; patients without a quantified count have none."""
    peaks: dict[str, int] = {}
    if timepoints is None or len(timepoints) == 0:
        return peaks
    car_t = DEFAULT_POPULATIONS[0]
    for patient, all_rows in timepoints.groupby("patient", sort=True):
        rows, _ = _after_infusion(all_rows)
        selected = rows[(rows.tube == car_t.tube) & (rows.population == car_t.population)]
        day = _peak_nominal_day(selected, summarise(_observations(selected), options).cmax)
        if day is not None:
            peaks[patient] = day
    return peaks
