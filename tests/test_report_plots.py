"""The report's binned density plots: bins as if events were transformed, drawn once per
file content and gating."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from cartflow.gating.transforms import Flog, Logicle
from cartflow.pipeline.gate import gate_file
from cartflow.report.density import BINS, AxisBins, panel_from_dict, panel_svg
from cartflow.report.plots import render_sample_plots
from tests.conftest import FIXTURE_COHORT

MEMORY = FIXTURE_COHORT / "CART-001 D11_CAR-T memory_007.fcs"


@pytest.mark.parametrize(
    "scale", [None, Logicle(t=262_144.0, w=0.5, m=4.5, a=0.0), Flog(t=262_144.0, m=4.5)]
)
def test_events_fall_in_the_bins_of_their_transformed_values(scale):
    """Binning raw values at inverse-transformed edges = binning the transformed values."""
    rng = np.random.default_rng(5)
    raw = np.concatenate(
        [rng.lognormal(7, 2, 40_000), rng.normal(0, 300, 10_000), [np.nan, np.inf, -np.inf]]
    ).astype(np.float32)
    bins = AxisBins.of(raw, scale)
    with np.errstate(invalid="ignore", divide="ignore"):
        shown = raw.astype(np.float64) if scale is None else scale.apply(raw)
    edges = np.linspace(bins.low, bins.high, BINS + 1)
    expected = np.searchsorted(edges, shown, side="right") - 1
    expected[(expected >= BINS) | ~np.isfinite(shown)] = -1
    differ = np.flatnonzero(bins.codes != expected)
    # only where a transformed value sits on an edge to rounding (the inverse of an edge)
    width = (bins.high - bins.low) / BINS
    nearest = np.abs(
        (shown[differ] - bins.low) / width - np.round((shown[differ] - bins.low) / width)
    )
    assert differ.size <= 2 and np.all(nearest < 1e-6)
    # the range spans nearly all events that have a place on the scale
    assert np.count_nonzero(bins.codes >= 0) >= 0.99 * np.count_nonzero(np.isfinite(shown))


def test_plots_are_drawn_once_per_gating(tmp_path):
    sha = hashlib.sha256(MEMORY.read_bytes()).hexdigest()
    gated = gate_file(MEMORY, tube="memory")
    assert render_sample_plots(gated, sha, tmp_path)
    record = json.loads((tmp_path / f"{sha[:16]}.json").read_text(encoding="utf-8"))
    image = tmp_path / record["image"]
    assert image.is_file() and record["rows"] >= 10
    assert not render_sample_plots(gate_file(MEMORY, tube="memory"), sha, tmp_path)
    # the same file gated with another CAR cut: drawn again, the old image removed
    moved = gated.placed.cuts["CAR"] + 0.05
    regated = gate_file(MEMORY, tube="memory", fixed_cuts={"CAR": moved})
    assert render_sample_plots(regated, sha, tmp_path)
    again = json.loads((tmp_path / f"{sha[:16]}.json").read_text(encoding="utf-8"))
    assert again["key"] != record["key"] and not image.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [again["image"], f"{sha[:16]}.json"]
    )
    car = next(p for p in again["panels"] if p["name"] == "CAR")
    drawn = car["overlay"]["x_cuts"] + car["overlay"]["y_cuts"]
    assert any(c == pytest.approx(moved, rel=1e-4) for c in drawn), drawn
    svg = panel_svg(panel_from_dict(car), again["image"], again["rows"])
    assert svg.count("<path") >= 1 and svg.startswith("<svg")


def test_the_palette_is_viridis():
    from matplotlib import colormaps

    from cartflow.report.density import LEVELS, VIRIDIS

    expected = colormaps["viridis"](np.linspace(0.0, 1.0, LEVELS - 1))[:, :3]
    drawn = np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in VIRIDIS]) / 255
    assert np.abs(drawn - expected).max() <= 0.5 / 255 + 1e-9
