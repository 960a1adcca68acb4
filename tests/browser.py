"""A small driver for Debian's headless Chromium over the Chrome DevTools Protocol (CDP).

Used by the map's browser tests: open a page with the network blocked, evaluate JavaScript,
collect console errors and every request the page tried to make, take a screenshot.

    with Browser.launch() as browser:
        page = browser.new_page()
        page.goto(path.as_uri())
        page.evaluate("document.title")
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websocket

__all__ = ["Browser", "Page", "BrowserError", "find_chromium"]

#: Flags from the project brief: headless, no sandbox (root in CI), nothing in the background.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
    "--window-size=1280,860",
    # No way out even if a request slipped past Network.setBlockedURLs:
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--proxy-server=127.0.0.1:9",
    "--remote-debugging-port=0",
)
#: URL patterns the page may not fetch (Network.setBlockedURLs wildcards).
BLOCKED = ["http://*", "https://*", "ws://*", "wss://*"]


class BrowserError(RuntimeError):
    """Chromium is missing, did not start, or a CDP command failed."""


def find_chromium() -> str | None:
    """Path of the Chromium binary: ``$GEOFLOW_CHROMIUM``, ``chromium`` on PATH, or None."""
    for candidate in (os.environ.get("GEOFLOW_CHROMIUM"), shutil.which("chromium"),
                      shutil.which("chromium-browser"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@dataclass
class Page:
    """One tab, attached through a flat CDP session; events are recorded as they arrive."""

    browser: Browser
    session_id: str
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def send(self, method: str, **params: Any) -> dict:
        return self.browser.send(method, params, session_id=self.session_id)

    def on_event(self, message: dict) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in {"error", "assert"}:
            text = " ".join(str(a.get("value", a.get("description", "")))
                            for a in params.get("args", []))
            self.console_errors.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exc = details.get("exception", {}).get("description") or details.get("text")
            self.console_errors.append(f"exception: {exc}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.console_errors.append(f"log: {entry.get('text')} {entry.get('url', '')}")
        elif method == "Network.requestWillBeSent":
            self.requests.append(params.get("request", {}).get("url", ""))

    def goto(self, url: str, *, timeout: float = 20.0) -> None:
        """Navigate and wait for the load event."""
        self.browser.events.clear()
        self.send("Page.navigate", url=url)
        self.browser.wait_event("Page.loadEventFired", self.session_id, timeout=timeout)

    def evaluate(self, expression: str) -> Any:
        """Run JavaScript in the page and return its (JSON) value; raise on a JS exception."""
        reply = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                          awaitPromise=True)
        if "exceptionDetails" in reply:
            raise BrowserError(f"{expression!r} threw: {reply['exceptionDetails']}")
        return reply.get("result", {}).get("value")

    def wait_for(self, expression: str, *, timeout: float = 10.0) -> Any:
        """Poll ``expression`` until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value or time.monotonic() > deadline:
                return value
            time.sleep(0.05)

    def screenshot(self, path: Path) -> Path:
        """Save a PNG of the viewport."""
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def external_requests(self) -> list[str]:
        """Requests to anything but ``file:``/``data:``/``about:``/``blob:`` URLs."""
        return [u for u in self.requests if not u.startswith(("file:", "data:", "about:",
                                                              "blob:"))]

    def close(self) -> None:
        self.browser.send("Target.closeTarget", {"targetId": self.target_id})

    target_id: str = ""


class Browser:
    """A headless Chromium process and one CDP websocket to it."""

    def __init__(self, process: subprocess.Popen, ws: websocket.WebSocket, profile: str) -> None:
        self.process = process
        self.ws = ws
        self.profile = profile
        self.events: list[dict] = []
        self.pages: dict[str, Page] = {}
        self._next_id = 0

    @classmethod
    def launch(cls, *, binary: str | None = None, timeout: float = 30.0) -> Browser:
        """Start Chromium headless and connect to it; BrowserError if it cannot be found."""
        binary = binary or find_chromium()
        if binary is None or not Path(binary).is_file():
            where = f" at {binary}" if binary else ""
            raise BrowserError(
                f"headless Chromium not found{where}: install Debian's `chromium` (apt-get "
                "install chromium, as .ci/run does) or set GEOFLOW_CHROMIUM; set "
                "GEOFLOW_SKIP_BROWSER=1 to skip the browser tests")
        profile = tempfile.mkdtemp(prefix="geoflow-chromium-")
        process = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(profile, "DevToolsActivePort")
        deadline = time.monotonic() + timeout
        while not (port_file.is_file() and len(port_file.read_text().split()) >= 2):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait()
                shutil.rmtree(profile, ignore_errors=True)
                raise BrowserError(f"{binary} did not start (exit code {process.returncode})")
            time.sleep(0.05)
        port, path = port_file.read_text().split()[:2]
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=timeout,
                                         suppress_origin=True)
        return cls(process, ws, profile)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _dispatch(self, message: dict) -> None:
        page = self.pages.get(message.get("sessionId", ""))
        if page is not None:
            page.on_event(message)
        self.events.append(message)

    def send(self, method: str, params: dict | None = None, *, session_id: str | None = None,
             timeout: float = 30.0) -> dict:
        """Send one CDP command and wait for its reply (events seen meanwhile are recorded)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session_id:
            message["sessionId"] = session_id
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._dispatch(reply)
        raise BrowserError(f"{method}: no reply in {timeout} s")

    def wait_event(self, method: str, session_id: str, *, timeout: float = 20.0) -> dict:
        """Wait for an event of ``method`` on a session."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("method") == method and event.get("sessionId") == session_id:
                    self.events.remove(event)
                    return event
            if time.monotonic() > deadline:
                raise BrowserError(f"no {method} in {timeout} s")
            self.ws.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                self._dispatch(json.loads(self.ws.recv()))
            except websocket.WebSocketTimeoutException:
                continue

    def new_page(self, *, offline: bool = True) -> Page:
        """A fresh tab with console, log and network recording on; network blocked if offline."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"]
        page = Page(self, session)
        page.target_id = target
        self.pages[session] = page
        for method in ("Page.enable", "Runtime.enable", "Log.enable", "Network.enable"):
            page.send(method)
        if offline:
            page.send("Network.setBlockedURLs", urls=BLOCKED)
        page.send("Emulation.setDeviceMetricsOverride", width=1280, height=860,
                  deviceScaleFactor=1, mobile=False)
        return page

    def close(self) -> None:
        """Close Chromium (politely, then by its process handle) and remove its profile."""
        with contextlib.suppress(BrowserError, OSError, websocket.WebSocketException):
            self.send("Browser.close", timeout=5)
        try:
            self.ws.close()
        finally:
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            shutil.rmtree(self.profile, ignore_errors=True)
