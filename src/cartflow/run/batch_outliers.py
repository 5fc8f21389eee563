"""A batch's cuts checked against each other once the batch is gated: a cut far from the same
tube's same cut, placed the same way, on the batch's other samples is flagged for review with
its evidence (``batch_outlier:<cut> (value; median of N others, spread, distance)``, see
:mod:`cartflow.gating.deviation`), on the sample's stored gating like its other flags.

A far cut whose move to the batch's median would change its smaller side by no more than
that count's Poisson noise (judged on the density it was placed on, where its evidence keeps
one: a cut anywhere in a wide empty gap) is not flagged. Cuts are compared within one
placement method: a valley between two populations and the
tail of one population (``balance``, ``tail``) sit apart by design, e.g. a CD19 cut where B
cells have come back against those of aplastic samples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from cartflow.gating.cuts import CUT_METHODS
from cartflow.gating.deviation import DeviationSettings, cut_deviations, harmless
from cartflow.store import Store

if TYPE_CHECKING:
    from cartflow.run.batch.work import GateWork

PLACED_CUTS = frozenset(CUT_METHODS) - {"fixed"}
"""Cut methods that place from the data (a fixed or fallen-back cut is not compared)."""


def flag_batch_outliers(
    store: Store,
    works: Sequence[GateWork],
    settings: DeviationSettings | None = None,
) -> list[GateWork]:
    """Compare each gated sample's placed cuts with the same template's samples in ``works``,
    store a flag on every far one, and return the works with their flags added."""
    groups: dict[tuple[str, str], dict[int, dict[str, float]]] = {}
    evidence: dict[tuple[str, int, str], dict] = {}
    for work in works:
        if work.error or work.worker_died:
            continue
        for g in work.gates:
            if g.method in PLACED_CUTS and not g.fallback and g.value is not None:
                group = groups.setdefault((work.template_sha256, g.method), {})
                group.setdefault(work.sample_id, {})[g.gate] = g.value
                evidence[(work.template_sha256, work.sample_id, g.gate)] = g.evidence
    raised: dict[tuple[str, int], list[str]] = {}
    for (template_sha256, _method), decisions in groups.items():
        for deviation in cut_deviations(decisions, settings or DeviationSettings()):
            own = evidence[(template_sha256, deviation.sample, deviation.cut)]
            if "density" in own and harmless(
                own.get("grid", ()), own["density"], int(own.get("events") or 0),
                deviation.value, deviation.median,
            ):  # fmt: skip
                continue
            raised.setdefault((template_sha256, deviation.sample), []).append(deviation.flag)
    for (template_sha256, sample_id), flags in raised.items():
        store.add_flags(sample_id, template_sha256, flags)
    return [
        replace(w, flags=(*w.flags, *raised[(w.template_sha256, w.sample_id)]))
        if (w.template_sha256, w.sample_id) in raised
        else w
        for w in works
    ]
