"""Gating-ML 2.0 transformations as small frozen dataclasses, and FlowJo 10's own two.

flin, flog, fasinh, logicle and hyperlog map one column of values; fratio maps two columns
(numerator, denominator) to one. FlowJo's log (:class:`FlowJoLog`, clipped at its offset)
and biex (:class:`FlowJoBiex`, FlowJo's lookup table as FlowKit builds it) are read from
workspaces; they are not Gating-ML and are not written to it. Parameters are named and
checked as in the Gating-ML 2.0 specification (section 6); logicle, hyperlog, flog and fasinh
are computed by flowutils, the implementation FlowKit uses. ``apply`` always computes in
float64 and returns float64.

All one-column transforms are monotone increasing, so each has an exact ``inverse``: a cut
drawn on the transformed axis maps to one cut on the untransformed axis, which is what lets the
engine evaluate range gates without transforming events. The two FlowJo scales are flat beyond
their ends (every value below FlowJo's log offset is the offset); there ``inverse`` gives
-inf/+inf, so a cut at the flat end is compared on transformed values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import flowutils
import numpy as np

from cartflow.gating.errors import GatingError


def _as_float64(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _check(name: str, condition: bool, problem: str) -> None:
    if not condition:
        raise GatingError(f"{name} transformation", problem)


def _finite(name: str, **params: float) -> None:
    for key, value in params.items():
        _check(
            name,
            isinstance(value, int | float) and math.isfinite(value),
            f"parameter {key}={value!r} is not a finite number",
        )


def _keep_non_finite(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """flowutils' C kernels return -1 for NaN and +-inf; give NaN and +-inf back instead."""
    bad = ~np.isfinite(x)
    if bad.any():
        y[bad] = x[bad]
    return y


def _solve_unconverged(x: np.ndarray, y: np.ndarray, inverse) -> np.ndarray:
    """Re-solve the values flowutils' Halley iteration gave up on.

    Its C kernels return -1 when the iteration does not reach 3 ulp in 40 steps, which
    happens for a few values with some valid parameter sets (e.g. W near M/2, negative A).
    The closed-form inverse is monotone, so those values are found by bisection on it.
    """
    failed = np.flatnonzero((y == -1.0) & np.isfinite(x))
    if failed.size == 0:
        return y
    target = x[failed]
    low, high = np.full(failed.size, -1.0), np.full(failed.size, 2.0)
    for _ in range(64):  # widen the bracket until it holds every target
        too_low, too_high = inverse(low) > target, inverse(high) < target
        if not (too_low.any() or too_high.any()):
            break
        low[too_low] = 2.0 * low[too_low]
        high[too_high] = 2.0 * high[too_high]
    for _ in range(80):  # bisection to double precision
        middle = (low + high) / 2
        below = inverse(middle) < target
        low = np.where(below, middle, low)
        high = np.where(below, high, middle)
    y[failed] = (low + high) / 2
    return y


@dataclass(frozen=True)
class Flin:
    """flin(x, T, A) = (x + A) / (T + A): linear, [-A, T] onto [0, 1]."""

    t: float
    a: float

    kind: ClassVar[str] = "flin"
    domain_min: ClassVar[float] = -math.inf

    def __post_init__(self) -> None:
        _finite(self.kind, T=self.t, A=self.a)
        _check(self.kind, self.t > 0, f"T={self.t} must be > 0")
        _check(self.kind, self.t + self.a > 0, f"T + A = {self.t + self.a} must be > 0")

    @property
    def top(self) -> float:
        """The data value mapped to 1 (T), the scale of the untransformed axis."""
        return self.t

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Transform values (float64 out)."""
        return (_as_float64(x) + self.a) / (self.t + self.a)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """Map transformed values back to data values."""
        return _as_float64(y) * (self.t + self.a) - self.a


@dataclass(frozen=True)
class Flog:
    """flog(x, T, M) = log10(x / T) / M + 1: M decades onto [0, 1]; undefined for x < 0."""

    t: float
    m: float

    kind: ClassVar[str] = "flog"
    domain_min: ClassVar[float] = 0.0

    def __post_init__(self) -> None:
        _finite(self.kind, T=self.t, M=self.m)
        _check(self.kind, self.t > 0, f"T={self.t} must be > 0")
        _check(self.kind, self.m > 0, f"M={self.m} must be > 0")

    @property
    def top(self) -> float:
        """The data value mapped to 1 (T), the scale of the untransformed axis."""
        return self.t

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Transform values (float64 out; NaN below 0, -inf at 0)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return flowutils.transforms.log(_as_float64(x), None, t=self.t, m=self.m)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """Map transformed values back to data values."""
        with np.errstate(over="ignore"):
            return flowutils.transforms.log_inverse(_as_float64(y), None, t=self.t, m=self.m)


@dataclass(frozen=True)
class Fasinh:
    """fasinh(x, T, M, A): inverse hyperbolic sine, T onto 1, M + A decades on the scale."""

    t: float
    m: float
    a: float

    kind: ClassVar[str] = "fasinh"
    domain_min: ClassVar[float] = -math.inf

    def __post_init__(self) -> None:
        _finite(self.kind, T=self.t, M=self.m, A=self.a)
        _check(self.kind, self.t > 0, f"T={self.t} must be > 0")
        _check(self.kind, self.m > 0, f"M={self.m} must be > 0")
        _check(self.kind, 0 <= self.a <= self.m, f"A={self.a} must be between 0 and M={self.m}")

    @property
    def top(self) -> float:
        """The data value mapped to 1 (T), the scale of the untransformed axis."""
        return self.t

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Transform values (float64 out)."""
        return flowutils.transforms.asinh(_as_float64(x), None, t=self.t, m=self.m, a=self.a)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """Map transformed values back to data values."""
        with np.errstate(over="ignore"):
            return flowutils.transforms.asinh_inverse(
                _as_float64(y), None, t=self.t, m=self.m, a=self.a
            )


def _check_biexponential(kind: str, t: float, w: float, m: float, a: float, *, w_min_open: bool):
    _finite(kind, T=t, W=w, M=m, A=a)
    _check(kind, t > 0, f"T={t} must be > 0")
    _check(kind, m > 0, f"M={m} must be > 0")
    low_ok = w > 0 if w_min_open else w >= 0
    _check(
        kind,
        low_ok and w <= m / 2,
        f"W={w} must be {'>' if w_min_open else '>='} 0 and <= M/2={m / 2}",
    )
    _check(kind, -w <= a <= m - 2 * w, f"A={a} must be between -W={-w} and M - 2W={m - 2 * w}")


@dataclass(frozen=True)
class Logicle:
    """logicle(x, T, W, M, A) (Parks & Moore), computed by flowutils' C implementation."""

    t: float
    w: float
    m: float
    a: float

    kind: ClassVar[str] = "logicle"
    domain_min: ClassVar[float] = -math.inf

    def __post_init__(self) -> None:
        _check_biexponential(self.kind, self.t, self.w, self.m, self.a, w_min_open=False)

    @property
    def top(self) -> float:
        """The data value mapped to 1 (T), the scale of the untransformed axis."""
        return self.t

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Transform values (float64 out; NaN and +-inf pass through)."""
        x = _as_float64(x)
        y = flowutils.transforms.logicle(x, None, t=self.t, m=self.m, w=self.w, a=self.a)
        return _solve_unconverged(x, _keep_non_finite(x, y), self.inverse)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """Map transformed values back to data values."""
        y = _as_float64(y)
        x = flowutils.transforms.logicle_inverse(y, None, t=self.t, m=self.m, w=self.w, a=self.a)
        return _keep_non_finite(y, x)


@dataclass(frozen=True)
class Hyperlog:
    """hyperlog(x, T, W, M, A) (Bagwell), computed by flowutils' C implementation."""

    t: float
    w: float
    m: float
    a: float

    kind: ClassVar[str] = "hyperlog"
    domain_min: ClassVar[float] = -math.inf

    def __post_init__(self) -> None:
        _check_biexponential(self.kind, self.t, self.w, self.m, self.a, w_min_open=True)

    @property
    def top(self) -> float:
        """The data value mapped to 1 (T), the scale of the untransformed axis."""
        return self.t

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Transform values (float64 out; NaN and +-inf pass through)."""
        x = _as_float64(x)
        y = flowutils.transforms.hyperlog(x, None, t=self.t, m=self.m, w=self.w, a=self.a)
        return _solve_unconverged(x, _keep_non_finite(x, y), self.inverse)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """Map transformed values back to data values."""
        y = _as_float64(y)
        x = flowutils.transforms.hyperlog_inverse(y, None, t=self.t, m=self.m, w=self.w, a=self.a)
        return _keep_non_finite(y, x)


@dataclass(frozen=True)
class Fratio:
    """fratio(x, y, A, B, C) = A * (x - B) / (y - C) over two named channels."""

    numerator: str
    denominator: str
    a: float
    b: float
    c: float

    kind: ClassVar[str] = "fratio"

    def __post_init__(self) -> None:
        _finite(self.kind, A=self.a, B=self.b, C=self.c)
        _check(
            self.kind,
            bool(self.numerator) and bool(self.denominator),
            "needs a numerator and a denominator channel",
        )

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Ratio of column 0 over column 1 of an (n, 2) array (float64 out; inf/NaN at y = C)."""
        x = _as_float64(x)
        if x.ndim != 2 or x.shape[1] != 2:
            raise GatingError(f"{self.kind} transformation", f"needs (n, 2) values, got {x.shape}")
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.a * ((x[:, 0] - self.b) / (x[:, 1] - self.c))


@dataclass(frozen=True)
class FlowJoLog:
    """FlowJo 10's log: log10(max(x, offset) / offset) / decades (values below the offset
    are clipped to it, so they land on 0)."""

    offset: float
    decades: float

    kind: ClassVar[str] = "flowjo-log"
    domain_min: ClassVar[float] = -math.inf

    def __post_init__(self) -> None:
        _finite(self.kind, offset=self.offset, decades=self.decades)
        _check(self.kind, self.offset > 0, f"offset={self.offset} must be > 0")
        _check(self.kind, self.decades > 0, f"decades={self.decades} must be > 0")

    @property
    def top(self) -> float:
        """The data value mapped to 1."""
        return self.offset * 10**self.decades

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Transform values (float64 out; NaN stays NaN)."""
        x = _as_float64(x)
        with np.errstate(invalid="ignore"):
            clipped = np.where(x < self.offset, self.offset, x)
        return np.log10(clipped / self.offset) / self.decades

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """Data values of transformed ones; -inf at and below 0, where every value below the
        offset lands."""
        y = _as_float64(y)
        with np.errstate(over="ignore", invalid="ignore"):
            x = self.offset * 10 ** (y * self.decades)
            return np.where(y <= 0, -np.inf, x)


@dataclass(frozen=True)
class FlowJoBiex:
    """FlowJo 10's biex (its default fluorescence scale): FlowJo's lookup table of 4096
    channels, interpolated, as FlowKit's ``WSPBiexTransform`` computes it (the scale runs
    from 0 to 4096; values beyond the table's ends are clamped to them)."""

    negative: float
    width: float
    positive: float
    max_value: float

    kind: ClassVar[str] = "flowjo-biex"
    domain_min: ClassVar[float] = -math.inf

    def __post_init__(self) -> None:
        _finite(
            self.kind,
            neg=self.negative,
            width=self.width,
            pos=self.positive,
            maxRange=self.max_value,
        )
        _check(self.kind, self.width < 0, f"width={self.width} must be < 0 (FlowJo's basis)")
        _check(self.kind, self.positive > 0, f"pos={self.positive} must be > 0")
        _check(self.kind, self.max_value > 0, f"maxRange={self.max_value} must be > 0")
        _check(self.kind, self.negative >= 0, f"neg={self.negative} must be >= 0")

    @property
    def top(self) -> float:
        """The data value mapped to the top of the scale."""
        return self.max_value

    @cached_property
    def _flowkit(self):
        from flowkit import transforms as fkt

        return fkt.WSPBiexTransform(self.negative, self.width, self.positive, self.max_value)

    @cached_property
    def _ends(self) -> tuple[float, float]:
        low, high = self._flowkit.inverse(np.array([-1.0, 1e9]))
        return float(self._flowkit.apply(np.array([low]))[0]), float(
            self._flowkit.apply(np.array([high]))[0]
        )

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Transform values (float64 out; NaN stays NaN)."""
        return np.asarray(self._flowkit.apply(_as_float64(x)), dtype=np.float64)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """Data values of transformed ones; -inf/+inf beyond the table's ends."""
        y = _as_float64(y)
        low, high = self._ends
        x = np.asarray(self._flowkit.inverse(y), dtype=np.float64)
        with np.errstate(invalid="ignore"):
            return np.where(y <= low, -np.inf, np.where(y > high, np.inf, x))


@dataclass(frozen=True)
class TableScale:
    """A display scale given as a table: ``values[i]`` is the data value at channel i (FlowJo
    9's calibration tables), interpolated linearly; values beyond the table's ends land on
    its first or last channel."""

    values: tuple[float, ...]

    kind: ClassVar[str] = "table"
    domain_min: ClassVar[float] = -math.inf

    def __post_init__(self) -> None:
        values = tuple(float(v) for v in self.values)
        _check(self.kind, len(values) >= 2, "needs at least two entries")
        _check(
            self.kind,
            all(math.isfinite(v) for v in values) and bool(np.all(np.diff(values) > 0)),
            "entries must be finite and increasing",
        )
        object.__setattr__(self, "values", values)

    @property
    def top(self) -> float:
        """The data value at the last channel."""
        return self.values[-1]

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Channels of data values (float64 out; NaN stays NaN)."""
        table = np.asarray(self.values)
        return np.interp(_as_float64(x), table, np.arange(table.size, dtype=np.float64))

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """Data values of channels; -inf/+inf beyond the table's ends."""
        table = np.asarray(self.values)
        y = _as_float64(y)
        x = np.interp(y, np.arange(table.size, dtype=np.float64), table)
        with np.errstate(invalid="ignore"):
            return np.where(y <= 0, -np.inf, np.where(y > table.size - 1, np.inf, x))


ScaleTransform = Flin | Flog | Fasinh | Logicle | Hyperlog | FlowJoLog | FlowJoBiex | TableScale
"""A one-column, monotone increasing transformation."""

Transform = ScaleTransform | Fratio
"""Any transformation: Gating-ML 2.0's and FlowJo's."""

SCALE_TRANSFORMS: tuple[type, ...] = (
    Flin,
    Flog,
    Fasinh,
    Logicle,
    Hyperlog,
    FlowJoLog,
    FlowJoBiex,
    TableScale,
)
