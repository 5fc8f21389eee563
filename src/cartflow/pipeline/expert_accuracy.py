"""Automated gating of real files scored against an expert's manual gates: the Activation set.

Files 1-16 and 33 of CytoExploreR's mouse T-cell activation experiment are gated with
``panels/templates/activation.yaml`` (no coordinates of its own) from a lab configuration
folder, as ``cartflow pool`` and ``cartflow gate --config DIR --cuts`` do; each population is
compared event by event with the expert's gates (``truth/Activation_N.parquet``): F1, review
flags, and the small CD69+ counts against the expert's with exact Poisson 95 % intervals.

The viability cuts (``VIABILITY``) are placed once on the pooled single cells of the stained
files (openCyto's groupBy, as the expert drew one dead-cell gate on the pooled files): the
dying cells' smear between live and dead grows with stimulation, so a valley edge placed
per file moves with it, while the stain's live/dead line is one for the batch.
"""

from __future__ import annotations

import csv
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cartflow.gating.placement import ThresholdDecision
from cartflow.gating.placer import ChannelMap
from cartflow.panels import PANEL_DIR
from cartflow.panels.config import LabConfig, init_config, load_config
from cartflow.pipeline.counts import poisson_interval
from cartflow.pipeline.gate import gate_file as gate_sample
from cartflow.pipeline.pooling import pool_cuts

TEMPLATE = PANEL_DIR / "templates" / "activation.yaml"
JUDGED = ("Cells", "Single Cells", "Live Cells", "T Cells", "CD4 T Cells", "CD8 T Cells",
          "Dendritic Cells")  # fmt: skip
SMALL = ("CD69+ CD4 T Cells", "CD69+ CD8 T Cells")
STAINED = tuple(range(1, 17))
FILES = (*STAINED, 33)
VIABILITY = ("Hoechst-405", "Hoechst-430")
"""Cuts placed on the stained files pooled (the dead-cell line of the batch)."""


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
    markers = {r["Marker"]: r["Channel"] for r in _marker_rows(data)}
    fluorescence = tuple(
        c for c in channel_names if c != "Time" and not c.startswith(("FSC", "SSC"))
    )
    return ChannelMap(markers, fluorescence, "FSC-A", "FSC-H", "SSC-A", "Time")


def _marker_rows(data: Path) -> list[dict[str, str]]:
    with (data / "Activation-Experiment-Markers.csv").open(encoding="utf-8") as handle:
        return [r for r in csv.DictReader(handle) if r["Marker"] not in ("", "NA")]


def write_lab_config(folder: Path, data: Path, template_path: Path = TEMPLATE) -> Path:
    """A lab configuration folder: the shipped one plus the experiment's panel (from its
    markers file) and the Activation template."""
    init_config(folder)
    lines = [f"  - {{channel: {r['Channel']}, marker: {r['Marker']}}}" for r in _marker_rows(data)]
    (folder / "activation.yaml").write_text(
        "id: activation\nversion: 1\ntube: activation\ntube_names: [activation]\n"
        "beads: false\nmarker_labels: optional\ncytometer: LSRII\n"
        "scatter: [FSC-A, FSC-H, SSC-A]\ntime: Time\nchannels:\n" + "\n".join(lines) + "\n",
        encoding="utf-8",
    )
    shutil.copy(template_path, folder / "templates" / "activation.yaml")
    return folder


def _f1(truth: np.ndarray, gated: np.ndarray) -> float:
    both = np.count_nonzero(truth & gated)
    total = np.count_nonzero(truth) + np.count_nonzero(gated)
    return 1.0 if total == 0 else 2 * both / total


def pooled_viability(data: Path, config: LabConfig) -> dict[str, ThresholdDecision]:
    """The viability cuts placed once on the stained files' pooled single cells."""
    paths = [data / f"Activation_{n}.fcs" for n in STAINED]
    return pool_cuts(paths, VIABILITY, tube="activation", config=config)


def gate_file(
    number: int,
    data: Path,
    config: LabConfig,
    cuts: dict[str, ThresholdDecision] | None = None,
) -> FileResult:
    """One Activation file gated with the configuration's template (``cuts`` as given) and
    compared with the expert's gates."""
    gated = gate_sample(
        data / f"Activation_{number}.fcs", tube="activation", fixed_cuts=cuts, config=config
    )
    truth = pd.read_parquet(data / "truth" / f"Activation_{number}.parquet")
    f1, counts = {}, {}
    for population in (*JUDGED, *SMALL):
        expert = truth[population].to_numpy(bool)
        gated_mask = (
            np.asarray(gated.result.mask(population), dtype=bool)
            if population in gated.placed.populations
            else np.zeros(len(expert), dtype=bool)
        )
        f1[population] = _f1(expert, gated_mask)
        counts[population] = (int(gated_mask.sum()), int(expert.sum()))
    return FileResult(number, f1, counts, tuple(gated.placed.flags))


def gate_all(data: Path) -> list[FileResult]:
    """Every file of ``FILES`` gated, the viability cuts pooled over the stained files."""
    with tempfile.TemporaryDirectory() as folder:
        config = load_config(write_lab_config(Path(folder) / "lab", data))
        cuts = pooled_viability(data, config)
        return [gate_file(n, data, config, cuts) for n in FILES]


def table(results: list[FileResult]) -> pd.DataFrame:
    """F1 per file and judged population, and whether the file asks for review."""
    rows = [{"file": r.number, **{p: round(r.f1[p], 4) for p in JUDGED},
             "review": r.review} for r in results]  # fmt: skip
    return pd.DataFrame(rows)


def small_counts(results: Iterable[FileResult]) -> pd.DataFrame:
    """The small CD69+ counts per file: gated, its Poisson 95 % interval, the expert's."""
    rows = []
    for r in results:
        for population in SMALL:
            gated, expert = r.counts[population]
            low, high = poisson_interval(gated)
            rows.append({"file": r.number, "population": population, "gated": gated,
                         "interval": f"[{low:.0f}, {high:.0f}]", "expert": expert,
                         "expert_inside": low <= expert <= high})  # fmt: skip
    return pd.DataFrame(rows)
