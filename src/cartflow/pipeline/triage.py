"""Triage of QC flags and the review queue: what a cytometrist has to look at.

Every flag the pipeline raises (gating flags in the store, count flags in the timepoint
table, checks at the kinetic peak, quarantined files) has a kind and a severity in one table,
:data:`FLAG_KINDS`; the README's flag table is checked against it by a test. Flags whose
prefix is not in the table need review. The queue lists the items of severity "needs review"
of each sample's current state; a reviewer's acceptance of a sample (of its gating then
current) clears its items until the sample is gated again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from cartflow.gating.template import Template
from cartflow.pipeline.records import StoredSample

Severity = Literal["info", "warning", "needs review"]
INFO: Severity = "info"
WARNING: Severity = "warning"
NEEDS_REVIEW: Severity = "needs review"
SEVERITY_ORDER = {NEEDS_REVIEW: 0, WARNING: 1, INFO: 2}


@dataclass(frozen=True)
class FlagKind:
    """What a flag (by prefix, before ``:``) is about and how much it matters.

    ``unreported`` is the severity when the flag's cut or gate defines no reported
    population (see :func:`defining_gates`); None when that does not lower it."""

    prefix: str
    kind: str
    severity: Severity
    meaning: str
    unreported: Severity | None = None


FLAG_KINDS: tuple[FlagKind, ...] = (
    FlagKind(
        "unstable_flow",
        "acquisition",
        INFO,
        "time bins of unstable flow were found and their events removed before gating",
    ),
    FlagKind(
        "non_finite_events",
        "acquisition",
        WARNING,
        "events with a value that is not finite (they fall outside every gate)",
    ),
    FlagKind(
        "no_spillover_matrix",
        "compensation",
        WARNING,
        "the file carries no spillover matrix: gated uncompensated",
    ),
    FlagKind(
        "spillover_",
        "compensation",
        INFO,
        "compensated with a lab's matrix instead of the file's own",
    ),
    FlagKind(
        "degenerate_channel",
        "channel",
        NEEDS_REVIEW,
        "a channel carries no signal; cuts on it fall back to the template default",
    ),
    FlagKind(
        "batch_outlier",
        "cut",
        NEEDS_REVIEW,
        "a cut far from the same cut of the batch's other samples (value, median, spread)",
    ),
    FlagKind(
        "threshold_fallback",
        "cut",
        NEEDS_REVIEW,
        "a cut (or shape gate) fell back to the template default: the data gave no "
        "clear place for it",
        unreported=WARNING,
    ),
    FlagKind("implausible", "cut", NEEDS_REVIEW, "a cut or count outside what is plausible"),
    FlagKind("not_gated", "gate", NEEDS_REVIEW, "a population could not be gated"),
    FlagKind("gating_failed", "gate", NEEDS_REVIEW, "the file could not be gated at all"),
    FlagKind(
        "override", "correction", INFO, "a cut or gates set by hand (`cartflow override --list`)"
    ),
    FlagKind(
        "override_unfit",
        "correction",
        NEEDS_REVIEW,
        "a hand-set cut or gate set no longer fits the sample's template",
    ),
    FlagKind(
        "missing_beads_per_tube",
        "beads",
        NEEDS_REVIEW,
        "no beads per tube for a bead tube: no absolute count",
    ),
    FlagKind(
        "missing_blood_volume",
        "beads",
        NEEDS_REVIEW,
        "no blood volume for a bead tube: no absolute count",
    ),
    FlagKind(
        "implausible_beads_per_tube", "beads", NEEDS_REVIEW, "beads per tube negative or infinite"
    ),
    FlagKind(
        "implausible_blood_volume", "beads", NEEDS_REVIEW, "blood volume negative or infinite"
    ),
    FlagKind("no_bead_events", "beads", NEEDS_REVIEW, "no bead events in a bead tube"),
    FlagKind(
        "too_few_bead_events", "beads", NEEDS_REVIEW, "too few bead events for a precise count"
    ),
    FlagKind(
        "bead_events_exceed_beads_per_tube",
        "beads",
        NEEDS_REVIEW,
        "more bead events than beads in the tube: bead count or gate wrong",
    ),
    FlagKind(
        "missing_haematology_count",
        "count",
        WARNING,
        "no haematology count for a dual-platform count",
    ),
    FlagKind(
        "implausible_haematology_count",
        "count",
        NEEDS_REVIEW,
        "haematology count negative or infinite",
    ),
    FlagKind(
        "empty_reference_population",
        "count",
        WARNING,
        "the dual-platform reference population holds no events",
    ),
    FlagKind(
        "no_counting_reference",
        "count",
        INFO,
        "a tube without beads and no haematology count: percentages only",
    ),
    FlagKind("below_lod", "count", INFO, "a count below the limit of detection"),
    FlagKind("below_lloq", "count", INFO, "a count below the lower limit of quantification"),
    FlagKind(
        "not_evaluable_at_peak",
        "subset",
        NEEDS_REVIEW,
        "a percentage that feeds the kinetics is not evaluable at the peak: its parent "
        "holds fewer events than the LLOQ",
    ),
    FlagKind(
        "few_events_at_peak",
        "subset",
        NEEDS_REVIEW,
        "a percentage that feeds the kinetics rests on fewer events than the LOD at the peak",
    ),
    FlagKind("quarantined", "file", NEEDS_REVIEW, "a file was refused at ingest"),
)
"""The one table of flags: prefix, kind, severity, meaning (README's table follows it)."""

UNKNOWN = FlagKind("", "unknown", NEEDS_REVIEW, "a flag this table does not know")


def flag_kind(flag: str) -> FlagKind:
    """The table entry of a flag: the longest prefix that matches (unknown: needs review)."""
    name = flag.split(":", 1)[0].strip()
    found = [
        k
        for k in FLAG_KINDS
        if name == k.prefix or (k.prefix.endswith("_") and name.startswith(k.prefix))
    ]
    return max(found, key=lambda k: len(k.prefix), default=UNKNOWN)


def severity(flag: str, reported_gates: Iterable[str] | None = None) -> Severity:
    """A flag's severity; a flag naming a cut or gate outside ``reported_gates`` (when
    given) takes the table's lower ``unreported`` severity."""
    kind = flag_kind(flag)
    if kind.unreported is None or reported_gates is None:
        return kind.severity
    subject = flag.split(":", 1)[1].strip() if ":" in flag else ""
    return kind.severity if subject in set(reported_gates) else kind.unreported


def flag_table_markdown() -> str:
    """The flag table as README Markdown."""
    lines = ["| flag | kind | severity | meaning |", "| --- | --- | --- | --- |"]
    for k in FLAG_KINDS:
        name = f"`{k.prefix}…`" if k.prefix.endswith("_") else f"`{k.prefix}`"
        level = k.severity + (
            f" ({k.unreported} when it defines no reported population)" if k.unreported else ""
        )
        lines.append(f"| {name} | {k.kind} | {level} | {k.meaning} |")
    return "\n".join(lines)


REPORTED_POPULATIONS: Mapping[str, tuple[str, ...]] = {
    "memory": ("CAR", "CAR_CD8", "CAR_CD8_SCM", "CARneg_CD8_SCM", "beads"),
    "bcell": ("B", "beads"),
}
"""Populations whose numbers the kinetics report (and the counting beads), by tube."""


def defining_gates(template: Template, populations: Iterable[str]) -> frozenset[str]:
    """The cuts (``CD27``, ``CD27.bright``) and gates (``beads``, ``cells``) that define the
    given populations: those of each one and of its ancestors."""
    specs = {s.id: s for s in template.populations}
    found: set[str] = set()
    for population in populations:
        spec = specs.get(population)
        while spec is not None:
            found.add(spec.id)
            for condition in spec.phenotype:
                found.add(condition.marker)
                if condition.level in ("++", "dim"):
                    found.add(f"{condition.marker}.bright")
            spec = specs.get(spec.parent) if spec.parent else None
    return frozenset(found)


@dataclass(frozen=True)
class ReviewItem:
    """One thing a human has to look at, with the sample it concerns and why."""

    severity: Severity
    kind: str
    flag: str
    reason: str
    patient: str = ""
    timepoint: str = ""
    tube: str = ""
    file: str = ""
    sample_id: int | None = None
    sha256: str | None = None


def reported_gates(tube: str, config=None) -> frozenset[str] | None:
    """The cuts and gates defining a tube's reported populations (None: no template), with
    the lab configuration's template when given."""
    from cartflow.io.errors import CartflowError
    from cartflow.pipeline.gate import template_for

    try:
        template = config.template(tube) if config is not None else template_for(tube)
    except CartflowError:
        return None
    return defining_gates(template, REPORTED_POPULATIONS.get(tube, ()))


def _gating_items(
    samples: Mapping[int, StoredSample],
    flags: Mapping[int, list[str]],
    fallbacks: Mapping[tuple[int, str], str],
    config=None,
):
    reported_of = {}
    for sample_id, raised in flags.items():
        sample = samples.get(sample_id)
        if sample is None:
            continue
        tube = sample.tube
        if tube not in reported_of:
            reported_of[tube] = reported_gates(tube, config)
        reported = reported_of[tube]
        for flag in raised:
            level = severity(flag, reported)
            kind = flag_kind(flag)
            why = kind.meaning
            if kind.unreported and level == kind.severity:
                why += " (it defines a reported population)"
            subject = flag.split(":", 1)[-1].strip()
            if (sample_id, subject) in fallbacks:
                why += f"; {fallbacks[sample_id, subject]}"
            yield _item(sample, level, kind.kind, flag, why)


def _item(sample: StoredSample, level: Severity, kind: str, flag: str, reason: str) -> ReviewItem:
    return ReviewItem(
        level,
        kind,
        flag,
        reason,
        sample.patient,
        sample.timepoint,
        sample.tube,
        sample.file,
        sample.sample_id,
        sample.sha256,
    )


def _count_items(samples: Mapping[int, StoredSample], timepoints: pd.DataFrame):
    if timepoints is None or timepoints.empty:
        return
    for sample_id, rows in timepoints.groupby("sample_id", sort=False):
        sample = samples.get(int(sample_id))
        if sample is None:
            continue
        raised = dict.fromkeys(
            f for text in rows["count_flags"].dropna() for f in str(text).split(";") if f
        )
        for flag in raised:
            kind = flag_kind(flag)
            yield _item(sample, kind.severity, kind.kind, flag, kind.meaning)


def peak_items(
    samples: Mapping[int, StoredSample],
    timepoints: pd.DataFrame,
    peaks: Mapping[str, int],
    lod_events: int,
    lloq_events: int,
):
    """Percentages that feed the kinetics at each patient's peak day that are not evaluable
    (parent under the LLOQ) or rest on fewer events than the LOD."""
    from cartflow.pipeline.patient_variables import DEFAULT_VARIABLES

    if timepoints is None or timepoints.empty:
        return
    at_peak = [v for v in DEFAULT_VARIABLES if v.measure == "percent" and v.when == "peak"]
    for metric, tube, population in ((v.name, v.tube, v.population) for v in at_peak):
        wanted = timepoints[(timepoints.tube == tube) & (timepoints.population == population)]
        for row in wanted.itertuples(index=False):
            if peaks.get(row.patient) != row.nominal_day:
                continue
            sample = samples.get(int(row.sample_id))
            parent = int(row.parent_events or 0) if not pd.isna(row.parent_events) else 0
            share = f"{population} % of {row.parent} at the peak (day {row.nominal_day}, {metric})"
            if not bool(row.percent_evaluable):
                flag = f"not_evaluable_at_peak:{population}"
                why = f"{share}: not evaluable, {parent} parent events < LLOQ {lloq_events}"
            elif int(row.events) < lod_events:
                flag = f"few_events_at_peak:{population}"
                why = f"{share}: rests on {int(row.events)} of {parent} events (< LOD {lod_events})"
            else:
                continue
            if sample is not None:
                yield _item(sample, NEEDS_REVIEW, "subset", flag, why)


@dataclass(frozen=True)
class StoreState:
    """What triage reads of the store's current state (read once by the caller)."""

    samples: Mapping[int, StoredSample]
    excluded: frozenset[int]
    flags: Mapping[int, list[str]]
    fallbacks: Mapping[tuple[int, str], str]
    quarantined: tuple[Mapping[str, str], ...]
    accepted: Mapping[int, int]
    """Sample → the gating a reviewer accepted."""
    newest: Mapping[int, int]
    """Sample → its newest gating."""


def review_items(
    state: StoreState,
    timepoints: pd.DataFrame | None,
    peaks: Mapping[str, int] | None = None,
    lod_events: int = 20,
    lloq_events: int = 50,
    config=None,
) -> list[ReviewItem]:
    """Every flag of the store's current state as an item with its severity (quarantined
    files included), samples under an exclusion left out; ``config``: the lab configuration
    whose templates say which cuts define reported populations."""
    samples = {i: s for i, s in state.samples.items() if i not in state.excluded}
    items = [*_gating_items(samples, state.flags, state.fallbacks, config)]
    items += _count_items(samples, timepoints if timepoints is not None else pd.DataFrame())
    items += peak_items(samples, timepoints, peaks or {}, lod_events, lloq_events)
    for q in state.quarantined:
        name = q["path"].rsplit("/", 1)[-1]
        items.append(
            ReviewItem(
                NEEDS_REVIEW,
                "file",
                f"quarantined:{q['kind']}",
                q["reason"],
                file=name,
                sha256=q["sha256"],
            )
        )
    return items


def review_queue(
    state: StoreState,
    timepoints: pd.DataFrame | None,
    peaks: Mapping[str, int] | None = None,
    lod_events: int = 20,
    lloq_events: int = 50,
    patient: str | None = None,
    config=None,
) -> list[ReviewItem]:
    """What needs a human: items of severity "needs review" of samples not accepted since
    their last gating, ordered by patient, timepoint and tube."""
    queue = [
        item
        for item in review_items(state, timepoints, peaks, lod_events, lloq_events, config)
        if item.severity == NEEDS_REVIEW
        and (
            item.sample_id is None
            or state.accepted.get(item.sample_id) != state.newest.get(item.sample_id)
        )
        and (patient is None or item.patient == patient)
    ]
    return sorted(queue, key=lambda i: (i.patient, i.timepoint, i.tube, i.file, i.flag))
