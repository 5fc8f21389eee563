"""Automated gating of real files against an expert's manual gates: the Activation set.

Gates ``real-data/activation/`` files 1-16 and 33 with ``panels/templates/activation.yaml``
(no coordinates of its own) and prints, per file and population, the F1 against the expert's
per-event gates (``truth/Activation_N.parquet``), the review flags, and CD69+ counts against
the expert's with exact Poisson 95 % intervals.

Usage: python bench/real_gating.py [--data ../shared/real-data/activation]
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.accuracy import poisson_interval
from gating.auto import place
from gating.placer import ChannelMap
from gating.template import load_template
from pipeline.fcs import read_fcs

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "real-data" / "activation"
TEMPLATE = Path(__file__).resolve().parents[1] / "panels" / "templates" / "activation.yaml"
JUDGED = ("Cells", "Single Cells", "Live Cells", "T Cells", "CD4 T Cells", "CD8 T Cells",
          "Dendritic Cells")  # fmt: skip
SMALL = ("CD69+ CD4 T Cells", "CD69+ CD8 T Cells")
FILES = (*range(1, 17), 33)


@dataclass(frozen=True)
class FileResult:
    number: int
    f1: dict[str, float]
    counts: dict[str, tuple[int, int]]
    """Population → (gated, expert's) events."""
    flags: tuple[str, ...]

    @property
    def review(self) -> bool:
        """Whether the gating asks for a person to look (an implausible or fallen-back cut)."""
        return any(f.startswith(("implausible:", "threshold_fallback:")) for f in self.flags)


def channel_map(data: Path, channel_names: list[str]) -> ChannelMap:
    """Markers per channel from the experiment's ``Activation-Experiment-Markers.csv``."""
    with (data / "Activation-Experiment-Markers.csv").open(encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["Marker"] not in ("", "NA")]
    markers = {r["Marker"]: r["Channel"] for r in rows}
    fluorescence = tuple(
        c for c in channel_names if c != "Time" and not c.startswith(("FSC", "SSC"))
    )
    return ChannelMap(markers, fluorescence, "FSC-A", "FSC-H", "SSC-A", "Time")


def _f1(truth: np.ndarray, gated: np.ndarray) -> float:
    both = np.count_nonzero(truth & gated)
    total = np.count_nonzero(truth) + np.count_nonzero(gated)
    return 1.0 if total == 0 else 2 * both / total


def gate_file(number: int, data: Path = DATA, template_path: Path = TEMPLATE) -> FileResult:
    """One Activation file gated with the template and compared with the expert's gates."""
    template = load_template(template_path)
    fcs = read_fcs(data / f"Activation_{number}.fcs")
    spill = (fcs.spillover.channels, fcs.spillover.matrix) if fcs.spillover else None
    channels = channel_map(data, list(fcs.channel_names))
    placed, result = place(template, fcs.events, fcs.channel_names, channels, spill)
    truth = pd.read_parquet(data / "truth" / f"Activation_{number}.parquet")
    f1, counts = {}, {}
    for population in (*JUDGED, *SMALL):
        expert = truth[population].to_numpy(bool)
        gated = (
            np.asarray(result.mask(population), dtype=bool)
            if population in placed.populations
            else np.zeros(len(expert), dtype=bool)
        )
        f1[population] = _f1(expert, gated)
        counts[population] = (int(gated.sum()), int(expert.sum()))
    return FileResult(number, f1, counts, tuple(placed.flags))


def table(results: list[FileResult]) -> pd.DataFrame:
    rows = [{"file": r.number, **{p: round(r.f1[p], 4) for p in JUDGED},
             "review": r.review} for r in results]  # fmt: skip
    return pd.DataFrame(rows)


def small_counts(results: Iterable[FileResult]) -> pd.DataFrame:
    rows = []
    for r in results:
        for population in SMALL:
            gated, expert = r.counts[population]
            low, high = poisson_interval(gated)
            rows.append({"file": r.number, "population": population, "gated": gated,
                         "interval": f"[{low:.0f}, {high:.0f}]", "expert": expert,
                         "expert_inside": low <= expert <= high})  # fmt: skip
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    results = [gate_file(n, args.data) for n in FILES]
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
