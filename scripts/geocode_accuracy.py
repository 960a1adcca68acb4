"""Score the offline geocoder on tests/data/geocode_expected.csv, per kind of string.

    python scripts/geocode_accuracy.py [--misses]

For each kind: rows, share within tolerance and in the right state, answers in the wrong
country, wrong answers at or above geoflow.geocode.CONFIDENT_SCORE (the target is 0),
answers flagged ambiguous. ``--misses`` lists every miss with the geocoder's answer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from geoflow.geocode import CONFIDENT_SCORE, geocode

TABLE = Path(__file__).resolve().parents[1] / "tests" / "data" / "geocode_expected.csv"


def evaluate(table: pd.DataFrame) -> pd.DataFrame:
    """The table with the geocoder's answers (``got_*``), ``km``, ``good`` and ``confident``."""
    got = pd.concat([geocode(rows["query"], country=country).set_axis(rows.index)
                     for country, rows in table.groupby("country")])
    out = table.join(got.add_prefix("got_"))
    lat1, lon1, lat2, lon2 = (np.radians(out[c].astype(float))
                              for c in ("lat", "lon", "got_lat", "got_lon"))
    h = (np.sin((lat2 - lat1) / 2) ** 2
         + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2)
    out["km"] = 2 * 6371.0 * np.arcsin(np.sqrt(h))
    out["good"] = (out["km"] <= out["tolerance_km"]) & (out["got_admin1"] == out["admin1"])
    out["confident"] = out["got_score"] >= CONFIDENT_SCORE
    return out


def summary(out: pd.DataFrame) -> pd.DataFrame:
    placed = out["got_admin1"].notna()
    wrong_country = placed & (out["got_admin1"].str[:2] != out["country"])
    per = out.assign(wrong_country=wrong_country,
                     confident_wrong=out["confident"] & ~out["good"],
                     ambiguous=out["got_candidates"].fillna("") != "")
    table = per.groupby("kind").agg(rows=("query", "size"), good=("good", "mean"),
                                    wrong_country=("wrong_country", "sum"),
                                    confident_wrong=("confident_wrong", "sum"),
                                    ambiguous=("ambiguous", "sum"))
    total = pd.DataFrame({"rows": [len(per)], "good": [per["good"].mean()],
                          "wrong_country": [per["wrong_country"].sum()],
                          "confident_wrong": [per["confident_wrong"].sum()],
                          "ambiguous": [per["ambiguous"].sum()]}, index=["all"])
    table = pd.concat([table, total])
    table["good"] = (100 * table["good"]).round(1)
    return table.rename(columns={"good": "good_%"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--misses", action="store_true")
    args = parser.parse_args()
    out = evaluate(pd.read_csv(TABLE, comment="#", keep_default_na=False,
                               na_values={"lat": [""], "lon": [""]}))
    print(f"confident score: >= {CONFIDENT_SCORE}")
    print(summary(out).to_string())
    if args.misses:
        pd.set_option("display.width", 250)
        pd.set_option("display.max_colwidth", 70)
        miss = out[~out["good"] | (out["confident"] & ~out["good"])]
        print(miss[["kind", "query", "got_matched_name", "got_score", "km",
                    "got_note"]].to_string())


if __name__ == "__main__":
    main()
