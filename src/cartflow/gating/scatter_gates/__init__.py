"""Scatter gates: intact cells (ellipses of scatter clusters fitted from template anchors, so
debris and dead cells stay out), lymphocytes (low SSC, bright CD45, on the lymphocyte side
of the dead cells; they read the cells gate's cluster fit, a declared input) and the robust
core of a small compartment. Each is a placement method (:mod:`cartflow.gating.method`)."""

from cartflow.gating.scatter_gates.cells import MIN_CLUSTER, POPULATED, ScatterClusters, cells
from cartflow.gating.scatter_gates.core import (
    CONCENTRATION_STEPS,
    CORE_FIT_EVENTS,
    TRIM_QUANTILE,
    core_ellipses,
)
from cartflow.gating.scatter_gates.lymphocytes import (
    BLAST_WEIGHT_RATIO,
    BRIGHT_KEEP,
    NEAR_EMPTY,
    lymphocytes,
)

__all__ = [
    "BLAST_WEIGHT_RATIO",
    "BRIGHT_KEEP",
    "CONCENTRATION_STEPS",
    "CORE_FIT_EVENTS",
    "MIN_CLUSTER",
    "NEAR_EMPTY",
    "POPULATED",
    "TRIM_QUANTILE",
    "ScatterClusters",
    "cells",
    "core_ellipses",
    "lymphocytes",
]
