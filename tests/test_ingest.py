"""Ingest of real batches: identify, validate, record; quarantine bad files; never twice."""

from __future__ import annotations

import csv
import shutil
from datetime import date
from pathlib import Path

import pytest

from cartflow.panels.identity_rules import IdentityRules
from cartflow.pipeline.identity import load_manifest
from cartflow.run.ingest import ingest_batch, scan_batch, write_quarantine_report
from cartflow.store import Store
from tests import fcsparser_reference
from tests.conftest import FCSPARSER_DATA, FIXTURE_COHORT, QUIRKS, require_shared
from tests.fcs_mutate import rewrite


@pytest.fixture(scope="module")
def cohort() -> Path:
    if not (FIXTURE_COHORT / "manifest.csv").is_file():
        pytest.fail("fixtures/cohort is missing: regenerate it (see fixtures/cohort/README.md)")
    return FIXTURE_COHORT


def _manifest_rows(cohort: Path) -> dict[str, dict[str, str]]:
    with (cohort / "manifest.csv").open(encoding="utf-8") as fh:
        return {row["file"]: row for row in csv.DictReader(fh)}


def test_cohort_is_ingested_and_identified(cohort, store):
    report = ingest_batch(cohort, store, load_manifest(cohort / "manifest.csv"))
    rows = _manifest_rows(cohort)
    assert report.exit_code == 0, [o.detail for o in report.with_status("quarantined")]
    assert len(report.with_status("accepted")) == len(rows) == len(scan_batch(cohort))
    samples = {s.file: s for s in store.samples()}
    for name, row in rows.items():
        sample = samples[Path(name).name]
        assert (sample.patient, sample.timepoint, sample.tube) == (
            row["patient"],
            row["timepoint"],
            row["tube"],
        )
        assert sample.panel_id.startswith(row["tube"])


def test_identity_without_manifest_comes_from_keywords(cohort, store):
    report = ingest_batch(cohort, store)
    assert report.exit_code == 0
    rows = _manifest_rows(cohort)
    for sample in store.samples():
        row = rows[sample.file]
        assert (sample.patient, sample.timepoint, sample.tube) == (
            row["patient"],
            row["timepoint"],
            row["tube"],
        )


def test_second_ingest_adds_nothing(cohort, store):
    manifest = load_manifest(cohort / "manifest.csv")
    ingest_batch(cohort, store, manifest)
    before = store.row_counts()
    again = ingest_batch(cohort, store, manifest)
    after = store.row_counts()
    assert {o.status for o in again.outcomes} == {"known"}
    assert after["runs"] == before["runs"] + 1
    assert {k: v for k, v in after.items() if k != "runs"} == {
        k: v for k, v in before.items() if k != "runs"
    }


def _small_batch(cohort: Path, target: Path, count: int = 3) -> list[Path]:
    target.mkdir()
    copies = []
    for source in sorted(cohort.glob("*.fcs"))[:count]:
        copies.append(Path(shutil.copy(source, target / source.name)))
    return copies


def test_same_content_under_another_name_is_a_duplicate(cohort, store, tmp_path):
    batch = tmp_path / "batch"
    first, *_ = _small_batch(cohort, batch)
    shutil.copy(first, batch / "renamed copy.fcs")
    report = ingest_batch(batch, store)
    duplicates = report.with_status("duplicate")
    assert [o.path.name for o in duplicates] == ["renamed copy.fcs"]
    assert store.row_counts()["files"] == 3
    later = tmp_path / "later"
    later.mkdir()
    shutil.copy(first, later / "another name.fcs")
    report = ingest_batch(later, store)
    assert [o.status for o in report.outcomes] == ["duplicate"]
    assert store.row_counts()["files"] == 3
    assert store.row_counts()["file_names"] == 4


BAD_FILES = {
    # fcsparser's corpus (None without fcsparser's environment: the test then skips)
    "corrupted.fcs": (FCSPARSER_DATA and FCSPARSER_DATA / "corrupted/corrupted.fcs", "truncated"),
    "G11.fcs": (QUIRKS / "G11.fcs", "no patient"),
}


def test_bad_files_are_quarantined_and_the_batch_goes_on(cohort, store, tmp_path):
    fcsparser_reference.require()
    batch = tmp_path / "batch"
    good = _small_batch(cohort, batch)
    for name, (source, _) in BAD_FILES.items():
        shutil.copy(require_shared(source), batch / name)
    (batch / "empty.fcs").write_bytes(b"")
    report = ingest_batch(batch, store)
    assert report.exit_code == 2
    assert len(report.with_status("accepted")) == len(good)
    reasons = {o.path.name: o.detail for o in report.with_status("quarantined")}
    assert set(reasons) == {*BAD_FILES, "empty.fcs"}
    for name, (_, fragment) in BAD_FILES.items():
        assert fragment in reasons[name]
    assert "truncated" in reasons["empty.fcs"]
    assert len(store.quarantined()) == 3
    report_file = write_quarantine_report(report, tmp_path / "out")
    lines = report_file.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4 and lines[0] == "file,sha256,kind,reason"
    again = ingest_batch(batch, store)
    assert again.exit_code == 2
    assert len(store.quarantined()) == 3
    assert store.row_counts()["files"] == len(good)


def test_file_missing_a_marker_is_rejected_naming_it(cohort, store, tmp_path):
    rows = _manifest_rows(cohort)
    name = next(n for n, r in rows.items() if r["tube"] == "memory")
    batch = tmp_path / "batch"
    batch.mkdir()
    from cartflow.io.fcs import read_fcs

    fcs = read_fcs(cohort / name, events=False)
    index = next(c.index for c in fcs.channels if c.marker and c.marker.startswith("CD27"))
    rewrite(cohort / name, batch / name, **{f"P{index}S": "CD28 PE-Cy7"})
    report = ingest_batch(batch, store)
    [outcome] = report.outcomes
    assert outcome.status == "quarantined"
    assert outcome.kind == "panel-mismatch"
    assert "missing marker(s) CD27" in outcome.detail


def test_file_not_in_manifest_is_quarantined(cohort, store, tmp_path):
    batch = tmp_path / "batch"
    _small_batch(cohort, batch, count=1)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("file,patient,timepoint,tube\nother.fcs,P1,D7,memory\n", encoding="utf-8")
    report = ingest_batch(batch, store, load_manifest(manifest))
    assert [o.kind for o in report.outcomes] == ["identity"]
    assert "not listed in manifest" in report.outcomes[0].detail


def test_a_corrected_manifest_readmits_a_quarantined_file(cohort, store, tmp_path):
    batch = tmp_path / "batch"
    (copy,) = _small_batch(cohort, batch, count=1)
    wrong, right = tmp_path / "wrong.csv", tmp_path / "right.csv"
    wrong.write_text("file,patient,timepoint,tube\nother.fcs,P1,D7,memory\n", encoding="utf-8")
    row = _manifest_rows(cohort)[copy.name]
    right.write_text(
        f"file,patient,timepoint,tube\n{copy.name},{row['patient']},{row['timepoint']},"
        f"{row['tube']}\n",
        encoding="utf-8",
    )
    assert ingest_batch(batch, store, load_manifest(wrong)).outcomes[0].status == "quarantined"
    again = ingest_batch(batch, store, load_manifest(wrong)).outcomes[0]
    assert (again.status, again.kind, again.new) == ("quarantined", "identity", False)
    assert "not listed in manifest" in again.detail and "(quarantined before)" in again.detail
    assert ingest_batch(batch, store, load_manifest(right)).outcomes[0].status == "accepted"


def test_a_broken_file_stays_quarantined_with_its_reason(store, tmp_path):
    batch = tmp_path / "batch"
    batch.mkdir()
    (batch / "broken.fcs").write_bytes(b"FCS3.1" + b" " * 10)
    first = ingest_batch(batch, store).outcomes[0]
    again = ingest_batch(batch, store).outcomes[0]
    assert (again.status, again.kind, again.new) == ("quarantined", first.kind, False)
    assert again.detail == f"{first.detail} (quarantined before)"


def test_a_broken_link_is_reported_not_skipped(store, tmp_path):
    batch = tmp_path / "batch"
    batch.mkdir()
    (batch / "gone.fcs").symlink_to(tmp_path / "nowhere.fcs")
    (batch / "loop.fcs").symlink_to(batch / "loop.fcs")
    outcomes = {o.path.name: o for o in ingest_batch(batch, store).outcomes}
    assert {name: o.status for name, o in outcomes.items()} == {
        "gone.fcs": "quarantined",
        "loop.fcs": "quarantined",
    }
    assert "No such file" in outcomes["gone.fcs"].detail
    assert "symbolic links" in outcomes["loop.fcs"].detail


def test_sqlite_store_file_is_created_where_asked(tmp_path):
    store = Store(tmp_path / "deep" / "dir" / "s.sqlite")
    store.close()
    assert (tmp_path / "deep" / "dir" / "s.sqlite").exists()


def test_fixture_cohort_regenerates_byte_for_byte(cohort, tmp_path):
    from cartflow.simulate import SimulationConfig, simulate_cohort

    simulate_cohort(tmp_path / "again", SimulationConfig(patients=3, seed=20251121, events=1600))
    made = sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*.*"))
    committed = sorted(p.relative_to(cohort) for p in cohort.rglob("*.*") if p.name != "README.md")
    assert made == committed
    for relative in made:
        if relative.suffix in {".fcs", ".csv"}:
            assert (tmp_path / "again" / relative).read_bytes() == (cohort / relative).read_bytes()


@pytest.mark.parametrize("cytometer", ["FACSCanto II", "FACSLyric"])
def test_generated_cohorts_are_accepted_and_identified(cytometer, store, simulated):
    from cartflow.simulate import SimulationConfig

    # one cohort per cytometer for both stores
    summary = simulated(SimulationConfig(patients=2, seed=5, events=2000, cytometer=cytometer))
    report = ingest_batch(summary.out_dir, store)  # identity from keywords, no manifest
    assert report.exit_code == 0, [o.detail for o in report.with_status("quarantined")]
    rows = _manifest_rows(summary.out_dir)
    samples = store.samples()
    assert len(samples) == len(rows) == len(summary.files)
    suffix = "canto" if cytometer == "FACSCanto II" else "lyric"
    for sample in samples:
        row = rows[sample.file]
        assert (sample.patient, sample.timepoint, sample.tube) == (
            row["patient"],
            row["timepoint"],
            row["tube"],
        )
        assert sample.panel_id == f"{row['tube']}-{suffix}"


def test_same_named_files_in_subfolders_are_not_given_one_manifest_row(cohort, store, tmp_path):
    batch = tmp_path / "batch"
    first, second = sorted(cohort.glob("*memory*.fcs"))[:2]
    for folder, source in (("a", first), ("b", second)):
        (batch / folder).mkdir(parents=True)
        shutil.copy(source, batch / folder / "tube.fcs")
    manifest = tmp_path / "manifest.csv"
    row = _manifest_rows(cohort)[first.name]  # the file that stays
    manifest.write_text(
        f"file,patient,timepoint,tube\ntube.fcs,{row['patient']},{row['timepoint']},memory\n",
        encoding="utf-8",
    )
    outcomes = ingest_batch(batch, store, load_manifest(manifest)).outcomes
    assert [o.status for o in outcomes] == ["quarantined", "quarantined"]
    assert all("several files of the batch are named 'tube.fcs'" in o.detail for o in outcomes)
    shutil.move(batch / "b" / "tube.fcs", tmp_path / "elsewhere.fcs")  # the clash resolved
    (again,) = ingest_batch(batch, store, load_manifest(manifest)).outcomes
    assert again.status == "accepted"


def _spill_lie(source: Path, target: Path) -> Path:
    return rewrite(source, target, SPILLOVER="3,FITC-A,PE-A,APC-A,1,0.1")


def _shifted(source: Path, target: Path) -> Path:
    from tests.fcs_mutate import misalign_data

    return misalign_data(source, target)


def _understated(source: Path, target: Path) -> Path:
    from cartflow.io.fcs import read_fcs

    return rewrite(source, target, TOT=str(read_fcs(source, events=False).event_count - 100))


KEYWORD_LIES = {
    "datatype": (lambda s, t: rewrite(s, t, DATATYPE="I"), "$DATATYPE is I, but"),
    "log-decades": (lambda s, t: rewrite(s, t, **{f"P{n}E": "4,1" for n in range(1, 15)}),
                    "the keyword is wrong"),
    "gain": (lambda s, t: rewrite(s, t, **{f"P{n}G": "1e-30" for n in range(1, 14)}),
             "those keywords are wrong"),
    "spillover": (_spill_lie, "spillover matrix is present but unreadable"),
    "tot": (_understated, "$TOT or the DATA offsets are wrong"),
    "offset": (_shifted, "runs backwards"),
}  # fmt: skip


@pytest.mark.parametrize("lie", KEYWORD_LIES)
def test_keyword_lies_are_quarantined_with_the_reason(cohort, store, tmp_path, lie):
    """A file whose TEXT contradicts its DATA is refused at ingest, never gated as ok."""
    mutate, fragment = KEYWORD_LIES[lie]
    source = next(p for p in sorted(cohort.glob("*memory*.fcs")))
    batch = tmp_path / "batch"
    batch.mkdir()
    mutate(source, batch / source.name)
    [outcome] = ingest_batch(batch, store).outcomes
    assert (outcome.status, outcome.kind) == ("quarantined", "fcs-format"), outcome
    assert fragment in outcome.detail
    assert store.row_counts()["samples"] == 0


def test_fifos_and_folders_named_like_fcs_files_are_reported(cohort, store, tmp_path):
    import os

    batch = tmp_path / "batch"
    good = _small_batch(cohort, batch, count=1)
    os.mkfifo(batch / "pipe.fcs")
    (batch / "folder.fcs").mkdir()
    report = ingest_batch(batch, store)  # returns: nothing waits on the FIFO
    reasons = {o.path.name: o.detail for o in report.with_status("quarantined")}
    assert reasons == {
        "pipe.fcs": "is a FIFO (named pipe), not a regular file",
        "folder.fcs": "is a directory, not a regular file",
    }
    assert len(report.with_status("accepted")) == len(good)


def test_a_file_that_changes_after_it_was_stored_replaces_its_sample(cohort, store, tmp_path):
    """The same path with new content and the same identity replaces the stored sample (the
    old one is kept in the replacements table), never adds a second one."""
    import hashlib

    batch = tmp_path / "batch"
    (copy,) = _small_batch(cohort, batch, count=1)
    old_sha = hashlib.sha256(copy.read_bytes()).hexdigest()
    assert ingest_batch(batch, store).outcomes[0].status == "accepted"
    rewrite(cohort / copy.name, copy, COM="exported again")
    [outcome] = ingest_batch(batch, store).outcomes
    assert outcome.status == "accepted" and "replaces the sample" in outcome.detail
    [sample] = store.samples()
    assert sample.sha256 == outcome.sha256 != old_sha
    [replaced] = store.replacements()
    assert (replaced["old_sha256"], replaced["new_sha256"]) == (old_sha, outcome.sha256)
    assert replaced["patient"] == sample.patient


def _swap_batch(cohort: Path, target: Path) -> tuple[Path, Path]:
    """CART-001's and CART-002's D14 memory files, the second labelled CART-001 in the
    manifest (a one-cell typo)."""
    target.mkdir()
    own = Path(shutil.copy(cohort / "CART-001 D14_CAR-T memory_010.fcs", target))
    other = Path(shutil.copy(cohort / "CART-002 D14_CAR-T memory_010.fcs", target))
    rows = _manifest_rows(cohort)
    lines = ["file,patient,timepoint,tube,sample_date"]
    for path in (own, other):
        row = rows[path.name]
        lines.append(f"{path.name},CART-001,{row['timepoint']},memory,{row['sample_date']}")
    (target / "manifest.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return own, other


def test_a_mislabelled_file_is_refused_with_both_values(cohort, store, tmp_path):
    own, other = _swap_batch(cohort, tmp_path / "batch")
    infusion = {"CART-001": date(2024, 2, 22)}
    manifest = load_manifest(tmp_path / "batch" / "manifest.csv")
    report = ingest_batch(tmp_path / "batch", store, manifest, infusion=infusion)
    by_path = {o.path: o for o in report.outcomes}
    assert by_path[own].status == "accepted"
    refused = by_path[other]
    assert (refused.status, refused.kind) == ("quarantined", "identity")
    assert "'CART-001' (manifest line 3)" in refused.detail
    for source in ("keyword PATIENT ID", "file name", "$FIL"):
        assert f"'CART-002' ({source})" in refused.detail
    assert "is day -256 after CART-001's infusion on 2024-02-22" in refused.detail
    assert [s.file for s in store.samples()] == [own.name]
    assert report.exit_code == 2


def test_a_mislabelled_file_can_be_stored_for_review(cohort, store, tmp_path):
    own, other = _swap_batch(cohort, tmp_path / "batch")
    manifest = load_manifest(tmp_path / "batch" / "manifest.csv")
    rules = IdentityRules(on_disagreement="review")
    report = ingest_batch(tmp_path / "batch", store, manifest, rules)
    by_path = {o.path: o for o in report.outcomes}
    assert [o.status for o in report.outcomes] == ["accepted", "accepted"]
    assert "'CART-002' (keyword PATIENT ID)" in by_path[other].review
    assert f"is also {other}" in by_path[own].review  # both sides of the repeat
    assert f"is also {own}" in by_path[other].review
    sources = {s.file: s for s in store.samples()}
    assert len(sources) == 2 and report.exit_code == 2


@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_two_files_for_one_patient_timepoint_tube_are_both_refused(
    cohort, store, tmp_path, order
):
    batch = tmp_path / "batch"
    batch.mkdir()
    source = cohort / "CART-001 D14_CAR-T memory_010.fcs"
    first = Path(shutil.copy(source, batch / "a.fcs"))
    second = rewrite(source, batch / "b.fcs", **{"SAMPLE ID": "FC24-REPEAT"})
    files = [first, second] if order == "forward" else [second, first]
    report = ingest_batch(batch, store, files=files)
    assert [o.status for o in report.outcomes] == ["quarantined", "quarantined"]
    by_path = {o.path: o.detail for o in report.outcomes}
    assert f"CART-001 D14 memory is also {second}" in by_path[first]
    assert f"CART-001 D14 memory is also {first}" in by_path[second]
    assert store.samples() == []
    second.unlink()  # the wrong file removed: the other one is taken
    (again,) = ingest_batch(batch, store).outcomes
    assert again.status == "accepted"
