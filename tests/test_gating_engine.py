"""The gating engine's own claims, on real data1.fcs events and real Gating-ML documents.

- a range on a monotone-transformed axis evaluated at the inverse-transformed cut (raw space)
  has exactly the membership of comparing transformed values, for any parameters and cuts,
  including cuts placed exactly on an event's transformed value;
- evaluating a gate only on its parent's events equals evaluating it on all events and
  intersecting with the parent;
- hostile or broken XML is refused with a GatingError naming the file, before FlowKit sees it;
- export to Gating-ML and import again keeps the model and every event's membership;
- compensation, polygons and 'FCS' compensation agree with flowutils / an explicit reference;
- polygons and ellipsoids, tested only on the events within their extent, select what testing
  every event selects.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import tracemalloc
from pathlib import Path

import flowutils
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from cartflow.gating.compensation import compensate
from cartflow.gating.engine import Evaluator, evaluate, points_in_ellipsoid, points_in_polygon
from cartflow.gating.errors import GatingError
from cartflow.gating.gatingml import MAX_DOCUMENT_BYTES, export_gatingml, load_gatingml
from cartflow.gating.model import (
    BooleanGate,
    Bound,
    Dimension,
    Divider,
    DividerRange,
    EllipsoidGate,
    GateRef,
    GateSet,
    PolygonGate,
    Quadrant,
    QuadrantGate,
    RangeGate,
    RatioDimension,
    RectangleGate,
    SpectrumMatrix,
)
from cartflow.gating.transforms import Fasinh, Flin, Flog, Fratio, Hyperlog, Logicle
from cartflow.io.fcs import read_fcs

COMPLIANCE = Path(__file__).resolve().parents[1].parent / "shared" / "gatingml2-compliance"
GML = COMPLIANCE / "gml"
DATA = COMPLIANCE / "data1.fcs"
ALL_GATES = GML / "gml_all_gates.xml"

DETECTORS = ("FL1-H", "FL2-H", "FL3-H")
SPILL = np.array([[1.0, 0.02, 0.06], [0.11, 1.0, 0.07], [0.09, 0.01, 1.0]])
MY_SPILL = SpectrumMatrix(("FITC", "PE", "PerCP"), DETECTORS, tuple(map(tuple, SPILL)))
CHANNELS = ("FSC-H", "FL1-H", "FL2-H", "FL4-H", "FITC", "PE", "PerCP")  # last 3: compensated


@pytest.fixture(scope="module", autouse=True)
def _compliance_set():
    if not DATA.exists() or not ALL_GATES.exists():
        pytest.skip(f"Gating-ML 2.0 compliance set not found at {COMPLIANCE}")


@functools.cache
def _data() -> tuple[np.ndarray, list[str]]:
    fcs = read_fcs(DATA)
    return fcs.events, fcs.channel_names


@functools.cache
def _all_gates() -> GateSet:
    return load_gatingml(ALL_GATES)


def _column(channel: str) -> np.ndarray:
    """The raw (compensated, for fluorochrome names) values of one channel, independently."""
    events, names = _data()
    if channel in MY_SPILL.fluorochromes:
        detector = MY_SPILL.detector_for(channel)
        compensated = compensate(events, names, list(DETECTORS), SPILL)
        return compensated[:, names.index(detector)]
    return events[:, names.index(channel)]


def _dimension(channel: str, transform: str | None) -> Dimension:
    compensation = "MySpill" if channel in MY_SPILL.fluorochromes else None
    return Dimension(channel, compensation, transform)


# ------------------------------------------------------- ranges: raw-space cuts are exact


@st.composite
def logicle(draw) -> Logicle:
    t = draw(st.sampled_from([1024.0, 10_000.0, 262_144.0]) | st.floats(50.0, 1e6))
    m = draw(st.floats(2.0, 7.0))
    w = draw(st.floats(0.0, m / 2))
    a = draw(st.floats(-w, m - 2 * w))
    return Logicle(t=t, w=w, m=m, a=a)


@st.composite
def hyperlog(draw) -> Hyperlog:
    t = draw(st.floats(50.0, 1e6))
    m = draw(st.floats(2.0, 7.0))
    w = draw(st.floats(0.01, m / 2))
    a = draw(st.floats(-w, m - 2 * w))
    return Hyperlog(t=t, w=w, m=m, a=a)


@st.composite
def fasinh(draw) -> Fasinh:
    m = draw(st.floats(1.0, 7.0))
    return Fasinh(t=draw(st.floats(50.0, 1e6)), m=m, a=draw(st.floats(0.0, m)))


@st.composite
def flog(draw) -> Flog:
    return Flog(t=draw(st.floats(1.0, 1e6)), m=draw(st.floats(0.5, 7.0)))


@st.composite
def flin(draw) -> Flin:
    t = draw(st.floats(1.0, 1e6))
    return Flin(t=t, a=draw(st.floats(-0.9 * t, 1e4)))


# a cut is a transformed value, or exactly the transformed value of one event
cuts = st.one_of(
    st.floats(-0.3, 1.3).map(lambda v: ("value", v)),
    st.integers(0, 13_366).map(lambda i: ("event", i)),
)


def _cut(spec, transform, column) -> float:
    kind, value = spec
    if kind == "value":
        return value
    return float(transform.apply(column[value : value + 1])[0])


def _check_range(transform, channel, low_spec, high_spec):
    events, names = _data()
    column = _column(channel)
    low = _cut(low_spec, transform, column) if low_spec else None
    high = _cut(high_spec, transform, column) if high_spec else None
    assume(low is not None or high is not None)
    # flog of an event <= 0 is -inf or NaN: not a cut anyone can draw
    assume(all(math.isfinite(c) for c in (low, high) if c is not None))
    gate_set = GateSet(
        (RangeGate("R", None, Bound(_dimension(channel, "T"), low, high)),),
        {"T": transform},
        {"MySpill": MY_SPILL},
    )
    transformed = transform.apply(column)  # the reference: compare transformed values
    expected = np.ones(column.shape, dtype=bool)
    if low is not None:
        expected &= transformed >= low
    if high is not None:
        expected &= transformed < high
    raw = evaluate(gate_set, events, names)
    assert np.array_equal(raw.mask("R"), expected)
    assert np.array_equal(
        evaluate(gate_set, events, names, ranges_in_raw_space=False).mask("R"), expected
    )
    (cut,) = raw.diagnostics["R"].cuts
    assert cut.space == "raw"
    for spec, raw_cut in ((low_spec, cut.raw_min), (high_spec, cut.raw_max)):
        if spec and spec[0] == "event":
            # the event sits on the mapped cut: it was decided by transforming it
            assert cut.boundary_events >= 1
            assert raw_cut == pytest.approx(float(column[spec[1]]), rel=1e-6, abs=1e-6)


@settings(
    max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    transform=logicle(),
    channel=st.sampled_from(CHANNELS),
    low=st.none() | cuts,
    high=st.none() | cuts,
)
@example(  # flowutils' Halley iteration gives up on a few values here and returns -1
    transform=Logicle(t=1024.0, w=3.125, m=6.375, a=-1.0),
    channel="FSC-H",
    low=None,
    high=("event", 124),
)
def test_logicle_range_in_raw_space_equals_transformed(transform, channel, low, high):
    _check_range(transform, channel, low, high)


@settings(
    max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    transform=st.one_of(hyperlog(), fasinh(), flog(), flin()),
    channel=st.sampled_from(CHANNELS),
    low=st.none() | cuts,
    high=st.none() | cuts,
)
def test_every_scale_transform_range_in_raw_space_equals_transformed(transform, channel, low, high):
    _check_range(transform, channel, low, high)


# shapes: only events within a shape's extent are tested, which must change nothing


@settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    transform=st.one_of(logicle(), hyperlog(), fasinh(), flog(), flin()),
    channels=st.permutations(CHANNELS).map(lambda c: c[:2]),
    corners=st.lists(st.integers(0, 13_366), min_size=3, max_size=6),
    stretch=st.floats(0.2, 3.0),
)
def test_shapes_on_transformed_axes_equal_testing_every_event(
    transform, channels, corners, stretch
):
    """A polygon whose vertices and an ellipsoid whose extent sit exactly on events'
    transformed values select what testing every event's transformed values selects."""
    events, names = _data()
    values = [transform.apply(_column(c)) for c in channels]
    vertices = tuple((float(values[0][i]), float(values[1][i])) for i in corners)
    assume(all(math.isfinite(v) for vertex in vertices for v in vertex))
    assume(len({v[0] for v in vertices}) > 1 and len({v[1] for v in vertices}) > 1)
    centre = np.mean(vertices, axis=0)
    # the ellipse's extent on the first axis ends exactly at the first corner's value
    half = abs(vertices[0][0] - centre[0])
    assume(half > 0)
    covariance = ((half**2, 0.0), (0.0, (stretch * half) ** 2))
    axes = tuple(_dimension(c, "T") for c in channels)
    gate_set = GateSet(
        (
            PolygonGate("p", None, axes, vertices),
            EllipsoidGate("e", None, axes, tuple(centre), covariance, 1.0),
        ),
        {"T": transform},
        {"MySpill": MY_SPILL},
    )
    result = evaluate(gate_set, events, names)
    with np.errstate(invalid="ignore"):
        expected_p = points_in_polygon(values[0], values[1], vertices)
        expected_e = points_in_ellipsoid(values, centre, covariance, 1.0)
    assert np.array_equal(result.mask("p"), expected_p)
    assert np.array_equal(result.mask("e"), expected_e)


@pytest.mark.parametrize(
    "transform",
    [
        Logicle(t=10_000, w=0.5, m=4.5, a=0),
        Hyperlog(t=10_000, w=1, m=4.5, a=0),
        Flog(t=10_000, m=5),
        Fasinh(t=10_000, m=4, a=1),
        Flin(t=10_000, a=500),
    ],
    ids=lambda t: t.kind,
)
def test_inverse_inverts(transform):
    x = np.concatenate([_column("FL1-H"), _column("FITC")]).astype(np.float64)
    if transform.domain_min == 0:
        x = x[x > 0]
    assert np.allclose(transform.inverse(transform.apply(x)), x, rtol=1e-9, atol=1e-6)


def test_range_cut_is_reported_in_raw_units():
    events, names = _data()
    logicle_ = Logicle(t=10_000, w=0.5, m=4.5, a=0)
    gate_set = GateSet(
        (RangeGate("CD", None, Bound(_dimension("PE", "L"), 0.31, None)),),
        {"L": logicle_},
        {"MySpill": MY_SPILL},
    )
    (cut,) = evaluate(gate_set, events, names).diagnostics["CD"].cuts
    assert cut.min == 0.31 and cut.max is None and cut.raw_max is None
    assert cut.raw_min == pytest.approx(float(logicle_.inverse(np.array([0.31]))[0]))
    assert cut.axis == "PE [MySpill, L]"


def test_a_withdrawn_gate_leaves_no_trace():
    """Withdrawing the gates added last (a quadrant gate among them) leaves what evaluating
    the others alone gives; adding them again gives the whole set's result."""
    events, names = _data()
    base = _all_gates()
    last_quadrant = max(i for i, g in enumerate(base.gates) if isinstance(g, QuadrantGate))
    kept, withdrawn = base.gates[:last_quadrant], base.gates[last_quadrant:]
    evaluator = Evaluator(base.transforms, base.compensations, events, names)
    for gate in base.gates:
        evaluator.add(gate)
    with pytest.raises(ValueError, match="not the gate added last"):
        evaluator.withdraw(kept[-1].id)
    for gate in reversed(withdrawn):
        evaluator.withdraw(gate.id)
    alone = evaluate(GateSet(kept, base.transforms, base.compensations), events, names)
    partial = evaluator.result()
    assert partial.populations == alone.populations
    assert evaluator.gate_set.gates == kept
    assert all(np.array_equal(partial.mask(p), alone.mask(p)) for p in alone.populations)
    for gate in withdrawn:
        evaluator.add(gate)
    whole, full = evaluator.result(), evaluate(base, events, names)
    assert whole.populations == full.populations and dict(whole.counts) == dict(full.counts)


# --------------------------------------------------- child on parent == full AND parent


def _as_child(gate, parent: str):
    suffix = f"@{parent}"
    if isinstance(gate, QuadrantGate):
        quadrants = tuple(dataclasses.replace(q, id=q.id + suffix) for q in gate.quadrants)
        return dataclasses.replace(gate, id=gate.id + suffix, parent=parent, quadrants=quadrants)
    return dataclasses.replace(gate, id=gate.id + suffix, parent=parent)


@pytest.mark.parametrize("parent", ["Range1", "Polygon1", "FL2P-FL4P", "Not1", "ParAnd3"])
def test_child_on_parent_equals_full_evaluation_and_parent(parent):
    events, names = _data()
    base = _all_gates()
    top_level = [g for g in base.gates if g.parent is None]
    children = [_as_child(g, parent) for g in top_level]
    nested = GateSet((*base.gates, *children), base.transforms, base.compensations)
    full = evaluate(base, events, names)
    result = evaluate(nested, events, names)
    parent_mask = result.mask(parent)
    assert 0 < result.count(parent) < len(events)
    checked = 0
    for gate in top_level:
        own = [q.id for q in gate.quadrants] if isinstance(gate, QuadrantGate) else [gate.id]
        for population in own:
            child = f"{population}@{parent}"
            expected = full.mask(population) & parent_mask
            assert np.array_equal(result.mask(child), expected), child
            assert result.count(child) == int(expected.sum())
            assert result.diagnostics[child].evaluated_events == result.count(parent)
            checked += 1
    assert checked >= 40


def test_hierarchy_in_the_document_includes_parents():
    events, names = _data()
    result = evaluate(_all_gates(), events, names)
    for population in result.populations:
        parent = result.parents[population]
        if parent is not None:
            assert not np.any(result.mask(population) & ~result.mask(parent)), population
            assert result.fraction_of_parent(population) <= 1.0


# ------------------------------------------------------------------------- hostile XML

GATING_ML_OPEN = (
    '<gating:Gating-ML xmlns:gating="http://www.isac-net.org/std/Gating-ML/v2.0/gating" '
    'xmlns:data-type="http://www.isac-net.org/std/Gating-ML/v2.0/datatypes">'
)
RANGE_GATE = (
    '<gating:RectangleGate gating:id="R"><gating:dimension gating:compensation-ref='
    '"uncompensated" gating:min="100"><data-type:fcs-dimension data-type:name="FSC-H"/>'
    "</gating:dimension></gating:RectangleGate>"
)
VALID = f'<?xml version="1.0" encoding="UTF-8"?>\n{GATING_ML_OPEN}{RANGE_GATE}</gating:Gating-ML>'


def _billion_laughs() -> str:
    entities = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)
    ]
    return (
        f'<?xml version="1.0"?>\n<!DOCTYPE gating:Gating-ML [{"".join(entities)}]>\n'
        f"{GATING_ML_OPEN}<data-type:custom_info>&lol9;</data-type:custom_info>"
        f"{RANGE_GATE}</gating:Gating-ML>"
    )


def _refused(path: Path, fragment: str) -> GatingError:
    with pytest.raises(GatingError) as caught:
        load_gatingml(path)
    assert caught.value.source == str(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert fragment in caught.value.problem, caught.value.problem
    return caught.value


def test_valid_minimal_document_loads(tmp_path):
    (path := tmp_path / "ok.xml").write_text(VALID)
    gate_set = load_gatingml(path)
    assert gate_set.gates == (RangeGate("R", None, Bound(Dimension("FSC-H"), 100.0, None)),)


def test_external_entity_is_refused_and_not_read(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    document = (
        f'<?xml version="1.0"?>\n<!DOCTYPE gating:Gating-ML [<!ENTITY xxe SYSTEM '
        f'"file://{secret}">]>\n{GATING_ML_OPEN}<data-type:custom_info>&xxe;'
        f"</data-type:custom_info>{RANGE_GATE}</gating:Gating-ML>"
    )
    (path := tmp_path / "xxe.xml").write_text(document)
    error = _refused(path, "DOCTYPE")
    assert "TOP-SECRET" not in str(error)


def test_external_dtd_is_refused(tmp_path):
    document = VALID.replace(
        "\n", '\n<!DOCTYPE gating:Gating-ML SYSTEM "http://example.invalid/gating.dtd">\n', 1
    )
    (path := tmp_path / "dtd.xml").write_text(document)
    _refused(path, "DOCTYPE")


def test_billion_laughs_is_refused_without_expanding(tmp_path):
    (path := tmp_path / "laughs.xml").write_text(_billion_laughs())
    tracemalloc.start()
    try:
        _refused(path, "DOCTYPE")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 * 2**20


def test_oversized_document_is_refused(tmp_path):
    padding = "<!-- " + "x" * (MAX_DOCUMENT_BYTES + 10) + " -->"
    (path := tmp_path / "huge.xml").write_text(VALID.replace(RANGE_GATE, padding + RANGE_GATE))
    assert path.stat().st_size > MAX_DOCUMENT_BYTES
    _refused(path, "10 MiB")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (bytes(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8)), "not well-formed"),
        (b"gate FSC-H > 100\n", "not well-formed"),
        (b"", "is empty"),
        (b"<Gating-ML><unclosed></Gating-ML>", "not well-formed"),
        (VALID.replace(RANGE_GATE, "&undefined;" + RANGE_GATE).encode(), "not well-formed"),
        (b'<?xml version="1.0"?><Workspace flowJoVersion="10.8"/>', "not a Gating-ML 2.0"),
        (VALID.replace('gating:min="100"', 'gating:min="lots"').encode(), "not valid Gating-ML"),
        (
            VALID.replace('gating:id="R"', 'gating:id="R" gating:parent_id="Nope"').encode(),
            "refers to 'Nope', which the document does not define",
        ),
    ],
    ids=[
        "random-bytes",
        "text",
        "empty",
        "unclosed",
        "undefined-entity",
        "flowjo",
        "bad-number",
        "unknown-parent",
    ],
)
def test_garbage_is_refused(tmp_path, content, fragment):
    (path := tmp_path / "garbage.xml").write_bytes(content)
    _refused(path, fragment)


def test_missing_file_and_directory_are_refused(tmp_path):
    _refused(tmp_path / "absent.xml", "cannot be read")
    _refused(tmp_path, "is a directory")


# ------------------------------------------------------------------------------ round trip


def _round_trip(gate_set: GateSet, tmp_path: Path) -> GateSet:
    path = tmp_path / "exported.xml"
    export_gatingml(gate_set, path)
    return load_gatingml(path)


def _assert_same_model(again: GateSet, original: GateSet) -> None:
    """Same gates (any valid hierarchy order), transforms and matrices."""
    assert {g.id: g for g in again.gates} == {g.id: g for g in original.gates}
    assert len(again.gates) == len(original.gates)
    assert dict(again.transforms) == dict(original.transforms)
    assert dict(again.compensations) == dict(original.compensations)


def _same_membership(first: GateSet, second: GateSet, spill=None) -> None:
    events, names = _data()
    a = evaluate(first, events, names, spill)
    b = evaluate(second, events, names, spill)
    assert set(a.populations) == set(b.populations)
    for population in a.populations:
        assert np.array_equal(a.mask(population), b.mask(population)), population


@pytest.mark.parametrize(
    "document",
    sorted(p.name for p in GML.glob("*.xml") if p.name != "gml_range_gate_attr_testing.xml"),
)
def test_export_import_round_trip_keeps_membership(document, tmp_path):
    original = load_gatingml(GML / document)
    again = _round_trip(original, tmp_path)
    _assert_same_model(again, original)
    _same_membership(original, again)


def _edge_case_gate_set() -> GateSet:
    fitc = Dimension("FITC", "MySpill")
    quadrants = QuadrantGate(
        "Q",
        None,
        (Divider("x", fitc, (-5.0, 0.0)), Divider("y", Dimension("FL2-H", "FCS", "L"), (0.4,))),
        (
            Quadrant("Q-low", (DividerRange("x", None, -5.0), DividerRange("y", None, 0.4))),
            Quadrant("Q-mid", (DividerRange("x", -5.0, 0.0),)),
            Quadrant("Q-high", (DividerRange("x", 0.0, None), DividerRange("y", 0.4, None))),
        ),
    )
    ratio = RatioDimension("ratio", "MySpill", "log")
    return GateSet(
        (
            RangeGate("below", None, Bound(Dimension("FSC-H"), None, 80.0)),
            quadrants,
            RangeGate("ratio-high", "Q-high", Bound(ratio, 0.2, None)),
            RectangleGate(
                "box",
                "below",
                (Bound(Dimension("PE", "MySpill", "L"), 0.2, 0.7), Bound(ratio, None, 0.9)),
            ),
            PolygonGate(
                "bow-tie",
                None,
                (Dimension("FL1-H", None, "L"), Dimension("FL2-H", None, "L")),
                ((0.1, 0.1), (0.6, 0.6), (0.6, 0.1), (0.1, 0.6)),  # self-intersecting
            ),
            EllipsoidGate(
                "blob",
                "Q-mid",
                (fitc, Dimension("FL4-H")),
                (0.0, 20.0),
                ((400.0, 50.0), (50.0, 300.0)),
                4.0,
            ),
            BooleanGate(
                "mixed", None, "and", (GateRef("Q-high"), GateRef("bow-tie", complement=True))
            ),
            BooleanGate("either", "below", "or", (GateRef("Q-low"), GateRef("blob"))),
        ),
        {
            "L": Logicle(t=10_000, w=0.5, m=4.5, a=0),
            "log": Flog(t=10, m=2),
            "ratio": Fratio("FL2-H", "FL1-H", a=1.0, b=0.0, c=-1.0),
        },
        {"MySpill": MY_SPILL},
    )


def test_round_trip_of_edge_cases(tmp_path):
    original = _edge_case_gate_set()
    events, names = _data()
    counts = evaluate(original, events, names).counts
    assert all(counts[p] > 0 for p in original.population_ids), dict(counts)
    again = _round_trip(original, tmp_path)
    _assert_same_model(again, original)
    _same_membership(original, again)
    _same_membership(original, again, spill=(list(DETECTORS), SPILL))


# ------------------------------------------------------------ compensation and polygons


def test_compensate_matches_flowutils():
    events, names = _data()
    ours = compensate(events, names, list(DETECTORS), SPILL)
    columns = [names.index(d) for d in DETECTORS]
    reference = flowutils.compensate.compensate(events.astype(np.float64), SPILL, columns)
    assert ours.dtype == np.float32 and ours.shape == events.shape
    expected = reference.astype(np.float32)
    assert np.all(np.abs(ours - expected) <= np.spacing(np.abs(expected)))
    others = [i for i in range(len(names)) if i not in columns]
    assert np.array_equal(ours[:, others], events[:, others])
    assert (ours[:, columns] < 0).any()  # compensation really happened


def test_fcs_compensation_uses_the_given_spill():
    events, names = _data()
    gates = (
        RangeGate("r", None, Bound(Dimension("FL1-H", "FCS", "L"), 0.3, 0.6)),
        PolygonGate(
            "p",
            None,
            (Dimension("FL2-H", "FCS"), Dimension("FL3-H", "FCS")),
            ((0, 0), (300, 20), (40, 400)),
        ),
    )
    transforms = {"L": Logicle(t=10_000, w=0.5, m=4.5, a=0)}
    with_spill = evaluate(GateSet(gates, transforms), events, names, (list(DETECTORS), SPILL))
    plain = [
        dataclasses.replace(
            g, bound=dataclasses.replace(g.bound, axis=Dimension("FL1-H", None, "L"))
        )
        if isinstance(g, RangeGate)
        else dataclasses.replace(g, axes=(Dimension("FL2-H"), Dimension("FL3-H")))
        for g in gates
    ]
    precompensated = compensate(events, names, list(DETECTORS), SPILL)
    expected = evaluate(GateSet(tuple(plain), transforms), precompensated, names)
    for population in ("r", "p"):
        assert np.array_equal(with_spill.mask(population), expected.mask(population))
    without = evaluate(GateSet(gates, transforms), events, names)
    assert any("no spillover" in note for note in without.diagnostics["p"].notes)
    assert not with_spill.diagnostics["p"].notes


@settings(max_examples=200, deadline=None, database=None)
@given(vertices=st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), min_size=3, max_size=9))
def test_polygon_matches_flowutils_on_integer_grid(vertices):
    """Integer points hit vertices and edges exactly: the boundary rule must match too."""
    grid = np.array([(x, y) for x in range(-1, 14) for y in range(-1, 14)], dtype=np.float64)
    ours = points_in_polygon(grid[:, 0], grid[:, 1], vertices)
    reference = flowutils.gating.points_in_polygon(np.array(vertices, dtype=np.float64), grid)
    assert np.array_equal(ours, reference)


# ------------------------------------------------------------------------ errors and API


def test_gate_set_rejects_bad_references():
    dim = Dimension("FSC-H")
    with pytest.raises(GatingError, match="parent 'nowhere' is not defined"):
        GateSet((RangeGate("a", "nowhere", Bound(dim, 1.0, None)),))
    quad = QuadrantGate(
        "Q", None, (Divider("d", dim, (1.0,)),), (Quadrant("lo", (DividerRange("d", None, 1.0),)),)
    )
    with pytest.raises(GatingError, match="is a quadrant gate"):
        GateSet((quad, RangeGate("a", "Q", Bound(dim, 1.0, None))))
    with pytest.raises(GatingError, match="used twice") as caught:
        GateSet((quad, RangeGate("lo", None, Bound(dim, 1.0, None))))
    assert caught.value.source == "gate 'lo'"
    with pytest.raises(GatingError, match="not a scale transformation"):
        GateSet((RangeGate("a", None, Bound(Dimension("FSC-H", None, "T"), 1.0, None)),))
    with pytest.raises(GatingError, match="no compensation matrix"):
        GateSet((RangeGate("a", None, Bound(Dimension("FSC-H", "M"), 1.0, None)),))
    with pytest.raises(GatingError, match="neither min nor max"):
        RangeGate("a", None, Bound(dim))
    with pytest.raises(GatingError, match="not one interval"):
        QuadrantGate(
            "Q",
            None,
            (Divider("d", dim, (1.0, 2.0)),),
            (Quadrant("wide", (DividerRange("d", None, 2.0),)),),
        )
    with pytest.raises(GatingError, match="W=3"):
        Logicle(t=10_000, w=3, m=4.5, a=0)


def test_evaluate_names_the_gate_and_the_missing_channel():
    events, names = _data()
    gate_set = GateSet((RangeGate("cd3", None, Bound(Dimension("CD3-APC"), 1.0, None)),))
    with pytest.raises(GatingError) as caught:
        evaluate(gate_set, events, names)
    assert caught.value.source == "gate 'cd3'"
    assert "CD3-APC" in caught.value.problem
    with pytest.raises(GatingError, match="spillover"):
        evaluate(gate_set, events, names, (["FL1-H", "nope"], np.eye(2)))


def test_result_masks_are_read_only_and_cover_all_events():
    events, names = _data()
    result = evaluate(_all_gates(), events, names)
    mask = result.mask("Range1")
    assert mask.dtype == bool and mask.shape == (events.shape[0],)
    with pytest.raises(ValueError, match="read-only"):
        mask[0] = not mask[0]
    with pytest.raises(KeyError):
        result.mask("Quadrant1")  # a quadrant gate is not a population; its quadrants are
    assert result.diagnostics["Quadrant1"].count == sum(
        result.count(q) for q in ("FL2P-FL4P", "FL2N-FL4P", "FL2N-FL4N", "FL2P-FL4N")
    )


@pytest.mark.parametrize(
    "transform",
    [Logicle(t=1024.0, w=3.125, m=6.375, a=-1.0), Logicle(t=1024.0, w=3.125, m=6.25, a=-1.0)],
)
def test_values_the_c_iteration_gives_up_on_are_solved(transform):
    """flowutils returns -1 where its iteration does not converge; every value here maps to
    the point whose inverse is the value itself."""
    x = _column("FSC-H").astype(np.float64)
    y = transform.apply(x)
    assert np.all(np.abs(transform.inverse(y) - x) <= 1e-9 * np.maximum(np.abs(x), 1.0))
    assert np.all(np.diff(y[np.argsort(x, kind="stable")]) >= 0)  # monotone


def test_placed_memory_tube_counts_equal_the_exact_transformed_evaluation():
    """A committed file gated end to end (incremental placement, cuts mapped to raw values,
    small populations kept as event indices) gives every population the events that
    evaluating its placed gates afresh on transformed values gives."""
    from cartflow.pipeline.gate import gate_file
    from tests.conftest import FIXTURE_COHORT

    gated = gate_file(FIXTURE_COHORT / "CART-001 D11_CAR-T memory_007.fcs", tube="memory")
    spill = gated.spillover
    exact = evaluate(
        gated.placed.gate_set,
        gated.fcs.events,
        gated.fcs.channel_names,
        (list(spill.channels), spill.matrix),
        ranges_in_raw_space=False,
    )
    assert len(gated.placed.populations) > 20
    for population in gated.placed.populations:
        assert gated.result.count(population) == exact.count(population), population
        assert np.array_equal(gated.result.mask(population), exact.mask(population)), population


def test_a_document_of_thousands_of_gates_is_refused_before_flowkit_reads_it(tmp_path):
    """FlowKit's parser takes minutes on 9,000 gates; the count is capped with a clear error."""
    from cartflow.gating.gatingml import MAX_GATES
    from cartflow.gating.workspace import load_lab_gates

    gates = "".join(RANGE_GATE.replace('"R"', f'"R{i}"') for i in range(9000))
    (path := tmp_path / "many.xml").write_text(VALID.replace(RANGE_GATE, gates))
    assert path.stat().st_size < MAX_DOCUMENT_BYTES  # the size cap alone would let it through
    _refused(path, f"more than {MAX_GATES} gates")
    workspace = tmp_path / "many.wsp"
    workspace.write_text(
        '<?xml version="1.0"?><Workspace xmlns:gating="http://www.isac-net.org/std/Gating-ML/'
        f'v2.0/gating" xmlns:data-type="http://www.isac-net.org/std/Gating-ML/v2.0/datatypes">'
        f"<SampleList><Sample>{gates}</Sample></SampleList></Workspace>"
    )
    with pytest.raises(GatingError, match=f"more than {MAX_GATES} gates"):
        load_lab_gates(workspace)


def test_a_fifo_is_refused_without_blocking(tmp_path):
    import os

    os.mkfifo(path := tmp_path / "gates.xml")
    _refused(path, "not a regular file")
