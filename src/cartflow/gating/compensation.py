"""Compensation: detector values times the inverse of the spillover matrix, in one multiply.

With S the spillover matrix (rows: fluorochromes, columns: detectors, S[i, j] the share of
fluorochrome i seen by detector j), measured = true @ S, so true = measured @ inv(S). That is
what flowutils computes by solving per event; one multiply by the inverse gives the same values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cartflow.gating.errors import GatingError


def _columns(channel_names: Sequence[str], spill_channels: Sequence[str]) -> list[int]:
    index = {name: i for i, name in enumerate(channel_names)}
    missing = [c for c in spill_channels if c not in index]
    if missing:
        raise GatingError("spillover", f"names channels not in the data: {', '.join(missing)}")
    if len(set(spill_channels)) != len(spill_channels):
        raise GatingError("spillover", "names a channel twice")
    return [index[c] for c in spill_channels]


def inverse_spill(matrix: np.ndarray, size: int) -> np.ndarray:
    """The inverse of a size x size spillover matrix (float64), or a GatingError."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (size, size):
        raise GatingError(
            "spillover", f"matrix is {matrix.shape}, expected {size} x {size} for its channels"
        )
    if not np.all(np.isfinite(matrix)):
        raise GatingError("spillover", "matrix has values that are not finite")
    try:
        return np.linalg.inv(matrix)
    except np.linalg.LinAlgError:
        raise GatingError("spillover", "matrix is singular and cannot be inverted") from None


COMPENSATION_BLOCK = 1 << 13
"""Events per block of the compensation multiply (bounds its float64 temporaries)."""


def compensated_columns(
    events: np.ndarray,
    channel_names: Sequence[str],
    spill_channels: Sequence[str],
    matrix: np.ndarray,
) -> np.ndarray:
    """Only the compensated detector columns, in ``spill_channels`` order (n x k, float32).

    The result is column-major: each column is one contiguous array.
    """
    columns = _columns(channel_names, spill_channels)
    inverse_t = inverse_spill(matrix, len(columns)).T
    events = np.asarray(events)
    # in float64 and rounded once to float32; laid out detector-major, so each returned
    # column is contiguous; done in blocks of events so the float64 temporaries stay small
    out = np.empty((len(columns), events.shape[0]), dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):  # inf/NaN events: flagged by the caller
        for start in range(0, events.shape[0], COMPENSATION_BLOCK):
            block = events[start : start + COMPENSATION_BLOCK, columns].T.astype(np.float64)
            out[:, start : start + COMPENSATION_BLOCK] = inverse_t @ block
    return out.T


def compensate(
    events: np.ndarray,
    channel_names: Sequence[str],
    spill_channels: Sequence[str],
    matrix: np.ndarray,
) -> np.ndarray:
    """A float32 copy of ``events`` with the ``spill_channels`` columns compensated.

    Other columns are copied unchanged. Raises :class:`GatingError` when a spill channel is not
    in ``channel_names`` or the matrix is not square, finite and invertible.
    """
    events = np.asarray(events)
    if events.ndim != 2 or events.shape[1] != len(channel_names):
        raise GatingError(
            "events", f"shape {events.shape} does not match {len(channel_names)} channel names"
        )
    out = events.astype(np.float32, copy=True)
    out[:, _columns(channel_names, spill_channels)] = compensated_columns(
        events, channel_names, spill_channels, matrix
    )
    return out
