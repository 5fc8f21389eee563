"""Plausibility checks on decoded events: data that contradicts its TEXT is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cartflow.io.errors import FcsError
from cartflow.io.fcs.data import PROBE_EVENTS, _scale_in_place

IMPLAUSIBLE_VALUE = 1e20


IMPLAUSIBLE_SHARE = 0.01


TIME_BACKWARDS_SHARE = 0.05


def _check_integer_words(fh, start, count, dtype, byte_order, channels, path: Path) -> None:
    """Refuse $DATATYPE I on words that are floating-point numbers: their exponent bits put
    them far beyond $PnR, where masking would turn them into noise."""
    width = dtype.base.itemsize if dtype.names is None else 0
    if width not in {4, 8} or count == 0:
        return
    fh.seek(start)
    rows = min(count, PROBE_EVENTS)
    words = np.fromfile(fh, dtype=f"{byte_order}u{width}", count=rows * len(channels))
    words = words[: len(words) - len(words) % len(channels)].reshape(-1, len(channels))
    as_float = words.view(f"{byte_order}f{width}")
    ranges = np.array([c.range if c.range > 0 else np.inf for c in channels])
    with np.errstate(all="ignore"):
        magnitude = np.abs(as_float.astype(np.float64))
        floating = (magnitude > 1e-6) & (magnitude < 1e12) & (words > ranges)
    nonzero = words != 0
    if nonzero.sum() and floating.sum() > 0.5 * nonzero.sum():
        raise FcsError(
            path,
            f"$DATATYPE is I, but {floating.sum() / nonzero.sum():.0%} of the DATA words are "
            "floating-point numbers beyond $PnR: the file's $DATATYPE is wrong",
        )


def _check_events(probe: np.ndarray, channels, text: dict, datatype: str, path: Path) -> None:
    """Refuse event data that contradicts what the TEXT says about it, or holds nothing."""
    if probe.size == 0:
        return
    if datatype in {"F", "D"}:
        byteord = text.get("$BYTEORD", "")
        _check_finite(probe, path, f"the data or its $BYTEORD ({byteord}) is wrong")
    nonzero_rows = np.flatnonzero(np.any(probe != 0, axis=1))
    if nonzero_rows.size == 0:
        raise FcsError(path, "every DATA value is 0: the file holds no measurements")
    if probe.shape[0] > 1 and np.all(probe == probe[0]):
        raise FcsError(
            path, "every event is the same: DATA holds no measurements (constant values)"
        )
    trailing = probe.shape[0] - 1 - int(nonzero_rows[-1])
    if trailing >= 2:
        raise FcsError(
            path,
            f"DATA ends in {trailing}{'+' if trailing >= PROBE_EVENTS else ''} events of zeros "
            "where $TOT says there are events: the file is incomplete (still being copied?)",
        )
    _check_time_runs_forward(probe, channels, path)
    if datatype in {"F", "D"}:
        _check_float_log_channels(probe, channels, path)
    scaled = np.array(probe, dtype=np.float32, order="F")
    _scale_in_place(scaled, channels, text)
    _check_finite(scaled, path, "after $PnE/$PnG scaling: those keywords are wrong")


def _check_finite(matrix: np.ndarray, path: Path, cause: str) -> None:
    """Reject data that is mostly garbage, as a wrong $BYTEORD or scale keyword produces."""
    with np.errstate(all="ignore"):
        bad = ~np.isfinite(matrix) | (np.abs(matrix) > IMPLAUSIBLE_VALUE)
    share = float(bad.mean())
    if share > IMPLAUSIBLE_SHARE:
        raise FcsError(path, f"{share:.0%} of event values are not finite or beyond 1e20; {cause}")


def _check_time_runs_forward(probe: np.ndarray, channels, path: Path) -> None:
    """A time channel runs forward; one that mostly runs backwards holds another channel's
    values: the DATA offset or a $PnB is off and every value sits in the wrong column."""
    if probe.shape[0] < 100:
        return
    for j, channel in enumerate(channels):
        if channel.is_time:
            backwards = float((np.diff(probe[:, j]) < 0).mean())
            if backwards > TIME_BACKWARDS_SHARE:
                raise FcsError(
                    path,
                    f"the time channel {channel.name} runs backwards between {backwards:.0%} of "
                    "events: DATA is not laid out as the TEXT says (offset or $PnB wrong)",
                )


def _check_float_log_channels(probe: np.ndarray, channels, path: Path) -> None:
    """$PnE on float data says the values are channel numbers 0..$PnR to be decoded; values
    outside that span (negative, as linear data has) make the keyword nonsense."""
    for j, channel in enumerate(channels):
        if not channel.is_log or channel.range <= 0:
            continue
        column = probe[:, j]
        outside = float(((column < 0) | (column > channel.range * 1.0001)).mean())
        if outside > IMPLAUSIBLE_SHARE:
            raise FcsError(
                path,
                f"$P{channel.index}E says log channel numbers 0..{channel.range:g}, but "
                f"{outside:.0%} of the float values lie outside: the keyword is wrong",
            )
