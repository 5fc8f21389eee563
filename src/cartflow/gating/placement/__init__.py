"""Data-driven threshold placement on one transformed marker, with its evidence.

Estimators, each bounded by the template and each returning what it saw:
- ``valley``: the deepest density minimum between the two highest modes;
- ``mixture``: a Gaussian mixture (scikit-learn) and the point between the two component
  means where their weighted densities cross;
- ``tail``: an upper quantile of an internal negative population plus a margin;
- ``balance``: a smear of positives running into the negatives (CAR-T), cut where the expected
  false positives and false negatives of a fitted negative + positive model are equal, so
  that the count of the gate is unbiased;
- ``gaussian_clusters``: an EM fit of named clusters started from template anchors (scatter).
When the data give no clear answer the template default is used and ``fallback`` is set.
"""

from cartflow.gating.placement.balance import balance_threshold
from cartflow.gating.placement.clusters import Cluster, ClusterFit, gaussian_clusters
from cartflow.gating.placement.decision import (
    GRID_POINTS,
    MAX_FIT_EVENTS,
    MIN_EVENTS,
    Bounds,
    Method,
    ThresholdDecision,
    density,
    silverman_bandwidth,
)
from cartflow.gating.placement.thresholds import (
    FLOOR_RISE,
    MIN_PEAK,
    mixture_threshold,
    tail_threshold,
    valley_threshold,
)

__all__ = [
    "FLOOR_RISE",
    "GRID_POINTS",
    "MAX_FIT_EVENTS",
    "MIN_EVENTS",
    "MIN_PEAK",
    "Bounds",
    "Cluster",
    "ClusterFit",
    "Method",
    "ThresholdDecision",
    "balance_threshold",
    "density",
    "gaussian_clusters",
    "mixture_threshold",
    "silverman_bandwidth",
    "tail_threshold",
    "valley_threshold",
]
