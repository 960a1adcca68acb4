"""A batch's GeoPackages: the schema GDAL wrote once, filled by SQLite, hold what GDAL writes."""

from __future__ import annotations

import sqlite3

import pandas as pd
import pyogrio
import pytest

from geoflow import formats, geopackage, pipeline
from geoflow.select import entity_keys


def _tables(path) -> dict[str, list]:
    """Every SQLite table of a GeoPackage (metadata, R-trees, counts, rows), and its schema."""
    con = sqlite3.connect(path)
    try:
        out = {"schema": sorted(con.execute("SELECT type, name, tbl_name, sql FROM "
                                            "sqlite_master WHERE sql IS NOT NULL"))}
        for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            if name.startswith("rtree_") and not name.endswith("_geom"):
                continue  # an R-tree's node tables: its entries are compared through it
            order = "id" if name.startswith("rtree_") else "rowid"
            query = f'SELECT * FROM "{name}" ORDER BY {order}'  # noqa: S608 (the file's own)
            out[name] = con.execute(query).fetchall()
        out["check"] = con.execute("PRAGMA integrity_check").fetchall()
        out["ids"] = [con.execute(f"PRAGMA {p}").fetchall()
                      for p in ("application_id", "user_version")]
    finally:
        con.close()
    return out


def _output(result) -> tuple[dict, dict, dict]:
    flows, level = result.flows_geojson
    layers = {name: getattr(result, name) for name in formats._LAYERS}
    layers["flows"] = flows
    about = {"flows": formats.flow_level_note(level, shown=len(flows), total=len(result.flows))}
    return layers, result.tables, about


@pytest.fixture(scope="module")
def entities():
    """Output sets of a --per batch on the sample: states, dealers, traffickers, MX states."""
    from geoflow.sample import sample_path

    prepared = pipeline.prepare_records(sample_path())
    records = prepared.records
    out = []
    for kind, picks in (("state", [0, 5, 20]), ("dealer", [0, 40, 300]),
                        ("trafficker", [0, 7]), ("mx-state", [1])):
        keys = entity_keys(records, kind)
        counts = keys.value_counts()
        for at in picks:
            label = str(counts.index[at])
            out.append(pipeline.analyse(prepared, records=records[keys == label],
                                        description=label, entity=(kind, label)))
    return out


def test_a_batch_geopackage_holds_what_gdal_writes(entities, tmp_path):
    formats._TEMPLATES.clear()
    for i, result in enumerate(entities):
        layers, tables, about = _output(result)
        if i == len(entities) - 1:  # hostile text and an empty layer: a schema of its own
            dealers = layers["dealers"].copy()
            dealers.loc[dealers.index[0], "dealer_name"] = "O'Brien \"Guns\" <b>&amp; =1+1"
            layers = {**layers, "dealers": dealers, "crossings": layers["crossings"].iloc[0:0]}
        gdal, filled = tmp_path / f"gdal{i}.gpkg", tmp_path / f"filled{i}.gpkg"
        formats.write_geopackage(layers, tables, gdal, about=about)
        formats.write_geopackage(layers, tables, filled, about=about, reuse_schema=True)
        assert _tables(filled) == _tables(gdal)
        assert _tables(filled)["check"] == [("ok",)]
        for layer in pyogrio.list_layers(gdal)[:, 0]:  # and GDAL reads the same back
            pd.testing.assert_frame_equal(pyogrio.read_dataframe(filled, layer=layer),
                                          pyogrio.read_dataframe(gdal, layer=layer))
        assert (pyogrio.read_info(filled, layer="flows")["layer_metadata"]
                == pyogrio.read_info(gdal, layer="flows")["layer_metadata"])
    # a batch's entities share one schema (the last one added an empty layer: a second)
    assert len(formats._TEMPLATES) == 2
    assert not list(tmp_path.glob(".*"))  # GDAL's schema file is gone


def test_every_entity_makes_the_same_template(entities, tmp_path):
    """Serial and parallel batches, and a resumed one, write the same bytes: the template
    does not depend on which entity a process met first."""
    made = []
    for result in entities[:3]:
        formats._TEMPLATES.clear()
        layers, tables, about = _output(result)
        formats.write_geopackage(layers, tables, tmp_path / "one.gpkg", about=about,
                                 reuse_schema=True)
        made.append(next(iter(formats._TEMPLATES.values())))
        (tmp_path / "one.gpkg").unlink()
    assert made[0] is not None and made[1] == made[0] and made[2] == made[0]


def test_frames_it_cannot_write_as_gdal_does_go_to_gdal(entities, tmp_path):
    layers, tables, about = _output(entities[0])
    assert geopackage.schema_key(layers, tables, about) is not None
    stamped = {**tables, "by_year": tables["by_year"].assign(
        when=pd.Timestamp("2020-01-02"))}  # a datetime column
    assert geopackage.schema_key(layers, stamped, about) is None
    odd = {"flows": {**about["flows"], "flows": "<b>"}}  # metadata text GDAL would escape
    assert geopackage.schema_key(layers, tables, odd) is None
    formats._TEMPLATES.clear()
    path = formats.write_geopackage(layers, stamped, tmp_path / "g.gpkg", about=about,
                                    reuse_schema=True)
    assert not formats._TEMPLATES
    assert pyogrio.read_dataframe(path, layer="by_year")["when"].notna().all()
    # GDAL's table holding other columns than the frame's: no template is made of it
    wrong = {"by_year": [c for c in stamped["by_year"].columns if c != "when"]}
    assert geopackage.emptied(path, wrong) is None
    assert geopackage.emptied(path, {"by_year": list(stamped["by_year"].columns)}) is not None
