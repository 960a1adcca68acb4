"""The SYNTHETIC sample: invented trace records shaped by the published facts of DOMAIN.md.

Every record is made up. Only the two documented cases carry published names (Rogelio Barajas
and GAT Guns, East Dundee, IL; Paul Giovanni De La Rosa and Hart Brothers, Albert Lea, MN);
every other purchaser, possessor and dealer name is invented, and every record carries
``Dataset = "SYNTHETIC SAMPLE"``. Places are real (``shapes/sample_places.csv``, built from
GeoNames and USPS ZIP data by ``scripts/build_sample_places.py``) and written the messy ways
trace records write them. See ``docs/sample.md``.

>>> df = make_sample(rows=1000, seed=1)
>>> len(df), df["Dataset"].unique().tolist()
(1000, ['SYNTHETIC SAMPLE'])
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from pyarrow import csv

from geoflow import __version__
from geoflow.errors import GeoflowError, OutputError

__all__ = [
    "DEFAULT_ROWS",
    "DEFAULT_SEED",
    "MAX_ROWS",
    "SAMPLE_LABEL",
    "HEADERS",
    "make_sample",
    "write_sample",
    "sample_path",
    "default_cache_dir",
]

DEFAULT_ROWS = 2922
DEFAULT_SEED = 20101
MAX_ROWS = 10_000_000
SAMPLE_LABEL = "SYNTHETIC SAMPLE"
#: Rows from which the two documented cases (109 records) are included.
NAMED_CASES_FROM = 500

#: Column headers of the written file (English ATF-style; the reader's aliases map them).
HEADERS: tuple[str, ...] = (
    "Trace Number", "Serial Number", "Manufacturer", "Model", "Caliber", "Weapon Type",
    "Purchaser Name", "Purchase Date", "FFL Name", "FFL Number", "FFL City", "FFL State",
    "FFL Zip", "Recovery Date", "Recovery City", "Recovery State", "Recovery Country",
    "Possessor Name", "Crossing", "Dataset",
)
DATE_FORMAT = "%m/%d/%Y"  # US month-first, as ATF trace printouts write dates

# --- the heavy purchasers -------------------------------------------------------------------
#: Guns of the nine invented heavy purchasers at the default size (repeated when scaled).
HEAVY_COUNTS = (31, 26, 21, 18, 16, 14, 13, 12, 11)
#: Which of them spread purchases over three stores (no store sells them more than half).
HEAVY_SPREAD = (2, 7)
BARAJAS = ("Rogelio Barajas", "ROGELIO BARAJAS")
DE_LA_ROSA = ("Paul Giovanni De La Rosa", "PAUL GIOVANNI DE LA ROSA", "Paul Giovanni de la Rosa")
BARAJAS_GUNS, BARAJAS_AT_GAT = 75, 69
DE_LA_ROSA_GUNS, DE_LA_ROSA_AT_HART = 34, 28
LAREDO = ("LAREDO, TX", "Laredo", "LAREDO", "Laredo, Texas")
BARAJAS_STATES = {"MX-TAM": 4, "MX-NLE": 3, "MX-COA": 2, "MX-SLP": 1, "MX-ZAC": 1,
                  "MX-MIC": 1, "MX-JAL": 1}
DE_LA_ROSA_STATES = {"MX-CMX": 9, "MX-MEX": 6, "MX-MOR": 2, "MX-GRO": 2, "MX-HID": 1}
#: Ports written on case-file records, by the US state of the dealer (others use Texas's).
PORTS = {
    "TX": ("LAREDO, TX", "EL PASO", "Hidalgo", "BROWNSVILLE", "EAGLE PASS", "Del Rio"),
    "AZ": ("NOGALES, AZ", "Nogales", "DOUGLAS", "SAN LUIS", "LUKEVILLE"),
    "CA": ("SAN YSIDRO", "OTAY MESA", "Calexico"),
    "NM": ("COLUMBUS", "SANTA TERESA"),
}

# --- firearms ----------------------------------------------------------------------------------
WEAPON_TYPES = ("PISTOL", "RIFLE", "REVOLVER", "SHOTGUN")
#: Recovery year → share of rifles (DOMAIN.md: ~28 % in 2007 rising to 43 % in 2011).
RIFLE_SHARE = {2007: 0.28, 2008: 0.32, 2009: 0.36, 2010: 0.40}
REVOLVER_SHARE, SHOTGUN_SHARE = 0.10, 0.05
#: (manufacturer, model, caliber, weapon type index, weight within type)
FIREARMS: tuple[tuple[str, str, str, int, float], ...] = (
    ("Glock", "17", "9mm", 0, 10), ("Glock", "19", "9mm", 0, 8), ("Glock", "22", ".40 S&W", 0, 4),
    ("FN Herstal", "Five-seveN", "5.7x28mm", 0, 5), ("Colt", "Government 1911", ".38 Super", 0, 8),
    ("Colt", "Super 38", ".38 Super", 0, 4), ("Beretta", "92FS", "9mm", 0, 6),
    ("Smith & Wesson", "M&P9", "9mm", 0, 4), ("Ruger", "P95", "9mm", 0, 4),
    ("Taurus", "PT92", "9mm", 0, 5), ("Sig Sauer", "P226", "9mm", 0, 3),
    ("Bersa", "Thunder 380", ".380 ACP", 0, 4), ("Springfield Armory", "XD-40", ".40 S&W", 0, 3),
    ("Kimber", "Custom II", ".45 ACP", 0, 2), ("Hi-Point", "C9", "9mm", 0, 2),
    ("Walther", "PPK/S", ".380 ACP", 0, 2),
    ("Colt", "AR-15", ".223", 1, 8), ("Bushmaster", "XM-15", ".223", 1, 6),
    ("Romarm/Cugir", "WASR-10", "7.62x39mm", 1, 9), ("Norinco", "MAK-90", "7.62x39mm", 1, 3),
    ("Izhmash", "Saiga", "7.62x39mm", 1, 2), ("DPMS", "A-15", ".223", 1, 4),
    ("Ruger", "Mini-14", ".223", 1, 3), ("Springfield Armory", "M1A", ".308", 1, 1.5),
    ("FN Herstal", "PS90", "5.7x28mm", 1, 1.5), ("Barrett", "M82A1", ".50 BMG", 1, 0.4),
    ("Century Arms", "C39", "7.62x39mm", 1, 2), ("Winchester", "Model 70", ".30-06", 1, 1),
    ("Smith & Wesson", "686", ".357 Magnum", 2, 3), ("Colt", "Python", ".357 Magnum", 2, 1),
    ("Ruger", "GP100", ".357 Magnum", 2, 2), ("Taurus", "85", ".38 Special", 2, 3),
    ("Smith & Wesson", "10", ".38 Special", 2, 2),
    ("Remington", "870", "12 GA", 3, 4), ("Mossberg", "500", "12 GA", 3, 4),
    ("Winchester", "1300", "12 GA", 3, 1),
)
FIVE_SEVEN, PS90, AR15 = 3, 24, 16  # indices into FIREARMS used by the documented cases

# --- invented names ----------------------------------------------------------------------------
FIRST_NAMES = (
    "Jose", "Juan", "Luis", "Carlos", "Jesus", "Miguel", "Francisco", "Antonio", "Alejandro",
    "Manuel", "Pedro", "Jorge", "Ricardo", "Fernando", "Javier", "Raul", "Sergio", "Eduardo",
    "Roberto", "Arturo", "Hector", "Mario", "Oscar", "Ramon", "Enrique", "Alberto", "Victor",
    "Armando", "Gerardo", "Rafael", "Ruben", "Ernesto", "Julio", "Alfredo", "Guillermo", "Adrian",
    "Cesar", "Hugo", "Ivan", "Ismael", "Maria", "Guadalupe", "Rosa", "Ana", "Veronica", "Patricia",
    "Leticia", "Adriana", "Claudia", "Yolanda", "Norma", "Elena", "Gabriela", "Silvia", "Araceli",
    "Sandra", "Laura", "Monica", "Teresa", "Alicia", "Irma", "Josefina", "James", "John", "Robert",
    "Michael", "William", "David", "Richard", "Joseph", "Thomas", "Charles", "Christopher",
    "Daniel", "Matthew", "Anthony", "Mark", "Donald", "Steven", "Paul", "Andrew", "Joshua",
    "Kenneth", "Kevin", "Brian", "George", "Timothy", "Ronald", "Jason", "Jeffrey", "Ryan",
    "Jacob", "Gary", "Nicholas", "Eric", "Jonathan", "Stephen", "Larry", "Justin", "Scott",
    "Brandon", "Benjamin", "Samuel", "Gregory", "Frank", "Raymond", "Patrick", "Dennis", "Tyler",
    "Aaron", "Jerry", "Travis", "Mary", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan",
    "Jessica", "Sarah", "Karen", "Nancy", "Lisa", "Betty", "Sandra", "Ashley", "Kimberly", "Donna",
    "Emily", "Michelle", "Carol", "Amanda", "Melissa", "Deborah", "Stephanie", "Rebecca", "Sharon",
)
LAST_NAMES = (
    "Garcia", "Martinez", "Hernandez", "Lopez", "Gonzalez", "Rodriguez", "Perez", "Sanchez",
    "Ramirez", "Flores", "Gomez", "Torres", "Diaz", "Vazquez", "Cruz", "Morales", "Reyes",
    "Gutierrez", "Ortiz", "Chavez", "Ruiz", "Jimenez", "Mendoza", "Alvarez", "Castillo", "Romero",
    "Moreno", "Herrera", "Medina", "Aguilar", "Vargas", "Guzman", "Castro", "Juarez", "Ramos",
    "Dominguez", "Salazar", "Rios", "Mejia", "Contreras", "Rojas", "Estrada", "Delgado", "Soto",
    "Figueroa", "Espinoza", "Sandoval", "Guerrero", "Cardenas", "Navarro", "Cortes", "Luna",
    "Ibarra", "Trevino", "Cervantes", "Salinas", "Rosales", "Valdez", "Zamora", "Pena", "Campos",
    "Fuentes", "Vega", "Cabrera", "Villarreal", "Pacheco", "Carrillo", "Ochoa", "Escobar", "Leal",
    "Zuniga", "Ayala", "Villanueva", "Maldonado", "Acosta", "Arellano", "Galvan", "Orozco",
    "Montoya", "Ponce", "Padilla", "Esquivel", "Nunez", "Olvera", "Marquez", "Saldana", "Tapia",
    "Cisneros", "Molina", "Lara", "Benavides", "Garza", "Cantu", "Quintanilla", "Solis", "Smith",
    "Johnson", "Williams", "Brown", "Jones", "Miller", "Davis", "Wilson", "Anderson", "Taylor",
    "Thomas", "Moore", "Jackson", "Martin", "Lee", "Thompson", "White", "Harris", "Clark", "Lewis",
    "Robinson", "Walker", "Young", "Allen", "King", "Wright", "Scott", "Green", "Baker", "Adams",
    "Nelson", "Hill", "Campbell", "Mitchell", "Roberts", "Carter", "Phillips", "Evans", "Turner",
    "Parker", "Collins", "Edwards", "Stewart", "Morris", "Murphy", "Cook", "Rogers", "Morgan",
    "Cooper", "Peterson", "Bailey", "Reed", "Kelly", "Howard", "Cox", "Ward", "Richardson",
    "Watson", "Brooks", "Wood", "James", "Bennett", "Gray", "Hughes", "Price", "Sanders", "Myers",
    "Long", "Ross", "Foster", "Powell", "Jenkins", "Perry", "Russell", "Sullivan", "Bell",
    "Coleman", "Butler", "Henderson", "Barnes",
)
FIRST_NAMES = tuple(dict.fromkeys(FIRST_NAMES))
LAST_NAMES = tuple(dict.fromkeys(LAST_NAMES))
DEALER_WORDS = (
    "Mesquite", "Cactus", "Canyon", "Coyote", "Sagebrush", "Bluebonnet", "Caliche", "Arroyo",
    "Pecos", "Saguaro", "Ocotillo", "Juniper", "Cottonwood", "Yucca", "Agave", "Chaparral",
    "Tumbleweed", "Roadrunner", "Javelina", "Armadillo", "Prairie", "Cedar", "Ironwood", "Copper",
    "Granite", "Sandstone", "Adobe", "Mustang", "Longhorn", "Bison", "Falcon", "Kestrel", "Osprey",
    "Raven", "Heron", "Badger", "Bobcat", "Cougar", "Pronghorn", "Quail", "Dove", "Turkey", "Elk",
    "Antelope", "Buffalo", "Wolf", "Thistle", "Sorghum", "Pecan", "Walnut", "Hickory", "Willow",
    "Sycamore", "Mulberry", "Laurel", "Aspen", "Pinon", "Palo", "Ridgeback", "Flint", "Slate",
    "Basalt", "Quartz", "Silver", "Iron", "Bronze", "Saddle", "Spur", "Lariat", "Wagon", "Stirrup",
    "Horseshoe", "Buckhorn", "Rimrock", "Redrock", "Blackjack", "Whitetail", "Mule", "Sandhill",
    "Salt", "Sulphur",
)
DEALER_PLACES = (
    "Creek", "Ridge", "Trail", "Valley", "Point", "Mesa", "Springs", "Hollow", "Flats", "Bend",
    "Crossing", "Hill", "Draw", "Butte", "Gulch", "Pass", "Run", "Fork", "Basin", "Bluff",
)
DEALER_KINDS = (
    "Firearms", "Guns", "Gun Shop", "Outfitters", "Sporting Goods", "Arms", "Shooting Supply",
    "Pawn", "Trading Post", "Gun Works", "Armory", "Tactical", "Pawn & Gun", "Hunting Supply",
    "Gun & Tackle",
)
#: ATF region digit of the FFL number by state (invented numbers in the real format).
FFL_REGION = {"TX": 5, "NM": 5, "OK": 5, "LA": 5, "AR": 5, "AZ": 9, "CA": 9, "NV": 9, "UT": 8,
              "CO": 8, "IL": 3, "MN": 3, "WI": 3, "MO": 4, "KS": 4, "NE": 4}
#: Written where a recovery place is garbled or unknown (with no state).
UNKNOWN_PLACES = ("SIN DATO", "DESCONOCIDO", "KM 32 CARR. FEDERAL", "N/A",
                  "RANCHO LAS GOLONDRINAS", "BRECHA S/N", "?")
#: Share of rows: recovery state but no city; unknown place; both blank; city with its state
#: in one field ("NVO. LAREDO, TAMPS."); purchase after recovery (a data-entry slip).
STATE_ONLY, UNKNOWN, BLANK, COMBINED, SWAPPED_DATES = 0.005, 0.003, 0.002, 0.05, 0.001
DEALER_NO_ZIP, DEALER_TYPO = 0.10, 0.02
KNOWN_CROSSING = 0.03  # ordinary records that name a crossing (from case files)
POSSESSOR_KNOWN = 0.4


@lru_cache(maxsize=1)
def _places() -> pd.DataFrame:
    """The shipped place list (see ``scripts/build_sample_places.py``)."""
    source = files("geoflow.shapes_data").joinpath("sample_places.csv")
    with source.open("rb") as handle:
        return pd.read_csv(handle, dtype=str, keep_default_na=False)


class _Spellings:
    """Ragged lists of spellings flattened for vectorised picks."""

    def __init__(self, written: pd.Series) -> None:
        lists = written.str.split("|")
        self.count = lists.str.len().to_numpy()
        self.start = np.concatenate([[0], np.cumsum(self.count)[:-1]])
        self.flat = np.asarray(lists.explode().to_numpy(), dtype=object)

    def pick(self, rng: np.random.Generator, item: np.ndarray) -> np.ndarray:
        """One random spelling per entry of ``item`` (indices of places); flat indices."""
        return self.start[item] + (rng.random(len(item)) * self.count[item]).astype(np.int64)


class _WithinGroups:
    """Weighted random draws of items restricted to a group (vectorised)."""

    def __init__(self, group: np.ndarray, weight: np.ndarray, groups: int) -> None:
        self.order = np.argsort(group, kind="stable")
        g = group[self.order]
        w = np.asarray(weight, dtype=float)[self.order]
        totals = np.bincount(g, weights=w, minlength=groups)
        before = np.concatenate([[0.0], np.cumsum(totals)[:-1]])
        with np.errstate(invalid="ignore", divide="ignore"):
            self.key = g + (np.cumsum(w) - before[g]) / totals[g]
        self.last = np.cumsum(np.bincount(g, minlength=groups)) - 1

    def draw(self, rng: np.random.Generator, group: np.ndarray) -> np.ndarray:
        """One item of each requested group, with probability proportional to its weight."""
        pos = np.searchsorted(self.key, group + rng.random(len(group)), side="right")
        return self.order[np.minimum(pos, self.last[group])]


def _weighted(rng: np.random.Generator, weights: np.ndarray, size: int) -> np.ndarray:
    p = np.asarray(weights, dtype=float)
    return rng.choice(len(p), size=size, p=p / p.sum())


def _allocate(rng: np.random.Generator, weights: np.ndarray, n: int) -> np.ndarray:
    """``n`` items spread over places in proportion to ``weights`` (largest remainders drawn
    at random), so a town's dealer count follows its weight closely even for small ``n``."""
    share = np.asarray(weights, dtype=float) / np.sum(weights) * n
    whole = np.floor(share).astype(np.int64)
    rest = share - whole
    extra = rng.choice(len(share), size=n - int(whole.sum()), replace=False, p=rest / rest.sum())
    whole[extra] += 1
    return rng.permutation(np.repeat(np.arange(len(share)), whole))


def _repeated(values, codes: np.ndarray) -> pa.DictionaryArray:
    """Arrow dictionary column of ``values[codes]`` (code -1 → null), values de-duplicated."""
    uniques, inverse = np.unique(np.asarray(values, dtype=str), return_inverse=True)
    codes = np.asarray(codes)
    mapped = inverse[np.maximum(codes, 0)].astype(np.int32)
    indices = pa.array(mapped, mask=codes < 0)
    return pa.DictionaryArray.from_arrays(indices, pa.array(uniques, type=pa.string()))


def _text(values: np.ndarray) -> pa.Array:
    """Arrow string column of an object array (``None`` → null)."""
    return pa.array(values, type=pa.string(), from_pandas=True)


def _names(rng: np.random.Generator, n: int, *, single_share: float) -> np.ndarray:
    """``n`` distinct invented names: "First Last" or "First Last Last" (Hispanic style)."""
    nf, nl = len(FIRST_NAMES), len(LAST_NAMES)
    n_single = min(round(n * single_share), nf * nl // 2)
    single = rng.choice(nf * nl, size=n_single, replace=False)
    space = nf * nl * nl
    # past ~4M names (10M-row samples) a middle initial multiplies the space; below, the
    # draw (and so every smaller sample) is unchanged
    initials = max(1, -(-(n - n_single) // space))
    double = rng.choice(space * initials, size=n - n_single, replace=False)
    middle = double // space
    double = double % space
    first = np.concatenate([single // nl, double // (nl * nl)])
    last1 = np.concatenate([single % nl, (double // nl) % nl])
    last2 = np.concatenate([np.full(n_single, -1), double % nl])
    first_s = np.asarray(FIRST_NAMES, dtype=object)[first]
    last_s = np.asarray(LAST_NAMES, dtype=object)[last1]
    tail = np.where(last2 >= 0, " " + np.asarray(LAST_NAMES, dtype=object)[last2], "")
    letters = np.asarray([""] + [f" {c}." for c in "ABCDEFGHJKLMNPRSTV"], dtype=object)
    initial = letters[np.concatenate([np.zeros(n_single, dtype=np.int64), middle])]
    return (first_s + initial + " " + last_s + tail).astype(object)


def _dealers(rng: np.random.Generator, towns: pd.DataFrame, n: int) -> pd.DataFrame:
    """Dealers: the two documented stores, six neighbours for their buyers, ``n`` invented."""
    state = towns["code"].str[3:].to_numpy()
    weight = towns["weight"].astype(float).to_numpy()
    name = towns["name"].to_numpy()

    def top(st: str, k: int, skip: str) -> list[int]:
        idx = np.flatnonzero((state == st) & (name != skip))
        return list(idx[np.argsort(-weight[idx], kind="stable")][:k])

    gat = int(np.flatnonzero((name == "East Dundee") & (state == "IL"))[0])
    hart = int(np.flatnonzero((name == "Albert Lea") & (state == "MN"))[0])
    special = [gat, hart, *top("IL", 3, "East Dundee"), *top("MN", 3, "Albert Lea")]
    town = np.concatenate([special, _allocate(rng, weight, n)]).astype(np.int64)
    total = len(town)
    space = len(DEALER_WORDS) * len(DEALER_PLACES) * len(DEALER_KINDS)
    combo = rng.choice(space, size=total - 2, replace=False)
    n_places, n_kinds = len(DEALER_PLACES), len(DEALER_KINDS)
    words = np.asarray(DEALER_WORDS, dtype=object)[combo // (n_places * n_kinds)]
    places = np.asarray(DEALER_PLACES, dtype=object)[(combo // n_kinds) % n_places]
    kinds = np.asarray(DEALER_KINDS, dtype=object)[combo % n_kinds]
    names = np.concatenate([["GAT Guns", "Hart Brothers"], words + " " + places + " " + kinds])

    spell = _Spellings(towns["written"])
    city = spell.flat[spell.pick(rng, town)].astype(object)
    city[0] = "E DUNDEE"
    typo = rng.random(total) < DEALER_TYPO
    typo[:8] = False
    city[typo] = [_swap_letters(c, rng) for c in city[typo]]  # loop over a few dealers

    zips = _Spellings(towns["zips"].str.replace(" ", "|"))
    zip_code = zips.flat[zips.pick(rng, town)].astype(object)
    zip_code[:2] = ["60118", "56007"]
    no_zip = rng.random(total) < DEALER_NO_ZIP
    no_zip[:8] = False
    zip_code[no_zip] = ""

    st = state[town]
    pawn = np.char.find(names.astype(str), "Pawn") >= 0
    ffl = (
        pd.Series(st).map(FFL_REGION).fillna(4).astype(int).astype(str)
        + "-" + pd.Series(rng.integers(10, 99, total)).astype(str)
        + "-" + pd.Series(rng.integers(1, 999, total)).astype(str).str.zfill(3)
        + "-" + np.where(pawn, "02", "01")
        + "-" + pd.Series(rng.integers(0, 10, total)).astype(str)
        + pd.Series(np.asarray(list("ABCDEFGHJKLM"))[rng.integers(0, 12, total)])
        + "-" + pd.Series(rng.permutation(90_000)[:total] + 10_000).astype(str)
    )
    popularity = rng.lognormal(0.0, 0.5, total)
    popularity[:2] = 0.3  # the documented stores sold few guns to anyone else in the records
    return pd.DataFrame({
        "name": names, "ffl": ffl.to_numpy(), "town": town, "city": city, "state": st,
        "zip": zip_code, "popularity": popularity,
    })


def _swap_letters(text: str, rng: np.random.Generator) -> str:
    """A typing slip: two neighbouring letters swapped ("SAN ANTONOI")."""
    if len(text) < 5:
        return text
    i = int(rng.integers(1, len(text) - 2))
    return text[:i] + text[i + 1] + text[i] + text[i + 2:]


def _ordinary_counts(rng: np.random.Generator, total: int) -> np.ndarray:
    """Guns per ordinary purchaser (1–9, most buy one) summing exactly to ``total``."""
    if total <= 0:
        return np.zeros(0, dtype=np.int64)
    k = np.arange(1, 10)
    draws = _weighted(rng, k ** -2.3, total) + 1
    cum = np.cumsum(draws)
    n = int(np.searchsorted(cum, total)) + 1
    counts = draws[:n].copy()
    counts[-1] -= cum[n - 1] - total
    return counts


def _validate(rows: int, seed: int) -> None:
    if not 1 <= rows <= MAX_ROWS or isinstance(rows, bool):
        raise GeoflowError(f"sample rows must be between 1 and {MAX_ROWS:,}, got {rows!r}")
    if seed < 0:
        raise GeoflowError(f"sample seed must be 0 or more, got {seed!r}")


def _buyers(rng: np.random.Generator, rows: int) -> dict[str, np.ndarray | int]:
    """Purchasers and guns each: documented cases, invented heavy buyers, ordinary buyers."""
    n_named = 2 if rows >= NAMED_CASES_FROM else 0
    n_heavy = max(0, round(11 * rows / DEFAULT_ROWS) - n_named)
    position = np.arange(n_heavy) % len(HEAVY_COUNTS)
    fixed = np.concatenate([
        [BARAJAS_GUNS, DE_LA_ROSA_GUNS][:n_named], np.asarray(HEAVY_COUNTS)[position],
    ]).astype(np.int64)
    counts = np.concatenate([fixed, _ordinary_counts(rng, rows - int(fixed.sum()))])
    names = _names(rng, len(counts) - n_named, single_share=0.4)
    buyer = np.repeat(np.arange(len(counts)), counts)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    spread = np.zeros(len(counts), dtype=bool)
    spread[n_named:len(fixed)] = np.isin(position, HEAVY_SPREAD)
    kind = np.full(len(counts), 2)  # 0 documented case, 1 invented heavy buyer, 2 ordinary
    kind[:n_named] = 0
    kind[n_named:len(fixed)] = 1
    return {
        "n_named": n_named, "counts": counts, "spread": spread, "kind": kind,
        "names": np.concatenate([[BARAJAS[0], DE_LA_ROSA[0]][:n_named], names]).astype(object),
        "buyer": buyer, "rank": np.arange(rows) - start[buyer],
    }


def _choose_dealers(rng: np.random.Generator, dealers: pd.DataFrame, b: dict) -> np.ndarray:
    """Dealer of each row. Ordinary buyers go back to a home store two times in three; heavy
    buyers buy more than half their guns at a main store, or spread over three stores."""
    buyer, rank, counts, kind = b["buyer"], b["rank"], b["counts"], b["kind"]
    popularity = dealers["popularity"].to_numpy()
    state_names, dealer_state = np.unique(dealers["state"].to_numpy(), return_inverse=True)
    within = _WithinGroups(dealer_state, popularity, len(state_names))
    home = _weighted(rng, popularity, len(counts))
    heavy = kind == 1
    border = np.flatnonzero(np.isin(dealers["state"].to_numpy(), ["TX", "AZ"]))
    home[heavy] = rng.choice(border, size=int(heavy.sum()))
    row_home = home[buyer]
    dealer = np.where(rng.random(len(buyer)) < 0.65, row_home,
                      within.draw(rng, dealer_state[row_home]))
    dealer[rank == 0] = row_home[rank == 0]
    share = rng.uniform(0.55, 1.0, len(counts))
    main_n = np.maximum(counts // 2 + 1, np.round(share * counts)).astype(np.int64)
    main = (kind[buyer] == 1) & (rank < main_n[buyer])
    dealer[main] = row_home[main]
    # Spread buyers: three distinct stores of the home store's state, in turn.
    spread = b["spread"][buyer]
    size = np.bincount(dealer_state, minlength=len(state_names))
    first = np.concatenate([[0], np.cumsum(size)[:-1]])
    s = dealer_state[row_home]
    offset = (rng.integers(0, 1 << 30, len(counts))[buyer] + rank % 3) % size[s]
    dealer[spread] = within.order[(first[s] + offset)[spread]]
    if b["n_named"]:  # dealers 0/1: GAT Guns, Hart Brothers; 2–4 and 5–7 their neighbours
        for who, guns, store, others in ((0, BARAJAS_AT_GAT, 0, 2), (1, DE_LA_ROSA_AT_HART, 1, 5)):
            mask = buyer == who
            r = rank[mask]
            dealer[mask] = np.where(r < guns, store, others + (r - guns) % 3)
    return dealer


def _day_number(year: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of 1 January of ``year``."""
    return (np.asarray(year) - 1970).astype("datetime64[Y]").astype("datetime64[D]").astype(
        np.int64
    )


def _recoveries(rng: np.random.Generator, b: dict, places: dict) -> dict[str, np.ndarray]:
    """Recovery day, state and city of each row; a buyer's guns mostly turn up in one state."""
    buyer = b["buyer"]
    rows = len(buyer)
    year = 2007 + _weighted(rng, np.array([0.22, 0.25, 0.26, 0.27]), rows)
    length = 365 + ((year % 4) == 0)
    day = _day_number(year) + (rng.random(rows) * length).astype(np.int64)
    weight = places["state_weight"]
    home = _weighted(rng, weight, len(b["counts"]))
    state = np.where(rng.random(rows) < 0.7, home[buyer], _weighted(rng, weight, rows))
    if b["n_named"]:
        for who, pool, years in ((0, BARAJAS_STATES, (2007, 2011)),
                                 (1, DE_LA_ROSA_STATES, (2008, 2011))):
            mask = buyer == who
            n = int(mask.sum())
            codes = np.asarray([places["state_index"][c] for c in pool])
            state[mask] = codes[_weighted(rng, np.asarray(list(pool.values())), n)]
            lo, hi = _day_number(np.array(years))
            day[mask] = rng.integers(lo, hi, n)
    city = places["city_draw"].draw(rng, state)
    return {"day": day, "state": state, "city": city}


def _firearms(rng: np.random.Generator, b: dict, day: np.ndarray) -> np.ndarray:
    """Index into FIREARMS of each row; rifles gain on pistols by recovery year."""
    rows = len(day)
    year = np.clip(day.astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64) + 1970,
                   2007, 2010)
    rifle = np.asarray([RIFLE_SHARE[y] for y in range(2007, 2011)])[year - 2007]
    u = rng.random(rows)
    wtype = np.select(
        [u < rifle, u < rifle + REVOLVER_SHARE, u < rifle + REVOLVER_SHARE + SHOTGUN_SHARE],
        [1, 2, 3], default=0,
    )
    buyer, rank = b["buyer"], b["rank"]
    if b["n_named"]:  # Barajas mostly bought rifles
        barajas = buyer == 0
        wtype[barajas] = np.where(rng.random(int(barajas.sum())) < 0.6, 1, 0)
    fire_type = np.asarray([f[3] for f in FIREARMS])
    fire_weight = np.asarray([f[4] for f in FIREARMS], dtype=float)
    model = np.empty(rows, dtype=np.int64)
    for t in range(len(WEAPON_TYPES)):  # four weapon types
        idx = np.flatnonzero(fire_type == t)
        mask = wtype == t
        model[mask] = idx[_weighted(rng, fire_weight[idx], int(mask.sum()))]
    if b["n_named"]:  # De La Rosa: many FN Five-seveN pistols, a few PS90s
        rosa = buyer == 1
        model[rosa] = np.select([rank[rosa] < 20, rank[rosa] < 23], [FIVE_SEVEN, PS90],
                                default=model[rosa])
    return model


def _purchase_days(rng: np.random.Generator, b: dict, recovered: np.ndarray) -> np.ndarray:
    """Purchase day: recovery minus a log-normal time to crime (median about two years;
    traffickers' guns turn up within months; a tail is decades old); a few data-entry slips
    put the purchase after the recovery."""
    rows = len(recovered)
    kind = b["kind"][b["buyer"]]
    fast = (kind < 2) | (rng.random(rows) < 0.15)
    ttc = np.where(fast, rng.lognormal(np.log(150.0), 0.8, rows),
                   rng.lognormal(np.log(3 * 365.25), 1.0, rows))
    purchased = recovered - np.clip(ttc, 2, 40 * 365).astype(np.int64)
    slip = (kind == 2) & (rng.random(rows) < SWAPPED_DATES)
    purchased[slip] = recovered[slip] + rng.integers(10, 400, int(slip.sum()))
    return purchased


def _dates(days: np.ndarray) -> pa.DictionaryArray:
    """Day numbers → "MM/DD/YYYY" strings, formatting each distinct day once."""
    lo = int(days.min())
    calendar = pd.date_range(pd.Timestamp(lo, unit="D"), periods=int(days.max()) - lo + 1)
    return _repeated(calendar.strftime(DATE_FORMAT), days - lo)


def _crossings(rng: np.random.Generator, b: dict, dealer_state: np.ndarray) -> np.ndarray:
    """Port of entry written on case-file records: always for the documented cases (Laredo),
    mostly for heavy buyers (one port each), rarely for ordinary records; else blank."""
    buyer, kind = b["buyer"], b["kind"][b["buyer"]]
    rows = len(buyer)
    out = np.full(rows, None, dtype=object)
    per_buyer = rng.random(len(b["counts"]))[buyer]
    known = np.where(kind == 1, rng.random(rows) < 0.85, rng.random(rows) < KNOWN_CROSSING)
    state = np.where(np.isin(dealer_state, list(PORTS)), dealer_state, "TX")
    for st, ports in PORTS.items():  # four border states
        mask = known & (state == st)
        pick = np.where(kind[mask] == 1, per_buyer[mask], rng.random(int(mask.sum())))
        out[mask] = np.asarray(ports, dtype=object)[(pick * len(ports)).astype(np.int64)]
    named = kind == 0
    out[named] = np.asarray(LAREDO, dtype=object)[rng.integers(0, len(LAREDO), int(named.sum()))]
    return out


def _recovery_text(rng: np.random.Generator, b: dict, rec: dict, places: dict):
    """Recovery City / State strings, messy as records write them, with a few problem rows."""
    rows = len(rec["city"])
    cities, states = places["city_spell"], places["state_spell"]
    city = cities.flat[cities.pick(rng, rec["city"])].astype(object)
    state = states.flat[states.pick(rng, rec["state"])].astype(object)
    ordinary = b["kind"][b["buyer"]] == 2
    u = rng.random(rows)
    combined = ordinary & (u < COMBINED)
    abbrev = states.flat[states.start[rec["state"]]]
    city[combined] = city[combined] + ", " + abbrev[combined]
    state[combined] = None
    v = rng.random(rows)
    state_only = ordinary & (v < STATE_ONLY)
    unknown = ordinary & (v >= STATE_ONLY) & (v < STATE_ONLY + UNKNOWN)
    blank = ordinary & (v >= STATE_ONLY + UNKNOWN) & (v < STATE_ONLY + UNKNOWN + BLANK)
    city[state_only | blank] = None
    city[unknown] = np.asarray(UNKNOWN_PLACES, dtype=object)[
        rng.integers(0, len(UNKNOWN_PLACES), int(unknown.sum()))
    ]
    state[unknown | blank] = None
    return city, state


def _codes(rng: np.random.Generator, rows: int, years: np.ndarray) -> tuple[np.ndarray, ...]:
    """Unique trace numbers ("T2008" + 7 digits) and serial numbers (3 letters + 6 digits)."""
    seq = rng.choice(10_000_000, size=rows, replace=False)
    trace = ("T" + pd.Series(years * 10_000_000 + seq).astype(str)).to_numpy(dtype=object)
    chars = np.concatenate([rng.integers(65, 91, (rows, 3), dtype=np.uint8),
                            rng.integers(48, 58, (rows, 6), dtype=np.uint8)], axis=1)
    serial = chars.view("S9").ravel().astype(str).astype(object)
    return trace, serial


def _place_tables() -> dict:
    """Derived lookup structures of the shipped place list."""
    places = _places()
    towns = places[places["kind"] == "us_town"].reset_index(drop=True)
    cities = places[places["kind"] == "mx_city"].reset_index(drop=True)
    states = places[places["kind"] == "mx_state"].reset_index(drop=True)
    state_index = {code: i for i, code in enumerate(states["code"])}
    city_state = cities["code"].map(state_index).to_numpy()
    return {
        "towns": towns,
        "state_index": state_index,
        "state_weight": states["weight"].astype(float).to_numpy(),
        "city_draw": _WithinGroups(city_state, cities["weight"].astype(float).to_numpy(),
                                   len(states)),
        "city_spell": _Spellings(cities["written"]),
        "state_spell": _Spellings(states["written"]),
    }


def _build(rows: int, seed: int) -> pa.Table:
    """The sample as an Arrow table (dictionary columns for repeated values)."""
    _validate(rows, seed)
    rng = np.random.default_rng(seed)
    places = _place_tables()
    dealers = _dealers(rng, places["towns"], int(min(12_000, 4 * rows ** 0.6)))
    b = _buyers(rng, rows)
    dealer = _choose_dealers(rng, dealers, b)
    rec = _recoveries(rng, b, places)
    model = _firearms(rng, b, rec["day"])
    purchased = _purchase_days(rng, b, rec["day"])
    dealer_state = dealers["state"].to_numpy()[dealer]
    crossing = _crossings(rng, b, dealer_state)
    rec_city, rec_state = _recovery_text(rng, b, rec, places)
    years = rec["day"].astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64) + 1970
    trace, serial = _codes(rng, rows, years)
    buyer = b["buyer"]
    buyer_name = b["names"][buyer]
    if b["n_named"]:  # the documented names are sometimes typed in capitals
        for who, spellings in ((0, BARAJAS), (1, DE_LA_ROSA)):
            mask = buyer == who
            pick = np.where(rng.random(int(mask.sum())) < 0.8, 0,
                            rng.integers(1, len(spellings), int(mask.sum())))
            buyer_name[mask] = np.asarray(spellings, dtype=object)[pick]
    pool = _names(rng, max(50, rows // 4), single_share=0.2)
    possessor = pool[rng.integers(0, len(pool), rows)]
    possessor[(rng.random(rows) >= POSSESSOR_KNOWN) | (b["kind"][buyer] == 0)] = None

    order = rng.permutation(rows)  # records in no particular order, as a real extract
    firearms = list(zip(*FIREARMS, strict=True))
    dealer_zip = dealers["zip"].to_numpy(dtype=object)
    dealer_zip[dealer_zip == ""] = None
    columns = {
        "Trace Number": _text(trace[order]),
        "Serial Number": _text(serial[order]),
        "Manufacturer": _repeated(firearms[0], model[order]),
        "Model": _repeated(firearms[1], model[order]),
        "Caliber": _repeated(firearms[2], model[order]),
        "Weapon Type": _repeated(WEAPON_TYPES, np.asarray(firearms[3])[model[order]]),
        "Purchaser Name": _text(buyer_name[order]),
        "Purchase Date": _dates(purchased[order]),
        "FFL Name": _repeated(dealers["name"], dealer[order]),
        "FFL Number": _repeated(dealers["ffl"], dealer[order]),
        "FFL City": _repeated(dealers["city"], dealer[order]),
        "FFL State": _repeated(dealers["state"], dealer[order]),
        "FFL Zip": _text(dealer_zip[dealer[order]]),
        "Recovery Date": _dates(rec["day"][order]),
        "Recovery City": _text(rec_city[order]),
        "Recovery State": _text(rec_state[order]),
        "Recovery Country": _repeated(["MEXICO"], np.zeros(rows, dtype=np.int64)),
        "Possessor Name": _text(possessor[order]),
        "Crossing": _text(crossing[order]),
        "Dataset": _repeated([SAMPLE_LABEL], np.zeros(rows, dtype=np.int64)),
    }
    return pa.table(columns)


def make_sample(*, rows: int = DEFAULT_ROWS, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """Return the synthetic sample: ``rows`` trace records with the headers of :data:`HEADERS`.

    All columns are text as a trace file would have them (dates ``MM/DD/YYYY``, ZIPs as text,
    blanks as missing). The same ``rows`` and ``seed`` always give the same records.

    >>> make_sample(rows=600)["Recovery Country"].unique().tolist()
    ['MEXICO']
    """
    return _build(rows, seed).to_pandas().astype("string")


def write_sample(path: str | Path, *, rows: int = DEFAULT_ROWS, seed: int = DEFAULT_SEED) -> Path:
    """Write the synthetic sample to ``path`` as UTF-8 CSV and return the path.

    Raises :class:`~geoflow.errors.OutputError` when the file cannot be written.
    """
    target = Path(path)
    table = _build(rows, seed)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        csv.write_csv(table, target, write_options=csv.WriteOptions(quoting_style="needed"))
    except OSError as exc:
        message = f"cannot write the sample: {exc.strerror or exc}"
        raise OutputError(message, path=str(target)) from exc
    return target


def default_cache_dir() -> Path:
    """Where :func:`sample_path` keeps generated samples: ``$GEOFLOW_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/geoflow``, else ``~/.cache/geoflow``."""
    if os.environ.get("GEOFLOW_CACHE_DIR"):
        return Path(os.environ["GEOFLOW_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "geoflow"


@lru_cache(maxsize=1)
def _fingerprint() -> str:
    """Changes whenever the generator, its place list or the package version change."""
    digest = hashlib.sha256(__version__.encode())
    digest.update(Path(__file__).read_bytes())
    digest.update(files("geoflow.shapes_data").joinpath("sample_places.csv").read_bytes())
    return digest.hexdigest()[:10]


def sample_path(
    cache_dir: str | Path | None = None, *, rows: int = DEFAULT_ROWS, seed: int = DEFAULT_SEED
) -> Path:
    """Path of the sample as a CSV file, written once into ``cache_dir`` (default
    :func:`default_cache_dir`) and reused, so ``--sample`` goes through the same reader as a
    user's file. The file name carries rows, seed and a fingerprint of the generator."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = folder / f"geoflow-sample-{rows}-{seed}-{_fingerprint()}.csv"
    if target.is_file():
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=".sample-", suffix=".csv", dir=folder)
    except OSError as exc:
        message = f"cannot write the sample: {exc.strerror or exc}"
        raise OutputError(message, path=str(folder)) from exc
    os.close(handle)
    tmp = Path(name)
    try:
        write_sample(tmp, rows=rows, seed=seed)
        tmp.replace(target)  # atomic: a concurrent reader never sees half a file
    finally:
        tmp.unlink(missing_ok=True)
    return target
