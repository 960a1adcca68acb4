"""Canonical trace-record columns, header aliases (English ATF-style and Spanish) and dtypes.

Headers are matched after :func:`normalise_header`: accents removed, case folded and every run
of punctuation or spaces turned into one underscore, so ``"Fecha de Aseguramiento"``,
``"FECHA_DE_ASEGURAMIENTO"`` and ``"fecha de aseguramiento"`` all map to ``recovery_date``.
"""

from __future__ import annotations

import difflib
import re
import unicodedata

from geoflow.errors import SchemaError

__all__ = [
    "CANONICAL_COLUMNS",
    "COUNT_COLUMN",
    "YEAR_COLUMN",
    "COUNT_TABLE_COLUMNS",
    "DATE_COLUMNS",
    "COORDINATE_COLUMNS",
    "TEXT_COLUMNS",
    "ALIASES",
    "FLAG_COLUMNS",
    "DERIVED_COLUMNS",
    "USABLE_COLUMNS",
    "HEADER_EXAMPLES",
    "normalise_header",
    "strip_accents",
    "validate_column_map",
    "map_headers",
    "DATASET_COLUMN",
    "DATASET_ALIASES",
    "SYNTHETIC_LABEL",
    "marks_synthetic",
]

#: The canonical record (DESIGN.md, contract), in output order.
CANONICAL_COLUMNS: tuple[str, ...] = (
    "trace_id",
    "serial_number",
    "manufacturer",
    "model",
    "caliber",
    "weapon_type",
    "purchaser_name",
    "purchase_date",
    "dealer_name",
    "dealer_ffl",
    "dealer_address",
    "dealer_city",
    "dealer_state",
    "dealer_zip",
    "recovery_date",
    "recovery_city",
    "recovery_state",
    "recovery_country",
    "possessor_name",
    "crossing",
    "dealer_lat",
    "dealer_lon",
    "recovery_lat",
    "recovery_lon",
)

#: Count-table columns (published tables: guns by state, year …), mapped like canonical ones
#: but only present when the input has them: ``guns`` makes a row stand for that many guns
#: (non-negative integer), ``recovery_year`` is a bare year of recovery.
COUNT_COLUMN = "guns"
YEAR_COLUMN = "recovery_year"
COUNT_TABLE_COLUMNS: tuple[str, ...] = (COUNT_COLUMN, YEAR_COLUMN)

DATE_COLUMNS: tuple[str, ...] = ("purchase_date", "recovery_date")
COORDINATE_COLUMNS: tuple[str, ...] = ("dealer_lat", "dealer_lon", "recovery_lat", "recovery_lon")
TEXT_COLUMNS: tuple[str, ...] = tuple(
    c for c in CANONICAL_COLUMNS if c not in DATE_COLUMNS + COORDINATE_COLUMNS
)

#: A text column with at most this share of distinct values is kept as a categorical (the
#: reader's key columns, :func:`geoflow.io.read_traces`; ``geoflow.pipeline._compact``).
COMPACT_RATIO = 0.1

#: A row must have at least one of these to be usable (a dealer, a purchaser, recovery
#: information or a serial number); a row with none of them is rejected as "nothing usable".
USABLE_COLUMNS: tuple[str, ...] = (
    "serial_number",
    "purchaser_name",
    "dealer_name",
    "dealer_ffl",
    "dealer_address",
    "dealer_city",
    "dealer_state",
    "dealer_zip",
    "dealer_lat",
    "dealer_lon",
    "recovery_date",
    "recovery_city",
    "recovery_state",
    "recovery_lat",
    "recovery_lon",
)

#: Header spellings quoted in error messages when no trace column is recognised.
HEADER_EXAMPLES: tuple[str, ...] = (
    "Trace Number", "Serial Number", "FFL Name", "FFL City", "FFL State", "Purchaser Name",
    "Purchase Date", "Recovery Date", "Recovery City", "Recovery State",
    "armería", "comprador", "fecha de aseguramiento", "municipio", "estado",
)

#: Boolean quality flags the reader adds (rows are flagged, never dropped, for these).
FLAG_COLUMNS: tuple[str, ...] = (
    "flag_recovery_before_purchase",
    "flag_future_date",
    "flag_duplicate",
)

#: Columns the reader and later stages derive (DESIGN.md). An input column of one of these
#: names is kept as ``<name>_input`` by the reader, never overwritten.
DERIVED_COLUMNS: tuple[str, ...] = (
    "source_line",
    "time_to_crime_days",
    *FLAG_COLUMNS,
    "dealer_geocode_level",
    "dealer_geocode_score",
    "dealer_geocode_query",
    "dealer_admin1",
    "dealer_place",
    "recovery_geocode_level",
    "recovery_geocode_score",
    "recovery_geocode_query",
    "recovery_admin1",
    "recovery_place",
    "purchaser_id",
    "possessor_id",
    "purchaser_label",
    "dealer_id",
    "crossing_code",
    "crossing_name",
    "route_kind",
    "placed",
    "unplaced_reason",
    "record_count",
)


def strip_accents(text: str) -> str:
    """``text`` without combining accents (``"Nuevo León"`` → ``"Nuevo Leon"``)."""
    decomposed = unicodedata.normalize("NFKD", str(text))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def normalise_header(text: str) -> str:
    """Return ``text`` without accents, case-folded, with punctuation and spaces as ``_``.

    >>> normalise_header("  Fecha de Aseguramiento ")
    'fecha_de_aseguramiento'
    >>> normalise_header("FFL Zip/Postal")
    'ffl_zip_postal'
    """
    return re.sub(r"[^0-9a-z]+", "_", strip_accents(text).casefold()).strip("_")


_RAW_ALIASES: dict[str, tuple[str, ...]] = {
    "trace_id": (
        "trace number", "trace no", "trace #", "trace id", "trace", "ntc trace number",
        "numero de rastreo", "no de rastreo", "folio", "folio de rastreo", "id rastreo",
    ),
    "serial_number": (
        "serial number", "serial", "serial no", "serial #", "firearm serial",
        "numero de serie", "no de serie", "serie", "matricula",
    ),
    "manufacturer": (
        "manufacturer", "make", "mfr", "firearm manufacturer", "brand",
        "fabricante", "marca",
    ),
    "model": ("model", "firearm model", "modelo"),
    "caliber": ("caliber", "calibre", "cal", "gauge", "caliber gauge"),
    "weapon_type": (
        "weapon type", "firearm type", "type", "gun type", "type of weapon",
        "tipo", "tipo de arma", "tipo arma", "clase de arma",
    ),
    "purchaser_name": (
        "purchaser name", "purchaser", "buyer", "buyer name", "first purchaser",
        "retail purchaser", "purchaser full name",
        "comprador", "nombre del comprador", "nombre comprador", "adquirente",
    ),
    "purchase_date": (
        "purchase date", "date of purchase", "sale date", "date purchased", "purchased",
        "fecha de compra", "fecha compra", "fecha de venta",
    ),
    "dealer_name": (
        "ffl name", "dealer", "dealer name", "ffl", "licensee", "licensee name",
        "store", "gun store", "retailer", "seller",
        "armeria", "nombre de la armeria", "tienda", "vendedor", "distribuidor",
    ),
    "dealer_ffl": (
        "ffl number", "ffl no", "ffl #", "ffl license", "license number", "ffl license number",
        "dealer ffl", "licencia ffl", "numero ffl", "licencia",
    ),
    "dealer_address": (
        "ffl address", "ffl street", "dealer address", "store address",
        "direccion armeria", "domicilio armeria", "direccion de la armeria",
    ),
    "dealer_city": (
        "ffl city", "dealer city", "store city", "purchase city", "city of purchase",
        "ciudad armeria", "ciudad de la armeria", "ciudad de compra",
    ),
    "dealer_state": (
        "ffl state", "dealer state", "store state", "purchase state", "state of purchase",
        "estado armeria", "estado de la armeria", "estado de compra",
        # count tables: the US side is often just a state
        "source state", "state", "us state", "u s state", "state of origin", "origin state",
        "estado de origen", "estado origen",
    ),
    "dealer_zip": (
        "ffl zip", "ffl zip code", "ffl zipcode", "dealer zip", "zip", "zip code", "zipcode",
        "ffl postal code", "codigo postal armeria", "cp armeria",
    ),
    "recovery_date": (
        "recovery date", "date recovered", "date of recovery", "recovered", "recovered date",
        "fecha de aseguramiento", "fecha aseguramiento", "fecha de recuperacion",
        "fecha de decomiso",
    ),
    "recovery_city": (
        "recovery city", "city recovered", "recovery location", "recovery municipality",
        "municipio", "municipio de aseguramiento", "ciudad", "ciudad de aseguramiento",
        "localidad", "lugar de aseguramiento",
    ),
    "recovery_state": (
        "recovery state", "state recovered", "recovery province",
        "estado", "entidad", "entidad federativa", "estado de aseguramiento",
        "mexican state", "mexico state", "mx state", "estado mexicano", "estado de recuperacion",
    ),
    "recovery_country": (
        "recovery country", "country recovered", "country", "pais", "pais de aseguramiento",
    ),
    "possessor_name": (
        "possessor name", "possessor", "possessor full name",
        "poseedor", "nombre del poseedor", "portador", "detenido",
    ),
    "crossing": (
        "crossing", "port of entry", "border crossing", "poe", "crossing point", "port",
        "cruce", "cruce fronterizo", "puerto de entrada", "garita", "aduana",
        "aduana de cruce", "aduana de entrada", "punto de cruce", "puerto fronterizo",
        "punto de internacion",
    ),
    "dealer_lat": ("dealer lat", "dealer latitude", "ffl lat", "ffl latitude"),
    "dealer_lon": (
        "dealer lon", "dealer lng", "dealer long", "dealer longitude", "ffl lon", "ffl longitude",
    ),
    "recovery_lat": (
        "recovery lat", "recovery latitude", "latitud", "latitud aseguramiento",
    ),
    "recovery_lon": (
        "recovery lon", "recovery lng", "recovery long", "recovery longitude",
        "longitud", "longitud aseguramiento",
    ),
    COUNT_COLUMN: (
        "guns", "firearms", "count", "total", "n", "firearms traced", "number of firearms",
        "cantidad", "armas", "numero de armas", "number of guns", "guns recovered",
        "firearms recovered", "total firearms",
    ),
    YEAR_COLUMN: (
        "year", "ano", "recovery year", "year recovered", "calendar year",
        "ano de aseguramiento", "ano de recuperacion",
    ),
}

#: The column that says where records come from (the sample writes ``Dataset``), and the
#: headers that mean it. Not a canonical trace column: it only decides whether the input is
#: synthetic (:func:`marks_synthetic`).
DATASET_COLUMN = "dataset"
#: What every output of synthetic input says (map banner, findings.md).
SYNTHETIC_LABEL = "SYNTHETIC DATA — not real trace records"
DATASET_ALIASES: dict[str, str] = {
    normalise_header(alias): DATASET_COLUMN
    for alias in ("dataset", "data set", "dataset name", "data source", "source dataset",
                  "provenance", "conjunto de datos", "fuente de datos", "origen de los datos",
                  "base de datos")
}
_SYNTHETIC_RE = re.compile(r"synthetic|sint[eé]tic|simulated|simulad|fabricated|ficticio|"
                           r"made.up|invented|inventad|fake", re.IGNORECASE)


def marks_synthetic(values: object) -> bool:
    """True when any value of a ``dataset`` column marks its record synthetic ("SYNTHETIC
    SAMPLE", "datos sintéticos", "simulated" …). Each distinct value is looked at once.

    >>> marks_synthetic(["ATF trace 2009", "SYNTHETIC SAMPLE"]), marks_synthetic(["ATF"])
    (True, False)
    """
    import pandas as pd

    distinct = pd.Series(values, dtype="object").dropna().astype(str).unique()
    return any(_SYNTHETIC_RE.search(v) for v in distinct)


#: normalised header → canonical column. Canonical names map to themselves.
ALIASES: dict[str, str] = {
    normalise_header(alias): canonical
    for canonical, aliases in _RAW_ALIASES.items()
    for alias in (canonical, *aliases)
}


def validate_column_map(
    mapping: dict[str, str] | None, *, path: str | None = None
) -> dict[str, str]:
    """Return ``mapping`` (input header → canonical column) with canonical names normalised.

    Raises :class:`~geoflow.errors.SchemaError` naming any target that is not a canonical
    column (with the closest canonical names as a hint).

    >>> validate_column_map({"Vendedor": "Dealer Name"})
    {'Vendedor': 'dealer_name'}
    """
    result: dict[str, str] = {}
    for header, target in (mapping or {}).items():
        canonical = normalise_header(str(target))
        if canonical not in CANONICAL_COLUMNS + COUNT_TABLE_COLUMNS:
            hint = difflib.get_close_matches(canonical, CANONICAL_COLUMNS, n=3)
            did_you_mean = f" (did you mean {', '.join(hint)}?)" if hint else ""
            raise SchemaError(
                f"column map sends {header!r} to {target!r}, which is not a canonical column"
                f"{did_you_mean}; canonical columns are: {', '.join(CANONICAL_COLUMNS)}",
                path=path,
            )
        result[str(header)] = canonical
    return result


def map_headers(
    headers: list[str], user_mapping: dict[str, str] | None = None
) -> dict[str, str]:
    """Map raw headers to canonical names; unknown headers keep their own (normalised) name.

    ``user_mapping`` (raw or normalised header → canonical column) wins over the alias table;
    a target that is not a canonical column raises :class:`~geoflow.errors.SchemaError`.
    The first header that claims a canonical column gets it; a later duplicate keeps its own
    normalised name so nothing is lost.
    """
    user = {normalise_header(k): v for k, v in validate_column_map(user_mapping).items()}
    result: dict[str, str] = {}
    taken: set[str] = set()
    for raw in headers:
        key = normalise_header(raw)
        target = user.get(key) or ALIASES.get(key) or DATASET_ALIASES.get(key)
        if target is None or target in taken:
            target = key or "column"
        while target in taken:  # two headers with the same normalised name
            target = f"{target}_dup"
        taken.add(target)
        result[raw] = target
    return result
