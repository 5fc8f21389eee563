"""Automated gating: every gate of a template placed from the sample's own data.

``place`` walks the template top-down (:class:`cartflow.gating.placer.Placer`). For each population
it first places the cuts it needs (from the events of the population the template names, via
:mod:`cartflow.gating.placement`), then compiles the population into Gating-ML-shaped gates and
evaluates them at once, so the next cut can look at the population just made. The result is
the placed :class:`GateSet` (which :func:`cartflow.gating.engine.evaluate` re-applies exactly, and
which exports to Gating-ML), the masks and counts, and every decision with its evidence.

Gates other than phenotypes and booleans are registered placement methods (``METHODS``,
:mod:`cartflow.gating.method`): stable flow (time bins), singlets (height against area, or width),
beads (bright in every detector) in :mod:`cartflow.gating.qc_gates`; cells (ellipses of scatter
clusters fitted from template anchors, started again from the data when they do not fit)
and lymphocytes (low SSC, bright CD45, on the lymphocyte side of the dead cells) in
:mod:`cartflow.gating.scatter_gates`; drawn polygons, rectangles, ellipses, quadrants and
data-placed clusters in :mod:`cartflow.gating.gates_2d`; a phenotype's robust core is ``CORE``.
Estimation always works on subsamples (``ESTIMATE_LIMIT``); gates are then evaluated on every
event. Bad input gives flags, not exceptions: channels without signal (``degenerate_channel:``),
non-finite events, cuts that fell back to the template default (``threshold_fallback:``),
implausible cuts and gates (``implausible:``) and populations that could not be gated
(``not_gated:``).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from cartflow.gating import gates_2d, qc_gates, scatter_gates
from cartflow.gating.cuts import place_threshold
from cartflow.gating.engine import Evaluator, GatingResult
from cartflow.gating.errors import GatingError
from cartflow.gating.method import Method, Parent, Placement
from cartflow.gating.model import GateSet
from cartflow.gating.options import GATE_OPTIONS, CoreOptions
from cartflow.gating.placement import ThresholdDecision
from cartflow.gating.placer import FLUOR, ChannelMap, Placer, scales_for, transforms_for
from cartflow.gating.template import Template

METHODS: Mapping[str, Method] = {
    name: Method(name, GATE_OPTIONS[name], place)
    for name, place in (
        ("stable_flow", qc_gates.stable_flow),
        ("singlets", qc_gates.singlets),
        ("beads", qc_gates.beads),
        ("cells", scatter_gates.cells),
        ("lymphocytes", scatter_gates.lymphocytes),
        ("polygon", gates_2d.polygon),
        ("rectangle", gates_2d.rectangle),
        ("ellipse", gates_2d.ellipse),
        ("quadrant", gates_2d.quadrant),
        ("cluster", gates_2d.cluster),
    )
}
"""The placement method of each gate a template may name."""
CORE = Method("core", CoreOptions, scatter_gates.core_ellipses)
"""Keeps a phenotype population to its robust core (``core: [CD45, CD3]``)."""


@dataclass(frozen=True)
class PlacedGating:
    """What was decided for one sample: gates, cuts with evidence, and what was left out."""

    template_id: str
    template_sha256: str
    gate_set: GateSet
    populations: tuple[str, ...]
    parents: Mapping[str, str | None]
    decisions: Mapping[str, ThresholdDecision]
    skipped: Mapping[str, str] = field(default_factory=dict)
    approximations: Mapping[str, str] = field(default_factory=dict)
    flags: tuple[str, ...] = ()

    @property
    def cuts(self) -> dict[str, float]:
        """Every placed cut by name (``CD3``, ``CD27.bright``, ``beads``, …)."""
        return {name: d.value for name, d in self.decisions.items()}


def _non_finite_events(events: np.ndarray) -> int:
    """Events with a value that is not finite (one event-long mask, not one per value)."""
    events = np.asarray(events)
    if events.ndim != 2:
        return int(np.count_nonzero(~np.isfinite(events)))
    bad = np.zeros(events.shape[0], dtype=bool)
    for j in range(events.shape[1]):
        bad |= ~np.isfinite(events[:, j])
    return int(np.count_nonzero(bad))


def place_cut(
    template: Template, name: str, values: np.ndarray, negatives: np.ndarray | None = None
) -> ThresholdDecision:
    """Place one of a template's cuts (``CAR``, ``CD27.bright``) on the given transformed
    values, e.g. the events of several samples pooled as openCyto's groupBy does."""
    scale = transforms_for(template)[FLUOR]
    return place_threshold(template.cut(name), values, negatives, scale)


def place_pooled(
    template: Template,
    population: str,
    events: np.ndarray,
    channel_names: Sequence[str],
    channels: ChannelMap,
    spill: tuple[Sequence[str], np.ndarray] | None = None,
    inputs: Mapping[str, object] | None = None,
) -> Placement:
    """Run one gate's method once on given parent events, e.g. those of several samples
    pooled (openCyto's groupBy); ``place(..., fixed_cuts={population: placement})`` then
    puts its gates under each sample's own parent. ``inputs``: what the method's declared
    input populations fitted (pooled the same way)."""
    spec = template.population(population)
    if spec.gate is None:
        raise GatingError(f"template {template.id}", f"{population!r} is not a gate")
    evaluator = Evaluator(transforms_for(template), {}, events, channel_names, spill)
    parent = Parent(
        spec.id, None, evaluator, channels, frozenset(), {}, inputs or {},
        scales_for(template), frozenset(channel_names),
    )  # fmt: skip
    return METHODS[spec.gate].place(parent, spec.options)


def place(
    template: Template,
    events: np.ndarray,
    channel_names: Sequence[str],
    channels: ChannelMap,
    spill: tuple[Sequence[str], np.ndarray] | None = None,
    fixed_cuts: Mapping[str, float | ThresholdDecision | Placement] | None = None,
) -> tuple[PlacedGating, GatingResult]:
    """Place and evaluate every population of a template on one sample.

    ``fixed_cuts`` (by cut name, e.g. ``{"CAR": 0.31}``, or a decision with its evidence)
    skip estimation for those cuts, e.g. when one threshold was pooled over a patient's
    timepoints (:func:`place_cut`); a gate's population id with a placement
    (:func:`place_pooled`) uses that placement's gates.

    Runs with one BLAS thread: its matrices are small (2 x 2 covariances, blocks of the
    compensation multiply), where waking a second thread costs more than it saves (the
    values do not depend on the thread count).
    """
    placed, result, _ = place_evaluated(
        template, events, channel_names, channels, spill, fixed_cuts
    )
    return placed, result


def place_evaluated(
    template: Template,
    events: np.ndarray,
    channel_names: Sequence[str],
    channels: ChannelMap,
    spill: tuple[Sequence[str], np.ndarray] | None = None,
    fixed_cuts: Mapping[str, float | ThresholdDecision | Placement] | None = None,
) -> tuple[PlacedGating, GatingResult, Evaluator]:
    """:func:`place`, with the evaluator that gated the sample (its compensated columns and
    each cut's sides kept, for drawing the sample without computing them again)."""
    with _thread_pools().limit(limits=1):
        return _place(template, events, channel_names, channels, spill, fixed_cuts)


_POOLS: dict = {}


def _thread_pools():
    """The process's BLAS/OpenMP thread pools. Finding them takes milliseconds (threadpoolctl
    scans every loaded library), so they are found again only after more modules were
    imported (a new extension module may bring its own pool)."""
    from threadpoolctl import ThreadpoolController

    if _POOLS.get("modules") != len(sys.modules):
        _POOLS["controller"] = ThreadpoolController()
        _POOLS["modules"] = len(sys.modules)
    return _POOLS["controller"]


def _place(
    template: Template,
    events: np.ndarray,
    channel_names: Sequence[str],
    channels: ChannelMap,
    spill: tuple[Sequence[str], np.ndarray] | None,
    fixed_cuts: Mapping[str, float | ThresholdDecision | Placement] | None,
) -> tuple[PlacedGating, GatingResult, Evaluator]:
    flags = []
    bad = _non_finite_events(events)
    if bad:
        flags.append(f"non_finite_events:{bad}")
    evaluator = Evaluator(transforms_for(template), {}, events, channel_names, spill)
    placer = Placer(
        template, evaluator, channels, fixed_cuts or {}, METHODS, CORE, tuple(channel_names)
    )
    placer.run()
    placed = PlacedGating(
        template_id=template.id,
        template_sha256=template.sha256,
        gate_set=evaluator.gate_set,
        populations=tuple(placer.populations),
        parents=dict(placer.parents),
        decisions=dict(placer.decisions),
        skipped=dict(placer.skipped),
        approximations=dict(placer.approximations),
        flags=(*flags, *placer.flags),
    )
    return placed, evaluator.result(), evaluator
