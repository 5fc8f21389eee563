"""Per-evaluation cache of compensated, ratio and transformed axis columns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from cartflow.gating.compensation import compensated_columns
from cartflow.gating.errors import GatingError
from cartflow.gating.model import FCS_SPILL, Axis, Dimension, GateSet, RatioDimension
from cartflow.gating.transforms import Fratio, ScaleTransform

Spill = tuple[Sequence[str], np.ndarray]

SMALL_REQUEST = 4
"""Transformed values for fewer than 1/SMALL_REQUEST of the events are not cached per event."""


class _Columns:
    """Per-evaluation cache of raw (compensated) axis columns and transformed values."""

    def __init__(
        self,
        gate_set: GateSet,
        events: np.ndarray,
        channel_names: Sequence[str],
        spill: Spill | None,
    ) -> None:
        self.gate_set = gate_set
        self.events = events
        self.n = events.shape[0]
        self.channel_names = list(channel_names)
        self.index: dict[str, int] = {}
        for i, name in enumerate(channel_names):
            self.index.setdefault(name, i)
        self.spill = _check_spill(spill, self.index)
        self._plain: dict[int, np.ndarray] = {}
        self._blocks: dict[str, tuple[dict[str, int], np.ndarray]] = {}
        self._raw: dict[Axis, np.ndarray] = {}
        self._transformed: dict[Axis, tuple[np.ndarray, np.ndarray]] = {}

    # raw values --------------------------------------------------------------------------

    def transform(self, axis: Axis) -> ScaleTransform | None:
        """The axis's scale transformation, if any."""
        if axis.transform is None:
            return None
        return self.gate_set.transforms[axis.transform]  # type: ignore[return-value]

    def notes(self, axis: Axis) -> list[str]:
        """Remarks on how an axis was resolved (e.g. 'FCS' compensation without a spill)."""
        if axis.compensation == FCS_SPILL and self.spill is None:
            return [
                f"{axis.label}: the data has no spillover matrix, so 'FCS' compensation "
                "leaves it uncompensated (Gating-ML 2.0, section 4)"
            ]
        return []

    def raw(self, axis: Axis, idx: np.ndarray | None) -> np.ndarray:
        """Compensated, untransformed values of an axis for events ``idx`` (None: all)."""
        key = replace(axis, transform=None)
        column = self._raw.get(key)
        if column is None and idx is not None and self._uncompensated(key):
            return self.events[idx, self.index[key.channel]]  # a few events: no column copy
        if column is None:
            column = self._compute_raw(key)
            self._raw[key] = column
        return column if idx is None else np.take(column, idx)

    def _uncompensated(self, axis: Axis) -> bool:
        return (
            isinstance(axis, Dimension)
            and axis.channel in self.index
            and (axis.compensation is None or (axis.compensation == FCS_SPILL and not self.spill))
        )

    def _compute_raw(self, axis: Axis) -> np.ndarray:
        if isinstance(axis, RatioDimension):
            ratio = self.gate_set.transforms[axis.ratio]
            assert isinstance(ratio, Fratio)
            numerator = self.raw(Dimension(ratio.numerator, axis.compensation), None)
            denominator = self.raw(Dimension(ratio.denominator, axis.compensation), None)
            return ratio.apply(np.column_stack((numerator, denominator)))
        comp = axis.compensation
        if comp is None or (comp == FCS_SPILL and self.spill is None):
            return self._plain_column(axis.channel)
        if comp == FCS_SPILL:
            assert self.spill is not None
            detectors, matrix = self.spill
            channel = axis.channel
        else:
            spectrum = self.gate_set.compensations[comp]
            detectors, matrix = spectrum.detectors, spectrum.matrix
            channel = spectrum.detector_for(axis.channel) or axis.channel
        if channel not in detectors:
            return self._plain_column(channel)  # not a detector of this matrix: unchanged
        positions, block = self._block(comp, detectors, matrix)
        return block[:, positions[channel]]

    def _plain_column(self, channel: str) -> np.ndarray:
        if channel not in self.index:
            raise GatingError(
                f"channel {channel!r}",
                f"is not in the data (channels: {', '.join(self.channel_names)})",
            )
        i = self.index[channel]
        if i not in self._plain:
            self._plain[i] = np.ascontiguousarray(self.events[:, i])
        return self._plain[i]

    def _block(
        self, comp: str, detectors: Sequence[str], matrix: np.ndarray
    ) -> tuple[dict[str, int], np.ndarray]:
        if comp not in self._blocks:
            for detector in detectors:
                if detector not in self.index:
                    raise GatingError(
                        f"compensation {comp!r}", f"detector {detector!r} is not in the data"
                    )
            block = compensated_columns(self.events, self.channel_names, list(detectors), matrix)
            # column-major already (contiguous columns compare fast): asfortranarray is a no-op
            self._blocks[comp] = ({d: i for i, d in enumerate(detectors)}, np.asfortranarray(block))
        return self._blocks[comp]

    # transformed values --------------------------------------------------------------------

    def transformed(self, axis: Axis, idx: np.ndarray | None, *, cache: bool = True) -> np.ndarray:
        """Transformed (float64) values of an axis for events ``idx``, each computed once
        (``cache=False``: computed now unless already kept, and not kept)."""
        transform = self.transform(axis)
        if transform is None:
            return np.asarray(self.raw(axis, idx), dtype=np.float64)
        entry = self._transformed.get(axis)
        small = idx is not None and (not cache or idx.size * SMALL_REQUEST < self.n)
        if entry is None and small:
            return transform.apply(self.raw(axis, idx))  # a subsample: not worth a full cache
        if entry is None:
            if idx is None:
                values = transform.apply(self.raw(axis, None))
                self._transformed[axis] = (values, np.ones(self.n, dtype=bool))
                return values
            entry = (np.full(self.n, np.nan), np.zeros(self.n, dtype=bool))
            self._transformed[axis] = entry
        values, done = entry
        todo = np.flatnonzero(~done) if idx is None else idx[~done[idx]]
        if todo.size:
            values[todo] = transform.apply(self.raw(axis, todo))
            done[todo] = True
        return values if idx is None else values[idx]


def _check_spill(spill: Spill | None, index: Mapping[str, int]) -> Spill | None:
    if spill is None:
        return None
    channels, matrix = spill
    channels = list(channels)
    missing = [c for c in channels if c not in index]
    if missing:
        raise GatingError("spillover", f"names channels not in the data: {', '.join(missing)}")
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (len(channels), len(channels)):
        raise GatingError("spillover", f"matrix is {matrix.shape} for {len(channels)} channels")
    return channels, matrix
