"""The review loop on a simulated cohort with forced problems: triage, the review queue,
corrections that stick (with their audit trail) and manifest corrections."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cartflow.cli import app
from cartflow.gating.template import load_template
from cartflow.pipeline.triage import (
    FLAG_KINDS,
    NEEDS_REVIEW,
    flag_kind,
    flag_table_markdown,
    severity,
)
from cartflow.simulate import SimulationConfig, simulate_cohort
from cartflow.store import Store
from tests.chromium import CHROMIUM, FLAGS, dump_dom
from tests.fcs_mutate import build_fcs, split_fcs

REPO = Path(__file__).resolve().parent.parent
PATIENT = "CART-001"
runner = CliRunner()


def test_readme_flag_table_is_the_module_table():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert flag_table_markdown() in readme
    assert len({k.prefix for k in FLAG_KINDS}) == len(FLAG_KINDS)


def test_unknown_and_implausible_flags_need_review_and_fallbacks_follow_the_report():
    assert severity("implausible:CD3 cut far above the T cells") == NEEDS_REVIEW
    assert severity("something_new:x") == NEEDS_REVIEW
    assert flag_kind("unstable_flow:2 of 50 time bins").severity == "info"
    assert severity("threshold_fallback:CD27.bright", {"CD27.bright"}) == NEEDS_REVIEW
    assert severity("threshold_fallback:PD1", {"CD27.bright"}) == "warning"
    assert severity("spillover_lab.csv") == "info"


def _events(raw: bytes):
    version, keywords, data, delimiter = split_fcs(raw)
    columns = int(keywords["$PAR"])
    matrix = np.frombuffer(data, "<f4").reshape(-1, columns).copy()
    return version, keywords, matrix, delimiter


def _write(path: Path, version, keywords, matrix, delimiter) -> None:
    keywords = dict(keywords, **{"$TOT": str(matrix.shape[0])})
    path.write_bytes(build_fcs(version, keywords, matrix.astype("<f4").tobytes(), delimiter))


def _file(folder: Path, timepoint: str) -> Path:
    [path] = folder.glob(f"{PATIENT} {timepoint}_CAR-T memory_*.fcs")
    return path


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """One patient, memory and B-cell tubes; forced: D14 memory with its CD27 signal
    compressed so that no bright band is left (its bright cut falls back), D21 memory
    without beads per tube in the manifest, D11 memory (the peak) thinned to every 16th
    event (CD8 CAR-T under the LLOQ there)."""
    folder = tmp_path_factory.mktemp("cohort")
    simulate_cohort(folder, SimulationConfig(patients=1, seed=11, events=20_000))
    for path in folder.glob("*function*.fcs"):
        path.unlink()
    version, keywords, matrix, delimiter = _events(_file(folder, "D14").read_bytes())
    cd27 = next(
        k[:-1] for k, v in keywords.items() if re.fullmatch(r"\$P\d+S", k) and v.startswith("CD27")
    )
    column = matrix[:, int(cd27[2:]) - 1]  # beads (> 40,000) stay bright in every detector
    column[:] = np.where(column < 40_000, np.sign(column) * np.sqrt(np.abs(column)) * 30, column)
    _write(_file(folder, "D14"), version, keywords, matrix, delimiter)
    version, keywords, matrix, delimiter = _events(_file(folder, "D11").read_bytes())
    _write(_file(folder, "D11"), version, keywords, matrix[::16], delimiter)
    rows = list(csv.DictReader((folder / "manifest.csv").open(encoding="utf-8")))
    rows = [r for r in rows if "function" not in r["file"]]
    for row in rows:
        if row["file"] == _file(folder, "D21").name:
            row["beads_per_tube"] = ""
    _write_manifest(folder / "manifest.csv", rows)
    return folder


def _write_manifest(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _run(cohort: Path, db: str, out: Path, manifest: Path | None = None, config=None):
    result = runner.invoke(
        app,
        [
            "run",
            str(cohort),
            "--manifest",
            str(manifest or cohort / "manifest.csv"),
            "--db",
            db,
            "--out",
            str(out),
            "--workers",
            "1",
            "--no-report",
            *(["--config", str(config)] if config else []),
        ],
    )
    assert result.exit_code == 0, result.output
    return result.output


def _review(db: str) -> list[dict]:
    result = runner.invoke(app, ["review", "--db", db, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _timepoint(store: Store, sample_id: int) -> str:
    return next(s.timepoint for s in store.samples() if s.sample_id == sample_id)


def test_review_lists_exactly_the_forced_problems_and_a_rerun_still_reports_them(cohort, tmp_path):
    db = f"sqlite:///{tmp_path / 'store.sqlite'}"
    first = _run(cohort, db, tmp_path / "out")
    queue = _review(db)
    assert queue and all(i["severity"] == NEEDS_REVIEW for i in queue)
    assert not [i for i in queue if i["flag"].startswith("unstable_flow")]
    by_timepoint: dict[str, set[str]] = {}
    for item in queue:
        assert item["reason"] and item["sample_id"]
        by_timepoint.setdefault(item["timepoint"], set()).add(item["flag"])
    assert set(by_timepoint) == {"D11", "D14", "D21"}, queue
    assert "threshold_fallback:CD27.bright" in by_timepoint["D14"]
    assert "missing_beads_per_tube" in by_timepoint["D21"]
    assert "not_evaluable_at_peak:CAR_CD8_SCM" in by_timepoint["D11"]
    assert re.search(r"review: \d+ item\(s\) on 3 sample", first)
    again = _run(cohort, db, tmp_path / "out")  # nothing new to gate: the stored state speaks
    assert "0 gated" in again and re.search(r"review: \d+ item\(s\) on 3 sample", again)


def _sample(store: Store, timepoint: str, tube: str = "memory") -> int:
    return next(s.sample_id for s in store.samples() if s.timepoint == timepoint and s.tube == tube)


def _kinetics(out: Path) -> pd.Series:
    return pd.read_csv(out / "kinetics.csv").set_index("patient").loc[PATIENT]


def test_override_regates_one_sample_changes_kinetics_and_revoke_restores(
    cohort, tmp_path, store_url
):
    out = tmp_path / "out"
    _run(cohort, store_url, out)
    store = Store(store_url)
    try:
        sample = _sample(store, "D7")
        before_gatings = store.newest_gatings()
        before_kinetics = _kinetics(out)
        before_counts = {
            r.population: r.count for r in store.latest_counts() if r.sample_id == sample
        }
        result = runner.invoke(
            app,
            [
                "override",
                str(sample),
                "--cut",
                "CAR=0.5",
                "--reason",
                "CAR cut sits in the negatives",
                "--by",
                "A. Reviewer",
                "--db",
                store_url,
            ],
        )
        assert result.exit_code == 0, result.output
        after_gatings = store.newest_gatings()
        changed = {s for s in after_gatings if after_gatings[s] != before_gatings.get(s)}
        assert changed == {sample}
        counts = {r.population: r.count for r in store.latest_counts() if r.sample_id == sample}
        assert counts["CAR"] < before_counts["CAR"] and counts["T"] == before_counts["T"]
        [entry] = store.corrections(sample)
        assert (entry["action"], entry["target"], entry["by"]) == ("cut", "CAR", "A. Reviewer")
        assert entry["new"] == 0.5 and entry["old"] is not None and entry["old"] != 0.5
        assert "negatives" in entry["reason"] and entry["at"] is not None
        trail = store.provenance(sample)["gatings"][-1]
        assert trail["cuts"]["CAR"]["value"] == 0.5
        assert "override:CAR=0.5" in trail["flags"]

        _run(cohort, store_url, out)  # the next run: kinetics follow, nothing gated again
        assert store.newest_gatings() == after_gatings
        overridden = _kinetics(out)
        assert overridden["car_t_auc14"] < before_kinetics["car_t_auc14"]

        listed = runner.invoke(app, ["override", "--list", "--db", store_url])
        assert "A. Reviewer" in listed.output and "active" in listed.output
        result = runner.invoke(
            app,
            [
                "override",
                str(sample),
                "--revoke",
                str(entry["id"]),
                "--reason",
                "second look",
                "--by",
                "B. Senior",
                "--db",
                store_url,
            ],
        )
        assert result.exit_code == 0, result.output
        restored = {r.population: r.count for r in store.latest_counts() if r.sample_id == sample}
        assert restored == before_counts
        trail = store.corrections(sample)
        assert [c["action"] for c in trail] == ["cut", "revoke"]
        assert trail[1]["revokes"] == entry["id"] and not trail[0]["active"]
        assert trail[0]["new"] == 0.5  # the audit entry itself is never changed
        _run(cohort, store_url, out)
        assert _kinetics(out)["car_t_auc14"] == pytest.approx(before_kinetics["car_t_auc14"])
    finally:
        store.close()


def test_accepting_a_sample_clears_it_from_the_queue_until_it_is_gated_again(cohort, tmp_path):
    db = f"sqlite:///{tmp_path / 'store.sqlite'}"
    _run(cohort, db, tmp_path / "out")
    store = Store(db)
    sample = _sample(store, "D14")
    store.close()
    result = runner.invoke(
        app, ["review", "--db", db, "--accept", str(sample), "--reason", "CD27 judged by eye"]
    )
    assert result.exit_code == 0, result.output
    assert {i["timepoint"] for i in _review(db)} == {"D11", "D21"}
    shown = runner.invoke(app, ["inspect", "--sample", str(sample), "--db", db])
    line = next(x for x in shown.output.splitlines() if "cut CD27.bright =" in x)
    assert "bounds 0.55-0.8" in line and "placed on " in line and "FALLBACK: " in line
    assert "correction #1 accept" in shown.output and "CD27 judged by eye" in shown.output


def test_a_corrected_manifest_row_is_applied_audited_and_changes_kinetics(cohort, tmp_path):
    db = f"sqlite:///{tmp_path / 'store.sqlite'}"
    out = tmp_path / "out"
    _run(cohort, db, out)
    before = _kinetics(out)
    rows = list(csv.DictReader((cohort / "manifest.csv").open(encoding="utf-8")))
    d7 = _file(cohort, "D7").name
    for row in rows:
        if row["file"] == d7:
            row["beads_per_tube"] = str(float(row["beads_per_tube"]) * 2)
        if row["file"] == _file(cohort, "D11").name:
            row["timepoint"] = "D14"  # two D14 memory samples now: the newest stored is used
    corrected = tmp_path / "manifest.csv"
    _write_manifest(corrected, rows)
    output = _run(cohort, db, out, corrected)
    assert "identity corrected" in output
    store = Store(db)
    try:
        trail = [c for c in store.corrections() if c["action"] == "manifest"]
        changed = {c["target"]: c for c in trail}
        assert len(trail) == 2
        beads = changed["beads_per_tube"]
        assert beads["new"]["beads_per_tube"] == 2 * beads["old"]["beads_per_tube"]
        moved = next(c for c in trail if "timepoint" in c["target"])
        assert moved["old"]["timepoint"] == "D11" and moved["new"]["timepoint"] == "D14"
        assert _timepoint(store, moved["sample_id"]) == "D14"
    finally:
        store.close()
    after = _kinetics(out)
    assert after["car_t_auc14"] != pytest.approx(before["car_t_auc14"])
    again = _run(cohort, db, out, corrected)
    assert "identity corrected" not in again


def test_lab_gates_set_on_one_sample_are_used_for_it_and_audited(cohort, tmp_path):
    db = f"sqlite:///{tmp_path / 'store.sqlite'}"
    out = tmp_path / "out"
    _run(cohort, db, out)
    lab = tmp_path / "lab.xml"  # the gates placed on another timepoint, as a lab would give them
    exported = runner.invoke(app, ["gate", str(_file(cohort, "D28")), "--gatingml", str(lab)])
    assert exported.exit_code == 0, exported.output
    store = Store(db)
    try:
        sample = _sample(store, "D7")
        before = store.newest_gatings()
        automatic = {r.population: r.count for r in store.latest_counts() if r.sample_id == sample}
        result = runner.invoke(
            app,
            ["override", str(sample), "--gates", str(lab), "--reason", "lab gates", "--db", db],
        )
        assert result.exit_code == 0, result.output
        after = store.newest_gatings()
        assert {s for s in after if after[s] != before[s]} == {sample}
        counts = {r.population: r.count for r in store.latest_counts() if r.sample_id == sample}
        assert set(counts) >= {"CAR", "CAR_CD8_SCM", "beads"} and counts != automatic
        gating = store.provenance(sample)["gatings"][-1]
        assert gating["flags"] == ["override:gates=lab.xml"]
        [entry] = store.corrections(sample)
        assert entry["new"]["content"] == lab.read_text(encoding="utf-8")
    finally:
        store.close()


def test_overrides_are_applied_again_after_a_template_change(cohort, tmp_path):
    config = tmp_path / "lab"
    assert runner.invoke(app, ["config", "init", str(config)]).exit_code == 0
    db = f"sqlite:///{tmp_path / 'store.sqlite'}"
    _run(cohort, db, tmp_path / "out", config=config)
    store = Store(db)
    sample = _sample(store, "D7")
    store.close()
    result = runner.invoke(
        app,
        ["override", str(sample), "--cut", "CAR=0.5", "--reason", "by eye", "--db", db,
         "--config", str(config)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    template = config / "templates" / "memory.yaml"
    template.write_text(template.read_text(encoding="utf-8") + "\n# revised\n", "utf-8")
    revised = load_template(template)
    output = _run(cohort, db, tmp_path / "out", config=config)
    assert re.search(r"gate: 8 gated, 8 already gated", output), output
    store = Store(db)
    try:
        gating = store.provenance(sample)["gatings"][-1]
        assert gating["template_sha256"] == revised.sha256
        assert gating["cuts"]["CAR"]["value"] == 0.5 and "override:CAR=0.5" in gating["flags"]
    finally:
        store.close()


SCM_LINE = ("T", "CAR", "CAR_CD8", "CAR_CD8_SCM")
"""The phenotype gates that define SCM, from the T cells down."""


def _dom(page: Path, profile: Path) -> str:
    return dump_dom(page, profile).stdout


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (package chromium)")
def test_sample_page_in_chromium_draws_every_gate_defining_scm_with_its_evidence(cohort, tmp_path):
    one = tmp_path / "batch"
    one.mkdir()
    shutil.copy(_file(cohort, "D7"), one)
    db, out = f"sqlite:///{tmp_path / 'store.sqlite'}", tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "run",
            str(one),
            "--manifest",
            str(cohort / "manifest.csv"),
            "--clinical",
            str(cohort / "clinical.csv"),
            "--db",
            db,
            "--out",
            str(out),
            "--workers",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    [page] = (out / "report" / "samples").glob("*.html")
    dom = _dom(page, tmp_path / "profile")
    store = Store(db)
    [sample] = store.samples()
    cuts = store.provenance(sample.sample_id)["gatings"][-1]["cuts"]
    store.close()
    for population in SCM_LINE:
        section = dom.split(f'id="{population}"')[1].split("</section>")[0]
        assert '<svg class="plot"' in section, population  # its gate drawn on its markers
        images = re.findall(r'<image href="([^"]+)"', section)  # 2-D plots: binned densities
        assert all((page.parent / i).stat().st_size > 2_000 for i in images), images
        assert '<svg class="density"' in section  # the density each cut was placed on
    scm = dom.split('id="CAR_CD8_SCM"')[1].split("</section>")[0]
    steps = scm.split("<figure>")[1:]  # CD45RA × CD62L, then CD27 × CD95 on what passed
    assert len(steps) == 2 and "CD45RA" in steps[0] and "CD62L" in steps[0], scm
    assert all("<image href=" in step for step in steps)
    assert "CD27" in steps[1] and "CD95" in steps[1] and "1 of 2" in steps[0], steps[1]
    for name in ("CD45RA", "CD62L", "CD27", "CD27.bright", "CD95"):
        row = scm.split(f"<code>{name}</code>")[1].split("</tr>")[0]
        assert f"{cuts[name]['value']:.4g}" in row and cuts[name]["method"] in row, name
        low, high = cuts[name]["evidence"]["bounds"]
        assert f"{low:.3g} – {high:.3g}" in row
        assert f"{cuts[name]['evidence']['estimated_on']} (" in row  # the events it was placed on
    patients = _dom(out / "report" / "patients.html", tmp_path / "profile-patients")
    assert "infusion" in patients and f'href="samples/{page.name}"' in patients
    keep = os.environ.get("CARTFLOW_SCREENSHOT_DIR")
    if keep:
        subprocess.run(
            [
                CHROMIUM,
                *FLAGS,
                f"--user-data-dir={tmp_path / 'shot'}",
                "--window-size=1300,2600",
                f"--screenshot={Path(keep) / 'sample-page.png'}",
                "--virtual-time-budget=3000",
                page.as_uri(),
            ],
            capture_output=True,
            timeout=120,
            check=True,
        )
