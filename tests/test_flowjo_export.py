"""FlowJo 10 workspace export on real files: FlowKit reads each workspace back, applies it to
the same FCS file and must count every population exactly as cartflow does."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from typer.testing import CliRunner

from cartflow.cli import app
from cartflow.gating.errors import GatingError
from cartflow.gating.flowjo import export_flowjo
from cartflow.gating.gatingml import load_gatingml
from cartflow.gating.model import (
    FCS_SPILL,
    BooleanGate,
    Bound,
    Dimension,
    Divider,
    DividerRange,
    EllipsoidGate,
    GateRef,
    GateSet,
    Quadrant,
    QuadrantGate,
    RangeGate,
)
from cartflow.gating.transforms import Logicle
from cartflow.io.fcs import read_fcs
from cartflow.pipeline.gate import gate_file
from cartflow.simulate import SimulationConfig, simulate_cohort
from tests.conftest import FIXTURE_COHORT, GATINGML, require_shared

RUNNER = CliRunner()
TUBES = {"memory": "CAR-T memory", "function": "CAR-T function", "bcell": "BCELL COUNT"}
UNREPRESENTABLE = {
    "gml_all_gates.xml": "uncompensated FL3-H beside the compensated one",
    "gml_ellipsoid3d_gate.xml": "3-D ellipsoid",
    "gml_log_ratio_range1_gate.xml": "no ratio dimensions",
    "gml_ratio_range1_gate.xml": "no ratio dimensions",
    "gml_ratio_range2_gate.xml": "no ratio dimensions",
}


def _flowkit_counts(wsp: Path, fcs: Path) -> dict[str, int]:
    import flowkit

    workspace = flowkit.Workspace(str(wsp), fcs_samples=[flowkit.Sample(str(fcs))])
    sample_id = workspace.get_sample_ids()[0]
    workspace.analyze_samples(sample_id=sample_id, use_mp=False)
    report = workspace.get_gating_results(sample_id).report
    names = report.gate_name.tolist()
    once = {n for n in names if names.count(n) == 1}  # chain steps (CD62L+) repeat
    return {n: int(c) for n, c in zip(names, report["count"], strict=True) if n in once}


def _folded_helpers(gate_set) -> set[str]:
    """Helper gates (``X::CD62L+``) an 'and' of the set uses: the workspace folds them into
    the chain of the population they serve."""
    from cartflow.gating.model import BooleanGate

    return {
        r.gate
        for g in gate_set.gates
        if isinstance(g, BooleanGate) and g.op == "and"
        for r in g.refs
        if "::" in r.gate
    }


@pytest.fixture(scope="module", params=["FACSLyric", "FACSCanto II"])
def cohort(request, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp(request.param.replace(" ", "_"))
    config = SimulationConfig(
        patients=1, seed=11, events=8_000, cytometer=request.param, timepoints=("D11",)
    )
    simulate_cohort(out, config)
    return out


@pytest.mark.parametrize("tube", list(TUBES))
def test_workspace_gives_flowkit_cartflows_counts(cohort, tube, tmp_path):
    path = next(cohort.glob(f"CART-001 D11_{TUBES[tube]}_*.fcs"))
    gated = gate_file(path)
    gate_set = gated.placed.gate_set
    kinds = {type(g).__name__ for g in gate_set.gates}
    assert {"EllipsoidGate", "PolygonGate", "BooleanGate", "RectangleGate"} <= kinds
    target = tmp_path / "sample.wsp"
    export_flowjo(gate_set, path, target)
    counts = _flowkit_counts(target, path)
    for population in gate_set.population_ids:
        if population not in counts:
            assert population in _folded_helpers(gate_set), population
            continue
        assert counts[population] == gated.result.count(population), population
    assert set(gated.placed.populations) <= set(counts)  # every reported population is there
    assert all(counts[p] > 0 for p in ("singlets", "cells", "lymphocytes", "T"))


@pytest.mark.parametrize("tube", list(TUBES))
def test_a_workspace_read_back_as_fixed_gates_gives_the_same_counts(cohort, tube, tmp_path):
    """`gate FILE --gates x.wsp` on the workspace `gate FILE --flowjo x.wsp` wrote: every
    population is counted as placed (FlowJo's log scale on SSC-A included)."""
    path = next(cohort.glob(f"CART-001 D11_{TUBES[tube]}_*.fcs"))
    target = tmp_path / "sample.wsp"
    assert RUNNER.invoke(app, ["gate", str(path), "--flowjo", str(target)]).exit_code == 0
    placed = RUNNER.invoke(app, ["gate", str(path), "--json"])
    fixed = RUNNER.invoke(app, ["gate", str(path), "--gates", str(target), "--json"])
    assert fixed.exit_code == 0, fixed.output
    placed_counts = json.loads(placed.output)["counts"]
    by_path = json.loads(fixed.output)["counts"]  # workspace gates are read by their path
    fixed_counts = {}
    for path, count in by_path.items():
        name = path.rsplit("/", 1)[-1]
        if name in placed_counts:
            assert name not in fixed_counts, name  # each population is in the tree once
            fixed_counts[name] = count
    assert placed_counts["lymphocytes"] > 0
    assert {p: fixed_counts.get(p) for p in placed_counts} == placed_counts


def test_workspace_is_what_flowjo_reads(tmp_path):
    path = sorted(FIXTURE_COHORT.glob("CART-001 D11_CAR-T memory_*.fcs"))[0]
    target = tmp_path / "sample.wsp"
    export_flowjo(gate_file(path).placed.gate_set, path, target)
    text = target.read_text()
    # the matrix sits in the sample, compensated parameters carry FlowJo's prefix
    assert "<Sample>" in text or "<Sample " in text
    assert 'data-type:name="Comp-FITC-A"' in text
    assert 'prefix="Comp-"' in text
    assert "<NotNode" in text and "<OrNode" in text
    # the FCS path is relative to the workspace, so moving both together keeps it valid
    relative = Path(os.path.relpath(path.resolve(), target.resolve().parent)).as_posix()
    assert f'uri="{quote(relative)}"' in text and "file:" not in text.split("<DataSet")[1][:80]


def _hand_made(path: Path) -> tuple[GateSet, Path]:
    """Gates the templates do not make: an OR of time ranges, a complemented reference, an
    'and' across parents, a quadrant gate and its quadrant as a parent, an ellipse on logicle
    axes."""
    fcs = read_fcs(path)
    time = fcs.events[:, fcs.channel_names.index("Time")]
    middle = float(np.median(time))
    cd4, cd8 = Dimension("APC-R700-A", FCS_SPILL, "L"), Dimension("PerCP-Cy5.5-A", FCS_SPILL, "L")
    gates = (
        RangeGate("early", None, Bound(Dimension("Time"), max=middle - 1)),
        RangeGate("late", None, Bound(Dimension("Time"), min=middle + 1)),
        BooleanGate("steady", None, "or", (GateRef("early"), GateRef("late"))),
        RangeGate("big", "steady", Bound(Dimension("FSC-A"), min=40_000.0)),
        QuadrantGate(
            "cd4cd8",
            "steady",
            (Divider("d4", cd4, (0.35,)), Divider("d8", cd8, (0.4,))),
            (
                Quadrant(
                    "cd4+cd8-", (DividerRange("d4", 0.35, None), DividerRange("d8", None, 0.4))
                ),
                Quadrant(
                    "cd4-cd8+", (DividerRange("d4", None, 0.35), DividerRange("d8", 0.4, None))
                ),
                Quadrant("cd8-", (DividerRange("d8", None, 0.4),)),
            ),
        ),
        RangeGate("cd4 bright", "cd4+cd8-", Bound(cd4, min=0.6)),
        BooleanGate("cd4 not big", "steady", "and", (GateRef("cd4+cd8-"), GateRef("big", True))),
        BooleanGate("late cd8", None, "and", (GateRef("late"), GateRef("cd4-cd8+"))),
        BooleanGate("not early", None, "not", (GateRef("early"),)),
        EllipsoidGate(
            "blob", "steady", (cd4, cd8), (0.3, 0.3), ((0.01, 0.002), (0.002, 0.02)), 4.0
        ),
    )
    transforms = {"L": Logicle(t=262_144.0, w=0.5, m=4.5, a=0.0)}
    return GateSet(gates, transforms), path


def test_other_gate_kinds_round_trip(tmp_path):
    from cartflow.gating.engine import evaluate

    path = sorted(FIXTURE_COHORT.glob("CART-001 D11_CAR-T memory_*.fcs"))[0]
    gate_set, _ = _hand_made(path)
    fcs = read_fcs(path)
    result = evaluate(
        gate_set, fcs.events, fcs.channel_names, (fcs.spillover.channels, fcs.spillover.matrix)
    )
    target = tmp_path / "hand.wsp"
    export_flowjo(gate_set, path, target)
    counts = _flowkit_counts(target, path)
    for population in gate_set.population_ids:
        assert counts.get(population) == result.count(population), population
    assert 0 < result.count("steady") < result.event_count


def _compliance_documents() -> list[Path]:
    gml = GATINGML / "gml"
    if not gml.is_dir():
        return []
    return [p for p in sorted(gml.glob("*.xml")) if p.name != "gml_range_gate_attr_testing.xml"]


@pytest.mark.parametrize("document", _compliance_documents(), ids=lambda p: p.stem)
def test_compliance_gates_in_a_workspace_match_the_truth(document, tmp_path):
    require_shared(GATINGML)
    data = GATINGML / "data1.fcs"
    gate_set = load_gatingml(document)
    target = tmp_path / "compliance.wsp"
    if document.name in UNREPRESENTABLE:
        with pytest.raises(GatingError, match=UNREPRESENTABLE[document.name]) as caught:
            export_flowjo(gate_set, data, target)
        assert caught.value.source.startswith("gate ")
        assert "Gating-ML" in caught.value.problem
        assert not target.exists()
        return
    export_flowjo(gate_set, data, target)
    counts = _flowkit_counts(target, data)
    checked = 0
    for population in gate_set.population_ids:
        name = {"ParRectangle1": "ParQuadRect"}.get(population, population)
        truth = GATINGML / "truth" / f"Results_{name}.txt"
        if truth.exists():
            assert counts.get(population) == int(np.loadtxt(truth).sum()), population
            checked += 1
    assert checked or document.name == "gml_ellipse2_gate.xml"


def test_gates_a_workspace_cannot_hold_are_refused_by_name(tmp_path):
    path = sorted(FIXTURE_COHORT.glob("CART-001 D11_CAR-T memory_*.fcs"))[0]
    axes = tuple(Dimension(c, FCS_SPILL, "L") for c in ("FITC-A", "PE-A", "APC-A"))
    blob = EllipsoidGate("blob3d", None, axes, (0.3,) * 3, tuple(np.eye(3) * 0.01), 4.0)
    transforms = {"L": Logicle(t=262_144.0, w=0.5, m=4.5, a=0.0)}
    target = tmp_path / "x.wsp"
    with pytest.raises(GatingError, match="blob3d") as caught:
        export_flowjo(GateSet((blob,), transforms), path, target)
    assert "Gating-ML" in str(caught.value)
    slash = RangeGate("CD4/CD8", None, Bound(Dimension("FSC-A"), min=1.0))
    with pytest.raises(GatingError, match="cannot contain '/'"):
        export_flowjo(GateSet((slash,)), path, target)
    assert not target.exists()


def test_gate_command_writes_a_workspace(tmp_path):
    path = sorted(FIXTURE_COHORT.glob("CART-001 D11_BCELL COUNT_*.fcs"))[0]
    target = tmp_path / "out.wsp"
    result = CliRunner().invoke(app, ["gate", str(path), "--flowjo", str(target), "--json"])
    assert result.exit_code == 0, result.output
    gated = gate_file(path)
    counts = _flowkit_counts(target, path)
    assert all(counts[p] == gated.result.count(p) for p in gated.placed.populations)
