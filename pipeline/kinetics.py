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
from typing import Literal

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

    Missing timepoints are bridged; fewer than ``options.min_points`` gives no value and a reason.
    """
    points = [
        o
        for o in blq_adjusted(sorted(observations, key=lambda o: o.nominal_day))
        if nominal_days is None or o.nominal_day in nominal_days
    ]
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
    ordered = sorted(observations, key=lambda o: o.nominal_day)
    quantified = [o for o in ordered if o.value is not None and not o.below_lod]
    peak = max(quantified, key=lambda o: o.value, default=None)  # first on ties
    last = quantified[-1] if quantified else None
    drift = tuple(
        f"day {o.nominal_day}: sampled on day {o.actual_day:g}"
        for o in ordered
        if o.actual_day is not None
        and o.nominal_day > 0
        and abs(o.actual_day - o.nominal_day) > options.drift_days
    )
    through_last = [o for o in ordered if last is not None and o.nominal_day <= last.nominal_day]
    return KineticsSummary(
        cmax=peak.value if peak else None,
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
) -> AplasiaSummary:
    """B-cell aplasia per timepoint, its loss (B cells > threshold after aplasia, confirmed by
    the next timepoint when there is one) and a CD19-negative-relapse-compatible flag
    (relapse while aplasia persists)."""
    ordered = sorted(observations, key=lambda o: o.nominal_day)
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
    onset = next((o.day for o, s in zip(ordered, statuses, strict=True) if s.aplastic), None)
    loss, confirmed = None, False
    if onset is not None:
        after = [
            (o, s)
            for o, s in zip(ordered, statuses, strict=True)
            if o.day > onset and s.aplastic is not None
        ]
        for i, (obs, status) in enumerate(after):
            if not status.aplastic:
                nxt = after[i + 1][1] if i + 1 < len(after) else None
                if nxt is None or not nxt.aplastic:
                    loss, confirmed = obs.day, nxt is not None
                    break
    end = loss if loss is not None else last_followup_day
    if end is None and onset is not None:
        end = ordered[-1].day
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
