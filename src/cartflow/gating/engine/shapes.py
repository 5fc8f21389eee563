"""Polygon and ellipsoid membership tests and their bounding boxes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Extent = tuple[tuple[float, ...], tuple[float, ...]]
"""A shape's bounding box: its lowest and highest value on each axis."""

EXTENT_MARGIN = 1e-5
"""How much a shape's extent is widened (relative) before events outside it are skipped."""


def polygon_extent(vertices: Sequence[tuple[float, float]]) -> Extent:
    """The bounding box of a polygon's vertices (no point outside it is inside)."""
    v = np.asarray(vertices, dtype=np.float64)
    return tuple(v.min(axis=0).tolist()), tuple(v.max(axis=0).tolist())


def ellipsoid_extent(
    mean: Sequence[float], covariance: Sequence[Sequence[float]], distance_square: float
) -> Extent | None:
    """mean +- sqrt(distance_square * covariance_ii) per axis: the bounding box of an
    ellipsoid with a symmetric, positive definite covariance (None for any other)."""
    matrix = np.asarray(covariance, dtype=np.float64)
    if not (distance_square >= 0 and np.array_equal(matrix, matrix.T)):
        return None
    if not np.all(np.linalg.eigvalsh(matrix) > 0):
        return None
    half = np.sqrt(distance_square * np.diag(matrix))
    centre = np.asarray(mean, dtype=np.float64)
    return tuple((centre - half).tolist()), tuple((centre + half).tolist())


def points_in_polygon(
    x: np.ndarray, y: np.ndarray, vertices: Sequence[tuple[float, float]]
) -> np.ndarray:
    """Even-odd rule, vectorised over points, one pass per edge (self-intersecting allowed).

    An edge counts when it spans the point's y half-open (low <= y < high) and lies strictly
    to the right of the point, decided by the sign of the cross product as in flowutils.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    inside = np.zeros(x.shape[0], dtype=bool)
    v = np.asarray(vertices, dtype=np.float64)
    # points outside the polygon's y extent span no edge: test only the rest
    with np.errstate(invalid="ignore"):
        rows = np.flatnonzero((y >= v[:, 1].min()) & (y <= v[:, 1].max()))
    px, py = x[rows], y[rows]
    odd = np.zeros(rows.size, dtype=bool)
    for (ax, ay), (bx, by) in zip(v, np.roll(v, -1, axis=0), strict=True):
        if ay == by:
            continue
        cross = (bx - ax) * (py - ay) - (px - ax) * (by - ay)
        if ay < by:
            odd ^= (ay <= py) & (py < by) & (cross > 0)
        else:
            odd ^= (by <= py) & (py < ay) & (cross < 0)
    inside[rows] = odd
    return inside


def points_in_ellipsoid(
    columns: Sequence[np.ndarray],
    mean: Sequence[float],
    covariance: Sequence[Sequence[float]],
    distance_square: float,
) -> np.ndarray:
    """(x - mean)' inv(covariance) (x - mean) <= distance_square, one value per event.

    ``columns`` holds one array per dimension; the sum runs column by column in float64.
    """
    inverse = np.linalg.inv(np.asarray(covariance, dtype=np.float64))
    centred = [np.asarray(c, dtype=np.float64) - m for c, m in zip(columns, mean, strict=True)]
    k = len(centred)
    total = np.zeros(centred[0].shape[0])
    for j in range(k):
        rotated = centred[0] * inverse[0, j]
        for i in range(1, k):
            rotated += centred[i] * inverse[i, j]
        total += rotated * centred[j]
    with np.errstate(invalid="ignore"):
        return total <= distance_square
