"""Absolute counts (cells/µL) and percentages with honest uncertainty.

Single-platform beads: cells/µL = events / bead events × beads per tube / µL blood.
Dual-platform: cells/µL = events / reference events × the haematology count of the reference.
Intervals are exact: the bead-based ratio of two Poisson counts uses the conditional binomial
(Clopper-Pearson) interval, which reduces to the exact Poisson interval of the cell count when
beads are plentiful; percentages use Wilson or Clopper-Pearson intervals. A count below the
limit of detection cannot be told apart from the assay's background (a few events of the
negative populations' tails always cross a positive cut), so by default its interval starts at
0 and keeps the exact upper end (CLSI EP17's reading of a result below the LoD); the value
itself is reported and flagged, never zeroed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from scipy import stats

DEFAULT_LOD_EVENTS = 20
DEFAULT_LLOQ_EVENTS = 50
DEFAULT_MIN_BEAD_EVENTS = 100

Method = Literal["single-platform beads", "dual-platform"]


@dataclass(frozen=True)
class CountSettings:
    """Conventions recorded with every value (Euroflow/ICCS defaults, configurable)."""

    level: float = 0.95
    lod_events: int = DEFAULT_LOD_EVENTS
    lloq_events: int = DEFAULT_LLOQ_EVENTS
    min_bead_events: int = DEFAULT_MIN_BEAD_EVENTS
    proportion_method: Literal["wilson", "clopper-pearson"] = "wilson"
    below_lod_from_zero: bool = True


@dataclass(frozen=True)
class Concentration:
    """A population's cells/µL with its interval, detection limits, flags and inputs."""

    events: int
    cells_per_ul: float | None
    ci_low: float | None
    ci_high: float | None
    lod: float | None
    lloq: float | None
    method: Method
    inputs: dict[str, float | int | str | None]
    flags: tuple[str, ...] = ()

    @property
    def below_lod(self) -> bool:
        return "below_lod" in self.flags

    @property
    def below_lloq(self) -> bool:
        return "below_lloq" in self.flags


@dataclass(frozen=True)
class Percentage:
    """A subset as % of its parent, with a binomial interval; None when not evaluable."""

    events: int
    parent_events: int
    percent: float | None
    ci_low: float | None
    ci_high: float | None
    evaluable: bool
    flags: tuple[str, ...] = field(default_factory=tuple)


def poisson_interval(k: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Garwood) interval for a Poisson count: ½χ²(α/2; 2k) … ½χ²(1-α/2; 2k+2)."""
    alpha = 1 - level
    low = 0.0 if k == 0 else stats.chi2.ppf(alpha / 2, 2 * k) / 2
    high = stats.chi2.ppf(1 - alpha / 2, 2 * k + 2) / 2
    return float(low), float(high)


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for k successes of n."""
    alpha = 1 - level
    low = 0.0 if k == 0 else stats.beta.ppf(alpha / 2, k, n - k + 1)
    high = 1.0 if k == n else stats.beta.ppf(1 - alpha / 2, k + 1, n - k)
    return float(low), float(high)


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k successes of n."""
    z = stats.norm.ppf(1 - (1 - level) / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def poisson_ratio_interval(k: int, b: int, level: float = 0.95) -> tuple[float, float]:
    """Exact interval for the ratio of two Poisson rates λk/λb, given counts k and b > 0.

    Conditional on k + b, k is binomial with p = λk / (λk + λb); the Clopper-Pearson
    interval for p maps to the ratio as p / (1 - p).
    """
    low_p, high_p = clopper_pearson(k, k + b, level)
    high = math.inf if high_p >= 1.0 else high_p / (1 - high_p)
    return low_p / (1 - low_p), high


def _input_flag(value: float | None, name: str) -> str | None:
    """``missing_<name>`` for an absent (None, NaN or 0) input, ``implausible_<name>`` for a
    negative or infinite one, else None."""
    if value is None or value != value or value == 0:
        return f"missing_{name}"
    if value < 0 or math.isinf(value):
        return f"implausible_{name}"
    return None


def bead_concentration(
    events: int,
    bead_events: int | None,
    beads_per_tube: float | None,
    blood_volume_ul: float | None,
    settings: CountSettings = CountSettings(),
) -> Concentration:
    """Single-platform bead count; missing or implausible inputs give flags, not a number."""
    inputs = {
        "bead_events": bead_events,
        "beads_per_tube": beads_per_tube,
        "blood_volume_ul": blood_volume_ul,
    }
    flags = [
        flag
        for flag in (
            _input_flag(beads_per_tube, "beads_per_tube"),
            _input_flag(blood_volume_ul, "blood_volume"),
        )
        if flag
    ]
    if not bead_events:
        flags.append("no_bead_events")
    elif not flags and bead_events > beads_per_tube:
        flags.append("bead_events_exceed_beads_per_tube")
    elif bead_events < settings.min_bead_events:
        flags.append("too_few_bead_events")
    if flags:
        return Concentration(
            events, None, None, None, None, None, "single-platform beads", inputs, tuple(flags)
        )
    scale = beads_per_tube / blood_volume_ul  # beads per µL of blood
    ratio_low, ratio_high = poisson_ratio_interval(events, bead_events, settings.level)
    analysed_ul = blood_volume_ul * bead_events / beads_per_tube
    return _with_limits(
        events,
        events / bead_events * scale,
        ratio_low * scale,
        ratio_high * scale,
        analysed_ul,
        "single-platform beads",
        inputs,
        settings,
    )


def dual_platform_concentration(
    events: int,
    reference_events: int,
    reference_per_ul: float | None,
    settings: CountSettings = CountSettings(),
) -> Concentration:
    """cells/µL from a share of a reference population counted by a haematology analyser."""
    inputs = {"reference_events": reference_events, "reference_per_ul": reference_per_ul}
    flags = [flag for flag in (_input_flag(reference_per_ul, "haematology_count"),) if flag]
    if reference_events <= 0:
        flags.append("empty_reference_population")
    if flags:
        return Concentration(
            events, None, None, None, None, None, "dual-platform", inputs, tuple(flags)
        )
    low_p, high_p = clopper_pearson(events, reference_events, settings.level)
    analysed_ul = reference_events / reference_per_ul
    return _with_limits(
        events,
        events / reference_events * reference_per_ul,
        low_p * reference_per_ul,
        high_p * reference_per_ul,
        analysed_ul,
        "dual-platform",
        inputs,
        settings,
    )


def _with_limits(
    events: int,
    value: float,
    low: float,
    high: float,
    analysed_ul: float,
    method: Method,
    inputs: dict,
    settings: CountSettings,
) -> Concentration:
    lod = settings.lod_events / analysed_ul
    lloq = settings.lloq_events / analysed_ul
    flags = []
    interval = "exact"
    if events < settings.lod_events:
        flags.append("below_lod")
        if settings.below_lod_from_zero:
            low, interval = 0.0, "below LOD: 0 to the exact upper end"
    if events < settings.lloq_events:
        flags.append("below_lloq")
    return Concentration(
        events,
        value,
        low,
        high,
        lod,
        lloq,
        method,
        {**inputs, "analysed_volume_ul": analysed_ul, "interval": interval},
        tuple(flags),
    )


def percentage(k: int, n: int, settings: CountSettings = CountSettings()) -> Percentage:
    """k of n as a percentage; not evaluable when the parent has fewer than LLOQ events."""
    if n < settings.lloq_events or n == 0:
        return Percentage(k, n, None, None, None, False, ("parent_below_lloq",))
    interval = clopper_pearson if settings.proportion_method == "clopper-pearson" else wilson
    low, high = interval(k, n, settings.level)
    return Percentage(k, n, 100 * k / n, 100 * low, 100 * high, True)
