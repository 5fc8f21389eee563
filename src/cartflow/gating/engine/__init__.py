"""Evaluate a :class:`GateSet` on an event matrix: one mask per population, with its evidence.

How the work is kept small:

- Events stay float32. Each compensated column (one matrix multiply per compensation) and each
  ratio column is computed once per evaluation and cached; transformed values asked for on
  most of the events are cached per event, so those are not transformed twice for an axis.
- Every Gating-ML scale transformation is monotone increasing, so a range on a transformed axis
  is the same range on the untransformed axis at the inverse-transformed cut. Range, rectangle
  and quadrant gates are evaluated that way, without transforming events. Events within a hair
  of a mapped cut (a relative band of 1e-7 of the scale) are transformed and compared with the
  cut as written, so membership is exactly what comparing transformed values gives.
- Masks are packed (one bit per event). Each side of a cut is computed once over its whole
  column and kept for the gates that follow (phenotypes share their cuts); a range, rectangle
  or quadrant is its parent's bits ANDed with its sides' bits, a boolean gate its operands'
  bits combined within its parent's: no event values are gathered and no masks scattered.
- Polygons and ellipsoids transform only their own axes, and only on those of their parent's
  events that lie within their bounding box (mapped to raw values, slightly widened), chunk by
  chunk, so no full-size float64 copy of an axis is made.
- Memory stays a small multiple of the event matrix: population masks and sides of cuts are
  packed; only the event indices of the populations used last are kept.

Gating-ML semantics: ranges are min <= x < max; polygons use the even-odd rule with edges
crossed half-open in y (the convention of flowutils); ellipsoids include their boundary;
membership always includes the parent's.
"""

from cartflow.gating.engine.columns import SMALL_REQUEST, Spill
from cartflow.gating.engine.evaluation import RECENT_POSITIONS, SHAPE_CHUNK, SIDES
from cartflow.gating.engine.evaluator import SUBSAMPLES, Evaluator, evaluate
from cartflow.gating.engine.ranges import BOUNDARY_BAND, SideFn
from cartflow.gating.engine.results import AxisCut, GateDiagnostics, GatingResult, PackedMasks
from cartflow.gating.engine.shapes import (
    EXTENT_MARGIN,
    Extent,
    ellipsoid_extent,
    points_in_ellipsoid,
    points_in_polygon,
    polygon_extent,
)

__all__ = [
    "BOUNDARY_BAND",
    "EXTENT_MARGIN",
    "RECENT_POSITIONS",
    "SHAPE_CHUNK",
    "SIDES",
    "SMALL_REQUEST",
    "SUBSAMPLES",
    "AxisCut",
    "Evaluator",
    "Extent",
    "GateDiagnostics",
    "GatingResult",
    "PackedMasks",
    "SideFn",
    "Spill",
    "ellipsoid_extent",
    "evaluate",
    "points_in_ellipsoid",
    "points_in_polygon",
    "polygon_extent",
]
