"""``run``, ``map`` and ``summary`` with an online geocoder: geopy's real Nominatim client
against the loopback fake Nominatim of test_geopy_backend (no internet)."""

from __future__ import annotations

import json

import pandas as pd
import test_geopy_backend
from click.testing import CliRunner

from geoflow.cli import cli
from geoflow.cli_options import GEOCODERS
from geoflow.geocode import GEOPY_SERVICES

server = test_geopy_backend.server  # the loopback fake Nominatim fixture

HEADER = "Purchaser,FFL Name,FFL City,FFL State,Recovery City,Recovery State\n"
PLACED_OFFLINE = ("Ana,Store A,HOUSTON,TX,REYNOSA,TAMPS.\n"
                  "Beto,Store B,PHOENIX,AZ,HERMOSILLO,SON.\n")
#: a village the shipped gazetteer does not know (offline it only gets its state)
UNKNOWN_VILLAGE = "Caro,Store A,HOUSTON,TX,EJIDO ZZYZX,CHIH.\n"


def _traces(tmp_path, rows: str):
    path = tmp_path / "traces.csv"
    path.write_text(HEADER + rows, encoding="utf-8")
    return path


def _online(server, tmp_path) -> list[str]:
    return ["--geocoder", "nominatim", "--user-agent", "geoflow-tests",
            "--geocoder-domain", f"127.0.0.1:{server.server_port}",
            "--geocoder-scheme", "http", "--geocode-cache", str(tmp_path / "cache.sqlite")]


def _invoke(*args: str):
    return CliRunner().invoke(cli, ["-q", *args], obj={})


def test_run_asks_nominatim_only_for_the_place_the_gazetteer_cannot_place(server, tmp_path):
    out = tmp_path / "out"
    source = _traces(tmp_path, PLACED_OFFLINE + UNKNOWN_VILLAGE)
    result = _invoke("run", str(source), "-o", str(out), *_online(server, tmp_path))
    assert result.exit_code == 0, result.output
    assert [q for _, q, _ in server.requests] == ["EJIDO ZZYZX, CHIH."]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["geocoder"] == "nominatim"
    report = pd.read_csv(out / "geocode_report.csv").set_index("query")
    assert report.loc["EJIDO ZZYZX, CHIH.", "source"] == "nominatim"
    assert report.loc["EJIDO ZZYZX, CHIH.", "level"] == "city"
    assert set(report.drop(index="EJIDO ZZYZX, CHIH.")["source"]) == {"offline"}
    recoveries = json.loads((out / "recoveries.geojson").read_text())["features"]
    village = [f for f in recoveries if f["properties"]["recovery_place"].startswith("Ejido")]
    assert [f["geometry"]["coordinates"] for f in village] == [[-106.02, 28.91]]


def test_no_request_when_everything_is_placed_offline(server, tmp_path):
    out = tmp_path / "out"
    source = _traces(tmp_path, PLACED_OFFLINE)
    result = _invoke("run", str(source), "-o", str(out), *_online(server, tmp_path))
    assert result.exit_code == 0, result.output
    assert server.requests == []
    report = pd.read_csv(out / "geocode_report.csv")
    assert set(report["source"]) == {"offline"}


def test_summary_and_map_take_the_geocoder_options_and_share_the_cache(server, tmp_path):
    source = _traces(tmp_path, PLACED_OFFLINE + UNKNOWN_VILLAGE)
    summary = _invoke("summary", str(source), "--by", "mx-state", "--format", "csv",
                      *_online(server, tmp_path))
    assert summary.exit_code == 0, summary.output
    assert len(server.requests) == 1
    assert "MX-CHH" in summary.output
    page = tmp_path / "map.html"
    drawn = _invoke("map", str(source), "-o", str(page), *_online(server, tmp_path))
    assert drawn.exit_code == 0, drawn.output
    assert len(server.requests) == 1  # the answer came from the cache
    assert "Ejido Zzyzx" in page.read_text(encoding="utf-8")


def test_command_line_wins_over_the_config_file(server, tmp_path):
    config = tmp_path / "geoflow.toml"
    config.write_text('geocoder = "nominatim"\nuser_agent = "from-config"\n'
                      'geocode_cache = "cache.sqlite"\n', encoding="utf-8")
    source = _traces(tmp_path, PLACED_OFFLINE + UNKNOWN_VILLAGE)
    domain = ["--geocoder-domain", f"127.0.0.1:{server.server_port}", "--geocoder-scheme", "http"]
    out = tmp_path / "from-config"
    result = _invoke("run", str(source), "-o", str(out), "--config", str(config), *domain)
    assert result.exit_code == 0, result.output
    assert len(server.requests) == 1
    assert server.requests[0][2].get("q") == ["EJIDO ZZYZX, CHIH."]
    assert (tmp_path / "cache.sqlite").is_file()  # relative to the config file
    offline = tmp_path / "offline"
    result = _invoke("run", str(source), "-o", str(offline), "--config", str(config),
                     "--geocoder", "offline")
    assert result.exit_code == 0, result.output
    assert len(server.requests) == 1  # nothing more asked
    assert json.loads((offline / "manifest.json").read_text())["options"]["geocoder"] == (
        "offline")
    report = pd.read_csv(offline / "geocode_report.csv").set_index("query")
    assert report.loc["EJIDO ZZYZX, CHIH.", ("source", "level")].tolist() == [
        "offline", "state"]


def test_an_online_geocoder_without_user_agent_is_a_usage_error(server, tmp_path):
    out = tmp_path / "out"
    source = _traces(tmp_path, UNKNOWN_VILLAGE)
    args = [a for a in _online(server, tmp_path) if a not in ("--user-agent", "geoflow-tests")]
    result = _invoke("run", str(source), "-o", str(out), *args)
    assert result.exit_code == 2
    assert "nominatim geocoder needs a user agent" in result.output
    assert "--user-agent" in result.output
    assert server.requests == [] and not out.exists()


def test_a_config_file_naming_an_online_geocoder_without_user_agent_names_the_file(tmp_path):
    config = tmp_path / "geoflow.toml"
    config.write_text('geocoder = "nominatim"\n', encoding="utf-8")
    out = tmp_path / "out"
    result = _invoke("run", str(_traces(tmp_path, UNKNOWN_VILLAGE)), "-o", str(out),
                     "--config", str(config))
    assert result.exit_code == 5  # as for `geoflow geocode`: a geocoder set-up error
    assert f"error: {config}: the nominatim geocoder needs a user agent" in result.output
    assert not out.exists()


def test_geocoder_choices_are_the_geopy_services():
    assert ("offline", *GEOPY_SERVICES) == GEOCODERS


# --------------------------------------------------------------------------- loud failures
#: two villages the gazetteer does not know: both need the online service
TWO_UNKNOWN = UNKNOWN_VILLAGE + "Dora,Store B,PHOENIX,AZ,RANCHO QWXV,SON.\n"


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _down(tmp_path) -> list[str]:
    return ["--geocoder", "nominatim", "--user-agent", "geoflow-tests",
            "--geocoder-domain", f"127.0.0.1:{_closed_port()}", "--geocoder-scheme", "http",
            "--geocode-cache", str(tmp_path / "cache.sqlite")]


def test_every_lookup_failing_exits_5_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    source = _traces(tmp_path, PLACED_OFFLINE + TWO_UNKNOWN)
    result = _invoke("run", str(source), "-o", str(out), *_down(tmp_path))
    assert result.exit_code == 5, result.output
    assert "error: nominatim: 2 of 2 look-ups failed: GeocoderUnavailable" in result.stderr
    assert "--allow-offline-fallback" in result.stderr
    assert not out.exists()
    geocoded = _invoke("geocode", str(source), "-o", str(tmp_path / "g.csv"), "--geocoder",
                       "nominatim", "--user-agent", "t", "--domain",
                       f"127.0.0.1:{_closed_port()}", "--scheme", "http", "--cache",
                       str(tmp_path / "c2.sqlite"))
    assert geocoded.exit_code == 5, geocoded.output
    assert "2 of 2 look-ups failed" in geocoded.stderr


def test_allow_offline_fallback_warns_and_records_the_failure(tmp_path):
    out = tmp_path / "out"
    source = _traces(tmp_path, PLACED_OFFLINE + TWO_UNKNOWN)
    result = _invoke("run", str(source), "-o", str(out), *_down(tmp_path),
                     "--allow-offline-fallback")
    assert result.exit_code == 0, result.output
    assert ("warning: nominatim: 2 of 2 look-ups failed: GeocoderUnavailable"
            in result.stderr)
    assert "offline answers used for those places" in result.stderr
    geocoder = json.loads((out / "manifest.json").read_text())["geocoder"]
    assert geocoder["service"] == "nominatim"
    assert (geocoder["lookups"], geocoder["failed"]) == (2, 2)
    assert geocoder["first_error"].startswith("GeocoderUnavailable")
    assert geocoder["offline_fallback_allowed"] is True
    report = pd.read_csv(out / "geocode_report.csv").set_index("query")
    assert report.loc["EJIDO ZZYZX, CHIH.", "level"] == "state"  # the offline answer


def test_some_lookups_failing_warns_with_the_count_and_first_error(server, tmp_path):
    out = tmp_path / "out"
    broken = "Eva,Store B,PHOENIX,AZ,BROKEN PLACE,CHIH.\n"
    source = _traces(tmp_path, PLACED_OFFLINE + UNKNOWN_VILLAGE + broken)
    result = _invoke("run", str(source), "-o", str(out), *_online(server, tmp_path))
    assert result.exit_code == 0, result.output  # one answer came: not a dead service
    assert "warning: nominatim: 1 of 2 look-ups failed: " in result.stderr
    geocoder = json.loads((out / "manifest.json").read_text())["geocoder"]
    assert (geocoder["lookups"], geocoder["failed"]) == (2, 1)


def test_a_dead_service_is_not_asked_for_every_place(tmp_path):
    rows = "".join(f"P{i},Store A,HOUSTON,TX,EJIDO NOWHERE {i},CHIH.\n" for i in range(6))
    source = _traces(tmp_path, rows)
    result = _invoke("summary", str(source), *_down(tmp_path), "--allow-offline-fallback")
    assert result.exit_code == 0, result.output
    assert "6 of 6 look-ups failed" in result.stderr
    report = _invoke("geocode", str(source), "-o", str(tmp_path / "g.csv"), "--geocoder",
                     "nominatim", "--user-agent", "t", "--domain", f"127.0.0.1:{_closed_port()}",
                     "--scheme", "http", "--cache", str(tmp_path / "c3.sqlite"),
                     "--allow-offline-fallback")
    assert report.exit_code == 0, report.output
    notes = pd.read_csv(tmp_path / "geocode_report.csv")["note"].astype(str)
    assert notes.str.contains("GeocoderUnavailable").sum() == 3
    assert notes.str.contains(r"not asked \(service unreachable 3 times in a row\)").sum() == 3
