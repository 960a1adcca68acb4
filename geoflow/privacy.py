"""Stable pseudonyms for purchaser and possessor names, unique within a data set.

A name becomes ``P-`` + the first 6 hex digits of HMAC-SHA256(key, normalised name). The name is
normalised first (accents removed, case folded, punctuation and runs of spaces collapsed), so
``"Rogelio  BARAJAS"`` and ``"rogelio barajas"`` get the same id, on every run and machine that
uses the same key. Pass your own ``key`` to make ids unlinkable to other people's outputs.

Six hex digits are 16.7 million ids: with 600,000 distinct names about 10,000 pairs of people
would share one. So ids are made unique among the distinct normalised names of the data: names
whose 6-digit ids collide get 8 digits (``P-3f9a1c07``), those still colliding 10, and so on.
A name therefore keeps its ``P-xxxxxx`` id from one data set to the next unless another name in
the same data collides with it; no id is ever a prefix of another id of the same data.
"""

from __future__ import annotations

import hmac

import numpy as np
import pandas as pd

__all__ = ["DEFAULT_KEY", "ID_DIGITS", "normalise_names", "pseudonym", "pseudonymise"]

#: Project-wide default key: ids are stable across runs, not secret against a dictionary attack.
DEFAULT_KEY = b"geoflow-pseudonym-v1"
#: Hex digits of an id that collides with no other name of the data.
ID_DIGITS = 6


def normalise_names(names: pd.Series) -> pd.Series:
    """Accent-, case- and spacing-insensitive form of each name (NA stays NA).

    >>> normalise_names(pd.Series(["  José  DE LA-Rosa "])).tolist()
    ['jose de la rosa']
    """
    text = names.astype("string")
    text = text.str.normalize("NFKD").str.encode("ascii", errors="ignore").str.decode("ascii")
    text = text.astype("string").str.casefold()
    text = text.str.replace(r"[^0-9a-z]+", " ", regex=True).str.strip()
    return text.mask(text == "")


def _unique_ids(normal: pd.Series, key: bytes | str | None) -> pd.Series:
    """Id of each *distinct* normalised name (no NA, no repeats): 6 hex digits, 2 more at a
    time for names whose ids still collide."""
    raw_key = key.encode("utf-8") if isinstance(key, str) else (key or DEFAULT_KEY)
    digest = hmac.digest
    hexes = pd.Series(
        [digest(raw_key, name.encode("utf-8"), "sha256").hex() for name in normal.tolist()],
        index=normal.index, dtype="string",
    )  # one HMAC per distinct name: the only per-item Python work
    digits = np.full(len(hexes), ID_DIGITS, dtype=np.int64)
    clashing = np.arange(len(hexes))
    width = ID_DIGITS
    while len(clashing) and width < 64:  # each round keeps only the names still colliding
        prefix = hexes.iloc[clashing].str.slice(0, width)
        clashing = clashing[prefix.duplicated(keep=False).to_numpy()]
        width += 2
        digits[clashing] = width
    ids = "P-" + hexes.str.slice(0, ID_DIGITS)
    longer = np.flatnonzero(digits > ID_DIGITS)
    for width in np.unique(digits[longer]):  # a few distinct widths (8, rarely 10)
        at = longer[digits[longer] == width]
        ids.iloc[at] = "P-" + hexes.iloc[at].str.slice(0, int(width))
    return ids


def _id_lookup(distinct_raw: pd.Series, key: bytes | str | None) -> pd.Series:
    """Id of each distinct raw name (NA for NA or a blank name), same index."""
    normal = normalise_names(distinct_raw)
    codes, uniques = pd.factorize(normal, use_na_sentinel=True)  # distinct normalised names
    ids = _unique_ids(pd.Series(uniques, dtype="string"), key).array
    taken = ids.take(codes, allow_fill=True)  # code -1 (NA) becomes NA
    return pd.Series(taken, index=distinct_raw.index, dtype="string")


def pseudonym(names: pd.Series, *, key: bytes | str | None = None) -> pd.Series:
    """Return the id (``P-xxxxxx``, longer when needed) of each name; NA or blank stays NA.

    Ids are unique among the distinct normalised names of ``names``; each distinct name is
    hashed once, so the cost grows with distinct names, not rows.

    >>> pseudonym(pd.Series(["Rogelio Barajas", "ROGELIO  BARAJAS", None])).nunique()
    1
    """
    codes, uniques = pd.factorize(names.astype("string"), use_na_sentinel=True)
    ids = _id_lookup(pd.Series(uniques, dtype="string"), key).array
    return pd.Series(ids.take(codes, allow_fill=True), index=names.index, dtype="string",
                     name=names.name)


def pseudonymise(
    records: pd.DataFrame, *, key: bytes | str | None = None
) -> pd.DataFrame:
    """Return ``records`` with ``purchaser_id`` and ``possessor_id`` added (names kept).

    Both columns share one id space: a person has the same id as purchaser and possessor,
    and no two distinct names of the data share an id in either column.
    """
    out = records.copy(deep=False)  # copy-on-write: the caller's frame is never changed
    factorized = {}
    for role in ("purchaser", "possessor"):
        column = f"{role}_name"
        source = out[column] if column in out else pd.Series(pd.NA, index=out.index)
        factorized[role] = pd.factorize(source.astype("string"), use_na_sentinel=True)
    # the distinct names of both columns together (a name in both is normalised and hashed
    # once, after normalisation), then split back by position
    uniques = pd.concat([pd.Series(u, dtype="string") for _, u in factorized.values()],
                        ignore_index=True)
    ids = _id_lookup(uniques, key).array
    start = 0
    for role, (codes, distinct) in factorized.items():
        own = ids[start:start + len(distinct)]
        start += len(distinct)
        out[f"{role}_id"] = pd.Series(own.take(codes, allow_fill=True), index=out.index,
                                      dtype="string")
    return out
