"""Cuts that moved far from the same cut on comparable samples (a batch, a patient's series).

Pure: given a set of decisions (sample → cut name → placed value, in the cut's own units:
transformed for fluorescence, data units for linear scatter), each value is compared with the
same cut on the *other* samples: their median, and their spread as a robust standard
deviation (1.4826 × the median absolute deviation), never below a floor so that a batch of
near-identical cuts does not call a small move an outlier. A value more than ``limit`` spreads
from the others' median is returned with that evidence. Too few other samples: no verdict.
Where the cut's own density is known, :func:`harmless` tells a far move that changes no
count beyond its Poisson noise (a cut anywhere in a wide empty gap) from one that does.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import numpy as np

MAD_TO_SD = 1.4826
"""The median absolute deviation of a normal sample times this is its standard deviation."""


@dataclass(frozen=True)
class DeviationSettings:
    """When a cut counts as far from the others."""

    limit: float = 5.0
    """Robust standard deviations from the others' median."""
    min_others: int = 5
    """Other samples needed before any verdict."""
    min_spread: float = 0.02
    """Floor of the spread in the cut's units (2 % of a logicle scale)."""
    min_relative_spread: float = 0.05
    """Floor of the spread as a share of the others' median (cuts in data units)."""


@dataclass(frozen=True)
class CutDeviation:
    """One cut far from the same cut on the other samples, with the evidence."""

    sample: Hashable
    cut: str
    value: float
    median: float
    spread: float
    others: int

    @property
    def distance(self) -> float:
        """How many spreads the value lies from the others' median."""
        return abs(self.value - self.median) / self.spread

    @property
    def flag(self) -> str:
        """The review flag: ``batch_outlier:<cut>`` with its evidence."""
        return (
            f"batch_outlier:{self.cut} ({self.value:.4g}; median of {self.others} others "
            f"{self.median:.4g}, spread {self.spread:.3g}, {self.distance:.1f} spreads away)"
        )


def cut_deviations(
    decisions: Mapping[Hashable, Mapping[str, float]],
    settings: DeviationSettings = DeviationSettings(),
) -> list[CutDeviation]:
    """Every cut value far from the same cut on the other samples of ``decisions``."""
    cuts = sorted({name for values in decisions.values() for name in values})
    found = []
    for cut in cuts:
        placed = [
            (sample, float(values[cut]))
            for sample, values in decisions.items()
            if np.isfinite(values.get(cut, np.nan))
        ]
        if len(placed) - 1 < settings.min_others:
            continue
        values = np.array([v for _, v in placed])
        for i, (sample, value) in enumerate(placed):
            others = np.delete(values, i)
            median = float(np.median(others))
            mad = float(np.median(np.abs(others - median)))
            spread = max(
                MAD_TO_SD * mad, settings.min_spread, settings.min_relative_spread * abs(median)
            )
            if abs(value - median) > settings.limit * spread:
                found.append(CutDeviation(sample, cut, value, median, spread, others.size))
    return found


def harmless(
    grid: np.ndarray, density: np.ndarray, events: int, value: float, median: float
) -> bool:
    """Whether moving a cut from ``value`` to ``median`` changes its smaller side by fewer
    events than that side's Poisson noise (its square root, at least one event), judged
    on the density the cut was placed on (``grid``, ``density``) over ``events`` events."""
    grid, density = np.asarray(grid, dtype=float), np.asarray(density, dtype=float)
    total = density.sum()
    if grid.size != density.size or not total > 0 or events <= 0:
        return False
    share = density / total
    low, high = min(value, median), max(value, median)
    between = share[(grid >= low) & (grid <= high)].sum() * events
    below = share[grid < value].sum() * events
    smaller = min(below, events - below)
    return bool(between <= max(1.0, np.sqrt(smaller)))
