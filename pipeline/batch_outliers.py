"""A batch's cuts checked against each other once the batch is gated: a cut far from the same
tube's same cut on the batch's other samples is flagged for review with its evidence
(``batch_outlier:<cut> (value; median of N others, spread, distance)``, see
:mod:`gating.deviation`), on the sample's stored gating like its other flags."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from gating.cuts import CUT_METHODS
from gating.deviation import DeviationSettings, cut_deviations
from pipeline.store import Store

if TYPE_CHECKING:
    from pipeline.batch import GateWork

PLACED_CUTS = frozenset(CUT_METHODS) - {"fixed"}
"""Cut methods that place from the data (a fixed or fallen-back cut is not compared)."""


def flag_batch_outliers(
    store: Store,
    works: Sequence[GateWork],
    settings: DeviationSettings | None = None,
) -> list[GateWork]:
    """Compare each gated sample's placed cuts with the same template's samples in ``works``,
    store a flag on every far one, and return the works with their flags added."""
    by_template: dict[str, dict[int, dict[str, float]]] = {}
    for work in works:
        if work.error or work.worker_died:
            continue
        by_template.setdefault(work.template_sha256, {})[work.sample_id] = {
            g.gate: g.value
            for g in work.gates
            if g.method in PLACED_CUTS and not g.fallback and g.value is not None
        }
    raised: dict[tuple[str, int], list[str]] = {}
    for template_sha256, decisions in by_template.items():
        for deviation in cut_deviations(decisions, settings or DeviationSettings()):
            raised.setdefault((template_sha256, deviation.sample), []).append(deviation.flag)
    for (template_sha256, sample_id), flags in raised.items():
        store.add_flags(sample_id, template_sha256, flags)
    return [
        replace(w, flags=(*w.flags, *raised[(w.template_sha256, w.sample_id)]))
        if (w.template_sha256, w.sample_id) in raised
        else w
        for w in works
    ]
