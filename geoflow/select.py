"""Filters between ``prepare_records`` and ``analyse``, and the entity lists batches run over.

Prepared records (docs/internals.md, "Pipeline API") are read and geocoded once; these pure
functions pick the rows a user asked for (``--state``, ``--mx-state``, ``--trafficker``,
``--dealer``, ``--from``/``--to``) and describe the choice in one line for the map title and
the manifest. Work is done over *distinct* values (states, names, dealers), never per record.

Rules (documented in the README "Command tour"):

- US states match the dealer's state, Mexican states the recovery state, both as ISO 3166-2
  codes from the geocoder (``dealer_admin1``/``recovery_admin1``; when the geocoder could not
  place a record its raw state text is resolved instead). A state is given as a postal or ISO
  code (``TX``, ``US-TX``, ``TAM``, ``MX-TAM``), a name (``Texas``, ``Nuevo León``) or an
  abbreviation (``Tamps.``, ``N.L.``, ``Edo. Mex.``), accent-, case- and punctuation-blind.
- Traffickers (first retail purchasers) match the real name accent- and case-insensitively,
  or the pseudonym (``P-3f9a1c``); a part of a name (``barajas``) works when it names exactly
  one purchaser. Dealers match the FFL number, the name, or a part of the name naming one
  dealer.
- ``--from``/``--to`` bound the *recovery* date, inclusive; ``2008`` and ``2008-09`` mean the
  whole year or month. Records without a recovery date are left out when a bound is given.
- Something the data cannot contain (a state that does not exist, a purchaser or dealer not in
  the data) raises :class:`~geoflow.errors.FilterError`; so does a filter that leaves no
  records (a real state with no guns in the data), with "no records match" in the message.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from functools import lru_cache

import numpy as np
import pandas as pd

from geoflow.aggregate import distinct_codes, gun_weights, weighted_count
from geoflow.errors import FilterError

__all__ = [
    "ENTITY_KINDS",
    "filter_records",
    "list_entities",
    "entity_keys",
    "resolve_states",
    "parse_date_bound",
    "match_key",
]

#: Batch kinds (``--per``) → the record column that names the entity.
ENTITY_KINDS: dict[str, str] = {
    "state": "dealer_admin1",
    "mx-state": "recovery_admin1",
    "trafficker": "purchaser_id",
    "dealer": "dealer_id",
}

_COUNTRY_NAMES = {"US": "US state", "MX": "Mexican state"}


def match_key(text: object) -> str:
    """Return ``text`` accent-stripped, case-folded, with punctuation runs as single spaces.

    This is the normalisation of :func:`geoflow.privacy.normalise_names`, so a name matches
    exactly the people who share its pseudonym (``"Straße"`` is not ``"Strasse"``).

    >>> match_key("  Rogélio   BARAJAS ")
    'rogelio barajas'
    >>> match_key("Tamps.")
    'tamps'
    """
    plain = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode("ascii")
    return " ".join(re.sub(r"[^0-9a-z]+", " ", plain.casefold()).split())


def _compact(text: object) -> str:
    """``match_key`` without spaces: ``"N. L."`` and ``"NL"`` become the same key."""
    return match_key(text).replace(" ", "")


# --------------------------------------------------------------------------- states


@lru_cache(maxsize=1)
def _shipped_state_aliases() -> tuple[dict[str, str], dict[str, str]]:
    """(compact alias → ISO code, ISO code → display name) from ``shapes/state_names.csv``."""
    from geoflow.shapes import load_state_names

    table = load_state_names()
    aliases: dict[str, str] = {}
    names = dict(zip(table["code"], table["name"], strict=True))
    for column in ("code", "name", "abbreviations", "alternate_names"):
        values = table[["code", column]].dropna()
        for code, cell in zip(values["code"], values[column], strict=True):  # ~83 states
            for alias in str(cell).split("|"):
                if alias.strip():
                    aliases.setdefault(_compact(alias), code)
    return aliases, names


def _data_state_aliases(records: pd.DataFrame, raw_col: str, code_col: str) -> dict[str, str]:
    """Aliases learnt from the data: raw state text → the ISO code the geocoder gave it."""
    if raw_col not in records or code_col not in records:
        return {}
    pairs = records[[raw_col, code_col]].dropna().drop_duplicates()
    if pairs.empty:
        return {}
    pairs = pairs.assign(alias=pairs[raw_col].map(_compact))
    best = pairs.groupby(["alias", code_col]).size().reset_index(name="n")
    best = best.sort_values("n", ascending=False).drop_duplicates("alias")
    return dict(zip(best["alias"], best[code_col], strict=True))


#: The filter that selects by the other country's states (a Mexican state given to
#: ``--state`` is named with it).
_OTHER_SIDE = {"US": ("--mx-state", "recovered"), "MX": ("--state", "sold")}


def resolve_states(
    values: Iterable[str], *, country: str, records: pd.DataFrame | None = None
) -> dict[str, str]:
    """Map each user-given state to its ISO 3166-2 code in ``country`` (``US`` or ``MX``).

    Raises :class:`FilterError` naming the first value that is not a state of that country.

    >>> resolve_states(["tx", "US-AZ"], country="US")
    {'tx': 'US-TX', 'US-AZ': 'US-AZ'}
    """
    shipped, _ = _shipped_state_aliases()
    raw_col, code_col = (
        ("dealer_state", "dealer_admin1") if country == "US" else
        ("recovery_state", "recovery_admin1")
    )
    learnt = _data_state_aliases(records, raw_col, code_col) if records is not None else {}
    prefix = f"{country}-"
    codes = set(shipped.values())
    if records is not None and code_col in records:
        codes.update(str(code) for code in records[code_col].dropna().unique())
    result: dict[str, str] = {}
    for value in values:  # a handful of command-line values
        key = _compact(value)
        upper = str(value).strip().upper()
        candidates = [
            upper if upper in codes else None,
            prefix + upper if prefix + upper in codes else None,
            shipped.get(key),
            learnt.get(key),
        ]
        code = next((c for c in candidates if c and c.startswith(prefix)), None)
        if code is None:
            kind = _COUNTRY_NAMES[country]
            # a state of the other country (a code the data hold may be neither's)
            other = next((c for c in candidates if c and c[:3] in ("US-", "MX-")), None)
            if other is not None:
                flag, verb = _OTHER_SIDE[country]
                raise FilterError(f"{value!r} is a {_COUNTRY_NAMES[other[:2]]} ({other}), not a "
                                  f"{kind}: {flag} {value!r} keeps the guns {verb} there")
            hint = "TX, US-TX or Texas" if country == "US" else "TAM, MX-TAM, Tamaulipas or Tamps."
            raise FilterError(f"unknown {kind} {value!r} (give a code or name such as {hint})")
        result[value] = code
    return result


def _state_codes(records: pd.DataFrame, country: str) -> pd.Series:
    """Per-record ISO code of the dealer (US) or recovery (MX) state; raw text as fallback."""
    raw_col, code_col = (
        ("dealer_state", "dealer_admin1") if country == "US" else
        ("recovery_state", "recovery_admin1")
    )
    codes = (
        records[code_col].astype("string") if code_col in records
        else pd.Series(pd.NA, index=records.index, dtype="string")
    )
    if raw_col in records and codes.isna().any():
        raw = records.loc[codes.isna(), raw_col].dropna().astype("string")
        if not raw.empty:
            shipped, _ = _shipped_state_aliases()
            learnt = _data_state_aliases(records, raw_col, code_col)
            distinct = pd.Series(raw.unique())
            lookup = {
                value: learnt.get(_compact(value)) or shipped.get(_compact(value))
                for value in distinct  # distinct raw state strings only
            }
            resolved = raw.map(lookup).astype("string")
            resolved = resolved.where(resolved.str.startswith(f"{country}-").fillna(False))
            codes = codes.fillna(resolved)
    return codes


def _state_name(code: str) -> str:
    return _shipped_state_aliases()[1].get(code, code)


# --------------------------------------------------------------------------- people, dealers


def _match_names(
    wanted: Sequence[str], names: pd.Series, ids: pd.Series, *, what: str
) -> dict[str, set[str]]:
    """Map each wanted name or id to the set of ids it selects.

    Vectorised over the distinct names and the distinct ids (each normalised once; no table
    of every record's (name, id) pair to deduplicate: one trafficker of 1M records,
    ``filter_records`` 0.61 -> 0.3 s): exact normalised name or id first, then names
    containing every word of the value (accepted only when they name one entity).
    """
    from geoflow.privacy import normalise_names

    name_codes, distinct_names = distinct_codes(names)
    id_codes, distinct_ids = distinct_codes(ids)
    key = " " + normalise_names(pd.Series(distinct_names, dtype="string")).fillna("") + " "
    id_key = _casefolded(pd.Series(distinct_ids, dtype="string"))
    named = id_codes >= 0  # a record without an id selects nothing
    held = np.zeros(len(distinct_ids), dtype=bool)  # ids some record holds
    held[id_codes[named]] = True

    def ids_named(hit_names: pd.Series) -> set[str]:
        """The ids of the records whose name is one of ``hit_names`` (over distinct names)."""
        hit = np.append(hit_names.fillna(False).to_numpy(dtype=bool), False)  # −1: NA
        rows = named & hit[name_codes]
        return {str(i) for i in distinct_ids.take(np.unique(id_codes[rows]))}

    def ids_where(hit_ids: pd.Series) -> set[str]:
        """The ids among ``hit_ids`` (over distinct ids) that some record holds."""
        return {str(i) for i in distinct_ids[hit_ids.fillna(False).to_numpy(dtype=bool)
                                             & held]}

    result: dict[str, set[str]] = {}
    for value in wanted:  # a handful of command-line values
        words = match_key(value)
        hits = ids_where(id_key == str(value).strip().casefold()) | ids_named(
            key == f" {words} ")
        if not hits and words:
            every = pd.Series(True, index=key.index)
            for word in words.split():  # the words of one value
                every &= key.str.contains(f" {word} ", regex=False).fillna(False)
            hits = ids_named(every)
            if len(hits) > 1:
                raise FilterError(
                    f"{what} {value!r} is ambiguous: it matches {len(hits)} {what}s; "
                    "give the full name or the id"
                )
        if not hits and re.fullmatch(r"p-[0-9a-f]{6,}", str(value).strip().casefold()):
            # a pseudonym lengthened here because two names of this data share its digits
            longer = sorted(ids_where(id_key.str.startswith(str(value).strip().casefold())))
            if longer:
                raise FilterError(
                    f"{what} {value!r} is ambiguous in this data: {len(longer)} {what}s share "
                    f"its digits and have longer ids ({', '.join(longer[:5])}); give one of "
                    "those or the name")
        if not hits:
            raise FilterError(f"no {what} {value!r} in the data ({_hint(what)})")
        result[value] = hits
    return result


def _casefolded(text: pd.Series) -> pd.Series:
    """``text.str.casefold()``: ASCII values lower-cased in Arrow (the same for them), only
    the others by Python's casefold (750,000 ids: 0.1 s -> 0.02 s)."""
    folded = text.str.lower()
    other = ~text.str.isascii().fillna(True).to_numpy(dtype=bool)
    if other.any():
        folded[other] = text[other].str.casefold()
    return folded


def _hint(what: str) -> str:
    if what == "purchaser":
        return (
            "names match accent- and case-insensitively, pseudonyms look like P-3f9a1c; "
            "`geoflow summary INPUT --by trafficker` lists them"
        )
    return "give the FFL number or the name; `geoflow summary INPUT --by dealer` lists them"


def _ffl_key(values: pd.Series) -> pd.Series:
    return values.astype("string").str.replace(r"[^0-9A-Za-z]", "", regex=True).str.upper()


# --------------------------------------------------------------------------- dates


def parse_date_bound(value: str | date | None, *, end: bool = False) -> pd.Timestamp | None:
    """Parse ``2008``, ``2008-09`` or ``2008-09-14`` (or a date) into an inclusive bound.

    With ``end=True`` a year or month means its last day.

    >>> parse_date_bound("2008", end=True)
    Timestamp('2008-12-31 00:00:00')
    """
    if value is None or value == "":
        return None
    if isinstance(value, datetime | date):
        return pd.Timestamp(value).normalize()
    text = str(value).strip()
    patterns = {r"\d{4}": ("%Y", "YE"), r"\d{4}-\d{1,2}": ("%Y-%m", "ME"),
                r"\d{4}-\d{1,2}-\d{1,2}": ("%Y-%m-%d", None)}
    for pattern, (fmt, period_end) in patterns.items():
        if re.fullmatch(pattern, text):
            try:
                stamp = pd.Timestamp(datetime.strptime(text, fmt))
            except ValueError:
                break
            if end and period_end:
                stamp = stamp + pd.tseries.frequencies.to_offset(period_end)
            return stamp
    raise FilterError(f"cannot read date {text!r}: use YYYY, YYYY-MM or YYYY-MM-DD")


# --------------------------------------------------------------------------- the filter


def _as_tuple(values: str | Iterable[str] | None) -> tuple[str, ...]:
    if values is None:
        return ()
    if isinstance(values, str):
        return (values,)
    return tuple(v for v in values if str(v).strip())


def _join(label: str, items: list[str]) -> str:
    plural = label if len(items) == 1 else f"{label}s"
    return f"{plural}: {', '.join(items)}"


def date_range(date_from: str | date | None, date_to: str | date | None
               ) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
    """``--from`` and ``--to`` as the first and last instants they allow (None: open);
    :class:`FilterError` when a bound is no date or the range is empty."""
    start, end = parse_date_bound(date_from), parse_date_bound(date_to, end=True)
    if start is not None and end is not None and start > end:
        raise FilterError(f"--from {date_from} is after --to {date_to}")
    return start, end


def filter_records(
    records: pd.DataFrame,
    *,
    us_states: Iterable[str] = (),
    mx_states: Iterable[str] = (),
    traffickers: Iterable[str] = (),
    dealers: Iterable[str] = (),
    date_from: str | date | None = None,
    date_to: str | date | None = None,
    show_names: bool = False,
) -> tuple[pd.DataFrame, str]:
    """Return the records matching every given filter, and a one-line description.

    Values within one filter are alternatives (``--state TX --state AZ``: either state);
    different filters must all hold. With no filter the records come back unchanged with an
    empty description. Trafficker names appear in the description only with ``show_names``;
    otherwise their pseudonyms do.

    Raises :class:`FilterError` for a value the data cannot match and when nothing is left.
    """
    us_states, mx_states = _as_tuple(us_states), _as_tuple(mx_states)
    traffickers, dealers = _as_tuple(traffickers), _as_tuple(dealers)
    start, end = date_range(date_from, date_to)

    mask = pd.Series(True, index=records.index)
    parts: list[str] = []
    checks: list[tuple[str, pd.Series]] = []  # (description, mask) of each filter alone

    for country, values in (("US", us_states), ("MX", mx_states)):
        if values:
            codes = sorted(set(resolve_states(values, country=country, records=records).values()))
            hit = _state_codes(records, country).isin(codes).fillna(False).astype(bool)
            part = _join(_COUNTRY_NAMES[country], [f"{_state_name(c)} ({c})" for c in codes])
            parts.append(part)
            checks.append((part, hit))

    if traffickers:
        _require(records, "purchaser_id", "--trafficker")
        names = records["purchaser_name"] if "purchaser_name" in records else records[
            "purchaser_id"]
        found = _match_names(traffickers, names, records["purchaser_id"], what="purchaser")
        ids = sorted(set().union(*found.values()))
        hit = records["purchaser_id"].isin(ids).fillna(False).astype(bool)
        if show_names:
            spelled = records.loc[hit, "purchaser_name"].dropna().drop_duplicates()
            spelled = spelled[~spelled.map(match_key).duplicated()]
            shown = sorted(spelled.map(_title_name)) or ids
        else:
            shown = ids
        part = _join("purchaser", shown)
        parts.append(part)
        checks.append((part, hit))

    if dealers:
        _require(records, "dealer_id", "--dealer")
        hit = pd.Series(False, index=records.index)
        ffl = _ffl_key(records["dealer_ffl"]) if "dealer_ffl" in records else None
        by_name: list[str] = []
        for value in dealers:  # a handful of command-line values
            key = _ffl_key(pd.Series([value])).iloc[0]
            by_ffl = (ffl == key).fillna(False) if ffl is not None and key else None
            if by_ffl is not None and bool(by_ffl.any()):
                hit |= by_ffl.astype(bool)
            else:
                by_name.append(value)
        if by_name:
            found = _match_names(by_name, records["dealer_name"], records["dealer_id"],
                                 what="dealer")
            hit |= records["dealer_id"].isin(set().union(*found.values())).fillna(False)
        hit = hit.astype(bool)
        shown = _dealer_labels(records.loc[hit])
        part = _join("dealer", shown)
        parts.append(part)
        checks.append((part, hit))

    if start is not None or end is not None:
        when = records["recovery_date"]
        hit = when.notna()
        if start is not None:
            hit &= when >= start
        if end is not None:
            hit &= when < end + pd.Timedelta(days=1)
        hit = hit.fillna(False).astype(bool)
        part = "recovered " + _date_range(start, end)
        parts.append(part)
        checks.append((part, hit))

    if not checks:
        return records, ""
    for part, hit in checks:
        mask &= hit
        if not bool(hit.any()):
            raise FilterError(f"no records match {part}")
    description = "; ".join(parts)
    if not bool(mask.any()):
        raise FilterError(f"no records match all filters together ({description})")
    return records.loc[mask], description


def _require(records: pd.DataFrame, column: str, option: str) -> None:
    if column not in records:
        raise FilterError(f"{option} needs the {column!r} column of prepared records")


def _title_name(name: str) -> str:
    return " ".join(str(name).split())


def _dealer_labels(records: pd.DataFrame) -> list[str]:
    """Distinct ``name (FFL)`` labels of the dealers in ``records``."""
    cols = [c for c in ("dealer_name", "dealer_ffl") if c in records]
    distinct = records[cols].drop_duplicates()
    labels = []
    for row in distinct.itertuples(index=False):  # distinct dealers (a filter's handful)
        name = row.dealer_name if pd.notna(row.dealer_name) else "unnamed dealer"
        ffl = getattr(row, "dealer_ffl", pd.NA)
        labels.append(f"{name} (FFL {ffl})" if pd.notna(ffl) else str(name))
    return sorted(labels)


def _date_range(start: pd.Timestamp | None, end: pd.Timestamp | None) -> str:
    if start is not None and end is not None:
        return f"{start:%Y-%m-%d} to {end:%Y-%m-%d}"
    if start is not None:
        return f"from {start:%Y-%m-%d}"
    return f"until {end:%Y-%m-%d}"


# --------------------------------------------------------------------------- entities


def entity_keys(records: pd.DataFrame, kind: str) -> pd.Series:
    """The entity each record belongs to for a ``--per kind`` batch (NA when it has none)."""
    if kind not in ENTITY_KINDS:
        raise FilterError(f"unknown batch kind {kind!r}; use one of {', '.join(ENTITY_KINDS)}")
    if kind == "state":
        return _state_codes(records, "US")
    if kind == "mx-state":
        return _state_codes(records, "MX")
    column = ENTITY_KINDS[kind]
    _require(records, column, f"--per {kind}")
    return records[column].astype("string")


def list_entities(
    records: pd.DataFrame, kind: str, *, min_guns: int = 1, show_names: bool = False,
    keys: pd.Series | None = None,
) -> pd.DataFrame:
    """One row per entity of ``kind`` with at least ``min_guns`` guns, most guns first.

    Columns: ``key`` (value of :func:`entity_keys`), ``name`` (to name its folder after:
    state name, dealer name and place, or the purchaser's pseudonym unless ``show_names``),
    ``label`` (to show: the name, with the ISO code for states), ``guns`` (the guns of its
    records: a trace record is one, a count table's row its count). Ties are broken by label
    so the order is stable. ``keys``: the records' :func:`entity_keys`, when the caller has
    them.
    """
    keys = entity_keys(records, kind) if keys is None else keys
    codes, distinct = distinct_codes(keys)
    counts = pd.Series(weighted_count(codes, gun_weights(records), len(distinct)),
                       index=distinct)
    counts = counts[counts >= max(int(min_guns), 1)]
    table = pd.DataFrame({"key": counts.index.astype(str), "guns": counts.to_numpy()})
    table["name"] = _labels(records, keys, table["key"], kind, show_names=show_names)
    table["label"] = table["name"]
    if kind in ("state", "mx-state"):
        table["label"] = [name if name == key else f"{name} ({key})"
                          for key, name in zip(table["key"], table["name"], strict=True)]
    table = table.sort_values(["guns", "label"], ascending=[False, True], kind="stable")
    return table[["key", "name", "label", "guns"]].reset_index(drop=True)


def _labels(
    records: pd.DataFrame, keys: pd.Series, wanted: pd.Series, kind: str, *, show_names: bool
) -> list[str]:
    if kind in ("state", "mx-state"):
        return [_state_name(code) for code in wanted]
    if kind == "trafficker" and not show_names:
        return list(wanted)
    name_col = "purchaser_name" if kind == "trafficker" else "dealer_name"
    frame = pd.DataFrame({"key": keys, "name": records.get(name_col)}).dropna(subset=["key"])
    if kind == "dealer":
        place = records.get("dealer_place", records.get("dealer_city"))
        # the geocoder names ZIP matches "ZIP 60118 (East Dundee, IL)": keep the town
        frame["place"] = None if place is None else place.astype("string").str.replace(
            r"^ZIP \d{5} \((.*)\)$", r"\1", regex=True)
    first = frame.dropna(subset=["name"]).drop_duplicates("key").set_index("key")
    labels = []
    for key in wanted:  # distinct entities
        if key not in first.index:
            labels.append(str(key))
            continue
        label = _title_name(first.at[key, "name"])
        if kind == "dealer" and pd.notna(first.at[key, "place"]):
            label = f"{label} ({first.at[key, 'place']})"
        labels.append(label)
    return labels
