"""Sample identity: timepoint labels, manifests and keyword/file-name rules."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from cartflow.io.errors import CartflowError, IdentityError, ManifestError
from cartflow.pipeline.identity import (
    IdentityRules,
    cross_check,
    identify,
    load_manifest,
    parse_timepoint,
)


@pytest.mark.parametrize(
    ("label", "day", "canonical"),
    [
        ("D5", 5, "D5"),
        ("d+7", 7, "D7"),
        ("Day 11", 11, "D11"),
        ("day14", 14, "D14"),
        ("D 21", 21, "D21"),
        ("M3", 90, "M3"),
        ("month 6", 180, "M6"),
        ("Month 12", 365, "M12"),
        ("m+9", 270, "M9"),
        ("LA", -30, "LA"),
        ("leukapheresis", -30, "LA"),
    ],
)
def test_timepoint_labels_map_to_nominal_days(label, day, canonical):
    timepoint = parse_timepoint(label)
    assert (timepoint.nominal_day, timepoint.label) == (day, canonical)


@pytest.mark.parametrize(
    "label", ["", "week 2", "D", "5", "M0", "Dx7", "day seven", "D99999999999999999999", "M400"]
)
def test_unparseable_timepoints_name_file_and_label(label):
    with pytest.raises(IdentityError) as caught:
        parse_timepoint(label, "batch/P01.fcs")
    assert "batch/P01.fcs" in str(caught.value)
    assert repr(label) in caught.value.problem


def _manifest(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "manifest.csv"
    path.write_text(
        "file,patient,timepoint,tube,blood_volume_ul,beads_per_tube,sample_date\n" + body,
        encoding="utf-8",
    )
    return path


def test_manifest_rows_identify_files(tmp_path):
    manifest = load_manifest(
        _manifest(tmp_path, "sub/a.fcs,CART-01,Day 7,memory,50,50150,2025-03-07\n")
    )
    identity = identify(tmp_path / "a.fcs", {}, manifest)
    assert identity.patient == "CART-01"
    assert identity.timepoint.nominal_day == 7
    assert identity.tube == "memory"
    assert identity.blood_volume_ul == 50.0 and identity.beads_per_tube == 50150.0
    assert identity.sample_date == date(2025, 3, 7)
    assert identity.source == "manifest line 2"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("a.fcs,CART-01,D7,memory,fifty,50000,2025-03-07\n", "line 2, column blood_volume_ul"),
        ("a.fcs,CART-01,D7,memory,50,-3,2025-03-07\n", "line 2, column beads_per_tube"),
        ("a.fcs,CART-01,D7,memory,50,50000,07.03.2025\n", "line 2, column sample_date"),
        ("a.fcs,,D7,memory,50,50000,2025-03-07\n", "line 2, column patient: empty"),
        ("a.fcs,CART-01,D7,memory,,,\na.fcs,CART-02,D7,memory,,,\n", "line 3, column file"),
        ("a.fcs,CART-01,week 1,memory,,,\n", "line 2"),
        ("a.fcs,CART-01,D7,memory,,,,extra,extra\n", "(line 2): has 9 cells, the header has 7"),
        ("a.fcs,CART-01,D7,memory,1e400,,\n", "column blood_volume_ul: '1e400' is not finite"),
    ],
)
def test_manifest_errors_name_line_and_column(tmp_path, body, fragment):
    with pytest.raises((ManifestError, IdentityError)) as caught:
        load_manifest(_manifest(tmp_path, body))
    assert fragment in str(caught.value)
    assert "manifest.csv" in str(caught.value)


def test_manifest_missing_columns(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("file,patient\nx.fcs,P1\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="missing column"):
        load_manifest(path)


def test_file_absent_from_manifest_is_an_identity_error(tmp_path):
    manifest = load_manifest(_manifest(tmp_path, "a.fcs,CART-01,D7,memory,,,\n"))
    with pytest.raises(IdentityError, match="not listed in manifest"):
        identify(tmp_path / "b.fcs", {}, manifest)


def test_keywords_come_before_the_file_name():
    keywords = {"PATIENT ID": "CART-07", "TIMEPOINT": "M3", "TUBE NAME": "CAR-T memory"}
    identity = identify(Path("CART-99 D5_other_001.fcs"), keywords)
    assert (identity.patient, identity.timepoint.label, identity.tube) == (
        "CART-07",
        "M3",
        "CAR-T memory",
    )
    assert "keyword" in identity.source


def test_file_name_rules_fill_the_gaps():
    identity = identify(Path("CART-003 D7_CAR-T memory_001.fcs"), {"$SRC": "DOE^JANE"})
    assert (identity.patient, identity.timepoint.nominal_day, identity.tube) == (
        "CART-003",
        7,
        "CAR-T memory",
    )
    assert "file name" in identity.source


def test_no_identity_is_a_clear_error():
    with pytest.raises(IdentityError, match="no patient"):
        identify(Path("sample.fcs"), {})


def test_rules_from_yaml(tmp_path):
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(
        "patient_keywords: [STUDY NO]\nfilename_patterns: ['^(?P<timepoint>D\\d+)']\n",
        encoding="utf-8",
    )
    rules = IdentityRules.from_yaml(rules_file)
    identity = identify(Path("D14 something.fcs"), {"STUDY NO": "X-1"}, rules=rules)
    assert (identity.patient, identity.timepoint.nominal_day) == ("X-1", 14)


def test_rules_yaml_errors_are_specific(tmp_path):
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text("patient_keyword: [X]\n", encoding="utf-8")
    with pytest.raises(IdentityError, match="unknown identity rule"):
        IdentityRules.from_yaml(rules_file)
    rules_file.write_text("filename_patterns: ['(unclosed']\n", encoding="utf-8")
    with pytest.raises(IdentityError, match="filename pattern"):
        IdentityRules.from_yaml(rules_file)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("- a\n", "must be a mapping"),
        ("patient_keywords: 5\n", "patient_keywords: expected a list of texts, not 5"),
        ("patient_keywords: PATIENT ID\n", "expected a list of texts, not 'PATIENT ID'"),
        ("patient_keywords: [null]\n", "expected a list of texts, not [None]"),
    ],
)
def test_rules_of_the_wrong_shape_are_refused(tmp_path, text, fragment):
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(text, encoding="utf-8")
    with pytest.raises(IdentityError) as caught:
        IdentityRules.from_yaml(rules_file)
    assert fragment in caught.value.problem and str(rules_file) in str(caught.value)


def _yaml_loaders():
    from cartflow.gating.template import load_template
    from cartflow.panels import load_panel
    from cartflow.pipeline.clinical import load_hematotox
    from cartflow.pipeline.outcomes import load_outcome_config

    return {
        "identity rules": IdentityRules.from_yaml,
        "gating template": load_template,
        "panel": load_panel,
        "analysis configuration": load_outcome_config,
        "hematotox table": load_hematotox,
    }


@pytest.mark.parametrize("kind", list(_yaml_loaders()))
def test_every_yaml_input_names_the_file_and_line_of_a_parse_error(tmp_path, kind):
    path = tmp_path / "broken.yaml"
    path.write_text("id: x\nitems: [\n  {name: a\n", encoding="utf-8")
    with pytest.raises(CartflowError) as caught:
        _yaml_loaders()[kind](path)
    message = str(caught.value)
    assert f"{path} line 4" in message and "invalid YAML: " in message
    assert "\n" not in message


MANIFEST_HEADER = ["file", "patient", "timepoint", "tube", "blood_volume_ul", "sample_date"]
MANIFEST_ROW = ["a.fcs", "CART-Ü1", "D7", "memory", "50,5", "2025-03-07"]


@pytest.mark.parametrize(
    ("encoding", "delimiter", "trailing"),
    [("utf-16", "\t", ""), ("cp1252", ";", ""), ("utf-8-sig", ";", ";;;;;\n;;;;;\n"),
     ("utf-8", ",", ",,,,,\n\n")],
)  # fmt: skip
def test_manifests_are_read_as_clinical_tables_are(tmp_path, encoding, delimiter, trailing):
    row = MANIFEST_ROW if delimiter == ";" else [*MANIFEST_ROW[:4], "50.5", MANIFEST_ROW[5]]
    text = delimiter.join(MANIFEST_HEADER) + "\n" + delimiter.join(row) + "\n" + trailing
    path = tmp_path / "manifest.csv"
    path.write_bytes(text.encode(encoding))
    manifest = load_manifest(path)
    (entry,) = manifest.rows.values()
    assert (entry.patient, entry.blood_volume_ul, entry.line) == ("CART-Ü1", 50.5, 2)


def test_an_excel_manifest_with_trailing_empty_rows(tmp_path):
    import pandas as pd

    path = tmp_path / "manifest.xlsx"
    frame = pd.DataFrame([[*MANIFEST_ROW[:4], 50.0, "2025-03-07"], [None] * 6],
                         columns=MANIFEST_HEADER)  # fmt: skip
    frame.to_excel(path, index=False)
    (entry,) = load_manifest(path).rows.values()
    assert (entry.patient, entry.blood_volume_ul) == ("CART-Ü1", 50.0)


@pytest.mark.parametrize(
    ("cells", "fragment"),
    [
        ("1e12,,2025-03-07", "line 2, column blood_volume_ul: '1e12' is implausible"),
        ("1e-12,,2025-03-07", "line 2, column blood_volume_ul: '1e-12' is implausible"),
        ("50,1e15,2025-03-07", "line 2, column beads_per_tube: '1e15' is implausible"),
        ("50,50000,2099-01-01", "line 2, column sample_date: '2099-01-01' is implausible"),
        ("50,50000,0001-01-01", "line 2, column sample_date: '0001-01-01' is implausible"),
    ],
)
def test_implausible_manifest_values_are_refused(tmp_path, cells, fragment):
    with pytest.raises(ManifestError) as caught:
        load_manifest(_manifest(tmp_path, f"a.fcs,CART-01,D7,memory,{cells}\n"))
    assert fragment in str(caught.value) and "manifest.csv" in str(caught.value)


def test_a_sample_date_is_checked_against_infusion_and_timepoint(tmp_path):
    manifest = load_manifest(_manifest(tmp_path, "a.fcs,CART-01,D14,memory,50,,2024-01-10\n"))
    identity = identify(tmp_path / "a.fcs", {}, manifest)
    before = cross_check(tmp_path / "a.fcs", {}, identity, infusion=date(2024, 2, 1))
    assert [str(d) for d in before] == [
        "date: CART-01 D14 (day 14) (manifest line 2), but sample_date 2024-01-10 is day -22 "
        "after CART-01's infusion on 2024-02-01"
    ]
    assert cross_check(tmp_path / "a.fcs", {}, identity, infusion=date(2023, 12, 28)) == ()
    late = cross_check(tmp_path / "a.fcs", {"$DATE": "x"}, identity, acquired=date(2024, 1, 20))
    assert "acquired 2024-01-20 ($DATE)" in str(late[0])
