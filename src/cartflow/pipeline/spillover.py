"""A spillover matrix from single-stain controls and an unstained control, as FlowJo and
FACSDiva compute it: for each control, the positive population's median in every detector
minus the negative population's, divided by the same difference in the control's own
detector.

Populations: every file keeps the events inside the unstained control's main scatter cloud
(its 2nd to 98th FSC-A and SSC-A percentiles); the negative population is the unstained
control's, the positive one the control's events brighter in its own detector than 99.5 %
of the unstained events. A control's detector is taken from ``channels.csv`` in the folder
(``name,channel``, as CytoExploreR writes it) when there is one, else it is the detector
where the control is brightest relative to the unstained.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cartflow.io.errors import CartflowError
from cartflow.io.fcs import FcsFile, read_fcs
from cartflow.io.outputs import write_csv

SCATTER_SPAN = (2.0, 98.0)
NEGATIVE_QUANTILE = 99.5
MIN_POSITIVE = 50


class SpilloverError(CartflowError):
    code = "spillover"


@dataclass(frozen=True)
class ControlUsed:
    """One single-stain control and the populations its row was computed from."""

    file: str
    detector: str
    positive_events: int
    negative_events: int
    positive_median: float
    negative_median: float
    threshold: float


@dataclass(frozen=True)
class SpilloverResult:
    detectors: tuple[str, ...]
    matrix: np.ndarray
    controls: tuple[ControlUsed, ...]
    unstained: str

    def write_csv(self, path: Path) -> None:
        """Detectors as header and as first column (what ``gate --spillover`` reads)."""
        frame = pd.DataFrame(self.matrix, columns=list(self.detectors))
        frame.insert(0, "", list(self.detectors))
        write_csv(frame, path, float_format="%.6g")


def _fluorescence(fcs: FcsFile) -> list[str]:
    if fcs.spillover is not None:
        return list(fcs.spillover.channels)
    return [c.name for c in fcs.channels if not (c.is_scatter or c.is_time)]


def _channel_map(folder: Path) -> dict[str, str]:
    table = folder / "channels.csv"
    if not table.is_file():
        return {}
    with table.open(newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"name", "channel"} <= set(rows[0]):
        raise SpilloverError(table, "needs the columns name,channel (control file, detector)")
    return {r["name"].strip(): r["channel"].strip() for r in rows}


def _column(fcs: FcsFile, name: str) -> np.ndarray:
    try:
        return fcs.events[:, fcs.channel_names.index(name)].astype(np.float64)
    except ValueError:
        raise SpilloverError(fcs.path, f"has no channel {name!r}") from None


def compute_spillover(
    files: Sequence[Path], unstained: Path, channels: dict[str, str] | None = None
) -> SpilloverResult:
    """The matrix from single-stain ``files`` and the ``unstained`` control."""
    negative = read_fcs(unstained)
    detectors = _fluorescence(negative)
    fsc, ssc = _column(negative, "FSC-A"), _column(negative, "SSC-A")
    bounds = [np.percentile(v, SCATTER_SPAN) for v in (fsc, ssc)]

    def in_scatter(fcs: FcsFile) -> np.ndarray:
        keep = np.ones(fcs.event_count, dtype=bool)
        for name, (low, high) in zip(("FSC-A", "SSC-A"), bounds, strict=True):
            values = _column(fcs, name)
            keep &= (values >= low) & (values <= high)
        return keep

    neg = np.column_stack([_column(negative, d) for d in detectors])[in_scatter(negative)]
    neg_median = np.median(neg, axis=0)
    neg_limit = np.percentile(neg, NEGATIVE_QUANTILE, axis=0)
    matrix = np.eye(len(detectors))
    used = []
    for path in files:
        fcs = read_fcs(path)
        values = np.column_stack([_column(fcs, d) for d in detectors])[in_scatter(fcs)]
        named = (channels or {}).get(path.name)
        if named is not None and named not in detectors:
            raise SpilloverError(path, f"channels.csv names detector {named!r}, not in the file")
        own = detectors.index(named) if named else _brightest(values, neg_median, neg)
        positive = values[values[:, own] > neg_limit[own]]
        if positive.shape[0] < MIN_POSITIVE:
            raise SpilloverError(
                path,
                f"only {positive.shape[0]} events above the unstained's {NEGATIVE_QUANTILE} % "
                f"in {detectors[own]}: not a single-stain control of that detector?",
            )
        pos_median = np.median(positive, axis=0)
        signal = pos_median[own] - neg_median[own]
        matrix[own] = (pos_median - neg_median) / signal
        matrix[own, own] = 1.0
        used.append(
            ControlUsed(
                path.name,
                detectors[own],
                positive.shape[0],
                neg.shape[0],
                float(pos_median[own]),
                float(neg_median[own]),
                float(neg_limit[own]),
            )
        )
    own_detectors = [c.detector for c in used]
    repeated = sorted({d for d in own_detectors if own_detectors.count(d) > 1})
    if repeated:
        raise SpilloverError(unstained.parent, f"several controls stain {', '.join(repeated)}")
    return SpilloverResult(tuple(detectors), matrix, tuple(used), unstained.name)


def _brightest(values: np.ndarray, neg_median: np.ndarray, neg: np.ndarray) -> int:
    """The detector where a control's upper events stand out most from the unstained."""
    spread = np.percentile(neg, 84, axis=0) - neg_median
    upper = np.percentile(values, 95, axis=0)
    return int(np.argmax((upper - neg_median) / np.maximum(spread, 1.0)))


def spillover_from_folder(folder: Path) -> SpilloverResult:
    """The matrix from a folder of controls: the unstained one is the file whose name says
    ``unstained`` (or ``channels.csv`` names ``Unstained``)."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".fcs")
    if not files:
        raise SpilloverError(folder, "holds no FCS files")
    channels = _channel_map(folder)
    unstained = [p for p in files if "unstained" in p.name.lower()
                 or channels.get(p.name, "").lower() == "unstained"]  # fmt: skip
    if len(unstained) != 1:
        raise SpilloverError(
            folder,
            f"needs exactly one unstained control (a file named '*unstained*'), "
            f"found {len(unstained)}",
        )
    stained = [p for p in files if p != unstained[0]]
    return compute_spillover(stained, unstained[0], channels)
