"""Lab workspaces as FlowJo 10 wrote them (FlowKit's example data, ../shared/real-data/flowkit):
FlowJo's own scales, gates addressed by path, samples matched to files, FlowJo's counts."""

from __future__ import annotations

import inspect
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cartflow.cli import app
from cartflow.gating.engine import evaluate
from cartflow.gating.errors import GatingError
from cartflow.gating.model import Bound, Dimension, GateSet, RangeGate
from cartflow.gating.transforms import FlowJoBiex, FlowJoLog
from cartflow.gating.workspace import load_lab_gates
from tests.conftest import SHARED, require_shared

REAL = SHARED / "real-data"
FLOWKIT = REAL / "flowkit"
EIGHT_COLOUR = FLOWKIT / "8_color_data_set"
RUNNER = CliRunner()


# ------------------------------------------------------------------------------ scales


def test_biex_equals_flowjos_own_table():
    """FlowJo's biex table (channel → value, printed to 6 significant digits), read through
    the transform: each value lands on its channel to 1e-6 of the scale, and each channel
    maps back to its value within the table's printed precision."""
    table = pd.read_csv(
        require_shared(FLOWKIT / "flowjo_xforms")
        / "tr_biex_l256_w-7.943282_n1.000000_m4.418540_r262144.000029.csv",
        dtype=str,
    )
    channels = table["i"].astype(float).to_numpy()
    values = table["lookup[i]"].astype(float).to_numpy()
    biex = FlowJoBiex(negative=1.0, width=-7.943282, positive=4.418540, max_value=262144.000029)
    assert len(table) == 4096
    np.testing.assert_allclose(biex.apply(values) / 4096, channels / 4096, rtol=0, atol=1e-6)
    printed = np.array([10.0 ** (np.floor(np.log10(abs(v))) - 5) if v else 1e-6 for v in values])
    inside = channels > 0  # channel 0 is the bottom of the scale, where lower values land too
    assert np.all(np.abs(biex.inverse(channels[inside]) - values[inside]) <= printed[inside])
    assert biex.apply(np.array([values[0] - 1000.0]))[0] == 0


@pytest.mark.parametrize(
    "transform",
    [FlowJoLog(offset=1.0, decades=5.0), FlowJoBiex(0.0, -10.0, 4.418539922, 262144.0)],
    ids=["log", "biex"],
)
def test_flowjo_scales_clip_as_flowjo_does(transform):
    """Below FlowJo's log offset (and beyond the biex table) every value lands on the end of
    the scale; a range reaching that end keeps them, on raw cuts as on transformed values."""
    rng = np.random.default_rng(7)
    values = np.concatenate([rng.normal(0, 5000, 4000), rng.uniform(-2e6, 2e6, 1000)])
    events = values.astype(np.float32).reshape(-1, 1)
    top = float(transform.apply(np.array([1e12]))[0])
    cuts = [0.0, top * 1e-9, top * 0.25, top * 0.5, top]
    gates = tuple(
        RangeGate(f"r{i}", None, Bound(Dimension("x", None, "s"), low, high))
        for i, (low, high) in enumerate([(c, None) for c in cuts] + [(None, c) for c in cuts])
    )
    gate_set = GateSet(gates, {"s": transform})
    raw = evaluate(gate_set, events, ["x"])
    compared = evaluate(gate_set, events, ["x"], ranges_in_raw_space=False)
    scaled = transform.apply(events[:, 0])
    assert np.all(scaled[values < -1e6] == 0)
    for gate in gates:
        assert raw.count(gate.id) == compared.count(gate.id), gate.id
    assert raw.count("r0") == len(values)  # everything is at or above the bottom of the scale


# ------------------------------------------------------------------------------ gates by path


def _flowkit_paths(wsp: Path) -> dict[str, set[str]]:
    import flowkit

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # FlowKit 1.3 renamed ignore_missing_files to load_missing_file_data
        option = next(
            o
            for o in ("load_missing_file_data", "ignore_missing_files")
            if o in inspect.signature(flowkit.Workspace).parameters
        )
        workspace = flowkit.Workspace(str(wsp), **{option: True})
    paths = {}
    for sample in workspace.get_sample_ids(loaded_only=False):
        strategy = workspace.get_gating_strategy(sample)
        paths[sample] = {"/".join((*path[1:], name)) for name, path in strategy.get_gate_ids()}
    return paths


@pytest.mark.parametrize(
    ("name", "gates"),
    [
        ("8_color_ICS.wsp", 14),
        ("8_color_ICS_boolean_gate_testing.wsp", 20),
        ("8_color_ICS_simple.wsp", 4),
        ("8_color_ICS_with_ellipse.wsp", 15),
        ("8_color_ICS_sample_without_gates.wsp", 4),
        ("reused_quad_gate_with_child.wsp", 13),
    ],
)
def test_every_gate_flowkit_reads_is_there_by_its_path(name, gates):
    wsp = require_shared(EIGHT_COLOUR / name)
    workspace = load_lab_gates(wsp)
    expected = _flowkit_paths(wsp)
    assert {s.name for s in workspace.samples} == set(expected)
    for sample in workspace.samples:
        read = set(workspace.gate_set(sample).population_ids)
        assert read == expected[sample.name], sample.name
        assert read == {p.path for p in sample.populations}, sample.name
    assert max(len(v) for v in expected.values()) == gates


def test_equal_names_under_different_parents_stay_distinct():
    workspace = load_lab_gates(require_shared(EIGHT_COLOUR / "8_color_ICS.wsp"))
    ids = workspace.gate_set(workspace.samples[0]).population_ids
    for marker in ("CD107a+", "IFNg+", "IL2+", "TNFa+"):
        for parent in ("CD4+", "CD8+"):
            assert f"Time/Singlets/aAmine-/CD3+/{parent}/{marker}" in ids


def test_a_gate_named_dot_is_read():
    """FlowKit refuses this workspace ('.' is not a name its gate tree can hold); every
    population of it is read all the same, the '.' ones by their own name."""
    workspace = load_lab_gates(require_shared(EIGHT_COLOUR / "8_color_ICS_dot_gate_name.wsp"))
    for sample in workspace.samples:
        ids = workspace.gate_set(sample).population_ids
        stored = [p.path for p in sample.populations]
        assert set(ids) == set(stored) and len(ids) == 14
        assert any(i.split("/")[-1] == "." for i in ids), sample.name


def test_a_sample_without_gates_is_read_and_said_to_have_none():
    workspace = load_lab_gates(
        require_shared(EIGHT_COLOUR / "8_color_ICS_sample_without_gates.wsp")
    )
    empty = workspace.sample("101_DEN084Y5_15_E05_010_clean.fcs")
    assert workspace.gate_set(empty).gates == () and empty.populations == ()
    assert empty.groups == ("All Samples", "DEN")
    with pytest.raises(GatingError, match=r"E05_010_clean\.fcs.*has no gates"):
        workspace.gates_for("101_DEN084Y5_15_E05_010_clean.fcs")


def test_a_gate_flowkit_cannot_read_is_named(tmp_path):
    """A population whose gate cannot be read is an error naming its path and its kind."""
    source = require_shared(EIGHT_COLOUR / "8_color_ICS_simple.wsp").read_text()
    marker = '<Population name="CD3+"'
    start = source.index(marker)
    gate_start = source.index("<gating:PolygonGate", start)
    gate_end = source.index("</gating:PolygonGate>", gate_start) + len("</gating:PolygonGate>")
    mangled = source[:gate_start] + "<gating:SpiderGate/>" + source[gate_end:]
    (wsp := tmp_path / "spider.wsp").write_text(mangled)
    with pytest.raises(
        GatingError,
        match=r"spider\.wsp: (group|sample) .*: gate 'Time/Singlets/aAmine-/"
        r"CD3\+' is a FlowJo SpiderGate, which cartflow cannot read",
    ):
        load_lab_gates(wsp)


def test_a_scale_cartflow_cannot_read_is_named(tmp_path):
    source = require_shared(EIGHT_COLOUR / "8_color_ICS_simple.wsp").read_text()
    start = source.index("<transforms:logicle", source.index("<SampleList>"))
    end = source.index("</transforms:logicle>", start) + len("</transforms:logicle>")
    element = source[start:end].replace("transforms:logicle", "transforms:exponential")
    (wsp := tmp_path / "odd.wsp").write_text(source[:start] + element + source[end:])
    with pytest.raises(
        GatingError,
        match=r"odd\.wsp: sample .*: parameter '.+' is on "
        "FlowJo's exponential scale, which cartflow cannot read",
    ):
        load_lab_gates(wsp)


# ------------------------------------------------------------------------------ files to samples


def test_a_file_is_matched_by_name_then_event_count(tmp_path):
    wsp = require_shared(FLOWKIT / "simple_diamond_example" / "test_data_diamond_biex_rect.wsp")
    fcs = FLOWKIT / "simple_diamond_example" / "test_data_diamond_01.fcs"
    renamed = tmp_path / "renamed.fcs"
    shutil.copy(fcs, renamed)
    by_name = RUNNER.invoke(app, ["gate", str(fcs), "--gates", str(wsp), "--json"])
    by_count = RUNNER.invoke(app, ["gate", str(renamed), "--gates", str(wsp), "--json"])
    assert by_name.exit_code == 0 and by_count.exit_code == 0, by_count.output
    assert json.loads(by_name.output)["counts"] == json.loads(by_count.output)["counts"]
    other = FLOWKIT / "simple_line_example" / "data_set_simple_line_100.fcs"
    refused = RUNNER.invoke(app, ["gate", str(other), "--gates", str(wsp)])
    assert refused.exit_code == 1
    message = refused.output.replace("\n", "")
    assert "data_set_simple_line_100.fcs" in message
    assert "matches no sample" in message and "test_data_diamond_01.fcs" in message


# ------------------------------------------------------------------------------ FlowJo's counts


def _examples() -> list[tuple[Path, Path]]:
    pairs = []
    for folder in ("simple_diamond_example", "simple_line_example"):
        for wsp in sorted((FLOWKIT / folder).glob("*.wsp")):
            pairs.append((wsp, next((FLOWKIT / folder).glob("*.fcs"))))
    return pairs


def _flowkit_counts(wsp: Path, fcs: Path, sample: str) -> dict[str, int]:
    import flowkit

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        workspace = flowkit.Workspace(str(wsp), fcs_samples=[str(fcs)])
        workspace.analyze_samples(sample_id=sample)
    report = workspace.get_gating_results(sample).report
    return {
        "/".join(p for p in (*str(path).split("/")[1:], name) if p): int(count)
        for name, path, count in zip(
            report["gate_name"], report["gate_path"].map(lambda p: "/".join(p)),
            report["count"], strict=True,
        )
    }  # fmt: skip


COUNTS_TABLE = [
    # workspace, population, FlowJo's stored count, FlowKit's, cartflow's
    ("simple_diamond_example_quad_gate.wsp", "Q1: channel_A- , channel_B+", 49671, 49671, 49671),
    ("simple_diamond_example_quad_gate.wsp", "Q2: channel_A+ , channel_B+", 50596, 50596, 50596),
    ("simple_diamond_example_quad_gate.wsp", "Q3: channel_A+ , channel_B-", 50330, 50330, 50330),
    ("simple_diamond_example_quad_gate.wsp", "Q4: channel_A- , channel_B-", 49403, 49403, 49403),
    ("test_data_diamond_asinh_rect.wsp", "upper_right", 50559, 50559, 50559),
    ("test_data_diamond_asinh_rect2.wsp", "upper_right", 50699, 50699, 50699),
    ("test_data_diamond_biex_rect.wsp", "upper_right", 50605, 50605, 50605),
    ("simple_poly_and_rect.wsp", "poly1", None, 0, 0),
    ("simple_poly_and_rect.wsp", "rect1", None, 0, 0),
    ("simple_poly_and_rect_v2_poly50.wsp", "poly1", 0, 50, 50),
    ("simple_poly_and_rect_v2_poly50.wsp", "rect1", 0, 0, 0),
    ("single_ellipse_51_events.wsp", "ellipse1", 51, 51, 51),
]
"""Every population of every FlowKit example workspace that comes with its FCS file. FlowJo
stored no count in simple_poly_and_rect.wsp, and 0 for poly1 of the v2 workspace (its file
was not at hand when it was saved, by the look of it); FlowKit counts 50 there."""


def test_counts_of_every_example_workspace_are_flowjos():
    """`gate FCS --gates WSP` on each example: a population's count equals FlowJo's stored
    count where FlowKit reproduces it, and is otherwise no farther from it than FlowKit's."""
    table = []
    for wsp, fcs in _examples():
        result = RUNNER.invoke(
            app, ["gate", str(require_shared(fcs)), "--gates", str(wsp), "--json"]
        )
        assert result.exit_code == 0, result.output
        counts = json.loads(result.output)["counts"]
        sample = load_lab_gates(wsp).match(fcs.name)
        stored = sample.stored_counts()
        flowkit = _flowkit_counts(wsp, fcs, sample.name)
        assert set(counts) == {p.path for p in sample.populations}, wsp.name
        for population, count in counts.items():
            flowjo, theirs = stored.get(population), flowkit[population]
            if flowjo is not None and theirs == flowjo:
                assert count == flowjo, (wsp.name, population)
            elif flowjo is not None:
                assert abs(count - flowjo) <= abs(theirs - flowjo), (wsp.name, population)
            table.append((wsp.name, population, flowjo, theirs, count))
    assert table == COUNTS_TABLE


# ------------------------------------------------------------------------------ review exports


def test_run_writes_one_batch_workspace_flowkit_counts_as_cartflow(tmp_path, cli_cohort):
    """`run --review`: one FlowJo 10 workspace of the batch, every sample in it; moved with
    its batch to another folder, FlowKit finds the FCS files and counts every population as
    cartflow stored it. Gating-ML per sample beside it. `export --review` writes the same
    from the store, one workspace per patient, with the same counts."""
    import flowkit

    from cartflow.store import Store

    batch = tmp_path / "lab" / "batch"
    batch.mkdir(parents=True)
    for fcs in sorted(cli_cohort.glob("CART-001 D11_*.fcs")):
        shutil.copy(fcs, batch / fcs.name)
    out, db = tmp_path / "lab" / "out", f"sqlite:///{tmp_path / 'store.sqlite'}"
    result = RUNNER.invoke(
        app, ["run", str(batch), "--db", db, "--out", str(out), "--no-report", "--review",
              "--workers", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.stem for p in (out / "review" / "gatingml").glob("*.xml")) == sorted(
        p.stem for p in batch.glob("*.fcs")
    )
    names = sorted(p.name for p in batch.glob("*.fcs"))
    exported = RUNNER.invoke(
        app, ["export", "--out", str(tmp_path / "lab" / "export"), "--db", db, "--review"]
    )
    assert exported.exit_code == 0 and "review: 1 FlowJo workspace(s)" in exported.output
    per_patient = load_lab_gates(tmp_path / "lab" / "export" / "review" / "CART-001.wsp")
    assert sorted(s.name for s in per_patient.samples) == names
    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "lab", moved)
    wsp = moved / "out" / "review" / "batch.wsp"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        workspace = flowkit.Workspace(str(wsp), find_fcs_files_from_wsp=True)
        assert sorted(workspace.get_sample_ids()) == names
        workspace.analyze_samples()
    review = load_lab_gates(wsp)
    assert {g: len([s for s in review.samples if g in s.groups]) for g in review.groups} == {
        "batch": 3, "patient CART-001": 3, "tube bcell": 1, "tube function": 1, "tube memory": 1
    }  # fmt: skip
    memory = next(s for s in review.samples if "memory" in s.name)
    paths = [p.path for p in memory.populations]
    assert not any("(2 of 4)" in p for p in paths)  # helper steps show what they test
    assert any(p.endswith("CAR_CD8_SCM::CD45RA+/CD62L+/CD27++/CAR_CD8_SCM") for p in paths)
    assert not any(p.endswith("/CAR_CD8_SCM::CD62L+") for p in paths)  # folded into it
    store = Store(db, existing=True)
    try:
        stored = store.latest_counts()
    finally:
        store.close()
    assert len({row.file for row in stored}) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        patient = flowkit.Workspace(
            str(moved / "export" / "review" / "CART-001.wsp"), find_fcs_files_from_wsp=True
        )
        patient.analyze_samples()
    for row in stored:
        exported_report = patient.get_gating_results(row.file).report
        exported_counts = dict(
            zip(exported_report["gate_name"], exported_report["count"], strict=True)
        )
        assert exported_counts[row.population] == row.count, row.population
        report = workspace.get_gating_results(row.file).report
        counts = dict(zip(report["gate_name"], report["count"], strict=True))
        assert counts[row.population] == row.count, (row.file, row.population)


# ------------------------------------------------------------------------------ FACSDiva, FlowJo 9

DIVA = REAL / "diva"


def test_diva_gates_count_within_one_percent_of_divas_own():
    """PE_2.xml's tube for 124500.fcs: DIVA's own gates (rectangles on FSC/SSC height and
    width, polygons on its biexponential display, an interval on a log axis), applied by
    `gate --gates`, count within 1 % of the counts DIVA stored."""
    fcs, xml = require_shared(DIVA / "124500.fcs"), DIVA / "PE_2.xml"
    result = RUNNER.invoke(app, ["gate", str(fcs), "--gates", str(xml), "--json"])
    assert result.exit_code == 0, result.output
    counts = json.loads(result.output)["counts"]
    stored = load_lab_gates(xml).match(fcs.name).stored_counts()
    assert stored == {
        "P1": 17902, "P1/P2": 17543, "P1/P2/P3": 12334, "P1/P2/P3/P4": 1160,
        "P1/P2/P3/P4/P5": 1100,
    }  # fmt: skip
    assert set(counts) == set(stored)
    assert json.loads(result.output)["lab_counts"] == stored  # shown beside cartflow's
    for population, count in counts.items():
        assert abs(count - stored[population]) <= 0.01 * stored[population], population


def test_diva_gates_cartflow_cannot_read_are_named():
    experiment = load_lab_gates(require_shared(DIVA / "PE_2.xml"))
    control = experiment.match("124480.fcs")
    assert control.specimen == "Compensation Controls"
    with pytest.raises(
        GatingError,
        match=r"tube 124480\.fcs: gate 'Rest of All Events' is a "
        "DIVA RestOf_Classifier, which cartflow cannot read",
    ):
        experiment.gate_set(control)
    quadrants = experiment.gate_set(experiment.match("124506.fcs")).population_ids
    assert [q for q in quadrants if q.startswith("P1/P2/Q")] == [
        f"P1/P2/Q{i}" for i in (1, 2, 3, 4)
    ]


def test_flowjo_9_gates_count_close_to_flowjos_own():
    """A2004Analysis.xml (FlowJo 9.2): polygons drawn on FlowJo's calibration tables and
    ranges drawn on histograms, applied to the sample its $FIL names: FlowJo's stored counts
    within 2 % (or 6 events, for the small ones)."""
    folder = REAL / "flowjo9"
    fcs = require_shared(folder / "a2004_O1T2pb05i_A2_A02.fcs")
    xml = folder / "A2004Analysis.xml"
    result = RUNNER.invoke(app, ["gate", str(fcs), "--gates", str(xml), "--json"])
    assert result.exit_code == 0, result.output
    counts = json.loads(result.output)["counts"]
    sample = load_lab_gates(xml).match(fcs.name)
    assert sample.event_count == 45363  # the second sample of the two named a2004_O1T2pb05i
    stored = sample.stored_counts()
    assert set(counts) == {p.path for p in sample.populations} and len(counts) == 19
    compared = [p for p in counts if p in stored]
    assert len(compared) == 18  # FlowJo stored no count for CD14-MHC2- of this sample
    for population in compared:
        allowed = max(6, 0.02 * stored[population])
        assert abs(counts[population] - stored[population]) <= allowed, population
    assert abs(counts["Live"] - stored["Live"]) <= 0.002 * stored["Live"]


def test_a_flowjo_9_gate_cartflow_cannot_read_is_named_with_the_way_forward(tmp_path):
    from lxml import etree

    parser = etree.XMLParser(resolve_entities=False, load_dtd=False, no_network=True)
    document = etree.parse(str(require_shared(REAL / "flowjo9" / "A2004Analysis.xml")), parser)
    first = document.getroot().find("SampleList/Sample/SampleNode/Population/PolygonGate")
    first.tag = "EllipseGate"
    mangled = etree.tostring(document)
    (xml := tmp_path / "fj9.xml").write_bytes(mangled)
    workspace = load_lab_gates(xml)
    with pytest.raises(
        GatingError,
        match=r"FlowJo 9\.2 sample .*: gate 'Live' is a EllipseGate, "
        r"which cartflow cannot read .*open the workspace in FlowJo 10 and save",
    ):
        workspace.gate_set(workspace.samples[0])


# ------------------------------------------------------------------------------ lab gates in run


def test_run_gates_a_tube_with_a_labs_workspace_and_keeps_where_it_came_from(tmp_path, cli_cohort):
    """`run --gates memory=lab.wsp`: the memory tube is gated by the lab's fixed gates, the
    counts are those `gate --gates` gives, the store names the workspace, its SHA-256 and
    sample as the gating's source; a memory file the workspace does not hold fails alone,
    with the workspace's samples named, and the other tubes keep their template."""
    import hashlib

    from sqlalchemy import select

    from cartflow.store import GateRow, Store

    batch = tmp_path / "batch"
    batch.mkdir()
    chosen = [
        *cli_cohort.glob("CART-001 D11_*.fcs"),
        *cli_cohort.glob("CART-001 D14_CAR-T memory_*.fcs"),
    ]
    for fcs in chosen:
        shutil.copy(fcs, batch / fcs.name)
    lab_file = next(batch.glob("CART-001 D11_CAR-T memory_*.fcs"))
    other = next(batch.glob("CART-001 D14_CAR-T memory_*.fcs"))
    wsp = tmp_path / "lab.wsp"
    assert RUNNER.invoke(app, ["gate", str(lab_file), "--flowjo", str(wsp)]).exit_code == 0
    fixed = json.loads(
        RUNNER.invoke(app, ["gate", str(lab_file), "--gates", str(wsp), "--json"]).output
    )["counts"]
    db = f"sqlite:///{tmp_path / 'store.sqlite'}"
    result = RUNNER.invoke(
        app, ["run", str(batch), "--db", db, "--out", str(tmp_path / "out"), "--no-report",
              "--workers", "1", "--gates", f"memory={wsp}"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert f"gating failed: {other.name}" in output and "matches no sample of lab.wsp" in output
    store = Store(db, existing=True)
    try:
        samples = {s.file: s for s in store.samples()}
        trail = store.provenance(samples[lab_file.name].sample_id)["gatings"][-1]
        bcell = samples[next(batch.glob("*BCELL*")).name]
        template_trail = store.provenance(bcell.sample_id)["gatings"][-1]
        with store.engine.connect() as connection:
            evidence = connection.execute(
                select(GateRow.gate, GateRow.evidence).where(
                    GateRow.gating_id == trail["gating_id"]
                )
            ).all()
    finally:
        store.close()
    assert trail["template_id"] == "lab:lab.wsp" and trail["status"] == "ok"
    assert trail["template_sha256"] == hashlib.sha256(wsp.read_bytes()).hexdigest()
    assert trail["counts"] == fixed
    assert {c["method"] for c in trail["cuts"].values()} == {"fixed"}
    assert template_trail["template_id"] != "lab:lab.wsp"
    assert {gate for gate, _ in evidence} == set(fixed)
    for _, where in evidence:
        assert where["source"] == str(wsp) and where["sample"] == lab_file.name
        assert where["sha256"] == trail["template_sha256"]


def test_a_configuration_folder_gates_a_tube_with_its_gates_file(tmp_path, cli_cohort):
    """A lab configuration's `gates/memory.wsp` gates the memory tube in `run --config`
    (config check reads it), the other tubes keep their templates."""
    batch = tmp_path / "batch"
    batch.mkdir()
    for fcs in cli_cohort.glob("CART-001 D11_*.fcs"):
        shutil.copy(fcs, batch / fcs.name)
    memory = next(batch.glob("*memory*.fcs"))
    config = tmp_path / "config"
    assert RUNNER.invoke(app, ["config", "init", str(config)]).exit_code == 0
    (config / "gates").mkdir()
    wsp = config / "gates" / "memory.wsp"
    assert RUNNER.invoke(app, ["gate", str(memory), "--flowjo", str(wsp)]).exit_code == 0
    checked = RUNNER.invoke(app, ["config", "check", str(config)])
    assert checked.exit_code == 0, checked.output
    (config / "gates" / "function.txt").write_text("not gates")
    assert RUNNER.invoke(app, ["config", "check", str(config)]).exit_code != 0
    (config / "gates" / "function.txt").unlink()
    db = f"sqlite:///{tmp_path / 'store.sqlite'}"
    result = RUNNER.invoke(
        app, ["run", str(batch), "--db", db, "--out", str(tmp_path / "out"), "--no-report",
              "--workers", "1", "--config", str(config)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    from cartflow.store import Store

    store = Store(db, existing=True)
    try:
        used = {
            s.tube: store.provenance(s.sample_id)["gatings"][-1]["template_id"]
            for s in store.samples()
        }
    finally:
        store.close()
    assert used["memory"] == "lab:memory.wsp"
    assert all(not t.startswith("lab:") for tube, t in used.items() if tube != "memory")


# ------------------------------------------------------------------------------ sample groups


def test_a_sample_group_gives_its_own_gates_and_samples_keep_theirs():
    """8_color_ICS.wsp: the DEN group's gates (`lab.wsp#DEN`) are its template; two samples
    of it carry their own Time gate (FlowJo's per-sample gates), read as theirs."""
    wsp = require_shared(EIGHT_COLOUR / "8_color_ICS.wsp")
    group = load_lab_gates(f"{wsp}#DEN")
    workspace = load_lab_gates(wsp)
    assert group.match("any.fcs").stored_counts() == {}
    template = {g.id: g for g in group.gates_for("any.fcs").gates}
    assert len(template) == 14
    own = {}
    for sample in workspace.samples:
        gates = {g.id: g for g in workspace.gate_set(sample).gates}
        assert set(gates) == set(template)
        own[sample.name] = sorted(i for i in gates if gates[i] != template[i])
    assert own == {
        "101_DEN084Y5_15_E01_008_clean.fcs": ["Time"],
        "101_DEN084Y5_15_E03_009_clean.fcs": [],
        "101_DEN084Y5_15_E05_010_clean.fcs": ["Time"],
    }
    with pytest.raises(GatingError, match=r"has no sample group 'NOPE' \(its groups: All Samples"):
        load_lab_gates(f"{wsp}#NOPE")


def test_a_group_gates_any_file_and_a_samples_own_gate_stays_its_own():
    """simple_poly_and_rect_v2_poly50.wsp: the sample's poly1 was redrawn on the sample
    (FlowJo: owningGroup ""), away from my_group's poly1: the file gated as its sample counts
    50 in poly1 (FlowKit's count), gated by the group's template (any file) 0."""
    folder = require_shared(FLOWKIT / "simple_line_example")
    fcs = folder / "data_set_simple_line_100.fcs"
    wsp = folder / "simple_poly_and_rect_v2_poly50.wsp"
    by_group = RUNNER.invoke(app, ["gate", str(fcs), "--gates", f"{wsp}#my_group", "--json"])
    by_sample = RUNNER.invoke(app, ["gate", str(fcs), "--gates", str(wsp), "--json"])
    assert by_group.exit_code == 0, by_group.output
    assert json.loads(by_sample.output)["counts"] == {"poly1": 50, "rect1": 0}
    assert json.loads(by_group.output)["counts"] == {"poly1": 0, "rect1": 0}


def test_a_hyperlog_scale_is_read_as_flowjo_drew_on_it(tmp_path):
    """FlowKit does not read FlowJo's hyperlog; cartflow does: the biex example with its
    two scales made hyperlog keeps its gate's data-value limits, so the same 50,605 events
    (FlowJo's count), and the gate is on a hyperlog scale."""
    from cartflow.gating.transforms import Hyperlog

    folder = require_shared(FLOWKIT / "simple_diamond_example")
    source = (folder / "test_data_diamond_biex_rect.wsp").read_text()
    hyper = source.replace(
        'transforms:biex transforms:length="256"  transforms:maxRange="262144"  '
        'transforms:neg="0"  transforms:width="-10"  transforms:pos="4.418539922"',
        'transforms:hyperlog transforms:length="256"  transforms:maxRange="262144"  '
        'transforms:T="262144"  transforms:W="0.5"  transforms:M="4.5"  transforms:A="0"',
    ).replace("</transforms:biex>", "</transforms:hyperlog>")
    assert hyper.count("transforms:hyperlog transforms") == 2
    (wsp := tmp_path / "hyperlog.wsp").write_text(hyper)
    workspace = load_lab_gates(wsp)
    gate_set = workspace.gate_set(workspace.samples[0])
    assert all(isinstance(t, Hyperlog) for t in gate_set.transforms.values())
    (gate,) = gate_set.gates
    raw = [gate_set.transforms[b.axis.transform].inverse(np.array([b.min]))[0] for b in gate.bounds]
    np.testing.assert_allclose(raw, [49058.7235978176, 50336.54700531022], rtol=1e-9)
    fcs = folder / "test_data_diamond_01.fcs"
    result = RUNNER.invoke(app, ["gate", str(fcs), "--gates", str(wsp), "--json"])
    assert json.loads(result.output)["counts"] == {"upper_right": 50605}
