"""The HTML report in a real headless browser: Debian's ``chromium``.

No Python driver: chromium is started with ``--remote-debugging-pipe`` and spoken to
over the DevTools protocol (JSON messages ending in NUL on file descriptors 3 and 4),
which tells apart console.log from console.error, reports uncaught exceptions and
every network request, and lays out the page so that what was drawn can be measured.
A screenshot of each page goes to ``tests/artifacts/``.

Chromium comes from ``scripts/install-browser.sh`` (run by ``make test``, and here
again when chromium is missing); the tests skip, saying why, only when it cannot be
installed on this machine.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_report import flawed_recording, record, record_fleet

from ocproxy.analytics.html import render_html
from ocproxy.analytics.report import build_report

pytestmark = pytest.mark.browser  # make test-nobrowser deselects these

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(__file__).parent / "artifacts"
CHARTS = {"volume", "energy", "status", "latency", "errors", "findings"}
TIMEOUT = 30.0
FLAGS = [
    "--headless",
    "--no-sandbox",  # root in CI containers
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-pipe",
]


def _find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def chromium() -> str:
    found = _find_chromium()
    if found is None:
        done = subprocess.run(
            ["bash", str(REPO / "scripts" / "install-browser.sh")],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        found = _find_chromium()
        if found is None:
            reason = done.stderr.strip().splitlines()[-1:] or ["it printed nothing"]
            pytest.skip(f"chromium is not installed and could not be: {reason[0]}")
    return found


class Browser:
    """One headless chromium, driven over the DevTools protocol on a pipe."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_chromium, self._out = os.pipe()
        self._in, from_chromium = os.pipe()
        # Chromium reads commands on fd 3 and answers on fd 4: bash puts the pipes there
        # (to_chromium < from_chromium, so the first redirection never hides the second).
        pipes = f'exec "$@" 3<&{to_chromium} 4>&{from_chromium}'
        self.process = subprocess.Popen(
            ["bash", "-c", pipes, "chromium", binary, *FLAGS, f"--user-data-dir={profile}"],
            pass_fds=(to_chromium, from_chromium),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chromium)
        os.close(from_chromium)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session = ""

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (OSError, RuntimeError, TimeoutError):
            self.process.kill()
        finally:
            self.process.wait(TIMEOUT)
            os.close(self._out)
            os.close(self._in)

    def call(self, method: str, params: dict[str, Any] | None = None, *, page: bool = False) -> Any:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if page:
            message["sessionId"] = self.session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        answer = self.wait(lambda m: m.get("id") == message["id"])
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer["result"]

    def wait(self, wanted: Any) -> dict[str, Any]:
        """The next message ``wanted`` accepts; events on the way are kept in ``events``."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message: dict[str, Any] = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if wanted(message):
                    return message
            ready, _, _ = select.select([self._in], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self._buffer += chunk

    def open(self, url: str, width: int = 1400, height: int = 2000) -> None:
        target = self.call("Target.createTarget", {"url": "about:blank"})
        attached = self.call(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        self.session = attached["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.call(f"{domain}.enable", page=True)
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        self.call("Emulation.setDeviceMetricsOverride", metrics, page=True)
        self.call("Page.navigate", {"url": url}, page=True)
        self.wait(lambda m: m.get("method") == "Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}, page=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        size = self.call("Page.getLayoutMetrics", page=True)["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.call(
            "Page.captureScreenshot",
            {"format": "png", "clip": clip, "captureBeyondViewport": True},
            page=True,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    def problems(self) -> list[str]:
        """Console messages, uncaught exceptions and log errors, as readable lines."""
        found = []
        for event in self.events:
            params = event.get("params", {})
            if event["method"] == "Runtime.consoleAPICalled":
                text = " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
                found.append(f"console.{params['type']}: {text}")
            elif event["method"] == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(
                    f"exception: {details.get('exception', {}).get('description', details['text'])}"
                )
            elif event["method"] == "Log.entryAdded" and params["entry"]["level"] in (
                "error",
                "warning",
            ):
                found.append(f"log {params['entry']['level']}: {params['entry']['text']}")
        return found

    def requests(self) -> list[str]:
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e["method"] == "Network.requestWillBeSent"
        ]


@pytest.fixture
def browser(chromium: str, tmp_path: Path) -> Iterator[Browser]:
    opened = Browser(chromium, tmp_path / "profile")
    try:
        yield opened
    finally:
        opened.close()


# What the page looks like once laid out: per chart its size and the marks actually drawn.
MEASURE = """(() => {
  const box = (e) => e.getBoundingClientRect();
  const drawn = (e) => box(e).width > 0 && box(e).height > 0;
  // A straight line's box is as thin as the line is long: one side is enough.
  const stroked = (e) => box(e).width > 0 || box(e).height > 0;
  const charts = {};
  for (const svg of document.querySelectorAll("svg[data-chart]")) {
    const size = box(svg);
    charts[svg.dataset.chart] = {
      width: size.width, height: size.height, empty: svg.dataset.empty === "true",
      rects: [...svg.querySelectorAll("rect")].filter(drawn).length,
      paths: [...svg.querySelectorAll("path")].filter(stroked).length,
      texts: [...svg.querySelectorAll("text")].filter(drawn).map((t) => t.textContent),
      tips: svg.querySelectorAll("rect > title, path > title").length,
    };
  }
  return {ready: document.documentElement.dataset.ready || null, charts: charts};
})()"""

VISIBLE_SERIES = """(() => {
  const count = {};
  for (const r of document.querySelectorAll('svg[data-chart="volume"] rect[data-series]')) {
    const b = r.getBoundingClientRect();
    if (b.width > 0 && b.height > 0) count[r.dataset.series] = (count[r.dataset.series] || 0) + 1;
  }
  return count;
})()"""


def _load(browser: Browser, html: Path, shot: str) -> dict[str, Any]:
    url = html.resolve().as_uri()
    browser.open(url)
    measured: dict[str, Any] = browser.evaluate(MEASURE)
    browser.screenshot(ARTIFACTS / shot)
    assert browser.problems() == []
    assert browser.requests() == [url]  # self-contained: nothing else is fetched
    assert measured["ready"] == "1"  # the page's script ran to its end
    assert set(measured["charts"]) == CHARTS
    return measured


async def test_the_report_draws_its_charts_in_chromium(browser: Browser, tmp_path: Path) -> None:
    fleet = await record_fleet(tmp_path)
    html = tmp_path / "report.html"
    html.write_text(render_html(build_report([str(p) for p in fleet])), "utf-8")
    charts = _load(browser, html, "report.png")["charts"]
    for name, chart in charts.items():
        assert not chart["empty"], name
        assert chart["width"] > 900, name  # laid out at the page's width, not collapsed
        assert chart["rects"] > 0, name
        assert chart["tips"] >= chart["rects"] - 10, name  # legend swatches have none
    # What a person reads on the drawn charts.
    assert {"5,000 Wh", "2,100 Wh", "666 Wh"} <= set(charts["energy"]["texts"])
    assert {"SIM-16 · connector 1", "SIM-201 · EVSE 1/1"} <= set(charts["status"]["texts"])
    assert "InternalError" in charts["errors"]["texts"]
    assert "Heartbeat → CSMS" in charts["latency"]["texts"]
    assert charts["latency"]["paths"] > 0  # axes and the p50 / p99 markers
    assert (ARTIFACTS / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_the_controls_work(browser: Browser, tmp_path: Path) -> None:
    fleet = await record_fleet(tmp_path)
    html = tmp_path / "report.html"
    html.write_text(render_html(build_report([str(p) for p in fleet])), "utf-8")
    _load(browser, html, "report-controls.png")
    shown = browser.evaluate(VISIBLE_SERIES)
    assert set(shown) == {"CALL", "CALLRESULT", "CALLERROR"}
    browser.evaluate('document.querySelector("button[data-show=direction]").click()')
    assert set(browser.evaluate(VISIBLE_SERIES)) == {"to_csms", "to_charger"}
    browser.evaluate(
        'document.querySelector(\'.key[data-key="to_csms"]\').dispatchEvent(new Event("click"))'
    )
    assert set(browser.evaluate(VISIBLE_SERIES)) == {"to_charger"}
    assert browser.problems() == []


def test_an_empty_report_says_so_in_chromium(browser: Browser, tmp_path: Path) -> None:
    empty = record(tmp_path / "empty.duckdb", [])
    html = tmp_path / "empty.html"
    html.write_text(render_html(build_report([str(empty)])), "utf-8")
    charts = _load(browser, html, "report-empty.png")["charts"]
    for name, chart in charts.items():
        assert chart["empty"], name
        assert chart["rects"] == 0, name
        assert len(chart["texts"]) == 1, name
        assert chart["texts"][0].startswith("No "), name


FINDINGS = """(() => {
  const shown = (e) => { const b = e.getBoundingClientRect(); return b.width > 0 && b.height > 0; };
  const section = document.querySelector("section#findings");
  const rows = [...section.querySelectorAll("table.findings tbody tr")].filter(shown);
  const pre = section.querySelector('tr[data-rule="unanswered-call"] pre');
  return {
    heading: section.querySelector("h2").textContent,
    note: section.querySelector("p.note").textContent,
    rows: rows.map((r) => [r.cells[0].textContent, r.cells[1].textContent, r.cells[2].textContent,
                           r.cells[3].textContent]),
    chargers: [...section.querySelectorAll("table.findings-chargers tbody tr")].map(
      (r) => [...r.cells].map((c) => c.textContent)),
    frameShown: pre ? pre.checkVisibility() && shown(pre) : null,
    frame: pre ? pre.textContent : null,
    bars: [...section.querySelectorAll("svg rect[data-series]")].filter(shown).map(
      (r) => r.dataset.series),
  };
})()"""


async def test_findings_section_in_chromium(browser: Browser, tmp_path: Path) -> None:
    """Counts per charger and rule, the timeline, and the example frame behind a click."""
    fleet = await record_fleet(tmp_path)  # recorded with the audit: heartbeat-drift
    flawed = flawed_recording(tmp_path / "flawed.duckdb")
    html = tmp_path / "findings.html"
    html.write_text(render_html(build_report([str(p) for p in [*fleet, flawed]])), "utf-8")
    charts = _load(browser, html, "report-findings.png")["charts"]
    assert not charts["findings"]["empty"]
    assert charts["findings"]["rects"] > 0
    seen = browser.evaluate(FINDINGS)
    assert seen["heading"] == "Audit findings"
    assert seen["note"].startswith("7 findings (4 errors, 3 warnings)")
    assert seen["rows"][:4] == [
        ["CP-BAD", "schema-enum", "error", "1"],
        ["CP-BAD", "schema-type", "error", "1"],
        ["CP-BAD", "unanswered-call", "error", "1"],
        ["CP-NAIVE", "timestamp-without-zone", "error", "1"],
    ]
    # The simulated chargers' heartbeats come faster than the CSMS asked for.
    drift = seen["rows"][4:]
    assert {(r[1], r[2]) for r in drift} == {("heartbeat-drift", "warning")}
    assert sum(int(r[3]) for r in drift) == 3
    assert seen["chargers"][0] == ["CP-BAD", "3", "0", "0", "3"]
    assert set(seen["bars"]) == {"error", "warning"}
    # The example frame is folded away until its summary is clicked.
    assert seen["frameShown"] is False
    browser.evaluate("document.querySelector('tr[data-rule=\"unanswered-call\"] summary').click()")
    opened = browser.evaluate(FINDINGS)
    assert opened["frameShown"] is True
    assert opened["frame"] == '[2, "h1", "Heartbeat", {}]'
    # A legend entry hides its severity's bars, as on the other charts.
    browser.evaluate(
        'document.querySelector(\'svg[data-chart="findings"] .key[data-key="warning"]\')'
        '.dispatchEvent(new Event("click"))'
    )
    assert set(browser.evaluate(FINDINGS)["bars"]) == {"error"}
    assert browser.problems() == []
