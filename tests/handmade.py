"""Small hand-made prepared-record frames and ports for unit tests of flows/aggregate/export.

They follow docs/internals.md (io + geocode + crossings columns, plus ids and ``placed``), so
pure functions can be tested without reading, geocoding or routing anything.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import geopandas as gpd
import pandas as pd
import shapely

from geoflow.flows import dealer_ids
from geoflow.privacy import pseudonymise

PORTS = gpd.GeoDataFrame(
    {
        "code": ["2304", "2604", "2402", "2305"],
        "name": ["Laredo", "Nogales", "El Paso", "Hidalgo/Pharr"],
        "us_state": ["US-TX", "US-AZ", "US-TX", "US-TX"],
        "mx_city": ["Nuevo Laredo", "Nogales", "Ciudad Juárez", "Reynosa"],
    },
    geometry=shapely.points(
        [-99.507, -110.943, -106.451, -98.208], [27.500, 31.333, 31.764, 26.095]
    ),
    crs="EPSG:4326",
)

#: place label → (display name, ISO admin1, lon, lat)
PLACES = {
    "dundee": ("East Dundee, IL", "US-IL", -88.271, 42.099),
    "albert_lea": ("Albert Lea, MN", "US-MN", -93.368, 43.648),
    "houston": ("Houston, TX", "US-TX", -95.369, 29.760),
    "phoenix": ("Phoenix, AZ", "US-AZ", -112.074, 33.448),
    "cdmx": ("Ciudad de México, CMX", "MX-CMX", -99.133, 19.433),
    "reynosa": ("Reynosa, TAM", "MX-TAM", -98.298, 26.080),
    "hermosillo": ("Hermosillo, SON", "MX-SON", -110.961, 29.073),
    "culiacan": ("Culiacán, SIN", "MX-SIN", -107.394, 24.809),
}


def make_records(rows: list[dict]) -> pd.DataFrame:
    """Prepared records from short dicts: ``purchaser``, ``dealer``, ``ffl``, ``dealer_at``,
    ``recovered_at`` (keys of PLACES or None), ``port``, ``kind``, ``bought``, ``recovered``,
    ``weapon``, ``n`` (copies)."""
    out = []
    line = 2
    for row in rows:
        for _ in range(row.get("n", 1)):
            dealer = PLACES.get(row.get("dealer_at", "houston"))
            recovery = PLACES.get(row.get("recovered_at", "cdmx"))
            bought = pd.Timestamp(row.get("bought", "2008-01-15"))
            recovered = pd.Timestamp(row.get("recovered", "2009-06-01"))
            placed = dealer is not None and recovery is not None
            out.append({
                "trace_id": f"T{line}",
                "source_line": line,
                "weapon_type": row.get("weapon", "Pistol"),
                "purchaser_name": row.get("purchaser"),
                "possessor_name": row.get("possessor"),
                "purchase_date": bought,
                "dealer_name": row.get("dealer", "Gun Shop"),
                "dealer_ffl": row.get("ffl"),
                "dealer_city": dealer[0].split(",")[0] if dealer else row.get("dealer_city"),
                "dealer_state": dealer[1][3:] if dealer else None,
                "dealer_zip": None,
                "recovery_date": recovered,
                "recovery_city": recovery[0].split(",")[0] if recovery else "NOWHERE",
                "recovery_state": recovery[1][3:] if recovery else None,
                "recovery_country": "MX",
                "crossing": None,
                "time_to_crime_days": float((recovered - bought).days),
                "dealer_place": dealer[0] if dealer else None,
                "dealer_admin1": dealer[1] if dealer else None,
                "dealer_lon": dealer[2] if dealer else None,
                "dealer_lat": dealer[3] if dealer else None,
                "dealer_geocode_level": "city" if dealer else None,
                "recovery_place": recovery[0] if recovery else None,
                "recovery_admin1": recovery[1] if recovery else None,
                "recovery_lon": recovery[2] if recovery else None,
                "recovery_lat": recovery[3] if recovery else None,
                "recovery_geocode_level": "city" if recovery else None,
                "crossing_code": row.get("port", "2304") if placed else None,
                "route_kind": row.get("kind", "modelled") if placed else None,
                "placed": placed,
                "unplaced_reason": None if placed else (
                    "no dealer location" if dealer is None else "no recovery location"),
            })
            line += 1
    frame = pd.DataFrame(out)
    for column in ("dealer_lon", "dealer_lat", "recovery_lon", "recovery_lat"):
        frame[column] = frame[column].astype(float)
    for column in frame.columns:
        if frame[column].dtype == object:
            frame[column] = frame[column].astype("string")
    frame = pseudonymise(frame)
    frame["dealer_id"] = dealer_ids(frame)
    frame["placed"] = frame["placed"].astype(bool)
    return frame


def output_text(path: Path) -> str:
    """An output file's text; a Parquet file (flows_full.parquet) as the CSV of its columns,
    a PNG (map.png) as its text chunks (its words are pixels: map.svg holds the same text),
    an HTML page with its title's unbreakable words (``span.gf-nobreak``) as plain text."""
    if path.suffix == ".parquet":
        return pd.read_parquet(path).drop(columns="geometry").to_csv()
    if path.suffix == ".gpkg":  # every layer as CSV (SQLite pages are no text to search)
        import pyogrio

        return "\n".join(
            pyogrio.read_dataframe(path, layer=name, read_geometry=False).to_csv()
            for name, _ in pyogrio.list_layers(path))
    if path.suffix == ".png":
        from PIL import Image

        with Image.open(path) as image:
            return "\n".join(f"{k} {v}" for k, v in image.text.items())
    if path.suffix in {".shp", ".shx", ".dbf"}:  # binary; their text is UTF-8
        return path.read_bytes().decode("utf-8", errors="replace")
    if path.suffix == ".html":  # a title's hyphenated words are spans: read as one text
        return _NOBREAK.sub(r"\1", path.read_text(encoding="utf-8"))
    return path.read_text(encoding="utf-8")


_NOBREAK = re.compile(r'<span class="gf-nobreak">([^<]*)</span>')


def batch_files(out: Path) -> dict[str, object]:
    """Every file of a batch: bytes, manifests without their run-dependent keys."""
    volatile = {"created", "timings", "memory_peak_mb"}
    files = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        key = path.relative_to(out).as_posix()
        if path.name == "manifest.json":
            data = json.loads(path.read_text(encoding="utf-8"))
            files[key] = {k: v for k, v in data.items() if k not in volatile}
        else:
            files[key] = path.read_bytes()
    return files


def write_noting_process(result, folder) -> None:
    """A batch's per-entity writer for tests (module level: workers unpickle it): the default
    output set, and a note outside OUT of the process that wrote it (``<pid>-<folder>`` in
    ``$GEOFLOW_TEST_WRITERS``). The process named by ``$GEOFLOW_TEST_MAIN`` (the batch's own)
    then waits until a worker has written an entity, so a worker always writes some."""
    import os
    import time

    from geoflow.pipeline import write_outputs

    write_outputs(result, folder, reuse_schema=True)
    notes = Path(os.environ["GEOFLOW_TEST_WRITERS"])
    (notes / f"{os.getpid()}-{Path(folder).name}").touch()
    main = os.environ.get("GEOFLOW_TEST_MAIN")
    deadline = time.monotonic() + 120
    while main == str(os.getpid()) and time.monotonic() < deadline and all(
            note.name.startswith(f"{main}-") for note in notes.iterdir()):
        time.sleep(0.05)


def write_unless_a_worker(result, folder) -> None:
    """A batch's per-entity writer for tests whose workers die (SIGKILL, as the kernel's OOM
    killer ends a process) after noting it in ``$GEOFLOW_TEST_WRITERS``; the batch's own
    process (``$GEOFLOW_TEST_MAIN``) writes, once a worker has died."""
    import os
    import signal
    import time

    from geoflow.pipeline import write_outputs

    notes = Path(os.environ["GEOFLOW_TEST_WRITERS"])
    if os.environ["GEOFLOW_TEST_MAIN"] != str(os.getpid()):
        (notes / str(os.getpid())).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    deadline = time.monotonic() + 120
    while not any(notes.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    write_outputs(result, folder, write_map=False, reuse_schema=True)
