"""``cartflow review`` and ``cartflow override``: the review queue, acceptances and corrections."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from cartflow.cli.app import (
    _by,
    _fail,
    _lab_config,
    app,
    console,
)
from cartflow.cli.options import (
    ConfigOption,
    DbOption,
    LloqOption,
    LodOption,
    _count_settings,
)
from cartflow.io.errors import CartflowError


@app.command()
def review(
    db: DbOption = None,
    patient: Annotated[str | None, typer.Option(help="Only this patient's items.")] = None,
    accept: Annotated[
        int | None,
        typer.Option(min=1, help="Mark this sample reviewed and accepted as it is gated now."),
    ] = None,
    reason: Annotated[str | None, typer.Option(help="Why (with --accept).")] = None,
    by: Annotated[str | None, typer.Option(help="Who (default: the login name).")] = None,
    lod_events: LodOption = 20,
    lloq_events: LloqOption = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON array.")] = False,
    config: ConfigOption = None,
) -> None:
    """What needs a human: fallbacks on cuts that define reported populations, subsets not
    evaluable at the peak, bead problems, quarantined files…, each with its sample and why
    (informational flags are left out); --accept SAMPLE clears a sample until it is gated
    again."""
    from dataclasses import asdict

    from cartflow.pipeline.timepoints import TimepointSettings, timepoint_table
    from cartflow.run.batch import review_state
    from cartflow.store import Store

    settings = _count_settings(lod_events, lloq_events, "zero")
    lab = _lab_config(config)  # a bad configuration stops the command before any work
    try:
        store = Store(db, existing=True)
    except CartflowError as exc:
        raise _fail(str(exc)) from None
    try:
        if accept is not None:
            _accept(store, accept, reason, _by(by))
        timepoints = timepoint_table(
            store.latest_counts(), settings=TimepointSettings(counts=settings)
        )
        queue = review_state(
            store, timepoints, counts=settings, patient=patient, config=lab
        )
    finally:
        store.close()
    if as_json:
        console.print_json(json.dumps([asdict(i) for i in queue], default=str))
        return
    if not queue:
        console.print(f"nothing needs review in {store.display_url}")
        return
    for item in queue:  # one item a line: nothing is cut short on a narrow terminal
        where = f"sample {item.sample_id}" if item.sample_id else "file"
        console.print(
            f"[{item.severity}] {where} {item.patient} {item.timepoint} {item.tube} "
            f"{item.file}: {item.flag}: {item.reason}",
            markup=False,
            soft_wrap=True,
        )
    console.print(
        f"{len(queue)} item(s); `cartflow inspect --sample ID` shows a sample's decisions, "
        "`cartflow override` corrects one, `cartflow review --accept ID` accepts one"
    )


def _accept(store, sample_id: int, reason: str | None, by: str) -> None:
    gating = store.newest_gatings().get(sample_id)
    if gating is None:
        raise _fail(f"no gated sample {sample_id} in {store.display_url}")
    if not reason:
        raise _fail("--accept needs --reason TEXT (kept in the audit trail)")
    store.add_correction(sample_id, "accept", reason, by, gating_id=gating)
    console.print(f"sample {sample_id} accepted by {by} (gating {gating})")


@app.command()
def override(
    sample: Annotated[int | None, typer.Argument(min=1, help="Stored sample id.")] = None,
    cut: Annotated[
        list[str] | None,
        typer.Option("--cut", help="MARKER[.bright]=VALUE, in the template's units; repeatable."),
    ] = None,
    gates: Annotated[
        Path | None,
        typer.Option(help="Gate the sample with a lab's gates (Gating-ML .xml, FlowJo .wsp)."),
    ] = None,
    exclude: Annotated[
        bool, typer.Option("--exclude", help="Leave the sample out of counts and kinetics.")
    ] = False,
    revoke: Annotated[
        int | None, typer.Option(min=1, help="Revoke the correction with this id.")
    ] = None,
    reason: Annotated[str | None, typer.Option(help="Why (kept in the audit trail).")] = None,
    by: Annotated[str | None, typer.Option(help="Who (default: the login name).")] = None,
    list_: Annotated[
        bool, typer.Option("--list", help="List the audit trail (of SAMPLE, or all).")
    ] = False,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Correct one sample by hand: set cuts (--cut CD27.bright=0.66), exclude it, or revoke a
    correction; stored with who, when and why, and the sample is gated again at once (the
    next `run` recomputes timepoints, kinetics, outcomes and the report)."""
    from cartflow.store import Store

    lab = _lab_config(config)  # a bad configuration stops the command before any work
    try:
        store = Store(db, existing=True)
    except CartflowError as exc:
        raise _fail(str(exc)) from None
    try:
        if list_:
            _list_corrections(store, sample)
            return
        if sample is None:
            raise _fail("give a SAMPLE id (or --list)")
        if not reason:
            raise _fail("a correction needs --reason TEXT (kept in the audit trail)")
        chosen = [bool(cut), gates is not None, exclude, revoke is not None]
        if sum(chosen) != 1:
            raise _fail("give one of --cut, --gates, --exclude or --revoke")
        if gates is not None:
            _set_gates(store, sample, gates, reason, _by(by))
        _correct(store, sample, cut or [], exclude, revoke, reason, _by(by), lab)
    finally:
        store.close()


def _correct(store, sample_id, cuts, exclude, revoke, reason, by, config=None) -> None:
    from cartflow.pipeline.gate import template_for
    from cartflow.run.batch import regate_sample

    info = store.provenance(sample_id)
    if info is None:
        raise _fail(f"no sample {sample_id} in {store.display_url}")
    ok = [g for g in info["gatings"] if g["status"] == "ok"]
    current = ok[-1]["cuts"] if ok else {}
    if revoke is not None:
        entry = next((c for c in info["corrections"] if c["id"] == revoke), None)
        if entry is None or not entry["active"]:
            raise _fail(f"sample {sample_id} has no active correction {revoke}")
        store.add_correction(
            sample_id,
            "revoke",
            reason,
            by,
            target=entry["target"],
            old=entry["new"],
            revokes=revoke,
        )
        console.print(f"correction {revoke} revoked by {by}")
    elif exclude:
        store.add_correction(sample_id, "exclude", reason, by, old=False, new=True)
        console.print(f"sample {sample_id} excluded by {by}")
    for text in cuts:
        name, _, value = text.partition("=")
        try:
            number = float(value)
            (config.template(info["tube"]) if config else template_for(info["tube"])).cut(
                name.strip()
            )
        except ValueError:
            raise _fail(f"--cut {text!r}: give MARKER[.bright]=NUMBER") from None
        except CartflowError as exc:
            raise _fail(f"--cut {text!r}: {exc}") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise _fail(f"--cut {text!r}: the value must be finite")
        old = current.get(name.strip(), {}).get("value")
        store.add_correction(sample_id, "cut", reason, by, target=name.strip(), old=old, new=number)
        console.print(f"cut {name.strip()} of sample {sample_id}: {old} -> {number} by {by}")
    if exclude:
        return
    with store.recording("override", {"sample": sample_id}) as run_id:
        work = regate_sample(store, run_id, sample_id, config=config)
    if work is None:
        console.print("file not found under its known paths: the next `run` that sees it gates it")
    elif work.error:
        console.print(Text.assemble(("gating failed: ", "red"), work.error))
    else:
        console.print(f"sample {sample_id} gated again; `cartflow run` updates kinetics and report")


def _set_gates(store, sample_id: int, gates: Path, reason: str, by: str) -> None:
    """Record a lab's gate file on a sample (checked to load first; its text is kept in the
    audit trail, so re-gating does not depend on the file staying where it is)."""
    import hashlib

    from cartflow.pipeline.gate import load_fixed_gates

    names = [s.file for s in store.samples() if s.sample_id == sample_id]
    if not names:
        raise _fail(f"no sample {sample_id} in {store.display_url}")
    try:
        load_fixed_gates(gates)
        content = gates.read_text(encoding="utf-8")
    except CartflowError as exc:
        raise _fail(str(exc)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(f"{gates}: cannot be read: {exc}") from None
    sha = hashlib.sha256(content.encode("utf-8")).hexdigest()
    new = {"file": gates.name, "sha256": sha, "content": content}
    store.add_correction(sample_id, "gates", reason, by, target=gates.name, new=new)
    console.print(f"gates {gates.name} (sha256 {sha[:16]}) set on sample {sample_id} by {by}")


def _shown(value) -> str:
    """An audit value as one short text (a gate file by its name and hash)."""
    if isinstance(value, dict) and "content" in value:
        return f"{value['file']} sha256 {value['sha256'][:16]}"
    return json.dumps(value, default=str)


def _list_corrections(store, sample: int | None) -> None:
    """The audit trail, one entry a line (nothing is cut short on a narrow terminal)."""
    trail = store.corrections(sample)
    if not trail:
        console.print("no corrections")
    for c in trail:
        state = "active" if c["active"] else ""
        if c["action"] in ("cut", "gates", "exclude") and not c["active"]:
            state = "revoked"
        if c["revokes"]:
            state = f"revokes #{c['revokes']}"
        change = f"{_shown(c['old'])} -> {_shown(c['new'])}"
        console.print(
            f"#{c['id']} sample {c['sample_id']} {c['action']} {c['target'] or ''} {change} "
            f"by {c['by']} at {c['at']:%Y-%m-%d %H:%M:%S} [{state}]: {c['reason']}",
            soft_wrap=True,
            markup=False,
        )
