"""The gate model: small frozen dataclasses shaped like Gating-ML 2.0.

A gate's dimensions name their compensation and transformation by reference, exactly as in
Gating-ML, so a :class:`GateSet` converts to and from Gating-ML without loss. Populations are
addressed by id: every gate except a :class:`QuadrantGate` is a population, and each quadrant of
a quadrant gate is one. ``parent`` is the id of the population a gate is drawn inside.

Compensation references: ``None`` means uncompensated, ``"FCS"`` the spillover matrix of the
data file, anything else the id of a :class:`SpectrumMatrix` of the gate set.
"""

from cartflow.gating.model.gate_set import GateHierarchy, GateSet, SpectrumMatrix
from cartflow.gating.model.gates import (
    FCS_SPILL,
    Axis,
    BooleanGate,
    BooleanOp,
    Bound,
    Dimension,
    Divider,
    DividerRange,
    EllipsoidGate,
    Gate,
    GateRef,
    PolygonGate,
    Quadrant,
    QuadrantGate,
    RangeGate,
    RatioDimension,
    RectangleGate,
)

__all__ = [
    "FCS_SPILL",
    "Axis",
    "BooleanGate",
    "BooleanOp",
    "Bound",
    "Dimension",
    "Divider",
    "DividerRange",
    "EllipsoidGate",
    "Gate",
    "GateHierarchy",
    "GateRef",
    "GateSet",
    "PolygonGate",
    "Quadrant",
    "QuadrantGate",
    "RangeGate",
    "RatioDimension",
    "RectangleGate",
    "SpectrumMatrix",
]
