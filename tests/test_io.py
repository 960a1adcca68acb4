"""The trace reader: real files in every encoding and format, rejects, dates, flags, errors."""

import json
import re
from datetime import date

import numpy as np
import pandas as pd
import pytest

from geoflow import schema
from geoflow.errors import GeoflowError, InputError, SchemaError
from geoflow.io import (
    DAY_FIRST_DETECTED,
    SERIAL_DATE,
    UNKNOWN_HEADER,
    detect_encoding,
    distinct_by_hash,
    load_column_map,
    read_traces,
    sniff_delimiter,
)

PLACES = ["Ciudad Juárez", "Nuevo León", "Querétaro", "San Nicolás de los Garza", "Peñón"]
HEADER = [
    "Trace Number", "Serial Number", "FFL Name", "FFL City", "FFL State", "Purchaser Name",
    "Purchase Date", "Recovery Date", "Recovery City", "Recovery State",
]


def _rows() -> list[list[str]]:
    return [
        [f"T{i}", f"SN{i}", "GAT Guns", "E DUNDEE", "IL", "José Núñez", "09/14/2008",
         "2008-10-01", place, "CHIH"]
        for i, place in enumerate(PLACES)
    ]


def _write(path, rows, *, delimiter=",", encoding="utf-8", header=HEADER):
    lines = [delimiter.join(header), *(delimiter.join(r) for r in rows)]
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def _frame(rows=None) -> pd.DataFrame:
    return pd.DataFrame(rows or _rows(), columns=HEADER)


def _accounting_holds(result) -> bool:
    return result.source["rows_read"] == len(result.records) + result.rejects["line"].nunique()


# ---------------------------------------------------------------------------- encodings


@pytest.mark.parametrize(
    ("encoding", "detected"),
    [("utf-8", "utf-8"), ("utf-8-sig", "utf-8-sig"), ("cp1252", "cp1252"),
     ("latin-1", "cp1252"), ("utf-16", "utf-16")],
)
def test_accented_place_names_round_trip_in_every_encoding(tmp_path, encoding, detected):
    path = _write(tmp_path / "traces.csv", _rows(), encoding=encoding)
    result = read_traces(path)
    assert result.records["recovery_city"].tolist() == PLACES
    assert result.records["purchaser_name"].unique().tolist() == ["José Núñez"]
    assert result.records["trace_id"].tolist() == [f"T{i}" for i in range(5)]
    assert result.source["encoding"] == detected
    assert result.source["format"] == "csv"


def test_cp1252_punctuation_and_undefined_bytes_fall_back_to_latin1(tmp_path):
    rows = _rows()
    rows[0][8] = "“Ciudad Juárez”"
    data = "\n".join([",".join(HEADER), *(",".join(r) for r in rows)]).encode("cp1252")
    path = tmp_path / "traces.csv"
    path.write_bytes(data.replace(b"Pe\xf1\xf3n", b"Pe\xf1\x81n"))
    result = read_traces(path)
    assert result.source["encoding"] == "cp1252/latin-1"
    assert result.records["recovery_city"].iloc[0] == "“Ciudad Juárez”"
    assert result.records["recovery_city"].iloc[4] == "Peñ\x81n"
    assert result.records["recovery_city"].iloc[2] == "Querétaro"


def test_a_byte_order_mark_and_a_stray_cp1252_byte_read_with_a_warning(tmp_path):
    # Excel's "CSV UTF-8" with one cp1252 byte pasted in: read as the same file without the
    # mark is (the byte as cp1252, a warning at its line), not refused
    rows = _rows()
    data = "\n".join([",".join(HEADER), *(",".join(r) for r in rows)]).encode("utf-8")
    data = data.replace("Querétaro".encode(), "Querétaro".encode("cp1252"))
    plain = read_traces(_write_bytes(tmp_path / "plain.csv", data))
    marked = read_traces(_write_bytes(tmp_path / "marked.csv", b"\xef\xbb\xbf" + data))
    assert marked.source["encoding"] == "utf-8-sig" and plain.source["encoding"] == "utf-8"
    assert marked.records["recovery_city"].tolist() == PLACES
    pd.testing.assert_frame_equal(marked.warnings, plain.warnings)
    assert marked.warnings["line"].tolist() == [4]  # the third record's line


def _write_bytes(path, data: bytes):
    path.write_bytes(data)
    return path


def test_explicit_encoding_wins_over_detection(tmp_path):
    path = _write(tmp_path / "traces.csv", _rows(), encoding="utf-8")
    result = read_traces(path, encoding="latin-1")
    assert result.source["encoding"] == "latin-1"
    assert result.records["recovery_city"].iloc[0] == "Ciudad JuÃ¡rez"


def test_explicit_encoding_that_cannot_decode_names_file_and_line(tmp_path):
    path = _write(tmp_path / "traces.csv", _rows(), encoding="cp1252")
    with pytest.raises(InputError, match=r"traces\.csv: cannot decode line 2 as utf-8"):
        read_traces(path, encoding="utf-8")


def test_detect_encoding_rules():
    assert detect_encoding("Juárez".encode("utf-8-sig")) == "utf-8-sig"
    assert detect_encoding("Juárez".encode()) == "utf-8"
    assert detect_encoding("Juárez".encode("cp1252")) == "cp1252"
    assert detect_encoding(b"Ju\x81rez") == "cp1252/latin-1"


# ---------------------------------------------------------------------------- delimiters


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
@pytest.mark.parametrize("suffix", [".csv", ".txt"])
def test_delimiter_is_sniffed(tmp_path, delimiter, suffix):
    rows = _rows()
    rows[0][2] = "Guns, Ammo & More" if delimiter != "," else "Guns & More"
    path = _write(tmp_path / f"traces{suffix}", rows, delimiter=delimiter)
    result = read_traces(path)
    assert result.source["delimiter"] == delimiter
    assert result.records["dealer_name"].iloc[0] == rows[0][2]
    assert result.records["recovery_city"].tolist() == PLACES


def test_semicolon_export_with_decimal_comma_coordinates(tmp_path):
    path = tmp_path / "aseguramientos.csv"
    path.write_text(
        "Folio;Armería;Municipio;Estado;Latitud;Longitud\n"
        "A1;GAT Guns;Juárez;Chihuahua;31,7200;-106,4600\n",
        encoding="cp1252",
    )
    result = read_traces(path)
    record = result.records.iloc[0]
    assert (record["trace_id"], record["recovery_city"]) == ("A1", "Juárez")
    assert (record["recovery_lat"], record["recovery_lon"]) == (31.72, -106.46)


def test_sniff_delimiter_prefers_consistent_split():
    text = "Armería;Municipio;Estado\nGuns, Inc.;Juárez;CHIH\nB;Ciudad, Centro;NL\n"
    assert sniff_delimiter(text) == ";"
    assert sniff_delimiter("only_one_column\nx\n") == ","


# ---------------------------------------------------------------------------- XLSX and Parquet


def test_xlsx_round_trip_with_excel_dates_and_sheet_rows(tmp_path):
    frame = _frame()
    frame["Purchase Date"] = pd.to_datetime(["2008-09-14"] * 5)
    frame["Recovery Date"] = pd.to_datetime(["2008-10-01", "2009-01-02", None, None, None])
    path = tmp_path / "traces.xlsx"
    with pd.ExcelWriter(path) as writer:
        pd.DataFrame({"x": [1]}).to_excel(writer, sheet_name="notes", index=False)
        frame.to_excel(writer, sheet_name="traces", index=False)
    with pytest.raises(SchemaError, match=r"traces\.xlsx: no recognisable.*seen: 'x'"):
        read_traces(path, sheet="notes")  # the sheet named has no trace columns
    result = read_traces(path, sheet="traces")
    records = result.records
    assert records["recovery_city"].tolist() == PLACES
    assert records["purchase_date"].iloc[0] == pd.Timestamp("2008-09-14")
    assert records["time_to_crime_days"].iloc[:2].tolist() == [17.0, 110.0]
    assert records["source_line"].tolist() == [2, 3, 4, 5, 6]
    assert (result.source["format"], result.source["sheet"]) == ("xlsx", "traces")
    with pytest.raises(InputError, match=r"traces\.xlsx: no sheet 'missing'"):
        read_traces(path, sheet="missing")


def test_xlsx_traces_are_read_from_the_first_sheet_that_holds_them(tmp_path):
    """A workbook whose first sheet is a note: its traces are read from the first sheet
    naming trace columns, and a line-1 warning says which sheet was read, which were passed
    over and which other sheets hold traces too (not read: said, never silently)."""
    frame = _frame()
    path = tmp_path / "release.xlsx"
    with pd.ExcelWriter(path) as writer:
        pd.DataFrame({"Notes": ["FOIA release", "see sheet 2018"]}).to_excel(
            writer, sheet_name="README", index=False)
        frame.to_excel(writer, sheet_name="2018", index=False)
        frame.iloc[:2].to_excel(writer, sheet_name="2019", index=False)
    result = read_traces(path)
    assert result.source["sheet"] == "2018" and len(result.records) == 5
    assert result.records["recovery_city"].tolist() == PLACES
    note = result.warnings[result.warnings["line"] == 1]
    assert note["reason"].tolist() == [
        "sheet '2018' read; sheet 'README' names no trace column; sheet '2019' also holds "
        "trace columns and is not read (--sheet NAME reads it)"]
    only = tmp_path / "only.xlsx"
    with pd.ExcelWriter(only) as writer:
        frame.to_excel(writer, sheet_name="traces", index=False)
        pd.DataFrame({"x": [1]}).to_excel(writer, sheet_name="notes", index=False)
    assert (read_traces(only).warnings["line"] == 1).sum() == 0  # the first sheet: nothing to say
    none = tmp_path / "none.xlsx"
    with pd.ExcelWriter(none) as writer:
        pd.DataFrame({"x": [1]}).to_excel(writer, sheet_name="a", index=False)
        pd.DataFrame({"y": [1]}).to_excel(writer, sheet_name="b", index=False)
    with pytest.raises(SchemaError, match=r"none\.xlsx: no recognisable.*seen: 'x'"):
        read_traces(none)


def test_xlsx_blank_rows_are_skipped_and_lines_are_sheet_rows(tmp_path):
    rows = _rows()
    frame = pd.DataFrame([rows[0], [""] * len(HEADER), rows[1]], columns=HEADER)
    path = tmp_path / "traces.xlsx"
    frame.to_excel(path, index=False)
    result = read_traces(path)
    assert result.records["source_line"].tolist() == [2, 4]
    assert result.source["rows_read"] == 2


def test_parquet_round_trip_keeps_datetimes_and_missing_values(tmp_path):
    frame = _frame()
    frame["Purchase Date"] = pd.to_datetime(["2008-09-14"] * 4 + [None])
    frame["Recovery Date"] = [date(2008, 10, 1)] * 5  # a date32 column
    frame["Recovery Lat"] = [31.72, None, 20.59, 25.75, 19.43]
    frame["FFL Zip"] = pd.array([60118, 56007, None, 1, 2], dtype="Int64")
    frame = frame.reindex([0, 1, -1, 2, 3, 4])  # an all-empty row; dtypes kept
    path = tmp_path / "traces.parquet"
    frame.to_parquet(path, index=False)
    result = read_traces(path)
    records = result.records
    assert records["recovery_city"].tolist() == PLACES
    assert records["purchase_date"].isna().tolist() == [False] * 4 + [True]
    assert records["time_to_crime_days"].iloc[0] == 17.0
    assert records["recovery_lat"].iloc[0] == 31.72
    assert np.isnan(records["recovery_lat"].iloc[1])
    assert records["dealer_zip"].tolist()[:2] == ["60118", "56007"]
    assert records["source_line"].tolist() == [2, 3, 5, 6, 7]  # the blank row 4 is skipped
    assert result.rows_read == 5
    assert result.warnings.empty
    assert result.source["format"] == "parquet"


def test_binary_formats_are_recognised_by_content_whatever_the_extension(tmp_path):
    _frame().to_excel(tmp_path / "a.xlsx", index=False)
    _frame().to_parquet(tmp_path / "b.parquet", index=False)
    (tmp_path / "export.txt").write_bytes((tmp_path / "a.xlsx").read_bytes())
    (tmp_path / "export.dat").write_bytes((tmp_path / "b.parquet").read_bytes())
    assert read_traces(tmp_path / "export.txt").source["format"] == "xlsx"
    assert read_traces(tmp_path / "export.dat").source["format"] == "parquet"
    assert read_traces(tmp_path / "export.dat").records["recovery_city"].tolist() == PLACES


# ---------------------------------------------------------------------------- headers and maps


def test_spanish_headers_read_into_canonical_columns(tmp_path):
    path = tmp_path / "rastreos.csv"
    path.write_text(
        "NÚMERO DE SERIE,Armería,Comprador,Fecha de Compra,Fecha de Aseguramiento,"
        "Municipio,Estado,Poseedor,Observaciones\n"
        "AB123,Hart Brothers,Paul Giovanni De La Rosa,2008-01-05,2008-06-01,"
        "Nezahualcóyotl,México,Fulano,en mueble\n",
        encoding="utf-8",
    )
    result = read_traces(path)
    record = result.records.iloc[0]
    assert record["serial_number"] == "AB123"
    assert record["dealer_name"] == "Hart Brothers"
    assert record["possessor_name"] == "Fulano"
    assert record["recovery_city"] == "Nezahualcóyotl"
    assert record["observaciones"] == "en mueble"  # unknown columns are passed through
    assert result.source["header_map"]["Fecha de Aseguramiento"] == "recovery_date"


def test_user_column_map_dict_and_files(tmp_path):
    path = tmp_path / "traces.csv"
    path.write_text("Vendedor Final,Lugar,Marca\nGAT Guns,Culiacán,Colt\n", encoding="utf-8")
    as_csv = tmp_path / "map.csv"
    as_csv.write_text("header,canonical\nVendedor Final,dealer_name\nLugar,Recovery City\n")
    as_json = tmp_path / "map.json"
    as_json.write_text(json.dumps({"Vendedor Final": "dealer_name", "Lugar": "recovery_city"}))
    expected = {"Vendedor Final": "dealer_name", "Lugar": "recovery_city"}
    assert load_column_map(as_csv) == expected
    assert load_column_map(as_json) == expected
    result = read_traces(path, column_map=load_column_map(as_csv))
    assert result.records[["dealer_name", "recovery_city", "manufacturer"]].iloc[0].tolist() == [
        "GAT Guns", "Culiacán", "Colt"]


def test_column_map_naming_an_unknown_canonical_column_is_an_error(tmp_path):
    path = _write(tmp_path / "traces.csv", _rows())
    with pytest.raises(SchemaError, match="'Dealer' to 'shop'"):
        read_traces(path, column_map={"Dealer": "shop"})
    as_csv = tmp_path / "map.csv"
    as_csv.write_text("from,to\nFFL Name,dealer_name\nCiudad,recovery_town\n")
    with pytest.raises(SchemaError, match=r"map\.csv:3: .*'recovery_town'"):
        load_column_map(as_csv)
    as_json = tmp_path / "map.json"
    as_json.write_text('{"Ciudad": "town"}')
    with pytest.raises(SchemaError, match=r"map\.json: .*'town'"):
        load_column_map(as_json)
    as_json.write_text('["Ciudad", "town"]')
    with pytest.raises(SchemaError, match=r"map\.json: column map must be a JSON object"):
        load_column_map(as_json)


def test_column_map_file_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match=r"nomap\.csv: file not found"):
        load_column_map(tmp_path / "nomap.csv")
    bad_json = tmp_path / "map.json"
    bad_json.write_text('{"Ciudad": ')
    with pytest.raises(SchemaError, match=r"map\.json: column map is not valid JSON"):
        load_column_map(bad_json)
    three = tmp_path / "map.csv"
    three.write_text("Ciudad;recovery_city;extra\n")
    with pytest.raises(SchemaError, match=r"map\.csv: line 1: expected 2 columns"):
        load_column_map(three)
    semicolons = tmp_path / "mapa.csv"
    semicolons.write_text("Ciudad;recovery_city\nArmería;dealer_name\n", encoding="cp1252")
    assert load_column_map(semicolons) == {"Ciudad": "recovery_city", "Armería": "dealer_name"}


def test_column_map_entry_matching_no_header_is_warned(tmp_path):
    path = _write(tmp_path / "traces.csv", _rows())
    result = read_traces(path, column_map={"Armeria Final": "dealer_name"})
    assert result.warnings["reason"].tolist() == [
        "column map entry 'Armeria Final' matches no header"]


# ---------------------------------------------------------------------------- dates


def _dates_file(tmp_path, purchase, recovery):
    rows = [[f"T{i}", f"S{i}", "Store", "Laredo", "TX", "P", p, r, "Reynosa", "TAMPS"]
            for i, (p, r) in enumerate(zip(purchase, recovery, strict=True))]
    return _write(tmp_path / "dates.csv", rows)


def test_dates_in_iso_and_us_forms(tmp_path):
    path = _dates_file(
        tmp_path,
        ["2008-09-14", "09/14/2008", "9/14/08", "14-SEP-2008", "2008-09-14 00:00:00"],
        ["2008/10/01", "10-01-2008", "20081001", "", "01-Oct-08"],
    )
    records = read_traces(path).records
    assert (records["purchase_date"] == pd.Timestamp("2008-09-14")).all()
    assert records["recovery_date"].isna().tolist() == [False, False, False, True, False]
    assert records["time_to_crime_days"].tolist()[:3] == [17.0, 17.0, 17.0]
    assert records["purchase_date"].dtype == "datetime64[ns]"


def test_dayfirst_reads_mexican_dates(tmp_path):
    path = _dates_file(tmp_path, ["14/09/2008", "01/02/2008"], ["1/10/08", "2008-03-01"])
    records = read_traces(path, dayfirst=True).records
    assert records["purchase_date"].tolist() == [pd.Timestamp("2008-09-14"),
                                                 pd.Timestamp("2008-02-01")]
    assert records["recovery_date"].iloc[0] == pd.Timestamp("2008-10-01")
    us = read_traces(path).records
    assert us["purchase_date"].iloc[1] == pd.Timestamp("2008-01-02")


def test_unparseable_dates_are_nat_and_warned_with_line_and_column(tmp_path):
    path = _dates_file(tmp_path, ["14/09/2008", "sometime", "2008-02-30"], ["", "", "9999-12-31"])
    result = read_traces(path)
    assert len(result.records) == 3  # not rejects
    assert result.records["purchase_date"].isna().all()
    warnings = result.warnings
    assert warnings[["line", "column", "value"]].values.tolist() == [
        [2, "Purchase Date", "14/09/2008"],
        [3, "Purchase Date", "sometime"],
        [4, "Purchase Date", "2008-02-30"],
        [4, "Recovery Date", "9999-12-31"],
    ]
    assert "dayfirst" in warnings["reason"].iloc[0]
    assert result.warnings["reason"].iloc[3].startswith("date in the future (after ")
    assert result.records["flag_future_date"].tolist() == [False, False, True]
    assert result.warning_counts["Purchase Date: unparseable date"] == 2


def test_spreadsheet_serial_day_numbers_are_dates_with_a_warning(tmp_path):
    """A date cell saved as a number (43831: Excel's serial day for 2020-01-01) is read as
    that date, in CSV and XLSX, and warned about line by line (it is an assumption: the
    1900 date system); a serial that lands in the future is unknown, as any such date."""
    path = _dates_file(tmp_path, ["43831", "43900.75", "2008-09-14", "99999"],
                       ["44000", "", "39722", ""])
    result = read_traces(path, today="2026-01-01")
    records = result.records
    assert records["purchase_date"].tolist()[:3] == [
        pd.Timestamp("2020-01-01"), pd.Timestamp("2020-03-10"), pd.Timestamp("2008-09-14")]
    assert records["recovery_date"].iloc[[0, 2]].tolist() == [pd.Timestamp("2020-06-18"),
                                                               pd.Timestamp("2008-10-01")]
    assert records["time_to_crime_days"].iloc[[0, 2]].tolist() == [169.0, 17.0]
    assert pd.isna(records["purchase_date"].iloc[3]) and records["flag_future_date"].iloc[3]
    serial = result.warnings[result.warnings["reason"].str.startswith("read as a spreadsheet")]
    assert serial[["line", "column", "value"]].values.tolist() == [
        [2, "Purchase Date", "43831"], [3, "Purchase Date", "43900.75"],
        [2, "Recovery Date", "44000"], [4, "Recovery Date", "39722"]]
    assert result.warning_counts[f"Purchase Date: {SERIAL_DATE}"] == 2
    frame = _frame()  # the same numbers as XLSX number cells
    frame["Purchase Date"] = [43831, 43900, 39705, None, None]
    xlsx = tmp_path / "serial.xlsx"
    frame.to_excel(xlsx, index=False)
    read = read_traces(xlsx)
    assert read.records["purchase_date"].tolist()[:3] == [
        pd.Timestamp("2020-01-01"), pd.Timestamp("2020-03-10"), pd.Timestamp("2008-09-14")]
    assert read.warning_counts[f"Purchase Date: {SERIAL_DATE}"] == 3


def test_day_first_is_decided_from_the_dates_when_not_given(tmp_path):
    """dayfirst=None (geoflow's default): Mexican dates are read day-first, with a line-1
    warning; one typo does not turn a US file, nor dates that can only be month-first."""
    mexican = _dates_file(tmp_path, ["13/02/2019", "05/04/2019", "20/05/2019"],
                          ["01/03/2019", "", "02/06/2019"])
    result = read_traces(mexican, dayfirst=None)
    assert result.records["purchase_date"].tolist() == [
        pd.Timestamp("2019-02-13"), pd.Timestamp("2019-04-05"), pd.Timestamp("2019-05-20")]
    assert result.records["recovery_date"].iloc[0] == pd.Timestamp("2019-03-01")
    assert result.source["dayfirst"] is True
    assert result.warnings[["line", "value", "reason"]].values.tolist() == [
        [1, "13/02/2019", DAY_FIRST_DETECTED]]
    assert read_traces(mexican).source["dayfirst"] is False  # the API's default: as told
    typo = _dates_file(tmp_path, ["13/02/2019", "05/04/2019", "01/02/2019"], [""] * 3)
    read = read_traces(typo, dayfirst=None)
    assert read.source["dayfirst"] is False
    assert read.records["purchase_date"].iloc[1] == pd.Timestamp("2019-05-04")
    mixed = _dates_file(tmp_path, ["13/02/2019", "25/04/2019", "02/14/2019"], [""] * 3)
    assert read_traces(mixed, dayfirst=None).source["dayfirst"] is False


def test_warning_list_is_capped_but_counted(tmp_path):
    path = _dates_file(tmp_path, ["never"] * 70, [""] * 70)
    result = read_traces(path)
    assert len(result.warnings) == 50
    assert result.warning_counts == {"Purchase Date: unparseable date": 70}


# ------------------------------------------------------------------------ flags, ids, duplicates


def test_impossible_dates_are_flagged_not_dropped(tmp_path):
    path = _dates_file(
        tmp_path,
        ["2008-09-14", "2008-09-14", "2008-09-14", ""],
        ["2008-09-01", "2008-09-20", "2031-01-01", "2030-06-01"],
    )
    result = read_traces(path, today="2026-01-01")
    records = result.records
    # a future date is flagged and read as unknown, so no interval, year or first/last
    # date anywhere downstream uses it; the row stays (the gun counts)
    assert records["time_to_crime_days"].tolist()[:2] == [-13.0, 6.0]
    assert records["time_to_crime_days"].iloc[2:].isna().all()
    assert records["recovery_date"].iloc[2:].isna().all()
    assert records["flag_recovery_before_purchase"].tolist() == [True, False, False, False]
    assert records["flag_future_date"].tolist() == [False, False, True, True]
    assert result.warnings["line"].tolist() == [4, 5]
    later = read_traces(path, today="2032-01-01").records
    assert not later["flag_future_date"].any()
    assert later["time_to_crime_days"].iloc[2] == 8144.0


def test_placeholder_dates_before_1901_are_unknown_and_warned(tmp_path):
    path = _dates_file(tmp_path, ["01/01/1900", "12/30/1899", "01/02/1901"],
                       ["2008-01-01"] * 3)
    result = read_traces(path)
    assert result.records["purchase_date"].isna().tolist() == [True, True, False]
    assert result.warning_counts == {
        "Purchase Date: implausible date (before 1901-01-01): treated as unknown": 2}


def test_duplicate_trace_numbers_flag_all_but_the_first(tmp_path):
    rows = _rows()
    rows[3][0] = "t1"  # same trace number, different case
    rows.append(list(rows[1]))
    result = read_traces(_write(tmp_path / "traces.csv", rows))
    assert result.records["flag_duplicate"].tolist() == [False] * 3 + [True, False, True]


@pytest.mark.parametrize("values", [
    ["T1", "T2", "T10"],  # lengths differ
    ["T1", "T2", "T1"],  # a repeat
    ["abcdefgh", "abcdefgh\0"],  # one ends in the padding's byte: distinct all the same
    ["", "a", ""],  # empty texts repeat
    ["Ñ", "N", "ñ"],  # not ASCII
    ["x" * 64, "x" * 63 + "y"],  # as long as hashed
    ["x" * 65, "y"],  # longer: told by comparing
    ["a", None, "b"],  # a null: told by comparing
    [],
    ["only"],
])
def test_distinct_by_hash_never_calls_repeated_values_distinct(values):
    import pyarrow as pa

    distinct = len(set(values)) == len(values)
    told = distinct_by_hash(pa.array(values, type=pa.string()))
    assert told is (distinct and None not in values and max(map(len, values), default=0) <= 64)


def test_distinct_by_hash_over_many_ids_and_a_slice():
    import pyarrow as pa

    ids = pa.chunked_array([[f"T{i:09d}" for i in range(50_000)],
                            [f"t-{i}" for i in range(50_000)]])
    assert distinct_by_hash(ids)
    # a repeat far apart, in a slice of an array (offsets not starting at 0)
    repeated = pa.concat_arrays([pa.array(["pad", "pad2"]), ids.combine_chunks(),
                                 pa.array(["T000031415"])]).slice(2)
    assert not distinct_by_hash(repeated)
    assert distinct_by_hash(repeated.slice(0, len(repeated) - 1))


def test_distinct_by_hash_chunk_by_chunk_sees_repeats_across_chunks():
    """Chunks are hashed one at a time with the longest text of all: a repeat in another
    chunk, whose own texts are shorter, is still a repeat; empty chunks are skipped."""
    import pyarrow as pa

    short = ["ab", "cd"]
    long_ = ["x" * 20, "ab"]  # "ab" again, beside a text of three words
    repeated = pa.chunked_array([short, [], long_], type=pa.string())
    assert not distinct_by_hash(repeated)
    assert not distinct_by_hash(repeated.combine_chunks())
    distinct = pa.chunked_array([short, [], ["x" * 20, "ef"]], type=pa.large_string())
    assert distinct_by_hash(distinct)
    assert distinct_by_hash(distinct.combine_chunks())
    # a slice: the first chunk's offsets do not start at 0
    sliced = pa.chunked_array([["zz", "ab", "cd"], long_]).slice(1)
    assert not distinct_by_hash(sliced)
    assert distinct_by_hash(sliced.slice(0, 3))


def test_key_columns_read_as_categoricals_hold_the_cleaned_texts(tmp_path):
    """``categorical``: the same records as text, each distinct text cleaned once; cells that
    differ only by spaces are one category, placeholders and blanks NA, categories sorted,
    none left over from a rejected row; a column of many distinct values stays text."""
    from geoflow.pipeline import KEY_TEXT_COLUMNS

    header = ["Trace Number", "FFL Name", "FFL City", "FFL State", "Recovery City",
              "Recovery State", "Recovery Country", "Recovery Latitude"]
    cities = [" Laredo", "Laredo ", "N/A", "", "unknown", "Eagle Pass", "laredo"]
    rows = [[f"T{i}", f"Dealer {i}", cities[i % 7], " TX ", "Juárez", "CHIH", "",
             "19.4"] for i in range(70)]
    rows.append(["T70", "Dealer 70", "Only In A Rejected Row", "TX", "Juárez", "CHIH", "",
                 "99.9"])  # latitude out of range: rejected
    _write(tmp_path / "keys.csv", rows, header=header)
    plain = read_traces(tmp_path / "keys.csv")
    coded = read_traces(tmp_path / "keys.csv", categorical=KEY_TEXT_COLUMNS)
    assert len(coded.rejects) == len(plain.rejects) == 1
    city = coded.records["dealer_city"]
    assert isinstance(city.dtype, pd.CategoricalDtype)
    assert city.cat.categories.tolist() == ["Eagle Pass", "Laredo", "laredo"]  # sorted, used
    assert city.isna().sum() == 30  # "N/A", "", "unknown"
    assert coded.records["dealer_state"].cat.categories.tolist() == ["TX"]
    assert coded.records["dealer_name"].dtype == "str"  # 70 of 70 distinct: text
    assert coded.records["recovery_country"].dtype == "str"  # filled with MX: text
    as_text = coded.records.astype({c: "str" for c in coded.records.columns if isinstance(
        coded.records[c].dtype, pd.CategoricalDtype)})
    pd.testing.assert_frame_equal(as_text, plain.records)


def test_without_trace_numbers_duplicates_are_serial_date_and_dealer(tmp_path):
    header = HEADER[1:]
    rows = [r[1:] for r in _rows()[:3]]
    rows.append(["sn-0", *rows[0][1:]])  # same serial written differently
    rows.append(["SN0", "Other Store", *rows[0][2:]])  # same serial, other dealer
    rows.append(["", *rows[0][1:]])  # no serial: only identical rows are duplicates
    rows.append(["", *rows[0][1:]])
    path = _write(tmp_path / "traces.csv", rows, header=header)
    records = read_traces(path).records
    assert records["flag_duplicate"].tolist() == [False, False, False, True, False, False, True]
    ids = records["trace_id"]
    assert ids.str.fullmatch(r"T-[0-9a-f]{10}").all()
    assert ids.iloc[5] == ids.iloc[6]  # identical content, identical id
    assert ids.iloc[:6].is_unique
    assert ids.tolist() == read_traces(path).records["trace_id"].tolist()  # stable


def test_text_is_stripped_country_defaults_to_mexico_and_unknown_columns_pass(tmp_path):
    path = tmp_path / "traces.csv"
    path.write_text(
        "Serial Number,Recovery City,Recovery Country,Time To Crime Days,Notas\n"
        "  A1 ,  Culiacán  ,,99,  \n"
        "A2,El Paso,US,,nota\n",
        encoding="utf-8",
    )
    records = read_traces(path).records
    assert records["serial_number"].tolist() == ["A1", "A2"]
    assert records["recovery_city"].tolist() == ["Culiacán", "El Paso"]
    assert records["recovery_country"].tolist() == ["MX", "US"]
    assert records["notas"].isna().tolist() == [True, False]
    assert records["time_to_crime_days_input"].tolist()[0] == "99"
    assert records.columns[: len(schema.CANONICAL_COLUMNS)].tolist() == list(
        schema.CANONICAL_COLUMNS)
    assert records.columns[-5:].tolist() == ["time_to_crime_days", *schema.FLAG_COLUMNS,
                                             "guns"]
    assert records["guns"].tolist() == [1] * len(records)  # a trace record is one gun


def test_placeholder_values_are_missing_data(tmp_path):
    # "N/A", "null", "s/d" … are how exports spell "no data": counted as data they would
    # make every "N/A" trace number a duplicate and "UNKNOWN" a dealer
    path = tmp_path / "traces.csv"
    path.write_text(
        "Trace Number,Serial Number,FFL Name,FFL City,Purchaser Name,Purchase Date,"
        "Recovery City,Recovery State,Notas\n"
        "N/A,A1,Unknown,null,  none ,-,Culiacán,s/d,?\n"
        "n/a,A2,GAT Guns,NA,Sin Dato,2008-01-02,DESCONOCIDO,SIN,NA Guns\n"
        "T3,A3,NULL,Houston,José,2008-01-03,Reynosa,TAM,-1\n",
        encoding="utf-8",
    )
    result = read_traces(path)
    records = result.records
    assert records["trace_id"].iloc[2] == "T3"
    assert records["trace_id"].iloc[:2].str.startswith("T").all()  # generated, distinct
    assert not records["flag_duplicate"].any()
    assert records["dealer_name"].isna().tolist() == [True, False, True]
    assert records["dealer_city"].isna().tolist() == [True, True, False]
    assert records["purchaser_name"].isna().tolist() == [True, True, False]
    assert records["purchase_date"].isna().tolist() == [True, False, False]
    assert records["recovery_city"].isna().tolist() == [False, True, False]
    assert records["recovery_state"].isna().tolist() == [True, False, False]
    assert records["notas"].isna().tolist() == [True, False, False]
    assert records["notas"].iloc[1:].tolist() == ["NA Guns", "-1"]
    # a "-" date is missing, not unparseable; the one warning is on a header read for nothing
    assert result.warnings[["line", "column", "reason"]].values.tolist() == [
        [1, "Notas", UNKNOWN_HEADER]]


def test_blank_and_repeated_headers_keep_their_columns(tmp_path):
    path = tmp_path / "traces.csv"
    path.write_text("Serial,Notes,,Notes,\nA,one,x,two,\nB,three,,four,\n")
    result = read_traces(path)
    records = result.records
    assert records["notes"].tolist() == ["one", "three"]
    assert records["notes_2"].tolist() == ["two", "four"]
    assert records["column_3"].iloc[0] == "x" and pd.isna(records["column_3"].iloc[1])
    assert "column_5" not in records  # an unnamed, empty column (trailing comma) is dropped
    assert result.source["header_map"]["Notes (2)"] == "notes_2"


# ---------------------------------------------------------------------------- row accounting

BROKEN = """\
Trace Number,Serial Number,FFL Name,Recovery City,Notes,Recovery Lat,Recovery Lon
T1,S1,GAT Guns,Juárez,"a note
over three
lines",31.7,-106.4
T2,S2,Hart Brothers,Laredo,one,too,many,fields

T3,S3,Store,Reynosa,short
,,,,only notes,,
T4,S4,Store,Reynosa,"quoted, comma",north,-98.3
T5,S5,Store,Reynosa,,95.0,-98.3
T6,S6,Store,"Nuevo
Laredo",ok,27.5,-99.5
T7,S7,Store,Matamoros,last,,
"""


def test_row_accounting_and_line_numbers_on_a_broken_file(tmp_path):
    path = tmp_path / "broken.csv"
    path.write_text(BROKEN, encoding="utf-8")
    result = read_traces(path)
    rejects = result.rejects
    assert rejects[["line", "column", "reason"]].values.tolist() == [
        [5, "", "expected 7 fields, found 8"],
        [7, "", "expected 7 fields, found 5"],
        [8, "", "nothing usable: no dealer, purchaser, recovery information or serial number"],
        [10, "Recovery Lat", "coordinate outside -90..90: 95.0"],
    ]
    assert rejects["raw"].iloc[0] == "T2,S2,Hart Brothers,Laredo,one,too,many,fields"
    # an unparseable coordinate is missing (the row can be placed from its city), and warned
    assert result.records["trace_id"].tolist() == ["T1", "T4", "T6", "T7"]
    assert result.records["source_line"].tolist() == [2, 9, 11, 13]
    t4 = result.records.iloc[1]
    assert np.isnan(t4["recovery_lat"]) and t4["recovery_lon"] == -98.3
    assert result.warnings.values.tolist() == [
        [1, "Notes", "", UNKNOWN_HEADER],  # a header geoflow does not read: said, not dropped
        [9, "Recovery Lat", "north", "unparseable coordinate"]]
    assert result.warning_counts == {"Recovery Lat: unparseable coordinate": 1,
                                     f"Notes: {UNKNOWN_HEADER}": 1}
    assert result.records["notes"].iloc[0] == "a note\nover three\nlines"
    assert result.records["recovery_city"].iloc[2] == "Nuevo\nLaredo"
    assert result.source["rows_read"] == 8  # the blank line is not a row
    assert (result.rows_valid, result.rows_rejected) == (4, 4)
    assert _accounting_holds(result)


def test_crlf_line_endings_and_a_stray_quote_keep_line_numbers(tmp_path):
    text = BROKEN.replace("T4,S4,Store,Reynosa,", 'T4,S4,Store,Rey 12" nosa,')
    path = tmp_path / "broken.csv"
    path.write_bytes(text.replace("\n", "\r\n").encode())
    result = read_traces(path)
    assert result.rejects["line"].tolist() == [5, 7, 8, 10]
    assert result.records["source_line"].tolist() == [2, 9, 11, 13]
    assert result.records["notes"].iloc[0] == "a note\r\nover three\r\nlines"
    assert _accounting_holds(result)


def test_multi_line_fields_in_a_file_of_many_parser_blocks(tmp_path, caplog):
    rows = 40_000  # about 3 MB: the parser works in blocks of 1 MB
    body = "".join(f'S{i},"note {i}\nsecond line, with comma",Culiacán\n' for i in range(rows))
    path = tmp_path / "big.csv"
    path.write_text("Serial,Notes,Recovery City\n" + body + "S-bad,x\n", encoding="utf-8")
    with caplog.at_level("INFO", logger="geoflow.io"):
        result = read_traces(path)
    assert "slow" not in caplog.text  # the vectorised path handled it
    records = result.records
    assert len(records) == rows
    assert records["source_line"].iloc[[0, 1, -1]].tolist() == [2, 4, 2 * rows]
    assert records["notes"].iloc[-1] == f"note {rows - 1}\nsecond line, with comma"
    assert (records["recovery_city"] == "Culiacán").all()
    assert result.rejects[["line", "reason"]].values.tolist() == [
        [2 * rows + 2, "expected 3 fields, found 2"]]


def test_crlf_escaped_quotes_blank_lines_and_no_final_newline(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(
        b'Serial,"Recovery City"\r\nA,"Ju\xc3\xa1rez, ""centro"""\r\n\r\n  \r\nB,X\r\nC,Y'
    )
    result = read_traces(path)
    assert result.records["recovery_city"].tolist() == ['Juárez, "centro"', "X", "Y"]
    assert result.records["source_line"].tolist() == [2, 5, 6]
    assert (result.rows_read, result.rows_rejected) == (3, 0)


def test_unterminated_quote_is_one_rejected_row_naming_the_lines(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('Serial,Recovery City\nA,X\nB,"Y\nC,Z\nD,W\n')
    result = read_traces(path)
    assert result.records["serial_number"].tolist() == ["A"]
    assert result.rejects[["line", "reason"]].values.tolist() == [
        [3, "unterminated quote: lines 3-5 were read as one row"]]
    assert _accounting_holds(result)


def test_a_row_with_several_problems_is_one_rejected_row(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("Serial,Recovery Lat,Recovery Lon\nA,95,200\nB,1,2\nC,N/A,north\n"
                    "D,x,-98\n")
    result = read_traces(path)
    assert result.rejects["line"].tolist() == [2, 2]
    assert result.rejects["column"].tolist() == ["Recovery Lat", "Recovery Lon"]
    assert (result.rows_read, result.rows_valid, result.rows_rejected) == (4, 3, 1)
    # a placeholder is missing without a warning; text that is no number is warned
    assert result.warnings[["line", "column", "value"]].values.tolist() == [
        [5, "Recovery Lat", "x"], [4, "Recovery Lon", "north"]]
    assert result.records[["recovery_lat", "recovery_lon"]].isna().sum().tolist() == [2, 1]


def test_data_rows_but_none_valid_is_not_fatal(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("Serial Number,Notes\n,a\n,b\nx,y,z\n")
    result = read_traces(path)
    assert result.records.empty
    assert list(result.records.columns[:2]) == ["trace_id", "serial_number"]
    assert result.rejects["line"].tolist() == [2, 3, 4]
    assert _accounting_holds(result)


def test_header_only_file_reads_zero_rows(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(",".join(HEADER) + "\n")
    result = read_traces(path)
    assert (result.rows_read, len(result.records), len(result.rejects)) == (0, 0, 0)


# ---------------------------------------------------------------------------- fatal errors


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nowhere\.csv: file not found"):
        read_traces(tmp_path / "nowhere.csv")


def test_directory_is_not_a_file(tmp_path):
    with pytest.raises(InputError, match=f"{re.escape(str(tmp_path))}: not a file"):
        read_traces(tmp_path)


@pytest.mark.parametrize("content", [b"", b"\n\n  \r\n", "\ufeff".encode()])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    with pytest.raises(InputError, match=r"empty\.csv: empty file: no header"):
        read_traces(path)


def test_empty_workbook(tmp_path):
    path = tmp_path / "empty.xlsx"
    pd.DataFrame().to_excel(path, index=False)
    with pytest.raises(InputError, match=r"empty\.xlsx: empty file"):
        read_traces(path)


def test_no_recognisable_columns_lists_headers_seen_and_examples(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("colour,weight,Model\nred,3,X\n")
    with pytest.raises(SchemaError) as info:
        read_traces(path)
    message = str(info.value)
    assert message.startswith(f"{path}: no recognisable trace columns")
    assert "'colour', 'weight', 'Model'" in message
    assert "'FFL Name'" in message and "'fecha de aseguramiento'" in message
    assert info.value.exit_code == 4


def test_unreadable_binary_files(tmp_path):
    fake = tmp_path / "fake.xlsx"
    fake.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(InputError, match=r"fake\.xlsx: not a readable XLSX file"):
        read_traces(fake)
    wrong = tmp_path / "wrong.parquet"
    wrong.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match=r"wrong\.parquet: the file does not look like PARQUET"):
        read_traces(wrong)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 truncated")
    with pytest.raises(InputError, match=r"broken\.parquet: not a readable Parquet file"):
        read_traces(broken)
    old = tmp_path / "old.xls"
    old.write_bytes(b"\xd0\xcf\x11\xe0 rest")
    with pytest.raises(InputError, match=r"old\.xls: old Excel \.xls"):
        read_traces(old)


def test_sheet_option_on_a_csv_is_an_error(tmp_path):
    path = _write(tmp_path / "traces.csv", _rows())
    with pytest.raises(InputError,
                       match=r"traces\.csv: a sheet \('traces'\) was given but this is a CSV"):
        read_traces(path, sheet="traces")


def test_unknown_encoding_name(tmp_path):
    path = _write(tmp_path / "traces.csv", _rows())
    with pytest.raises(InputError, match=r"traces\.csv: unknown encoding 'klingon'"):
        read_traces(path, encoding="klingon")


def test_all_fatal_errors_share_one_family():
    assert issubclass(InputError, GeoflowError) and issubclass(SchemaError, GeoflowError)
