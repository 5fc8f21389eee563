"""Per-patient derivations: EFS and OS, tumour-burden classes and dynamics, all together."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from cartflow.pipeline.clinical.hematotox import HematotoxTable, hematotox_scores
from cartflow.pipeline.clinical.table import ClinicalTable


@dataclass(frozen=True)
class EndpointOptions:
    """How EFS and OS are derived: which dates are EFS events, and whether HSCT censors EFS."""

    censor_at_hsct: bool = False
    efs_event_columns: tuple[str, ...] = ("relapse_date", "progression_date", "death_date")


def _days(dates: pd.Series, start: pd.Series) -> pd.Series:
    return (dates - start).dt.days.astype(float)


def derive_endpoints(
    data: pd.DataFrame, options: EndpointOptions = EndpointOptions()
) -> pd.DataFrame:
    """EFS and OS (days from infusion, event flags) per patient, censored at last follow-up."""
    infusion = data["infusion_date"]
    follow = _days(data["last_followup_date"], infusion)
    columns = [c for c in options.efs_event_columns if c in data]
    events = pd.DataFrame({c: _days(data[c], infusion) for c in columns}, index=data.index)
    first = events.min(axis=1, skipna=True)
    has_event = first.notna()
    kind = events.fillna(np.inf).idxmin(axis=1).str.removesuffix("_date")
    hsct = (
        _days(data["hsct_date"], infusion)
        if "hsct_date" in data
        else pd.Series(np.nan, index=data.index)
    )
    hsct_censors = options.censor_at_hsct & hsct.notna() & (~has_event | (hsct < first))
    efs_days = first.where(has_event, follow).where(~hsct_censors, hsct)
    death = _days(data["death_date"], infusion)
    return pd.DataFrame(
        {
            "patient": data["patient"],
            "efs_days": efs_days,
            "efs_event": has_event & ~hsct_censors,
            "efs_event_type": kind.where(has_event & ~hsct_censors, "none"),
            "efs_censored_at_hsct": hsct_censors,
            "os_days": death.where(death.notna(), follow),
            "os_event": death.notna(),
            "followup_days": follow,
            "hsct": hsct.notna(),
        },
        index=data.index,
    )


BURDEN_LEVELS: tuple[str, ...] = ("low", "high")


DYNAMICS_LEVELS: tuple[str, ...] = ("low→low", "high→low", "low→high", "high→high")


def burden_class(percent: pd.Series, threshold_pct: float = 5.0) -> pd.Series:
    """'high' (> threshold % marrow blasts) or 'low'; missing where the value is missing."""
    labels = np.where(percent > threshold_pct, "high", "low")
    return pd.Series(pd.Categorical(labels, categories=BURDEN_LEVELS), index=percent.index).where(
        percent.notna()
    )


def burden_dynamics(before: pd.Series, after: pd.Series) -> pd.Series:
    """Burden class before → after bridging, e.g. 'high→low'; missing if either is missing."""
    text = before.astype(str) + "→" + after.astype(str)
    dynamics = pd.Series(pd.Categorical(text, categories=DYNAMICS_LEVELS), index=before.index)
    return dynamics.where(before.notna() & after.notna())


@dataclass(frozen=True)
class DeriveOptions:
    """Options of the per-patient derivations."""

    endpoints: EndpointOptions = EndpointOptions()
    burden_threshold_pct: float = 5.0


def derive_patients(
    table: ClinicalTable, hematotox: HematotoxTable, options: DeriveOptions = DeriveOptions()
) -> pd.DataFrame:
    """Endpoints, burden classes and dynamics, and Hematotox score per patient."""
    data = table.data
    parts = [derive_endpoints(data, options.endpoints)]
    classes = pd.DataFrame(index=data.index)
    for when in ("before", "after"):
        column = f"tumour_burden_{when}_pct"
        if column in data:
            classes[f"burden_{when}_class"] = burden_class(
                data[column], options.burden_threshold_pct
            )
    if {"burden_before_class", "burden_after_class"} <= set(classes.columns):
        classes["burden_dynamics"] = burden_dynamics(
            classes["burden_before_class"], classes["burden_after_class"]
        )
    parts += [classes, hematotox_scores(data, hematotox)]
    keep = [c for c in data.columns if c != "patient" and not c.endswith("_date")]
    return pd.concat([*parts, data[keep]], axis=1)


def infusion_dates(
    clinical: ClinicalTable | None,
) -> tuple[dict[str, date], dict[str, float]]:
    """Infusion dates and relapse days (from infusion) per patient, from the validated
    clinical table (read once by the command)."""
    if clinical is None:
        return {}, {}
    data = clinical.data
    known = data[data["infusion_date"].notna()]
    infusion = {p: d.date() for p, d in zip(known["patient"], known["infusion_date"], strict=True)}
    relapse = {}
    if "relapse_date" in known:
        relapsed = known[known["relapse_date"].notna()]
        days = (relapsed["relapse_date"] - relapsed["infusion_date"]).dt.days
        relapse = dict(zip(relapsed["patient"], days.astype(float), strict=True))
    return infusion, relapse
