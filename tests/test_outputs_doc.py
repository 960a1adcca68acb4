"""docs/outputs.md documents every file, column, property and manifest key `geoflow run` writes.

The sample is run once; every output is compared with the page. When this fails, add the
named column (or file) to docs/outputs.md under the file's heading, in the same commit.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import re
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pyogrio
import pytest
from click.testing import CliRunner

from geoflow.cli import cli

DOC = Path(__file__).resolve().parents[1] / "docs" / "outputs.md"
#: manifest.json objects whose keys are documented one by one (as ``counts.rows_read`` …)
MANIFEST_NESTED = ("input", "options", "counts", "quality", "pseudonyms", "suppression",
                   "geocoder")
HOW_TO_FIX = ("Add a row  | `NAME` | type | unit | meaning | how computed | empty means |  "
              "under the file's heading in docs/outputs.md (or rename the stale row).")


def documented_sections(text: str) -> dict[str, set[str]]:
    """File pattern → documented names: a heading naming files in backticks (a name with a
    ``.`` or ``*``) opens their section; each table row's first backticked cell is a name."""
    sections: dict[str, set[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("#"):
            current = [n for n in re.findall(r"`([^`]+)`", line) if "." in n or "*" in n]
            for name in current:
                sections.setdefault(name, set())
        elif current and (row := re.match(r"\|\s*`([^`]+)`\s*\|", line)):
            for name in current:
                sections[name].add(row.group(1))
    return sections


def names_for(sections: dict[str, set[str]], path: str) -> set[str] | None:
    """Names documented for output ``path`` (all sections whose pattern matches it); None
    when no section matches the file at all."""
    hits = [names for pattern, names in sections.items() if fnmatch.fnmatchcase(path, pattern)]
    return set().union(*hits) if hits else None


def csv_columns(path: Path) -> list[str]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return next(csv.reader(handle), [])


def _layer_file(out: Path, layer: str) -> str:
    """The file a GeoPackage layer / GeoParquet file / shapefile mirrors."""
    return f"{layer}.geojson" if (out / f"{layer}.geojson").exists() else f"tables/{layer}.csv"


def output_names(out: Path, relative: str) -> list[tuple[str, str]]:
    """Every column / property / key of one output file as (file whose section must name
    it, name). Layers in other formats are checked against the file they mirror."""
    path = out / relative
    names: list[str] = []
    if relative.endswith(".csv"):
        names = csv_columns(path)
    elif relative.endswith(".geojson"):
        data = json.loads(path.read_text(encoding="utf-8"))
        names = list(data)
        for feature in data["features"]:
            names += [k for k in feature["properties"] if k not in names]
    elif relative == "manifest.json":
        data = json.loads(path.read_text(encoding="utf-8"))
        names = list(data)
        for key in MANIFEST_NESTED:
            names += [f"{key}.{sub}" for sub in data.get(key) or {}]
    elif relative == "findings.json":
        for item in json.loads(path.read_text(encoding="utf-8")):
            names += [k for k in item if k not in names]
            names += [item["id"]] + [f"numbers.{k}" for k in item.get("numbers", {})]
    elif relative.endswith(".gpkg"):
        pairs = []
        for layer, _geometry in pyogrio.list_layers(path):
            pairs.append((relative, str(layer)))
            info = pyogrio.read_info(path, layer=layer)
            pairs += [(_layer_file(out, layer), str(f)) for f in info["fields"]]
        return pairs
    elif relative.startswith("geoparquet/"):  # --format geoparquet: as the GeoJSON layers
        columns = pq.read_schema(path).names
        return [(_layer_file(out, path.stem), c) for c in columns if c != "geometry"]
    elif relative.endswith(".parquet"):
        names = pq.read_schema(path).names
    elif relative.startswith("shapefile/") and relative.endswith(".dbf"):
        fields = pd.read_csv(out / "shapefile" / "fields.csv")
        layer_fields = fields[fields["layer"] == path.stem]
        dbf = pyogrio.read_info(path.with_suffix(".shp"))["fields"]
        assert sorted(dbf) == sorted(layer_fields["field"]), f"{relative} != fields.csv"
        return ([(relative, c) for c in layer_fields["column"]]
                + [(_layer_file(out, path.stem), c) for c in layer_fields["column"]])
    return [(relative, name) for name in dict.fromkeys(names)]


def undocumented(out: Path, text: str) -> list[str]:
    """``file: what`` for every output file or name the page does not document."""
    sections = documented_sections(text)
    problems = []
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        relative = path.relative_to(out).as_posix()
        if names_for(sections, relative) is None:
            problems.append(f"{relative}: the file has no section (a heading naming it)")
            continue
        for section, name in output_names(out, relative):
            if name not in (names_for(sections, section) or set()):
                where = relative if section == relative else f"{relative} (as in {section})"
                problems.append(f"{where}: column `{name}`")
    return list(dict.fromkeys(problems))


@pytest.fixture(scope="module")
def sample_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("outputs_doc") / "sample"
    result = CliRunner().invoke(cli, ["-q", "run", "--sample", "-o", str(out), "--format",
                                      "geoparquet", "--format", "shapefile"], obj={},
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def test_every_output_column_is_documented(sample_out):
    problems = undocumented(sample_out, DOC.read_text(encoding="utf-8"))
    assert not problems, ("docs/outputs.md does not document:\n  " + "\n  ".join(problems)
                          + "\n" + HOW_TO_FIX)


def test_the_check_names_the_undocumented_file_and_column(sample_out):
    """The check is not vacuous: dropping one row or one section is caught and named."""
    text = DOC.read_text(encoding="utf-8")
    without_row = re.sub(r"^\| `top_purchaser_guns` \|.*\n", "", text, flags=re.M)
    assert undocumented(sample_out, without_row) == [
        "geoflow.gpkg (as in tables/by_dealer.csv): column `top_purchaser_guns`",
        "tables/by_dealer.csv: column `top_purchaser_guns`"]
    without_counts = re.sub(r"^\| `counts\.rows_placed` \|.*\n", "", text, flags=re.M)
    assert undocumented(sample_out, without_counts) == [
        "manifest.json: column `counts.rows_placed`"]
    without_file = text.replace("## `findings.md`", "## findings (Markdown)")
    assert undocumented(sample_out, without_file) == [
        "findings.md: the file has no section (a heading naming it)"]


def test_readme_links_the_outputs_page():
    readme = (DOC.parents[1] / "README.md").read_text(encoding="utf-8")
    assert "(docs/outputs.md)" in readme
