"""Write the hostile-input corpus of issue 15, derived from the synthetic sample.

Every case is a file (or a folder, a FIFO, a missing path) with what a correct reader must
report, known from how the file was made rather than from reading it back: the exit code the
CLI documents (README "Errors and exit codes") and the number of records in the file.

    python tests/fuzz_corpus.py OUT_FOLDER [--rows N]

writes the files and ``cases.json``; ``tests/test_fuzz.py`` builds the corpus the same way.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

#: Exit codes of README "Errors and exit codes".
OK, INPUT, SCHEMA = 0, 3, 4


#: The cases :func:`build_corpus` writes, in order.
CASE_NAMES = (
    "base_lf", "crlf", "lone_cr_mac", "mixed_line_endings", "breaks_inside_quotes",
    "bare_cr_in_unquoted_cell", "one_bad_byte", "cp1252_whole_file", "utf16_bom", "utf8_bom",
    "huge_cell_5mb", "quote_swallows_lines", "truncated_mid_row", "truncated_mid_quote",
    "nul_bytes", "bom_only", "empty", "blank_lines_only", "header_only", "blank_lines_between",
    "semicolons_commas_in_cells", "tab_delimited", "header_semicolons_rows_commas",
    "out_of_range_coordinates", "repeated_headers", "wide_blank_columns",
    "formula_and_script_cells", "no_trace_columns", "fake_xlsx", "fake_parquet",
    "parquet_bool_list", "directory", "fifo", "missing",
)


@dataclass
class Case:
    """One corpus entry: ``records`` = data records in the file (``None`` when fatal),
    ``rejected`` = how many of them must be rejected (``None``: not pinned down)."""

    name: str
    path: str
    exit_code: int
    records: int | None = None
    rejected: int | None = None
    warnings: list[str] = field(default_factory=list)  # reasons that must be reported
    note: str = ""


def _sample_rows(rows: int) -> tuple[list[str], list[list[str]]]:
    from geoflow.sample import make_sample

    frame = make_sample(rows=rows).fillna("")
    return list(frame.columns), frame.astype(str).values.tolist()


def _csv_text(header, rows, *, delimiter=",", quoting=csv.QUOTE_MINIMAL,
              newline="\n") -> str:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, quoting=quoting, lineterminator=newline)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def build_corpus(folder: str | Path, *, rows: int = 60, seed: int = 15) -> list[Case]:
    """Write every case into ``folder`` and return them (also saved as ``cases.json``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    header, data = _sample_rows(rows)
    n = len(data)
    cases: list[Case] = []

    def add(name: str, content: bytes | str, exit_code: int = OK, records: int | None = n,
            *, suffix: str = ".csv", **extra) -> None:
        path = folder / f"{name}{suffix}"
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        cases.append(Case(name, str(path), exit_code,
                          records if exit_code == OK else None, **extra))

    base = _csv_text(header, data)
    add("base_lf", base, rejected=0)
    add("crlf", _csv_text(header, data, newline="\r\n"), rejected=0)
    add("lone_cr_mac", _csv_text(header, data, newline="\r"), rejected=0)
    lines = base.split("\n")[:-1]
    add("mixed_line_endings", "".join(line + rnd.choice(["\n", "\r\n", "\r"])
                                      for line in lines), rejected=0)
    quoted = [list(r) for r in data]
    for r in quoted[::7]:
        r[17] = "line one\rline two\r\nline three\nend"  # Possessor Name: breaks in quotes
    add("breaks_inside_quotes", _csv_text(header, quoted, newline="\r"), rejected=0)
    unquoted = [list(r) for r in data]
    unquoted[5][2] = "Glock\rannex"  # a bare CR in an unquoted cell
    text = _csv_text(header, unquoted).replace('"Glock\rannex"', "Glock\rannex")
    add("bare_cr_in_unquoted_cell", text, rejected=0)
    places = [i for i, r in enumerate(data) if "ó" in r[14] or "é" in r[14] or "á" in r[14]]
    bad = base.encode("utf-8")
    if places:  # one cp1252 byte pasted into a UTF-8 file
        row = data[places[0]]
        bad = bad.replace(row[14].encode("utf-8"), row[14].encode("cp1252"), 1)
    add("one_bad_byte", bad, rejected=0,
        warnings=["bytes not valid UTF-8, read as cp1252"] if places else [])
    add("cp1252_whole_file", base.encode("cp1252", errors="replace"), rejected=0)
    add("utf16_bom", base.encode("utf-16"), rejected=0)
    add("utf8_bom", b"\xef\xbb\xbf" + base.encode("utf-8"), rejected=0)
    huge = [list(r) for r in data]
    huge[3][17] = "X" * (5 * 1024 * 1024)
    add("huge_cell_5mb", _csv_text(header, huge), rejected=1)
    # a quote opened in line 11 and closed in line 15: five lines, one (valid-looking) record
    spanning = base.split("\n")
    spanning[10] = spanning[10].replace(",SYNTHETIC SAMPLE", ',"SYNTHETIC SAMPLE', 1)
    spanning[14] = spanning[14].replace(",SYNTHETIC SAMPLE", ',SYNTHETIC SAMPLE"', 1)
    add("quote_swallows_lines", "\n".join(spanning), records=n - 4, rejected=0,
        warnings=["a quoted field runs over lines 11-15"])
    last = base.rstrip("\n")
    cut = last.rfind("\n") + 40
    add("truncated_mid_row", last[:cut], rejected=1)
    all_quoted = _csv_text(header, data, quoting=csv.QUOTE_ALL).rstrip("\n")
    cut = all_quoted.rfind(',"') + 5
    add("truncated_mid_quote", all_quoted[:cut], rejected=1)
    nul = [list(r) for r in data]
    for r in nul[::5]:
        r[3] = r[3] + "\0"
    add("nul_bytes", _csv_text(header, nul), rejected=0)
    add("bom_only", b"\xef\xbb\xbf", INPUT)
    add("empty", b"", INPUT)
    add("blank_lines_only", "\n\r\n  \n", INPUT)
    add("header_only", _csv_text(header, []), records=0, rejected=0)
    add("blank_lines_between", base.replace("\n", "\n\n  \r\n"), rejected=0)
    semicolons = [[c.replace("&", ", and") for c in r] for r in data]
    add("semicolons_commas_in_cells",
        _csv_text(header, semicolons, delimiter=";", quoting=csv.QUOTE_NONE), rejected=0)
    add("tab_delimited", _csv_text(header, data, delimiter="\t"), rejected=0)
    add("header_semicolons_rows_commas",
        ";".join(header) + "\n" + "\n".join(",".join(r) for r in data) + "\n", rejected=n)
    coords = [[*r, "95.0" if i % 10 == 0 else "23.1", "-200" if i % 10 == 1 else "-99.2"]
              for i, r in enumerate(data)]
    add("out_of_range_coordinates",
        _csv_text([*header, "Recovery Lat", "Recovery Lon"], coords),
        rejected=len(range(0, n, 10)) + len(range(1, n, 10)))
    add("repeated_headers", _csv_text([*header, "Purchaser Name"],
                                      [[*r, "Someone"] for r in data]), rejected=0,
        warnings=["repeated header: column 21 has the name of column 7; kept under its own "
                  "name"])
    add("wide_blank_columns", "\n".join(line + "," * 3000 for line in lines) + "\n",
        rejected=0)
    payloads = [list(r) for r in data]
    payloads[0][6] = '=HYPERLINK("http://x.invalid","click")'
    payloads[1][14] = "<script>alert(1)</script>"
    payloads[2][8] = "../../etc/passwd"
    add("formula_and_script_cells", _csv_text(header, payloads), rejected=0)
    add("no_trace_columns", "colour,weight\nred,3\n", SCHEMA)
    add("fake_xlsx", b"PK\x03\x04 not a zip at all", INPUT, suffix=".xlsx")
    add("fake_parquet", b"PAR1 truncated", INPUT, suffix=".parquet")
    frame = pd.DataFrame(data[:10], columns=header)
    frame["Checked"] = [True, False] * 5
    frame["States"] = [["TX"], ["AZ", "NM"]] * 5
    path = folder / "parquet_bool_list.parquet"
    frame.to_parquet(path, index=False)
    cases.append(Case("parquet_bool_list", str(path), OK, 10, 0, warnings=[
        "Parquet column of true/false values: read as text",
        "Parquet column of lists: read as text"]))
    directory = folder / "a_directory.csv"
    directory.mkdir(exist_ok=True)
    cases.append(Case("directory", str(directory), INPUT))
    fifo = folder / "a_fifo.csv"
    if not fifo.exists():
        os.mkfifo(fifo)
    cases.append(Case("fifo", str(fifo), INPUT, note="must not hang waiting for a writer"))
    cases.append(Case("missing", str(folder / "missing.csv"), INPUT))
    assert tuple(c.name for c in cases) == CASE_NAMES
    (folder / "cases.json").write_text(json.dumps([asdict(c) for c in cases], indent=1),
                                       encoding="utf-8")
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--rows", type=int, default=60)
    args = parser.parse_args()
    cases = build_corpus(args.folder, rows=args.rows)
    print(f"wrote {len(cases)} cases to {args.folder}")


if __name__ == "__main__":
    main()
