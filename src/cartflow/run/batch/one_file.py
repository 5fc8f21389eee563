"""Gating one file of a batch: by its tube's template (with hand-set cuts), a lab's fixed
gates, or gates set on the sample by hand; and gating a stored sample again."""

from __future__ import annotations

from pathlib import Path

from cartflow.io.errors import CartflowError
from cartflow.panels.config import LabConfig
from cartflow.pipeline.gate import LabGating, gate_file, gate_fixed, gate_records, lab_gate_records
from cartflow.run.batch.work import (
    GateWork,
    PendingFile,
    pending_gating,
    tube_template,
    write_gating,
)
from cartflow.run.review import review_exports
from cartflow.store import Store


def _gate_fixed_work(item: PendingFile, base: dict) -> GateWork:
    """Gate a file with a lab's gates set on its sample by hand (no placement), recorded as
    a tube's lab gates are, each gate's evidence naming the correction; gates that no longer
    fit the file give a failed gating flagged ``override_unfit:gates``."""
    import dataclasses
    import hashlib
    import tempfile

    fixed = item.fixed_gates
    unfit = f"override_unfit:gates={fixed.name}"
    file_name, _, group = Path(fixed.name).name.partition("#")
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / file_name
            path.write_text(fixed.content, encoding="utf-8")
            digest = hashlib.sha256(fixed.content.encode("utf-8")).hexdigest()
            lab = LabGating(Path(f"{path}#{group}") if group else path, digest)
            fcs, gate_set, result = gate_fixed(item.path, lab.load())
            populations, gates = lab_gate_records(lab, fcs, gate_set, result)
    except CartflowError as exc:
        return GateWork(**base, flags=(unfit,), error=f"{exc.kind}: {exc.problem}")
    except Exception as exc:  # a bad file must never stop the batch
        return GateWork(**base, flags=(unfit,), error=f"unexpected {type(exc).__name__}: {exc}")
    gates = [
        dataclasses.replace(
            g, evidence=g.evidence | {"source": fixed.name, "correction": fixed.correction_id}
        )
        for g in gates
    ]
    flags = (f"override:gates={fixed.name}",)
    return GateWork(**base, populations=tuple(populations), gates=tuple(gates), flags=flags)


def gate_one(item: PendingFile) -> GateWork:
    """Gate one file; any problem becomes the work's error, never an exception."""
    base = {"path": item.path, "sha256": item.sha256, "sample_id": item.sample_id,
            "panel_sha256": item.panel_sha256, "corrections_key": item.corrections_key}  # fmt: skip
    if item.lab is not None and item.fixed_gates is None:
        return _gate_with_lab_gates(item, base)
    try:
        template = tube_template(item.tube, item.config)
    except CartflowError as exc:
        return GateWork(**base, template_id="", template_sha256="", error=exc.problem)
    # the template file's hash; the options a panel sets over it are in item.panel_sha256
    base |= {"template_id": template.id, "template_sha256": template.sha256}
    if item.fixed_gates is not None:
        return _gate_fixed_work(item, base)
    given = {o.cut: o.decision() for o in item.overrides}
    try:
        gated = gate_file(
            item.path, template=template, tube=item.tube, config=item.config,
            fixed_cuts=given or None, panel=item.panel,
        )  # fmt: skip
    except CartflowError as exc:
        return GateWork(**base, error=f"{exc.kind}: {exc.problem}")
    except Exception as exc:  # a bad file must never stop the batch
        return GateWork(**base, error=f"unexpected {type(exc).__name__}: {exc}")
    populations, gates = gate_records(gated)
    drawn = False
    if item.plots is not None:
        from cartflow.report.plots import render_sample_plots

        drawn = render_sample_plots(gated, item.sha256, item.plots)
    flowjo, flags = None, (*gated.placed.flags, *_override_flags(item, gated, given))
    if item.review is not None:
        try:
            flowjo = review_exports(gated, item.review)
        except CartflowError as exc:  # the counts stand; the review copy is said to be missing
            flags = (*flags, f"review_export_failed: {exc.problem}")
    return GateWork(
        **base,
        populations=tuple(populations),
        gates=tuple(gates),
        flags=flags,
        flowjo=flowjo,
        plots_drawn=drawn,
    )


def _override_flags(item: PendingFile, gated, given: dict) -> list[str]:
    """A flag per hand-set cut: applied, or no longer placed by the template (never dropped
    silently)."""
    decisions = gated.placed.decisions
    return [
        f"{'override' if decisions.get(o.cut) is given[o.cut] else 'override_unfit'}:"
        f"{o.cut}={o.value:.4g}"
        for o in item.overrides
    ]


def _gate_with_lab_gates(item: PendingFile, base: dict) -> GateWork:
    """Gate one file with its tube's fixed lab gates (no placement)."""
    lab = item.lab
    base |= {"template_id": lab.id, "template_sha256": lab.sha256}
    try:
        fcs, gate_set, result = gate_fixed(item.path, lab.load())
        populations, gates = lab_gate_records(lab, fcs, gate_set, result)
    except CartflowError as exc:
        return GateWork(**base, error=f"{exc.kind}: {exc.problem}")
    except Exception as exc:  # a bad file must never stop the batch
        return GateWork(**base, error=f"unexpected {type(exc).__name__}: {exc}")
    return GateWork(**base, populations=tuple(populations), gates=tuple(gates))


def regate_sample(
    store: Store,
    run_id: int,
    sample_id: int,
    report_dir: Path | None = None,
    config: LabConfig | None = None,
):
    """Gate one stored sample again now, with its current corrections (a file found under
    one of its known paths); None when no path holds it any more (the next run that sees
    the file gates it)."""
    from cartflow.run.ingest import sha256_of

    sample = next((s for s in store.samples() if s.sample_id == sample_id), None)
    if sample is None:
        return None
    for name in store.sample_paths(sample_id):
        path = Path(name)
        try:
            if path.is_file() and sha256_of(path) == sample.sha256:
                break
        except OSError:
            continue
    else:
        return None
    [pending] = pending_gating(store, [(path, sample.sha256)], report_dir, config) or [None]
    if pending is None:
        return None
    work = gate_one(pending)
    write_gating(store, run_id, work)
    return work
