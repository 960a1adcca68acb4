"""Stable pseudonyms for purchaser and possessor names.

A name becomes ``P-`` + the first 6 hex digits of HMAC-SHA256(key, normalised name). The name is
normalised first (accents removed, case folded, punctuation and runs of spaces collapsed), so
``"Rogelio  BARAJAS"`` and ``"rogelio barajas"`` get the same id, on every run and machine that
uses the same key. Pass your own ``key`` to make ids unlinkable to other people's outputs.
"""

from __future__ import annotations

import hmac

import pandas as pd

__all__ = ["DEFAULT_KEY", "normalise_names", "pseudonym", "pseudonymise"]

#: Project-wide default key: ids are stable across runs, not secret against a dictionary attack.
DEFAULT_KEY = b"geoflow-pseudonym-v1"


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


def pseudonym(names: pd.Series, *, key: bytes | str | None = None) -> pd.Series:
    """Return the ``P-xxxxxx`` id of each name; NA (or a blank name) stays NA.

    Each distinct name is hashed once, so the cost grows with distinct names, not rows.

    >>> pseudonym(pd.Series(["Rogelio Barajas", "ROGELIO  BARAJAS", None])).nunique()
    1
    """
    raw_key = key.encode("utf-8") if isinstance(key, str) else (key or DEFAULT_KEY)
    codes, uniques = pd.factorize(names.astype("string"), use_na_sentinel=True)
    normal = normalise_names(pd.Series(uniques, dtype="string"))  # distinct raw names only
    digest = hmac.digest
    digests = [
        None if name is None else "P-" + digest(raw_key, name.encode("utf-8"), "sha256").hex()[:6]
        for name in normal.to_numpy(dtype=object, na_value=None).tolist()
    ]
    ids = pd.array([*digests, pd.NA], dtype="string")  # code -1 (NA) takes the trailing NA
    return pd.Series(ids[codes], index=names.index, dtype="string", name=names.name)


def pseudonymise(
    records: pd.DataFrame, *, key: bytes | str | None = None
) -> pd.DataFrame:
    """Return ``records`` with ``purchaser_id`` and ``possessor_id`` added (names kept)."""
    out = records.copy(deep=False)  # copy-on-write: the caller's frame is never changed
    for role in ("purchaser", "possessor"):
        column = f"{role}_name"
        source = out[column] if column in out else pd.Series(pd.NA, index=out.index)
        out[f"{role}_id"] = pseudonym(source, key=key)
    return out
