"""Automated gating against the simulator's per-event truth: F1 per population, CAR-T counts.

Simulates a cohort (or reads one already simulated), gates every file of the chosen tubes
with its panel's template (the panel's ``gate_options`` set over it, as every gating does;
``--config DIR``: a lab configuration's panels and templates instead of the shipped ones)
and compares each population with the truth labels:
- F1 per population and sample, reported as min / median over samples with at least
  ``--min-events`` true events (the acceptance reads 200);
- CAR+ coverage: the share of samples whose gated CAR count lies in the exact Poisson 95 %
  interval of the true CAR-T count;
- how often each cut fell back to its template default.
Events acquired in a disturbed-flow window (a clog) count as rightly removed by the time
gate, cells included. Populations the panel approximates (a marker it omits) are reported
apart and not counted; populations it skips are absent.

The scoring lives in :mod:`cartflow.simulate.accuracy` (tests use it too).

Usage: python bench/accuracy.py --patients N --seed S --events E [--cytometer 'FACSCanto II']
       [--tubes memory function bcell] [--cohort DIR] [--config DIR] [--csv rows.csv]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from cartflow.simulate.accuracy import (
    MIN_EVENTS,
    SampleScore,
    car_coverage,
    f1_summary,
    fallback_counts,
    score_cohort,
    table,
)


def report(scores: list[SampleScore], min_events: int = MIN_EVENTS) -> str:
    """The text report: F1 table, CAR coverage, fallbacks, timing."""
    rows = table(scores)
    lines = [
        f"per-population F1 (samples with >= {min_events} true events); own_*: the gate's own"
        " F1 on the events both truth and gating put in its parent; oracle_min: the best F1 a"
        " single cut reaches on the true parent (one-marker gates); worst_gap: oracle - own"
    ]
    with pd.option_context("display.width", 160, "display.max_rows", 500):
        lines.append(f1_summary(rows, min_events).round(4).to_string(index=False))
    for tube, (inside, total) in car_coverage(scores).items():
        share = inside / total if total else float("nan")
        lines.append(
            f"{tube}: CAR+ count in the Poisson 95% interval in {inside}/{total} ({share:.1%})"
        )
    fallbacks = fallback_counts(scores)
    per_tube = pd.Series([s.tube for s in scores]).value_counts()
    lines.append("fallbacks (samples): " + (", ".join(
        f"{tube}/{cut} {n}/{per_tube[tube]}" for (tube, cut), n in fallbacks.items()
    ) or "none"))  # fmt: skip
    seconds = [s.seconds for s in scores]
    lines.append(f"gating: {np.median(seconds):.3f} s median per file over {len(seconds)} files")
    return "\n".join(lines)


def simulate(
    out_dir: Path, patients: int, seed: int, events: int, cytometer: str, tubes: tuple[str, ...]
) -> Path:
    """Write a simulated cohort into out_dir."""
    from cartflow.simulate import SimulationConfig, simulate_cohort

    config = SimulationConfig(
        patients=patients, seed=seed, events=events, cytometer=cytometer, tubes=tubes
    )
    simulate_cohort(out_dir, config)
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--cytometer", default="FACSLyric")
    parser.add_argument("--tubes", nargs="+", default=["memory", "function", "bcell"])
    parser.add_argument("--cohort", type=Path, help="score this simulated cohort instead")
    parser.add_argument("--config", type=Path, help="gate with this configuration folder")
    parser.add_argument("--min-events", type=int, default=MIN_EVENTS)
    parser.add_argument("--csv", type=Path, help="write one row per file and population")
    args = parser.parse_args()
    tubes = tuple(args.tubes)
    with tempfile.TemporaryDirectory(prefix="cartflow-accuracy-") as tmp:
        root = args.cohort or simulate(
            Path(tmp), args.patients, args.seed, args.events, args.cytometer, tubes
        )
        config = None
        if args.config:
            from cartflow.panels.config import load_config

            config = load_config(args.config)
        scores = score_cohort(root, tubes, config)
    if args.csv:
        table(scores).to_csv(args.csv, index=False)
    print(report(scores, args.min_events))


if __name__ == "__main__":
    main()
