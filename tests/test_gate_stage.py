"""The gating stage on real generated files: counts, membership, plots, export, storage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cartflow.cli import app
from cartflow.gating.engine import evaluate
from cartflow.gating.gatingml import export_gatingml, load_gatingml, xml_id
from cartflow.pipeline.gate import gate_file, gate_records
from cartflow.run.ingest import ingest_batch, sha256_of
from tests.conftest import FIXTURE_COHORT

runner = CliRunner()


@pytest.fixture(scope="module")
def memory_file() -> Path:
    return sorted(FIXTURE_COHORT.glob("CART-001 D11_CAR-T memory_*.fcs"))[0]


@pytest.fixture(scope="module")
def gated(memory_file):
    return gate_file(memory_file)


def test_counts_follow_the_hierarchy(gated):
    counts = gated.counts()
    for population, parent in gated.placed.parents.items():
        if parent is not None:
            assert counts[population] <= counts[parent]
            assert not np.any(gated.result.mask(population) & ~gated.result.mask(parent))
    assert counts["CAR"] + counts["CARneg"] == counts["T"]


def test_every_cut_has_evidence(gated):
    for name, decision in gated.placed.decisions.items():
        assert decision.method, name
        if decision.fallback:
            assert decision.reason
        assert f"threshold_fallback:{name}" in gated.placed.flags or not decision.fallback


def test_placed_gates_reapply_exactly(gated):
    again = evaluate(
        gated.placed.gate_set,
        gated.fcs.events,
        gated.fcs.channel_names,
        (list(gated.fcs.spillover.channels), gated.fcs.spillover.matrix),
    )
    for population in gated.placed.populations:
        assert np.array_equal(again.mask(population), gated.result.mask(population))


def test_gatingml_export_gives_flowkit_the_same_counts(gated, memory_file, tmp_path):
    import flowkit

    target = tmp_path / "gates.xml"
    export_gatingml(gated.placed.gate_set, target)
    session = flowkit.Session(
        gating_strategy=flowkit.parse_gating_xml(str(target)),
        fcs_samples=[flowkit.Sample(str(memory_file))],
    )
    session.analyze_samples()
    report = session.get_gating_results(session.get_sample_ids()[0]).report
    for population in gated.placed.populations:
        row = report[report.gate_name == xml_id(population)]
        assert int(row["count"].iloc[0]) == gated.result.count(population), population
    reimported = load_gatingml(target)
    assert set(map(xml_id, gated.placed.populations)) <= set(reimported.population_ids)


def test_gate_command_writes_membership_and_plots(memory_file, gated, tmp_path):
    membership = tmp_path / "membership.parquet"
    result = runner.invoke(
        app,
        ["gate", str(memory_file), "--membership", str(membership), "--plots", str(tmp_path / "p")],
    )
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(membership)
    assert len(table) == gated.fcs.event_count
    assert list(table.columns) == list(gated.placed.populations)
    assert table["T"].sum() == gated.result.count("T")
    pngs = sorted((tmp_path / "p").glob("*.png"))
    assert len(pngs) == len(gated.placed.populations)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_gate_command_json_and_errors(memory_file, tmp_path):
    result = runner.invoke(app, ["gate", str(memory_file), "--json"])
    info = json.loads(result.output)
    assert info["template"] == "cart-memory" and info["counts"]["T"] > 0
    bad = runner.invoke(app, ["gate", str(tmp_path / "missing.fcs")])
    assert bad.exit_code == 1 and "cannot be read" in bad.output


def test_gating_is_stored_once_per_run(memory_file, gated, store, tmp_path):
    batch = tmp_path / "b"
    batch.mkdir()
    (batch / memory_file.name).write_bytes(memory_file.read_bytes())
    ingest_batch(batch, store)
    sample_id = store.sample_id(sha256_of(memory_file))
    run_id = store.start_run("gate", {"template": gated.template.sha256})
    populations, gates = gate_records(gated)
    assert store.record_gating(
        run_id,
        sample_id,
        gated.template.id,
        gated.template.sha256,
        populations,
        gates,
        gated.placed.flags,
    )
    assert not store.record_gating(
        run_id, sample_id, gated.template.id, gated.template.sha256, populations, gates
    )
    stored = {r["population"]: r["count"] for r in store.population_counts(run_id)}
    assert stored == gated.counts()
    assert store.row_counts()["gates"] == len(gates)


def test_fixed_gates_from_gatingml_match_the_truth(tmp_path):
    from tests.conftest import GATINGML, require_shared

    data = require_shared(GATINGML / "data1.fcs")
    xml = GATINGML / "gml" / "gml_all_gates.xml"
    membership = tmp_path / "m.parquet"
    result = runner.invoke(
        app, ["gate", str(data), "--gates", str(xml), "--json", "--membership", str(membership)]
    )
    assert result.exit_code == 0, result.output
    counts = json.loads(result.output.split("\nmembership")[0])["counts"]
    table = pd.read_parquet(membership)
    for truth in sorted((GATINGML / "truth").glob("Results_*.txt"))[:12]:
        gate = truth.stem.removeprefix("Results_")
        if gate in table:
            expected = np.loadtxt(truth, dtype=int).astype(bool)
            assert np.array_equal(table[gate].to_numpy(), expected), gate
            assert counts[gate] == expected.sum()


def test_fixed_gates_refuse_hostile_xml(tmp_path, memory_file):
    evil = tmp_path / "evil.xml"
    evil.write_text(
        '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>',
        encoding="utf-8",
    )
    result = runner.invoke(app, ["gate", str(memory_file), "--gates", str(evil)])
    assert result.exit_code == 1
    assert "evil.xml" in result.output and "passwd" not in result.output.replace(
        "file:///etc/passwd", ""
    )


def _spill_csv(path: Path, channels, matrix, corner: bool = True) -> Path:
    lines = [",".join(([""] if corner else []) + list(channels))]
    for name, row in zip(channels, matrix, strict=True):
        lines.append(",".join(([name] if corner else []) + [repr(float(v)) for v in row]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_spillover_override_replaces_the_files_matrix(memory_file, gated, tmp_path):
    from cartflow.io.fcs import read_spillover

    own = gated.fcs.spillover
    same = read_spillover(_spill_csv(tmp_path / "same.csv", own.channels, own.matrix))
    again = gate_file(memory_file, spillover=same)
    assert again.counts() == gated.counts()
    assert "spillover_override:same.csv" in again.placed.flags
    bare = read_spillover(
        _spill_csv(tmp_path / "bare.csv", own.channels, np.eye(len(own.channels)), corner=False)
    )
    uncompensated = gate_file(memory_file, spillover=bare)
    assert uncompensated.counts() != gated.counts()
    named_corner = tmp_path / "named.csv"
    rows = [",".join(["detector", *own.channels])]
    for name, row in zip(own.channels, own.matrix, strict=True):
        rows.append(",".join([name, *map(repr, map(float, row))]))
    named_corner.write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert read_spillover(named_corner).channels == tuple(own.channels)


def test_a_bad_spillover_override_is_named(memory_file, gated, tmp_path):
    from cartflow.io.errors import CartflowError
    from cartflow.io.fcs import read_spillover

    own = gated.fcs.spillover
    (tmp_path / "ragged.csv").write_text(",A,B\nA,1,0.1\nB,0.2\n", encoding="utf-8")
    with pytest.raises(CartflowError, match=r"ragged\.csv.*not square"):
        read_spillover(tmp_path / "ragged.csv")
    (tmp_path / "diag.csv").write_text(",A,B\nA,0.5,0.1\nB,0.2,1\n", encoding="utf-8")
    with pytest.raises(CartflowError, match=r"diag\.csv.*1 on its diagonal"):
        read_spillover(tmp_path / "diag.csv")
    (tmp_path / "singular.csv").write_text("FITC-A,PE-A\n1,1\n1,1\n", encoding="utf-8")
    with pytest.raises(CartflowError, match=r"singular\.csv.*singular"):
        read_spillover(tmp_path / "singular.csv")
    (tmp_path / "twice.csv").write_text("FITC-A,FITC-A\n1,0\n0,1\n", encoding="utf-8")
    with pytest.raises(CartflowError, match=r"twice\.csv.*\['FITC-A'\] twice"):
        read_spillover(tmp_path / "twice.csv")
    names = tuple(c.replace("-A", "-X") for c in own.channels)
    other = read_spillover(_spill_csv(tmp_path / "other.csv", names, own.matrix))
    with pytest.raises(CartflowError, match="names detectors not in the file"):
        gate_file(memory_file, spillover=other)
    result = runner.invoke(
        app, ["gate", str(memory_file), "--spillover", str(tmp_path / "diag.csv")]
    )
    assert result.exit_code != 0 and "diag.csv" in result.output


def test_fixed_gates_that_do_not_fit_the_file_name_both(memory_file):
    from tests.conftest import GATINGML, require_shared

    xml = require_shared(GATINGML / "gml" / "gml_all_gates.xml")  # drawn on data1's channels
    result = runner.invoke(app, ["gate", str(memory_file), "--gates", str(xml)])
    assert result.exit_code == 1
    assert f"{xml} on {memory_file}: " in result.output.replace("\n", "")


def test_a_wsp_that_is_not_a_workspace_says_so(memory_file, tmp_path):
    other = tmp_path / "other.wsp"
    other.write_text('<?xml version="1.0"?><Gating-ML/>', encoding="utf-8")
    result = runner.invoke(app, ["gate", str(memory_file), "--gates", str(other)])
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert "is neither Gating-ML 2.0, a FlowJo 10 workspace nor a FACSDiva export" in message


def test_gate_refuses_options_that_would_be_ignored(memory_file, tmp_path):
    own = tmp_path / "own.xml"
    assert runner.invoke(app, ["gate", str(memory_file), "--gatingml", str(own)]).exit_code == 0
    matrix = tmp_path / "m.csv"
    matrix.write_text("FITC-A,PE-A\n1,0.1\n0.1,1\n", encoding="utf-8")
    for args, problem in (
        (["--gates", str(own), "--spillover", str(matrix)], "--spillover do not apply"),
        (["--gates", str(own), "--plots", str(tmp_path / "p")], "--plots do not apply"),
        (["--spillover", str(matrix), "--gatingml", str(tmp_path / "x.xml")], "own matrix"),
    ):
        result = runner.invoke(app, ["gate", str(memory_file), *args])
        assert result.exit_code == 1 and problem in result.output, result.output
    assert not (tmp_path / "p").exists() and not (tmp_path / "x.xml").exists()


def test_gate_json_is_one_object_and_names_approximations(tmp_path):
    from cartflow.simulate import SimulationConfig, simulate_cohort

    cohort = tmp_path / "canto"
    config = SimulationConfig(patients=1, seed=3, events=3000, cytometer="FACSCanto II",
                              tubes=("memory",), timepoints=("D7",))  # fmt: skip
    simulate_cohort(cohort, config)
    path = next(cohort.glob("*memory*.fcs"))
    result = subprocess.run(
        [sys.executable, "-m", "cartflow.cli", "gate", str(path), "--json",
         "--membership", str(tmp_path / "m.parquet")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # nothing else on standard output
    assert "CD4 not on this panel" in report["approximations"]["CAR_CD4"]
    assert "membership:" in result.stderr


def test_the_lymphocyte_plot_shows_its_events(tmp_path):
    """The lymphocyte gate is a boolean of booleans; its plot still finds its axes."""
    from PIL import Image

    from cartflow.report.plots import gate_plots
    from cartflow.simulate import SimulationConfig, simulate_cohort

    config = SimulationConfig(patients=1, seed=7, events=20_000, tubes=("memory",),
                              timepoints=("D14",))  # fmt: skip
    simulate_cohort(tmp_path / "c", config)
    gated = gate_file(next((tmp_path / "c").glob("*memory*.fcs")))
    assert isinstance(gated.placed.gate_set.gate("lymphocytes").refs, tuple)
    gate_plots(gated, tmp_path / "plots")
    pixels = np.asarray(Image.open(tmp_path / "plots" / "lymphocytes.png").convert("L"))
    h, w = pixels.shape
    inked = (pixels[int(h * 0.1) : int(h * 0.8), int(w * 0.12) : int(w * 0.92)] < 200).mean()
    assert inked > 0.05  # a density, not empty axes


def test_a_relabelled_file_is_judged_against_its_own_tubes_panel(memory_file, tmp_path):
    from cartflow.io.fcs import read_fcs
    from tests.fcs_mutate import rewrite

    channels = read_fcs(memory_file, events=False).channels
    cd4, cd8 = (
        next(i for i, c in enumerate(channels, 1) if c.marker and c.marker.startswith(marker))
        for marker in ("CD4", "CD8")
    )
    swapped = rewrite(memory_file, tmp_path / memory_file.name,
                      **{f"P{cd4}S": channels[cd8 - 1].marker,
                         f"P{cd8}S": channels[cd4 - 1].marker})  # fmt: skip
    result = runner.invoke(app, ["gate", str(swapped)])
    assert result.exit_code == 1
    assert "panel memory-" in result.output and "panel bcell-" not in result.output


def test_an_ellipse_is_drawn_on_its_own_axes_in_either_order():
    """A core ellipse is outlined where its Mahalanobis distance meets its limit, whichever
    of its axes the plot puts first; on other axes it is not drawn."""
    from cartflow.gating.model import Dimension, EllipsoidGate
    from cartflow.report.plots.shapes import _ellipse

    cd45, cd3, fsc = Dimension("BV510-A"), Dimension("APC-H7-A"), Dimension("FSC-A")
    cov = np.array([[0.0004, 0.0001], [0.0001, 0.0025]])
    gate = EllipsoidGate("core", None, (cd45, cd3), (0.65, 0.12), tuple(map(tuple, cov)), 13.8)
    outline = _ellipse(gate, [cd45, cd3])
    centred = outline - np.array([0.65, 0.12])
    distance = np.einsum("ij,jk,ik->i", centred, np.linalg.inv(cov), centred)
    np.testing.assert_allclose(distance, 13.8, rtol=1e-9)
    np.testing.assert_allclose(_ellipse(gate, [cd3, cd45]), outline[:, ::-1])
    assert _ellipse(gate, [cd3, fsc]) is None


def test_plot_notes_tell_a_core_from_a_cut(tmp_path):
    """The core's note speaks of ellipses; a tail cut (whose evidence also holds a
    quantile) is a cut, and a core that could not be fitted says why there is none."""
    from dataclasses import replace

    from cartflow.gating.template import load_template
    from cartflow.pipeline.gate import TEMPLATE_DIR
    from cartflow.report.plots.gate_figures import _matplotlib, draw_population
    from cartflow.simulate import SimulationConfig, simulate_cohort

    text = (TEMPLATE_DIR / "memory.yaml").read_text(encoding="utf-8")
    old = "CD62L: {method: [valley, balance], estimate_on: [CAR_CD8, T], bounds: [0.2, 0.55],"
    tail = (
        "CD62L: {method: [tail], negative: CARneg, estimate_on: [CAR_CD8, T], bounds: [0.2, 0.9],"
    )
    path = tmp_path / "memory.yaml"
    path.write_text(text.replace(old, tail), encoding="utf-8")
    config = SimulationConfig(patients=1, seed=7, events=30_000, timepoints=("D11",),
                              tubes=("memory",))  # fmt: skip
    simulate_cohort(tmp_path / "cohort", config)
    (memory_file,) = (tmp_path / "cohort").glob("*.fcs")
    gated = gate_file(memory_file, template=load_template(path))
    assert "quantile" in gated.placed.decisions["CD62L"].evidence
    _, ax = _matplotlib().subplots()

    def notes(sample, population: str, name: str) -> list[str]:
        drawn = draw_population(ax, sample, sample.fcs.events, population)
        return [n for n in drawn if n.startswith(f"{name}:")]

    (cd62l,) = notes(gated, "CAR_CD8_CM", "CD62L")
    assert cd62l.startswith(f"CD62L: cut {gated.placed.cuts['CD62L']:.3g} by ") and "tail" in cd62l
    core = "lymphocytes_CD3neg.core"
    assert notes(gated, "lymphocytes_CD3neg", core) == [
        f"{core}: ellipses keeping 99.9% of the fitted core (drawn on their axes)"
    ]
    decisions = dict(gated.placed.decisions)
    decisions[core] = replace(decisions[core], fallback=True, reason="core not fitted: x")
    failed = replace(gated, placed=replace(gated.placed, decisions=decisions))
    assert notes(failed, "lymphocytes_CD3neg", core) == [f"{core}: none (core not fitted: x)"]
