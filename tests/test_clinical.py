"""Clinical table: loading, validation (every problem with row and column) and derivations."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cartflow.io.errors import CartflowError
from cartflow.pipeline.clinical import (
    HEMATOTOX_PATH,
    ClinicalTableError,
    DeriveOptions,
    EndpointOptions,
    burden_class,
    burden_dynamics,
    derive_endpoints,
    derive_patients,
    hematotox_scores,
    load_clinical,
    load_hematotox,
    parse_hematotox,
    validate_clinical,
)
from cartflow.simulate import SimulationConfig, simulate_cohort

HEADER = (
    "patient,infusion_date,bridging,tumour_burden_before_pct,tumour_burden_after_pct,"
    "anc_per_nl,platelets_per_nl,haemoglobin_g_dl,crp_mg_l,relapse_date,"
    "cd19_negative_relapse,death_date,hsct_date,last_followup_date"
)
ROWS = (
    "P1,2024-01-10,InO,12.0,0.5,1.5,200,10.0,5.0,2024-06-01,false,,,2025-01-10",
    "P2,2024-02-01,chemo,30.0,26.0,0.5,50,8.0,40.0,,false,2024-05-01,,2024-05-01",
    "P3,2024-03-01,chemo,4.0,6.0,1.0,100,9.5,10.0,,false,,2024-05-01,2025-03-01",
)


@pytest.fixture(scope="module")
def simulated_cohort(tmp_path_factory):
    """A small synthetic cohort: only its clinical table and truth are used."""
    config = SimulationConfig(
        patients=24, seed=3, events=1000, tubes=("bcell",), timepoints=("D7",)
    )
    return simulate_cohort(tmp_path_factory.mktemp("cohort"), config)


def write_csv(path: Path, rows=ROWS, header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def problems_of(path, known=None) -> list[str]:
    return [str(p) for p in validate_clinical(path, known)]


# --- loading valid tables ---------------------------------------------------------------------


def test_valid_table_loads_typed(tmp_path):
    table = load_clinical(write_csv(tmp_path / "c.csv"))
    data = table.data
    assert table.patients == ("P1", "P2", "P3")
    assert pd.api.types.is_datetime64_any_dtype(data["infusion_date"])
    assert data["platelets_per_nl"].tolist() == [200, 50, 100]
    assert data["cd19_negative_relapse"].tolist() == [False, False, False]
    assert pd.isna(data.loc[0, "death_date"])


def test_simulated_clinical_table_is_valid(simulated_cohort):
    table = load_clinical(simulated_cohort.clinical)
    assert len(table.data) == len(pd.read_csv(simulated_cohort.clinical))


def test_dataframe_input_and_header_spelling(tmp_path):
    frame = pd.read_csv(write_csv(tmp_path / "c.csv"), dtype=str, keep_default_na=False)
    frame.columns = [c.upper() if c == "patient" else c for c in frame.columns]
    frame = frame.rename(columns={"last_followup_date": " Last Followup Date "})
    assert load_clinical(frame).patients == ("P1", "P2", "P3")


def test_semicolon_csv_with_decimal_commas_and_dotted_dates(tmp_path):
    rows = [r.replace(",", ";") for r in ROWS[:1]]
    rows = [rows[0].replace("12.0", "12,5").replace("2024-01-10", "10.01.2024")]
    path = write_csv(tmp_path / "c.csv", rows, HEADER.replace(",", ";"))
    data = load_clinical(path).data
    assert data.loc[0, "tumour_burden_before_pct"] == 12.5
    assert data.loc[0, "infusion_date"] == pd.Timestamp("2024-01-10")


def test_excel_unicode_text_utf16_with_tabs_loads(tmp_path):
    path = tmp_path / "c.txt"
    lines = [HEADER.replace(",", "\t"), *(r.replace(",", "\t") for r in ROWS)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-16")  # with its byte-order mark
    assert load_clinical(path).patients == ("P1", "P2", "P3")


def test_blank_lines_are_skipped_but_rows_keep_their_numbers(tmp_path):
    path = write_csv(tmp_path / "c.csv", (ROWS[0], "", ROWS[1].replace("0.5,50", "0.5,x")))
    assert problems_of(path) == ["row 3 (line 4), column platelets_per_nl: 'x' is not a number"]


# --- every problem, with row and column -------------------------------------------------------


def test_missing_required_columns_are_named(tmp_path):
    header = HEADER.replace("death_date,", "").replace(",last_followup_date", "")
    rows = [",".join(r.split(",")[:11] + r.split(",")[12:13]) for r in ROWS]
    found = problems_of(write_csv(tmp_path / "c.csv", rows, header))
    assert found == [
        "column death_date: required column is missing",
        "column last_followup_date: required column is missing",
    ]


def test_unknown_patient_is_reported_with_row(tmp_path):
    found = problems_of(write_csv(tmp_path / "c.csv"), known={"P1", "P3"})
    assert found == ["row 2 (line 3), column patient: 'P2' has no results in the store"]


def test_event_before_infusion_and_followup_before_event(tmp_path):
    rows = (
        ROWS[0].replace("2024-06-01", "2023-12-01"),  # relapse before infusion
        ROWS[1].replace("2024-05-01,,2024-05-01", "2024-05-01,,2024-04-01"),  # FU < death
        ROWS[2],
    )
    found = problems_of(write_csv(tmp_path / "c.csv", rows))
    assert found == [
        "row 1 (line 2), column relapse_date: 2023-12-01 is before infusion_date 2024-01-10",
        "row 2 (line 3), column last_followup_date: 2024-04-01 is before death_date 2024-05-01",
    ]


def test_relapse_after_death_is_impossible(tmp_path):
    rows = (ROWS[1].replace(",,false,2024-05-01", ",2024-06-01,false,2024-05-01"),)
    found = problems_of(write_csv(tmp_path / "c.csv", rows))
    assert "row 1 (line 2), column relapse_date: 2024-06-01 is after death_date 2024-05-01" in (
        found
    )


def test_garbage_values_are_all_collected_in_one_error(tmp_path):
    rows = (
        ROWS[0].replace("2024-01-10", "10/01/2024").replace("1.5,200", "lots,200"),
        ROWS[1].replace("30.0", "130").replace(",false,", ",maybe,").replace("40.0", "inf"),
        ROWS[2].replace("2024-03-01,chemo", "2024-02-30,chemo").replace("9.5", "-1"),
        ROWS[2].replace("2025-03-01", ""),  # duplicate patient, missing follow-up
    )
    with pytest.raises(ClinicalTableError) as caught:
        load_clinical(write_csv(tmp_path / "c.csv", rows))
    error = caught.value
    assert isinstance(error, CartflowError)
    assert error.kind == "clinical"
    assert [str(p) for p in error.problems] == [
        "row 1 (line 2), column anc_per_nl: 'lots' is not a number",
        "row 1 (line 2), column infusion_date: '10/01/2024' is not a date (use YYYY-MM-DD)",
        "row 2 (line 3), column cd19_negative_relapse: 'maybe' is not yes/no",
        "row 2 (line 3), column crp_mg_l: 'inf' is not a number",
        "row 2 (line 3), column tumour_burden_before_pct: 130 % is above 100 %",
        "row 3 (line 4), column haemoglobin_g_dl: -1 must not be negative",
        "row 3 (line 4), column infusion_date: '2024-02-30' is not a date (use YYYY-MM-DD)",
        "row 4 (line 5), column last_followup_date: required value is missing",
        "row 4 (line 5), column patient: 'P3' repeats row 3",
    ]
    assert str(error).startswith(f"{tmp_path / 'c.csv'}: 9 problems: row 1 (line 2)")
    assert (error.problems[0].row, error.problems[0].column) == (1, "anc_per_nl")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "file is empty"),
        ("\n\n", "file has no header row"),
        (HEADER + "\n", "table has no data rows"),
        (b"\xff\xfe\x00garbage\x00,\x00", None),
    ],
)
def test_empty_or_unreadable_files_never_crash(tmp_path, content, expected):
    path = tmp_path / "c.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ClinicalTableError) as caught:
        load_clinical(path)
    if expected:
        assert str(caught.value.problems[0]) == expected


def test_missing_file_and_ragged_rows(tmp_path):
    assert problems_of(tmp_path / "none.csv") == ["file does not exist"]
    path = write_csv(tmp_path / "c.csv", (ROWS[0], ROWS[1] + ",extra,cells", ROWS[2] + ",,"))
    assert problems_of(path) == ["row 2 (line 3): has 16 cells, the header has 14"]
    short = write_csv(tmp_path / "s.csv", ("P1,2024-01-10",))
    assert "row 1 (line 2), column last_followup_date: required value is missing" in (
        problems_of(short)
    )


def test_quoted_line_breaks_keep_line_numbers_right(tmp_path):
    rows = (ROWS[0].replace(",InO,", ',"In\nO",'), ROWS[1].replace("40.0", "high"))
    found = problems_of(write_csv(tmp_path / "c.csv", rows))
    assert found == ["row 2 (line 4), column crp_mg_l: 'high' is not a number"]


# --- Excel ------------------------------------------------------------------------------------


def write_xlsx(path: Path, rows) -> Path:
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(HEADER.split(","))
    for row in rows:
        sheet.append(row)
    book.save(path)
    return path


def excel_row(text: str) -> list:
    cells: list = []
    for cell in text.split(","):
        if len(cell) == 10 and cell[4] == "-":
            cells.append(pd.Timestamp(cell).to_pydatetime())  # real Excel dates
        else:
            try:
                cells.append(float(cell))
            except ValueError:
                cells.append(cell or None)
    return cells


def test_excel_table_loads(tmp_path):
    path = write_xlsx(tmp_path / "c.xlsx", [excel_row(r) for r in ROWS])
    data = load_clinical(path).data
    assert data["infusion_date"].tolist() == [
        pd.Timestamp(d) for d in ("2024-01-10", "2024-02-01", "2024-03-01")
    ]
    assert data["crp_mg_l"].tolist() == [5.0, 40.0, 10.0]


def test_excel_problems_name_the_sheet_row(tmp_path):
    rows = [excel_row(r) for r in ROWS]
    rows[1][1] = "soon"
    rows[2][11] = pd.Timestamp("2023-01-01").to_pydatetime()  # death before infusion
    found = problems_of(write_xlsx(tmp_path / "c.xlsx", rows))
    assert found == [
        "row 2 (sheet row 3), column infusion_date: 'soon' is not a date (use YYYY-MM-DD)",
        "row 3 (sheet row 4), column death_date: 2023-01-01 is before infusion_date 2024-03-01",
        "row 3 (sheet row 4), column hsct_date: 2024-05-01 is after death_date 2023-01-01",
    ]


def test_broken_excel_file_is_a_problem_not_a_crash(tmp_path):
    pytest.importorskip("openpyxl")
    path = tmp_path / "c.xlsx"
    path.write_bytes(b"PK\x03\x04 not really a workbook")
    assert problems_of(path)[0].startswith("cannot be read:")


# --- derivations ------------------------------------------------------------------------------


def test_endpoints_from_dates(tmp_path):
    data = load_clinical(write_csv(tmp_path / "c.csv")).data
    ends = derive_endpoints(data)
    assert ends["efs_days"].tolist() == [143.0, 90.0, 365.0]
    assert ends["efs_event"].tolist() == [True, True, False]
    assert ends["efs_event_type"].tolist() == ["relapse", "death", "none"]
    assert ends["os_days"].tolist() == [366.0, 90.0, 365.0]
    assert ends["os_event"].tolist() == [False, True, False]


def test_hsct_censoring_is_an_option(tmp_path):
    rows = (ROWS[2].replace(",,false,,2024-05-01,", ",2024-09-01,false,,2024-05-01,"),)
    data = load_clinical(write_csv(tmp_path / "c.csv", rows)).data
    plain = derive_endpoints(data)
    censored = derive_endpoints(data, EndpointOptions(censor_at_hsct=True))
    assert (plain.loc[0, "efs_days"], plain.loc[0, "efs_event"]) == (184.0, True)
    assert (censored.loc[0, "efs_days"], censored.loc[0, "efs_event"]) == (61.0, False)
    assert censored.loc[0, "efs_censored_at_hsct"]
    assert censored.loc[0, "os_days"] == plain.loc[0, "os_days"]


def test_progression_date_counts_as_efs_event(tmp_path):
    header = HEADER + ",progression_date"
    rows = (ROWS[0] + ",2024-03-01",)
    ends = derive_endpoints(load_clinical(write_csv(tmp_path / "c.csv", rows, header)).data)
    assert (ends.loc[0, "efs_days"], ends.loc[0, "efs_event_type"]) == (51.0, "progression")


def test_endpoints_match_simulator_truth(simulated_cohort):
    data = load_clinical(simulated_cohort.clinical).data
    truth = pd.read_csv(simulated_cohort.truth_dir / "patients.csv")
    ends = derive_endpoints(data)
    assert (ends["efs_event"] == truth["efs_event"]).all()
    assert (ends["os_event"] == truth["os_event"]).all()
    assert np.abs(ends["efs_days"] - truth["efs_days"]).max() <= 1.0  # dates are whole days
    assert np.abs(ends["os_days"] - truth["os_days"]).max() <= 1.0


def test_burden_classes_and_dynamics():
    before = burden_class(pd.Series([5.0, 5.01, 30.0, np.nan, 1.0]))
    after = burden_class(pd.Series([1.0, 0.2, 12.0, 3.0, 7.0]))
    assert before.tolist()[:3] == ["low", "high", "high"] and pd.isna(before[3])
    dynamics = burden_dynamics(before, after)
    assert dynamics.tolist()[:3] == ["low→low", "high→low", "high→high"]
    assert pd.isna(dynamics[3]) and dynamics[4] == "low→high"


# --- ALL-Hematotox ----------------------------------------------------------------------------


def test_hematotox_points_and_risk_groups():
    table = load_hematotox()
    assert not table.verified and "Nair" in table.source and "before clinical use" in table.caveat
    data = pd.DataFrame(
        {
            "anc_per_nl": [2.0, 1.0, 0.5, 1.0, np.nan],
            "platelets_per_nl": [200, 175, 74, 60, 100],
            "haemoglobin_g_dl": [12.0, 9.0, 8.9, 8.0, 10.0],
            "crp_mg_l": [1.0, 30.0, 31.0, 50.0, 1.0],
            "tumour_burden_after_pct": [1.0, 5.0, 25.0, 26.0, 0.0],
        }
    )
    scores = hematotox_scores(data, table)
    assert scores["hematotox_platelets_points"].tolist()[:4] == [0, 1, 2, 2]
    assert scores["hematotox_marrow_blasts_points"].tolist()[:4] == [0, 0, 1, 2]
    assert scores["hematotox_score"].tolist()[:4] == [0, 2, 6, 7]
    assert math.isnan(scores["hematotox_score"][4])  # a missing input: no partial score
    assert scores["hematotox_risk"].tolist()[:4] == [
        "low (<4)",
        "low (<4)",
        "high (≥4)",
        "high (≥4)",
    ]
    assert scores["hematotox_risk3"].tolist()[:4] == ["≤2", "≤2", ">4", ">4"]


def test_hematotox_risk_boundaries():
    table = load_hematotox()
    data = pd.DataFrame(
        {
            "anc_per_nl": [1.0, 1.0, 1.0],
            "platelets_per_nl": [100, 100, 50],
            "haemoglobin_g_dl": [12.0, 8.0, 8.0],
            "crp_mg_l": [1.0, 1.0, 50.0],
            "tumour_burden_after_pct": [1.0, 1.0, 1.0],
        }
    )
    scores = hematotox_scores(data, table)
    assert scores["hematotox_score"].tolist() == [2, 3, 5]
    assert scores["hematotox_risk"].tolist() == ["low (<4)", "low (<4)", "high (≥4)"]
    assert scores["hematotox_risk3"].tolist() == ["≤2", "3–4", ">4"]


def test_hematotox_table_is_configurable(tmp_path):
    shipped = HEMATOTOX_PATH.read_text(encoding="utf-8")
    text = shipped.replace('rules: [["< 1.2", 1]]', 'rules: [["< 0.5", 3]]')
    assert text != shipped
    path = tmp_path / "h.yaml"
    path.write_text(text, encoding="utf-8")
    table = load_hematotox(path)
    assert table.origin == str(path)
    scores = hematotox_scores(pd.DataFrame({"anc_per_nl": [0.4, 0.6]}), table)
    assert scores["hematotox_anc_points"].tolist() == [3, 0]
    assert scores["hematotox_score"].isna().all()  # other inputs absent


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("items: [", "invalid YAML"),
        ("source: x\n", "needs 'source' and 'items'"),
        ("source: x\nitems: [{name: a, column: b, rules: [['about 3', 1]]}]", "is not ['< 1.5'"),
        ("source: x\nitems: []\nrisk_groups: {r: [{label: a}, {max: 3, label: b}]}", "last band"),
    ],
)
def test_bad_hematotox_tables_are_errors(text, message):
    with pytest.raises(ClinicalTableError, match=re.escape(message)):
        parse_hematotox(text, "h.yaml")


def test_the_shipped_hematotox_table_is_the_default_and_says_it_is_unverified():
    table = load_hematotox()
    assert table.origin == str(HEMATOTOX_PATH)
    assert table.items and not table.verified and "not verified" in table.caveat.lower()


def test_derive_patients_combines_everything(simulated_cohort):
    table = load_clinical(simulated_cohort.clinical)
    derived = derive_patients(table, load_hematotox(), DeriveOptions(burden_threshold_pct=5.0))
    for column in (
        "efs_days",
        "burden_after_class",
        "burden_dynamics",
        "hematotox_score",
        "hematotox_risk",
        "bridging",
        "tumour_burden_after_pct",
    ):
        assert column in derived
    assert derived["hematotox_score"].notna().all()
