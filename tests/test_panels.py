"""Panels: the shipped definitions, marker spellings and matching files to panels."""

from __future__ import annotations

import shutil

import pytest

from cartflow.io.errors import PanelError, PanelMismatchError
from cartflow.panels import PANEL_DIR, load_panel, load_panels, marker_from_label, match_panel

SCATTER = [("FSC-A", None), ("FSC-H", None), ("SSC-A", None), ("Time", None)]


def _file_channels(panel, relabel=None):
    relabel = relabel or {}
    pairs = list(SCATTER)
    for entry in panel.channels:
        label = relabel.get(entry.marker, f"{entry.marker} {entry.fluorochrome}")
        pairs.append((entry.channel, label))
    return pairs


def test_shipped_panels():
    panels = {p.id: p for p in load_panels()}
    assert set(panels) == {
        f"{tube}-{cyt}" for tube in ("memory", "function", "bcell") for cyt in ("canto", "lyric")
    }
    lyric_memory = panels["memory-lyric"]
    assert set(lyric_memory.markers) == {
        "CD45",
        "CD3",
        "CAR",
        "CD4",
        "CD8",
        "CD45RA",
        "CD62L",
        "CD27",
        "CD95",
    }
    assert lyric_memory.beads
    assert set(panels["function-lyric"].markers) == {
        "CD45",
        "CD3",
        "CAR",
        "CD4",
        "CD8",
        "PD1",
        "LAG3",
        "CD71",
        "Ki67",
        "TCRgd",
    }
    assert {"CD45", "CD19", "CD3", "CAR"} == set(panels["bcell-lyric"].markers)
    for panel in panels.values():
        limit = 8 if panel.cytometer == "FACSCanto II" else 10
        assert len(panel.channels) <= limit
        assert len(panel.sha256) == 64


@pytest.mark.parametrize(
    ("label", "marker"),
    [
        ("CD45RA BV421", "CD45RA"),
        ("CD45RA-FITC", "CD45RA"),
        ("CD45RA", "CD45RA"),
        ("cd3 apc-h7", "CD3"),
        ("PerCP-Cy5.5 CD8", "CD8"),
        ("TCR γδ PE", "TCRgd"),
        ("PD-1", "PD1"),
        ("CCR7", None),  # another antigen: read as CD62L only when declared
        ("Ki-67 PE-Cy7", "Ki67"),
        ("CAR19 FITC", "CAR"),
        ("viability", None),
        (None, None),
    ],
)
def test_marker_spellings(label, marker):
    assert marker_from_label(label) == marker


@pytest.mark.parametrize("panel_id", ["memory-lyric", "function-canto", "bcell-lyric"])
def test_file_matches_its_panel_without_a_tube(panel_id):
    panel = {p.id: p for p in load_panels()}[panel_id]
    match = match_panel("f.fcs", _file_channels(panel), load_panels())
    assert match.panel.id == panel_id
    assert match.marker_channels["CD3"] == panel.channel_for("CD3")


def test_tube_label_selects_the_panel():
    panels = load_panels()
    memory = {p.id: p for p in panels}["memory-lyric"]
    with pytest.raises(PanelMismatchError, match="panel bcell-lyric: missing marker"):
        match_panel("f.fcs", _file_channels(memory), panels, tube="BCELL COUNT")
    assert (
        match_panel("f.fcs", _file_channels(memory), panels, "CAR-T memory").panel.tube == "memory"
    )


def test_missing_markers_are_named():
    panels = load_panels()
    memory = {p.id: p for p in panels}["memory-lyric"]
    channels = _file_channels(memory, relabel={"CD27": "", "CD95": "CD28 BV605"})
    with pytest.raises(PanelMismatchError) as caught:
        match_panel("p1.fcs", channels, panels, tube="memory")
    problem = caught.value.problem
    assert "CD27" in problem and "CD95" in problem and "'CD28 BV605'" in problem
    assert "CD3" not in problem.replace("CD3+", "")
    assert str(caught.value).startswith("p1.fcs")


def test_unknown_layout():
    with pytest.raises(PanelMismatchError, match="fit no known panel layout"):
        match_panel("x.fcs", [("FL1-H", "CD3"), ("FL2-H", "CD8")], load_panels())


def test_invalid_panel_yaml_names_the_line(tmp_path):
    for name in ("markers.yaml", "fluorochromes.yaml"):
        shutil.copy(PANEL_DIR / name, tmp_path / name)
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "id: x\ntube: memory\nchannels: [\n  {channel: A, marker: CD3\n", encoding="utf-8"
    )
    with pytest.raises(PanelError, match="line"):
        load_panel(bad)
    bad.write_text(
        "id: x\ntube: m\ncytometer: c\nscatter: [FSC-A, FSC-H, SSC-A]\ntime: Time\n"
        "channels:\n  - {channel: A, marker: CD3}\n  - {channel: B, marker: Live Dead}\n",
        encoding="utf-8",
    )
    with pytest.raises(PanelError, match=r"bad.yaml line 8: marker 'Live Dead'.*no spaces"):
        load_panel(bad)


def test_lab_marker_names_are_taken_as_written(tmp_path):
    """A marker the spellings do not know is the lab's own name for it, kept as written."""
    for name in ("markers.yaml", "fluorochromes.yaml"):
        shutil.copy(PANEL_DIR / name, tmp_path / name)
    lab = tmp_path / "lab.yaml"
    names = ["NK1.1", "TCRγδ", "Live/Dead", "HLA-DR", "Va2", "Hoechst-405", "CD45RA"]
    lines = "".join(f"  - {{channel: D{i}, marker: {n}}}\n" for i, n in enumerate(names))
    lab = tmp_path / "nk.yaml"
    lab.write_text(
        "id: nk\ntube: nk\ncytometer: c\nscatter: [FSC-A, FSC-H, SSC-A]\ntime: Time\n"
        f"channels:\n{lines}",
        encoding="utf-8",
    )
    panel = load_panel(lab)
    # TCRγδ is a declared spelling of TCRgd; the others are the lab's names as written
    assert panel.markers == ("NK1.1", "TCRgd", "Live/Dead", "HLA-DR", "Va2", "Hoechst-405",
                             "CD45RA")  # fmt: skip
    pairs = [("FSC-A", None), ("FSC-H", None), ("SSC-A", None), ("Time", None)]
    pairs += [(f"D{i}", f"{n} PE") for i, n in enumerate(names)]
    assert match_panel("nk.fcs", pairs, [panel]).panel is panel
    pairs[4] = ("D0", "CD161 PE")
    with pytest.raises(PanelMismatchError, match=r"NK1.1 \(channel D0 is labelled 'CD161 PE'\)"):
        match_panel("nk.fcs", pairs, [panel])
