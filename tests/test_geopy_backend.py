"""geopy back-end: geopy's real Nominatim client against a loopback server answering like
Nominatim. Cache hits, rate limiting, error responses and timeouts; no internet."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pandas as pd
import pytest

from geoflow.errors import GeocodeError
from geoflow.geocode import GeopyGeocoder, geocode

# Invented places the shipped gazetteer does not know (the offline answer is the state).
KNOWN = {
    "EJIDO ZZYZX, CHIH.": (28.91, -106.02, "Ejido Zzyzx, Chihuahua, México", "MX-CHH"),
    "RANCHO QWXV, SON.": (30.10, -110.50, "Rancho Qwxv, Sonora, México", "MX-SON"),
    "RANCHO MISPLACED, SON.": (28.70, -106.10, "Rancho Misplaced, Chihuahua, México", "MX-CHH"),
    # claims Chihuahua but the point is in Texas: the state polygons decide
    "RANCHO TEJANO, CHIH.": (31.00, -100.00, "Rancho Tejano, Chihuahua, México", "MX-CHH"),
}


class FakeNominatim(BaseHTTPRequestHandler):
    """Answers ``/search`` like Nominatim's JSON API; special queries misbehave."""

    def do_GET(self):
        params = parse_qs(urlparse(self.path).query)
        query = params.get("q", [""])[0]
        self.server.requests.append((time.monotonic(), query, params))
        if "SLOW" in query:
            time.sleep(1.5)
        if "BUSY" in query:
            return self._send(429, {"error": "Too Many Requests"})
        if "BROKEN" in query:
            return self._send(500, {"error": "Internal Server Error"})
        if query not in KNOWN:
            return self._send(200, [])
        lat, lon, name, iso = KNOWN[query]
        return self._send(200, [{
            "place_id": 1, "lat": str(lat), "lon": str(lon), "display_name": name,
            "addresstype": "village", "class": "place", "type": "village", "importance": 0.3,
            "address": {"village": name.split(",")[0], "state": name.split(", ")[1],
                        "ISO3166-2-lvl4": iso, "country": "México", "country_code": "mx"},
        }])

    def _send(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # client gave up
            self.wfile.write(body)

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeNominatim)
    httpd.daemon_threads = True
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def make(server, tmp_path, **kwargs) -> GeopyGeocoder:
    options = {"user_agent": "geoflow-tests", "domain": f"127.0.0.1:{server.server_port}",
               "scheme": "http", "cache_path": tmp_path / "cache.sqlite", "timeout": 5}
    options.update(kwargs)
    return GeopyGeocoder("nominatim", **options)


def test_network_answers_gaps_rate_limited_then_cache_answers_without_requests(server, tmp_path):
    queries = ["EJIDO ZZYZX, CHIH.", "CD. JUAREZ, CHIH.", "RANCHO QWXV, SON."]
    first = geocode(queries, country="MX", geocoder=make(server, tmp_path))
    asked = [q for _, q, _ in server.requests]
    assert asked == ["EJIDO ZZYZX, CHIH.", "RANCHO QWXV, SON."]  # Juárez answered offline
    assert server.requests[0][2]["countrycodes"] == ["mx"]
    times = [t for t, _, _ in server.requests]
    assert times[1] - times[0] >= 1.0  # at most one request a second
    assert first["source"].tolist() == ["nominatim", "offline", "nominatim"]
    assert (first.loc[0, "lat"], first.loc[0, "lon"]) == (28.91, -106.02)
    assert first.loc[0, "admin1"] == "MX-CHH" and first.loc[0, "level"] == "city"
    assert first.loc[0, "matched_name"].startswith("Ejido Zzyzx")

    server.requests.clear()
    start = time.monotonic()
    second = geocode(queries, country="MX",
                     geocoder=make(server, tmp_path, min_delay_seconds=30.0))
    assert server.requests == []  # every answer from the SQLite cache
    assert time.monotonic() - start < 15.0  # and no waiting for the (30 s) rate limit
    assert second[["lat", "lon", "source"]].equals(first[["lat", "lon", "source"]])
    assert second["note"].str.contains("cached").sum() == 2


def test_error_responses_are_reported_per_query_and_the_offline_answer_stays(server, tmp_path):
    geocoder = make(server, tmp_path, min_delay_seconds=0.1)
    got = geocode(["BROKEN PLACE, CHIH.", "BUSY PLACE, CHIH.", "EJIDO ZZYZX, CHIH."],
                  country="MX", geocoder=geocoder)
    assert [q for _, q, _ in server.requests] == ["BROKEN PLACE, CHIH.", "BUSY PLACE, CHIH."]
    assert "nominatim: GeocoderServiceError" in got.loc[0, "note"]
    assert "nominatim: rate limited" in got.loc[1, "note"]
    assert "not asked (rate limited)" in got.loc[2, "note"]
    assert got["level"].eq("state").all() and got["source"].eq("offline").all()
    assert got["admin1"].eq("MX-CHH").all() and got["lat"].notna().all()
    # errors are not cached: a later run asks again
    server.requests.clear()
    geocode(["BROKEN PLACE, CHIH."], country="MX", geocoder=make(server, tmp_path))
    assert len(server.requests) == 1


def test_a_timeout_is_reported_not_swallowed(server, tmp_path):
    got = geocode(["SLOW PLACE, SON."], country="MX",
                  geocoder=make(server, tmp_path, timeout=0.3)).iloc[0]
    assert "GeocoderTimedOut" in got["note"]
    assert len(server.requests) == 1  # no silent retries behind the rate limiter's back
    assert got["level"] == "state" and got["admin1"] == "MX-SON" and got["source"] == "offline"


def test_answers_outside_the_given_state_and_empty_answers_are_refused(server, tmp_path):
    geocoder = make(server, tmp_path, min_delay_seconds=0.1)
    got = geocode(["RANCHO MISPLACED, SON.", "NOWHERE AT ALL, SON."], country="MX",
                  geocoder=geocoder)
    assert got.loc[0, "admin1"] == "MX-SON" and got.loc[0, "source"] == "offline"
    assert "answer in MX-CHH, not MX-SON" in got.loc[0, "note"]
    assert "no result" in got.loc[1, "note"]
    lying = geocode(["RANCHO TEJANO, CHIH."], country="MX", geocoder=geocoder).iloc[0]
    assert lying["admin1"] == "MX-CHH" and lying["source"] == "offline"
    assert "answer in US-TX, outside MX" in lying["note"]
    server.requests.clear()
    again = geocode(["NOWHERE AT ALL, SON."], country="MX", geocoder=make(server, tmp_path))
    assert server.requests == [] and "(cached): no result" in again.loc[0, "note"]


def test_bad_options_raise_geocode_errors(tmp_path):
    with pytest.raises(GeocodeError, match="user agent"):
        GeopyGeocoder("nominatim", user_agent="", cache_path=tmp_path / "c.sqlite")
    with pytest.raises(GeocodeError, match="unknown geocoder"):
        GeopyGeocoder("carrier-pigeon", user_agent="x", cache_path=tmp_path / "c.sqlite")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(GeocodeError, match="cache"):
        GeopyGeocoder("nominatim", user_agent="x", cache_path=blocker / "c.sqlite")


def test_cli_uses_the_geopy_service_with_its_options(server, tmp_path):
    from click.testing import CliRunner

    from geoflow.cli import cli

    places = tmp_path / "places.csv"
    places.write_text('city\n"EJIDO ZZYZX, CHIH."\n"CD. JUAREZ, CHIH."\n', encoding="utf-8")
    out = tmp_path / "out.csv"
    args = ["geocode", str(places), "--column", "city", "--country", "MX", "-o", str(out),
            "--geocoder", "nominatim", "--user-agent", "geoflow-tests",
            "--domain", f"127.0.0.1:{server.server_port}", "--scheme", "http",
            "--cache", str(tmp_path / "cache.sqlite")]
    result = CliRunner().invoke(cli, args, obj={})
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out)
    assert rows["source"].tolist() == ["nominatim", "offline"]
    assert len(server.requests) == 1
    no_agent = [*args[:8], "--geocoder", "nominatim", "--cache", str(tmp_path / "c.sqlite")]
    result = CliRunner().invoke(cli, no_agent, obj={})
    assert result.exit_code == 5 and "user agent" in result.output


def test_services_that_need_a_key_say_so(tmp_path):
    with pytest.raises(GeocodeError, match="api-key"):
        GeopyGeocoder("opencage", user_agent="x", cache_path=tmp_path / "c.sqlite")
    keyed = GeopyGeocoder("opencage", user_agent="x", api_key="k",
                          cache_path=tmp_path / "c.sqlite")
    keyed.close()
