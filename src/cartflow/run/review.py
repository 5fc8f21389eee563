"""Review exports: placed gates as a cytometrist opens them, a FlowJo 10 workspace of a batch
(or of each patient) and Gating-ML per sample, each written beside the others in a folder
that can be moved as a whole (FCS paths are relative to the workspace)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cartflow.io.errors import CartflowError
from cartflow.io.outputs import write_bytes
from cartflow.store import Store

if TYPE_CHECKING:
    from cartflow.run.batch.work import GateWork


def review_exports(gated, folder: Path) -> bytes:
    """Write the sample's placed gates as Gating-ML (``folder/gatingml/<file>.xml``) and
    return its one-sample FlowJo workspace, each cut's evidence as a sample keyword."""
    from cartflow.gating.flowjo import workspace_bytes
    from cartflow.gating.gatingml import gatingml_bytes

    gate_set = gated.placed.gate_set
    target = folder / "gatingml" / f"{gated.fcs.path.stem}.xml"
    write_bytes(target, gatingml_bytes(gate_set, target))
    spill = gated.spillover
    keywords = {"CARTFLOW TEMPLATE": gated.template.id}
    for name, decision in gated.placed.decisions.items():
        fallback = " (fallback)" if decision.fallback else ""
        keywords[f"CARTFLOW {name}"] = (
            f"{decision.method} {float(decision.value):.6g}{fallback}: {decision.reason}"
        )
    return workspace_bytes(
        gate_set,
        gated.fcs.path,
        gated.fcs.events,
        gated.fcs.channel_names,
        (list(spill.channels), spill.matrix) if spill else None,
        keywords=keywords,
    )


def write_batch_workspace(
    gated: Sequence[GateWork], folder: Path, batch: str, store: Store
) -> Path | None:
    """One FlowJo 10 workspace of every sample this run gated (``folder/<batch>.wsp``),
    grouped by patient and by tube as well."""
    from cartflow.gating.flowjo import batch_workspace_bytes

    works = sorted(
        (w for w in gated if w.flowjo is not None and not w.error), key=lambda w: w.path.name
    )
    if not works:
        return None
    identity = {s.sample_id: s for s in store.samples()}
    groups: dict[str, list[int]] = {}
    for position, work in enumerate(works):
        sample = identity.get(work.sample_id)
        if sample is None:
            continue
        for value, prefix in ((sample.patient, "patient "), (sample.tube, "tube ")):
            if value:
                groups.setdefault(f"{prefix}{value}", []).append(position)
    out = folder / f"{batch}.wsp"
    samples = [(w.path, w.flowjo) for w in works]
    write_bytes(out, batch_workspace_bytes(samples, out, batch, dict(sorted(groups.items()))))
    return out


def export_review(store: Store, out: Path, config=None) -> tuple[list[Path], list[str]]:
    """One FlowJo 10 workspace per patient (``out/<patient>.wsp``) and Gating-ML per sample,
    from the store: each sample's newest gating is placed again on its file with its
    template, and written only if it gives the stored counts. Returns the workspaces written
    and a note for each sample left out (its file gone or changed, gated by a lab's gates,
    or its template changed since). ``config`` is the lab configuration the samples were
    gated with (None: the shipped one)."""
    from cartflow.gating.flowjo import batch_workspace_bytes
    from cartflow.panels.config import DEFAULT_CONFIG_DIR, load_config
    from cartflow.pipeline.gate import gate_file, template_for

    resolving = config if config is not None else load_config(DEFAULT_CONFIG_DIR)
    notes: list[str] = []
    by_patient: dict[str, list[tuple[Path, bytes, str]]] = {}
    newest: dict[int, dict[str, int]] = {}
    for row in store.latest_counts():
        newest.setdefault(row.sample_id, {})[row.population] = row.count
    for sample_id, counts in sorted(newest.items()):
        trail = store.provenance(sample_id)
        gating = trail["gatings"][-1] if trail and trail["gatings"] else None
        name = (trail["file"]["names"] or ["?"])[-1] if trail else "?"
        try:
            if gating is None or gating["template_id"].startswith("lab:"):
                raise CartflowError(name, "gated by a lab's fixed gates, not placed")
            tube = trail["tube"]
            template = config.template(tube) if config is not None else template_for(tube)
            # the store keys a gating by the template file's hash (its panel's gate_options
            # by the panel hash); gate_file sets the panel's options over it again
            if template.sha256 != gating["template_sha256"]:
                raise CartflowError(name, f"template {template.id} changed since it was gated")
            path = _existing(trail["file"]["names"], trail["file"]["sha256"])
            # with the panel matched at ingest while the configuration holds it unchanged
            panel = resolving.stored_panel(trail["panel"]["id"], trail["panel"]["sha256"], tube)
            gated = gate_file(path, template=template, tube=tube, config=config, panel=panel)
            if gated.counts() != counts:
                raise CartflowError(path, "placed again, its gates do not give the stored counts")
            flowjo = review_exports(gated, out)
        except CartflowError as exc:
            notes.append(str(exc))
            continue
        patient = trail["patient"] or "unknown patient"
        by_patient.setdefault(patient, []).append((path, flowjo, trail["tube"] or ""))
    written = []
    for patient, samples in sorted(by_patient.items()):
        samples.sort(key=lambda s: s[0].name)
        tubes: dict[str, list[int]] = {}
        for position, (_, _, tube) in enumerate(samples):
            tubes.setdefault(f"tube {tube}", []).append(position)
        target = out / f"{_file_safe(patient)}.wsp"
        members = [(p, d) for p, d, _ in samples]
        write_bytes(target, batch_workspace_bytes(members, target, f"patient {patient}", tubes))
        written.append(target)
    return written, notes


def _existing(names: Sequence[str], sha256: str) -> Path:
    """The newest recorded path of a file that still holds the same bytes."""
    import hashlib

    for name in reversed(list(names)):
        path = Path(name)
        if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sha256:
            return path
    raise CartflowError(names[-1] if names else "?", "no longer at its recorded paths")


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_. " else "_" for c in name).strip() or "patient"
