"""Automated gating of real files against an expert's manual gates: the Activation set.

Gates ``real-data/activation/`` files 1-16 and 33 with ``panels/templates/activation.yaml``
(no coordinates of its own) from a lab configuration folder, as ``cartflow pool`` and
``cartflow gate --config DIR --cuts`` do, and prints, per file and population, the F1 against
the expert's per-event gates (``truth/Activation_N.parquet``), the review flags, and CD69+
counts against the expert's with exact Poisson 95 % intervals.

The viability cuts (``VIABILITY``) are placed once on the pooled single cells of the stained
files (openCyto's groupBy, as the expert drew one dead-cell gate on the pooled files): the
dying cells' smear between live and dead grows with stimulation, so a valley edge placed
per file moves with it, while the stain's live/dead line is one for the batch.

The scoring lives in :mod:`cartflow.pipeline.expert_accuracy` (tests use it too).

Usage: python bench/real_gating.py [--data ../shared/real-data/activation]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from cartflow.pipeline.expert_accuracy import JUDGED, gate_all, small_counts, table

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "real-data" / "activation"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    results = gate_all(args.data)
    frame = table(results)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(frame.to_string(index=False))
        stained = frame[frame["file"] != 33]
        print("\nmedian F1 (files 1-16):")
        print(stained[list(JUDGED)].median().round(4).to_string())
        print("\nCD69+ counts (gated, its Poisson 95 % interval, expert's):")
        print(small_counts(results).to_string(index=False))
    for r in results:
        if r.flags:
            print(f"Activation_{r.number}: {', '.join(r.flags)}")


if __name__ == "__main__":
    main()
