"""The gating engine against the ISAC Gating-ML 2.0 compliance set: exact per-event membership.

Every gate (and quadrant) of every compliance document that has a truth file is loaded with
``load_gatingml``, evaluated with ``evaluate`` on ``data1.fcs`` as ``read_fcs`` reads it, and
must equal the truth file event for event - both with range cuts mapped to raw space (the
default) and with transformed values compared.

Supported and proven here:
- gates: range (incl. Time), rectangle, polygon (incl. self-intersecting), 2-D and 3-D
  ellipsoid, quadrant (2 and 3 dividers, quadrants as parents), boolean and / or / not (with
  complemented references), parent references;
- dimensions: FCS channels, fratio "new dimensions" (plain and flog-transformed);
- compensation: uncompensated, "FCS" (data1 has no $SPILL, so uncompensated as Gating-ML
  specifies), and spectrumMatrix by fluorochrome name;
- transforms: flin, flog, fasinh, hyperlog, logicle (with and without compensation), fratio.

``gml_ellipse2_gate.xml`` has no truth file (checked against FlowKit instead), and
``gml_range_gate_attr_testing.xml`` is not schema-valid Gating-ML and must be refused.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from cartflow.gating.engine import GatingResult, evaluate
from cartflow.gating.errors import GatingError
from cartflow.gating.gatingml import load_gatingml
from cartflow.gating.model import GateSet, QuadrantGate
from cartflow.io.fcs import read_fcs

COMPLIANCE = Path(__file__).resolve().parents[1].parent / "shared" / "gatingml2-compliance"
GML = COMPLIANCE / "gml"
TRUTH = COMPLIANCE / "truth"
DATA = COMPLIANCE / "data1.fcs"

NO_TRUTH = {"gml_ellipse2_gate.xml", "gml_range_gate_attr_testing.xml"}
TRUTH_NAME = {"ParRectangle1": "ParQuadRect"}  # truth files not named after their gate
ALL_GATES = "gml_all_gates.xml"


def _require_set() -> None:
    if not DATA.exists() or not GML.is_dir() or not TRUTH.is_dir():
        pytest.skip(f"Gating-ML 2.0 compliance set not found at {COMPLIANCE}")


def _truth_file(population: str) -> Path:
    return TRUTH / f"Results_{TRUTH_NAME.get(population, population)}.txt"


@functools.cache
def _truth(population: str) -> np.ndarray:
    values = np.loadtxt(_truth_file(population), dtype=np.int64)
    assert set(np.unique(values)) <= {0, 1}
    return values.astype(bool)


@functools.cache
def _events():
    fcs = read_fcs(DATA)
    assert fcs.spillover is None
    return fcs.events, fcs.channel_names


@functools.cache
def _gate_set(name: str) -> GateSet:
    return load_gatingml(GML / name)


@functools.cache
def _result(name: str, raw_space: bool) -> GatingResult:
    events, channels = _events()
    return evaluate(_gate_set(name), events, channels, ranges_in_raw_space=raw_space)


def _cases() -> list:
    """(document, population) for every population of every document with truth files."""
    if not GML.is_dir():
        return [pytest.param(None, None, id="compliance-set-missing")]
    cases = []
    for xml in sorted(GML.glob("*.xml")):
        if xml.name in NO_TRUTH:
            continue
        try:
            populations = _gate_set(xml.name).population_ids
        except GatingError as exc:  # reported by the test, not at collection
            cases.append(pytest.param(xml.name, repr(exc), id=f"{xml.stem}-load-error"))
            continue
        cases += [pytest.param(xml.name, p, id=f"{xml.stem}-{p}") for p in populations]
    return cases


CASES = _cases()


@pytest.mark.parametrize("raw_space", [True, False], ids=["raw-space-cuts", "transformed"])
@pytest.mark.parametrize(("document", "population"), CASES)
def test_membership_equals_truth(document, population, raw_space):
    _require_set()
    assert population in _gate_set(document).population_ids, population
    truth = _truth(population)
    mask = _result(document, raw_space).mask(population)
    assert mask.shape == truth.shape
    wrong = np.flatnonzero(mask != truth)
    assert wrong.size == 0, (
        f"{population}: {wrong.size} events differ from the truth file, first {wrong[:10]}"
    )
    assert _result(document, raw_space).count(population) == int(truth.sum())


def test_every_truth_file_is_checked():
    _require_set()
    checked = {_truth_file(p).name for _, p in (c.values for c in CASES)}
    present = {p.name for p in TRUTH.glob("Results_*.txt")}
    assert present == checked


def test_all_gates_document_has_42_gates():
    _require_set()
    gate_set = _gate_set(ALL_GATES)
    assert len(gate_set.gates) == 42
    quadrants = sum(len(g.quadrants) for g in gate_set.gates if isinstance(g, QuadrantGate))
    assert len(gate_set.population_ids) == 42 - 2 + quadrants == 49


def test_single_documents_agree_with_all_gates():
    """The same gate gives the same mask alone and inside the 42-gate document."""
    _require_set()
    combined = _result(ALL_GATES, True)
    for document, population in (c.values for c in CASES):
        if document != ALL_GATES and population in combined.masks:
            assert np.array_equal(
                _result(document, True).mask(population), combined.mask(population)
            ), population


def test_read_fcs_scaling_matches_flowkit_preprocessing():
    """read_fcs gives FlowKit's 'raw' events ($PnE, $PnG applied) to float32 rounding."""
    _require_set()
    import flowkit

    events, channels = _events()
    sample = flowkit.Sample(str(DATA))
    reference = sample.get_events(source="raw")
    assert channels == list(sample.pnn_labels)
    assert events.dtype == np.float32 and events.shape == reference.shape
    rounded = reference.astype(np.float32)
    # at most one float32 step away from the correctly rounded float64 value
    assert np.all(np.abs(events - rounded) <= np.spacing(np.abs(rounded)))
    time = channels.index("Time")
    assert np.array_equal(events[:, time], reference[:, time])


def test_ellipse2_without_truth_matches_flowkit():
    _require_set()
    import flowkit

    events, channels = _events()
    result = evaluate(_gate_set("gml_ellipse2_gate.xml"), events, channels)
    strategy = flowkit.parse_gating_xml(str(GML / "gml_ellipse2_gate.xml"))
    reference = strategy.gate_sample(flowkit.Sample(str(DATA))).get_gate_membership("myEllipse2")
    assert result.count("myEllipse2") > 0
    assert np.array_equal(result.mask("myEllipse2"), reference)


def test_schema_invalid_document_is_refused():
    _require_set()
    path = GML / "gml_range_gate_attr_testing.xml"
    with pytest.raises(GatingError) as caught:
        load_gatingml(path)
    assert str(path) in str(caught.value)
    assert "not valid Gating-ML 2.0" in caught.value.problem
    assert "'sample'" in caught.value.problem
