"""Place-string parsing and normalisation for US and Mexican trace records.

Everything here works on whole pandas Series of *distinct* strings with vectorised string
methods: accents and case are ignored, punctuation dropped, the common abbreviations of both
countries expanded (``CD.`` → ``CIUDAD``, ``NVO.`` → ``NUEVO``, ``FT`` → ``FORT``, ``ST`` →
``SAINT``, a leading ``E``/``N`` → ``EAST``/``NORTH`` …) and a trailing state (postal, AP,
ATF-style or Mexican abbreviation, full name, ISO 3166-2 code) and US ZIP split off.

>>> parse_places(pd.Series(["E DUNDEE, IL 60118", "CD. JUAREZ, CHIH."]))[
...     ["place_key", "states", "zip"]].fillna("").to_dict("records")
... # doctest: +NORMALIZE_WHITESPACE
[{'place_key': 'EAST DUNDEE', 'states': 'US-IL', 'zip': '60118'},
 {'place_key': 'CIUDAD JUAREZ', 'states': 'MX-CHH', 'zip': ''}]
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import pandas as pd

__all__ = [
    "US_STATES",
    "MX_STATES",
    "STATE_NAMES",
    "STATE_ALIASES",
    "PLACE_ALIASES",
    "GEONAMES_MX_ADMIN1",
    "INEGI_MX_STATE",
    "compact",
    "fold",
    "normalise_place",
    "parse_places",
    "normalise_country",
]

#: US postal code → (name, extra abbreviations: AP style, ATF/GPO style, ISO-ish).
US_STATES: dict[str, tuple[str, tuple[str, ...]]] = {
    "AL": ("Alabama", ("ALA",)),
    "AK": ("Alaska", ("ALAS",)),
    "AZ": ("Arizona", ("ARIZ",)),
    "AR": ("Arkansas", ("ARK",)),
    "CA": ("California", ("CALIF", "CAL", "CALIF")),
    "CO": ("Colorado", ("COLO",)),
    "CT": ("Connecticut", ("CONN",)),
    "DE": ("Delaware", ("DEL",)),
    "DC": ("District of Columbia", ("WASHINGTON DC", "WASH DC")),
    "FL": ("Florida", ("FLA",)),
    "GA": ("Georgia", ()),
    "HI": ("Hawaii", ()),
    "ID": ("Idaho", ("IDA",)),
    "IL": ("Illinois", ("ILL", "ILLS")),
    "IN": ("Indiana", ("IND",)),
    "IA": ("Iowa", ()),
    "KS": ("Kansas", ("KAN", "KANS")),
    "KY": ("Kentucky", ("KEN", "KENT")),
    "LA": ("Louisiana", ()),
    "ME": ("Maine", ()),
    "MD": ("Maryland", ()),
    "MA": ("Massachusetts", ("MASS",)),
    "MI": ("Michigan", ()),
    "MN": ("Minnesota", ("MINN",)),
    "MS": ("Mississippi", ("MISS",)),
    "MO": ("Missouri", ()),
    "MT": ("Montana", ("MONT",)),
    "NE": ("Nebraska", ("NEB", "NEBR")),
    "NV": ("Nevada", ("NEV",)),
    "NH": ("New Hampshire", ()),
    "NJ": ("New Jersey", ()),
    "NM": ("New Mexico", ("N MEX", "NMEX", "NEW MEX")),
    "NY": ("New York", ()),
    "NC": ("North Carolina", ("N CAR",)),
    "ND": ("North Dakota", ("N DAK",)),
    "OH": ("Ohio", ()),
    "OK": ("Oklahoma", ("OKLA",)),
    "OR": ("Oregon", ("ORE", "OREG")),
    "PA": ("Pennsylvania", ("PENN", "PENNA")),
    "RI": ("Rhode Island", ()),
    "SC": ("South Carolina", ("S CAR",)),
    "SD": ("South Dakota", ("S DAK",)),
    "TN": ("Tennessee", ("TENN",)),
    "TX": ("Texas", ("TEX",)),
    "UT": ("Utah", ()),
    "VT": ("Vermont", ()),
    "VA": ("Virginia", ("VIRG",)),
    "WA": ("Washington", ("WASH",)),
    "WV": ("West Virginia", ("W VA", "WVA", "W VIRG")),
    "WI": ("Wisconsin", ("WIS", "WISC")),
    "WY": ("Wyoming", ("WYO",)),
    "PR": ("Puerto Rico", ()),
}

#: ISO 3166-2:MX suffix → (name, INEGI number, abbreviations used in Mexican records).
MX_STATES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "AGU": ("Aguascalientes", "01", ("AGS", "AGUASC")),
    "BCN": ("Baja California", "02", ("BC", "B C", "BAJA CALIF", "BAJA CALIFORNIA NORTE")),
    "BCS": ("Baja California Sur", "03", ("BAJA CALIF SUR", "B C SUR")),
    "CAM": ("Campeche", "04", ("CAMP",)),
    "COA": ("Coahuila", "05", ("COAH", "COAHUILA DE ZARAGOZA")),
    "COL": ("Colima", "06", ("COL",)),
    "CHP": ("Chiapas", "07", ("CHIS", "CHIAP")),
    "CHH": ("Chihuahua", "08", ("CHIH",)),
    "CMX": (
        "Ciudad de México",
        "09",
        ("DF", "D F", "CDMX", "DISTRITO FEDERAL", "MEXICO DF", "MEXICO CITY", "CD MEXICO",
         "CIUDAD DE MEXICO", "CD DE MEXICO", "MEXICO D F"),
    ),
    "DUR": ("Durango", "10", ("DGO",)),
    "GUA": ("Guanajuato", "11", ("GTO",)),
    "GRO": ("Guerrero", "12", ("GRO",)),
    "HID": ("Hidalgo", "13", ("HGO",)),
    "JAL": ("Jalisco", "14", ("JAL",)),
    "MEX": (
        "México",
        "15",
        ("EDO MEX", "EDOMEX", "EDO DE MEX", "EDO DE MEXICO", "ESTADO DE MEXICO", "EDO MEXICO",
         "MEX", "EM", "E MEX"),
    ),
    "MIC": ("Michoacán", "16", ("MICH", "MICHOACAN DE OCAMPO")),
    "MOR": ("Morelos", "17", ("MOR",)),
    "NAY": ("Nayarit", "18", ("NAY",)),
    "NLE": ("Nuevo León", "19", ("NL", "N L", "NVO LEON", "NUEVO LEON")),
    "OAX": ("Oaxaca", "20", ("OAX",)),
    "PUE": ("Puebla", "21", ("PUE",)),
    "QUE": ("Querétaro", "22", ("QRO", "QUERETARO DE ARTEAGA")),
    "ROO": ("Quintana Roo", "23", ("Q ROO", "QROO", "QR", "Q R")),
    "SLP": ("San Luis Potosí", "24", ("S L P", "SN LUIS POTOSI")),
    "SIN": ("Sinaloa", "25", ("SIN",)),
    "SON": ("Sonora", "26", ("SON",)),
    "TAB": ("Tabasco", "27", ("TAB",)),
    "TAM": ("Tamaulipas", "28", ("TAMPS", "TAMS", "TAMAUL")),
    "TLA": ("Tlaxcala", "29", ("TLAX",)),
    "VER": ("Veracruz", "30", ("VER", "VERACRUZ DE IGNACIO DE LA LLAVE", "VERACRUZ LLAVE")),
    "YUC": ("Yucatán", "31", ("YUC",)),
    "ZAC": ("Zacatecas", "32", ("ZAC",)),
}

#: GeoNames admin1 codes for Mexico (alphabetical, unlike INEGI's) → ISO 3166-2.
GEONAMES_MX_ADMIN1: dict[str, str] = {
    "01": "MX-AGU", "02": "MX-BCN", "03": "MX-BCS", "04": "MX-CAM", "05": "MX-CHP",
    "06": "MX-CHH", "07": "MX-COA", "08": "MX-COL", "09": "MX-CMX", "10": "MX-DUR",
    "11": "MX-GUA", "12": "MX-GRO", "13": "MX-HID", "14": "MX-JAL", "15": "MX-MEX",
    "16": "MX-MIC", "17": "MX-MOR", "18": "MX-NAY", "19": "MX-NLE", "20": "MX-OAX",
    "21": "MX-PUE", "22": "MX-QUE", "23": "MX-ROO", "24": "MX-SLP", "25": "MX-SIN",
    "26": "MX-SON", "27": "MX-TAB", "28": "MX-TAM", "29": "MX-TLA", "30": "MX-VER",
    "31": "MX-YUC", "32": "MX-ZAC",
}

#: INEGI state number → ISO 3166-2.
INEGI_MX_STATE: dict[str, str] = {num: f"MX-{iso}" for iso, (_, num, _) in MX_STATES.items()}

#: ISO 3166-2 code → display name.
STATE_NAMES: dict[str, str] = {
    **{f"US-{code}": name for code, (name, _) in US_STATES.items()},
    **{f"MX-{code}": name for code, (name, _, _) in MX_STATES.items()},
}

_ABBREVIATIONS: dict[str, str] = {
    # Spanish
    "CD": "CIUDAD", "CDAD": "CIUDAD", "NVO": "NUEVO", "NVA": "NUEVA", "STA": "SANTA",
    "STO": "SANTO", "SN": "SAN", "GRAL": "GENERAL", "PTO": "PUERTO", "GPE": "GUADALUPE",
    "FCO": "FRANCISCO", "VLLE": "VALLE", "STGO": "SANTIAGO", "NTRA": "NUESTRA",
    "SRA": "SENORA", "LIC": "LICENCIADO", "ING": "INGENIERO", "PROF": "PROFESOR",
    "CNEL": "CORONEL", "TTE": "TENIENTE", "DR": "DOCTOR", "PDTE": "PRESIDENTE",
    "FRACC": "FRACCIONAMIENTO", "EJ": "EJIDO", "ESTAC": "ESTACION", "EST": "ESTACION",
    "MPIO": "", "MUNICIPIO": "", "DELEG": "", "DELEGACION": "", "ALCALDIA": "",
    # English
    "FT": "FORT", "ST": "SAINT", "STE": "SAINTE", "MT": "MOUNT", "MTN": "MOUNTAIN",
    "PT": "PORT", "HTS": "HEIGHTS", "HGTS": "HEIGHTS", "SPGS": "SPRINGS", "SPRGS": "SPRINGS",
    "SPG": "SPRING", "JCT": "JUNCTION", "VLG": "VILLAGE", "BCH": "BEACH", "LK": "LAKE",
    "LKS": "LAKES", "CTY": "CITY", "TWP": "TOWNSHIP", "CTR": "CENTER", "VLY": "VALLEY",
    "HBR": "HARBOR", "CRK": "CREEK", "GRV": "GROVE", "LNDG": "LANDING", "XING": "CROSSING",
    "FLS": "FALLS", "GDNS": "GARDENS", "HLS": "HILLS", "PK": "PARK", "BLF": "BLUFF",
    "ISL": "ISLAND", "SPRS": "SPRINGS", "CTRY": "COUNTRY",
}
_DIRECTIONS = {"N": "NORTH", "S": "SOUTH", "E": "EAST", "W": "WEST", "NE": "NORTHEAST",
               "NW": "NORTHWEST", "SE": "SOUTHEAST", "SW": "SOUTHWEST", "NO": "NORTH",
               "SO": "SOUTH"}
#: Only before a name: ``V. DE ALVAREZ`` → Villa de Álvarez, ``COL. X`` → Colonia X.
_LEADING = {"V": "VILLA", "VA": "VILLA", "COL": "COLONIA", "HDA": "HACIENDA", "RCHO": "RANCHO",
            "RCH": "RANCHO"}

#: Whole-place nicknames and codes → the name in the gazetteer.
PLACE_ALIASES: dict[str, str] = {
    "GDL": "GUADALAJARA",
    "MTY": "MONTERREY",
    "CDMX": "CIUDAD DE MEXICO",
    "DF": "CIUDAD DE MEXICO",
    "D F": "CIUDAD DE MEXICO",
    "MEXICO DF": "CIUDAD DE MEXICO",
    "DISTRITO FEDERAL": "CIUDAD DE MEXICO",
    "TJ": "TIJUANA",
    "SLRC": "SAN LUIS RIO COLORADO",
}

_COUNTRIES = {
    "MX": "MX", "MEX": "MX", "MEXICO": "MX", "ESTADOS UNIDOS MEXICANOS": "MX",
    "US": "US", "USA": "US", "UNITED STATES": "US", "UNITED STATES OF AMERICA": "US",
    "EUA": "US", "EU": "US", "EEUU": "US", "ESTADOS UNIDOS": "US",
}


def compact(text: str) -> str:
    """Upper-case letters and digits only: ``"Edo. Méx."`` → ``"EDOMEX"``."""
    return re.sub(r"[^A-Z0-9]", "", fold(text))


def fold(text: str) -> str:
    """Accents removed, upper case: ``"Culiacán"`` → ``"CULIACAN"``."""
    decomposed = unicodedata.normalize("NFKD", str(text))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).upper()


def _state_aliases() -> dict[str, str]:
    """Compact spelling → ISO code(s), ``|``-joined where a spelling is shared (``MICH``)."""
    table: dict[str, set[str]] = {}

    def add(spelling: str, code: str) -> None:
        table.setdefault(compact(spelling), set()).add(code)

    for code, (name, extra) in US_STATES.items():
        iso = f"US-{code}"
        for spelling in (code, name, iso, *extra):
            add(spelling, iso)
    add("MICH", "US-MI")  # AP style Michigan; also Michoacán in Mexican records
    for code, (name, _, extra) in MX_STATES.items():
        iso = f"MX-{code}"
        for spelling in (code, name, iso, *extra):
            add(spelling, iso)
    return {key: "|".join(sorted(codes)) for key, codes in table.items()}


#: Compact spelling (``"TAMPS"``, ``"NUEVOLEON"``, ``"TX"``, ``"MXCHH"``) → ISO code(s).
STATE_ALIASES: dict[str, str] = _state_aliases()
_MAX_STATE_TOKENS = 6


def _fold_series(values: pd.Series) -> pd.Series:
    """Accents removed and upper-cased, vectorised."""
    text = values.astype("string").fillna("")
    return text.str.normalize("NFKD").str.replace(r"[\u0300-\u036f]", "", regex=True).str.upper()


def _tokens(values: pd.Series) -> pd.Series:
    """Folded text with apostrophes removed and all other punctuation turned into spaces."""
    text = _fold_series(values).str.replace(r"['’`]", "", regex=True)
    text = text.str.replace(r"[^A-Z0-9]+", " ", regex=True)
    return text.str.strip()


def normalise_place(values: pd.Series) -> pd.Series:
    """Return match keys: folded, punctuation-free, abbreviations expanded.

    >>> normalise_place(pd.Series(["Ft. Worth", "Mc Allen", "Cd. Juárez", "N Las Vegas"])).tolist()
    ['FORT WORTH', 'MCALLEN', 'CIUDAD JUAREZ', 'NORTH LAS VEGAS']
    """
    text = _tokens(values)
    return _expand(text)


def _sub(text: pd.Series, find: str, pattern: str, repl: Any) -> pd.Series:
    """``str.replace(pattern, repl)`` on the rows that contain ``find`` (an RE2 pattern, fast
    in Arrow) only: a Python callback per row is the slow part."""
    hit = text.str.contains(find, regex=True)
    if hit.any():
        text = text.copy()
        text[hit] = text[hit].str.replace(pattern, repl, regex=True)
    return text


_DIRECTION = r"(NE|NW|SE|SW|NO|SO|N|S|E|W)"
_ABBREVIATION = r"\b(" + "|".join(sorted(_ABBREVIATIONS, key=len, reverse=True)) + r")\b"


def _expand(text: pd.Series) -> pd.Series:
    """Expand abbreviations in already tokenised text."""
    text = _sub(text, r"^(?:NE|NW|SE|SW|NO|SO|N|S|E|W) \S", r"^" + _DIRECTION + r"\s+(?=\S)",
                lambda m: _DIRECTIONS[m.group(1)] + " ")
    # a trailing direction after a name: "LAKELAND N" = Lakeland North
    text = _sub(text, r"[A-Z]{3} (?:NE|NW|SE|SW|N|S|E|W)$",
                r"(?<=[A-Z]{3})\s+(NE|NW|SE|SW|N|S|E|W)$",
                lambda m: " " + _DIRECTIONS[m.group(1)])
    text = _sub(text, r"^(?:V|VA|COL|HDA|RCHO|RCH) \S", r"^(V|VA|COL|HDA|RCHO|RCH)\s+(?=\S)",
                lambda m: _LEADING[m.group(1)] + " ")
    text = _sub(text, _ABBREVIATION.replace("(", "(?:", 1), _ABBREVIATION,
                lambda m: _ABBREVIATIONS[m.group(1)])
    text = _sub(text, r"\b(?:JOSE|SANTA|MARIA) MA\b", r"\b(JOSE|SANTA|MARIA) MA\b",
                r"\1 MARIA")
    text = _sub(text, r"\bMC\s+[A-Z]", r"\bMC\s+([A-Z])", r"MC\1")
    text = _sub(text, r"^(?:HEROICA|HCA|H)\s+\S", r"^(HEROICA|HCA|H)\s+(\S)", r"\2")
    text = _sub(text, r"\s\s|^\s|\s$", r"\s+", " ").str.strip()
    aliases = text.map(PLACE_ALIASES)
    return aliases.fillna(text).astype("string")


def normalise_country(values: pd.Series) -> pd.Series:
    """``"México"``, ``"MEX"``, ``"USA"`` … → ``"MX"``/``"US"``; others NA; empty → NA."""
    key = _tokens(values)
    return key.map(_COUNTRIES).astype("string")


def parse_places(queries: pd.Series) -> pd.DataFrame:
    """Split place strings into match key, candidate states and ZIP, vectorised.

    Returns a frame aligned with ``queries``: ``place_key`` (expanded match key of the place
    part, may be empty for a bare state), ``states`` (ISO codes ``|``-joined, NA when none
    found), ``zip`` (5-digit US ZIP or NA), ``whole_key`` (the whole string as a place, for
    strings where a trailing state was split off without a comma, e.g. "SAN LUIS RIO
    COLORADO" must not become "San Luis Rio" in Colorado) and ``state_only`` (bool).
    """
    raw = queries.astype("string").fillna("")
    text = _fold_series(raw).str.replace(r"['’`]", "", regex=True)
    text = text.str.replace(r"[\s.,;:]+$", "", regex=True)  # "… TX 78701." → "… TX 78701"
    zip_code = text.str.extract(r"(?<!\d)(\d{5})(?:\s*-\s*\d{4})?\s*$", expand=False)
    text = text.str.replace(r"(?<!\d)\d{5}(?:\s*-\s*\d{4})?\s*$", "", regex=True)
    text = text.str.replace(r"\b(C\s*P|CP|ZIP)\.?\s*$", "", regex=True).str.strip(" ,;")
    has_comma = text.str.contains(",", regex=False)
    head = text.str.replace(r"\s*,.*$", "", regex=True)
    tail = text.str.replace(r"^.*,\s*", "", regex=True)

    states = pd.Series(pd.NA, index=raw.index, dtype="string")
    place = pd.Series(pd.NA, index=raw.index, dtype="string")
    # Comma form: the last part is the state (its first part the place).
    tail_tok = tail.str.replace(r"[^A-Z0-9]+", " ", regex=True).str.strip()
    tail_state = tail_tok.str.replace(" ", "", regex=False).map(STATE_ALIASES)
    ok = has_comma & tail_state.notna()
    states[ok] = tail_state[ok]
    place[ok] = head[ok]
    # Otherwise: the longest run of trailing tokens that spells a state.
    tokens = text.str.replace(r"[^A-Z0-9]+", " ", regex=True).str.strip()
    split_no_comma = pd.Series(False, index=raw.index)
    n_tokens = tokens.str.count(" ").to_numpy() + 1
    for k in range(_MAX_STATE_TOKENS, 0, -1):
        todo = states.isna() & (n_tokens >= k)  # a state of k tokens needs k tokens
        if not todo.any():
            continue
        pattern = r"^(?P<rest>.*?)\s*(?P<st>(?:\S+\s+){" + str(k - 1) + r"}\S+)$"
        parts = tokens[todo].str.extract(pattern)
        code = parts["st"].str.replace(" ", "", regex=False).map(STATE_ALIASES)
        hit = code.notna()
        idx = hit[hit].index
        states[idx] = code[idx]
        place[idx] = parts.loc[idx, "rest"]
        split_no_comma[idx] = ~has_comma[idx]
    # Comma form whose tail is not a state: keep the first part as the place.
    none = states.isna()
    place[none & has_comma] = head[none & has_comma]
    place[none & ~has_comma] = text[none & ~has_comma]

    place_tokens = place.fillna("").str.replace(r"[^A-Z0-9]+", " ", regex=True).str.strip()
    place_key = _expand(place_tokens)
    whole = split_no_comma & (place_key != "")  # only these are tried as a whole
    whole_key = pd.Series(pd.NA, index=raw.index, dtype="string")
    if whole.any():
        whole_key[whole] = _expand(tokens[whole])
    state_only = states.notna() & (place_key == "")
    # "CIUDAD DE MEXICO" alone is a state that is also a city: place it as the city.
    cmx = state_only & (states == "MX-CMX")
    place_key[cmx] = "CIUDAD DE MEXICO"
    state_only = state_only & ~cmx
    return pd.DataFrame(
        {
            "query": raw,
            "place_key": place_key,
            "states": states,
            "zip": zip_code.astype("string"),
            "whole_key": whole_key.astype("string"),
            "state_only": state_only.astype(bool),
        },
        index=queries.index,
    )
