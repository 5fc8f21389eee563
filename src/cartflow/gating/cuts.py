"""Cut placement methods on one transformed marker: a registry, tried in a cut's order.

Each method takes the values of the population the cut is placed on, the values of its
internal negative population (``tail``), the cut's spec and the fluorescence scale, and
returns a :class:`~cartflow.gating.placement.ThresholdDecision` with its evidence. ``fixed`` is the
template's own number.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from cartflow.gating.method import fixed_decision
from cartflow.gating.placement import (
    ThresholdDecision,
    balance_threshold,
    mixture_threshold,
    silverman_bandwidth,
    tail_threshold,
    valley_threshold,
)
from cartflow.gating.template import CutSpec
from cartflow.gating.transforms import Logicle

CutMethod = Callable[
    [np.ndarray, "np.ndarray | None", CutSpec, "Logicle | None"], ThresholdDecision
]
"""(values, internal negatives, the cut, the fluorescence scale) -> the placed cut."""


def _same(values: np.ndarray) -> np.ndarray:
    return values


def _valley(values, negatives, spec: CutSpec, scale) -> ThresholdDecision:
    bandwidth = None
    finite = values[np.isfinite(values)]
    if spec.smoothing != 1.0 and finite.size > 1:
        bandwidth = spec.smoothing * silverman_bandwidth(finite)
    return valley_threshold(values, spec.bounds, side=spec.valley_side, bandwidth=bandwidth)


def _mixture(values, negatives, spec: CutSpec, scale) -> ThresholdDecision:
    return mixture_threshold(values, spec.bounds, spec.components)


def _balance(values, negatives, spec: CutSpec, scale) -> ThresholdDecision:
    to_linear, to_scale = (scale.inverse, scale.apply) if scale else (_same, _same)
    return balance_threshold(
        values,
        spec.bounds,
        to_linear,
        to_scale,
        spec.components,
        spec.floor_sd,
        min_positives=spec.min_positives,
        hidden_share=spec.hidden_share,
    )


def _tail(values, negatives, spec: CutSpec, scale) -> ThresholdDecision:
    return tail_threshold(
        negatives if negatives is not None else values, spec.bounds, spec.quantile, spec.margin
    )


def _fixed(values, negatives, spec: CutSpec, scale) -> ThresholdDecision:
    return fixed_decision(spec.bounds.default, "template", values.size)


CUT_METHODS: Mapping[str, CutMethod] = {
    "valley": _valley,
    "mixture": _mixture,
    "balance": _balance,
    "tail": _tail,
    "fixed": _fixed,
}
"""Every cut method a template may name."""


def place_threshold(
    spec: CutSpec,
    values: np.ndarray,
    negatives: np.ndarray | None,
    scale: Logicle | None = None,
) -> ThresholdDecision:
    """Try each method of a cut in turn; the first that is not a fallback wins."""
    decision = None
    finite = values[np.isfinite(values)]
    if finite.size > 1 and np.ptp(finite) == 0:  # one event is too few, not a dead channel
        return ThresholdDecision(
            spec.bounds.default, spec.methods[0], True, "channel carries no signal", values.size
        )
    tried = []
    for method in spec.methods:
        decision = CUT_METHODS[method](values, negatives, spec, scale)
        if method == "fixed":
            return decision
        if not decision.fallback:
            if tried:
                decision.evidence["earlier_attempts"] = tried
            return decision
        tried.append(f"{method}: {decision.reason}")
    assert decision is not None
    reason = "; ".join(tried)
    return ThresholdDecision(
        decision.value, decision.method, True, reason, decision.events, decision.evidence
    )
