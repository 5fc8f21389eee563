"""The report's sample plots on disk: drawn once per file content and gating, a record of
their panels beside the image, read back by the report (:func:`unnumbered`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from cartflow.io.outputs import write_bytes
from cartflow.pipeline.gate import SampleGating
from cartflow.report.plots.report_panels import sample_panels

PLOTS_VERSION = 3
"""Raised when the report's sample plots change, so that cached ones are drawn again."""


def plots_key(gated: SampleGating, sha256: str) -> str:
    """What a sample's plots depend on: the file's content, the gates and cuts placed on it,
    the counts and the way plots are drawn (a hex digest)."""
    placed = gated.placed
    decisions = sorted(
        (name, d.method, d.value, d.fallback, d.reason) for name, d in placed.decisions.items()
    )
    text = repr(
        (PLOTS_VERSION, sha256, placed.template_sha256, placed.gate_set.gates, decisions,
         sorted(gated.counts().items()))
    )  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()


def render_sample_plots(gated: SampleGating, sha256: str, folder: Path) -> bool:
    """Draw a sample's plots into ``folder`` unless those of the same file and gating are
    there already: ``<sha>.json`` (the panels, their notes and labels numbered into the
    record's ``notes``: :func:`unnumbered`) and ``<sha>-<key>.png`` (their images).
    Returns whether anything was drawn."""
    key = plots_key(gated, sha256)
    index = folder / f"{sha256[:16]}.json"
    image = f"{sha256[:16]}-{key[:12]}.png"
    try:
        known = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if known.get("key") == key and (folder / image).is_file():
        return False
    panels = sample_panels(gated)
    write_bytes(folder / image, panels.png())
    heading = f"{gated.panel.id}, {gated.template.id}"  # no file name: it may carry PHI
    texts = [*(n for p in panels.panels for n in p.notes),
             *(p.x_label for p in panels.panels), *(p.y_label or "" for p in panels.panels)]
    notes = list(dict.fromkeys(texts))
    number = {n: i for i, n in enumerate(notes)}
    record = {
        "key": key,
        "version": PLOTS_VERSION,
        "image": image,
        "rows": len(panels.images),
        "heading": heading,
        "notes": notes,  # each text once; a panel's notes and labels are numbers into it
        "panels": [_numbered(p.as_dict(), number) for p in panels.panels],
    }  # fmt: skip
    write_bytes(index, json.dumps(record, separators=(",", ":")).encode())
    old = known.get("image")
    if old and old != image:
        (folder / old).unlink(missing_ok=True)
    return True


def _numbered(panel: dict, number: Mapping[str, int]) -> dict:
    """A panel's notes and axis labels as numbers into its record's list of texts."""
    for label in ("x_label", "y_label"):
        if label in panel:
            panel[label] = number[panel[label]]
    if "notes" in panel:
        panel["notes"] = [number[n] for n in panel["notes"]]
    return panel


def unnumbered(panel: dict, texts: Sequence[str]) -> dict:
    """A panel of a plots record with its texts back in place (:func:`_numbered`)."""
    labels = {k: texts[panel[k]] for k in ("x_label", "y_label") if panel.get(k) is not None}
    return {**panel, **labels, "notes": [texts[i] for i in panel.get("notes", ())]}
