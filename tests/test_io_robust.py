"""The reader on hostile input: line endings, bad bytes, huge cells, wide files, quotes."""

import time

import numpy as np
import pandas as pd
import pytest

from geoflow.errors import InputError
from geoflow.io import (
    BAD_BYTES_REASON,
    MAX_ROW_BYTES,
    PLACEHOLDERS,
    UNKNOWN_HEADER,
    read_traces,
)

HEADER = "Trace Number,Serial Number,FFL Name,FFL City,FFL State,Recovery City,Recovery State"
PLACES = ["Ciudad Juárez", "Nuevo León", "Querétaro", "Culiacán", "Peñón", "Reynosa"]


def _lines(n=6):
    return [f"T{i},S{i},Store {i},Laredo,TX,{PLACES[i % len(PLACES)]},CHIH" for i in range(n)]


def _write(tmp_path, data: bytes, name="t.csv"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _holds(result):
    return result.rows_read == result.rows_valid + result.rows_rejected


@pytest.mark.parametrize("ending", [b"\r", b"\n", b"\r\n"])
def test_every_line_ending_reads_each_record_once(tmp_path, ending):
    data = ending.join(line.encode() for line in [HEADER, *_lines()]) + ending
    result = read_traces(_write(tmp_path, data))
    assert result.records["trace_id"].tolist() == [f"T{i}" for i in range(6)]
    assert result.records["recovery_city"].tolist() == PLACES
    assert result.records["source_line"].tolist() == [2, 3, 4, 5, 6, 7]
    assert result.rejects.empty and _holds(result)


def test_mixed_line_endings_inside_and_outside_quotes(tmp_path):
    rows = _lines(6)
    rows[1] = 'T1,S1,"Store\ron two lines",Laredo,TX,Nuevo León,CHIH'  # CR inside quotes
    rows[3] = 'T3,S3,"Store\r\nthree",Laredo,TX,Culiacán,CHIH'
    endings = [b"\r", b"\n", b"\r\n", b"\r", b"\n", b"\r\n", b"\r"]
    data = b"".join(line.encode() + end
                    for line, end in zip([HEADER, *rows], endings, strict=True))
    result = read_traces(_write(tmp_path, data))
    records = result.records
    assert records["trace_id"].tolist() == [f"T{i}" for i in range(6)]
    assert records["dealer_name"].iloc[1] == "Store\ron two lines"
    assert records["dealer_name"].iloc[3] == "Store\r\nthree"
    # physical lines: the quoted CR and CRLF are line breaks too
    assert records["source_line"].tolist() == [2, 3, 5, 6, 8, 9]
    assert _holds(result) and result.rows_read == 6


def test_a_bare_cr_inside_an_unquoted_cell_does_not_split_the_record(tmp_path):
    rows = _lines(4)
    rows[2] = "T2,S2,Store\rannex,Laredo,TX,Querétaro,CHIH"
    data = "\n".join([HEADER, *rows]).encode() + b"\n"
    result = read_traces(_write(tmp_path, data))
    assert result.records["trace_id"].tolist() == ["T0", "T1", "T2", "T3"]
    assert result.records["dealer_name"].iloc[2] == "Store\rannex"
    assert result.records["source_line"].tolist() == [2, 3, 4, 6]
    assert result.rejects.empty and result.rows_read == 4


def test_one_bad_byte_is_read_alone_and_warned_with_its_line(tmp_path):
    body = "\n".join([HEADER, *_lines()]).encode()
    data = body.replace("Peñón".encode(), "Pe\xf1\xf3n".encode("cp1252"))  # cp1252 pasted in
    result = read_traces(_write(tmp_path, data + b"\n"))
    assert result.source["encoding"] == "utf-8"
    assert result.records["recovery_city"].tolist() == PLACES  # no mojibake anywhere
    warned = result.warnings[result.warnings["reason"] == BAD_BYTES_REASON]
    assert warned["line"].tolist() == [6]
    assert "Peñón" in warned["value"].iloc[0]
    assert result.warning_counts[BAD_BYTES_REASON] == 1


def test_a_file_that_is_clearly_cp1252_is_read_as_cp1252(tmp_path):
    data = "\n".join([HEADER, *_lines()]).encode("cp1252")
    result = read_traces(_write(tmp_path, data))
    assert result.source["encoding"] == "cp1252"
    assert result.records["recovery_city"].tolist() == PLACES
    assert BAD_BYTES_REASON not in result.warning_counts


@pytest.mark.parametrize("stray_quote", [False, True])
def test_a_huge_cell_rejects_its_row_with_line_and_size(tmp_path, stray_quote):
    rows = _lines()
    rows[2] = rows[2].replace("Store 2", "X" * (5 * 1024 * 1024))
    if stray_quote:  # a " inside an unquoted field sends the file to the csv-module reader
        rows[4] = rows[4].replace("Store 4", 'Store 4 12" barrel')
    data = "\n".join([HEADER, *rows]).encode()
    result = read_traces(_write(tmp_path, data))
    assert result.records["trace_id"].tolist() == ["T0", "T1", "T3", "T4", "T5"]
    assert result.rejects["line"].tolist() == [4]
    reason = result.rejects["reason"].iloc[0]
    assert reason.startswith("row too large: 5.2 MB")
    assert f"{MAX_ROW_BYTES / 1e6:,.1f} MB" in reason
    assert len(result.rejects["raw"].iloc[0]) <= 200
    assert _holds(result)


def test_a_quote_that_runs_over_lines_names_every_line_it_swallowed(tmp_path):
    rows = _lines(10)
    rows[3] = rows[3].replace("Store 3", '"Store 3')  # opened here …
    rows[7] = rows[7].replace("Store 7", 'Store" 7')  # … closed four lines later
    data = "\n".join([HEADER, *rows]).encode() + b"\n"
    result = read_traces(_write(tmp_path, data))
    # the swallowed row has the right number of fields: kept, but warned
    assert result.records["trace_id"].tolist() == ["T0", "T1", "T2", "T3", "T8", "T9"]
    warning = result.warnings.iloc[0]
    assert warning["line"] == 5 and "lines 5-9, which look like rows" in warning["reason"]
    rows[7] = rows[7].replace("Laredo,", "")  # now the swallowed row has too few fields
    result = read_traces(_write(tmp_path, "\n".join([HEADER, *rows]).encode()))
    assert result.rejects["line"].tolist() == [5]
    assert "found 6: lines 5-9 were read as one row" in result.rejects["reason"].iloc[0]
    assert result.records["trace_id"].tolist() == ["T0", "T1", "T2", "T8", "T9"]
    assert _holds(result) and result.rows_read == 6
    # a quote never closed: the rest of the file is one bad row, its lines named
    result = read_traces(_write(tmp_path, "\n".join([HEADER, *rows[:7]]).encode()))
    assert result.rejects["reason"].tolist() == [
        "unterminated quote: lines 5-8 were read as one row"]


def test_repeated_headers_are_warned(tmp_path):
    data = (HEADER + ",FFL Name\n" + "\n".join(r + ",Other" for r in _lines(2))).encode()
    result = read_traces(_write(tmp_path, data))
    assert result.records["dealer_name"].tolist() == ["Store 0", "Store 1"]
    assert result.records["ffl_name_2"].tolist() == ["Other", "Other"]
    warning = result.warnings.iloc[0]
    assert (warning["line"], warning["column"], warning["value"]) == (1, "FFL Name (2)",
                                                                      "FFL Name")
    assert "column 8 has the name of column 3" in warning["reason"]


def test_a_spreadsheet_export_with_16384_columns_reads_in_seconds(tmp_path):
    width = 16_384  # Excel's maximum: trailing blank columns of a formatted sheet
    pad = "," * (width - 7)
    named = ",".join(f"Extra {i}" for i in range(200))
    rows = [f"{HEADER},{named}{pad[200:]}"]
    rows += [f"{r},{','.join(['x'] * 200)}{pad[200:]}" for r in _lines(50)]
    path = _write(tmp_path, "\n".join(rows).encode())
    clock = time.perf_counter()
    result = read_traces(path)
    elapsed = time.perf_counter() - clock
    assert len(result.records) == 50 and _holds(result)
    assert result.records["extra_199"].eq("x").all()
    assert not any(c.startswith("column_") for c in result.records.columns)
    assert elapsed < 30  # was hours: O(columns²)


@pytest.mark.parametrize("blank_lines", [0, 150_000])
def test_a_long_utf8_file_is_sniffed_and_read_from_its_bytes(tmp_path, blank_lines):
    # a UTF-8 file is checked on its bytes and only its start decoded for sniffing: a
    # semicolon file whose accents straddle every byte offset of that start, and one that
    # opens with 300 KB of blank lines, read as a whole decode would read them
    rows = [line.replace(",", ";") for line in _lines(40_000)]
    data = ("\r\n" * blank_lines + "\r\n".join([HEADER.replace(",", ";"), *rows])
            + "\r\n").encode()
    assert len(data) > 4 * 65536 + 8
    result = read_traces(_write(tmp_path, data))
    assert result.source["encoding"] == "utf-8" and result.source["delimiter"] == ";"
    assert result.rows_valid == 40_000 and result.rejects.empty
    assert result.records["recovery_city"].tolist() == [PLACES[i % 6] for i in range(40_000)]
    assert result.records["source_line"].iloc[0] == blank_lines + 2
    blank = _write(tmp_path, " \u3000\r\n".encode() * 100_000, name="blank.csv")
    with pytest.raises(InputError, match="empty file"):
        read_traces(blank)


def test_nul_bytes_bom_only_and_header_only(tmp_path):
    data = ("\n".join([HEADER, *_lines(3)]) + "\n").encode().replace(b"Store 1", b"St\0re 1")
    result = read_traces(_write(tmp_path, data))
    assert result.records["dealer_name"].iloc[1] == "St\0re 1" and result.rows_read == 3
    header_only = read_traces(_write(tmp_path, b"\xef\xbb\xbf" + HEADER.encode() + b"\r\n"))
    assert (header_only.rows_read, header_only.rows_valid) == (0, 0)


def test_clean_text_matches_python_strip_and_placeholders(tmp_path):
    cells = ["  a ", "\u3000b\u2003", "N/A", " null ", "-", "x-", "", "\xa0", "é "]
    data = ("Serial Number,Notes\n" + "\n".join(f"S{i},{c}" for i, c in enumerate(cells))
            ).encode()
    notes = read_traces(_write(tmp_path, data)).records["notes"]
    expected = [c.strip() or None for c in cells]
    expected = [None if e and e.upper() in {"N/A", "NULL", "-"} else e for e in expected]
    assert [None if pd.isna(v) else v for v in notes] == expected
    assert notes.dtype == "str" and np.all(notes.index == np.arange(len(cells)))


def test_every_whitespace_at_either_end_of_a_text_is_stripped(tmp_path):
    """Each whitespace character Python strips, alone at the start or the end of one cell of
    an otherwise plain column (Arrow's ``utf8_trim`` strips the same set)."""
    from geoflow.io import _WHITESPACE

    assert len(_WHITESPACE) == 29  # every character str.strip() removes, up to U+3000
    for char in _WHITESPACE.replace("\n", "").replace("\r", ""):
        for cell in (f"{char}É", f"É{char}"):
            data = ("Serial Number,Notes\nS1,plain\nS2,\"" + cell + "\"\nS3,Éclair\n").encode()
            notes = read_traces(_write(tmp_path, data)).records["notes"].tolist()
            assert notes == ["plain", "É", "Éclair"], (hex(ord(char)), notes)


def test_placeholders_in_any_case_are_missing_and_near_misses_kept(tmp_path):
    # the cleaner looks cells up among every spelling of a placeholder: mixed case, the
    # dotless ı and long ſ (which upper-case to I and S), after stripping; others stay
    cells = ["n/a", "N/a", "nA", "Null", "nONe", "unKnown", "DesConocido", "sin dato",
             "ſin datO", "s/d", "ſ/D", "desconocıdo", " ? ", "--", "N/AA", "nulo", "n a",
             "SIN  DATO", "unknown.", "İ", "NA\u200b", "Ñ/A"]
    data = ("Serial Number,Notes\n" + "\n".join(f"S{i},{c}" for i, c in enumerate(cells))
            ).encode()
    notes = read_traces(_write(tmp_path, data)).records["notes"]
    expected = [None if c.strip().upper() in PLACEHOLDERS else c.strip() for c in cells]
    assert [None if pd.isna(v) else v for v in notes] == expected
    assert expected.count(None) == 13


def test_text_cleaned_in_halves_on_two_threads_is_the_same(tmp_path, monkeypatch):
    """Large columns are cleaned in two halves on two threads (io._CLEAN_SPLIT_CELLS), and
    several short columns together in one set of kernel calls: split at a chunk boundary,
    each cell still lands in its own column and row, cleaned as on one thread."""
    import threading

    from geoflow import io as gio

    cells = ["  a ", "N/A", " null ", "x-", "", "\xa0", "é ", "ſin datO", "plain", "Ñ/A"]
    names = [f"Note {n}" for n in range(7)]
    rows = [",".join([f"S{i}", *(cells[(i + n) % len(cells)] + str(n) * (i % 3 == 0)
                                 for n in range(len(names)))]) for i in range(40)]
    path = _write(tmp_path, ("Serial Number," + ",".join(names) + "\n" + "\n".join(rows)
                             ).encode())
    one_thread = read_traces(path).records
    used = []
    clean_chunks = gio._clean_chunks
    monkeypatch.setattr(gio, "_clean_chunks", lambda array: used.append(
        threading.current_thread()) or clean_chunks(array))
    monkeypatch.setattr(gio, "_CLEAN_SPLIT_CELLS", 0)
    two_threads = read_traces(path).records
    assert len(set(used)) == 2  # this thread and the helper
    pd.testing.assert_frame_equal(two_threads, one_thread)
    for n in range(len(names)):
        texts = [(cells[(i + n) % len(cells)] + str(n) * (i % 3 == 0)).strip()
                 for i in range(len(rows))]
        expected = [None if not t or t.upper() in PLACEHOLDERS else t for t in texts]
        got = [None if pd.isna(v) else v for v in two_threads[f"note_{n}"]]
        assert got == expected, n


def test_text_is_cleaned_from_sliced_chunks_and_nulls_that_span_bytes():
    """The cleaner tells a column that trimming left unchanged by its text's bytes, read from
    the offsets: of chunks that are slices of longer arrays, and of null values that still
    span bytes (Arrow allows it). Such a column is cleaned as its values say."""
    import pyarrow as pa

    from geoflow.io import _clean_chunks

    whole = pa.array([" skip ", "a", " b ", "c", "skip"], pa.large_string())
    sliced = whole.slice(1, 3)  # "a", " b ", "c": a chunk at offset 1
    # a null over the bytes "xyz": offsets 0, 1, 4, 5 with the second value null
    null_with_bytes = pa.Array.from_buffers(
        pa.large_string(), 3,
        [pa.py_buffer(bytes([0b101])), pa.py_buffer(np.array([0, 1, 4, 5], np.int64)),
         pa.py_buffer(b"dxyze")])
    plain = pa.array(["p", None, "q"], pa.large_string())
    for chunks, expected in (([sliced], ["a", "b", "c"]),
                             ([whole.slice(1, 2), whole.slice(3, 1)], ["a", "b", "c"]),
                             ([null_with_bytes], ["d", None, "e"]),
                             ([null_with_bytes, whole.slice(2, 1)], ["d", None, "e", "b"]),
                             ([plain, whole.slice(1, 1)], ["p", None, "q", "a"]),
                             # read from the array's start, " b" would seem 1 byte, as "b"
                             ([pa.array(["a", " b"], pa.large_string()).slice(1)], ["b"])):
        cleaned = _clean_chunks(pa.chunked_array(chunks, pa.large_string()))
        assert cleaned.to_pylist() == expected


def test_only_i_and_s_have_non_ascii_letters_upper_casing_to_them():
    # the spellings table (io._UPPER_FROM) must hold every code point Arrow upper-cases to a
    # placeholder's character: checked over all of Unicode with Arrow itself
    import pyarrow as pa
    import pyarrow.compute as pc

    from geoflow.io import _UPPER_FROM

    points = [c for c in range(0x80, 0x110000) if not 0xD800 <= c <= 0xDFFF]
    upper = pc.utf8_upper(pa.array([chr(c) for c in points])).to_pylist()
    wanted = set("".join(PLACEHOLDERS))
    found = {}
    for point, text in zip(points, upper, strict=True):
        if text in wanted:
            found[text] = found.get(text, "") + chr(point)
    assert found == _UPPER_FROM


def test_parquet_booleans_lists_and_structs_are_warned(tmp_path):
    frame = pd.DataFrame({"Serial Number": ["A", "B"], "Checked": [True, False],
                          "States": [["TX"], ["AZ", "NM"]], "Meta": [{"a": 1}, {"a": 2}]})
    frame.to_parquet(tmp_path / "t.parquet", index=False)
    result = read_traces(tmp_path / "t.parquet")
    assert result.records["checked"].tolist() == ["True", "False"]
    assert result.warnings[["column", "value", "reason"]].values.tolist() == [
        *([name, "", UNKNOWN_HEADER] for name in ("Checked", "States", "Meta")),
        ["Checked", "True", "Parquet column of true/false values: read as text"],
        ["States", "['TX']", "Parquet column of lists: read as text"],
        ["Meta", "{'a': 1}", "Parquet column of structs/maps: read as text"],
    ]


def test_a_quoted_line_break_where_the_parser_cuts_its_blocks_is_read_as_one_value(tmp_path):
    """Lines are parsed as records with Arrow cutting its 1 MiB blocks at any line break: a
    quoted break that falls on a cut must not become two rows that each look whole (here
    both halves have the file's seven fields), but one record, as the csv module reads it."""
    block = 1 << 20
    value = 'x\na,b,c,d,e,f,g'  # the last cell: its second line holds six delimiters
    rows, size = [], 0
    while size + 200 < block:
        row = f"T{len(rows)},S{len(rows)},Store {len(rows)},Laredo,TX,Reynosa,CHIH\n"
        rows.append(row)
        size += len(row)
    head = "T-X,S-X,Store ,Laredo,TX,Reynosa,"
    head = head.replace("Store ", "Store " + "X" * (block - 2 - size - len(head)))
    special = f'{head}"{value}"\n'
    # the quoted break is the byte where the first block ends: Arrow gives the two halves as
    # rows of seven fields, as many rows as lines (checked with pyarrow 26)
    assert size + special.index("\n") == block
    data = (HEADER + "\n" + "".join(rows) + special + "T-end,S,Store,Laredo,TX,Reynosa,CHIH\n")
    result = read_traces(_write(tmp_path, data.encode()))
    records = result.records
    assert len(records) == len(rows) + 2 and _holds(result) and result.rejects.empty
    assert records["recovery_state"].iloc[-2] == value
    assert records["trace_id"].iloc[-2:].tolist() == ["T-X", "T-end"]
    assert records["source_line"].iloc[-1] == len(rows) + 4  # the value's two lines counted
