"""GeoJSON (RFC 7946, read back with GDAL through pyogrio), formula-safe CSV, atomic folders."""

from __future__ import annotations

import csv
import json
import math
import os
import re
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pyogrio
import pytest
import shapely
from handmade import PORTS, make_records

from geoflow.aggregate import build_tables
from geoflow.errors import OutputError
from geoflow.export import (
    CSV_ARROW_ROWS,
    atomic_output_dir,
    csv_text,
    float_texts,
    formula_safe,
    safe_path,
    write_csv,
    write_geojson,
    write_json,
)
from geoflow.flows import build_flows
from geoflow.privacy import pseudonymise


def _coordinates(obj):
    if isinstance(obj, (int, float)):
        yield obj
    else:
        for item in obj:
            yield from _coordinates(item)


def test_geojson_is_rfc7946_and_reads_back_with_gdal(tmp_path):
    clockwise = shapely.Polygon([(0, 0), (0, 1.1234567891), (1, 1), (1, 0), (0, 0)])
    assert not clockwise.exterior.is_ccw
    gdf = gpd.GeoDataFrame(
        {
            "name": ["square", "point"],
            "guns": np.array([3, 0], dtype="int64"),
            "share": [np.nan, 0.25],
            "label": pd.array(["=cmd", None], dtype="string"),
        },
        geometry=[clockwise, shapely.Point(-99.123456789, 19.987654321)],
        crs="EPSG:4326",
    )
    path = tmp_path / "layer.geojson"
    write_geojson(gdf, path)
    text = path.read_text(encoding="utf-8")
    assert "NaN" not in text
    data = json.loads(text)
    assert data["type"] == "FeatureCollection" and "crs" not in data
    square, point = data["features"]
    assert square["properties"]["share"] is None and point["properties"]["label"] is None
    assert square["properties"]["guns"] == 3
    for feature in data["features"]:
        for value in _coordinates(feature["geometry"]["coordinates"]):
            assert value == round(value, 6)
    assert point["geometry"]["coordinates"] == [-99.123457, 19.987654]  # lon, lat
    assert shapely.Polygon(square["geometry"]["coordinates"][0]).exterior.is_ccw
    back = pyogrio.read_dataframe(path)
    assert back.crs.to_epsg() == 4326
    assert back["guns"].tolist() == [3, 0]
    assert back.geometry.iloc[1].x == pytest.approx(-99.123457)


def test_geojson_reprojects_to_wgs84(tmp_path):
    gdf = gpd.GeoDataFrame({"a": [1]}, geometry=[shapely.Point(-99.0, 19.0)], crs="EPSG:4326")
    write_geojson(gdf.to_crs("EPSG:3857"), tmp_path / "x.geojson")
    coords = json.loads((tmp_path / "x.geojson").read_text())["features"][0]["geometry"]
    assert coords["coordinates"] == pytest.approx([-99.0, 19.0])


def test_csv_cells_never_start_a_formula(tmp_path):
    frame = pd.DataFrame({
        "text": ["=HYPERLINK(\"x\")", "+1+1", "-cmd", "@SUM(A1)", "\tx", "\rx", "plain", None],
        "number_text": ["-12.5", "+3", "=1+1", "ok", "-", "1e3", "", "x"],
        "value": [-1, 2, 3, 4, 5, 6, 7, 8],
    })
    path = tmp_path / "t.csv"
    write_csv(frame, path)
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["text"] for r in rows[:6]] == [
        "'=HYPERLINK(\"x\")", "'+1+1", "'-cmd", "'@SUM(A1)", "'\tx", "'\rx"]
    assert rows[6]["text"] == "plain" and rows[7]["text"] == ""
    assert [r["number_text"] for r in rows[:5]] == ["-12.5", "+3", "'=1+1", "ok", "'-"]
    assert rows[0]["value"] == "-1"  # numbers stay numbers
    for row in rows:
        for cell in row.values():
            assert not cell or cell[0] not in "=+@\t\r" or cell[1:].lstrip("+").replace(
                ".", "", 1).isdigit()
    assert formula_safe(frame)["value"].tolist() == frame["value"].tolist()


_CSV_WORDS = ["a", "b,c", 'say "hi"', "line\nbreak", "cr\rx", "", " sp ", "Michoacán",
              "=1+2", "-12.5", "é,\"\r\n", "\tx", "@x", "x\x00y"]
_CSV_FLOATS = [0.1, 0.2 + 0.1, 1.0, -0.0, 0.0, 1e-05, 1e-4, 0.5e-4, 1e16, 9.99e15, 123456789.125,
               999999999.5, 1e9, np.nan, np.inf, -np.inf, 1 / 3, 2.5e-300, -7.25]


def _csv_frame(rng, rows: int) -> pd.DataFrame:
    """A table of every kind of column write_csv formats itself, in random order."""
    kinds = {
        "share": lambda: rng.integers(0, 10**6, rows) / 10.0 ** rng.integers(0, 12, rows),
        "float": lambda: rng.choice(_CSV_FLOATS, rows),
        "int": lambda: rng.integers(-10**12, 10**12, rows),
        "Int64": lambda: pd.array([None if v % 3 == 0 else int(v)
                                   for v in rng.integers(0, 100, rows)], dtype="Int64"),
        "flag": lambda: rng.random(rows) < 0.5,
        "text": lambda: pd.array(rng.choice([*_CSV_WORDS, None], rows), dtype="string"),
        "object, text": lambda: pd.Series(rng.choice(_CSV_WORDS, rows), dtype=object),
    }
    names = rng.choice(list(kinds), int(rng.integers(1, 6)))
    return pd.DataFrame({f"{name} {i}": kinds[name]() for i, name in enumerate(names)})


def test_large_tables_are_written_byte_for_byte_as_pandas_writes_them(tmp_path):
    """Tables past CSV_ARROW_ROWS are formatted with Arrow: the bytes must stay pandas'."""
    rng = np.random.default_rng(7)
    frames = [_csv_frame(rng, int(rng.integers(CSV_ARROW_ROWS, 2 * CSV_ARROW_ROWS)))
              for _ in range(25)]
    frames.append(pd.DataFrame({"": [""] * CSV_ARROW_ROWS}))  # one empty cell a row
    frames.append(pd.DataFrame({"n": np.arange(CSV_ARROW_ROWS, dtype=np.int8)}))
    frames.append(pd.DataFrame({"f32": np.full(CSV_ARROW_ROWS, 0.1, dtype=np.float32)}))
    frames.append(pd.DataFrame({"when": pd.date_range("2020-01-01", periods=CSV_ARROW_ROWS),
                                "text": ["=x"] * CSV_ARROW_ROWS}))  # dates: pandas writes
    for i, frame in enumerate(frames):
        for bom in (False, True):
            write_csv(frame, tmp_path / "ours.csv", bom=bom)
            formula_safe(frame).to_csv(tmp_path / "pandas.csv", index=False,
                                       encoding="utf-8-sig" if bom else "utf-8",
                                       lineterminator="\r\n")
            assert (tmp_path / "ours.csv").read_bytes() == (
                tmp_path / "pandas.csv").read_bytes(), (i, frame.dtypes.to_dict())
    assert csv_text(frames[-1]) is None  # dates are left to pandas
    assert csv_text(pd.DataFrame(index=range(3))) is None
    with (tmp_path / "ours.csv").open(newline="", encoding="utf-8-sig") as handle:
        cells = [cell for row in csv.reader(handle) for cell in row]
    assert "'=x" in cells and not any(cell.startswith("=") for cell in cells)


def test_float_texts_are_numpy_reprs_across_magnitudes():
    rng = np.random.default_rng(3)
    values = np.concatenate([
        rng.random(20_000) * 10.0 ** rng.integers(-8, 20, 20_000),
        -rng.random(5_000) * 10.0 ** rng.integers(-5, 12, 5_000),
        rng.integers(0, 10**9, 5_000).astype(float),
        rng.integers(1, 10**6, 5_000) / rng.integers(1, 10**6, 5_000),
        np.array(_CSV_FLOATS), [5e-324, 1.7976931348623157e308],
    ])
    assert float_texts(values).to_pylist() == values.astype(str).tolist()


def test_write_json_turns_nan_and_numpy_into_plain_json(tmp_path):
    write_json({"a": np.int64(3), "b": math.nan, "c": [np.float64(0.5), pd.NA]},
               tmp_path / "x.json")
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 3, "b": None, "c": [0.5, None]}


def test_atomic_folder_replaces_a_geoflow_folder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"generator": "geoflow"}))
    (out / "stale.csv").write_text("old")
    with atomic_output_dir(out) as temp:
        assert temp.parent == tmp_path and temp != out
        (temp / "manifest.json").write_text(json.dumps({"generator": "geoflow", "n": 2}))
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]
    assert json.loads((out / "manifest.json").read_text())["n"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temp folders left


def test_atomic_folder_refuses_foreign_folder_unless_forced(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.docx").write_text("precious")
    with pytest.raises(OutputError, match="not written by geoflow"), atomic_output_dir(out):
        pass
    assert (out / "thesis.docx").read_text() == "precious"
    with atomic_output_dir(out, force=True) as temp:
        (temp / "a.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["a.txt"]


def test_failed_run_leaves_nothing_half_written(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError), atomic_output_dir(out) as temp:
        (temp / "flows.geojson").write_text("{")
        raise RuntimeError("boom")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
    # an existing geoflow folder survives a failed re-run untouched
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"generator": "geoflow"}))
    with pytest.raises(RuntimeError), atomic_output_dir(out) as temp:
        raise RuntimeError("boom")
    assert [p.name for p in out.iterdir()] == ["manifest.json"]


def test_safe_path_stays_inside_the_folder(tmp_path):
    assert safe_path(tmp_path, "tables/by_dealer.csv") == tmp_path / "tables" / "by_dealer.csv"
    for bad in ("../escape.csv", "/etc/passwd", "a/../../b"):
        with pytest.raises(OutputError, match="unsafe"):
            safe_path(tmp_path, bad)
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    with pytest.raises(OutputError, match="not a folder"), atomic_output_dir(a_file):
        pass


GOLDEN = Path(__file__).parent / "data" / "golden"


def _golden_result():
    records = make_records([
        {"purchaser": "Rogelio Barajas", "dealer": "GAT Guns", "ffl": "3-36-01234",
         "dealer_at": "dundee", "recovered_at": "reynosa", "port": "2304", "kind": "known",
         "n": 3, "bought": "2007-03-01", "recovered": "2008-09-10"},
        {"purchaser": "=Formula Name", "dealer": "Desert Arms", "dealer_at": "phoenix",
         "recovered_at": "hermosillo", "port": "2604", "n": 2, "weapon": "Rifle"},
        {"purchaser": "Nobody", "dealer": "Lost Guns", "dealer_at": None, "n": 1},
    ])
    # a fixed key: the user's key (conftest: made per test session) would change the ids
    records = pseudonymise(records, key=b"golden files' fixed test key")
    records = records.assign(purchaser_label=records["purchaser_id"])
    placed = records[records["placed"]]
    return build_flows(placed, PORTS), build_tables(records, ports=PORTS)["by_purchaser"]


@pytest.mark.parametrize("name", ["handmade_flows.geojson", "handmade_by_purchaser.csv"])
def test_outputs_match_golden_files(name, tmp_path):
    """Byte-for-byte outputs of hand-made records; regenerate with GEOFLOW_UPDATE_GOLDEN=1
    after an intended format change, and review the diff."""
    flows, purchasers = _golden_result()
    path = tmp_path / name
    if name.endswith(".geojson"):
        write_geojson(flows, path)
    else:
        write_csv(purchasers, path)
    golden = GOLDEN / name
    if os.environ.get("GEOFLOW_UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_bytes(path.read_bytes())
    assert path.read_bytes() == golden.read_bytes()


def test_geojson_properties_survive_hostile_text(tmp_path):
    hostile = ['a"b', "back\\slash", "line\nbreak", "tab\there", "émoji 🚀", None, "</script>",
               "\x01ctl"]
    gdf = gpd.GeoDataFrame(
        {
            "text": pd.array(hostile, dtype="string"),
            "category": pd.Categorical(['p"q', None, *["r"] * 6]),
            "value": [1.0, np.nan, np.inf, 2.5, -3, 0.1 + 0.2, 123456.1234567, 3],
            "count": pd.array([1, None, 3, 4, 5, 6, 7, 8], dtype="Int64"),
            "flag": [True, False] * 4,
            # columns of one kind go through the kernels together: each keeps its own rows
            "other": pd.array(hostile[::-1], dtype="str"),
            "share": [0.5, np.inf, np.nan, 1e-7, 2.0, 7, -0.25, 1e20],
            "rank": np.arange(8, dtype=np.int64) * -3,
        },
        geometry=shapely.points(np.arange(8.0), np.zeros(8)),
        crs="EPSG:4326",
    )
    write_geojson(gdf, tmp_path / "h.geojson", chunk=3)  # several chunks
    features = json.loads((tmp_path / "h.geojson").read_text(encoding="utf-8"))["features"]
    props = [f["properties"] for f in features]
    assert [p["text"] for p in props] == hostile
    assert [p["category"] for p in props][:3] == ['p"q', None, "r"]
    assert [p["value"] for p in props] == [1.0, None, None, 2.5, -3.0, 0.3, 123456.123457, 3.0]
    assert [p["count"] for p in props][:2] == [1, None]
    assert props[0]["flag"] is True and props[1]["flag"] is False
    assert [p["other"] for p in props] == hostile[::-1]
    assert [p["share"] for p in props] == [0.5, None, None, 0.0, 2.0, 7.0, -0.25, 1e20]
    assert [p["rank"] for p in props] == [0, -3, -6, -9, -12, -15, -18, -21]
    assert pyogrio.read_dataframe(tmp_path / "h.geojson")["text"].tolist()[:2] == hostile[:2]


def test_markdown_text_keeps_data_from_forming_html_links_or_images():
    from markdown_it import MarkdownIt

    from geoflow.export import markdown_text

    hostile = ('Guns <img src=x onerror=alert(1)> & Co ![x](http://e.vil/p.png) '
               '[click](javascript:alert(1)) <http://e.vil> `code` *bold*\n# heading')
    html = MarkdownIt("commonmark").render(f"- {markdown_text(hostile)}\n")
    assert "<img" not in html and "<a " not in html and "<code" not in html
    assert "<em" not in html and "<strong" not in html and "<h1" not in html
    assert html.count("<li>") == 1
    # what a reader sees is the original text (line break aside)
    shown = html.replace("<ul>\n<li>", "").replace("</li>\n</ul>\n", "")
    assert shown == (hostile.replace("\n", " ").replace("&", "&amp;").replace("<", "&lt;")
                     .replace(">", "&gt;").replace('"', "&quot;"))
    assert markdown_text("Houston, TX (12, 30%)") == "Houston, TX (12, 30%)"


def test_numbers_are_written_as_their_shortest_rounded_decimal(tmp_path):
    # GEOS writes -116.945805 as -116.94580499999999: the README promises at most 6 decimals
    lons = np.array([-116.945805, -99.1332085, 0.1 + 0.2, -106.4245, 1e-7])
    lats = np.array([32.5501, 19.4326077, 25.6866142, 31.6903638, -5e-8])
    points = gpd.GeoDataFrame(
        {"value": lons * 2, "guns": np.arange(5), "big": [1e20, 3.0, np.nan, -0.5, 2.5e-7]},
        geometry=shapely.points(lons, lats), crs="EPSG:4326")
    ring = shapely.Polygon([(-116.945805, 32.5501), (-116.9, 32.5501), (-116.9, 32.6),
                            (-116.945805, 32.5501)])
    shapes = gpd.GeoDataFrame(
        {"name": ["a", "b", "c"]},
        geometry=[ring, shapely.MultiPolygon([ring, shapely.box(0.1, 0.2, 0.3 + 1e-9, 0.4)]),
                  shapely.LineString([(-116.945805, 32.5501), (0.1 + 0.2, 1)])],
        crs="EPSG:4326")
    for frame, name in ((points, "points.geojson"), (shapes, "shapes.geojson")):
        write_geojson(frame, tmp_path / name)
        text = (tmp_path / name).read_text(encoding="utf-8")
        assert not re.search(r"\d\.\d{7,}", text), re.search(r".{20}\d\.\d{7,}.{5}", text)
        assert "-116.945805," in text and "32.5501" in text
        assert "0.30000000000000004" not in text
        back = gpd.read_file(tmp_path / name)  # GDAL reads it, same shapes within 1e-6
        assert np.allclose(shapely.get_coordinates(back.geometry.to_numpy()),
                           np.round(shapely.get_coordinates(frame.geometry.to_numpy()), 6),
                           atol=1e-9)
    features = json.loads((tmp_path / "points.geojson").read_text())["features"]
    assert features[0]["geometry"]["coordinates"] == [-116.945805, 32.5501]
    assert features[4]["geometry"]["coordinates"] == [0.0, 0.0]  # rounded, no -0.0 noise
    assert [f["properties"]["big"] for f in features] == [1e20, 3.0, None, -0.5, 0.0]
    assert features[1]["properties"]["value"] == -198.266417  # 2 × -99.1332085
    text = (tmp_path / "points.geojson").read_text()
    assert '"big":3.0' in text and '"guns":1,' in text  # floats stay floats, ints ints
    shapes_back = json.loads((tmp_path / "shapes.geojson").read_text())["features"]
    assert [f["geometry"]["type"] for f in shapes_back] == ["Polygon", "MultiPolygon",
                                                             "LineString"]
    assert shapes_back[1]["geometry"]["coordinates"][1][0][0] == [0.3, 0.2]


def test_state_outlines_written_from_cache_match_fresh_text_in_mixed_layers():
    """A batch writes the same state outlines in every output set: their GeoJSON text comes
    from a per-process cache, and must equal the fresh text and keep each row's place among
    points, lines and missing geometries."""
    from geoflow.export import _geometry_texts, _new_geometry_texts
    from geoflow.shapes import load_states

    outlines = load_states().geometry.to_numpy()[:3]
    mixed = np.array([shapely.Point(-99.5, 27.5), outlines[0], None, outlines[1],
                      shapely.LineString([(0, 0), (1, 1)]), outlines[2]], dtype=object)
    fresh = _new_geometry_texts(mixed)
    for _ in range(2):  # the second call is served from the cache
        texts = _geometry_texts(mixed)
        assert list(texts) == list(fresh)
    assert texts[2] == "null"
    assert json.loads(texts[0]) == {"type": "Point", "coordinates": [-99.5, 27.5]}
    assert json.loads(texts[1])["type"] in ("Polygon", "MultiPolygon")


def test_flows_without_line_objects_write_the_same_geoparquet_as_geopandas(
        tmp_path, monkeypatch):
    """A run with more flows than flows.geojson holds keeps no line object per flow;
    flows_full.parquet is still the very file GeoPandas writes for their three-point lines."""
    from geoflow import export
    from geoflow.export import three_point_wkb, write_flows_parquet, write_geoparquet
    from geoflow.flows import flow_geometry

    records = make_records([
        {"dealer_at": "dundee", "recovered_at": "reynosa", "port": "2304", "n": 2},
        {"dealer": "Desert Arms", "dealer_at": "phoenix", "recovered_at": "hermosillo",
         "port": "2604"},
        {"dealer": "Alamo Guns", "dealer_at": "houston", "recovered_at": "cdmx",
         "port": "2304", "kind": "known"},
    ])
    records = pseudonymise(records, key=b"a fixed test key").assign(
        purchaser_label=lambda r: r["purchaser_id"])
    placed = records[records["placed"]]
    bare = build_flows(placed, PORTS, lines=False)
    lines = build_flows(placed, PORTS, segment_km=None)
    assert not isinstance(bare, gpd.GeoDataFrame) and len(bare) == 3
    assert bare.equals(pd.DataFrame(lines.drop(columns="geometry")))
    assert shapely.equals(flow_geometry(bare), lines.geometry.to_numpy()).all()
    assert three_point_wkb(bare).to_pylist() == shapely.to_wkb(lines.geometry.to_numpy()).tolist()
    write_flows_parquet(bare, tmp_path / "bare.parquet")
    write_geoparquet(lines, tmp_path / "lines.parquet")
    assert (tmp_path / "bare.parquet").read_bytes() == (tmp_path / "lines.parquet").read_bytes()
    back = gpd.read_parquet(tmp_path / "bare.parquet")
    assert back.crs.to_epsg() == 4326 and (shapely.get_num_points(back.geometry) == 3).all()
    assert back.total_bounds.tolist() == lines.total_bounds.tolist()
    # written a row group at a time (2 flows here), it is still GeoPandas' file for them
    monkeypatch.setattr(export, "PARQUET_ROW_GROUP", 2)
    write_flows_parquet(bare, tmp_path / "groups.parquet")
    export._plain_text(lines).to_parquet(tmp_path / "lines_groups.parquet", index=False,
                                         compression="zstd", schema_version="1.0.0",
                                         row_group_size=2,
                                         write_statistics=export._number_columns(lines))
    groups = pq.ParquetFile(tmp_path / "groups.parquet").metadata
    assert groups.num_row_groups == 2
    # min/max of the numbers, so a reader skips row groups (most guns first) by guns; none of
    # text or WKB, which would skip nothing
    columns = {groups.row_group(0).column(i).path_in_schema: groups.row_group(0).column(i)
               for i in range(groups.num_columns)}
    assert columns["guns"].statistics.has_min_max
    assert columns["guns"].statistics.min >= groups.row_group(1).column(
        list(columns).index("guns")).statistics.max
    assert columns["dealer_lat"].statistics.has_min_max
    for text in ("flow_id", "dealer_name", "first_purchase", "geometry"):
        assert columns[text].statistics is None or not columns[text].statistics.has_min_max
    assert ((tmp_path / "groups.parquet").read_bytes()
            == (tmp_path / "lines_groups.parquet").read_bytes())
    # a GeoPandas without its internal table builder: the same file, through line objects
    monkeypatch.setattr(export, "_geopandas_to_arrow", lambda: None)
    write_flows_parquet(bare, tmp_path / "fallback.parquet")
    assert (tmp_path / "fallback.parquet").read_bytes() == (tmp_path / "lines.parquet").read_bytes()


def test_formula_risk_by_first_byte_equals_the_regex_and_plain_text_is_written_as_pandas(
        tmp_path):
    # a cell's first byte against the regex over its text (empty, NA, accents first, sliced
    # and chunked arrays); columns with nothing to quote skip the quoting regex, same bytes
    import re

    import pyarrow as pa

    from geoflow.export import _first_bytes, _formula_risk

    rng = np.random.default_rng(19)
    words = ["=a", "+1", "-x", "@s", "\tt", "\rr", "", "é=", "ab", "1,5", "Zoë", "x-y", None]
    for _ in range(100):
        cells = pd.Series(pd.array(rng.choice(words, int(rng.integers(0, 40))),
                                   dtype="string"))
        expected = [v is not pd.NA and re.match(r"[=+\-@\t\r]", v) is not None for v in cells]
        assert _formula_risk(cells).tolist() == expected
        assert _formula_risk(cells.astype(object)).tolist() == expected
        # text held by Python (a batch's small entities) or by Arrow's own type: the same
        for dtype in (pd.StringDtype("python"), pd.ArrowDtype(pa.large_string())):
            assert _formula_risk(cells.astype(dtype)).tolist() == expected
        texts = pa.array(cells.array)
        for part in (texts, texts[len(texts) // 2:], pa.chunked_array([texts, texts])):
            values = part.to_pylist()
            assert _first_bytes(part).tolist() == [v.encode()[0] if v else 0 for v in values]
    plain = ["a", "b c", "", "Michoacán", "-12.5", "=1+2", None]
    frame = pd.DataFrame({"text": pd.array(rng.choice(plain, CSV_ARROW_ROWS), dtype="string"),
                          "share": rng.choice(_CSV_FLOATS, CSV_ARROW_ROWS),
                          "flag": rng.random(CSV_ARROW_ROWS) < 0.5})
    write_csv(frame, tmp_path / "ours.csv")
    formula_safe(frame).to_csv(tmp_path / "pandas.csv", index=False, lineterminator="\r\n")
    assert (tmp_path / "ours.csv").read_bytes() == (tmp_path / "pandas.csv").read_bytes()


def test_formula_safe_whatever_holds_the_text_and_with_repeated_names():
    # the same cells as pandas text (Arrow's or Python's), Arrow's own type, a categorical
    # and objects: each risky cell gets its quote, numbers and plain text stay as they are
    import pyarrow as pa

    cells = ["=1+2", "-12.5", "@x", "plain", None]
    quoted = ["'=1+2", "-12.5", "'@x", "plain", None]
    kinds = [pd.StringDtype("pyarrow"), pd.StringDtype("python"),
             pd.ArrowDtype(pa.large_string()), "category", object]
    frame = pd.concat([pd.Series(cells, dtype=kind) for kind in kinds], axis=1)
    frame.columns = ["a", "b", "a", "c", "b"]  # names repeated: columns taken by position
    frame["n"] = [1, -2, 3, 4, 5]
    safe = formula_safe(frame)
    assert list(safe.columns) == ["a", "b", "a", "c", "b", "n"]
    for at in range(5):
        got = safe.iloc[:, at].astype(object).where(safe.iloc[:, at].notna(), None)
        assert got.tolist() == quoted, kinds[at]
    assert safe["n"].tolist() == [1, -2, 3, 4, 5]
    assert frame.iloc[:, 0].tolist()[0] == "=1+2"  # the caller's frame is unchanged


def test_numbers_formatted_once_per_distinct_value_read_as_formatted_one_by_one():
    # float_texts and number_texts format distinct values (by their bits) and take them
    # back: the same texts as formatting every value, with -0.0, NaN and infinities
    from geoflow.export import number_texts

    rng = np.random.default_rng(23)
    special = [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-7, 2.5e17, -116.9458049999]
    for _ in range(50):
        pool = np.concatenate([special, rng.random(int(rng.integers(1, 20))) * 1000 - 500])
        values = rng.choice(pool, int(rng.integers(0, 300)))
        for texts_of in (float_texts, number_texts):
            assert texts_of(values).equals(texts_of.__wrapped__(values))
            assert texts_of(values).to_pylist() == [
                texts_of.__wrapped__(np.array([v])).to_pylist()[0] for v in values]


def test_json_strings_and_csv_quoting_with_and_without_characters_to_escape():
    # columns holding no quote, backslash, control character or CSV separator skip their
    # kernels: every column still reads as json.dumps / Python's csv module write it
    import io

    import pyarrow as pa

    from geoflow.export import _csv_quoted, _holds_any, _json_strings

    rng = np.random.default_rng(37)
    plain, hostile = ["a", "b c", "", "Zoë", "1.5"], ['q"', "back\\", "x\x01", "l\nb", "c,d"]
    for trial in range(100):
        words = plain + (hostile if trial % 2 else [])
        values = pa.array(list(rng.choice([*words, None], int(rng.integers(0, 30)))),
                          pa.string())
        for part in (values, values[len(values) // 2:]):
            cells = part.to_pylist()
            assert _holds_any(part, b'"\\') >= any('"' in v or "\\" in v for v in cells if v)
            assert _json_strings(part).to_pylist() == [
                "null" if v is None else json.dumps(v, ensure_ascii=False) for v in cells]
            text = [v for v in cells if v]  # csv writes a lone empty cell as ""
            expected = []
            for v in text:
                out = io.StringIO()
                csv.writer(out, lineterminator="\r\n").writerow([v])
                expected.append(out.getvalue().removesuffix("\r\n"))
            assert _csv_quoted(pa.array(text, pa.string())).to_pylist() == expected


def test_three_point_bounds_are_those_of_the_rounded_coordinates():
    # only the extremes are rounded: the same bounds as rounding every coordinate first,
    # with NaN coordinates and a column of NaN alone
    import warnings

    from geoflow.export import _three_point_bounds

    rng = np.random.default_rng(41)
    columns = [f"{end}_{axis}" for end in ("dealer", "port", "recovery") for axis in ("lon", "lat")]
    for trial in range(100):
        size = int(rng.integers(1, 30))
        flows = pd.DataFrame({c: rng.random(size) * 360 - 180 + rng.choice([0, 5e-7, -5e-7])
                              for c in columns})
        flows = flows.mask(rng.random(flows.shape) < 0.2)
        if trial % 5 == 0:
            flows["port_lat"] = np.nan
        rounded = flows.round(6)
        lon = rounded[[c for c in columns if c.endswith("lon")]].to_numpy()
        lat = rounded[[c for c in columns if c.endswith("lat")]].to_numpy()
        with warnings.catch_warnings():  # a column of NaN alone: numpy warns
            warnings.simplefilter("ignore", RuntimeWarning)
            expected = [np.nanmin(lon), np.nanmin(lat), np.nanmax(lon), np.nanmax(lat)]
        np.testing.assert_array_equal(_three_point_bounds(flows), expected)
