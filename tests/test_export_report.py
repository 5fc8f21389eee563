"""Exports, provenance and the HTML report: tidy tables with a dictionary, no identifiers
from FCS keywords anywhere, a trail behind every number, a report that loads in a browser."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from cartflow.cli import app
from cartflow.report.export import DICTIONARY
from cartflow.report.pages import write_report
from cartflow.store import Store
from tests.chromium import CHROMIUM, FLAGS, dump_dom
from tests.conftest import FIXTURE_COHORT

runner = CliRunner()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, str, Path]:
    """One run with a report on two patients' memory and B-cell tubes."""
    root = tmp_path_factory.mktemp("run")
    batch = root / "batch"
    batch.mkdir()
    for source in sorted(FIXTURE_COHORT.glob("*.fcs")):
        if source.name.startswith(("CART-001 D", "CART-003 D1")) and "function" not in source.name:
            shutil.copy(source, batch / source.name)
    db = f"sqlite:///{root / 'store.sqlite'}"
    out = root / "out"
    result = runner.invoke(
        app,
        [
            "run",
            str(batch),
            "--db",
            db,
            "--out",
            str(out),
            "--workers",
            "2",
            "--manifest",
            str(FIXTURE_COHORT / "manifest.csv"),
            "--clinical",
            str(FIXTURE_COHORT / "clinical.csv"),
        ],
    )
    assert result.exit_code == 0, result.output
    return batch, db, out


def _src_names() -> list[str]:
    with (FIXTURE_COHORT / "truth" / "patients.csv").open(encoding="utf-8") as fh:
        return [row["src_keyword"] for row in csv.DictReader(fh)]


def _text_files(folder: Path):
    for path in folder.rglob("*"):
        if path.suffix in {".csv", ".html", ".json", ".svg"}:
            yield path


@pytest.mark.slow
def test_export_tables_with_dictionary(finished_run, tmp_path):
    _, db, _ = finished_run
    for fmt in ("csv", "parquet"):
        out = tmp_path / fmt
        result = runner.invoke(app, ["export", "--format", fmt, "--out", str(out), "--db", db])
        assert result.exit_code == 0, result.output
        read = pd.read_csv if fmt == "csv" else pd.read_parquet
        for table in ("samples", "populations", "timepoints", "kinetics"):
            frame = read(out / f"{table}.{fmt}")
            assert len(frame) > 0, table
            undocumented = set(frame.columns) - set(DICTIONARY[table])
            assert not undocumented, (table, sorted(undocumented))
        dictionary = pd.read_csv(out / "data_dictionary.csv")
        assert {"table", "column", "description"} <= set(dictionary.columns)
        assert dictionary.description.notna().all()


def test_pseudonymised_export_hides_patient_ids(finished_run, tmp_path, monkeypatch):
    _, db, _ = finished_run
    out = tmp_path / "pseudo"
    monkeypatch.setenv("CARTFLOW_PSEUDONYM_KEY", "test-key")
    result = runner.invoke(app, ["export", "--out", str(out), "--db", db, "--pseudonymise"])
    assert result.exit_code == 0, result.output
    text = "\n".join(p.read_text(encoding="utf-8") for p in out.glob("*.csv"))
    assert "CART-00" not in text
    assert re.search(r"P-[0-9a-f]{10}", text)
    again = tmp_path / "again"
    runner.invoke(app, ["export", "--out", str(again), "--db", db, "--pseudonymise"])
    assert (again / "samples.csv").read_text() == (out / "samples.csv").read_text()
    monkeypatch.delenv("CARTFLOW_PSEUDONYM_KEY")
    refused = runner.invoke(
        app, ["export", "--out", str(tmp_path / "x"), "--db", db, "--pseudonymise"]
    )
    assert refused.exit_code == 1 and "CARTFLOW_PSEUDONYM_KEY" in refused.output


def test_fcs_patient_names_never_reach_report_or_exports(finished_run, tmp_path):
    _, db, out = finished_run
    runner.invoke(app, ["export", "--out", str(tmp_path / "e"), "--db", db])
    names = _src_names()
    assert names
    for folder in (out, tmp_path / "e"):
        for path in _text_files(folder):
            text = path.read_text(encoding="utf-8", errors="replace")
            for name in names:
                assert name not in text, (path, name)
                assert name.split("^")[0] not in text, (path, name)


def test_every_number_has_a_trail(finished_run):
    _, db, _ = finished_run
    store = Store(db)
    sample = next(s for s in store.samples() if s.tube == "memory")
    store.close()
    result = runner.invoke(
        app, ["inspect", "--sample", str(sample.sample_id), "--db", db, "--json"]
    )
    assert result.exit_code == 0, result.output
    trail = json.loads(result.output)
    assert trail["file"]["sha256"] == sample.sha256
    assert len(trail["panel"]["sha256"]) == 64
    assert trail["ingest"]["software_version"]
    [gating] = trail["gatings"]
    assert len(gating["template_sha256"]) == 64
    assert gating["run"]["parameters"]["workers"] == 2
    assert gating["counts"] and gating["cuts"]
    missing = runner.invoke(app, ["inspect", "--sample", "99999", "--db", db])
    assert missing.exit_code == 1 and "no sample 99999" in missing.output


@pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (Debian package chromium)"
)
def test_report_pages_load_in_chromium(finished_run, tmp_path):
    _, _, out = finished_run
    report = out / "report"
    pages = [report / "index.html", report / "patients.html", report / "cohort.html"]
    pages += sorted((report / "samples").glob("*.html"))[:2]
    for page in pages:
        html = page.read_text(encoding="utf-8")
        assert not re.findall(r'(?:src|href)="(?:https?:)?//', html), page  # nothing remote
        for src in re.findall(r'src="([^"]+)"', html):
            assert (page.parent / src).is_file(), (page, src)
        profile = tmp_path / f"profile-{page.stem}"
        done = dump_dom(page, profile, "--enable-logging=stderr", "--v=0")
        console_errors = [
            line
            for line in done.stderr.splitlines()
            if "CONSOLE" in line and "ERROR" in line.upper()
        ]
        assert not console_errors, console_errors
        dom = done.stdout
        assert "<table" in dom, page
        if page.name == "patients.html":  # the curves inline, their points linked to samples
            assert "<svg" in dom, page
        if page.parent.name == "samples":  # binned densities, cropped from one PNG in SVG
            assert "<svg" in dom and "<image" in dom, page
            for href in re.findall(r'<image href="([^"]+)"', html):
                assert (page.parent / href).is_file(), (page, href)
    cohort = (report / "cohort.html").read_text(encoding="utf-8")
    assert "<img" in cohort and "<table" in cohort
    shot = out / "report-screenshot.png"
    subprocess.run(
        [
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={tmp_path / 'shot'}",
            "--window-size=1280,1600",
            f"--screenshot={shot}",
            (report / "index.html").as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("CARTFLOW_SCREENSHOT_DIR")
    if keep:
        shutil.copy(shot, Path(keep) / shot.name)


def test_outcome_tables_in_the_report_keep_patient_ids_and_may_be_empty(tmp_path):
    outcomes = tmp_path / "outcomes"
    outcomes.mkdir()
    (outcomes / "patients.csv").write_text("patient,efs_days\n007,120\n", encoding="utf-8")
    (outcomes / "cutpoints.csv").write_text("\n", encoding="utf-8")  # nothing to report
    store = Store(f"sqlite:///{tmp_path / 'empty.sqlite'}")
    try:
        write_report(store, tmp_path / "report", outcomes_dir=outcomes)
    finally:
        store.close()
    cohort = (tmp_path / "report" / "cohort.html").read_text(encoding="utf-8")
    assert "<td>007</td>" in cohort
    assert "cutpoints" in cohort


def _store_with_car_t_counts(url: str, per_ul: dict[int, float]) -> None:
    """A store holding one patient's memory tubes: CAR-T and bead events giving ``per_ul``
    (5,000 bead events of 50,000 per tube in 50 µL of blood: cells/µL = events / 5)."""
    from cartflow.store import FileRecord, PopulationRecord, SampleRecord

    store = Store(url)
    try:
        run = store.start_run("test", {})
        for day, value in per_ul.items():
            file = FileRecord(f"{day:064d}", f"/b/D{day}.fcs", 1, "3.1", None, 1, 1, False,
                              None, {}, [])  # fmt: skip
            sample = SampleRecord("P1", f"D{day}", day, "memory", "memory-lyric", 1, "0" * 64,
                                  "test", 50.0, 50_000.0, None, None)  # fmt: skip
            sample_id = (
                store.sample_id(file.sha256) if store.record_sample(run, file, sample) else None
            )
            counts = [PopulationRecord("beads", None, 5000, None),
                      PopulationRecord("CAR", "T", round(value * 5), 10_000)]  # fmt: skip
            store.record_gating(run, sample_id, "t", "1" * 64, counts, [])
    finally:
        store.close()


@pytest.mark.parametrize(
    ("options", "expected"),
    [([], 420.0), (["--anchor-day0"], 445.0), (["--log-down"], 407.39)],
)
def test_export_kinetics_and_outcomes_take_the_same_kinetics_options(tmp_path, options, expected):
    """The worked example of the domain notes (10/80/40/20 cells/µL on days 5/7/11/14)."""
    db = f"sqlite:///{tmp_path / 'store.sqlite'}"
    _store_with_car_t_counts(db, {5: 10.0, 7: 80.0, 11: 40.0, 14: 20.0})
    clinical = tmp_path / "clinical.csv"
    clinical.write_text(
        "patient,infusion_date,relapse_date,death_date,last_followup_date\n"
        "P1,2024-01-01,,,2025-01-01\n",
        encoding="utf-8",
    )
    no_figures = tmp_path / "analysis.yaml"
    no_figures.write_text("figures: false\nbootstrap: 10\n", encoding="utf-8")
    for command, extra in (  # each writes the kinetics table it used into its own --out
        ("export", []),
        ("kinetics", []),
        ("outcomes", ["--clinical", str(clinical), "--config", str(no_figures)]),
    ):
        out = tmp_path / command
        result = runner.invoke(app, [command, "--db", db, "--out", str(out), *extra, *options])
        assert result.exit_code == 0, result.output
        kinetics = pd.read_csv(out / "kinetics.csv")
        assert kinetics.loc[0, "car_t_auc14"] == pytest.approx(expected, abs=0.01), command


def test_a_report_into_a_new_folder_without_gating_plots(finished_run, tmp_path):
    """A run with nothing new to gate still writes its report (no overviews to show), and a
    count's flags are shown once, readably."""
    _, db, out = finished_run
    timepoints = pd.read_csv(out / "timepoints.csv", dtype={"patient": str})
    store = Store(db)
    try:
        index = write_report(store, tmp_path / "report", timepoints).index
    finally:
        store.close()
    pages = sorted((tmp_path / "report" / "samples").glob("*.html"))
    assert index.is_file() and pages
    texts = [page.read_text(encoding="utf-8") for page in pages]
    assert not any('src=""' in text for text in texts)
    assert all("No gate plots in this report" in text for text in texts)
    flagged = [text for text in texts if "below LLOQ" in text or "below LOD" in text]
    assert flagged and not any("below_lloq" in text or "below_lod" in text for text in flagged)


@pytest.mark.slow
def test_a_rerun_with_nothing_new_draws_no_plot(finished_run, tmp_path):
    """Each gated sample's plots are drawn once (by the worker that gated it); a re-run over
    the same files draws none and its pages still show every plot."""
    batch, db, out = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy / "out")
    shutil.copy(db.removeprefix("sqlite:///"), copy / "store.sqlite")
    pages = sorted((copy / "out" / "report" / "samples").glob("*.html"))
    before = {page.name: page.read_text(encoding="utf-8").count("<svg") for page in pages}
    drawn = sorted((copy / "out" / "report" / "samples").glob("*.png"))
    assert len(drawn) == len(list(batch.glob("*.fcs"))) and min(before.values()) > 0
    stamps = {png.name: png.stat().st_mtime_ns for png in drawn}
    result = runner.invoke(
        app,
        ["run", str(batch), "--db", f"sqlite:///{copy / 'store.sqlite'}", "--out",
         str(copy / "out"), "--manifest", str(FIXTURE_COHORT / "manifest.csv"),
         "--clinical", str(FIXTURE_COHORT / "clinical.csv")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "(0 samples' plots and 0 patient figures drawn" in " ".join(result.output.split())
    assert {png.name: png.stat().st_mtime_ns for png in drawn} == stamps
    after = {page.name: page.read_text(encoding="utf-8").count("<svg") for page in pages}
    assert after == before
