"""Geocoding: offline by default (shipped gazetteer), geopy back-ends when asked.

Every distinct place string is geocoded once. The offline geocoder matches, in order: US ZIP →
exact (place, state) → alternate and historic names → fuzzy within the state (rapidfuzz) →
state centroid (level ``state``). With a state given the answer lies in that state; with
``country`` it lies in that country; a name found in several places without a state is
reported as ambiguous (``note``), never guessed silently.

>>> geocode(["FT WORTH TX", "CD. JUAREZ, CHIH."])[["level", "admin1", "matched_name"]]
... # doctest: +NORMALIZE_WHITESPACE
  level  admin1         matched_name
0  city   US-TX      Fort Worth, TX
1  city  MX-CHH  Ciudad Juárez, Chihuahua
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from rapidfuzz import fuzz, process

from geoflow.aggregate import categorical_take, first_rows, first_seen_codes, stable_order
from geoflow.crossings import haversine_km
from geoflow.errors import GeocodeError, InputError
from geoflow.places import STATE_NAMES, _tokens, normalise_country, parse_places
from geoflow.privacy import arrow_text

__all__ = [
    "RESULT_COLUMNS",
    "REPORT_COLUMNS",
    "Geocoder",
    "Gazetteer",
    "OfflineGeocoder",
    "GeopyGeocoder",
    "GEOPY_SERVICES",
    "load_gazetteer",
    "load_overrides",
    "geocode",
    "geocode_traces",
    "PlaceMemo",
    "entity_reports",
    "report_for",
    "geocode_column",
    "default_cache_path",
]

RESULT_COLUMNS = ("query", "lat", "lon", "level", "score", "matched_name", "form", "candidates",
                  "admin1", "source", "note")
REPORT_COLUMNS = ("role", "query", "level", "score", "matched_name", "form", "candidates",
                  "admin1", "lat", "lon", "source", "note", "records", "first_lines")
#: A ZIP match takes the record's town name when the town lies this close to the ZIP centroid.
ZIP_TOWN_KM = 30.0

LEVELS = ("coordinates", "zip", "city", "municipality", "state", "")

#: Fuzzy matches below this rapidfuzz ``token_sort_ratio`` are not accepted.
FUZZY_CUTOFF = 85.0
#: Without a state, the most populous candidate is taken only when it is this many times
#: larger than the next one (Guadalajara, Jalisco vs a hamlet); otherwise "ambiguous".
DOMINANCE = 5.0
#: Without a state, misspellings are corrected only against towns this big, and only
#: when the rapidfuzz score reaches STATELESS_CUTOFF.
STATELESS_MIN_POPULATION = 10_000
STATELESS_CUTOFF = 88.0
#: Same-named candidates closer than this to the chosen one count as the same place.
SAME_PLACE_KM = 10.0
#: Name forms in the gazetteer's index (``form``; tier 0 = the place's own name, which beats
#: tier 1, bracketed and alternate names of other places).
NAME_FORMS = ("name", "name without brackets", "short name", "bracketed name", "alternate name")
#: Answers scoring at least this are confident: one place matched its own name, an alternate
#: name of exactly one place, a clear typo correction, a ZIP, or given coordinates. State
#: fallbacks, ambiguous names and stateless guesses score below it.
CONFIDENT_SCORE = 80
#: Score of an answer chosen among several different places that match equally well.
AMBIGUOUS_SCORE = 50
#: Fuzzy candidates within this many rapidfuzz points of the best one count as equally good.
FUZZY_MARGIN = 5.0
#: Without a state, bracketed and alternate names rival own names at this share of their
#: population.
ALT_WEIGHT = 0.1
#: At most this many candidates are listed in ``candidates``.
MAX_CANDIDATES = 5


class Geocoder(Protocol):
    """Anything that geocodes a Series of distinct strings into :data:`RESULT_COLUMNS`."""

    def geocode(self, queries: pd.Series, *, country: str | None = None) -> pd.DataFrame:
        """One row per query, same index, columns :data:`RESULT_COLUMNS`."""
        ...


# --------------------------------------------------------------------------- gazetteer


@dataclass(frozen=True)
class Gazetteer:
    """The shipped gazetteer: ``names`` (key → place), ``places``, ``zips``, ``states``."""

    places: pd.DataFrame
    names: pd.DataFrame
    zips: pd.DataFrame
    states: pd.DataFrame


def _display(names: pd.Series, admin1: pd.Series) -> pd.Series:
    """``"Fort Worth, TX"`` for US places, ``"Ciudad Juárez, Chihuahua"`` for Mexican ones."""
    short = admin1.str[3:].where(admin1.str.startswith("US-"), admin1.map(STATE_NAMES))
    return (names + ", " + short).astype("string")


@functools.cache
def load_gazetteer() -> Gazetteer:
    """Read the shipped gazetteer files (``shapes/``) and index them; cached."""
    base = resources.files("geoflow.shapes_data")
    try:
        with resources.as_file(base / "gazetteer_places.parquet") as path:
            places = pd.read_parquet(path)
        with resources.as_file(base / "gazetteer_names.parquet") as path:
            names = pd.read_parquet(path)
        with resources.as_file(base / "us_zips.parquet") as path:
            zips = pd.read_parquet(path)
        with resources.as_file(base / "gazetteer_states.csv") as path:
            states = pd.read_csv(path)
    except (OSError, ValueError, ImportError) as exc:
        raise GeocodeError(f"cannot read the shipped gazetteer: {exc}") from exc
    for frame, decimals in ((places, 5), (zips, 4)):  # stored as float32
        for column in ("lat", "lon"):
            frame[column] = np.round(frame[column].to_numpy(dtype=float), decimals)
    zips["zip"] = zips["zip"].astype("string").str.zfill(5)
    places["display"] = _display(places["name"].astype("string"), places["admin1"])
    places["country"] = places["admin1"].str[:2]
    # the index is prepared by scripts/build_gazetteer.py: own names first, then population
    place = names["place"].to_numpy()
    names["admin1"] = places["admin1"].to_numpy()[place]
    names["country"] = places["country"].to_numpy()[place]
    names["rank"] = places["population"].to_numpy(dtype=float)[place]
    zips = zips.drop_duplicates("zip").set_index("zip")
    states["display"] = states["name"]
    return Gazetteer(places=places, names=names, zips=zips, states=states.set_index("code"))


# --------------------------------------------------------------------------- offline


def _empty_result(queries: pd.Series) -> pd.DataFrame:
    n, index = len(queries), queries.index

    def text(value: str | None) -> pd.Series:
        return pd.Series(value, index=index, dtype="string")

    return pd.DataFrame(
        {
            "query": queries.astype("string"),
            "lat": np.full(n, np.nan),
            "lon": np.full(n, np.nan),
            "level": text(""),
            "score": np.zeros(n, dtype="int64"),
            "matched_name": text(None),
            "form": text(""),
            "candidates": text(""),
            "admin1": text(None),
            "source": text(""),
            "note": text(""),
        },
        index=index,
    )


def _set(result: pd.DataFrame, idx: pd.Index, values: dict[str, Any]) -> None:
    """Assign ``values`` (scalars or Series aligned on ``idx``) to rows ``idx`` (looked up
    once, not once per column)."""
    rows = result.index.get_indexer(idx)
    if (rows < 0).any():  # as .loc would: never a write to the last row (-1)
        raise KeyError(f"{idx[rows < 0][:3].tolist()} not in the result")
    for column, value in values.items():
        if isinstance(value, pd.Series):
            value = value.loc[idx].to_numpy()
        result.iloc[rows, result.columns.get_loc(column)] = value


def _add_note(result: pd.DataFrame, idx: pd.Index, note: pd.Series | str) -> None:
    if len(idx) == 0:
        return
    old = result.loc[idx, "note"]
    new = note.loc[idx] if isinstance(note, pd.Series) else pd.Series(note, index=idx)
    result.loc[idx, "note"] = old.where(old == "", old + "; ").fillna("") + new.astype("string")


class OfflineGeocoder:
    """The default geocoder: the shipped gazetteer, no network.

    Parameters
    ----------
    gazetteer:
        A :class:`Gazetteer`; the shipped one by default.
    fuzzy_cutoff:
        Minimum rapidfuzz score (0–100) for a fuzzy match within the state.
    """

    name = "offline"

    def __init__(self, *, gazetteer: Gazetteer | None = None,
                 fuzzy_cutoff: float = FUZZY_CUTOFF) -> None:
        self.gazetteer = gazetteer or load_gazetteer()
        self.fuzzy_cutoff = fuzzy_cutoff
        self._pools: dict[str, np.ndarray] | None = None
        self._keys: tuple[pd.Index, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._stateless: dict[str | None, list[str]] = {}
        self._place_arrays: dict[str, np.ndarray] = {}

    # The stages below each fill the rows still unmatched (level == "").
    def geocode(self, queries: pd.Series, *, country: str | None = None) -> pd.DataFrame:
        """Geocode distinct strings; one row per query, same index."""
        queries = pd.Series(queries, dtype="string")
        result = _empty_result(queries)
        parsed = parse_places(queries)
        states = self._states_in_country(parsed, result, country)
        self._match_zip(parsed, states, result, country)
        self._name_zip_matches(parsed, states, result, country)
        for variant in ("place_key", "ciudad", "whole_key"):
            self._match_exact(parsed, states, result, country, variant)
        self._match_fuzzy(parsed, states, result)
        self._match_fuzzy_without_state(parsed, states, result, country)
        self._match_state(parsed, states, result)
        blank = result.index[(parsed["place_key"] == "") & parsed["states"].isna()
                             & parsed["zip"].isna()]
        _add_note(result, blank.difference(result.index[result["note"] != ""]), "empty place")
        todo = result.index[(result["level"] == "") & (result["note"] == "")]
        _add_note(result, todo, "not found in the gazetteer")
        return result

    def _states_in_country(self, parsed: pd.DataFrame, result: pd.DataFrame,
                           country: str | None) -> pd.Series:
        """Candidate states (``|``-joined) after the country constraint; notes dropped ones."""
        states = parsed["states"]
        if country is None:
            return states
        exploded = states.str.split("|").explode()
        exploded = exploded.dropna().astype("string")
        kept = exploded[exploded.str.startswith(country + "-").fillna(False).astype(bool)]
        # a place of several candidate states keeps those of the country, joined again (a
        # Python join only for those few places)
        several = kept.index.duplicated(keep=False)
        kept = pd.concat([kept[~several], kept[several].groupby(level=0).agg("|".join)])
        kept = kept.reindex(states.index).astype("string")
        lost = states.notna() & kept.isna()
        noted = lost & parsed["whole_key"].isna()  # else the whole string is tried as a place
        _add_note(result, result.index[noted],
                  "state " + states[noted] + f" is outside country {country}")
        return kept.where(~lost, "")  # "" = a state was given but none fits: match nothing

    def _match_zip(self, parsed: pd.DataFrame, states: pd.Series, result: pd.DataFrame,
                   country: str | None) -> None:
        if country not in (None, "US"):
            return
        zips = self.gazetteer.zips
        has = parsed["zip"].notna() & (states.isna() | states.fillna("").str.contains("US-"))
        found = parsed.loc[has, "zip"].map(zips["admin1"])
        hit = found.notna()
        given = states[hit.index].str.split("|").explode()  # candidate states, one per row
        same = (given == found.reindex(given.index)).fillna(False).astype(bool)
        fits = states[hit.index].isna() | same.groupby(level=0).any().reindex(hit.index,
                                                                               fill_value=False)
        ok = hit & fits
        idx = ok[ok].index
        z = parsed.loc[idx, "zip"]
        _set(result, idx, {
            "lat": z.map(zips["lat"]), "lon": z.map(zips["lon"]), "level": "zip", "score": 100,
            "matched_name": "ZIP " + z + " (" + z.map(zips["city"]) + ", "
            + z.map(zips["admin1"]).str[3:] + ")",
            "admin1": z.map(zips["admin1"]), "source": "offline", "form": "zip",
        })
        us_only = ~states.fillna("").str.contains("MX-")  # else 5 digits may be a código postal
        bad = hit & ~fits & us_only[hit.index]
        _add_note(result, bad[bad].index,
                  "ZIP " + parsed["zip"] + " is in " + found.reindex(parsed.index).fillna("")
                  + ", not the given state")
        unknown = has & ~has.index.isin(hit[hit].index) & us_only
        _add_note(result, unknown[unknown].index, "ZIP " + parsed["zip"] + " unknown")

    def _name_zip_matches(self, parsed: pd.DataFrame, states: pd.Series, result: pd.DataFrame,
                          country: str | None) -> None:
        """Name ZIP matches after the town the record gives ("East Dundee, IL", not "ZIP 60118
        (Dundee, IL)") when that town is in the gazetteer within ZIP_TOWN_KM of the centroid;
        the coordinates stay the ZIP's."""
        rows = result.index[result["level"] == "zip"]
        if rows.empty:
            return
        towns = _empty_result(result.loc[rows, "query"])
        self._match_exact(parsed.loc[rows], states[rows], towns, country, "place_key")
        found = towns.index[towns["level"] != ""]
        km = haversine_km(towns.loc[found, ["lon", "lat"]].to_numpy(),
                          result.loc[found, ["lon", "lat"]].to_numpy())
        near = found[km <= ZIP_TOWN_KM]
        result.loc[near, "matched_name"] = towns.loc[near, "matched_name"]

    def _match_exact(self, parsed: pd.DataFrame, states: pd.Series, result: pd.DataFrame,
                     country: str | None, variant: str) -> None:
        todo = result["level"] == ""
        if variant == "ciudad":
            keys = parsed["place_key"].str.replace(r"^CIUDAD (?:DE )?", "", regex=True)
            keys = keys.where(keys != parsed["place_key"])
            st = states
        elif variant in ("whole_key", "corrected"):
            keys, st = parsed[variant], pd.Series(pd.NA, index=parsed.index, dtype="string")
        else:
            keys, st = parsed["place_key"], states
        todo &= keys.notna() & (keys != "") & (st.fillna("-") != "")
        if not todo.any():
            return
        q = pd.DataFrame({"qid": parsed.index[todo], "key": keys[todo].to_numpy(),
                          "st": st[todo].to_numpy()})
        with_state = q[q["st"].notna()].assign(st=lambda d: d["st"].str.split("|"))
        cand_s = self._candidates(with_state.explode("st"))
        cand_s = cand_s[cand_s["admin1"].to_numpy() == cand_s["st"].to_numpy()]
        cand_n = self._candidates(q[q["st"].isna()])
        if country is not None:
            cand_n = cand_n[cand_n["country"].to_numpy() == country]
        self._pick(cand_s, result, parsed, with_state=True)
        self._pick(cand_n, result, parsed, with_state=False)

    def _place_values(self, column: str) -> np.ndarray:
        """``gazetteer.places[column]`` as a numpy array, made once: turning a text column of
        the 39,000 places into objects took ~2 ms, at every choice of candidates."""
        if column not in self._place_arrays:
            self._place_arrays[column] = self.gazetteer.places[column].to_numpy()
        return self._place_arrays[column]

    def _candidates(self, queries: pd.DataFrame) -> pd.DataFrame:
        """Name-index rows whose key equals each query's ``key``, with the query's other
        columns; in index order (own names first, then by population). A hash lookup into
        the index grouped by key, no merge."""
        if self._keys is None:
            codes, uniques = pd.factorize(self.gazetteer.names["key"])
            counts = np.bincount(codes, minlength=len(uniques))
            self._keys = (pd.Index(uniques), np.argsort(codes, kind="stable"),
                          np.cumsum(counts) - counts, counts)
        index, order, starts, counts = self._keys
        code = index.get_indexer(queries["key"].to_numpy())
        qpos = np.flatnonzero(code >= 0)
        n = counts[code[qpos]]
        offsets = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        rows = order[np.repeat(starts[code[qpos]], n) + offsets]
        cand = self.gazetteer.names.iloc[rows].reset_index(drop=True)
        picked = queries.iloc[np.repeat(qpos, n)].drop(columns="key").reset_index(drop=True)
        return pd.concat([picked, cand], axis=1)

    def _choose(self, cand: pd.DataFrame, *, all_tiers: bool = False) -> pd.DataFrame:
        """The best candidate per query (``qid``) and how clear the choice is.

        Own-name forms beat bracketed and alternate names of other places; then the best
        fuzzy ratio; then population. Candidates within :data:`SAME_PLACE_KM` of the chosen
        one are the same place (GeoNames lists some towns twice). Returns, indexed by
        ``qid``: the chosen row's columns, ``n`` (different places left), ``second`` (the
        next one's population), ``same_name`` (all of them share the chosen key),
        ``candidates`` (when ``n > 1``; with a state, not when far the most populous) and
        ``states_seen`` (without a state). With ``all_tiers`` (no state given) bracketed and
        alternate names of other places stay rivals, at a tenth of their population.
        """
        if "ratio" not in cand:
            cand = cand.assign(ratio=100.0)
        order = ["qid", "tier", "ratio", "rank"]
        if all_tiers:  # other names count, at a tenth of their population
            cand = cand.assign(rank=cand["rank"].where(cand["tier"] == 0,
                                                       cand["rank"] * ALT_WEIGHT))
            order.remove("tier")
        cand = cand.sort_values(order, ascending=[c in ("qid", "tier") for c in order],
                                kind="stable")
        cand = cand.drop_duplicates(["qid", "place"])
        if not all_tiers:
            best_tier = cand.groupby("qid", sort=False)["tier"].transform("min").to_numpy()
            cand = cand[cand["tier"].to_numpy() == best_tier]
        lat_all, lon_all = self._place_values("lat"), self._place_values("lon")
        lat, lon = lat_all[cand["place"]], lon_all[cand["place"]]
        first = cand.groupby("qid", sort=False)["place"].transform("first").to_numpy()
        dist = _haversine_km(lat, lon, lat_all[first], lon_all[first])
        keep = (cand["place"].to_numpy() == first) | (dist > SAME_PLACE_KM)
        cand, lat, lon = cand[keep], lat[keep], lon[keep]
        g = cand.groupby("qid", sort=False)
        best = g.head(1).set_index("qid")
        best["n"] = g.size()
        others = cand["rank"].where(g.cumcount() > 0, 0.0)
        best["second"] = others.groupby(cand["qid"], sort=False).max()
        first_key = g["key"].transform("first")
        best["same_name"] = (cand["key"] == first_key).groupby(cand["qid"], sort=False).all()
        many = cand["qid"].isin(best.index[best["n"] > 1]).to_numpy()
        listed = best["n"] > 1 if all_tiers else (best["n"] > 1) & ~self._dominant(best)
        shown = (cand["qid"].isin(best.index[listed]).to_numpy()
                 & (g.cumcount().to_numpy() < MAX_CANDIDATES))
        p = cand["place"].to_numpy()[shown]
        text = pd.Series(self._place_values("display")[p], dtype=object) + (
            " (" + pd.Series(np.round(lat[shown], 3).astype(str)) + ", "
            + pd.Series(np.round(lon[shown], 3).astype(str)) + ")")
        text = text.groupby(cand["qid"].to_numpy()[shown], sort=False).agg("; ".join)
        more = best["n"] > MAX_CANDIDATES
        best["candidates"] = text.reindex(best.index).fillna("").astype("string")
        best.loc[more, "candidates"] = best.loc[more, "candidates"] + "; …"
        best["states_seen"] = ""
        if all_tiers and many.any():  # only stateless queries name the states
            seen = cand[many].drop_duplicates(["qid", "admin1"])
            states_seen = seen.groupby("qid", sort=False)["admin1"].agg(_state_list)
            best["states_seen"] = states_seen.reindex(best.index).fillna("").astype("string")
        return best

    @staticmethod
    def _dominant(best: pd.DataFrame) -> pd.Series:
        """Several places share the chosen own name and it is far the most populous."""
        return ((best["n"] > 1) & (best["tier"] == 0) & best["same_name"]
                & (best["rank"] > 0) & (best["rank"] >= DOMINANCE * best["second"]))

    def _answer(self, best: pd.DataFrame) -> pd.DataFrame:
        """Result columns for chosen candidates (``best`` from :meth:`_choose`)."""
        p = best["place"].to_numpy()
        return pd.DataFrame({
            "lat": self._place_values("lat")[p], "lon": self._place_values("lon")[p],
            "level": self._place_values("level")[p],
            "matched_name": self._place_values("display")[p],
            "form": best["form"].astype(str).to_numpy(),
            "admin1": best["admin1"].to_numpy(), "source": "offline",
        }, index=best.index)

    def _pick(self, cand: pd.DataFrame, result: pd.DataFrame, parsed: pd.DataFrame, *,
              with_state: bool) -> None:
        """Choose the best candidate per query and say how it was chosen."""
        if cand.empty:
            return
        best = self._choose(cand, all_tiers=not with_state)
        base = self._answer(best)
        name = pd.Series(self._place_values("name")[best["place"].to_numpy()], index=best.index)
        note = pd.Series("", index=best.index, dtype="string")
        other = base["form"] != "name"
        note[other] = base.loc[other, "form"] + " of " + name[other]
        n, key = best["n"], best["key"].astype("string")
        several = n > 1
        dominant = self._dominant(best)
        candidates = best["candidates"].where(several & ~dominant, "")
        if with_state:
            score = pd.Series(np.where(best["tier"] == 0, 100, 90), index=best.index)
            score[dominant] = 90
            note[dominant] = _join(note[dominant], "most populous of " + n[dominant].astype(str)
                                   + " places named " + key[dominant])
            amb = several & ~dominant
            score[amb] = AMBIGUOUS_SCORE
            note[amb] = _join(pd.Series("ambiguous: " + n[amb].astype(str) + " places named "
                                        + key[amb] + " in " + best.loc[amb, "admin1"]
                                        + "; chose the most populous", index=best.index[amb]),
                              note[amb])
            accept = best.index
        else:
            score = pd.Series(90, index=best.index)
            note = _join(pd.Series("no state given", index=best.index), note)
            clear = (best["rank"] > 0) & (best["rank"] >= DOMINANCE * best["second"])
            score[several] = 70
            note[several] = _join(note[several], "ambiguous without a state: "
                                  + n[several].astype(str) + " places named " + key[several]
                                  + " (" + best.loc[several, "states_seen"]
                                  + "); chose the most populous")
            refuse = several & ~clear
            idx = best.index[refuse]
            _add_note(result, idx, "ambiguous: " + n[idx].astype(str) + " places named "
                      + key[idx] + " (" + best.loc[idx, "states_seen"] + "); add a state")
            result.loc[idx, "candidates"] = best.loc[idx, "candidates"].to_numpy()
            candidates = best["candidates"].where(several, "")
            accept = best.index[~refuse]
        _set(result, accept, {**{c: base[c] for c in base}, "score": score,
                              "candidates": candidates})
        note = note.astype("string")
        _add_note(result, accept[note[accept] != ""], note)

    def _match_fuzzy(self, parsed: pd.DataFrame, states: pd.Series,
                     result: pd.DataFrame) -> None:
        """Misspelt names within the given state: every name form within
        :data:`FUZZY_MARGIN` of the best rapidfuzz ratio is a candidate, chosen among as for
        exact matches; several different places → ambiguous. Score 0.9 × ratio (0.8 were it
        another place's name: never confident), :data:`AMBIGUOUS_SCORE` at most when
        ambiguous."""
        todo = (result["level"] == "") & (parsed["place_key"] != "") & states.fillna("").ne("")
        todo &= ~result["note"].str.startswith("ambiguous")
        if not todo.any():
            return
        pools = self._fuzzy_pools()
        rows = pd.DataFrame({"key": parsed.loc[todo, "place_key"],
                             "st": states[todo].str.split("|")}).explode("st")
        found = []
        for st, group in rows.groupby("st", sort=False):  # loop over distinct states
            if st not in pools:
                continue
            keys = pools[st]
            for start in range(0, len(group), 2000):  # bounded score matrices
                chunk = group.iloc[start:start + 2000]
                scores = _fuzzy_scores(chunk["key"].tolist(), keys, self.fuzzy_cutoff)
                top = scores.max(axis=1)
                qi, ki = np.nonzero((scores > 0) & (scores >= top[:, None] - FUZZY_MARGIN))
                found.append(pd.DataFrame({"qid": chunk.index[qi], "ratio": scores[qi, ki],
                                           "key": keys[ki], "st": st}))
        if not found:
            return
        hits = pd.concat(found, ignore_index=True)
        top = hits.groupby("qid")["ratio"].transform("max")
        hits = hits[hits["ratio"] >= top - FUZZY_MARGIN]
        cand = self._candidates(hits)
        cand = cand[cand["admin1"].to_numpy() == cand["st"].to_numpy()]
        if cand.empty:
            return
        best = self._choose(cand)
        base = self._answer(best)
        ratio = best["ratio"].to_numpy()
        factor = np.where(best["tier"] == 0, 0.9, 0.8)
        score = pd.Series(np.round(ratio * factor).astype("int64"), index=best.index)
        amb = (best["n"] > 1) & ~self._dominant(best)
        score[amb] = np.minimum(score[amb], AMBIGUOUS_SCORE)
        idx = best.index
        _set(result, idx, {**{c: base[c] for c in base}, "score": score,
                           "form": "fuzzy " + base["form"],
                           "candidates": best["candidates"].where(amb, "")})
        note = ("fuzzy match '" + parsed.loc[idx, "place_key"] + "' ~ '"
                + best["key"].astype("string") + "' ("
                + pd.Series(np.round(ratio).astype(int), index=idx).astype("string") + ")")
        note[amb] = ("ambiguous: " + best.loc[amb, "n"].astype(str) + " places match '"
                     + parsed.loc[idx[amb], "place_key"] + "' about equally; " + note[amb])
        _add_note(result, idx, note)

    def _match_fuzzy_without_state(self, parsed: pd.DataFrame, states: pd.Series,
                                   result: pd.DataFrame, country: str | None) -> None:
        """No state given and no exact match: correct the spelling against the names of
        towns of at least :data:`STATELESS_MIN_POPULATION`, then match the corrected name
        like an exact one (so the ambiguity rules still apply); score at most 80."""
        todo = ((result["level"] == "") & (parsed["place_key"] != "") & states.isna()
                & parsed["zip"].isna() & ~result["note"].str.startswith("ambiguous"))
        if not todo.any():
            return
        keys = self._stateless_pool(country)
        queries = parsed.loc[todo, "place_key"]
        found = []
        for start in range(0, len(queries), 2000):  # bounded score matrices
            chunk = queries.iloc[start:start + 2000]
            scores = process.cdist(chunk.tolist(), keys, scorer=fuzz.token_sort_ratio,
                                   processor=None, score_cutoff=STATELESS_CUTOFF,
                                   dtype=np.float32, workers=-1)
            top = scores.argmax(axis=1)
            ratio = scores[np.arange(len(top)), top]
            hit = ratio > 0
            found.append(pd.DataFrame({"qid": chunk.index[hit], "ratio": ratio[hit],
                                       "key": np.asarray(keys, dtype=object)[top[hit]]}))
        best = pd.concat(found).set_index("qid")
        if best.empty:
            return
        corrected = best["key"].astype("string").reindex(parsed.index)
        before = result["level"] == ""
        self._match_exact(parsed.assign(corrected=corrected), states, result, country,
                          "corrected")
        idx = result.index[before & (result["level"] != "")]
        ratio = best["ratio"].reindex(idx)
        result.loc[idx, "score"] = np.minimum(result.loc[idx, "score"].to_numpy(),
                                              np.round(ratio.to_numpy() * 0.8)).astype("int64")
        _add_note(result, idx, "fuzzy match without a state: '" + parsed.loc[idx, "place_key"]
                  + "' ~ '" + corrected[idx] + "' ("
                  + ratio.round().astype(int).astype("string") + ")")

    def _stateless_pool(self, country: str | None) -> list[str]:
        """Distinct match keys of towns big enough to be guessed without a state."""
        if country not in self._stateless:
            names = self.gazetteer.names
            keep = (names["rank"] >= STATELESS_MIN_POPULATION).to_numpy().copy()
            if country is not None:
                keep &= (names["country"] == country).to_numpy()
            self._stateless[country] = names.loc[keep, "key"].drop_duplicates().tolist()
        return self._stateless[country]

    def _fuzzy_pools(self) -> dict[str, np.ndarray]:
        """Per state: the distinct own-name keys of its places (built once). Misspelt
        alternate names are not looked for: such a match could never be confident, and the
        pool is half the size."""
        if self._pools is None:
            names = self.gazetteer.names
            names = names[names["tier"] == 0].drop_duplicates(["admin1", "key"])
            self._pools = {st: group["key"].to_numpy(dtype=object)
                           for st, group in names.groupby("admin1", sort=False)}
        return self._pools

    def _match_state(self, parsed: pd.DataFrame, states: pd.Series,
                     result: pd.DataFrame) -> None:
        todo = (result["level"] == "") & states.fillna("").ne("")
        todo &= ~result["note"].str.startswith("ambiguous")
        several = todo & states.fillna("").str.contains("|", regex=False)
        _add_note(result, result.index[several], "state is ambiguous: " + states[several])
        todo &= ~several
        idx = result.index[todo]
        if len(idx) == 0:
            return
        st = states[idx]
        table = self.gazetteer.states
        only = parsed.loc[idx, "state_only"]
        _set(result, idx, {
            "lat": st.map(table["lat"]), "lon": st.map(table["lon"]), "level": "state",
            "score": pd.Series(np.where(only, 60, 30), index=idx),
            "matched_name": st.map(table["display"]).astype("string"), "admin1": st,
            "source": "offline", "form": "state",
        })
        miss = idx[~only.to_numpy()]
        _add_note(result, miss, "place " + parsed.loc[miss, "place_key"]
                  + " not found in " + states[miss] + "; state centroid")


def _fuzzy_scores(queries: list[str], keys: np.ndarray, cutoff: float) -> np.ndarray:
    """rapidfuzz ``token_sort_ratio`` (0–100) of each query to each key; below ``cutoff`` → 0.
    (A swapped pair of letters scores as two slips would in optimal string alignment.)"""
    return process.cdist(queries, keys, scorer=fuzz.token_sort_ratio, processor=None,
                         score_cutoff=cutoff, dtype=np.float32, workers=-1)


def _state_list(codes: pd.Series) -> str:
    """The chosen candidate's state first, then the others: ``"MX-JAL, MX-BCN"``."""
    first, *rest = codes.tolist()
    rest = sorted(rest)
    shown = [first, *rest[:5]]
    return ", ".join(shown) + (", …" if len(rest) > 5 else "")


def _haversine_km(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray,
                  lon2: np.ndarray) -> np.ndarray:
    """Great-circle distance in km, vectorised."""
    lat1, lon1, lat2, lon2 = (np.radians(np.asarray(v, dtype=float))
                              for v in (lat1, lon1, lat2, lon2))
    h = (np.sin((lat2 - lat1) / 2) ** 2
         + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2)
    return 2 * 6371.0088 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def _join(a: pd.Series, b: pd.Series) -> pd.Series:
    """``a; b`` element-wise, leaving out empty parts."""
    a, b = a.astype("string").fillna(""), b.astype("string").fillna("")
    return (a + "; " + b).where((a != "") & (b != ""), a + b)


@functools.cache
def _default_geocoder() -> OfflineGeocoder:
    return OfflineGeocoder()


# --------------------------------------------------------------------------- overrides


def load_overrides(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read an overrides CSV: ``place,lat,lon`` or ``place,replacement`` (or an edited report).

    The key column may be called ``place`` or ``query``. Rows with both ``lat`` and ``lon``
    pin the place there; rows with a ``replacement`` are geocoded as that string instead;
    other rows are ignored. Returns ``place``, ``lat``, ``lon``, ``replacement``.
    """
    try:
        raw = pd.read_csv(path, dtype="string", keep_default_na=False, na_values=[""])
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read overrides: {exc}", path=str(path)) from exc
    raw.columns = [str(c).strip().lower() for c in raw.columns]
    key = "place" if "place" in raw.columns else "query" if "query" in raw.columns else None
    if key is None or not ({"lat", "lon"} <= set(raw.columns) or "replacement" in raw.columns):
        raise InputError("overrides need a 'place' column and 'lat','lon' or 'replacement'",
                         path=str(path))
    out = pd.DataFrame({"place": raw[key]})
    for col in ("lat", "lon"):
        values = raw[col] if col in raw.columns else pd.Series(pd.NA, index=raw.index)
        num = pd.to_numeric(values, errors="coerce")
        bad = values.notna() & num.isna()
        limit = 90 if col == "lat" else 180
        bad |= num.abs() > limit
        if bad.any():
            line = int(bad.to_numpy().argmax()) + 2
            raise InputError(f"line {line}, column {col}: not a valid {col}: "
                             f"{values[bad].iloc[0]!r}", path=str(path))
        out[col] = num.astype(float)
    out["replacement"] = raw["replacement"] if "replacement" in raw.columns else pd.NA
    out["replacement"] = out["replacement"].astype("string")
    usable = out["place"].notna() & (
        (out["lat"].notna() & out["lon"].notna()) | out["replacement"].notna())
    return out[usable].drop_duplicates("place", keep="last").reset_index(drop=True)


def _override_key(values: pd.Series) -> pd.Series:
    return _tokens(values).str.replace(r"\s+", " ", regex=True)


# --------------------------------------------------------------------------- public API


def _check_country(country: str | None) -> str | None:
    if country is None:
        return None
    code = str(country).strip().upper()
    if code not in ("US", "MX"):
        raise GeocodeError(f"country must be US or MX, not {country!r}")
    return code


def geocode(queries: Iterable[str] | pd.Series, *, country: str | None = None,
            geocoder: Geocoder | None = None, overrides: pd.DataFrame | None = None,
            memo: PlaceMemo | None = None) -> pd.DataFrame:
    """Geocode place strings; one row per query, in input order, columns :data:`RESULT_COLUMNS`.

    Each distinct string is geocoded once (once per input with a ``memo``). ``country``
    (``"US"``/``"MX"``) constrains answers to that country; ``overrides`` (see
    :func:`load_overrides`) win over the geocoder.

    >>> geocode(["E DUNDEE, IL 60118"])[["level", "admin1"]].iloc[0].tolist()
    ['zip', 'US-IL']
    """
    country = _check_country(country)
    geocoder = geocoder or _default_geocoder()
    series = pd.Series(list(queries) if not isinstance(queries, pd.Series) else queries,
                       dtype="string").fillna("").str.strip()
    distinct = pd.Series(series.drop_duplicates().to_numpy(), dtype="string")

    def answer(strings: pd.Series) -> pd.DataFrame:
        if overrides is not None and len(overrides):
            return _geocode_with_overrides(strings, country, geocoder, overrides)
        return geocoder.geocode(strings, country=country)

    answers = (memo.answers(distinct, country, answer) if memo is not None
               else answer(distinct).assign(query=distinct.to_numpy()).set_index("query"))
    out = answers.reindex(series.to_numpy()).reset_index()
    out["query"] = series.to_numpy()
    return out[list(RESULT_COLUMNS)].reset_index(drop=True)


def _geocode_with_overrides(distinct: pd.Series, country: str | None, geocoder: Geocoder,
                            overrides: pd.DataFrame) -> pd.DataFrame:
    table = overrides.assign(k=_override_key(overrides["place"])).drop_duplicates("k", keep="last")
    table = table.set_index("k")
    keys = _override_key(distinct)
    replacement = keys.map(table["replacement"]).astype("string")
    lat, lon = keys.map(table["lat"]).astype(float), keys.map(table["lon"]).astype(float)
    pinned = lat.notna() & lon.notna()
    to_geocode = distinct.where(~(replacement.notna() & ~pinned), replacement)
    answers = geocoder.geocode(pd.Series(to_geocode.to_numpy(), dtype="string"),
                               country=country)
    answers.index = distinct.index
    repl = replacement.notna() & ~pinned
    _set(answers, answers.index[repl], {"source": "override"})
    _add_note(answers, answers.index[repl], "override: geocoded as " + replacement)
    idx = answers.index[pinned]
    _set(answers, idx, {"lat": lat, "lon": lon, "level": "coordinates", "score": 100,
                        "matched_name": distinct, "admin1": pd.NA, "source": "override",
                        "form": "override", "candidates": "",
                        "note": "override: coordinates"})
    return answers


def _role_queries(records: pd.DataFrame, role: str) -> tuple[pd.Series, pd.Series]:
    """The place string and country of each record for ``role`` (dealer / recovery)."""
    def col(name: str) -> pd.Series:
        if name in records.columns:
            return records[name].astype("string").fillna("").str.strip()
        return pd.Series("", index=records.index, dtype="string")

    city, state = col(f"{role}_city"), col(f"{role}_state")
    text = city.where(state == "", city + ", " + state)
    if role == "dealer":
        z = col("dealer_zip").str.extract(r"^(\d{3,5})(?:-\d{4})?$", expand=False)
        z = z.fillna("").str.zfill(5).where(z.notna(), "")  # 2134 lost its leading zero
        text = text.where(z == "", text + " " + z).str.strip(" ,")
        country = pd.Series("US", index=records.index, dtype="string")
    else:
        text = text.str.strip(" ,")
        given = col("recovery_country")
        distinct = given.drop_duplicates()
        codes = normalise_country(distinct).astype(object).where(lambda c: c.notna(), None)
        country = given.astype(object).map(dict(zip(distinct, codes, strict=True)))
        country = country.where(given != "", "MX").fillna("other")
    return text.astype("string"), country.astype("string")


class PlaceMemo:
    """The answers a chunked read's earlier chunks got, by country and place string
    (``memo`` of :func:`geocode_traces`): a place met again is looked up, not geocoded
    again. One row per distinct string, so its memory grows with places, not records."""

    def __init__(self) -> None:
        self._answers: dict[str | None, pd.DataFrame] = {}

    def answers(self, distinct: pd.Series, country: str | None,
                geocode: Callable[[pd.Series], pd.DataFrame]) -> pd.DataFrame:
        """Answers (indexed by query) covering the ``distinct`` strings: those not met
        before from ``geocode(strings)`` (a frame indexed like them)."""
        known = self._answers.get(country)
        fresh = distinct if known is None else distinct[~distinct.isin(known.index)]
        if known is None or len(fresh):
            new = geocode(fresh.reset_index(drop=True))
            new = new.assign(query=fresh.to_numpy()).set_index("query")
            known = new if known is None else pd.concat([known, new])
            self._answers[country] = known
        return known


def geocode_traces(records: pd.DataFrame, *, geocoder: Geocoder | None = None,
                   overrides: pd.DataFrame | str | os.PathLike[str] | None = None,
                   memo: PlaceMemo | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Add dealer and recovery coordinates to trace records; return ``(records, report)``.

    Dealers are placed in the US, recoveries in ``recovery_country`` (Mexico when empty).
    Coordinates present in the input are kept (level ``coordinates``). ``report`` has one row
    per distinct (role, place string, level), unmatched and low-confidence first, with the
    number of records it covers and their first source lines. ``memo``: the places of
    earlier chunks of the same input and options, geocoded once.
    """
    if overrides is not None and not isinstance(overrides, pd.DataFrame):
        overrides = load_overrides(overrides)
    out = records.copy(deep=False)  # copy-on-write: columns are replaced, never changed in place
    lines = (records["source_line"].to_numpy() if "source_line" in records.columns
             else np.arange(len(records)) + 2)
    reports = []
    # one geocoder for both roles: the offline one builds its look-up tables once
    geocoder = geocoder or _default_geocoder()
    for role in ("dealer", "recovery"):
        # geocode each distinct (city, state, zip or country, lat, lon) once, then spread the
        # answers to the records by their group code: no per-record string work
        codes, distinct = _distinct_places(records, role)
        res, text = _geocode_role(distinct, role, geocoder=geocoder, overrides=overrides,
                                  memo=memo)
        lat_col, lon_col = f"{role}_lat", f"{role}_lon"
        out[lat_col] = res["lat"].to_numpy(dtype=float)[codes]
        out[lon_col] = res["lon"].to_numpy(dtype=float)[codes]
        # texts as categoricals over the distinct places' values: no text per record
        out[f"{role}_geocode_level"] = categorical_take(res["level"], codes)
        # 0-100: one byte a record (eight as int64: 140 MB of the two roles at 10M records)
        out[f"{role}_geocode_score"] = res["score"].astype("int8").to_numpy()[codes]
        out[f"{role}_admin1"] = categorical_take(res["admin1"], codes)
        out[f"{role}_place"] = categorical_take(res["matched_name"], codes)
        # the report's key, for reports of subsets
        out[f"{role}_geocode_query"] = categorical_take(text, codes)
        reports.append(_report(res.assign(role=role, query=text), codes, lines))
        del res, text
    return out, _report_order(pd.concat(reports, ignore_index=True))


def _distinct_places(records: pd.DataFrame, role: str) -> tuple[np.ndarray, pd.DataFrame]:
    """``(codes, distinct)``: the distinct place columns of ``role`` and each record's row."""
    extra = "dealer_zip" if role == "dealer" else "recovery_country"
    columns = [c for c in (f"{role}_city", f"{role}_state", extra, f"{role}_lat",
                           f"{role}_lon") if c in records.columns]
    if not columns:  # no place columns at all: every record is the one empty place
        return np.zeros(len(records), dtype=np.intp), pd.DataFrame(index=pd.RangeIndex(1))
    codes = first_seen_codes([records[c] for c in columns]).astype(np.intp, copy=False)
    first = first_rows(codes, int(codes.max()) + 1 if len(codes) else 0)  # numbered as seen
    return codes, records[columns].iloc[first].reset_index(drop=True)


def _geocode_role(places: pd.DataFrame, role: str, *, geocoder: Geocoder | None,
                  overrides: pd.DataFrame | None, memo: PlaceMemo | None = None
                  ) -> tuple[pd.DataFrame, pd.Series]:
    """Result columns (no ``query``) for distinct place rows of ``role``, and their strings."""
    text, country = _role_queries(places, role)
    lat = pd.to_numeric(places.get(f"{role}_lat", pd.Series(np.nan, index=places.index)),
                        errors="coerce").astype(float)
    lon = pd.to_numeric(places.get(f"{role}_lon", pd.Series(np.nan, index=places.index)),
                        errors="coerce").astype(float)
    given = lat.between(-90, 90) & lon.between(-180, 180)
    res = _empty_result(text).drop(columns="query")
    admin1 = _admin1_at(lat[given], lon[given])
    wrong = _contradicting(admin1, country[given], places.loc[given], role)
    wrong = wrong[wrong.ne("")]
    given.loc[wrong.index] = False  # placed from the place string instead
    res.loc[given, ["lat", "lon"]] = np.c_[lat[given], lon[given]]
    _set(res, res.index[given], {"level": "coordinates", "score": 100, "source": "input",
                                 "form": "coordinates", "admin1": admin1[given[given].index]})
    for code in country[~given].unique():  # at most US, MX, other
        rows = ~given & (country == code)
        if code == "other":
            _add_note(res, res.index[rows], "recovery country not covered: "
                      + places.loc[rows, "recovery_country"].astype("string"))
            continue
        answers = geocode(text[rows], country=code, geocoder=geocoder, overrides=overrides,
                          memo=memo)
        answers.index = res.index[rows]
        res.loc[rows, answers.columns[1:]] = answers.iloc[:, 1:]
    _add_note(res, wrong.index, wrong)
    res["level"] = res["level"].astype("string")
    res["admin1"] = res["admin1"].astype("string")
    res["matched_name"] = res["matched_name"].astype("string")
    return res, text


def _contradicting(admin1: pd.Series, country: pd.Series, places: pd.DataFrame,
                   role: str) -> pd.Series:
    """Why each given point contradicts its row ("" when it does not): it lies in another
    country than the role's (a Mexican recovery at Houston's coordinates) or in another state
    than the row names. Points outside both countries' shapes (at sea, abroad) are left alone.
    """
    from geoflow.places import STATE_ALIASES, compact

    found = admin1.astype("string").fillna("")
    expected = country.astype("string").fillna("")
    other_country = (found != "") & (expected != "other") & (found.str[:2] != expected)
    state_col = f"{role}_state"
    named = (places[state_col].astype("string").fillna("") if state_col in places.columns
             else pd.Series("", index=found.index, dtype="string"))
    codes = {v: STATE_ALIASES.get(compact(v), "") for v in named.drop_duplicates()}
    named_code = named.map(codes).astype("string").fillna("")
    candidates = named_code.str.split("|").explode()  # "MICH" names MX-MIC or US-MI
    in_named = candidates.eq(found.reindex(candidates.index)).groupby(level=0).any()
    in_named = in_named.reindex(found.index, fill_value=False).astype(bool)
    other_state = ~other_country & (found != "") & (named_code != "") & ~in_named
    where = ("given coordinates lie in " + found + ", not in "
             + expected.where(other_country, named_code) + ": placed from the place string")
    return where.where(other_country | other_state, "")


def geocode_column(frame: pd.DataFrame, column: str, *, country: str | None = None,
                   geocoder: Geocoder | None = None,
                   overrides: pd.DataFrame | None = None,
                   lines: np.ndarray | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Geocode one text column of any table; return ``(frame with result columns, report)``.

    Every row is kept; ``lat``, ``lon``, ``level``, ``score``, ``matched_name``, ``admin1``,
    ``source`` and ``note`` are added (suffixed ``_geocoded`` where the table already has a
    column of that name). The report is as in :func:`geocode_traces`, with ``role`` = column;
    its lines are ``lines`` (each row's source line; default: row + 2, the header line 1).
    """
    if column not in frame.columns:
        raise GeocodeError(f"no column {column!r}; columns are: " + ", ".join(map(str, frame)))
    got = geocode(frame[column], country=country, geocoder=geocoder, overrides=overrides)
    got.index = frame.index
    out = frame.copy()
    for name in RESULT_COLUMNS[1:]:
        out[name if name not in frame.columns else f"{name}_geocoded"] = got[name]
    lines = np.arange(len(frame)) + 2 if lines is None else np.asarray(lines)
    report = _report(got.assign(role=column), np.arange(len(frame)), lines)
    return out, report


def _admin1_at(lat: pd.Series, lon: pd.Series) -> pd.Series:
    """ISO 3166-2 state containing each point (shipped polygons); NA outside US and Mexico."""
    out = pd.Series(pd.NA, index=lat.index, dtype="string")
    if lat.empty:
        return out
    import shapely

    from geoflow.shapes import load_states

    states = load_states()
    points = shapely.points(lon.to_numpy(), lat.to_numpy())
    hit_point, hit_state = shapely.STRtree(states.geometry.to_numpy()).query(
        points, predicate="within")
    out.iloc[hit_point] = states["code"].to_numpy()[hit_state]
    return out


def _report(distinct: pd.DataFrame, codes: np.ndarray, lines: np.ndarray) -> pd.DataFrame:
    """One row per distinct (role, query, level); unmatched and low scores first. Record ``i``
    has the place of row ``codes[i]`` of ``distinct`` and source line ``lines[i]``: the
    records are counted by their codes, never grouped by their texts."""
    keys = ["role", "query", "level"]
    # the distinct places in the order of their first record, as a grouping of records finds
    # them; a place's values are the same in all its records, so the first non-missing value
    # of each column over the places is the one over their records
    order = np.argsort(first_rows(codes, len(distinct)), kind="stable")
    places = distinct.iloc[order].assign(level=lambda d: d["level"].fillna(""),
                                         query=lambda d: d["query"].fillna(""))
    grouped = places.groupby(keys, sort=False, dropna=False)
    first = grouped.first()
    group_of_place = np.empty(len(distinct), dtype=np.intp)
    group_of_place[order] = grouped.ngroup().to_numpy()
    group = group_of_place[codes]
    first = first.assign(records=np.bincount(group, minlength=grouped.ngroups),
                         first_lines=_first_lines(group, lines, grouped.ngroups).to_numpy()
                         ).reset_index()
    # given coordinates vary per record: no single point or state describes the group
    first.loc[first["level"] == "coordinates", ["lat", "lon", "admin1"]] = pd.NA
    return _report_order(first)


def report_for(report: pd.DataFrame, records: pd.DataFrame) -> pd.DataFrame:
    """The rows of a geocode ``report`` (of :func:`geocode_traces`) for the places of
    ``records`` — a filtered subset of the geocoded records, e.g. one entity of a batch —
    with ``records`` and ``first_lines`` counted over that subset only. The records are
    grouped by the codes of their query and level (categoricals: no text per record)."""
    made = entity_reports(report, records, np.zeros(len(records), dtype=np.int64))
    return report.iloc[0:0] if made is None else made[0]


def entity_reports(report: pd.DataFrame, records: pd.DataFrame, entities: np.ndarray
                   ) -> tuple[pd.DataFrame, np.ndarray] | None:
    """:func:`report_for` of every entity of a batch at once: ``entities`` is each record's
    entity (≥ 0). Returns the rows of every entity's report, entity by entity (by code), each
    entity's in its :func:`report_for` order, and each row's entity; None when the records
    have no geocoder query. Records are grouped by (entity, query, level), and a report row
    goes to each entity that has its key."""
    lines = (records["source_line"] if "source_line" in records.columns
             else pd.Series(np.arange(len(records)) + 2, index=records.index))
    entities = np.asarray(entities, dtype=np.int64)
    groups, keys, owners, record_lines = [], [], [], []
    for role in ("dealer", "recovery"):
        query = f"{role}_geocode_query"
        if query not in records.columns:
            continue
        query_codes, query_texts = _codes_and_texts(records[query])
        level_codes, level_texts = _codes_and_texts(records[f"{role}_geocode_level"])
        # one number per (entity, query, level), −1 (missing, as "") shifted to 0
        width, height = len(level_texts), len(query_texts)  # each with its −1
        group, triples = pd.factorize((entities * height + query_codes + 1) * width
                                      + level_codes + 1)
        groups.append(group + sum(len(k) for k in keys))  # after the other role's groups
        pairs = triples % (height * width)
        query_at, level_at = pairs // width - 1, pairs % width - 1
        keys.append(pd.DataFrame({"role": role, "query": query_texts[query_at],
                                  "level": level_texts[level_at]}))
        owners.append(triples // (height * width))
        record_lines.append(lines.to_numpy())
    if not keys:
        return None
    group, firsts, owner = (np.concatenate(groups), pd.concat(keys, ignore_index=True),
                            np.concatenate(owners))
    typed, report_keys = _keyed_report(report)
    key, distinct = pd.factorize(_key_text(firsts).to_numpy(zero_copy_only=False))
    # each report row's key among the groups' (−1: a place none of these records uses)
    at = pc.fill_null(pc.index_in(report_keys, value_set=pa.array(distinct, pa.string())),
                      -1).to_numpy()
    used = np.flatnonzero(at >= 0)
    by_key = used[stable_order(at[used])]  # report rows key by key, in report order
    per_key = np.bincount(at[used], minlength=len(distinct))
    count = per_key[key]  # report rows of each group
    row_group = np.repeat(np.arange(len(firsts)), count)
    offset = np.arange(len(row_group)) - np.repeat(np.cumsum(count) - count, count)
    rows = by_key[(np.cumsum(per_key) - per_key)[key][row_group] + offset]
    first_lines = _first_lines(group, np.concatenate(record_lines), len(firsts)).to_numpy()
    mine = typed.iloc[rows].assign(
        records=np.bincount(group, minlength=len(firsts))[row_group],
        first_lines=first_lines[row_group])
    order = _report_rank(mine, before=rows, by=owner[row_group])
    return (mine.iloc[order][list(REPORT_COLUMNS)].reset_index(drop=True),
            owner[row_group][order])


#: The last report :func:`report_for` was given, with its :func:`_keyed_report`.
_KEYED_REPORT: list[tuple[pd.DataFrame, pd.DataFrame, pa.Array]] = []


def _keyed_report(report: pd.DataFrame) -> tuple[pd.DataFrame, pa.Array]:
    """``report`` with its key columns (role, query, level) as pandas text, and each row's
    :func:`_key_text`: made once for the report a batch asks about for every entity (the
    sample's states: a third of each entity's :func:`report_for`)."""
    if _KEYED_REPORT and _KEYED_REPORT[0][0] is report:
        return _KEYED_REPORT[0][1:]
    typed = report.astype(dict.fromkeys(("role", "query", "level"), "string"))
    _KEYED_REPORT[:] = [(report, typed, _key_text(typed))]
    return typed, _KEYED_REPORT[0][2]


def _codes_and_texts(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, texts)`` of a column: each value's code (−1 for missing or empty) and the
    distinct texts (objects), then ``""``, which the report writes for both: ``texts[-1]``."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    texts = np.append(pd.array(uniques, dtype="string").to_numpy(dtype=object, na_value=""),
                      np.array([""], dtype=object))
    empty = texts[:-1] == ""
    if empty.any():
        codes = np.where((codes >= 0) & empty[np.maximum(codes, 0)], -1, codes)
    return codes, texts


def _key_text(frame: pd.DataFrame) -> pa.Array:
    """One text per (role, query, level) of a report or its long form, to match them (Arrow:
    no Python string per report row, which a batch would make again for every entity)."""
    parts = [arrow_text(frame[c]).cast(pa.string()) for c in ("role", "query", "level")]
    return pc.binary_join_element_wise(*parts, "\x1f")


def _first_lines(group: np.ndarray, lines: np.ndarray | pd.Series, n: int) -> pd.Series:
    """The first five source lines of each group 0..n-1 (records in order), joined with
    spaces; ``?`` for an unknown line. Only those lines become text, and five Arrow columns
    are joined at once, not a Python join per group."""
    order = stable_order(group)  # each group's records together, in order
    sizes = np.bincount(group, minlength=n)
    rank = np.empty(len(group), dtype=np.intp)  # each record's place within its group
    rank[order] = np.arange(len(group)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    rows = np.flatnonzero(rank < 5)
    text = pd.Series(lines).iloc[rows].astype("string").fillna("?").to_numpy(dtype=object)
    columns = []
    for r in range(5):
        column = np.full(n, None, dtype=object)
        at = rank[rows] == r
        column[group[rows[at]]] = text[at]
        columns.append(pa.array(column, type=pa.string()))
    joined = pc.binary_join_element_wise(*columns, " ", null_handling="skip")
    return pd.Series(joined.to_numpy(zero_copy_only=False), dtype=object)


def _report_order(report: pd.DataFrame) -> pd.DataFrame:
    """Report rows unmatched first, then by score ascending, most records first (stable)."""
    return report.iloc[_report_rank(report)][list(REPORT_COLUMNS)].reset_index(drop=True)


def _report_rank(report: pd.DataFrame, *, before: np.ndarray | None = None,
                 by: np.ndarray | None = None) -> np.ndarray:
    """The order :func:`_report_order` puts ``report``'s rows in, after ``by`` (each row's
    entity) if given; ties kept in the order of ``before`` (default: as they are)."""
    keys = [report[c].to_numpy(dtype=object) for c in ("query", "role")]  # last keys first
    keys += [-report["records"].to_numpy(dtype=np.int64),
             report["score"].to_numpy(dtype=np.int64),
             (report["level"] != "").to_numpy(dtype=np.int64)]
    keys = ([before] if before is not None else []) + keys + ([by] if by is not None else [])
    return np.lexsort(keys)  # stable, the last key first: what a multi-key stable sort gives


# --------------------------------------------------------------------------- geopy


#: geopy services usable with a user agent (and an API key where the service needs one).
GEOPY_SERVICES = ("nominatim", "photon", "arcgis", "opencage", "geonames", "googlev3",
                  "bing", "mapbox", "here")


def default_cache_path() -> Path:
    """``$XDG_CACHE_HOME/geoflow/geocode-cache.sqlite`` (``~/.cache`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "geoflow" / "geocode-cache.sqlite"


class _Cache:
    """A persistent SQLite cache of network answers (including "no result")."""

    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path)
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS answers (service TEXT, query TEXT, country TEXT,"
                " payload TEXT, created REAL, PRIMARY KEY (service, query, country))")
        except (OSError, sqlite3.Error) as exc:
            raise GeocodeError(f"cannot open the geocode cache: {exc}", path=str(path)) from exc

    def get(self, service: str, query: str, country: str) -> tuple[bool, Any]:
        row = self.db.execute(
            "SELECT payload FROM answers WHERE service=? AND query=? AND country=?",
            (service, query, country)).fetchone()
        return (False, None) if row is None else (True, json.loads(row[0]))

    def put(self, service: str, query: str, country: str, payload: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?)",
                        (service, query, country, json.dumps(payload), time.time()))
        self.db.commit()

    def close(self) -> None:
        self.db.close()


#: Consecutive "service unavailable" errors (connection refused, DNS, 5xx) after which the
#: remaining places are not asked: a dead service should not cost one second per place.
UNREACHABLE_AFTER = 3


class GeopyGeocoder:
    """A geopy service for the strings the offline geocoder placed badly (unmatched or state).

    At most one request per ``min_delay_seconds``; answers (and "no result") are kept in a
    SQLite cache consulted before any wait; geopy errors are reported in ``note`` per query
    and the offline answer stays. ``source`` says which answered.
    """

    def __init__(self, service: str = "nominatim", *, user_agent: str,
                 api_key: str | None = None, domain: str | None = None,
                 scheme: str | None = None, timeout: float = 10.0,
                 cache_path: str | os.PathLike[str] | None = None,
                 min_delay_seconds: float = 1.0, fallback: Geocoder | None = None,
                 allow_offline_fallback: bool = False) -> None:
        from geopy.exc import GeopyError
        from geopy.geocoders import get_geocoder_for_service

        service = service.lower()
        if service not in GEOPY_SERVICES:
            raise GeocodeError(f"unknown geocoder {service!r}; use one of "
                               + ", ".join(("offline", *GEOPY_SERVICES)))
        if not user_agent:
            raise GeocodeError(f"the {service} geocoder needs a user agent (--user-agent)")
        kwargs: dict[str, Any] = {"user_agent": user_agent, "timeout": timeout}
        if domain:
            kwargs["domain"] = domain
        if scheme:
            kwargs["scheme"] = scheme
        if api_key:
            kwargs[{"geonames": "username", "here": "apikey"}.get(service, "api_key")] = api_key
        kwargs["adapter_factory"] = _single_try_adapter()  # retries would bypass the rate limit
        try:
            self.client = get_geocoder_for_service(service)(**kwargs)
        except (TypeError, ValueError, GeopyError) as exc:  # missing api key and the like
            raise GeocodeError(f"cannot set up the {service} geocoder (does it need "
                               f"--api-key?): {exc}") from exc
        self.name = service
        self.min_delay = float(min_delay_seconds)
        self.cache = _Cache(Path(cache_path) if cache_path else default_cache_path())
        self.fallback = fallback or _default_geocoder()
        self.requests_made = 0
        #: places sent to the service (cache misses), those that got no answer (an error, or
        #: not asked after a rate limit) and the first error, for :meth:`summary`
        self.lookups = 0
        self.failures = 0
        self.allow_offline_fallback = bool(allow_offline_fallback)
        self.first_error: str | None = None
        self._last_request: float | None = None

    def close(self) -> None:
        """Close the cache database."""
        self.cache.close()

    def __enter__(self) -> GeopyGeocoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def summary(self) -> dict[str, Any]:
        """What the service did, for the manifest: ``service``, ``lookups``, ``failed``,
        ``first_error`` (None when none failed)."""
        return {"service": self.name, "lookups": self.lookups, "failed": self.failures,
                "first_error": self.first_error,
                "offline_fallback_allowed": self.allow_offline_fallback}

    def check(self) -> str | None:
        """The warning to show when look-ups failed (None when none did); raises
        :class:`GeocodeError` (exit 5) when every one failed, unless
        ``allow_offline_fallback``: a run that asked for an online service and silently got
        none of its answers would mislead."""
        message = self.failure_message()
        if message is not None and self.all_failed() and not self.allow_offline_fallback:
            raise GeocodeError(message.replace("; offline answers used for those places", "")
                               + "; nothing written (pass --allow-offline-fallback to use "
                                 "the offline answers)")
        return message

    def failure_message(self) -> str | None:
        """``"nominatim: 14 of 14 look-ups failed: …; offline answers used"``, or None when
        every look-up got an answer (or none was needed)."""
        if not self.failures:
            return None
        return (f"{self.name}: {self.failures:,} of {self.lookups:,} look-ups failed: "
                f"{self.first_error}; offline answers used for those places")

    def all_failed(self) -> bool:
        """True when look-ups were needed and not one got an answer (service unreachable)."""
        return self.lookups > 0 and self.failures == self.lookups

    def _failed(self, result: pd.DataFrame, idx: Any, note: str) -> None:
        self.failures += 1
        self.first_error = self.first_error or (note if len(note) <= 200 else note[:199] + "…")
        _add_note(result, pd.Index([idx]), f"{self.name}: {note}")

    def _wait(self) -> None:
        if self._last_request is not None:
            delay = self.min_delay - (time.monotonic() - self._last_request)
            if delay > 0:
                time.sleep(delay)

    def _ask(self, query: str, country: str | None) -> Any:
        """One network request (rate limited); returns a JSON-able payload or None."""
        from geopy.exc import GeopyError

        kwargs: dict[str, Any] = {"exactly_one": True}
        if self.name == "nominatim":
            kwargs["addressdetails"] = True
            if country:
                kwargs["country_codes"] = country.lower()
        self._wait()
        try:
            location = self.client.geocode(query, **kwargs)
        except GeopyError:
            raise
        finally:
            self._last_request = time.monotonic()
            self.requests_made += 1
        if location is None:
            return None
        return {"lat": location.latitude, "lon": location.longitude,
                "address": location.address, "raw": location.raw}

    def geocode(self, queries: pd.Series, *, country: str | None = None) -> pd.DataFrame:
        """Offline first; unmatched and state-level strings go to the network service."""
        from geopy.exc import GeocoderRateLimited, GeocoderUnavailable, GeopyError

        result = self.fallback.geocode(queries, country=country)
        todo = result.index[result["level"].isin(["", "state"]) & (queries.fillna("") != "")]
        stopped = None  # why the remaining places are not asked
        unreachable = 0  # consecutive "service unavailable" errors
        for idx in todo:  # distinct strings the gazetteer could not place well
            query = str(queries[idx])
            hit, payload = self.cache.get(self.name, query, country or "")
            if not hit:
                self.lookups += 1
                if stopped:
                    self._failed(result, idx, f"not asked ({stopped})")
                    continue
                try:
                    payload = self._ask(query, country)
                except GeocoderRateLimited as exc:
                    stopped = "rate limited"
                    self._failed(result, idx, f"rate limited ({exc})")
                    continue
                except GeopyError as exc:
                    unreachable = unreachable + 1 if isinstance(exc, GeocoderUnavailable) else 0
                    if unreachable >= UNREACHABLE_AFTER:
                        stopped = f"service unreachable {UNREACHABLE_AFTER} times in a row"
                    self._failed(result, idx, f"{type(exc).__name__} ({exc})")
                    continue
                unreachable = 0
                self.cache.put(self.name, query, country or "", payload)
            self._apply(result, idx, payload, country, cached=hit)
        return result

    def _apply(self, result: pd.DataFrame, idx: Any, payload: Any, country: str | None, *,
               cached: bool) -> None:
        where = f"{self.name}{' (cached)' if cached else ''}"
        if payload is None:
            _add_note(result, pd.Index([idx]), f"{where}: no result")
            return
        # The state polygon containing the answer decides (services differ in what they say).
        point = _admin1_at(pd.Series([float(payload["lat"])]), pd.Series([float(payload["lon"])]))
        admin1 = point.iloc[0] if point.notna().iloc[0] else _geopy_admin1(
            payload.get("raw") or {})
        wanted = result.at[idx, "admin1"]
        if country and not (admin1 or "").startswith(country + "-"):
            _add_note(result, pd.Index([idx]),
                      f"{where}: answer in {admin1 or 'no known state'}, outside {country}")
            return
        if isinstance(wanted, str) and admin1 and admin1 != wanted:
            _add_note(result, pd.Index([idx]), f"{where}: answer in {admin1}, not {wanted}")
            return
        kind = str((payload.get("raw") or {}).get("addresstype", ""))
        level = {"state": "state", "postcode": "zip", "municipality": "municipality",
                 "county": "municipality"}.get(kind, "city")
        _set(result, pd.Index([idx]), {
            "lat": float(payload["lat"]), "lon": float(payload["lon"]), "level": level,
            "score": 80, "matched_name": str(payload.get("address") or ""), "form": "online",
            "candidates": "",
            "admin1": admin1 if admin1 else wanted, "source": self.name,
        })
        _add_note(result, pd.Index([idx]), f"{where} answered")


def _single_try_adapter() -> Any:
    """A geopy HTTP adapter that never retries by itself (each try counts for the limit)."""
    from geopy.adapters import RequestsAdapter, URLLibAdapter

    try:
        import requests  # noqa: F401
    except ImportError:  # pragma: no cover - requests is a geopy extra
        return URLLibAdapter
    return functools.partial(RequestsAdapter, max_retries=0)


def _geopy_admin1(raw: dict[str, Any]) -> str | None:
    """ISO 3166-2 state of a Nominatim/Photon answer, when it says."""
    address = raw.get("address") or raw.get("properties") or {}
    code = address.get("ISO3166-2-lvl4")
    if code:
        return str(code).upper()
    country = str(address.get("country_code") or address.get("countrycode") or "").upper()
    state = address.get("state")
    if country in ("US", "MX") and state:
        from geoflow.places import STATE_ALIASES, compact

        found = STATE_ALIASES.get(compact(state), "")
        codes = [c for c in found.split("|") if c.startswith(country)]
        return codes[0] if codes else None
    return None
