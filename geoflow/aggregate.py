"""Tables by US state, Mexican state, dealer, purchaser, crossing and year, and the findings.

Every function is a pure DataFrame → DataFrame transform, vectorised with groupby over integer
codes: cost grows with records once, memory with distinct entities. Input records follow
docs/internals.md (io + geocode + crossings columns plus ``purchaser_id``, ``dealer_id``).
Names shown in the tables are already chosen by the caller: pass a ``purchaser_label`` column
(pseudonym or real name) and tables show it.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "TTC_SHORT_DAYS",
    "DUPLICATE_REASON",
    "GroupStats",
    "EntityFrames",
    "entity_cells",
    "entity_column",
    "entity_frames",
    "entity_tables",
    "countable",
    "counted",
    "unplace_duplicates",
    "flag_counts",
    "possible_ttc",
    "recovery_keys",
    "recovery_codes",
    "group_stats",
    "top_item",
    "first_rows",
    "iso_dates",
    "day_codes",
    "take_text",
    "positions_in",
    "distinct_codes",
    "text_codes",
    "fill_unknown",
    "is_value",
    "by_us_state",
    "by_mx_state",
    "state_matrix",
    "by_dealer",
    "TRAFFICKER_MIN_GUNS",
    "by_purchaser",
    "by_trafficker",
    "by_crossing",
    "by_year",
    "build_tables",
    "plural",
    "crossings_clause",
    "findings",
    "entity_findings",
]

#: Default threshold of ``by_trafficker``: purchasers tied to this many traced guns or more (the
#: threshold of the reporting); ``by_purchaser.at_or_above_threshold`` marks them.
TRAFFICKER_MIN_GUNS = 10
#: Widest range of whole values :func:`weighted_median` codes by offset (days to crime span
#: a few thousand).
DENSE_VALUES = 1 << 16
#: Records per block of :func:`top_item` (items taken in ranges of codes past it).
TOP_ITEM_BLOCK = 2_000_000
#: "Short" time to crime: under three years (DOMAIN.md), in days.
TTC_SHORT_DAYS = 3 * 365.25
UNKNOWN = "unknown"
#: ``unplaced_reason`` of a repeated trace record (see :func:`unplace_duplicates`).
DUPLICATE_REASON = "duplicate trace record"
#: Column of a collapsed row of a chunked read: how many input records it stands for.
RECORDS_COLUMN = "record_count"
#: Reader quality flags (docs/internals.md, io), in the order :func:`flag_counts` gives them.
FLAGS = ("flag_duplicate", "flag_future_date", "flag_recovery_before_purchase")


def _flag(records: pd.DataFrame, column: str) -> np.ndarray:
    """Boolean array of a reader flag column (all False when the column is absent)."""
    if column not in records.columns:
        return np.zeros(len(records), dtype=bool)
    return records[column].to_numpy(dtype=bool, na_value=False)


def countable(records: pd.DataFrame) -> np.ndarray:
    """Boolean array: the records that count as guns, i.e. all but repeats of a trace record
    already seen (``flag_duplicate``: every occurrence after the first)."""
    return ~_flag(records, "flag_duplicate")


#: The record columns :func:`build_tables` and :func:`findings` read; the copy without
#: repeated records they work on holds these alone (not trace numbers, models, raw places).
TABLE_COLUMNS = (
    "purchaser_id", "purchaser_label", "purchase_date", "dealer_id", "dealer_name",
    "dealer_ffl", "dealer_place", "dealer_admin1", "recovery_date", "recovery_year",
    "recovery_place", "recovery_admin1", "recovery_lat", "recovery_lon", "crossing_code",
    "route_kind", "weapon_type", "time_to_crime_days", "guns", RECORDS_COLUMN, *FLAGS,
)


def table_records(records: pd.DataFrame) -> pd.DataFrame:
    """:func:`counted` records, only their :data:`TABLE_COLUMNS` (a frame already so is
    returned as it is)."""
    columns = [c for c in TABLE_COLUMNS if c in records.columns]
    return counted(records if len(columns) == len(records.columns) else records[columns])


def counted(records: pd.DataFrame) -> pd.DataFrame:
    """``records`` without repeated trace records and rows of a count table that stand for
    0 guns (the same frame when there are none).

    Every table, findings and layer builder calls it, so a duplicate never counts twice.
    """
    return rows_where(records, countable(records) & (gun_weights(records) > 0))


def rows_where(records: pd.DataFrame, keep: np.ndarray) -> pd.DataFrame:
    """``records[keep]``, or ``records`` itself (no copy of millions of rows) when every row
    is kept."""
    return records if keep.all() else records[keep]


def gun_weights(records: pd.DataFrame) -> np.ndarray:
    """Guns each record stands for (int64): its ``guns`` (a count table's count column; the
    reader sets 1 per trace record), else 1. Every count in every table, layer and finding
    is a sum of these weights, so a count table needs no row repetition."""
    if "guns" not in records.columns:
        return np.ones(len(records), dtype=np.int64)
    return records["guns"].to_numpy(dtype=np.int64, na_value=0)


def record_weights(records: pd.DataFrame) -> np.ndarray:
    """Input records each row stands for (int64): :data:`RECORDS_COLUMN` where a chunked
    read collapsed records (:mod:`geoflow.chunked`), else 1."""
    if RECORDS_COLUMN not in records.columns:
        return np.ones(len(records), dtype=np.int64)
    return records[RECORDS_COLUMN].to_numpy(dtype=np.int64)


def weighted_count(codes: np.ndarray, weights: np.ndarray, n: int) -> np.ndarray:
    """Sum of ``weights`` per code 0..n-1 (int64); codes < 0 are left out. Unit weights (a
    trace file: one gun a record) are counted without float sums (a million records: 32
    -> 8 ms)."""
    codes, weights = _rows_at(codes >= 0, codes, weights)  # no copies when none is left out
    if (weights == 1).all():
        return np.bincount(codes, minlength=n).astype(np.int64, copy=False)
    return np.bincount(codes, weights=weights, minlength=n).round().astype(np.int64)


def unplace_duplicates(records: pd.DataFrame) -> pd.DataFrame:
    """``records`` (with ``placed``/``unplaced_reason``) where repeated trace records are
    unplaced with reason :data:`DUPLICATE_REASON`, so ``rows_valid = rows_placed +
    rows_unplaced`` holds and the guns of the flows add up to ``rows_placed``."""
    duplicate = _flag(records, "flag_duplicate")
    if not duplicate.any():
        return records
    out = records.copy(deep=False)  # copy-on-write: the caller's frame is never changed
    out["placed"] = records["placed"].to_numpy(dtype=bool) & ~duplicate
    reason = out["unplaced_reason"].astype("string")
    out["unplaced_reason"] = reason.mask(pd.Series(duplicate, index=out.index),
                                         DUPLICATE_REASON)
    return out


def flag_counts(records: pd.DataFrame) -> dict[str, int]:
    """Number of records carrying each reader quality flag (``flag_duplicate``,
    ``flag_future_date``, ``flag_recovery_before_purchase``), for the manifest."""
    weights = record_weights(records)
    return {column: int(weights[_flag(records, column)].sum()) for column in FLAGS}


def iso_dates(values: pd.Series) -> pd.Series:
    """Datetimes → ``YYYY-MM-DD`` strings (NA when missing); each distinct day is formatted
    once (numpy's C formatter) and taken by code: a million records hold a few thousand days."""
    codes, days = day_codes(pd.to_datetime(values).to_numpy(dtype="datetime64[ns]"))
    text = pd.array(days.astype(str), dtype="string")
    return pd.Series(text.take(codes, allow_fill=True), index=values.index)


def day_codes(dates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, days)``: the distinct days of ``dates`` (datetime64, ascending, as
    datetime64[D]) and each date's position among them (−1: NaT). Days are told apart by
    their offset from the first (datetime64[ns] spans at most 213,504 days), not hashed; the
    years of a million dates from their distinct days: 54 -> 24 ms."""
    day = dates.astype("datetime64[D]").view(np.int64)
    known = ~np.isnat(dates)
    codes = np.full(len(day), -1, dtype=np.int64)
    if not known.any():
        return codes, np.array([], dtype="datetime64[D]")
    first = day[known].min()
    offset = day[known] - first
    used = np.zeros(int(offset.max()) + 1, dtype=bool)
    used[offset] = True
    codes[known] = (np.cumsum(used) - 1)[offset]
    return codes, (first + np.flatnonzero(used)).astype("datetime64[D]")


def hex_digits(octets: np.ndarray, width: int) -> np.ndarray:
    """The first ``width`` (even) lower-case hex digits of each row of ``octets`` (uint8,
    n × bytes), as ASCII codes (uint8, n × width)."""
    head = octets[:, : width // 2]
    digits = np.empty((len(octets), width), dtype=np.uint8)
    digits[:, 0::2], digits[:, 1::2] = head >> 4, head & 15
    # ASCII in place: "0" is 48, and "a" (97) comes 39 after "9" + 1 (a look-up table
    # indexed by every digit took three times as long)
    digits += ord("0")
    digits += (digits > ord("9")) * np.uint8(ord("a") - ord("9") - 1)
    return digits


def ascii_text(prefix: bytes, codes: np.ndarray, lengths: np.ndarray | None = None
               ) -> pa.Array:
    """Arrow strings ``prefix`` + the first ``lengths`` (default: all) ASCII ``codes`` of each
    row (uint8, n × width), built from bytes: ids by the million without a Python string
    per id."""
    n, width = codes.shape
    text = np.empty((n, len(prefix) + width), dtype=np.uint8)
    text[:, :len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
    text[:, len(prefix):] = codes
    offsets = np.zeros(n + 1, dtype=np.int64)
    if lengths is None:
        offsets[1:] = np.arange(1, n + 1) * text.shape[1]
        data = text
    else:
        offsets[1:] = np.cumsum(lengths + len(prefix))
        data = text[np.arange(text.shape[1]) < (lengths + len(prefix))[:, None]]
    return pa.Array.from_buffers(pa.large_string(), n, [None, pa.py_buffer(offsets),
                                                        pa.py_buffer(np.ascontiguousarray(data))])


def recode(codes: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``table[codes]``, with −1 (NA) kept as −1 (all of them when ``table`` is empty: a
    column with no value at all)."""
    if len(table) == 0:
        return np.full(len(codes), -1, dtype=np.int64)
    table = np.asarray(table)
    # one look-up: −1 (any code below 0) takes the −1 put after the table
    return np.append(table, table.dtype.type(-1))[np.maximum(codes, -1)]


def from_codes(codes: np.ndarray, categories: pd.Index) -> pd.Categorical:
    """``pd.Categorical.from_codes`` for ``categories`` known to be distinct and ``codes``
    known to be in range (−1: NA): pandas' own check would hash every category through a
    Python string (150 MB and 0.3 s per 2 million names)."""
    fast = getattr(pd.CategoricalDtype, "_from_fastpath", None)  # pandas' internal shortcut
    dtype = fast(categories, False) if fast else pd.CategoricalDtype(categories)
    return pd.Categorical.from_codes(codes, dtype=dtype, validate=False)


def sorted_texts(texts: pa.Array, order: np.ndarray | None = None
                 ) -> tuple[np.ndarray, pd.Index]:
    """``(rank, ordered)``: each text's place among ``texts`` sorted, and the texts in that
    order. Sorted in Arrow (UTF-8: code point order, as pandas sorts text), unless the
    caller knows the ``order`` (positions) that sorts them."""
    if order is None:
        order = pc.sort_indices(texts).to_numpy()
    order = np.asarray(order, dtype=np.int64)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank, pd.Index(pd.array(texts.take(order), dtype="string"))


def used_categories(codes: np.ndarray, categories: pd.Index) -> pd.Categorical:
    """A categorical of ``codes`` (−1: NA) over the ``categories`` they use, in their order:
    with sorted ``categories``, what ``astype("category")`` makes of the values, without a
    value per record."""
    used = np.zeros(len(categories), dtype=bool)
    used[codes[codes >= 0]] = True
    return from_codes(recode(codes, np.cumsum(used) - 1), categories[used])


def categorical_take(values: pd.Series | pd.api.extensions.ExtensionArray,
                     index: np.ndarray) -> pd.Categorical:
    """``values[index]`` (−1: NA) as a categorical over the values taken, sorted: texts of a
    few distinct things (places, ports, dealers) spread to every record."""
    codes, uniques = pd.factorize(pd.array(values, dtype="string"), sort=True)
    return used_categories(recode(index, codes), pd.Index(uniques, dtype="string"))


def take_text(values: pd.Series, rows: np.ndarray) -> pd.api.extensions.ExtensionArray:
    """String array of ``values`` at positions ``rows``; for categoricals only the categories
    are converted, then taken by code (no per-row Python strings)."""
    array = values.array
    if isinstance(array, pd.Categorical):
        categories = pd.array(array.categories.astype(str), dtype="string")
        return categories.take(array.codes[rows], allow_fill=True)
    return pd.array(pd.Series(array.take(rows)).astype("string"), dtype="string")


def distinct_codes(values: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """A code per value (−1: NA) and the distinct values they stand for: a categorical's own
    codes and categories (no hashing of a million texts), else ``pd.factorize`` (first-seen
    order). Unsorted, unlike :func:`_item_codes`: what only matches or counts needs no order
    (sorting a million records' purchaser names took 0.27 s against 0.10)."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        return values.cat.codes.to_numpy(), values.cat.categories
    return pd.factorize(values, use_na_sentinel=True)


def text_codes(values: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """:func:`distinct_codes` of ``values`` read as text: a categorical's own codes and
    categories (no text per record), else the values as strings, factorised."""
    if not isinstance(values.dtype, pd.CategoricalDtype):
        values = values.astype("string")
    return distinct_codes(values)


def positions_in(index: pd.Index, values: pd.Series, rows: np.ndarray | None = None
                 ) -> np.ndarray:
    """Position in ``index`` of each of ``values`` (at ``rows``; default all), −1 for NA or a
    value not in it. Each distinct value is looked up once (a categorical's categories, else
    the distinct texts), not each record's text."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        codes, distinct = values.cat.codes.to_numpy(), values.cat.categories
        codes = codes if rows is None else codes[rows]
    else:
        codes, distinct = pd.factorize(values.array if rows is None else take_text(values, rows))
    return np.append(index.get_indexer(distinct.astype(str)), -1)[codes]  # −1 takes the last


def fill_unknown(values: pd.Series, value: str = UNKNOWN) -> pd.Series:
    """``values`` with NA replaced by ``value``, cheap for categoricals (no per-row strings)."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        if not values.isna().any():
            return values
        if value not in values.cat.categories:
            values = values.cat.add_categories([value])
        return values.fillna(value)
    return values.astype("string").fillna(value)


def is_value(values: pd.Series, value: str) -> np.ndarray:
    """Boolean array: ``values == value`` with NA counted as False."""
    return (values == value).to_numpy(dtype=bool, na_value=False)


def _codes(values: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """Alphabetically ordered factor codes (−1 for NA) so ties break by name: what
    ``pd.factorize(values, sort=True)`` gives, from a categorical's own codes when its
    categories are sorted (no hashing of every record's code: 1M records 15 -> 6 ms)."""
    dtype = values.dtype
    if isinstance(dtype, pd.CategoricalDtype) and _ascending(dtype.categories):
        codes = values.cat.codes.to_numpy(dtype=np.int64)
        used = np.bincount(codes[codes >= 0], minlength=len(dtype.categories)) > 0
        present = pd.Categorical.from_codes(np.flatnonzero(used), dtype=dtype)
        return recode(codes, np.cumsum(used) - 1), pd.CategoricalIndex(present)
    codes, uniques = pd.factorize(values, sort=True, use_na_sentinel=True)
    return np.asarray(codes, dtype=np.int64), pd.Index(uniques)


def top_item(
    group: np.ndarray, item: np.ndarray, n_groups: int, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each group, the most frequent item code, its count and the number of distinct items.

    ``group`` and ``item`` are integer codes per record (−1 = missing item, ignored); with
    ``weights`` (guns per record) counts are sums of weights. Ties go to the lowest item
    code. Returns arrays of length ``n_groups`` (top item −1 when none).

    Past :data:`TOP_ITEM_BLOCK` records the items are taken in ranges of codes, one after
    the other (a (group, item) pair lies in one range): the hash table of pairs, the largest
    working memory of the tables, never holds more than a block's.
    """
    keep = item >= 0
    top = np.full(n_groups, -1, dtype=np.int64)
    top_count = np.zeros(n_groups, dtype=np.int64)
    distinct = np.zeros(n_groups, dtype=np.int64)
    if not keep.any():
        return top, top_count, distinct
    alone = alone_in_group(group, keep, n_groups)
    if alone is not None:  # a group's only item is its top: the others are sorted
        at = group[alone]
        top[at] = item[alone]
        top_count[at] = 1 if weights is None else weights[alone]
        distinct[at] = 1
        keep &= ~alone
        if not keep.any():
            return top, top_count, distinct
    width = np.int64(item.max()) + 1
    parts = -(-int(keep.sum()) // TOP_ITEM_BLOCK)
    for low, high in itertools.pairwise(np.linspace(0, width, parts + 1).astype(np.int64)):
        at = keep & (item >= low) & (item < high) if parts > 1 else keep
        part = _top_in(*_rows_at(at, group, item, weights), n_groups, width)
        # ranges in code order: a tie stays with the lower code (the first range with items)
        better = (part[1] > top_count) | ((top < 0) & (part[2] > 0))
        top[better], top_count[better] = part[0][better], part[1][better]
        distinct += part[2]
    return top, top_count, distinct


def _rows_at(at: np.ndarray, *arrays: np.ndarray | None) -> tuple[np.ndarray | None, ...]:
    """Each of ``arrays`` (None stays None) at the rows ``at`` (boolean), or the arrays
    themselves when every row is: no copies of a million codes (10 ms a call)."""
    if at.all():
        return arrays
    return tuple(None if values is None else values[at] for values in arrays)


def alone_in_group(group: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray | None:
    """The ``rows`` (boolean) that are their group's only one among ``rows`` (groups
    0..n-1), or None when such rows cannot be a quarter of ``rows``: then sorting the others
    alone would not pay for this test. A group of one row needs no sort for its top item,
    median or date span (place-level flows: 522,057 of 995,116 placed records alone in
    theirs); groups fewer than a quarter of the rows are never tested."""
    count = int(np.count_nonzero(rows))
    if n * 4 < count or count == 0:
        return None
    codes = group if count == len(rows) else group[rows]
    if int(codes.min()) < 0 or int(codes.max()) >= n:
        return None
    sizes = np.bincount(codes, minlength=n)
    if int(np.count_nonzero(sizes == 1)) * 4 < count:
        return None
    return rows & (sizes[group.clip(0, n - 1)] == 1)


def _top_in(g: np.ndarray, i: np.ndarray, weights: np.ndarray | None, n_groups: int,
            width: np.int64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`top_item` of the records given (every item ≥ 0)."""
    top = np.full(n_groups, -1, dtype=np.int64)
    top_count = np.zeros(n_groups, dtype=np.int64)
    if len(g) == 0:
        return top, top_count, np.zeros(n_groups, dtype=np.int64)
    # (group, item) pairs counted in ascending order (:func:`_pair_counts`), so each group's
    # pairs are contiguous, items ascending: its highest count by one reduceat, and the first
    # pair with it holds the lowest code; with weights, guns
    pairs, counts = _pair_counts(g * width + i, weights)
    pg, pi = pairs // width, pairs % width
    del pairs
    distinct = np.bincount(pg, minlength=n_groups)
    starts = np.flatnonzero(np.r_[True, pg[1:] != pg[:-1]])
    top_count[pg[starts]] = np.maximum.reduceat(counts, starts)
    best = np.flatnonzero(counts == top_count[pg])
    best_group = pg[best]
    first = best[np.r_[True, best_group[1:] != best_group[:-1]]]
    top[pg[first]] = pi[first]
    return top, top_count, distinct


def _pair_counts(keys: np.ndarray, weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ``keys`` (≥ 0, ascending) and how many records (or guns, with ``weights``)
    carry each. Keys fewer than the records (state pairs, ports …) are counted in place
    (``np.bincount``); others are sorted (numpy's sort of integers is several times quicker
    than hashing them: 0.03 s against 0.15–0.2 s for a million)."""
    if len(keys) and keys.max() < max(len(keys), 1 << 16):
        present = np.bincount(keys)
        pairs = np.flatnonzero(present)
        sums = present if weights is None else weighted_count(keys, weights, len(present))
        return pairs, sums[pairs].astype(np.int64)
    if len(keys) == 0:
        return keys.astype(np.int64), np.zeros(0, dtype=np.int64)
    unit = weights is None or (weights == 1).all()  # one gun a record: no order to carry
    order = None if unit else stable_order(keys)
    keys = sorted_keys(keys) if unit else keys[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    counts = (np.diff(np.append(starts, len(keys))) if unit
              else np.add.reduceat(weights[order].astype(np.int64, copy=False), starts))
    return keys[starts], counts


def sorted_keys(keys: np.ndarray) -> np.ndarray:
    """``np.sort(keys)`` for integer keys ≥ 0 (int64); keys under 2³² are sorted as 32-bit
    numbers, which numpy's vectorised sort orders about 1.7 times as fast (1M: 51 -> 31 ms:
    the state tables' (state, purchaser) pairs, most medians' (group, value) pairs)."""
    if len(keys) and int(keys.max()) < 1 << 32 and int(keys.min()) >= 0:
        return np.sort(keys.astype(np.uint32)).astype(np.int64)
    return np.sort(keys)


def stable_order(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` for keys ≥ 0, five times quicker: each key with its
    position in the low digits, one sort of plain integers (numpy's is vectorised); an
    argsort only where key × length would pass int64. Keys under 2¹⁶ (a few thousand places,
    ports, states) take numpy's radix sort of 16-bit numbers: 1M keys, 55 -> 7 ms."""
    n = len(keys)
    high = int(keys.max()) if n else 0
    if n == 0 or high >= np.iinfo(np.int64).max // n:
        return np.argsort(keys, kind="stable")
    if high < 1 << 16 and int(keys.min()) >= 0:
        return np.argsort(keys.astype(np.uint16), kind="stable")
    return np.sort(keys * n + np.arange(n, dtype=np.int64)) % n


def weighted_median(group: np.ndarray, values: np.ndarray, weights: np.ndarray,
                    n: int) -> np.ndarray:
    """Median of ``values`` per group 0..n-1, each value counted ``weights`` times (NaN
    values and zero weights left out; NaN for an empty group). With unit weights it is the
    ordinary median (the two middle values averaged)."""
    out = np.full(n, np.nan)
    ok = np.isfinite(values) & (weights > 0)
    if not ok.any():
        return out
    alone = alone_in_group(group, ok, n)
    if alone is not None:  # a group's only value is its median: the others are sorted
        out[group[alone]] = values[alone]
        ok &= ~alone
        if not ok.any():
            return out
    codes, distinct = _value_codes(values[ok])
    if n * len(distinct) <= max(ok.sum(), 1 << 16):  # a small (group, value) table
        table = _median_by_value(group[ok], codes, distinct, weights[ok], n)
        return np.where(np.isnan(table), out, table)  # with the groups of one value
    # each group's values in ascending order: the (group, value rank) keys sorted, with the
    # records' weights in the same order
    width, weights = len(distinct), weights[ok]
    keys = group[ok] * width + codes
    del codes
    if (weights == 1).all():  # one gun a record: the middle one or two of each group's run
        keys = sorted_keys(keys)
        sizes = np.bincount(keys // width, minlength=n)
        start, has = np.cumsum(sizes) - sizes, sizes > 0
        lo, hi = (start + (sizes - 1) // 2)[has], (start + sizes // 2)[has]
        out[has] = (distinct[keys[lo] % width] + distinct[keys[hi] % width]) / 2
        return out
    order = stable_order(keys)
    keys, weights = keys[order], weights[order]
    g, v, w = keys // width, distinct[keys % width], weights.astype(float)
    del keys
    total = np.bincount(g, weights=w, minlength=n)
    cum = np.cumsum(w)
    before = np.r_[0.0, cum][np.searchsorted(g, np.arange(n), side="left")]
    within = cum - before[g]
    half = total[g] / 2
    reached = np.flatnonzero(within >= half)
    reached_group = g[reached]  # ascending: each group's first is where the group changes
    first = np.flatnonzero(np.r_[True, reached_group[1:] != reached_group[:-1]])
    groups, lo = reached_group[first], reached[first]
    exact = (within[lo] == half[lo]) & (lo + 1 < len(v))
    hi = np.where(exact, np.minimum(lo + 1, len(v) - 1), lo)
    out[groups] = (v[lo] + v[hi]) / 2
    return out


def _value_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes of finite ``values`` over ascending values they index (``pd.factorize(values,
    sort=True)``). Whole numbers of days within a range of :data:`DENSE_VALUES` are coded by
    their offset from the smallest (no hashing; values in between that do not occur are
    listed too, which the medians skip)."""
    low, high = (float(values.min()), float(values.max())) if len(values) else (0.0, 0.0)
    if high - low < DENSE_VALUES and bool((values == np.floor(values)).all()):
        return (values - low).astype(np.int64), low + np.arange(int(high - low) + 1, dtype=float)
    return pd.factorize(values, sort=True)


def _median_by_value(group: np.ndarray, codes: np.ndarray, distinct: np.ndarray,
                     weights: np.ndarray, n: int) -> np.ndarray:
    """:func:`weighted_median` from a table of guns per (group, distinct value): ``codes``
    index the ascending ``distinct`` values (days to crime: a few thousand among millions
    of records), weights are positive. The median is the first value whose running total
    reaches half the group's, averaged with the next value present when it is exactly
    half."""
    width = len(distinct)
    table = np.bincount(group * width + codes, weights=weights.astype(float),
                        minlength=n * width).reshape(n, width)
    running = np.cumsum(table, axis=1)
    half = running[:, -1:] / 2
    lo = np.minimum((running < half).sum(axis=1), width - 1)
    hi = np.minimum((running <= half).sum(axis=1), width - 1)  # the next value present
    return np.where(running[:, -1] > 0, (distinct[lo] + distinct[hi]) / 2, np.nan)


class GroupStats:
    """Per-group figures shared by flows, dealers, recoveries and the tables: guns, distinct
    purchasers and the top purchaser's guns at once; the top purchaser's label, the purchase
    span and the median time to crime when first read (the state tables and the recoveries
    read few of them: a batch entity's ~4 ms)."""

    def __init__(self, records: pd.DataFrame, group: np.ndarray, n_groups: int) -> None:
        self._records, self._group, self._index = records, group, pd.RangeIndex(n_groups)
        weights = gun_weights(records)
        self.guns = weighted_count(group, weights, n_groups)
        self._pid, self._ids = _item_codes(records["purchaser_id"])
        self._top, self.top_purchaser_guns, self.purchasers = top_item(
            group, self._pid, n_groups, weights)

    @cached_property
    def top_purchaser(self) -> pd.Series:
        """The label of each group's top purchaser (NA when none)."""
        return pd.Series(_labels_of(self._top, self._pid, self._ids, self._records),
                         index=self._index)

    @cached_property
    def _spans(self) -> tuple[pd.Series, pd.Series, pd.Series]:
        """First and last purchase and median time to crime (:func:`_span_and_median`)."""
        return _span_and_median(self._records, self._group, self._index)

    @cached_property
    def first_purchase(self) -> pd.Series:
        return iso_dates(self._spans[0])

    @cached_property
    def last_purchase(self) -> pd.Series:
        return iso_dates(self._spans[1])

    @cached_property
    def median_ttc(self) -> pd.Series:
        return self._spans[2].astype(float)


def group_stats(records: pd.DataFrame, group: np.ndarray, n_groups: int) -> GroupStats:
    """Guns, distinct purchasers, top purchaser (label), purchase span and median time to crime.

    ``group`` holds a code 0..n_groups-1 per record. Purchasers are counted by
    ``purchaser_id``; the top one is shown by ``purchaser_label`` (else the id).
    """
    return GroupStats(records, group, n_groups)


def _span_and_median(
    records: pd.DataFrame, group: np.ndarray, index: pd.RangeIndex, rows: np.ndarray | None = None
) -> tuple[pd.Series, pd.Series, pd.Series]:
    """First and last purchase date and median time to crime per group (one grouper).

    The median leaves out impossible intervals (recovery before purchase, flagged by the
    reader as ``flag_recovery_before_purchase``) as it does missing dates. Plain numpy over
    the group codes for the dates: a batch calls this a few times per entity, where pandas'
    named aggregation costs more to set up than to run."""
    dates = as_datetimes(records["purchase_date"])
    ttc = possible_ttc(records)
    weights = gun_weights(records)
    if rows is not None:
        dates, ttc, weights = dates[rows], ttc[rows], weights[rows]
    n = len(index)
    inside = (group >= 0) & (group < n)
    if not inside.all():  # codes outside 0..n-1 left out; no copy of millions when none are
        group, dates, ttc, weights = group[inside], dates[inside], ttc[inside], weights[inside]
    first, last = date_span(group, dates, n)
    median = pd.Series(weighted_median(group, ttc, weights, n), index=index)
    return pd.Series(first, index=index), pd.Series(last, index=index), median


def as_datetimes(values: pd.Series) -> np.ndarray:
    """``values`` as datetime64[ns] (the column itself when it is one already: no copy)."""
    if values.dtype == "datetime64[ns]":
        return values.to_numpy()
    return pd.to_datetime(values).to_numpy(dtype="datetime64[ns]")


def date_span(group: np.ndarray, dates: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Earliest and latest of ``dates`` (datetime64[ns], NaT left out) per group 0..n-1;
    NaT for a group without a date."""
    known = ~np.isnat(dates)
    first = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    last = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    seen = np.zeros(n, dtype=bool)
    alone = alone_in_group(group, known, n)
    if alone is not None:  # a group's only date is its first and last
        at = group[alone]
        first[at] = last[at] = dates[alone].view(np.int64)
        seen[at] = True
        known &= ~alone
    if known.all():  # no copy of millions of codes and dates
        g, day = group, dates.view(np.int64)
    else:
        g, day = group[known], dates[known].view(np.int64)
    np.minimum.at(first, g, day)
    np.maximum.at(last, g, day)
    seen |= np.bincount(g, minlength=n) > 0
    nat = np.datetime64("NaT", "ns").view(np.int64)
    return (np.where(seen, first, nat).view("datetime64[ns]"),
            np.where(seen, last, nat).view("datetime64[ns]"))


def possible_ttc(records: pd.DataFrame) -> np.ndarray:
    """Time to crime in days per record, NaN when a date is missing, the recovery comes
    before the purchase, or a date lies in the future (``flag_future_date``): impossible
    intervals are data-entry errors, not fast or slow guns."""
    ttc = records["time_to_crime_days"].to_numpy(dtype=float, na_value=np.nan)
    return np.where((ttc < 0) | _flag(records, "flag_future_date"), np.nan, ttc)


def recovery_keys(records: pd.DataFrame) -> list[pd.Series]:
    """Recovery place identity: matched place name plus coordinates rounded to ~10 m (so
    records placed by bare coordinates are told apart). Shared by the recoveries layer and
    the ``places`` count of ``by_mx_state``."""
    return [
        records["recovery_place"],
        records["recovery_lat"].round(4).rename("_rlat"),
        records["recovery_lon"].round(4).rename("_rlon"),
    ]


def first_seen_codes(keys: list[pd.Series]) -> np.ndarray:
    """Integer code per row for its combination of ``keys`` (NA a value like any other),
    numbered in order of first appearance as ``groupby(keys, sort=False, dropna=False)
    .ngroup()`` numbers them, but one key at a time: pandas' grouper over several keys holds
    a few int64 arrays per key (a gigabyte over six keys at 10M records). The keys' codes
    are combined as digits of one number (a categorical's own codes, no hashing), renumbered
    only where the next digit would overflow and once at the end. From the first renumbering
    on, only the rows that still share a code go on through the keys (a row alone stays
    alone): over many keys, as a chunked read's collapse groups by, most rows are apart after
    a few."""
    n = len(keys[0]) if keys else 0
    codes = np.zeros(n, dtype=np.int64)
    width = 1  # the number of values ``codes`` can take
    alone: tuple[np.ndarray, np.ndarray, int] | None = None  # rows apart, their codes, width
    rows = None  # the rows ``codes`` is for (None: every row)
    for key in keys:
        if rows is not None:
            key = key.iloc[rows]
        if isinstance(key.dtype, pd.CategoricalDtype):  # NA (−1) becomes 0
            own, size = key.cat.codes.to_numpy().astype(np.int64) + 1, len(key.cat.categories) + 1
        elif not key.count():  # no value at all (coordinates of a file that gives none)
            continue  # one value for every row: it parts no rows
        else:
            own, uniques = pd.factorize(key, use_na_sentinel=False)
            size = max(len(uniques), 1)
        if width > np.iinfo(np.int64).max // size:  # renumber before the digits overflow
            codes = pd.factorize(codes, use_na_sentinel=False)[0].astype(np.int64, copy=False)
            width = int(codes.max(initial=-1)) + 1
            if rows is None:
                shared = np.bincount(codes, minlength=width)[codes] > 1
                if not shared.any():  # every row apart already: no key can join two
                    return np.arange(n, dtype=np.int64)
                if not shared.all():
                    alone = (np.flatnonzero(~shared), codes[~shared], width)
                    rows = np.flatnonzero(shared)
                    codes, own = codes[rows], own[rows]
        codes = codes * size + own
        width *= size
    if alone is not None:  # the rows apart keep their codes, the others follow them
        together = np.empty(n, dtype=np.int64)
        together[alone[0]] = alone[1]
        together[rows] = alone[2] + pd.factorize(codes, use_na_sentinel=False)[0]
        codes = together
    return (pd.factorize(codes, use_na_sentinel=False)[0].astype(np.int64, copy=False)
            if keys else codes)


def recovery_codes(records: pd.DataFrame) -> np.ndarray:
    """Integer code per distinct recovery place (:func:`recovery_keys`), −1 when a record has
    neither a place name nor coordinates."""
    codes = first_seen_codes(recovery_keys(records))
    unknown = (records["recovery_place"].isna() & records["recovery_lat"].isna()
               & records["recovery_lon"].isna()).to_numpy(dtype=bool)
    return np.where(unknown, -1, codes)


def _item_codes(values: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """Codes in the order of :func:`_codes` (−1 for NA) and the values they stand for, to
    count items within groups: a categorical's own codes when its categories are sorted (no
    factorising of millions of names per call; codes of values not present never occur)."""
    dtype = values.dtype
    if isinstance(dtype, pd.CategoricalDtype) and _ascending(dtype.categories):
        return values.cat.codes.to_numpy(dtype=np.int64), dtype.categories
    return _codes(values)


#: :func:`_ascending` of the categories alive, by ``id``: a batch's entities share their
#: columns' categories (a million records' 580,000 pseudonyms: 1.6 ms to compare, 18 times
#: an entity), and an entry goes when its categories do.
_ASCENDING: dict[int, tuple[weakref.ref, bool]] = {}


def _ascending(index: pd.Index) -> bool:
    """``index.is_monotonic_increasing``, for text compared in Arrow: pandas' own check
    builds and keeps a hash table of Python strings (about 180 MB for 2.5 million
    pseudonyms, held as long as the categories live). Once per categories object."""
    key = id(index)
    known = _ASCENDING.get(key)
    if known is not None and known[0]() is index:
        return known[1]
    if isinstance(index.dtype, pd.StringDtype) and index.dtype.storage == "pyarrow":
        text = pa.array(index.array)
        ascending = len(text) < 2 or bool(pc.all(pc.less_equal(text[:-1], text[1:])).as_py())
    else:
        ascending = bool(index.is_monotonic_increasing)
    _ASCENDING[key] = (weakref.ref(index, lambda _, key=key: _ASCENDING.pop(key, None)),
                       ascending)
    return ascending


def _labels_of(wanted: np.ndarray, codes: np.ndarray, ids: pd.Index,
               records: pd.DataFrame, items: np.ndarray | None = None
               ) -> pd.api.extensions.ExtensionArray:
    """Display label of each purchaser code in ``wanted`` (−1: NA) for purchaser ``codes``
    per record over ``ids``: the id itself when ``purchaser_label`` is the id (pseudonyms),
    else the first label seen with the code (:func:`_first_labels`). ``items``: the codes
    are cells (:func:`entity_cells`), each of the purchaser ``items[code]``."""
    labels = records.get("purchaser_label")
    if labels is not None and not _same_values(labels, records["purchaser_id"]):
        return _first_labels(wanted, codes, labels)
    if items is not None:
        wanted = np.where(wanted >= 0, items[np.maximum(wanted, 0)], -1)
    return pd.array(ids, dtype="string").take(wanted, allow_fill=True)


def _same_values(a: pd.Series, b: pd.Series) -> bool:
    """``a.equals(b)``, by their codes alone when both are categoricals of one dtype (the
    labels of a pseudonymised run are the id column itself: no hashing of every record)."""
    if isinstance(a.dtype, pd.CategoricalDtype) and a.dtype is b.dtype:
        return bool(np.array_equal(a.cat.codes.to_numpy(), b.cat.codes.to_numpy()))
    return a.equals(b)


def _first_labels(wanted: np.ndarray, codes: np.ndarray, labels: pd.Series
                  ) -> pd.api.extensions.ExtensionArray:
    """For each code in ``wanted`` (−1: NA), the label of the first record with that code
    (``codes`` per record), as text; only the wanted codes are looked up."""
    valid = np.flatnonzero(codes >= 0)
    firsts = pd.Series(codes[valid]).drop_duplicates(keep="first")  # hashing, no sort
    at = pd.Series(valid[firsts.index.to_numpy()], index=firsts.to_numpy())
    rows = at.reindex(wanted, fill_value=-1).to_numpy(dtype=np.int64)
    return labels.array.take(rows, allow_fill=True).astype("string")


def _state_codes(records: pd.DataFrame, column: str) -> tuple[np.ndarray, pd.Index]:
    return _codes(fill_unknown(records[column]))


def _share(guns: np.ndarray, owner: np.ndarray | None = None) -> np.ndarray:
    """Each row's share of the guns of all rows (with ``owner``: of its owner's rows)."""
    if owner is None:
        total = guns.sum()
        return np.round(guns / total, 6) if total else np.zeros(len(guns))
    totals = np.bincount(owner, weights=guns)[owner]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.round(guns / totals, 6), 0.0)


def entity_cells(records: pd.DataFrame, by: str | None, group: np.ndarray, n: int
                 ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """With ``by`` (a column of ``records``: a code per record, such as a batch's entity):
    each record's (code, group) cell, numbered in that order, and each cell's code and
    group, so a table of cells holds each code's table as its records alone give it;
    without ``by``: the groups 0..n-1 as they are, no codes."""
    if not by:
        return group, None, np.arange(n)
    key = np.where(group >= 0, records[by].to_numpy(dtype=np.int64) * n + group, -1)
    used = np.unique(key[key >= 0])
    return np.where(key >= 0, np.searchsorted(used, key), -1), used // n, used % n


def _owned(by: str | None, owner: np.ndarray | None) -> dict[str, np.ndarray]:
    """The ``by`` column of a table of cells (:func:`entity_cells`), or nothing."""
    return {by: owner} if by else {}


def entity_column(records: pd.DataFrame, by: str | None, first: np.ndarray
                  ) -> dict[str, np.ndarray]:
    """The ``by`` column of a layer grouped by it as well (each row's code, read from its
    group's ``first`` record), or nothing without ``by``."""
    return _owned(by, records[by].to_numpy()[first] if by else None)


def _distinct(group: np.ndarray, values: pd.Series, n: int) -> np.ndarray:
    """Distinct non-missing ``values`` per group."""
    return _distinct_codes(group, _codes(values)[0], n)


def _distinct_codes(group: np.ndarray, codes: np.ndarray, n: int) -> np.ndarray:
    """Distinct codes (≥ 0) per group."""
    return top_item(group, codes, n)[2]


def _by_state(
    records: pd.DataFrame,
    column: str,
    state_names: Mapping[str, str] | None,
    columns: Callable[[np.ndarray, int, GroupStats], dict[str, np.ndarray]],
    by: str | None = None,
) -> pd.DataFrame:
    """One row per state of ``column``: ``state``, ``state_name``, ``guns``, ``share_frac`` and
    the ``columns`` computed from (group code per record, number of states, group stats);
    ``by``: one row per state of each code's records (:func:`entity_cells`)."""
    group, states = _state_codes(records, column)
    group, owner, state_of = entity_cells(records, by, group, len(states))
    n = len(state_of)
    stats = group_stats(records, group, n)
    states = states[state_of]
    table = pd.DataFrame(
        {
            "state": states.astype("string"),
            "state_name": [(state_names or {}).get(s, s) for s in states],
            "guns": stats.guns,
            "share_frac": _share(stats.guns, owner),
            **columns(group, n, stats),
            **_owned(by, owner),
        }
    )
    return _sorted(table)


def by_us_state(
    records: pd.DataFrame, *, state_names: Mapping[str, str] | None = None,
    by: str | None = None,
) -> pd.DataFrame:
    """Source states (``dealer_admin1``; ``unknown`` when not geocoded): guns, share, dealers,
    purchasers, median time to crime. Sorted by guns. ``by``: see :func:`entity_tables`."""
    records = counted(records)
    return _by_state(records, "dealer_admin1", state_names, lambda group, n, stats: {
        "dealers": _distinct(group, records["dealer_id"], n),
        "purchasers": stats.purchasers,
        "median_time_to_crime_days": stats.median_ttc.to_numpy(),
    }, by)


def by_mx_state(
    records: pd.DataFrame, *, state_names: Mapping[str, str] | None = None,
    by: str | None = None,
) -> pd.DataFrame:
    """Recovery states (ISO 3166-2, ``unknown`` when not geocoded): guns, share, distinct
    recovery places (:func:`recovery_keys`), purchasers. Sorted by guns. ``by``: see
    :func:`entity_tables`."""
    records = counted(records)
    return _by_state(records, "recovery_admin1", state_names, lambda group, n, stats: {
        "places": _distinct_codes(group, recovery_codes(records), n),
        "purchasers": stats.purchasers,
    }, by)


def state_matrix(records: pd.DataFrame, *, by: str | None = None) -> pd.DataFrame:
    """Guns per (US source state, Mexican recovery state), long form, sorted by guns.
    ``by``: see :func:`entity_tables`."""
    records = counted(records)
    us, us_names = _state_codes(records, "dealer_admin1")
    mx, mx_names = _state_codes(records, "recovery_admin1")
    width = max(len(mx_names), 1)
    pair, owner, pair_of = entity_cells(records, by, us * width + mx, len(us_names) * width)
    cells, guns = _pair_counts(pair, gun_weights(records))
    pairs = pair_of[cells]
    table = pd.DataFrame({
        "us_state": pd.array(us_names.to_numpy()[pairs // width], dtype="string"),
        "mx_state": pd.array(mx_names.to_numpy()[pairs % width], dtype="string"),
        "guns": guns,
        **_owned(by, None if owner is None else owner[cells]),
    })
    return table.sort_values(
        ["guns", "us_state", "mx_state"], ascending=[False, True, True], kind="stable"
    ).reset_index(drop=True)


def _sorted(table: pd.DataFrame) -> pd.DataFrame:
    first = table.columns[0]
    return table.sort_values(
        ["guns", first], ascending=[False, True], kind="stable"
    ).reset_index(drop=True)


def first_rows(group: np.ndarray, n: int) -> np.ndarray:
    """Position of the first record of each group 0..n-1 (every group must occur)."""
    if len(group) and group.dtype.kind == "i" and group.min() >= 0:
        # codes numbered in order of first appearance (a groupby's, first_seen_codes'):
        # each first appears where it exceeds every code before it, and no sort is needed
        before = np.empty_like(group)
        before[0] = -1
        np.maximum.accumulate(group[:-1], out=before[1:])
        first = np.flatnonzero(group > before)
        if len(first) == n:
            return first
        if group.max() < max(4 * len(group), 1 << 16):  # other dense codes (sorted ones)
            # each code's smallest position (a sort of the records took 15 times as long)
            first = np.full(int(group.max()) + 1, len(group), dtype=np.int64)
            np.minimum.at(first, group, np.arange(len(group)))
            return first[first < len(group)]  # codes that occur, in code order
    _, first = np.unique(group, return_index=True)
    return first


def by_dealer(records: pd.DataFrame, *, by: str | None = None) -> pd.DataFrame:
    """One row per dealer (all valid records): guns, share, purchasers, top purchaser and the
    share of the dealer's guns going to them, median time to crime, purchase span. ``by``:
    see :func:`entity_tables`."""
    records = counted(records)
    group, dealers = _codes(fill_unknown(records["dealer_id"]))
    group, owner, dealer_of = entity_cells(records, by, group, len(dealers))
    n = len(dealer_of)
    stats = group_stats(records, group, n)
    first = first_rows(group, n)
    table = pd.DataFrame(
        {
            "dealer_id": pd.array(dealers.astype("string"), dtype="string")[dealer_of],
            "dealer_name": take_text(records["dealer_name"], first),
            "dealer_ffl": take_text(records["dealer_ffl"], first),
            "dealer_place": take_text(records["dealer_place"], first),
            "dealer_state": take_text(records["dealer_admin1"], first),
            "guns": stats.guns,
            "share_frac": _share(stats.guns, owner),
            "purchasers": stats.purchasers,
            "top_purchaser": stats.top_purchaser.array,
            "top_purchaser_guns": stats.top_purchaser_guns,
            "top_purchaser_share_frac": np.where(  # no purchaser: no share (NaN, as in the layer)
                stats.purchasers > 0, np.round(stats.top_purchaser_guns / stats.guns, 6), np.nan),
            "median_time_to_crime_days": stats.median_ttc.to_numpy(),
            "first_purchase": stats.first_purchase.array,
            "last_purchase": stats.last_purchase.array,
            **_owned(by, owner),
        }
    )
    return _sorted(table)


def by_purchaser(records: pd.DataFrame, *, port_names: Mapping[str, str] | None = None,
                 threshold: int = TRAFFICKER_MIN_GUNS, min_guns: int = 0) -> pd.DataFrame:
    """One row per purchaser (records without a purchaser are left out): guns, whether they
    are tied to ``threshold`` or more guns (``at_or_above_threshold``), distinct dealers, top
    dealer with its guns and share, Herfindahl concentration ``hhi`` over dealers (1 = a
    single store), purchase span, ports named by the records (``known_crossings``) apart from
    ports the route model chose (``modelled_crossings``) and median time to crime.

    Columns (contract): ``purchaser``, ``guns``, ``at_or_above_threshold``, ``dealers``,
    ``top_dealer``, ``top_dealer_guns``, ``top_dealer_share_frac``, ``hhi``, ``first_purchase``,
    ``last_purchase``, ``known_crossings``, ``modelled_crossings``,
    ``median_time_to_crime_days``. Purchasers tied to fewer than ``min_guns`` guns (default
    0: none) are only counted, in ``attrs["left_out"]`` (``min_guns``, ``purchasers``,
    ``guns``): a large input has millions of purchasers with a gun or two, and the published
    table keeps only those at or above ``--min-cell`` (:func:`geoflow.privacy.suppress`).
    """
    table, left_out = _purchasers(records, port_names=port_names, threshold=threshold,
                                  min_guns=min_guns)
    table.attrs["left_out"] = _left_out(left_out, min_guns)
    return table


def _left_out(counts: pd.DataFrame, min_guns: int) -> dict[str, int]:
    """``by_purchaser``'s ``attrs["left_out"]`` from :func:`_purchasers`' counts of what it
    left out (one row, or an entity's rows of a batch's)."""
    return {"min_guns": min_guns, "purchasers": int(counts["purchasers"].sum()),
            "guns": int(counts["guns"].sum())}


def _port_names(ports: pd.DataFrame | None) -> dict[str, str] | None:
    """Port code → name (None without ports)."""
    return None if ports is None else dict(zip(ports["code"], ports["name"], strict=True))


def _purchasers(records: pd.DataFrame, *, port_names: Mapping[str, str] | None,
                threshold: int, min_guns: int, by: str | None = None
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`by_purchaser`'s table and what it left out (``min_guns``, ``purchasers``,
    ``guns``: one row, or with ``by`` one row per code, holding it in ``by``). ``by``: see
    :func:`entity_tables`; a top dealer is named as the code's own first record names it."""
    records = counted(records)
    codes, ids = _item_codes(records["purchaser_id"])  # sorted: ties break by purchaser
    cells, owner_of, purchaser_of = entity_cells(records, by, codes, len(ids))
    guns_all = weighted_count(cells, gun_weights(records), len(purchaser_of))
    present = np.bincount(cells[cells >= 0], minlength=len(purchaser_of)) > 0
    chosen = np.flatnonzero(present & (guns_all >= min_guns))
    n = len(chosen)
    renumber = np.full(len(purchaser_of), -1, dtype=np.int64)
    renumber[chosen] = np.arange(n)
    group_all = recode(cells, renumber)  # −1: no purchaser, or one left out
    rows = np.flatnonzero(group_all >= 0)
    group = group_all[rows]
    labels = _labels_of(chosen, cells, ids, records, items=purchaser_of if by else None)
    guns = guns_all[chosen]
    dealer_all, dealer_ids = _codes(records["dealer_id"])
    dealer = dealer_all[rows]
    weights = gun_weights(records)[rows]
    top, top_count, distinct = top_item(group, dealer, n, weights)
    # Herfindahl index: sum of squared dealer shares per purchaser
    valid = dealer >= 0
    width = max(len(dealer_ids), 1)
    pairs, counts = _pair_counts(group[valid] * width + dealer[valid], weights[valid])
    squares = np.bincount(pairs // width, weights=counts.astype(float) ** 2, minlength=n)
    with_dealer = weighted_count(group[valid], weights[valid], n)
    with np.errstate(invalid="ignore", divide="ignore"):
        hhi = np.where(with_dealer > 0, squares / np.maximum(with_dealer, 1) ** 2, np.nan)
    index = pd.RangeIndex(n)
    first, last, median = _span_and_median(records, group, index, rows)
    owner = None if owner_of is None else owner_of[chosen]
    if owner is not None:  # the top dealer's (code, dealer) cell: named by the code's records
        top = np.where(top >= 0, owner * width + top, -1)
        dealer_all = np.where(dealer_all >= 0,
                              records[by].to_numpy(dtype=np.int64) * width + dealer_all, -1)
    top_names = _first_labels(top, dealer_all,
                              fill_unknown(records["dealer_name"], "(unnamed dealer)"))
    crossings = {f"{kind}_crossings": _crossings_used(records, group_all, n, port_names,
                                                      kind=kind)
                 for kind in ("known", "modelled")}
    del codes, group_all, rows, group, dealer_all, dealer, weights, valid, pairs, counts
    # most guns first, then by purchaser (NA last), as sort_values would: every column is
    # taken in this order once, so no second copy of a table of millions of purchasers
    rank, _ = pd.factorize(labels, sort=True)
    keys = (np.where(rank < 0, n, rank), -guns)
    order = np.lexsort(keys if owner is None else (*keys, owner))
    table = pd.DataFrame(
        {
            "purchaser": labels.take(order),
            "guns": guns[order],
            "at_or_above_threshold": guns[order] >= threshold,
            "dealers": distinct[order],
            "top_dealer": top_names.take(order),
            "top_dealer_guns": top_count[order],
            "top_dealer_share_frac": np.round(top_count / np.maximum(guns, 1), 6)[order],
            "hhi": np.round(hhi, 6)[order],
            "first_purchase": iso_dates(first).array.take(order),
            "last_purchase": iso_dates(last).array.take(order),
            **{name: values.take(order) for name, values in crossings.items()},
            "median_time_to_crime_days": median.to_numpy()[order],
            **_owned(by, None if owner is None else owner[order]),
        }
    )
    left = present & (guns_all < min_guns)
    if owner_of is None:
        left_out = pd.DataFrame({"min_guns": [min_guns], "purchasers": [int(left.sum())],
                                 "guns": [int(guns_all[left].sum())]})
    else:  # per code of the records
        mine = np.unique(records[by].to_numpy(dtype=np.int64))
        at = np.searchsorted(mine, owner_of[left])
        left_out = pd.DataFrame({
            "min_guns": np.full(len(mine), min_guns, dtype=np.int64),
            "purchasers": np.bincount(at, minlength=len(mine)),
            "guns": np.bincount(at, weights=guns_all[left], minlength=len(mine)
                                ).astype(np.int64),
            by: mine})
    return table, left_out


def by_trafficker(records: pd.DataFrame, *, port_names: Mapping[str, str] | None = None,
                  threshold: int = TRAFFICKER_MIN_GUNS,
                  purchasers: pd.DataFrame | None = None) -> pd.DataFrame:
    """Purchasers tied to ``threshold`` (default 10) or more traced guns — a count of guns,
    not proof of trafficking: the columns of :func:`by_purchaser` without
    ``at_or_above_threshold``. ``purchasers`` is a ready :func:`by_purchaser` table."""
    if purchasers is None:
        purchasers = by_purchaser(records, port_names=port_names, threshold=threshold,
                                  min_guns=threshold)
    big = purchasers[purchasers["guns"].to_numpy() >= threshold]
    return big.drop(columns="at_or_above_threshold").reset_index(drop=True)


def _crossings_used(
    records: pd.DataFrame, group: np.ndarray, n: int, port_names: Mapping[str, str] | None,
    *, kind: str,
) -> pd.api.extensions.ExtensionArray:
    """Port names each group's guns went through with ``route_kind == kind`` (``known``: the
    record named the crossing; ``modelled``: the shortest route, not a record), most guns
    first, then port code; joined with ``"; "``, NA when none.

    ``group`` is a code per record (−1 = left out). Vectorised over (group, port) pairs;
    each distinct sequence of ports is joined once (a few hundred among millions of
    purchasers), and the groups hold a code into them until the end.
    """
    code, uniques = _codes(records["crossing_code"])
    keep = (group >= 0) & (code >= 0) & is_value(records["route_kind"], kind)
    if not keep.any():
        return pd.array(pa.nulls(n, pa.large_string()), dtype="string")
    ports = len(uniques)
    pairs, guns = _pair_counts(group[keep] * ports + code[keep], gun_weights(records)[keep])
    t_group, t_code = pairs // ports, pairs % ports
    # per group: more guns first, then code. The three as digits of one number when it fits
    # int64, sorted as plain integers (a lexsort of three keys took several times as long)
    most = int(guns.max())
    if (n + 1) * (most + 1) * ports < np.iinfo(np.int64).max:
        packed = np.sort((t_group * (most + 1) + (most - guns)) * ports + t_code)
        t_group, t_code = packed // ((most + 1) * ports), packed % ports
    else:
        order = np.lexsort((t_code, -guns, t_group))
        t_group, t_code = t_group[order], t_code[order]
    starts = np.r_[0, np.flatnonzero(np.diff(t_group)) + 1]
    rank = np.arange(len(t_group)) - np.repeat(starts, np.diff(np.r_[starts, len(t_group)]))
    names = [(port_names or {}).get(str(c), str(c)) for c in uniques]
    texts: list[str] = []  # one per distinct sequence of ports so far
    sequence = np.full(n, -1, dtype=np.int64)  # each group's sequence (−1: none yet)
    for r in range(int(rank.max()) + 1):  # one step per port added (at most the ports)
        at = rank == r
        g, c = t_group[at], t_code[at]
        step, seen = pd.factorize(np.maximum(sequence[g], 0) * ports + c)  # (sequence, port)
        texts.extend(names[p] if r == 0 else f"{texts[q]}; {names[p]}"
                     for q, p in zip((seen // ports).tolist(), (seen % ports).tolist(),
                                     strict=True))
        sequence[g] = len(texts) - len(seen) + step
    joined = pa.DictionaryArray.from_arrays(pa.array(sequence, mask=sequence < 0),
                                            pa.array(texts, pa.large_string()))
    return pd.array(joined.cast(pa.large_string()), dtype="string")


def by_crossing(
    records: pd.DataFrame, ports: pd.DataFrame | None = None, *, by: str | None = None
) -> pd.DataFrame:
    """Guns per port of entry (records with a crossing), split known vs modelled; most guns
    first, then by code. Ports are looked up by position, not joined (a batch entity's
    table: 3 -> 1.5 ms). ``by``: see :func:`entity_tables`."""
    records = counted(records)
    code, uniques = _codes(records["crossing_code"])  # in code order
    code, owner, code_of = entity_cells(records, by, code, len(uniques))
    weights = gun_weights(records)
    guns = weighted_count(code, weights, len(code_of))
    modelled = weighted_count(code, weights * is_value(records["route_kind"], "modelled"),
                              len(code_of))
    used = np.flatnonzero(guns > 0)
    # ties stay in code order (cells are in code order within their owner): a stable sort
    order = used[np.lexsort((-guns[used], *([owner[used]] if by else [])))]
    codes = pd.array(np.asarray(uniques.astype(str), dtype=object)[code_of[order]],
                     dtype="string")
    name, us_state = _port_info(ports, codes)
    return pd.DataFrame({
        "code": codes,
        "name": name.fillna(pd.Series(codes)).array,
        "us_state": us_state.array,
        "guns": guns[order],
        "guns_known": (guns - modelled)[order],
        "guns_modelled": modelled[order],
        "share_frac": _share(guns, owner)[order],
        **_owned(by, None if owner is None else owner[order]),
    })


def _port_info(ports: pd.DataFrame | None, codes: pd.api.extensions.ExtensionArray
               ) -> tuple[pd.Series, pd.Series]:
    """The name and US state of the port of each of ``codes`` (NA for a code no port has)."""
    if ports is None or len(ports) == 0:
        missing = pd.Series(pd.NA, index=range(len(codes)), dtype="string")
        return missing, missing
    at = pd.Index(ports["code"].astype(str)).get_indexer(np.asarray(codes, dtype=object))
    found, rows = at >= 0, np.maximum(at, 0)

    def column(name: str) -> pd.Series:
        values = pd.Series(ports[name].astype("string").array.take(rows))
        return values.mask(~found)

    return column("name"), column("us_state")


def by_year(records: pd.DataFrame, *, by: str | None = None) -> pd.DataFrame:
    """Guns purchased and recovered per calendar year, by weapon type (``unknown`` if blank).
    Counted over (year, type) codes in numpy: a batch entity's table costs no groupby.
    ``by``: see :func:`entity_tables`."""
    records = counted(records)
    raw, uniques = _codes(fill_unknown(records["weapon_type"]))
    # case-insensitive types: re-factorize the (few) distinct spellings, then map the codes
    lower, types = pd.factorize(pd.Series(uniques.astype(str)).str.lower(), sort=True)
    weapon = lower[raw]
    width = max(len(types), 1)
    weights = gun_weights(records)
    # with ``by``, each (year, type) key is prefixed by its record's code: one span of keys
    # a code, past every year (ascending keys: each code's rows in their order)
    owner = records[by].to_numpy(dtype=np.int64) if by else np.zeros(len(records), np.int64)
    years = {column: _years(records, column) for column in ("purchase_date", "recovery_date")}
    span = width * (int(np.nanmax([np.nanmax(y, initial=0) for y in years.values()])) + 1)
    counted_pairs = []
    for values in years.values():
        known = ~np.isnan(values)
        counted_pairs.append(_pair_counts(
            owner[known] * span + values[known].astype(np.int64) * width + weapon[known],
            weights[known]))
    keys_all = np.union1d(counted_pairs[0][0], counted_pairs[1][0]).astype(np.int64)
    guns = {}
    for name, (keys, sums) in zip(("purchased", "recovered"), counted_pairs, strict=True):
        guns[name] = np.zeros(len(keys_all), dtype=np.int64)
        guns[name][np.searchsorted(keys_all, keys)] = sums
    pairs = keys_all % span
    return pd.DataFrame({
        "year": pairs // width,
        "weapon_type": pd.array(np.asarray(types, dtype=object)[pairs % width],
                                dtype="string"),
        **guns,
        **_owned(by, keys_all // span),
    })


def _years(records: pd.DataFrame, column: str) -> np.ndarray:
    """Calendar year of each record's date ``column`` (float, NaN when unknown); a count
    table's bare year of recovery (``recovery_year``) stands in for a missing recovery date."""
    codes, days = day_codes(as_datetimes(records[column]))  # each distinct day's year once
    years = np.append(days.astype("datetime64[Y]").astype(np.int64) + 1970.0, np.nan)[codes]
    if column == "recovery_date" and "recovery_year" in records.columns:
        bare = records["recovery_year"].to_numpy(dtype=float, na_value=np.nan)
        years = np.where(np.isnan(years), bare, years)
    return years


def build_tables(
    records: pd.DataFrame,
    *,
    ports: pd.DataFrame | None = None,
    state_names: Mapping[str, str] | None = None,
    trafficker_min_guns: int = TRAFFICKER_MIN_GUNS,
    purchaser_min_guns: int = 0,
    given: Mapping[str, pd.DataFrame] | None = None,
) -> dict[str, pd.DataFrame]:
    """All eight tables of DESIGN.md "Outputs", keyed by file stem, before small-count
    suppression (``by_purchaser`` lists every purchaser tied to ``purchaser_min_guns`` or
    more guns and counts the others: see :func:`by_purchaser`). ``given``: tables of these
    records made already (:func:`entity_tables`), taken as they are."""
    records = table_records(records)
    port_names = _port_names(ports)
    given = given or {}
    if "by_purchaser" in given:  # made with the same threshold and floor (entity_tables)
        purchasers = given["by_purchaser"]
        purchasers.attrs["left_out"] = _left_out(given["purchasers_left_out"],
                                                 purchaser_min_guns)
    else:
        purchasers = by_purchaser(records, port_names=port_names,
                                  threshold=trafficker_min_guns, min_guns=purchaser_min_guns)
    made = {
        "by_us_state": lambda: by_us_state(records, state_names=state_names),
        "by_mx_state": lambda: by_mx_state(records, state_names=state_names),
        "state_matrix": lambda: state_matrix(records),
        "by_dealer": lambda: by_dealer(records),
        "by_purchaser": lambda: purchasers,
        "by_trafficker": lambda: by_trafficker(records, threshold=trafficker_min_guns,
                                               purchasers=purchasers),
        "by_crossing": lambda: by_crossing(records, ports),
        "by_year": lambda: by_year(records),
    }
    return {name: given[name] if name in given else make() for name, make in made.items()}


#: The tables a batch makes for all its entities at once (:func:`entity_tables`), and
#: ``purchasers_left_out``, what each entity's ``by_purchaser`` only counts; ``by_trafficker``
#: is each entity's own, cut from its ``by_purchaser``.
ENTITY_TABLES = ("by_us_state", "by_mx_state", "state_matrix", "by_dealer", "by_crossing",
                 "by_year", "by_purchaser")


def entity_tables(records: pd.DataFrame, *, by: str, ports: pd.DataFrame | None = None,
                  state_names: Mapping[str, str] | None = None,
                  trafficker_min_guns: int = TRAFFICKER_MIN_GUNS,
                  purchaser_min_guns: int = 0) -> dict[str, pd.DataFrame]:
    """The :data:`ENTITY_TABLES` of every code of ``records[by]`` (a batch's entities) at
    once, each row holding its code in ``by``: each code's rows, their order and figures are
    those :func:`build_tables` makes of its records alone (:func:`entity_cells`) with the
    same ``trafficker_min_guns`` and ``purchaser_min_guns``."""
    port_names = _port_names(ports)
    purchasers, left_out = _purchasers(records, port_names=port_names,
                                       threshold=trafficker_min_guns,
                                       min_guns=purchaser_min_guns, by=by)
    return {
        "by_us_state": by_us_state(records, state_names=state_names, by=by),
        "by_mx_state": by_mx_state(records, state_names=state_names, by=by),
        "state_matrix": state_matrix(records, by=by),
        "by_dealer": by_dealer(records, by=by),
        "by_crossing": by_crossing(records, ports, by=by),
        "by_year": by_year(records, by=by),
        "by_purchaser": purchasers,
        "purchasers_left_out": left_out,
    }


@dataclass(frozen=True)
class EntityFrames:
    """Layers and tables of every entity of a batch made at once (:func:`entity_frames`):
    ``frames`` (name → frame), ``owners`` (name → each row's entity) and ``codes`` (each of
    the batch's records' entity, −1: none)."""

    codes: np.ndarray
    frames: Mapping[str, pd.DataFrame]
    owners: Mapping[str, np.ndarray]

    def of(self, rows: np.ndarray) -> dict[str, pd.DataFrame]:
        """Name → frame of the entity whose records are at ``rows``."""
        code = self.codes[rows[0]]
        return {name: frame.iloc[np.flatnonzero(self.owners[name] == code)]
                .reset_index(drop=True) for name, frame in self.frames.items()}


def entity_frames(frames: Mapping[str, pd.DataFrame], *, by: str, codes: np.ndarray
                  ) -> EntityFrames:
    """:class:`EntityFrames` of ``frames`` made with ``by`` (their ``by`` column taken out,
    in place, as each row's entity) for a batch whose records' entities are ``codes``."""
    return EntityFrames(codes=codes, frames=frames,
                        owners={name: frame.pop(by).to_numpy() for name, frame in frames.items()})


def plural(n: int, word: str) -> str:
    """``"1 port"``, ``"2,343 ports"``."""
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def _known(value: object) -> str | None:
    """``value`` as text, None when missing (so no ``<NA>`` reaches a sentence)."""
    return None if value is None or pd.isna(value) else str(value)


def _dealer_at(name: object, place: object) -> str:
    """``"Name in Place"``; without the place clause when the place is unknown."""
    text = _known(name) or "an unnamed dealer"
    where = _known(place)
    return f"{text} in {where}" if where else text


def _from_dealer(guns: int, dealer: object, *, of_them: bool = False) -> str:
    """``"9 from Store A"`` (``"9 of them from …"``), or ``"dealer unknown"``."""
    name = _known(dealer)
    if name is None:
        return "dealer unknown"
    return f"{guns:,} {'of them ' if of_them else ''}from {name}"


def crossings_clause(known: object, modelled: object) -> str:
    """``"; crossed at Laredo (known); modelled crossings: Nogales; Douglas"``: ports the
    records name, apart from ports only the route model chose (never stated as fact)."""
    known, modelled = _known(known), _known(modelled)
    text = ""
    if known:
        ports = known.split("; ")
        text += f"; crossed at {_and(ports)} (named in the records)"
    if modelled:
        ports = modelled.split("; ")
        word = "crossing" if len(ports) == 1 else "crossings"
        text += (f"; modelled {word} (shortest route, not a record): {_and(ports)}")
    return text


def _and(items: list[str]) -> str:
    """``"a"``, ``"a and b"``, ``"a, b and c"``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _num(value: object) -> object:
    """JSON-friendly scalar: numpy → Python, NaN/NA → None."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _prolific_sentence(purchasers: int, mostly_one_store: int, min_guns: int) -> str:
    """How many purchasers reach ``min_guns`` and how many bought most of theirs at one
    store, worded for none, one ("1 purchaser …; 1 of them" read wrong) and several."""
    if purchasers == 0:
        return f"No purchaser is tied to {min_guns} or more guns."
    if purchasers == 1:
        return (f"1 purchaser is tied to {min_guns} or more guns, and bought most of them "
                "(more than half) at a single store." if mostly_one_store else
                f"1 purchaser is tied to {min_guns} or more guns; no single store sold them "
                "most of those guns.")
    return (f"{purchasers:,} purchasers are tied to {min_guns} or more guns each; "
            f"{mostly_one_store:,} of them bought most of their guns (more than half) at a "
            "single store.")


def python_values(series: pd.Series) -> list:
    """A column's cells as Python values, None for NA and NaN (numpy's object array of the
    column's own array: a ``Series.astype(object)`` and ``isna`` cost a batch entity's
    layers and tables three times as long)."""
    cells = np.asarray(series.array, dtype=object)
    missing = pd.isna(cells)
    if missing.any():
        cells = cells.copy()  # an object column's array is the column's own memory
        cells[missing] = None
    return cells.tolist()


def _rows(frame: pd.DataFrame, columns: list[str] | None = None) -> list[dict]:
    """Each row of ``frame`` (of its ``columns``) as a dict of Python values, NA as pandas'
    (``_num`` and ``_known`` read both), made column by column: ``itertuples`` and
    ``to_dict("records")`` cost ~1 ms a call, most of a batch entity's findings."""
    columns = list(frame.columns) if columns is None else columns
    values = [frame[column].tolist() for column in columns]
    return [dict(zip(columns, row, strict=True)) for row in zip(*values, strict=True)]


def findings(
    records: pd.DataFrame,
    tables: Mapping[str, pd.DataFrame],
    *,
    min_guns: int = TRAFFICKER_MIN_GUNS,
    top_n: int = 3,
    max_listed: int = 25,
    min_cell: int = 1,
    count_table: bool = False,
) -> list[dict]:
    """Headline findings: each a dict ``id``, ``text`` (one sentence) and ``numbers``.

    With ``count_table`` (rows counting guns, from a published table), findings that need
    trace records — purchasers, time to crime — say "not available in a count table" when
    the table has no purchasers or dates (``numbers`` ``{"available": false}``), not 0.

    Computed from the tables (``by_purchaser`` before suppression, so counts include every
    purchaser), so a reporter can check every figure against the CSVs (the purchasers behind
    the first finding are listed up to ``max_listed``; all are in ``by_trafficker``).
    Purchasers tied to fewer than ``min_cell`` guns are counted but never named.
    """
    records = table_records(records)
    out: list[dict] = []
    purchasers = tables["by_purchaser"]
    big = purchasers[purchasers["guns"] >= min_guns]
    single = big[big["top_dealer_share_frac"] > 0.5]
    named = big[big["guns"] >= min_cell]
    out.append({
        "id": "prolific_purchasers",
        "text": (
            _prolific_sentence(len(big), len(single), min_guns)
            + (" Largest: " + "; ".join(
                f"{r['purchaser']} ({r['guns']:,} guns, "
                f"{_from_dealer(r['top_dealer_guns'], r['top_dealer'])})"
                for r in _rows(named.head(top_n))) + "." if len(named) else "")
        ),
        "numbers": {
            "min_guns": min_guns,
            "purchasers": len(big),
            "mostly_one_store": len(single),
            "guns": int(big["guns"].sum()),
            "listed": min(len(named), max_listed),
            "top": [
                {k: _num(v) for k, v in row.items()}
                for row in _rows(named.head(max_listed), [
                    "purchaser", "guns", "top_dealer", "top_dealer_guns", "top_dealer_share_frac",
                    "known_crossings", "modelled_crossings"])
            ],
        },
    })
    top = _rows(purchasers.head(1))[0] if len(purchasers) else None
    if top is not None and top["guns"] >= min_cell:
        text = (
            f"The most prolific purchaser, {top['purchaser']}, is tied to "
            f"{plural(int(top['guns']), 'gun')}, "
            f"{_from_dealer(int(top['top_dealer_guns']), top['top_dealer'], of_them=True)}"
        ) + crossings_clause(top["known_crossings"], top["modelled_crossings"]) + "."
        out.append({
            "id": "most_prolific_purchaser",
            "text": text,
            "numbers": {
                "purchaser": top["purchaser"],
                "guns": int(top["guns"]),
                "top_dealer": _num(top["top_dealer"]),
                "top_dealer_guns": int(top["top_dealer_guns"]),
                "top_dealer_share_frac": float(top["top_dealer_share_frac"]),
                "known_crossings": _num(top["known_crossings"]),
                "modelled_crossings": _num(top["modelled_crossings"]),
            },
        })
    for finding, table, text in (
            ("top_source_states", "by_us_state", "Top source states (guns sold there, "),
            ("top_recovery_states", "by_mx_state",
             "Top Mexican states of recovery (guns recovered there, ")):
        states = tables[table]
        states = states[states["state"] != UNKNOWN].head(top_n)
        if len(states):
            rows = _rows(states, ["state", "state_name", "guns", "share_frac"])
            listing = ", ".join(
                f"{r['state_name']} ({r['guns']:,}, {r['share_frac']:.0%})" for r in rows)
            out.append({
                "id": finding,
                "text": f"{text}all valid records): {listing}.",
                "numbers": {"states": [{k: _num(v) for k, v in row.items()} for row in rows]},
            })
    dealers = tables["by_dealer"].head(top_n)
    if len(dealers):
        rows = _rows(dealers, ["dealer_id", "dealer_name", "dealer_place", "guns",
                               "top_purchaser_share_frac"])
        listing = ", ".join(
            f"{_dealer_at(r['dealer_name'], r['dealer_place'])} ({r['guns']:,})" for r in rows)
        out.append({
            "id": "top_dealers",
            "text": f"Dealers that sold the most traced guns: {listing}.",
            "numbers": {"dealers": [{k: _num(v) for k, v in row.items()} for row in rows]},
        })
    weights = gun_weights(records)
    raw_ttc = records["time_to_crime_days"].to_numpy(dtype=float, na_value=np.nan)
    impossible = int(weights[raw_ttc < 0].sum())  # recovered before purchase: left out
    # the reader reads a future date as unknown (io._parse_dates): no interval, no year
    future = int(weights[_flag(records, "flag_future_date")].sum())
    ttc = possible_ttc(records)
    known = np.isfinite(ttc)
    with_dates = int(weights[known].sum())
    if with_dates:
        short = int(weights[known & (ttc < TTC_SHORT_DAYS)].sum())
        share = short / with_dates
        excluded = (
            f" {plural(impossible, 'record')} with a recovery date before the purchase date "
            f"{'was' if impossible == 1 else 'were'} left out as impossible."
            if impossible else ""
        ) + (
            f" {plural(future, 'record')} with a date in the future "
            f"{'was' if future == 1 else 'were'} left out as impossible: such dates (and "
            "dates before 1901) count as unknown in every table, layer and finding; the guns "
            "still count."
            if future else ""
        )
        out.append({
            "id": "short_time_to_crime",
            "text": (
                f"{share:.0%} of guns with both dates ({short:,} of {with_dates:,}) were "
                "recovered less than three years after their retail sale, a trafficking "
                "indicator." + excluded
            ),
            "numbers": {"guns_short": short, "guns_with_dates": with_dates,
                        "guns_impossible_dates": impossible,
                        "guns_future_dates": future,
                        "share_frac": round(share, 6), "threshold_days": TTC_SHORT_DAYS,
                        "median_days": float(weighted_median(
                            np.zeros(len(ttc), np.int64), ttc, weights, 1)[0])},
        })
    crossings = tables["by_crossing"].head(top_n)
    if len(crossings):
        rows = _rows(crossings, ["code", "name", "guns", "guns_known", "guns_modelled"])

        def describe(r: dict) -> str:
            kind = ("all modelled" if r["guns_known"] == 0 else
                    "all known" if r["guns_modelled"] == 0 else
                    f"{r['guns_known']:,} known, {r['guns_modelled']:,} modelled")
            return f"{r['name']} ({r['guns']:,}; {kind})"
        listing = ", ".join(describe(r) for r in rows)
        out.append({
            "id": "top_crossings",
            "text": (
                f"Ports of entry carrying the most guns: {listing}. Modelled crossings are the "
                "shortest route dealer → port → recovery, not a record of where guns crossed."
            ),
            "numbers": {"crossings": [{k: _num(v) for k, v in row.items()} for row in rows]},
        })
    if count_table:
        named = records[["dealer_name", "dealer_ffl"]].notna().any(axis=None)
        out = _count_table_findings(out, purchasers=len(purchasers) > 0, dates=with_dates > 0,
                                    dealers=bool(named))
    return out


#: What a count table cannot say, per finding id (shown instead of a misleading 0).
NOT_IN_COUNT_TABLE = {
    "prolific_purchasers": "Purchasers: not available in a count table (its rows count guns, "
                           "not the people who bought them).",
    "short_time_to_crime": "Time to crime: not available in a count table (it has no purchase "
                           "and recovery dates per gun).",
    "top_dealers": "Dealers: not available in a count table that names no dealer.",
}


def _count_table_findings(out: list[dict], *, purchasers: bool, dates: bool,
                          dealers: bool) -> list[dict]:
    """``out`` with the purchaser, time-to-crime and dealer findings of a count table that
    lacks purchasers / dates / dealers replaced by a "not available in a count table"
    sentence."""
    missing = {"prolific_purchasers": not purchasers, "short_time_to_crime": not dates,
               "top_dealers": not dealers}
    kept = [item for item in out if not missing.get(item["id"])
            and not (item["id"] == "most_prolific_purchaser" and not purchasers)]
    notes = [{"id": key, "text": NOT_IN_COUNT_TABLE[key], "numbers": {"available": False}}
             for key, gone in missing.items() if gone]
    return notes + kept


#: How the findings of one entity's output set (``--per``) name their scope.
_SCOPES = {"state": "guns sold in {label}", "mx-state": "guns recovered in {label}",
           "trafficker": "{label}'s guns", "dealer": "guns sold by {label}"}
#: National findings an entity's own summary replaces (about one purchaser, they would only
#: count again the purchaser the summary describes).
_REPLACED = {"state": {"top_source_states"}, "mx-state": {"top_recovery_states"},
             "trafficker": {"prolific_purchasers", "most_prolific_purchaser"},
             "dealer": {"top_dealers"}}


def entity_findings(found: list[dict], tables: Mapping[str, pd.DataFrame], *, kind: str,
                    label: str, min_cell: int = 1) -> list[dict]:
    """The findings of one entity's output set (``--per KIND``) as sentences about it: first
    a summary of the entity (``id`` ``entity``), then the national findings that still say
    something, scoped ("Among guns sold in Texas: top source …"). ``tables`` are the entity's
    own (before suppression); purchasers with fewer than ``min_cell`` guns are not named."""
    purchasers = tables["by_purchaser"]
    if kind == "trafficker" and (not len(purchasers) or purchasers["guns"].iloc[0] < min_cell):
        label = "this purchaser"  # fewer than --min-cell guns: counted, never named
    summary = _entity_summary(tables, kind=kind, label=label, min_cell=min_cell)
    scope = _SCOPES[kind].format(label=label)
    out = [summary] if summary else []
    for item in found:
        if item["id"] in _REPLACED[kind]:
            continue
        text = item["text"]
        out.append({**item, "text": f"Among {scope}: {text[:1].lower()}{text[1:]}"})
    return out


def _entity_summary(tables: Mapping[str, pd.DataFrame], *, kind: str, label: str,
                    min_cell: int) -> dict | None:
    """One sentence about the entity itself, with its numbers (None when its table is empty)."""
    table = {"state": "by_us_state", "mx-state": "by_mx_state", "trafficker": "by_purchaser",
             "dealer": "by_dealer"}[kind]
    rows = tables[table]
    if "state" in rows:
        rows = rows[rows["state"] != UNKNOWN]
    if not len(rows):
        return None
    row = rows.iloc[0]
    guns = int(row["guns"])
    were = "was" if guns == 1 else "were"
    if kind == "trafficker":
        who = row["purchaser"] if guns >= min_cell else "This purchaser"
        text = (f"{who} is tied to {plural(guns, 'traced gun')}, "
                f"{_from_dealer(int(row['top_dealer_guns']), row['top_dealer'], of_them=True)} "
                f"({float(row['top_dealer_share_frac']):.0%}), from "
                f"{plural(int(row['dealers']), 'dealer')}, bought "
                f"{_known(row['first_purchase']) or 'on unknown dates'}"
                + (f" to {row['last_purchase']}"
                   if _known(row["last_purchase"]) not in (None, _known(row["first_purchase"]))
                   else "")
                + crossings_clause(row["known_crossings"], row["modelled_crossings"]) + ".")
        keys = ["purchaser"] * (guns >= min_cell) + [
                "guns", "distinct_dealers", "top_dealer", "top_dealer_guns",
                "top_dealer_share_frac", "first_purchase", "last_purchase", "known_crossings",
                "modelled_crossings"]
    elif kind == "dealer":
        top = int(row["top_purchaser_guns"])
        named = _known(row["top_purchaser"]) if top >= min_cell else None
        text = (f"{_dealer_at(row['dealer_name'], row['dealer_place'])} sold "
                f"{plural(guns, 'traced gun')} to {plural(int(row['purchasers']), 'purchaser')}"
                + (f"; the top purchaser, {named}, bought {top:,} "
                   f"({float(row['top_purchaser_share_frac']):.0%})" if named else "") + ".")
        keys = ["dealer_id", "dealer_name", "dealer_place", "guns", "purchasers",
                "top_purchaser_guns", "top_purchaser_share_frac"] + (
            ["top_purchaser"] if named else [])
    elif kind == "state":  # a count table names no dealer or purchaser: no "by 0 dealers"
        dealers, buyers = int(row["dealers"]), int(row["purchasers"])
        text = (f"{plural(guns, 'traced gun')} {were} first sold in {row['state_name']}"
                + (f", by {plural(dealers, 'dealer')}" if dealers else "")
                + (f" to {plural(buyers, 'purchaser')}" if buyers else "") + ".")
        keys = ["state", "state_name", "guns", "distinct_dealers", "purchasers"]
    else:
        buyers = int(row["purchasers"])
        text = (f"{plural(guns, 'traced gun')} {were} recovered in {row['state_name']}, at "
                f"{plural(int(row['places']), 'place')}"
                + (f"; {plural(buyers, 'purchaser')} bought them" if buyers else "") + ".")
        keys = ["state", "state_name", "guns", "places", "purchasers"]
    # "dealers" is a list of table rows in top_dealers: a count gets its own name here
    row = row.rename({"dealers": "distinct_dealers"})
    return {"id": "entity", "text": text,
            "numbers": {"kind": kind, **{k: _num(row[k]) for k in keys}}}
