"""Per-entity runs (``--per state|mx-state|trafficker|dealer``): safe folder names and an index.

A batch reads and geocodes once (``pipeline.prepare_records``), then analyses each entity's
records and writes one complete output set per entity under ``OUT/<kind>/<slug>/``, plus
``OUT/index.html`` (a sortable, self-contained table linking every map) and
``OUT/manifest.json`` (``generator: geoflow``, slug → entity, counts). The whole batch is built
in a temporary folder next to ``OUT`` and swapped into place at the end, so a failed batch
leaves the previous one intact.

Folder names (:func:`slugify`) are lowercase ASCII letters, digits and dashes, capped in length,
and always end in a short hash of the entity, so two names that read alike never share a folder
and no name can become ``..``, a path or a reserved device name (``CON``, ``NUL``, ``COM1`` …).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import pickle
import queue
import re
import shutil
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geoflow import __version__
from geoflow.aggregate import from_codes, plural
from geoflow.errors import InputError, OutputError
from geoflow.processes import (
    end_now,
    fewer_collections,
    ignore_ctrl_c,
    import_map_modules,
    spawn_pool,
    usable_cpus,
)
from geoflow.progress import quiet_logger
from geoflow.schema import SYNTHETIC_LABEL, strip_accents
from geoflow.select import entity_keys, list_entities

__all__ = [
    "DEFAULT_MIN_GUNS",
    "BatchResult",
    "in_sentence",
    "entity_table",
    "slugify",
    "assign_slugs",
    "safe_child",
    "render_index",
    "default_jobs",
    "write_entity",
    "run_batch",
    "checkpoint",
]

log = logging.getLogger(__name__)

#: Default ``--min-guns`` per kind: every state, but only purchasers and dealers tied to 10 or
#: more guns (the reporting's threshold; thousands of one-gun maps help nobody).
DEFAULT_MIN_GUNS: dict[str, int] = {"state": 1, "mx-state": 1, "trafficker": 10, "dealer": 10}

_KIND_TITLES = {
    "state": ("US state", "US states (where the guns were sold)"),
    "mx-state": ("Mexican state", "Mexican states (where the guns were recovered)"),
    "trafficker": ("Purchaser", "Purchasers"),
    "dealer": ("Dealer", "Dealers"),
}

_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
             *(f"lpt{i}" for i in range(10))}
_SLUG_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def in_sentence(words: str) -> str:
    """``words`` inside a sentence: the first letter lowered unless it starts a proper name
    (``"Purchaser"`` → ``"purchaser"``; ``"US state"`` and ``"Mexican state"`` stay)."""
    first = words.split(" ", 1)[0]
    if first.isupper() or first in _PROPER:
        return words
    return words[:1].lower() + words[1:]


_PROPER = {"Mexican"}


def count_of(n: int, kind: str) -> str:
    """``n`` entities of ``kind`` in a sentence: ``"1 US state"``, ``"31 US states"``,
    ``"2 purchasers"``."""
    singular, many = _KIND_TITLES[kind]
    return f"{n:,} {in_sentence(singular if n == 1 else many.split(' (')[0])}"


def _are(n: int) -> str:
    return "is" if n == 1 else "are"


def slugify(name: str, *, key: str | None = None, max_length: int = 48,
            hash_length: int = 6) -> str:
    """Folder name for ``name``: ``ascii-words-<hash>``, at most ``max_length`` characters.

    The hash is of ``key`` (default: ``name``) so distinct entities get distinct slugs even
    when their names read alike.

    >>> slugify("Nuevo León")
    'nuevo-leon-7b47b8'
    >>> slugify("../../x")
    'x-9cdf6a'
    """
    base = re.sub(r"[^a-z0-9]+", "-", strip_accents(name).casefold()).strip("-")
    digest = hashlib.sha256(str(name if key is None else key).encode("utf-8")).hexdigest()
    hash_length = max(4, min(hash_length, len(digest)))
    room = max(1, max_length - hash_length - 1)
    base = base[:room].strip("-") or "x"
    return f"{base}-{digest[:hash_length]}"


def assign_slugs(keys: Sequence[str], labels: Sequence[str], *, max_length: int = 48
                 ) -> list[str]:
    """Unique slugs for entities (``keys`` unique): the hash grows where two would clash."""
    slugs = [slugify(label, key=key, max_length=max_length)
             for key, label in zip(keys, labels, strict=True)]
    for hash_length in (12, 24, 64):
        seen = pd.Series(slugs).duplicated(keep=False)
        if not seen.any():
            break
        for i in seen[seen].index:  # only the (rare) clashing entities
            slugs[i] = slugify(labels[i], key=keys[i], max_length=max_length + hash_length,
                               hash_length=hash_length)
    if len(set(slugs)) != len(slugs):
        raise OutputError("two batch entities share a folder name; keys must be unique")
    return slugs


def safe_child(root: Path, *parts: str) -> Path:
    """``root/part/…`` after checking each part is a plain slug and the result stays in root."""
    root = Path(root).resolve()
    for part in parts:
        stem = part.split(".", 1)[0].casefold()
        if not _SLUG_RE.fullmatch(part.replace(".", "-")) or stem in _RESERVED:
            raise OutputError(f"unsafe folder name {part!r}", path=str(root))
    target = root.joinpath(*parts).resolve()
    if not target.is_relative_to(root) or target == root:
        raise OutputError(f"folder {'/'.join(parts)!r} would leave the output folder",
                          path=str(root))
    return target


# --------------------------------------------------------------------------- index page

_INDEX_CSS = """
.gf-synthetic{background:#b00020;color:#fff;font-weight:700;letter-spacing:.04em;
text-align:center;padding:.3rem;margin:-2rem -1rem 1rem}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;
max-width:72rem;padding:0 1rem;color:#1b1b1b}
h1{font-size:1.5rem;margin:0 0 .25rem}p.sub{margin:.25rem 0;color:#444}
table{border-collapse:collapse;width:100%;margin-top:1rem}
th,td{padding:.35rem .6rem;border-bottom:1px solid #ddd;text-align:left}
th{cursor:pointer;user-select:none;background:#f4f4f4;position:sticky;top:0}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
footer{margin-top:1.5rem;color:#555;font-size:.9rem}
"""

_INDEX_JS = """
document.querySelectorAll("table.sortable th").forEach(function(th, col){
  th.addEventListener("click", function(){
    var table = th.closest("table"), body = table.tBodies[0];
    var asc = th.getAttribute("aria-sort") !== "ascending";
    table.querySelectorAll("th").forEach(function(h){ h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var numeric = th.classList.contains("n");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function(a, b){
      var x = a.cells[col].getAttribute("data-value"), y = b.cells[col].getAttribute("data-value");
      var c = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
      return asc ? c : -c;
    });
    rows.forEach(function(r){ body.appendChild(r); });
  });
});
"""


def _esc(text: object) -> str:
    from geoflow.render import escape_html

    return escape_html("" if text is None or text is pd.NA else str(text))


def render_index(
    entities: pd.DataFrame,
    *,
    kind: str,
    title: str,
    description: str = "",
    totals: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
    synthetic: bool = False,
) -> str:
    """The batch's ``index.html``: one sortable row per entity, linking to its map.

    ``entities`` has ``label``, ``guns``, ``placed``, ``purchasers``, ``dealers``, ``href``
    (relative link to the entity's map) and ``folder``; rows come most guns first. Every value
    is escaped; the page loads nothing from the network. ``synthetic`` puts the synthetic-data
    banner on top.
    """
    singular, caption = _KIND_TITLES[kind]
    total_guns = int((totals or {}).get("guns", entities["guns"].sum() if len(entities) else 0))
    # a purchaser's page has one purchaser, a dealer's one dealer: those columns say nothing,
    # nor do purchasers and dealers that no entity has (a count table names none)
    counts = [c for c in ("placed", "purchasers", "dealers")
              if (kind, c) not in {("trafficker", "purchasers"), ("dealer", "dealers")}
              and (c == "placed" or c not in entities or not len(entities)
                   or int(entities[c].max()) > 0)]
    names = {"placed": "Placed on map", "purchasers": "Purchasers", "dealers": "Dealers"}
    header = (
        f'<tr><th scope="col">{_esc(singular)}</th>'
        '<th scope="col" class="n" aria-sort="descending">Guns</th>'
        '<th scope="col" class="n">Share</th>'
        + "".join(f'<th scope="col" class="n">{names[c]}</th>' for c in counts)
        + '<th scope="col">Files</th></tr>'
    )
    if len(entities):  # most guns first, as the Guns heading says
        entities = entities.sort_values(["guns", "label"], ascending=[False, True],
                                        kind="stable")
    rows = []
    for row in entities.itertuples(index=False):  # one row per entity written
        share = row.guns / total_guns if total_guns else 0.0
        cells = "".join(
            f'<td class="n" data-value="{int(getattr(row, c))}">{int(getattr(row, c)):,}</td>'
            for c in counts
        )
        rows.append(
            "<tr>"
            f'<td data-value="{_esc(row.label)}"><a href="{_esc(row.href)}">{_esc(row.label)}'
            "</a></td>"
            f'<td class="n" data-value="{int(row.guns)}">{int(row.guns):,}</td>'
            f'<td class="n" data-value="{share:.6f}">{share:.1%}</td>'
            f"{cells}"
            f'<td data-value="{_esc(row.folder)}"><a href="{_esc(row.folder)}/">'
            f"{_esc(row.folder)}/</a></td>"
            "</tr>"
        )
    subtitle = f'<p class="sub">{_esc(description)}</p>' if description else ""
    note_html = "".join(f"<p>{_esc(note)}</p>" for note in notes)
    summary = (
        f"{count_of(len(entities), kind)} · {plural(total_guns, 'gun')} in the records analysed"
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        f"<title>{_esc(title)}</title><style>{_INDEX_CSS}</style></head><body>"
        + (f'<div class="gf-synthetic" role="note">{_esc(SYNTHETIC_LABEL)}</div>'
           if synthetic else "") +
        f"<h1>{_esc(title)}</h1>{subtitle}<p class=\"sub\">{_esc(summary)}</p>"
        f'<table class="sortable"><caption>{_esc(caption)}; click a heading to sort'
        f"</caption><thead>{header}</thead><tbody>{''.join(rows)}</tbody></table>"
        f"<footer>{note_html}<p>Written by geoflow {_esc(__version__)}.</p></footer>"
        f"<script>{_INDEX_JS}</script></body></html>\n"
    )


# --------------------------------------------------------------------------- the batch


@dataclass(frozen=True)
class BatchResult:
    """What a batch wrote: the folder, one row per entity and the batch manifest."""

    out_dir: Path
    kind: str
    entities: pd.DataFrame
    manifest: dict[str, Any]
    #: Output sets taken over from a killed batch (``resume``), not written again.
    resumed: int = 0


def entity_table(
    records: pd.DataFrame, kind: str, *, min_guns: int | None = None, show_names: bool = False,
    min_cell: int = 1,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Entities to write (with slug, folder and per-entity counts) and the batch accounting.

    The accounting says where every gun went (a trace record is one gun, a count table's
    row its count): ``records`` = ``guns_in_entities`` + ``guns_below_threshold`` +
    ``records_without_entity`` + ``duplicate_records``. Repeated
    trace records are left out of the guns (and ``--min-guns``) as the entity's own tables
    leave them out (:func:`geoflow.aggregate.counted`).
    Purchasers (``trafficker``) are listed only when tied to ``min_cell`` guns or more
    (the small-count rule), whatever ``min_guns`` says.
    """
    from geoflow.aggregate import counted, gun_weights

    threshold = DEFAULT_MIN_GUNS[kind] if min_guns is None else max(int(min_guns), 1)
    if kind == "trafficker":
        threshold = max(threshold, int(min_cell))
    everything, records = records, counted(records)
    keys = entity_keys(records, kind)
    guns = gun_weights(records)  # a count table's row is its count of guns
    table = list_entities(records, kind, min_guns=threshold, show_names=show_names, keys=keys)
    placed = records["placed"].to_numpy(dtype=bool) if "placed" in records else True
    stats = pd.DataFrame({
        "key": keys,
        "placed": guns * placed,
        "purchaser_id": records.get("purchaser_id"),
        "dealer_id": records.get("dealer_id"),
    }).dropna(subset=["key"]).groupby("key").agg(
        placed=("placed", "sum"), purchasers=("purchaser_id", "nunique"),
        dealers=("dealer_id", "nunique"),
    )
    table = table.join(stats, on="key")
    table["slug"] = pd.array(assign_slugs(table["key"].tolist(), table["name"].tolist()),
                             dtype="string")
    table["folder"] = kind + "/" + table["slug"]
    table["href"] = table["folder"] + "/map.html"
    with_entity = int(guns[keys.notna().to_numpy()].sum())
    kept, total = int(guns.sum()), int(gun_weights(everything).sum())
    accounting = {  # in guns: a trace record is one gun, a count table's row its count
        "records": total,
        "entities": len(table),
        "guns_in_entities": int(table["guns"].sum()),
        "min_guns": threshold,
        "entities_below_threshold": int(keys.nunique(dropna=True)) - len(table),
        "guns_below_threshold": with_entity - int(table["guns"].sum()),
        "records_without_entity": kept - with_entity,
        "duplicate_records": total - kept,
    }
    return table.astype({"placed": int, "purchasers": int, "dealers": int}), accounting


def default_jobs(source: str | Path | None = None, *, asked: int | None = None) -> int:
    """Processes for a batch of ``source``: ``asked`` (``--jobs``), with a warning when the
    memory free (:func:`free_memory`) would not hold that many copies of the records
    (:func:`jobs_for_memory`); by default the CPUs this process may run on, fewer when they
    would not fit, saying why."""
    wanted = asked or usable_cpus()
    size = text_bytes(source) if source is not None else None
    free = free_memory() if size is not None and wanted > 1 else None
    if free is None:
        return wanted
    fits = jobs_for_memory(wanted, free, size)
    if fits < wanted:
        held = (f"each process holds the records (about {_worker_bytes(size) / 2**30:.1f} GB "
                f"here) and {free / 2**30:.1f} GB of memory is free")
        if asked:
            log.warning("--jobs %d may run out of memory: %s, enough for %d", asked, held, fits)
            return asked
        log.info("writing with %d of %d CPUs: %s; --jobs sets the count", fits, wanted, held)
    return fits


#: A batch's memory from its input's text size (CSV bytes), measured with ``--jobs 2`` on
#: the sample (0.2 MB), 100k (25 MB) and 1M (249 MB) records: this process peaked at 321,
#: 567 and 1,197 MB, a worker at 268, 399 and 627 MB. Base (MB) and bytes per input byte.
_MAIN_MEMORY = (500, 4.0)
_WORKER_MEMORY = (400, 1.5)
#: Text bytes per file byte of compressed inputs, by the reader's format (the sample's first
#: 100k records: Parquet 4.8 MB for 24.7 MB of CSV; its first 20k as xlsx, 3.2 for 4.9 MB).
_TEXT_PER_BYTE = {"parquet": 5.0, "xlsx": 1.5}


def text_bytes(source: str | Path) -> float | None:
    """About how many bytes of CSV ``source`` would be (its size, × :data:`_TEXT_PER_BYTE`
    for the formats the reader tells from its first bytes); None if it cannot be read."""
    from geoflow.io import _detect_format

    try:
        with Path(source).open("rb") as handle:
            head = handle.read(64)
            size = os.fstat(handle.fileno()).st_size
    except OSError:
        return None
    try:
        fmt = _detect_format(Path(source), head)
    except InputError:  # not a table: the read says so, with the file's name
        fmt = "csv"
    return size * _TEXT_PER_BYTE.get(fmt, 1.0)


def _worker_bytes(text: float) -> float:
    return (_WORKER_MEMORY[0] * 2**20) + _WORKER_MEMORY[1] * text


def jobs_for_memory(cores: int, free: float, text: float) -> int:
    """Processes (1 to ``cores``) whose memory fits in ``free`` bytes for an input of
    ``text`` CSV bytes: this one's peak, then one worker's each (:data:`_MAIN_MEMORY`,
    :data:`_WORKER_MEMORY`)."""
    main = _MAIN_MEMORY[0] * 2**20 + _MAIN_MEMORY[1] * text
    workers = (free - main) // _worker_bytes(text)
    return int(max(1, min(cores, 1 + workers)))


def free_memory(cgroups: Path = Path("/sys/fs/cgroup"),
                membership: Path = Path("/proc/self/cgroup")) -> int | None:
    """Bytes of memory this process could still take: the system's available memory
    (psutil), within the tightest limit of its Linux control groups (a container's
    ``--memory``), where page cache counts as free; None if psutil cannot tell."""
    try:
        import psutil

        free = int(psutil.virtual_memory().available)
    except (OSError, RuntimeError):  # a system psutil cannot read
        return None
    rooms = [room for room in map(_cgroup_room, _cgroup_folders(cgroups, membership))
             if room is not None]
    return min([free, *rooms])


def _cgroup_folders(root: Path, membership: Path) -> list[Path]:
    """The memory control-group folders of this process and of their parents (v2 and v1)."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:  # not Linux
        return []
    folders = []
    for line in lines:
        if line.count(":") < 2:
            continue
        _, controllers, path = line.split(":", 2)
        mount = root if controllers == "" else (
            root / "memory" if "memory" in controllers.split(",") else None)
        if mount is None:
            continue
        parts = Path(path).relative_to("/").parts if path.startswith("/") else ()
        folders += [mount.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]
    return [folder for folder in folders if folder.is_dir()]


def _cgroup_room(folder: Path) -> int | None:
    """Bytes left under ``folder``'s memory limit (limit − use + inactive page cache), or
    None without a limit."""
    def number(*names: str) -> int | None:
        for name in names:
            with contextlib.suppress(OSError, ValueError):
                return int((folder / name).read_text().split()[0])
        return None

    limit = number("memory.max", "memory.limit_in_bytes")  # v2 ("max": none), v1
    used = number("memory.current", "memory.usage_in_bytes")
    if limit is None or used is None or limit >= 2**60:  # v1 writes "none" as ~2**63
        return None
    stats = {}
    with contextlib.suppress(OSError):
        stats = dict(line.split()[:2] for line in (folder / "memory.stat").read_text()
                     .splitlines() if len(line.split()) >= 2)
    cache = int(stats.get("inactive_file", stats.get("total_inactive_file", 0)))
    return max(limit - used + cache, 0)


def write_entity(prepared: Any, options: Any, records: pd.DataFrame, *, description: str,
                 folder: Path, write: Callable[[Any, Path], None] | None = None,
                 map_options: Any = None, entity: tuple[str, str] | None = None,
                 map_thread: bool | None = None, given: dict | None = None) -> None:
    """Analyse one entity's ``records`` and write its complete output set into ``folder``
    (``write(result, folder)``, default :func:`geoflow.pipeline.write_outputs` with
    ``map_options`` and ``map_thread``, None: by the entity's size). The one per-entity step,
    run in this process or in a worker (where ``map_thread`` is False: the workers keep the
    cores busy). ``given``: its layers and tables made with the other entities'
    (:func:`geoflow.pipeline.batch_frames`)."""
    from geoflow import pipeline

    result = pipeline.analyse(prepared, options=options, records=records,
                              description=description, entity=entity,
                              given=given)
    if write is None:
        pipeline.write_outputs(result, folder, map_options=map_options, reuse_schema=True,
                               map_thread=map_thread)
    else:
        write(result, folder)


#: What a batch worker process holds (set once per worker by :func:`_worker_init`).
_WORKER: dict[str, Any] = {}


def _worker_init(inbox: Any) -> None:
    """A worker's start: imports the modules an entity needs (while the batch's records are
    read), then waits for the shared state (:meth:`Workers.send`)."""
    from geoflow import pipeline

    ignore_ctrl_c()  # the main process alone decides to stop, and stops the workers
    import_map_modules()
    _WORKER.update(pickle.loads(inbox.get()))  # noqa: S301 (from this batch's own process)
    logging.getLogger(pipeline.log.name).setLevel(logging.WARNING)


#: Records of an entity below which the text its analysis makes is held as Python strings,
#: not Arrow's (:func:`python_text`).
PYTHON_TEXT_ROWS = 50_000


def python_text(rows: int) -> contextlib.AbstractContextManager:
    """pandas' text made as Python strings while an entity of fewer than
    :data:`PYTHON_TEXT_ROWS` records is written: on a batch's small tables each Arrow call
    costs tens of microseconds whatever its length (the sample's 31 states: about 8 % of an
    entity's CPU). The files are the same either way (Parquet gets Arrow text); a large
    entity keeps Arrow's compact text."""
    if rows >= PYTHON_TEXT_ROWS:
        return contextlib.nullcontext()
    return pd.option_context("mode.string_storage", "python")


#: Categories of a column (its distinct values in the whole input) from which an entity's
#: records keep only their own (:func:`entity_records`).
TRIM_CATEGORIES = 5_000


def entity_records(records: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    """The records at ``rows`` (one entity's), each categorical of :data:`TRIM_CATEGORIES` or
    more categories, and more than the entity's records, over only the categories they use,
    in their order (columns that share categories share the trimmed ones): an entity's
    tables, labels and layers then cost what its own records hold, not what the whole
    input's distinct purchasers, dealers and places number (1M records ``--per dealer``,
    an entity's text held by Python: 410 -> 235 ms an entity). Smaller categories are left
    as they are: trimming them costs more than it saves."""
    part = records.iloc[rows]
    groups: dict[int, list[str]] = {}
    for column in part.columns:
        dtype = part[column].dtype
        if (isinstance(dtype, pd.CategoricalDtype) and not dtype.ordered
                and len(dtype.categories) >= max(TRIM_CATEGORIES, len(part) + 1)):
            groups.setdefault(id(dtype), []).append(column)
    trimmed = {}
    for columns in groups.values():
        codes = {column: part[column].cat.codes.to_numpy() for column in columns}
        used = np.unique(np.concatenate([c[c >= 0] for c in codes.values()]))
        categories = part[columns[0]].dtype.categories.take(used)
        dtype = from_codes(np.zeros(0, dtype=np.int8), categories).dtype  # one, shared
        for column, old in codes.items():
            new = np.where(old >= 0, np.searchsorted(used, old), -1)
            trimmed[column] = pd.Series(pd.Categorical.from_codes(new, dtype=dtype,
                                                                  validate=False),
                                        index=part.index, name=column)
    return part.assign(**trimmed) if trimmed else part


def _write_task(shared: dict[str, Any], rows: Any, description: str, folder: Path, label: str,
                entity: tuple[str, str] | None = None, *, map_thread: bool | None = False
                ) -> str:
    """One entity of a batch (a task of :func:`run_batch`) written with the batch's
    ``shared`` state, collecting garbage less often (:func:`fewer_collections`), its text
    made by Python if it is small (:func:`python_text`); its label."""
    made = shared.get("made")
    with fewer_collections(), python_text(len(rows)):
        records = entity_records(shared["records"], rows)
        write_entity(shared["prepared"], shared["options"], records,
                     description=description, folder=folder, write=shared["write"],
                     map_options=shared["map_options"], entity=entity, map_thread=map_thread,
                     given=None if made is None else made.of(rows))
    return label


def _worker_task(*task: Any) -> str:
    return _write_task(_WORKER, *task)


class Workers:
    """A batch's ``count`` worker processes (``spawn``), started before its records are read
    so that their start (about 2.5 s of imports each) overlaps the read: ``run --per`` starts
    them first and hands them to :func:`run_batch`, which sends them the records
    (:meth:`send`) and stops them when done. As a context manager, stopped on leaving (an
    error or Ctrl-C before the batch began)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._others = set(multiprocessing.active_children())
        self._inbox = multiprocessing.get_context("spawn").Queue()
        #: ``ready``: one per worker, done once it has started and holds the records
        self.pool, self.ready = spawn_pool(count, _worker_init, (self._inbox,))

    def send(self, shared: dict[str, Any]) -> None:
        """The batch's shared state (records, options, writer), one copy per worker. Pickled
        here, once: what cannot be pickled (a ``write`` that is not a module-level function)
        raises now, not in the queue's thread, where the workers would wait for ever."""
        payload = pickle.dumps(shared, protocol=pickle.HIGHEST_PROTOCOL)
        for _ in range(self.count):
            self._inbox.put(payload)

    def stop(self) -> None:
        """End the workers now, before the batch's temporary folder is removed (a worker left
        running would write into it, or recreate it): queued entities dropped, running ones
        ended (the process's children from before the workers are left alone). Records not
        yet sent are dropped too: a worker that ended reads no more of them."""
        end_now(self.pool, self._others)
        self._inbox.cancel_join_thread()
        self._inbox.close()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _write_together(tasks: list[tuple], *, workers: Workers, shared: dict[str, Any],
                    progress: Callable[[str], None] | None) -> None:
    """Write ``tasks`` in this process and in ``workers`` spawned ones, each taking the next
    entity as it becomes free. This process starts at once (everything is imported and the
    records are here); a worker gets entities only once it has started (about 2.5 s of
    imports and unpickling), so a small batch is not kept waiting for it. A thread hands the
    workers their entities, so none waits while this process draws one of its own."""
    pending, lock, stop = deque(tasks), threading.Lock(), threading.Event()
    finished: queue.SimpleQueue = queue.SimpleQueue()  # workers' finished futures
    handed = reported = 0  # entities handed to the workers, and reported done here

    def next_task(*, to_worker: bool) -> tuple | None:
        nonlocal handed
        with lock:
            if not pending or stop.is_set():
                return None
            handed += to_worker
            return pending.popleft()

    def feed() -> None:
        running = set(workers.ready)
        try:
            while running:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    if future.cancelled():
                        continue
                    if future.exception() is not None or future.result() is not None:
                        finished.put(future)  # an entity's label, or an error raised below
                    if future.exception() is None and (
                            task := next_task(to_worker=True)) is not None:
                        running.add(workers.pool.submit(_worker_task, *task))
        except RuntimeError:  # the pool is shut down: this process is stopping the batch
            return

    def report(future: Any) -> None:
        nonlocal reported
        try:
            label = future.result()  # a worker's error stops the batch here
        except BrokenProcessPool as exc:
            raise OutputError(
                "a batch worker process ended abruptly (killed, or out of memory); the batch "
                "stopped and left OUT as it was: run it again, with a lower --jobs if memory "
                "is short") from exc
        reported += 1
        if progress is not None:
            progress(label)

    workers.send(shared)
    try:
        threading.Thread(target=feed, name="geoflow-batch-feeder", daemon=True).start()
        while (task := next_task(to_worker=False)) is not None:
            label = _write_task(shared, *task)
            if progress is not None:
                progress(label)
            while not finished.empty():
                report(finished.get())
        while reported < handed or not finished.empty():  # the workers' last entities
            with contextlib.suppress(queue.Empty):
                report(finished.get(timeout=0.1))
    finally:  # an error, Ctrl-C or SIGTERM: stop now, not after the queue; else they are idle
        stop.set()  # now, or still starting with no entity left for them
        workers.stop()


def run_batch(
    prepared: Any,
    *,
    kind: str,
    out_dir: str | Path,
    options: Any = None,
    records: pd.DataFrame | None = None,
    description: str = "",
    min_guns: int | None = None,
    force: bool = False,
    title: str | None = None,
    write: Callable[[Any, Path], None] | None = None,
    progress: Callable[[str], None] | None = None,
    begin: Callable[[int], None] | None = None,
    map_options: Any = None,
    jobs: int = 1,
    resume: bool = False,
    workers: Workers | None = None,
) -> BatchResult:
    """Analyse and write one output set per entity of ``kind``, plus index.html and manifest.

    ``prepared`` is a ``pipeline.PreparedRecords`` (read and geocoded once); ``records``
    defaults to its records (pass filtered ones to batch within a filter, and their
    ``description``). ``write(result, folder)`` writes one entity's outputs (default:
    ``pipeline.write_outputs`` with ``map_options``); ``begin(n)`` is called with the number of
    entities once they are listed, ``progress(label)`` after each entity. ``jobs`` > 1
    writes entities in this process and ``jobs - 1`` worker processes (``spawn``: forking
    after Arrow's threads start can deadlock), each taking the next entity when free
    (:func:`_write_together`); each worker receives the records once, and ``write`` must
    then be a module-level function. The files are the same either way.
    The batch is built beside ``out_dir`` and swapped in at the end; an existing ``out_dir``
    not written by geoflow is refused unless ``force``.

    A batch that was killed (``kill -9``, a power cut, a closed session) leaves its temporary
    folder with a checkpoint (:func:`checkpoint`). With ``resume``, a later batch of the same
    input, options and entities takes that folder over and writes only the output sets it
    lacks (Ctrl-C and SIGTERM still remove it: they stop the batch on purpose).

    ``workers``: :class:`Workers` started beforehand (``jobs`` is then their count + 1), so
    their start overlapped the read; the batch stops them when it ends, however it ends.
    """
    with workers if workers is not None else contextlib.nullcontext():
        from geoflow import export, pipeline

        options = options if options is not None else prepared.options
        records = prepared.records if records is None else records
        show_names = bool(getattr(options, "show_names", False))
        table, accounting = entity_table(records, kind, min_guns=min_guns, show_names=show_names,
                                         min_cell=int(getattr(options, "min_cell", 1)))
        keys = entity_keys(records, kind)
        positions = pd.Series(range(len(records)), index=records.index).groupby(
            keys.to_numpy(), dropna=True).indices if len(records) else {}
        if begin is not None:
            begin(len(table))
        singular = _KIND_TITLES[kind][0]
        title = f"{title} — by {in_sentence(singular)}" if title else (
            f"Guns traced to Mexico by {in_sentence(singular)}")
        token = checkpoint(prepared, kind=kind, options=options, description=description,
                           table=table, map_options=map_options, write=write)
        with (export.atomic_output_dir(out_dir, force=force, checkpoint=token,
                                       resume=resume) as temp,
              quiet_logger(pipeline.log.name)):
            tasks, resumed = [], 0  # one analysis per entity, not per record
            _drop_partial_entities(temp / kind)
            for row in table.itertuples(index=False):
                folder = safe_child(temp, kind, row.slug)
                if (folder / "manifest.json").is_file():  # written by the batch taken over
                    resumed += 1
                    if progress is not None:
                        progress(str(row.label))
                    continue
                part = f"{singular}: {row.label}"
                tasks.append((positions[row.key], f"{description}; {part}" if description else part,
                              folder, str(row.label), (kind, str(row.label))))
            if resumed:
                log.info("resuming a killed batch: %d of %d output sets already written", resumed,
                         len(table))
            jobs = max(1, min(int(jobs), len(tasks)))
            if workers is None and jobs > 1:
                workers = Workers(jobs - 1)
            with python_text(len(records)):  # as each entity's text is made
                made = pipeline.batch_frames(records, [task[0] for task in tasks], options,
                                             report=prepared.geocode_report, kind=kind)
            shared = {"prepared": prepared, "options": options, "records": records,
                      "write": write, "map_options": map_options, "made": made}
            if workers is None or len(tasks) < 2:
                for task in tasks:  # one process: a large entity's map drawn on a thread
                    label = _write_task(shared, *task, map_thread=None)
                    if progress is not None:
                        progress(label)
            else:
                _write_together(tasks, workers=workers, shared=shared, progress=progress)
            notes = _accounting_notes(accounting, kind=kind)
            html = render_index(table, kind=kind, title=title, description=description,
                                notes=notes, totals={"guns": accounting["records"]},
                                synthetic=pipeline.prepared_synthetic(prepared))
            export.safe_path(temp, "index.html").write_text(html, encoding="utf-8")
            manifest = _manifest(prepared, kind=kind, description=description, table=table,
                                 accounting=accounting, options=options)
            export.write_json(manifest, export.safe_path(temp, "manifest.json"))
        log.debug("%s written to %s (index.html lists them)", count_of(len(table), kind),
                  out_dir)
        return BatchResult(out_dir=Path(out_dir), kind=kind, entities=table, manifest=manifest,
                           resumed=resumed)


def checkpoint(prepared: Any, *, kind: str, options: Any, description: str,
               table: pd.DataFrame, map_options: Any = None,
               write: Callable[[Any, Path], None] | None = None) -> str | None:
    """What a batch's output sets depend on, as one text (None: an input without a hash,
    which cannot be told apart from another): geoflow's version, the input's SHA-256, the
    options (and the overrides file's content), the map's look, the writer and every entity
    with its folder and guns. A killed batch is resumed only under the same text."""
    source = prepared.source
    if not source.get("sha256"):
        return None
    overrides = getattr(options, "overrides", None)
    try:
        overrides_hash = (hashlib.sha256(Path(overrides).read_bytes()).hexdigest()
                          if isinstance(overrides, (str, Path)) else None)
    except OSError:
        overrides_hash = None
    entities = hashlib.sha256(table[["key", "slug", "guns", "placed"]].to_csv(
        index=False).encode("utf-8")).hexdigest()
    return json.dumps({
        "version": __version__, "input": source.get("sha256"), "kind": kind,
        "description": description,
        "options": options.describe() if hasattr(options, "describe") else repr(options),
        "overrides": overrides_hash, "map": repr(map_options),
        "write": None if write is None else
        f"{getattr(write, '__module__', '')}.{getattr(write, '__qualname__', repr(write))}",
        "entities": entities,
    }, sort_keys=True, default=str)


def _drop_partial_entities(folder: Path) -> None:
    """Remove the half-written output sets (``.<slug>.tmp-…``) a killed batch left in
    ``folder``; complete ones were renamed into place whole."""
    if folder.is_dir():
        for path in folder.iterdir():
            if path.name.startswith(".") and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)


def _accounting_notes(accounting: dict[str, int], *, kind: str) -> list[str]:
    """index.html's sentences on the guns in no entity's folder."""
    notes = []
    if below := accounting["entities_below_threshold"]:
        guns = accounting["guns_below_threshold"]
        notes.append(
            f"{count_of(below, kind).replace(' ', ' more ', 1)} with fewer than "
            f"{accounting['min_guns']:,} guns{' each' if below > 1 else ''} "
            f"({plural(guns, 'gun')}) {_are(below)} not listed."
        )
    if repeated := accounting.get("duplicate_records"):
        notes.append(f"{plural(repeated, 'repeated trace record')} {_are(repeated)} not "
                     "counted again.")
    if (stray := accounting["records_without_entity"]):
        noun = in_sentence(_KIND_TITLES[kind][0])
        why = " (the geocoder could not tell which)" if kind in ("state", "mx-state") else ""
        notes.append(f"{plural(stray, 'gun')} {'has' if stray == 1 else 'have'} no "
                     f"{noun}{why} and {_are(stray)} in no folder.")
    return notes


def _manifest(prepared: Any, *, kind: str, description: str, table: pd.DataFrame,
              accounting: dict[str, int], options: Any) -> dict[str, Any]:
    from geoflow.export import GENERATOR
    from geoflow.pipeline import prepared_synthetic

    source = dict(getattr(prepared, "source", {}) or {})
    return {
        "generator": GENERATOR,
        "version": __version__,
        "created": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
        "batch": kind,
        "description": description,
        "show_names": bool(getattr(options, "show_names", False)),
        "synthetic": prepared_synthetic(prepared),
        # the file name only: an absolute path would publish the user's folders
        "input": {"path": Path(str(source.get("path", ""))).name,
                  **{k: source.get(k) for k in ("sha256", "format", "rows_read")}},
        "options": options.describe() if hasattr(options, "describe") else {},
        "counts": accounting,
        "entities": [
            {"slug": row.slug, "folder": row.folder, "key": row.key, "label": row.label,
             "guns": int(row.guns), "placed": int(row.placed)}
            for row in table.itertuples(index=False)  # one entry per entity
        ],
        "files": ["index.html", "manifest.json", *(f"{f}/" for f in table["folder"])],
    }
