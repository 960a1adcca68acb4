"""Orchestration: read → geocode → crossings → pseudonyms (``prepare_records``), then flows →
tables → findings (``analyse``), then files (``write_outputs``). The CLI, batches and the map
all go through here. Filters sit between ``prepare_records`` and ``analyse`` so a batch reads
and geocodes once.

Example
-------
>>> from geoflow.pipeline import RunOptions, run_pipeline, write_outputs
>>> result = run_pipeline("traces.csv", options=RunOptions())      # doctest: +SKIP
>>> write_outputs(result, "maps/traces")                            # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd

from geoflow import __version__
from geoflow.aggregate import (
    RECORDS_COLUMN,
    TABLE_COLUMNS,
    TRAFFICKER_MIN_GUNS,
    EntityFrames,
    build_tables,
    categorical_take,
    counted,
    distinct_codes,
    entity_findings,
    entity_frames,
    entity_tables,
    findings,
    flag_counts,
    gun_weights,
    is_value,
    plural,
    record_weights,
    table_records,
    unplace_duplicates,
)
from geoflow.crossings import unmatched_crossings
from geoflow.export import (
    GENERATOR,
    atomic_output_dir,
    markdown_text,
    write_csv,
    write_flows_parquet,
    write_geojson,
    write_json,
)
from geoflow.flows import (
    DEALER_COLUMNS,
    SEGMENT_KM,
    build_crossings,
    build_dealers,
    build_flows,
    build_recoveries,
    build_states,
    dealer_ids,
    entity_layers,
    flow_geometry,
)
from geoflow.formats import write_analyst_files
from geoflow.privacy import (
    MIN_CELL,
    PseudonymKey,
    as_key,
    list_purchasers,
    pseudonymise,
    suppress,
    suppress_cells,
)
from geoflow.processes import MapProcess, import_map_modules, write_map_files
from geoflow.schema import (
    COMPACT_RATIO,
    DATASET_COLUMN,
    DATE_COLUMNS,
    SYNTHETIC_LABEL,
    marks_synthetic,
)

__all__ = [
    "RunOptions",
    "PreparedRecords",
    "RunResult",
    "UNPLACED_REASONS",
    "place_records",
    "prepare_records",
    "analyse",
    "run_pipeline",
    "write_outputs",
    "findings_markdown",
    "peak_memory_mb",
    "release_memory",
    "arrow_system_pool",
]

log = logging.getLogger("geoflow.pipeline")

UNPLACED_REASONS = (
    "no dealer location",
    "no recovery location",
    "no dealer or recovery location",
    "no port of entry",
    "recovered outside Mexico",
)
#: Columns of unplaced.csv (no purchaser or possessor names: those never leave unmasked).
UNPLACED_COLUMNS = (
    "line", "reason", "guns", "trace_id", "dealer_name", "dealer_city", "dealer_state",
    "dealer_zip", "dealer_geocode_level", "recovery_city", "recovery_state", "recovery_country",
    "recovery_geocode_level",
)
#: Record columns that flows, dealers, recoveries, crossings and states read.
LAYER_INPUT_COLUMNS = (
    "dealer_id", "dealer_name", "dealer_ffl", "dealer_place", "dealer_admin1", "dealer_lon",
    "dealer_lat", "dealer_geocode_level", "dealer_geocode_score", "recovery_place",
    "recovery_admin1", "recovery_lon", "recovery_lat", "recovery_geocode_level",
    "recovery_geocode_score", "recovery_date", "crossing_code", "route_kind", "purchaser_id",
    "purchaser_label", "purchase_date", "time_to_crime_days", "guns", RECORDS_COLUMN,
)
#: The record columns an analysis reads after its filters: a consuming one (``geoflow run``)
#: drops the others at its start, and its :func:`prepare_records` compacts only these.
ANALYSED_COLUMNS = frozenset({*TABLE_COLUMNS, *LAYER_INPUT_COLUMNS, "placed"})
#: Entity columns turned into categoricals once per analysis, so every groupby, factorize and
#: take afterwards works on small integer codes instead of a million strings.
ENTITY_COLUMNS = (
    "purchaser_id", "purchaser_label", "dealer_id", "dealer_name", "dealer_ffl", "dealer_place",
    "dealer_admin1", "dealer_geocode_level", "recovery_place", "recovery_admin1",
    "recovery_geocode_level",
    "crossing_code", "route_kind", "weapon_type",
)
#: ``flows.geojson`` holds place-level flows up to this many; past it (about 40 MB of GeoJSON)
#: it holds the state-level flows (US state → port → Mexican state) and names its level in
#: the top-level ``flow_level`` member; every place-level flow is in ``flows_full.parquet``.
FLOWS_GEOJSON_MAX = 50_000
#: From this many records on, a non-consuming analysis copies the placed records' columns
#: one at a time, deleting each from its working frame (:func:`placed_layer_records`): the
#: memory of a large subset is held once; below it one copy of the columns is cheaper.
COLUMNWISE_ROWS = 100_000
#: From this many placed records on, :func:`write_outputs` draws the map and its stills on a
#: second thread while the data files are written (100,000 records: 0.59-0.66 -> 0.53-0.59
#: s; 50,000: 1.17-1.56 -> 1.16-1.23 s); below it the two threads mostly take turns for the
#: GIL, and drawing first is quicker (the sample's 2,922 records: 0.35-0.41 -> 0.32-0.39 s;
#: its 31 states one after the other, ``scripts/bench_batch.py --jobs 1``: 0.353-0.356 ->
#: 0.285-0.304 s an entity) or as quick (10,000 and 30,000 records).
THREADED_MAP_ROWS = 50_000
#: From this many records on, a whole-file read's tables and findings, then its point layers,
#: are built on a second thread while its flows are (their pandas and Arrow kernels let go of
#: the GIL: 1M records' analysis 3.7 -> 3.1 s; its peak 730 -> 890 MB, under the read's
#: 1,200); below it the two threads would mostly wait on each other. A chunked read builds
#: them first, alone: its peak is the analysis's (10M records: 3.2 -> 4.3 GB with the two
#: together).
THREADED_TABLES_ROWS = 100_000
#: From this many valid records on (and two CPUs), ``geoflow run`` draws the map and its
#: stills in a process of their own (:class:`geoflow.processes.MapProcess`) while this one
#: writes the data files (1M records: export 2.8-3.3 -> 2.2-2.6 s); below it the process's
#: start (2 s of a core) is not hidden by the shorter analysis.
MAP_PROCESS_ROWS = 500_000
#: From this input size on (and two CPUs), ``geoflow run`` starts that process before the read,
#: importing at the lowest priority (1M records: 6.87 -> 6.43 s, six alternated runs); it
#: is ended after the read if the records are fewer than :data:`MAP_PROCESS_ROWS` (the
#: sample's rows: ~250 bytes a record).
MAP_PROCESS_BYTES = 100 << 20

TABLE_NAMES = (
    "by_us_state", "by_mx_state", "state_matrix", "by_dealer", "by_purchaser", "by_trafficker",
    "by_crossing", "by_year",
)


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """Everything that changes what a run computes (the map's looks live in render)."""

    #: None: decided from the dates (:func:`geoflow.io.reads_day_first`)
    dayfirst: bool | None = None
    column_map: Mapping[str, str] | None = None
    geocoder: Any = None
    overrides: Any = None
    flow_level: str = "place"
    show_names: bool = False
    #: a :class:`~geoflow.privacy.PseudonymKey`, raw bytes/text, or None: the user's key
    #: (created on first use; resolved by :func:`prepare_records`)
    pseudonym_key: PseudonymKey | bytes | str | None = None
    today: dt.date | None = None
    #: small-count threshold (``--min-cell``): 1 turns suppression off
    min_cell: int = MIN_CELL
    #: ``by_trafficker`` lists purchasers tied to this many guns or more
    trafficker_min_guns: int = TRAFFICKER_MIN_GUNS
    #: read a CSV in chunks of this many MB (``--chunk-mb``); None: only CSVs of at least
    #: :data:`geoflow.chunked.CHUNKED_MIN_BYTES`. The outputs are the same either way.
    chunk_mb: float | None = None
    #: the XLSX sheet read (``--sheet``); None: the first that names trace columns
    sheet: str | None = None

    def __post_init__(self) -> None:
        if self.flow_level not in ("place", "state"):
            raise ValueError(f"flow_level must be 'place' or 'state', not {self.flow_level!r}")
        for name in ("min_cell", "trafficker_min_guns"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)!r}")

    def describe(self) -> dict:
        """JSON-friendly summary for the manifest (no key; the geocoder by its service name,
        e.g. ``nominatim``, else its class name)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["geocoder"] = ("offline" if self.geocoder is None else
                           getattr(self.geocoder, "name", None) or type(self.geocoder).__name__)
        overrides = self.overrides
        out["overrides"] = (  # a file name only: a path would publish the user's folders
            None if overrides is None
            else Path(overrides).name if isinstance(overrides, (str, Path))
            else f"{type(overrides).__name__} ({len(overrides)} rows)"
            if hasattr(overrides, "__len__") else type(overrides).__name__
        )
        out["column_map"] = dict(self.column_map) if self.column_map else None
        key = self.pseudonym_key
        out["pseudonym_key"] = (as_key(key).describe() if key is not None
                                else {"fingerprint": None, "source": "user key file"})
        out["today"] = self.today.isoformat() if self.today else None
        return out


@dataclass(frozen=True)
class PreparedRecords:
    """Records read, geocoded, routed and pseudonymised once; filter ``records`` freely."""

    records: pd.DataFrame
    rejects: pd.DataFrame
    geocode_report: pd.DataFrame
    source: dict
    timings: dict
    options: RunOptions
    memory: dict = field(default_factory=dict)  # stage → peak resident MB after it
    #: the reader's warnings (line, column, value, reason: unparseable dates, unused column-map
    #: entries …) and the count of each kind, capped lists but complete counts
    warnings: pd.DataFrame = field(default_factory=pd.DataFrame)
    warning_counts: dict = field(default_factory=dict)

    @functools.cached_property
    def valid_counts(self) -> tuple[int, int]:
        """(rows, guns) of every valid record, counted once: each output set of a batch
        reports them, and an entity's work should not grow with the whole input."""
        return (int(record_weights(self.records).sum()),
                int(gun_weights(self.records).sum()))


@dataclass(frozen=True)
class RunResult:
    """Everything a run produces; see docs/internals.md for the columns."""

    options: RunOptions
    #: every flow of the run; past :data:`FLOWS_GEOJSON_MAX` place-level flows (with
    #: ``flows_overview`` then) a plain DataFrame without line objects, each flow's three
    #: points in its coordinate columns (``geoflow.flows.flow_geometry`` draws them)
    flows: gpd.GeoDataFrame | pd.DataFrame
    dealers: gpd.GeoDataFrame
    recoveries: gpd.GeoDataFrame
    crossings: gpd.GeoDataFrame
    states: gpd.GeoDataFrame
    tables: dict[str, pd.DataFrame]
    findings: list[dict]
    rejects: pd.DataFrame
    unplaced: pd.DataFrame
    geocode_report: pd.DataFrame
    manifest: dict
    description: str = ""
    warnings: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: the flows written to flows.geojson when ``flows`` are too many for it (state level),
    #: else None (flows.geojson holds ``flows``)
    flows_overview: gpd.GeoDataFrame | None = None
    #: what the small-count rule withheld (``privacy.suppress``): ``min_cell``, ``enabled``,
    #: ``cells``, ``small_flows``, ``purchasers_not_listed``, ``text`` (legend sentences)
    suppression: dict = field(default_factory=dict)

    @property
    def flows_geojson(self) -> tuple[gpd.GeoDataFrame, str]:
        """The flows for flows.geojson and their level (``place`` or ``state``)."""
        if self.flows_overview is not None:
            return self.flows_overview, "state"
        return self.flows, self.options.flow_level


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far, in MB (0 where the OS does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def release_memory() -> None:
    """Hand memory freed by a stage back to the OS (Arrow's pool, glibc's heap), so the next
    stage starts from what is really in use rather than from the last stage's high-water."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    libc = _glibc()
    if libc is not None:  # not glibc (musl …): nothing to trim
        libc.malloc_trim(0)


#: From this size up, glibc gives an allocation pages of its own, handed back when freed;
#: below it, memory freed is reused. Set, it also keeps glibc from raising its thresholds as
#: a run frees large blocks (the heap then kept ~0.6-1 GB of freed blocks resident at 10M
#: records). A 10M run at 1 MiB: every array of a chunk's million rows was fresh zeroed
#: pages, 14.7 million page faults, 49 s of system time, 121 s in all, peak 3,182 MB; at
#: 32 MiB 7.8 million, 31 s, 106 s, 3,420 MB (8 MiB: 111 s, 3,384 MB; 64: 106 s, 3,472).
LARGE_ALLOCATION_BYTES = 32 << 20
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


#: glibc's trim threshold with :data:`LARGE_ALLOCATION_BYTES` set: the free top of its heap
#: goes back to the OS only past this much. Once the map threshold is fixed, glibc's default
#: is 128 KiB: every array freed at the top goes back and the next one is faulted in again.
#: :func:`release_memory` still trims the heap between stages.
KEEP_FREED_BYTES = 1 << 30
_M_TRIM_THRESHOLD = -1  # glibc's malloc.h


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc on Linux (``mallopt``), else None; loaded once (each
    stage's :func:`release_memory` and a large run's settings share it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl …)
        return None


def page_large_allocations() -> None:
    """Have glibc map every allocation of :data:`LARGE_ALLOCATION_BYTES` or more on its own
    pages for the rest of the process (a large input's run: every large freed array goes
    back to the OS at once), and keep up to :data:`KEEP_FREED_BYTES` of the smaller ones
    freed for reuse (10M records in chunks, two alternated pairs of runs: 143.7 -> 133.3 s
    and 129.8 -> 125.3 s, 18.0 and 17.5 -> 15.9 and 15.4 million page faults, peak 3,413
    and 3,560 -> 3,532 and 3,540 MB). Elsewhere than glibc, a no-op."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, LARGE_ALLOCATION_BYTES)
        libc.mallopt(_M_TRIM_THRESHOLD, KEEP_FREED_BYTES)


#: The same settings for the processes a run starts (glibc reads them as a process starts).
_MALLOC_ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": str(LARGE_ALLOCATION_BYTES),
                       "MALLOC_TRIM_THRESHOLD_": str(KEEP_FREED_BYTES)}


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[None]:
    """While a large input read whole is analysed: glibc serves what is smaller than
    :data:`LARGE_ALLOCATION_BYTES` from memory freed earlier, keeping up to
    :data:`KEEP_FREED_BYTES` of it (:func:`release_memory` still trims between stages),
    instead of fresh zeroed pages for each array and the page faults they cost; so do the
    processes started meanwhile (the map's, the pseudonyms' helpers), through ``MALLOC_*``
    in their environment, restored on leaving. This process keeps the settings. A user's
    own ``MALLOC_*`` settings win; elsewhere than glibc, nothing changes. 1M records, ten
    alternated runs: 6.42 -> 6.16 s, 11.5 -> 11.0 s of CPU, 723k -> 658k page faults, the
    same peak (~1,140 MB)."""
    if _glibc() is None or any(name in os.environ for name in _MALLOC_ENVIRONMENT):
        yield
        return
    page_large_allocations()
    os.environ.update(_MALLOC_ENVIRONMENT)
    try:
        yield
    finally:
        for name in _MALLOC_ENVIRONMENT:
            os.environ.pop(name, None)


@contextlib.contextmanager
def arrow_system_pool() -> Iterator[None]:
    """Allocate Arrow buffers (pandas' text columns) with the C library's ``malloc`` while a
    run works, on Linux unless ``ARROW_DEFAULT_MEMORY_POOL`` names a pool.

    Arrow's default mimalloc pool keeps text columns freed between stages resident in partly
    used segments (about 300 MB after preparing 1,000,000 records); glibc hands them back to
    the OS at :func:`release_memory`. Buffers remember their pool, so restoring the previous
    default afterwards is safe. Also usable as a decorator.
    """
    import pyarrow as pa

    if not sys.platform.startswith("linux") or os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        yield
        return
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


@contextlib.contextmanager
def _stage(name: str, timings: dict[str, float], memory: dict[str, float], *,
           release: bool = True) -> Iterator[None]:
    """Add the seconds a stage took to ``timings[name]`` (a stage may run in parts) and
    record the process's peak memory after it. ``release``: hand the memory the stage freed
    back first (:func:`release_memory`: a few ms with a large input's records in memory, so
    a batch entity's small stages skip it)."""
    clock = time.perf_counter()
    yield
    if release:
        release_memory()
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - clock
    memory[name] = peak_memory_mb()


def _located(records: pd.DataFrame, role: str) -> pd.Series:
    return (records[f"{role}_lat"].notna() & records[f"{role}_lon"].notna()).astype(bool)


def _recovered_abroad(records: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    """Whether each record (of those at ``rows``: the unlocated recoveries) names a recovery
    country other than Mexico (an empty one is Mexico); each distinct country read once."""
    abroad = np.zeros(len(records), dtype=bool)
    if "recovery_country" not in records.columns or not len(rows):
        return abroad
    from geoflow.places import normalise_country

    codes, distinct = distinct_codes(records["recovery_country"].iloc[rows])
    text = pd.Series(distinct, dtype="string").str.strip().fillna("")
    other = ((text != "") & normalise_country(text).fillna("").ne("MX")).to_numpy(dtype=bool)
    abroad[rows] = np.append(other, False)[codes]  # −1 (no country) takes the False put last
    return abroad


def place_records(records: pd.DataFrame) -> pd.DataFrame:
    """Add ``placed`` (bool) and ``unplaced_reason`` (NA when placed).

    A record is placed when both its dealer and recovery site have coordinates and it has a
    port of entry (known or modelled). A recovery in another country than Mexico (its
    ``recovery_country`` given: the geocoder places none there) is ``recovered outside
    Mexico``, not an unknown place.
    """
    dealer = _located(records, "dealer").to_numpy()
    recovery = _located(records, "recovery").to_numpy()
    port = records["crossing_code"].notna().to_numpy(dtype=bool)
    abroad = _recovered_abroad(records, np.flatnonzero(~recovery))
    # the position of each record's reason in UNPLACED_REASONS (−1: placed)
    reason = np.select([abroad, ~dealer & ~recovery, ~dealer, ~recovery, ~port],
                       [4, 2, 0, 1, 3], default=-1)
    out = records.copy(deep=False)  # copy-on-write: the caller's frame is never changed
    out["placed"] = dealer & recovery & port
    out["unplaced_reason"] = categorical_take(pd.Series(UNPLACED_REASONS), reason)
    return out


@arrow_system_pool()
def prepare_records(source: str | Path, *, options: RunOptions | None = None,
                    compact: Collection[str] | None = None) -> PreparedRecords:
    """Read, geocode, assign crossings and add ids (``purchaser_id``, ``possessor_id``,
    ``dealer_id``) and ``placed``/``unplaced_reason``. Real names are kept here so filters can
    match them; :func:`analyse` decides what is shown.

    The text columns of few distinct values become categoricals (:func:`_compact`): all of
    them, or only those in ``compact`` (``geoflow run`` names :data:`ANALYSED_COLUMNS`, as
    its analysis drops the rest: a whole file's read then spends no 0.45 s of CPU a million
    records compacting them)."""
    from geoflow.chunked import CHUNK_BYTES, prepare_chunked, wants_chunks
    from geoflow.counts import to_border
    from geoflow.crossings import assign_crossings, load_ports
    from geoflow.geocode import geocode_traces
    from geoflow.io import read_traces

    options = options or RunOptions()
    # the key is resolved (the user's key created on first use) before any work
    options = replace(options, pseudonym_key=as_key(options.pseudonym_key))
    if wants_chunks(source, options.chunk_mb):
        size = CHUNK_BYTES if options.chunk_mb is None else int(options.chunk_mb * 2**20)
        return prepare_chunked(source, options=options, chunk_bytes=max(size, 1))
    timings: dict[str, float] = {}
    memory: dict[str, float] = {}
    with _stage("read", timings, memory):
        read = read_traces(source, column_map=options.column_map, dayfirst=options.dayfirst,
                           today=options.today, sheet=options.sheet,
                           categorical=FEW_DISTINCT_COLUMNS)
    log.debug("read %s valid records (%s rejected lines) from %s", f"{len(read.records):,}",
              f"{read.source['rows_read'] - len(read.records):,}", source)
    records, rejects, read_source = read.records, read.rejects, dict(read.source)
    warnings, warning_counts = read.warnings, dict(read.warning_counts)
    del read  # its frame would keep columns that later stages replace alive until the end
    with _stage("read", timings, memory, release=False):
        # the texts the next stages group records by become categoricals first (the reader
        # returns most already): each column is hashed once, not again by the geocoder, the
        # dealers' ids and the crossings
        records = _compact(records, only=KEY_TEXT_COLUMNS)
    # the names' pseudonyms (Arrow kernels and hashing processes) and the dealers' ids (Arrow
    # kernels) are made on two more threads while the places are geocoded (pandas: Python)
    # and the crossings assigned; both read only columns as the reader gave them
    names = records[[c for c in ("purchaser_name", "possessor_name") if c in records.columns]]
    dealers = records[[c for c in DEALER_COLUMNS if c in records.columns]]
    with ThreadPoolExecutor(2) as pool:
        named = pool.submit(pseudonymise, names, key=options.pseudonym_key)
        dealt = pool.submit(dealer_ids, dealers)
        del names, dealers
        with _stage("geocode", timings, memory):
            records, report = geocode_traces(records, geocoder=options.geocoder,
                                             overrides=options.overrides)
        log.debug("geocoded %s distinct places", f"{len(report):,}")
        with _stage("crossings", timings, memory):
            ports = load_ports()
            records = assign_crossings(records, ports)
            if read_source.get("count_column"):  # a count table's bare "Mexico": to the border
                records = to_border(records, ports)
            # placing and compacting need no ids: done while the ids' threads finish (1M
            # records: the pseudonyms were still being made as the crossings ended)
            read_columns = list(records.columns)
            records = _compact(unplace_duplicates(place_records(records)), only=compact)
            placing = [c for c in records.columns if c not in read_columns]
            ids = named.result()
            records = records.assign(purchaser_id=ids["purchaser_id"],
                                     possessor_id=ids["possessor_id"], dealer_id=dealt.result())
            del ids
            # the columns in their order as before, the ids ahead of the placing's (no input
            # column has an id's name: the reader keeps those as <name>_input)
            records = records[[*read_columns, "purchaser_id", "possessor_id", "dealer_id",
                               *placing]]
    return PreparedRecords(records=records, rejects=rejects, geocode_report=report,
                           source=read_source, timings=timings, options=options, memory=memory,
                           warnings=warnings, warning_counts=warning_counts)


#: The record texts the geocoder (places), :func:`~geoflow.flows.dealer_ids` and
#: :func:`~geoflow.crossings.assign_crossings` group records by: categoricals as soon as they
#: are read (by the reader, :data:`FEW_DISTINCT_COLUMNS`, or :func:`_compact`). 1M records:
#: 0.2 s of CPU less.
KEY_TEXT_COLUMNS = (*DEALER_COLUMNS, "dealer_zip", "recovery_city", "recovery_state",
                    "recovery_country", "crossing")
#: The text columns read as categoricals (:func:`~geoflow.io.read_traces`): the key ones, and
#: others of few distinct values in any trace file (dates, makes, calibers …): each distinct
#: text is cleaned once, and the dates are parsed from the categories.
FEW_DISTINCT_COLUMNS = (*KEY_TEXT_COLUMNS, *DATE_COLUMNS, "weapon_type", "manufacturer",
                        "model", "caliber", DATASET_COLUMN)


def _compact(records: pd.DataFrame, *, ratio: float = COMPACT_RATIO,
             only: Collection[str] | None = None) -> pd.DataFrame:
    """``records`` with each text column of few distinct values (at most ``ratio`` × rows:
    dealers, places, states, ports, makes, geocode levels …) held as a categorical, so the
    prepared records take memory by distinct entities rather than by records. Values and NA
    are unchanged; unique columns (trace ids, serials, names) stay strings, in one piece
    (:func:`_contiguous`). Columns are factorised on two threads (Arrow's hashing lets go of
    the GIL). ``only``: the columns to look at (None: every text column); the others are
    left as they are."""
    step = max(len(records) // 50_000, 1)

    def compacted(column: str) -> pd.api.extensions.ExtensionArray | None:
        values = records[column]
        sample = values.iloc[::step]  # mostly-unique columns are told by a sample, cheaply
        if step > 1 and sample.nunique() > 0.5 * len(sample):
            return _contiguous(values.array)
        codes, uniques = pd.factorize(values, sort=True)
        if len(uniques) > ratio * len(values):
            return _contiguous(values.array)
        return pd.Categorical.from_codes(codes, dtype=pd.CategoricalDtype(uniques))

    text = [c for c in records.columns if isinstance(records[c].dtype, pd.StringDtype)
            and (only is None or c in only)]
    with ThreadPoolExecutor(2) as pool:
        changes = dict(zip(text, pool.map(compacted, text), strict=True))
    return records.assign(**{c: v for c, v in changes.items() if v is not None})


def _contiguous(values: pd.api.extensions.ExtensionArray
                ) -> pd.api.extensions.ExtensionArray | None:
    """Arrow-backed ``values`` in one chunk (None: they are, or are not Arrow's). Arrow
    takes rows from a text column of many chunks (one per block the reader parsed) by
    joining them all first: 5 ms a column at a million records for a batch entity's rows,
    every entity."""
    import pyarrow as pa

    if getattr(values.dtype, "storage", None) != "pyarrow":
        return None
    text = pa.array(values)
    if not isinstance(text, pa.ChunkedArray) or text.num_chunks <= 1:
        return None
    return pd.array(text.combine_chunks(), dtype=values.dtype)


def _label(records: pd.DataFrame, show_names: bool) -> pd.DataFrame:
    """Add ``purchaser_label``: the real name with ``show_names``, else the pseudonym (the
    very same column, so no copy)."""
    if not show_names:
        return records.assign(purchaser_label=records["purchaser_id"])
    label = records["purchaser_name"].astype("string").where(records["purchaser_id"].notna())
    return records.assign(purchaser_label=label.astype("category"))


def _encode(records: pd.DataFrame) -> pd.DataFrame:
    """``records`` with the entity columns as categoricals (a shallow copy otherwise)."""
    changes = {
        column: records[column].astype("category")
        for column in ENTITY_COLUMNS
        if column in records.columns
        and not isinstance(records[column].dtype, pd.CategoricalDtype)
    }
    return records.assign(**changes)


def _unplaced(records: pd.DataFrame) -> pd.DataFrame:
    """unplaced.csv: the records without a flow, their line, reason and raw places."""
    rows = np.flatnonzero(~records["placed"].to_numpy(dtype=bool))
    if not len(rows):  # most entities of a batch: the empty table, made once (~3 ms each)
        return _no_unplaced(pd.get_option("mode.string_storage")).copy()
    return _unplaced_rows(records, rows)


@functools.lru_cache(maxsize=2)
def _no_unplaced(storage: str) -> pd.DataFrame:
    """unplaced.csv without rows (its text columns in pandas' ``storage``)."""
    return _unplaced_rows(pd.DataFrame(), np.zeros(0, dtype=np.intp))


def _unplaced_rows(records: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    """:func:`_unplaced` of the records at ``rows``, in line order."""
    columns = {}
    for column in UNPLACED_COLUMNS:
        source = {"line": "source_line", "reason": "unplaced_reason"}.get(column, column)
        dtype = "Int64" if column in ("line", "guns") else "string"
        values = (records[source].iloc[rows].to_numpy(dtype=object)
                  if source in records.columns else [pd.NA] * len(rows))
        columns[column] = pd.array(values, dtype=dtype)
    out = pd.DataFrame(columns)
    return out.sort_values("line", kind="stable").reset_index(drop=True)


def _rejects(rejects: pd.DataFrame, show_names: bool) -> pd.DataFrame:
    """rejects.csv: the raw line text may hold names, so it is kept only with show_names."""
    out = rejects.copy()
    if not show_names and "raw" in out:
        out = out.drop(columns="raw")
    return out


def _state_names() -> tuple[gpd.GeoDataFrame, dict[str, str]]:
    from geoflow.shapes import load_states

    states = load_states()
    return states, dict(zip(states["code"], states["name"], strict=True))


def purchaser_floor(options: RunOptions, kind: str | None) -> int:
    """Guns below which ``by_purchaser`` only counts a purchaser: those under both
    --min-cell and the threshold (no finding or table names them), but none in one
    trafficker's own output set (of a ``--per trafficker`` batch: ``kind``), which
    describes them."""
    return 0 if kind == "trafficker" else max(min(options.min_cell,
                                                  options.trafficker_min_guns), 0)


def _tabulate(valid: pd.DataFrame, *, options: RunOptions, entity: tuple[str, str] | None,
              ports: pd.DataFrame, state_names: dict[str, str], count_table: bool,
              timings: dict[str, float], memory: dict[str, float], release: bool,
              given: Mapping[str, pd.DataFrame] | None = None,
              ) -> tuple[dict[str, pd.DataFrame], list[dict], pd.DataFrame]:
    """:func:`analyse`'s tables, findings and purchaser listing from ``valid`` (the
    :func:`table_records`), timed as the ``aggregate`` stage; ``given``: tables made
    already."""
    with _stage("aggregate", timings, memory, release=release):
        tables = build_tables(valid, ports=ports, state_names=state_names, given=given,
                              trafficker_min_guns=options.trafficker_min_guns,
                              purchaser_min_guns=purchaser_floor(
                                  options, None if entity is None else entity[0]))
        found = findings(valid, tables, min_guns=options.trafficker_min_guns,
                         min_cell=options.min_cell, count_table=count_table)
        del valid
        if entity is not None:  # one output set of a batch: sentences about the entity
            found = entity_findings(found, tables, kind=entity[0], label=entity[1],
                                    min_cell=options.min_cell)
        # purchasers under --min-cell go before the flows exist (the findings counted them)
        tables, listing = list_purchasers(tables, min_cell=options.min_cell)
    return tables, found, listing


@arrow_system_pool()
def analyse(
    prepared: PreparedRecords,
    *,
    options: RunOptions | None = None,
    records: pd.DataFrame | None = None,
    description: str = "",
    layers: bool = True,
    entity: tuple[str, str] | None = None,
    consume: bool = False,
    given: Mapping[str, pd.DataFrame] | None = None,
) -> RunResult:
    """Flows, point layers, state polygons, tables and findings from prepared records.

    ``records`` (default: all of ``prepared.records``) may be a filtered subset; the manifest
    then counts the rows left out as ``rows_filtered_out``. ``layers=False`` (tables and
    findings only, e.g. ``geoflow summary``) leaves the map layers empty. ``entity`` (kind,
    label) marks one output set of a ``--per`` batch: findings are sentences about it
    (:func:`~geoflow.aggregate.entity_findings`); the geocode report of a subset lists only
    its own places with its own record counts. ``consume=True`` (``geoflow run``, which
    writes the result and forgets the records) empties the records' frame column by column
    as the placed records are copied for the map layers, so that a large input's records
    and that copy are never held in full together; ``prepared`` and ``records`` are of no
    use afterwards. ``given``: layers and tables of ``records`` (name → frame) made with a
    batch's other entities (:func:`batch_frames`), taken as they are.
    """
    from geoflow.crossings import load_ports
    from geoflow.geocode import report_for

    options = options or prepared.options
    # the ids were made in prepare_records: the manifest names the key that made them
    options = replace(options, pseudonym_key=prepared.options.pseudonym_key)
    frame = prepared.records if records is None else records
    quality = {  # what the data said that the tables do not: flags, unknown crossings
        "flags": flag_counts(frame),
        "unmatched_crossings": unmatched_crossings(frame).to_dict("records"),
        "reader_warnings": prepared.warning_counts,
    }
    timings = dict(prepared.timings)
    memory = dict(prepared.memory)
    ports = load_ports()
    states_shapes, state_names = _state_names()
    # what unplaced.csv and the manifest read from the records, before they may be emptied
    unplaced = _unplaced(frame)
    rows_selected = int(record_weights(frame).sum())
    guns_selected = int(gun_weights(frame).sum())
    rows_held = len(prepared.records)
    rows_valid, guns_valid = prepared.valid_counts
    synthetic = prepared_synthetic(prepared)
    report = (prepared.geocode_report if records is None or records is prepared.records
              else given["geocode_report"] if given is not None and "geocode_report" in given
              else report_for(prepared.geocode_report, records))
    consumed = (frame, prepared.records) if consume else ()
    # a consuming run keeps only the columns the tables and layers read (raw texts, names
    # without --show-names, geocoder queries go: a quarter of the records at 10M)
    keep_columns(consumed, {*ANALYSED_COLUMNS,
                            *(["purchaser_name"] if options.show_names else [])})
    # a large input read in chunks peaks in its analysis, which hands freed memory back
    # after each stage; one read whole peaks in the read (1M records: 1,140 MB, its analysis
    # at most 1,005 without handing back), where handing back only made the next stage fault
    # the same pages in again (1M, five alternated runs: 7.19 -> 6.91 s, 11.9 -> 11.5 s of
    # CPU). A small one (a batch entity's) has little to free, and the large heap is slow
    # to walk
    large = len(frame) >= COLUMNWISE_ROWS
    release = large and "chunks" in prepared.source
    with _stage("aggregate", timings, memory, release=release):
        frame = _label(_encode(frame), options.show_names)
        tabulate = functools.partial(
            _tabulate, table_records(frame),  # one copy without repeats, of the columns read
            options=options, entity=entity, ports=ports, state_names=state_names,
            count_table=bool(prepared.source.get("count_column")), timings=timings,
            memory=memory, release=release, given=given)
    # a large file's tables are built beside its flow layers; a small one's, or a chunked
    # read's, first, so their working memory is freed before the flow layer exists
    beside = len(frame) >= THREADED_TABLES_ROWS and "chunks" not in prepared.source
    pool = ThreadPoolExecutor(1)
    tabled = pool.submit(tabulate) if beside else None
    tables, found, listing = tabulate() if tabled is None else (None, None, None)
    del tabulate  # the tables' copy of the records goes with them
    with contextlib.ExitStack() as leaving, _stage("flows", timings, memory, release=release):
        # on an error, what is queued behind the tables (the point layers) is dropped
        leaving.callback(pool.shutdown, cancel_futures=True)
        # only the columns the map layers need: a filtered copy of every column would double
        # the memory of the records for large inputs
        layer_columns = [c for c in LAYER_INPUT_COLUMNS if c in frame.columns]
        # a large frame's own columns go one by one as they are copied (its encoded columns
        # are its own memory); a small one's copy is taken at once (a batch entity's 50 ms)
        emptied = (frame, *consumed) if consumed or len(frame) >= COLUMNWISE_ROWS else ()
        placed = placed_layer_records(frame, layer_columns, consume=emptied)
        del frame, consumed  # the encoded columns not needed by the layers go now
        drawn = placed if layers else placed.iloc[0:0]
        # more place-level flows than flows.geojson holds: lines are only drawn from its
        # state-level flows, so the flows keep no line objects (gigabytes at 10M records)
        # and flows_full.parquet gets the three points of each flow from their coordinates
        straight = options.flow_level == "place" and len(drawn) > FLOWS_GEOJSON_MAX
        # a large chunked run hands each layer's working memory back before the next
        # layer's (glibc's heap keeps freed blocks of the last one resident otherwise)
        trim = release_memory if straight and release else (lambda: None)
        overview = None
        early: dict[str, tuple[pd.DataFrame, dict[str, int]]] = {}  # suppressed already
        if given is not None and layers and not (straight or beside):
            flows, dealers, recoveries, crossings = (given[name] for name in LAYERS_MADE)
        else:
            # beside the tables, the point layers follow them on their thread while this one
            # builds the flows (1M records: the analysis's last 0.6 s ran on one core)
            points = pool.submit(_point_layers, drawn, ports, trim) if beside else None
            flows = build_flows(drawn, ports, level=options.flow_level,
                                state_names=state_names, lines=not straight)
            trim()
            if options.flow_level == "place" and len(flows) > FLOWS_GEOJSON_MAX:
                overview = build_flows(drawn, ports, level="state", state_names=state_names)
            elif straight:  # few flows after all: flows.geojson holds them, drawn as arcs
                flows = gpd.GeoDataFrame(flows, geometry=flow_geometry(flows, SEGMENT_KM),
                                         crs="EPSG:4326")
            if beside:
                tables, found, listing = tabled.result()
                # the flows' small cells while the point layers are built (1M records: this
                # thread waited 0.2 s for them, then suppressed the flows on one core)
                early = {name: suppress_cells(frame, min_cell=options.min_cell,
                                              named=listing.named)
                         for name, frame in (("flows", flows), ("flows_overview", overview))
                         if frame is not None}
                dealers, recoveries, crossings = points.result()
            else:
                dealers, recoveries, crossings = _point_layers(drawn, ports, trim)
        states = build_states(  # state totals over all valid records, as in the tables
            drawn, states_shapes,
            sourced=tables["by_us_state"].set_index("state")["guns"],
            recovered=tables["by_mx_state"].set_index("state")["guns"])
        layers_out = {"flows": flows, "dealers": dealers, "recoveries": recoveries}
        if overview is not None:
            layers_out["flows_overview"] = overview
        published, tables, suppression = suppress(layers_out, tables, min_cell=options.min_cell,
                                                   listing=listing, done=early)
        flows, dealers, recoveries = (published[k] for k in ("flows", "dealers", "recoveries"))
        overview = published.get("flows_overview")
    if layers:  # a tables-only run (summary) builds no flows: nothing to say
        log.info("built %s through %s", plural(len(flows), "flow"),
                 plural(len(crossings), "port"))

    rows_read = int(prepared.source.get("rows_read", rows_held))
    counts = {
        "rows_read": rows_read,
        "rows_valid": rows_valid,
        "rows_rejected": rows_read - rows_valid,
        "rows_filtered_out": rows_valid - rows_selected,
        "rows_placed": int(record_weights(placed).sum()),
        "rows_unplaced": len(unplaced),
        "flows": len(flows),
        "flows_geojson": len(flows) if overview is None else len(overview),
        "dealers": len(dealers),
        "recoveries": len(recoveries),
        "crossings": len(crossings),
        **gun_counts(prepared, placed, guns_selected, guns_valid=guns_valid),
    }
    source = prepared.source
    manifest = {
        "generator": GENERATOR,
        "version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        # the file name only: an absolute path would publish the user's folders
        "input": {"path": Path(str(source.get("path", ""))).name,
                  **{k: source.get(k) for k in ("sha256", "format", "encoding",
                                                "count_column")},
                  **({"year_columns": source["year_columns"]}
                     if source.get("year_columns") else {}),
                  **({"sheet": source["sheet"]} if source.get("sheet") else {}),
                  **({"chunks": source["chunks"]} if "chunks" in source else {})},
        "options": options.describe(),
        "show_names": options.show_names,
        "pseudonyms": options.describe()["pseudonym_key"],
        "description": description,
        "synthetic": synthetic,
        "counts": counts,
        "flows_geojson_level": options.flow_level if overview is None else "state",
        "suppression": suppression,
        "quality": quality,
        "geocoder": (options.geocoder.summary() if hasattr(options.geocoder, "summary")
                     else {"service": options.describe()["geocoder"]}),
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "memory_peak_mb": memory,
    }
    return RunResult(
        options=options, flows=flows, dealers=dealers, recoveries=recoveries,
        crossings=crossings, states=states, tables=tables, findings=found,
        rejects=_rejects(prepared.rejects, options.show_names), unplaced=unplaced,
        # every record (the CLI passes them when no filter applies): the report as it is
        geocode_report=report,
        manifest=manifest, description=description,
        warnings=prepared.warnings, flows_overview=overview,
        suppression=suppression,
    )


def _point_layers(drawn: pd.DataFrame, ports: pd.DataFrame, trim: Callable[[], None]
                  ) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """The dealers, recoveries and crossings layers of the placed records ``drawn``,
    ``trim()`` after each of the first two (a large run's memory handed back)."""
    dealers = build_dealers(drawn)
    trim()
    recoveries = build_recoveries(drawn)
    trim()
    return dealers, recoveries, build_crossings(drawn, ports)


#: Records of a batch below which every entity's layers and most of its tables are made at
#: once (:func:`batch_frames`): their text is Python's then, as each entity's own is
#: (``batch.python_text``), and no entity is too large for flows.geojson.
BATCH_FRAMES_ROWS = 50_000
#: The layers :func:`batch_frames` makes (``analyse(given=)`` takes them all or none).
LAYERS_MADE = ("flows", "dealers", "recoveries", "crossings")


def batch_frames(records: pd.DataFrame, entity_rows: list[np.ndarray], options: RunOptions,
                 report: pd.DataFrame | None = None, *, kind: str | None = None
                 ) -> EntityFrames | None:
    """The flows, dealers, recoveries and crossings (:func:`geoflow.flows.entity_layers`),
    the tables of :data:`~geoflow.aggregate.ENTITY_TABLES` and, given the batch's geocode
    ``report``, each entity's (``geocode_report``: :func:`geoflow.geocode.entity_reports`) of
    every entity of a batch (the records at each of ``entity_rows``; ``kind``: the batch's, as
    :func:`analyse` is told it) made at once, as :func:`analyse` makes an entity's from its
    records alone; None past :data:`BATCH_FRAMES_ROWS` records, and with names shown (a
    purchaser's label is then the first spelling among the records looked at: an entity's
    own). The report needs the records' ``source_line``: without it a record's line is its
    place among the entity's."""
    if options.show_names or not entity_rows or len(records) >= BATCH_FRAMES_ROWS:
        return None
    from geoflow.crossings import load_ports
    from geoflow.geocode import entity_reports

    by = "batch_entity"
    codes = np.full(len(records), -1, dtype=np.int64)
    for code, rows in enumerate(entity_rows):
        codes[rows] = code
    frame = _label(_encode(records), options.show_names)
    mine = np.flatnonzero(codes >= 0)  # the records of some entity
    rows = mine[frame["placed"].to_numpy(dtype=bool)[mine]]
    columns = [c for c in LAYER_INPUT_COLUMNS if c in frame.columns]
    placed = frame[columns].iloc[rows].assign(**{by: codes[rows]})
    ports, state_names = load_ports(), _state_names()[1]
    made = entity_layers(placed, ports, by=by, level=options.flow_level,
                         state_names=state_names)
    del placed
    columns = [c for c in TABLE_COLUMNS if c in frame.columns]  # as table_records keeps
    valid = counted(frame[columns].iloc[mine].assign(**{by: codes[mine]}))
    made.update(entity_tables(valid, by=by, ports=ports, state_names=state_names,
                              trafficker_min_guns=options.trafficker_min_guns,
                              purchaser_min_guns=purchaser_floor(options, kind)))
    if report is not None and "source_line" in records.columns:
        reported = entity_reports(report, records.iloc[mine], codes[mine])
        if reported is not None:
            made["geocode_report"] = reported[0].assign(**{by: reported[1]})
    return entity_frames(made, by=by, codes=codes)


def placed_layer_records(frame: pd.DataFrame, columns: list[str], *,
                         consume: tuple[pd.DataFrame, ...] = ()) -> pd.DataFrame:
    """The placed records of ``frame``, only their ``columns``: a copy. Frames in ``consume``
    (``frame`` and those sharing its columns) lose every column as soon as it is copied, the
    others first, so memory holds the records or their copy, column by column, not both."""
    rows = np.flatnonzero(frame["placed"].to_numpy(dtype=bool))
    if not consume:
        return frame[columns].iloc[rows]  # only the columns asked for are copied
    keep_columns(consume, set(columns))
    index = frame.index[rows]
    copied = {}
    for column in columns:
        copied[column] = frame[column].array.take(rows)
        for emptied in consume:
            if column in emptied.columns:
                del emptied[column]
    # copy=False: no stacking of same-typed columns into one block (a second copy)
    return pd.DataFrame(copied, index=index, copy=False)


def keep_columns(frames: tuple[pd.DataFrame, ...], keep: set[str]) -> None:
    """Delete, in place, every column of ``frames`` not in ``keep`` (frames sharing columns
    all lose them, so the memory goes)."""
    for frame in frames:
        for column in [c for c in frame.columns if c not in keep]:
            del frame[column]


def gun_counts(prepared: PreparedRecords, placed: pd.DataFrame, guns_selected: int, *,
               guns_valid: int | None = None) -> dict:
    """Accounting in guns (a count table's rows stand for many): ``guns_read = guns_valid +
    guns_rejected``, ``guns_valid = guns_placed + guns_unplaced + guns_filtered_out``, and the
    guns over the flows add up to ``guns_placed``. ``guns_rejected`` counts the guns of
    rejected rows whose count could be read; ``rows_rejected_count_unreadable`` says how many
    rejected rows had none (their guns are unknown). A trace file's row is one gun.
    ``guns_valid`` (default: counted over ``prepared.records``) is given when the records
    were consumed."""
    if guns_valid is None:
        guns_valid = prepared.valid_counts[1]
    rejects = prepared.rejects
    rows_rejected = int(rejects["line"].nunique()) if len(rejects) else 0
    if prepared.source.get("count_column") and "guns" in rejects.columns:
        per_line = rejects.groupby("line")["guns"].max()  # NA when no readable count
        guns_rejected, unreadable = int(per_line.sum()), int(per_line.isna().sum())
    else:
        guns_rejected, unreadable = rows_rejected, 0
    weights = gun_weights(placed)
    guns_placed = int(weights.sum())
    return {
        "guns_read": guns_valid + guns_rejected,
        "guns_valid": guns_valid,
        "guns_rejected": guns_rejected,
        "rows_rejected_count_unreadable": unreadable,
        "guns_filtered_out": guns_valid - guns_selected,
        "guns_placed": guns_placed,
        "guns_unplaced": guns_selected - guns_placed,
        "guns_known_crossing": int(weights[is_value(placed["route_kind"], "known")].sum()),
        "guns_modelled_crossing": int(weights[is_value(placed["route_kind"], "modelled")].sum()),
    }


def run_pipeline(source: str | Path, *, options: RunOptions | None = None) -> RunResult:
    """``analyse(prepare_records(source))``: one whole run, nothing written."""
    options = options or RunOptions()
    return analyse(prepare_records(source, options=options), options=options)


def prepared_synthetic(prepared: PreparedRecords) -> bool:
    """The input is synthetic: the shipped sample, or a ``dataset`` column saying so."""
    name = Path(str(prepared.source.get("path", ""))).name
    column = prepared.records.get(DATASET_COLUMN)
    if name.startswith("geoflow-sample-"):
        return True
    if column is None:
        return False
    # a categorical's values are its categories (prepare_records keeps only those used): a
    # batch asks for every entity, and unique() of a million codes took 5 ms
    categorical = isinstance(column.dtype, pd.CategoricalDtype)
    return marks_synthetic(column.cat.categories if categorical else column.unique())


def is_synthetic(result: RunResult) -> bool:
    """``manifest["synthetic"]`` of a run (False when absent)."""
    return bool(result.manifest.get("synthetic", False))


def findings_markdown(result: RunResult) -> str:
    """The findings as a short Markdown list (for ``findings.md``)."""
    title = "# Findings"
    if result.description:
        title += f": {markdown_text(result.description)}"
    counts = result.manifest["counts"]
    lines = [title, ""]
    if is_synthetic(result):
        lines += [f"**{SYNTHETIC_LABEL}**", ""]
    lines += [f"- {markdown_text(item['text'])}" for item in result.findings]
    withheld = result.suppression.get("text", [])
    lines += ["", *(markdown_text(text) for text in withheld)] if withheld else []
    lines += [
        "",
        f"Rows read {counts['rows_read']:,}; valid {counts['rows_valid']:,}; rejected "
        f"{counts['rows_rejected']:,}; placed on the map {counts['rows_placed']:,}; "
        f"unplaced {counts['rows_unplaced']:,}.",
        *([f"A count table (column {markdown_text(result.manifest['input']['count_column'])}):"
           f" guns read {counts['guns_read']:,}; placed on the map {counts['guns_placed']:,};"
           f" unplaced {counts['guns_unplaced']:,}; in rejected rows "
           f"{counts['guns_rejected']:,}."]
          if result.manifest["input"].get("count_column") else []),
        "Figures and the numbers behind each sentence: findings.json and tables/*.csv.",
        "",
    ]
    return "\n".join(lines)


def preload_map_modules() -> threading.Thread:
    """:func:`import_map_modules` on a background thread, so that a run analyses its records
    meanwhile (called after the read: imported during it, they added to the run's memory
    peak)."""
    thread = threading.Thread(target=import_map_modules, name="geoflow-map-imports",
                              daemon=True)
    thread.start()
    return thread


def _write_maps(result: RunResult, map_options: Any, folder: Path,
                map_process: MapProcess | None = None) -> None:
    """map.html, map.svg and map.png from one scene (built once: at a million records it
    sums the legs of every flow), drawn here or by ``map_process``. Imported here: folium
    and matplotlib are heavy."""
    from geoflow.scene import MapOptions, build_scene

    options = map_options or MapOptions()
    scene = build_scene(result, options=options)
    if map_process is not None:
        map_process.draw(scene, options, folder)
    else:
        write_map_files(scene, options, folder)


def flow_levels(result: RunResult, formats: tuple[str, ...] = ()) -> dict[str, str]:
    """Output → level of the flows it holds (manifest ``flow_levels``): flows_full.parquet
    every flow at the run's level; flows.geojson and its copies for other tools (GeoPackage,
    flowmap/, --format files) the level of ``result.flows_geojson``."""
    level = result.flows_geojson[1]
    copies = ["flows.geojson", "geoflow.gpkg", "flowmap/",
              *(f"{name}/" for name in ("geoparquet", "shapefile") if name in formats)]
    return {"flows_full.parquet": result.options.flow_level,
            **dict.fromkeys(copies, level)}


@arrow_system_pool()
def write_outputs(
    result: RunResult,
    out_dir: str | Path,
    *,
    force: bool = False,
    map_options: Any = None,
    write_map: bool = True,
    formats: tuple[str, ...] = (),
    excel: bool = False,
    reuse_schema: bool = False,
    map_thread: bool | None = None,
    map_process: MapProcess | None = None,
) -> Path:
    """Write every output of DESIGN.md into ``out_dir`` atomically and return its path.

    ``formats`` adds optional formats (``geoparquet``, ``shapefile``: geoflow.formats);
    ``excel`` writes every CSV with a UTF-8 byte-order mark for Excel; ``reuse_schema`` (a
    batch's output sets) writes geoflow.gpkg into the schema GDAL wrote for the first one
    (:func:`geoflow.formats.write_geopackage`).

    Files go to a temporary folder beside ``out_dir`` that replaces it only when all are
    written; a folder geoflow did not write is refused unless ``force`` (``OutputError``).
    The map and its stills are drawn in a second thread while the data files are written
    when ``map_thread`` is True or, by default, from :data:`THREADED_MAP_ROWS` placed records
    on (1M records: export 6.1 -> 4.5 s); an error in either ends the run. With
    ``map_process`` (a :class:`~geoflow.processes.MapProcess`: ``geoflow run`` on a large
    input) that thread builds the scene and the process draws it, so the drawing holds no
    GIL of this process (1M records: export 2.8-3.3 -> 2.2-2.6 s). ``map_thread=False``
    draws them first, in this thread: a batch's worker processes already keep every core
    busy, and there a second thread only makes the two wait on each other for the GIL (the
    sample's 31 states at 2 jobs: about 16 % less time).
    """
    clock = time.perf_counter()
    placed = result.manifest["counts"]["rows_placed"]
    # a large input read in chunks hands the records its caller freed back before the files'
    # work, as after each of its stages (analyse); one read whole peaks in its read, and a
    # trim here only made the files' work fault the same pages in again (1M records, five
    # alternated runs: 6.78 -> 6.67 s, 11.00 -> 10.82 s of CPU, peak 1,157 -> 1,161 MB)
    if placed >= COLUMNWISE_ROWS and "chunks" in result.manifest["input"]:
        release_memory()
    if map_thread is None:
        map_thread = placed >= THREADED_MAP_ROWS
    out = Path(out_dir)
    with atomic_output_dir(out, force=force) as temp, ThreadPoolExecutor(1) as maps:
        # the map and its stills (matplotlib: Python) are drawn while the data files are
        # written (GDAL, Arrow and file writes leave Python free much of the time)
        drawn = None
        if write_map and not map_thread and map_process is None:
            _write_maps(result, map_options, temp)
        elif write_map:
            drawn = maps.submit(_write_maps, result, map_options, temp, map_process)
        synthetic = {"synthetic": is_synthetic(result)}  # an RFC 7946 foreign member
        shown, level = result.flows_geojson
        write_geojson(shown, temp / "flows.geojson", members={
            **synthetic, "flow_level": level, "flows_total": len(result.flows),
            "flows_full": "flows_full.parquet"})
        write_flows_parquet(result.flows, temp / "flows_full.parquet")
        layers = {"dealers": result.dealers, "recoveries": result.recoveries,
                  "crossings": result.crossings, "states": result.states}
        for name, layer in layers.items():
            write_geojson(layer, temp / f"{name}.geojson", members=synthetic)
        (temp / "tables").mkdir()
        csv = functools.partial(write_csv, bom=excel)
        for name in TABLE_NAMES:
            csv(result.tables[name], temp / "tables" / f"{name}.csv")
        csv(result.rejects, temp / "rejects.csv")
        csv(result.unplaced, temp / "unplaced.csv")
        csv(result.geocode_report, temp / "geocode_report.csv")
        csv(result.warnings, temp / "warnings.csv")
        write_analyst_files(result, temp, formats=formats, bom=excel,
                            reuse_schema=reuse_schema)
        write_json([{**item, **synthetic} for item in result.findings],
                   temp / "findings.json")
        (temp / "findings.md").write_text(findings_markdown(result), encoding="utf-8")
        if drawn is not None:
            drawn.result()  # the map's error, if any, is raised here
        manifest = dict(result.manifest)
        manifest["flow_levels"] = flow_levels(result, formats)
        timings = dict(manifest.get("timings", {}))
        timings["export"] = round(time.perf_counter() - clock, 4)
        manifest["timings"] = timings
        manifest["memory_peak_mb"] = {**manifest.get("memory_peak_mb", {}),
                                      "export": peak_memory_mb()}
        written = (p.relative_to(temp).as_posix() for p in temp.rglob("*") if p.is_file())
        manifest["files"] = [*sorted(written), "manifest.json"]
        write_json(manifest, temp / "manifest.json")
    log.info("wrote %s", out)
    return out
