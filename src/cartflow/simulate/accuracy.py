"""Automated gating scored against the simulator's per-event truth: F1 per population, CAR counts.

Every file of a simulated cohort is gated with its panel's template and each population is
compared with the truth labels (``truth/<file>.parquet``): F1 over the whole file, the gate's
own F1 on the events truth and gating both put in its parent, and the best F1 a single cut on
the gate's marker reaches (the truth's own overlap). Events acquired in a disturbed-flow
window (a clog) count as rightly removed by the time gate, cells included. Populations the
panel approximates (a marker it omits) are marked; populations it skips are absent. The CAR
count is covered when it lies in the exact Poisson 95 % interval of the true count.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cartflow.pipeline.counts import poisson_interval

if TYPE_CHECKING:
    from cartflow.panels.config import LabConfig

LYMPH = "leukocytes/lymphocytes/"
MIN_EVENTS = 200
CAR_POPULATION = "CAR"

Truth = Callable[[pd.Series, pd.DataFrame], np.ndarray]


def _prefix(prefix: str) -> Truth:
    return lambda labels, marks: labels.str.startswith(prefix).to_numpy()


def _exact(label: str) -> Truth:
    return lambda labels, marks: (labels == label).to_numpy()


def _not_in(*labels: str) -> Truth:
    return lambda labels_, marks: (~labels_.isin(labels)).to_numpy()


def _marked(base: Truth, mark: str) -> Truth:
    return lambda labels, marks: base(labels, marks) & marks[mark].to_numpy(bool)


_COMMON: dict[str, Truth] = {
    "stable": _not_in("clog"),
    "singlets": _not_in("clog", "doublets"),
    "beads": _exact("beads"),
    "cells": _prefix("leukocytes/"),
    "leukocytes": _prefix("leukocytes/"),
    "lymphocytes": _prefix(LYMPH),
    "lymphocytes_CD3neg": _prefix(LYMPH + "CD3neg"),
    "T": _prefix(LYMPH + "CD3/"),
    "CAR": _prefix(LYMPH + "CD3/CAR/"),
    "CARneg": _prefix(LYMPH + "CD3/CARneg/"),
}


def truth_definitions(tube: str) -> dict[str, Truth]:
    """Population id → truth mask, for the populations of a tube's template."""
    truth = dict(_COMMON)
    if tube == "memory":
        for arm in ("CAR", "CARneg"):
            for lineage in ("CD4", "CD8"):
                truth[f"{arm}_{lineage}"] = _prefix(f"{LYMPH}CD3/{arm}/{lineage}/")
                for subset in ("naive", "SCM", "CM", "EM", "TEMRA"):
                    label = f"{LYMPH}CD3/{arm}/{lineage}/{subset}"
                    truth[f"{arm}_{lineage}_{subset}"] = _exact(label)
                # every simulated SCM cell is CD27 bright: SCM-like and SCM coincide
                truth[f"{arm}_{lineage}_SCML"] = truth[f"{arm}_{lineage}_SCM"]
    elif tube == "function":
        truth["CAR_CD4"] = _exact(LYMPH + "CD3/CAR/CD4")
        truth["CAR_CD8"] = _exact(LYMPH + "CD3/CAR/CD8")
        for mark in ("PD1", "LAG3", "CD71", "Ki67"):
            truth[f"CAR_CD8_{mark}"] = _marked(truth["CAR_CD8"], mark)
        truth["CAR_TCRgd"] = _marked(truth["CAR"], "TCRgd")
    elif tube == "bcell":
        truth["CAR"] = _exact(LYMPH + "CD3/CAR")
        truth["CARneg"] = _exact(LYMPH + "CD3/CARneg")
        truth["B"] = _exact(LYMPH + "CD3neg/CD19")
    return truth


@dataclass(frozen=True)
class SampleScore:
    """One gated file against its truth."""

    file: str
    tube: str
    rows: tuple[dict, ...]  # population, true, gated, tp, f1, approximated
    car_true: int | None
    car_gated: int | None
    flags: tuple[str, ...]
    seconds: float

    @property
    def car_covered(self) -> bool | None:
        if self.car_true is None or self.car_gated is None:
            return None
        low, high = poisson_interval(self.car_true)
        return low <= self.car_gated <= high


def _descendants(parents: dict[str, str | None], roots: Iterable[str]) -> set[str]:
    found = set(roots)
    changed = True
    while changed:
        changed = False
        for child, parent in parents.items():
            if parent in found and child not in found:
                found.add(child)
                changed = True
    return found


def best_cut_f1(values: np.ndarray, truth: np.ndarray, above: bool) -> float:
    """The best F1 any single cut on one marker reaches (the truth's own overlap): the
    ceiling for a one-marker gate on these events, whatever places the cut."""
    if not truth.any():
        return np.nan
    order = np.argsort(values if above else -values)[::-1]
    hits = np.cumsum(truth[order])  # true positives when the top k events are called positive
    called = np.arange(1, len(order) + 1)
    return float(np.max(2 * hits / (called + truth.sum())))


def _marker_values(gated) -> Callable[[str], np.ndarray | None]:
    """Transformed, compensated values of a marker for every event (None off the panel)."""
    markers = gated.panel_markers()
    return lambda marker: gated.marker_values(marker) if marker in markers else None


def _within(rule: Truth, kept: np.ndarray) -> Truth:
    return lambda labels, marks: rule(labels, marks) & kept


def _f1(true: np.ndarray, gated: np.ndarray) -> float:
    total = int(true.sum()) + int(gated.sum())
    return 2 * int(np.count_nonzero(true & gated)) / total if total else 1.0


def score_file(path: Path, tube: str, config: LabConfig | None = None) -> SampleScore:
    """Gate one simulated file (with the shipped configuration, or ``config``) and compare
    every population with the truth labels."""
    from cartflow.pipeline.gate import gate_file

    start = time.perf_counter()
    gated = gate_file(path, tube=tube, config=config)
    seconds = time.perf_counter() - start
    truth_table = pd.read_parquet(path.parent / "truth" / f"{path.stem}.parquet")
    labels = truth_table["population"].astype(str)
    # a time gate rightly drops every event of a disturbed-flow window, cells included
    steady = ~truth_table["unstable_flow"].to_numpy(bool)
    definitions = {name: _within(rule, steady) for name, rule in truth_definitions(tube).items()}
    parents = dict(gated.placed.parents)
    approximated = _descendants(parents, gated.placed.approximations)
    marker_values = _marker_values(gated)
    rows = []
    for population in gated.placed.populations:
        if population not in definitions:
            continue
        true = definitions[population](labels, truth_table)
        mask = np.asarray(gated.result.mask(population))
        tp = int(np.count_nonzero(true & mask))
        n_true, n_gated = int(true.sum()), int(mask.sum())
        parent = parents.get(population)
        if parent in definitions:  # the gate's own error: on events both call the parent
            both = definitions[parent](labels, truth_table) & np.asarray(gated.result.mask(parent))
            own = _f1(true & both, mask & both)
        else:
            own = _f1(true, mask)
        oracle = np.nan
        phenotype = gated.template.population(population).phenotype
        if len(phenotype) == 1 and phenotype[0].level in "+-" and parent in definitions:
            condition = phenotype[0]
            inside = definitions[parent](labels, truth_table)
            values = marker_values(condition.marker)
            if values is not None:
                oracle = best_cut_f1(values[inside], true[inside], condition.level == "+")
        rows.append(
            {
                "population": population,
                "true": n_true,
                "gated": n_gated,
                "tp": tp,
                "f1": _f1(true, mask),
                "f1_given_parent": own,
                "oracle_f1": oracle,
                "approximated": population in approximated,
            }
        )
    car = next((r for r in rows if r["population"] == CAR_POPULATION), None)
    return SampleScore(
        file=path.name,
        tube=tube,
        rows=tuple(rows),
        car_true=car["true"] if car else None,
        car_gated=car["gated"] if car else None,
        flags=tuple(gated.placed.flags),
        seconds=seconds,
    )


def score_cohort(
    root: Path, tubes: Iterable[str], config: LabConfig | None = None
) -> list[SampleScore]:
    """Score every file of the given tubes listed in a simulated cohort's manifest (gated
    with the shipped configuration, or ``config``)."""
    with (root / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        manifest = list(csv.DictReader(fh))
    wanted = set(tubes)
    return [
        score_file(root / r["file"], r["tube"], config) for r in manifest if r["tube"] in wanted
    ]


def table(scores: Iterable[SampleScore]) -> pd.DataFrame:
    """One row per (file, population)."""
    return pd.DataFrame(
        [{"file": s.file, "tube": s.tube, **row} for s in scores for row in s.rows],
        columns=[
            "file",
            "tube",
            "population",
            "true",
            "gated",
            "tp",
            "f1",
            "f1_given_parent",
            "oracle_f1",
            "approximated",
        ],
    )


def f1_summary(rows: pd.DataFrame, min_events: int = MIN_EVENTS) -> pd.DataFrame:
    """min / median F1 per (tube, population) over samples with ``min_events`` true events."""
    big = rows[rows["true"] >= min_events].assign(gap=lambda r: r.oracle_f1 - r.f1_given_parent)
    summary = big.groupby(["tube", "population", "approximated"]).agg(
        min=("f1", "min"),
        median=("f1", "median"),
        samples=("f1", "size"),
        own_min=("f1_given_parent", "min"),
        own_median=("f1_given_parent", "median"),
        oracle_min=("oracle_f1", "min"),
        worst_gap=("gap", "max"),
    )
    return summary.reset_index().sort_values(["tube", "approximated", "min"])


def car_coverage(scores: Iterable[SampleScore]) -> dict[str, tuple[int, int]]:
    """Per tube: (samples whose CAR count is in the Poisson interval, samples)."""
    found: dict[str, list[bool]] = {}
    for score in scores:
        if score.car_covered is not None:
            found.setdefault(score.tube, []).append(score.car_covered)
    return {tube: (sum(v), len(v)) for tube, v in found.items()}


def fallback_counts(scores: Iterable[SampleScore]) -> pd.Series:
    """How many samples fell back to the template default, per tube and cut."""
    names = [
        (s.tube, flag.split(":", 1)[1])
        for s in scores
        for flag in s.flags
        if flag.startswith("threshold_fallback:")
    ]
    if not names:
        return pd.Series(dtype=int)
    return pd.Series(names).value_counts()
