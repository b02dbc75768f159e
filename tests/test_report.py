"""``ocproxy report``: figures and HTML from recordings made by real ``ocpp`` peers.

Two recordings go through a real proxy: three chargers (1.6, 2.0.1, 2.1) each running
a metered transaction against a CSMS that accepts everything, and two chargers whose
CSMS answers Heartbeat with a CALLERROR. Every number checked is known in advance: the
Wh the simulated meters reported, the frames recorded, the CALLERRORs sent. Literal
recordings (events submitted to a real Recorder) cover what peers cannot produce
quickly: days of status changes for the bounds, hostile identities for the escaping.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import duckdb
import pytest
from helpers_cli import run_ocproxy
from ocpp.exceptions import InternalError

from ocproxy.analytics import report as report_module
from ocproxy.analytics.html import nice_ticks, render_html
from ocproxy.analytics.report import (
    MAX_BUCKETS,
    bucket_width,
    build_report,
    fmt_kwh,
    fmt_wh,
)
from ocproxy.audit.auditor import Auditor
from ocproxy.core.events import ClosedBy, ConnectionClosed, ConnectionOpened, FrameReceived
from ocproxy.core.frames import Direction, Opcode
from ocproxy.errors import ConfigError
from ocproxy.proxy.config import ProxyConfig
from ocproxy.proxy.server import ProxyServer
from ocproxy.recorder import Recorder
from ocproxy.recorder.migrations import MIGRATIONS
from ocproxy.sim.charger import ChargerSpec, run_charger
from ocproxy.sim.csms import SimCsms

# -- recordings made by real peers -----------------------------------------------------------

SPECS = [
    ChargerSpec(
        identity="SIM-16", version="1.6", meter_samples=4, wh_per_sample=1250, heartbeats=3
    ),
    ChargerSpec(
        identity="SIM-201", version="2.0.1", meter_samples=3, wh_per_sample=700, heartbeats=2
    ),
    ChargerSpec(identity="SIM-21", version="2.1", meter_samples=2, wh_per_sample=333),
]
FAILING = [ChargerSpec(identity=f"ERR-{v}", version=v) for v in ("1.6", "2.0.1")]
ENERGY_WH = {s.identity: s.meter_samples * s.wh_per_sample for s in SPECS}  # 5000, 2100, 666


async def record_through_proxy(
    path: Path, csms: SimCsms, specs: list[ChargerSpec], *, failing: bool = False
) -> Path:
    """Run the chargers through a real proxy recording into ``path``; return it."""
    config = ProxyConfig(listen_host="127.0.0.1", listen_port=0, db=str(path), quiet=True)
    # With the audit, as `ocproxy proxy` records by default.
    recorder = Recorder(path, flush_interval=0.05, auditor=Auditor()).start()
    async with csms, asyncio.timeout(30):
        server = await ProxyServer(replace(config, upstream=csms.url), recorder).start()
        try:
            for spec in specs:
                url = f"ws://127.0.0.1:{server.port}/ocpp"
                if failing:
                    with pytest.raises(InternalError):
                        await run_charger(url, spec)
                else:
                    await run_charger(url, spec)
        finally:
            await server.stop()
            stats = recorder.close()
    assert stats.frames_lost == 0
    return path


async def record_fleet(directory: Path) -> list[Path]:
    """The two recordings: chargers with transactions, chargers refused a Heartbeat."""

    def refuse(**_: Any) -> Any:
        raise InternalError(description="CSMS database down")

    good = await record_through_proxy(
        directory / "sim.duckdb", SimCsms(initiate=True, heartbeat_interval=120), SPECS
    )
    bad = await record_through_proxy(
        directory / "errors.duckdb", SimCsms(overrides={"Heartbeat": refuse}), FAILING, failing=True
    )
    return [good, bad]


@pytest.fixture
async def fleet(tmp_path: Path) -> list[Path]:
    return await record_fleet(tmp_path)


def count(paths: list[Path], sql: str) -> int:
    total = 0
    for path in paths:
        with duckdb.connect(str(path), read_only=True) as db:
            ((n,),) = db.execute(sql).fetchall()
            total += int(n)
    return total


# -- reading the HTML back -------------------------------------------------------------------


@dataclass
class Mark:
    tag: str
    attrs: dict[str, str]
    title: str = ""


@dataclass
class Chart:
    attrs: dict[str, str]
    marks: list[Mark] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def rects(self, **match: str) -> list[Mark]:
        return [
            m
            for m in self.marks
            if m.tag == "rect" and all(m.attrs.get(k) == v for k, v in match.items())
        ]


class Page(HTMLParser):
    """The charts of a report page: each svg[data-chart], its marks and their titles."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.charts: dict[str, Chart] = {}
        self.tags: list[tuple[str, dict[str, str]]] = []
        self._chart: Chart | None = None
        self._stack: list[Mark] = []
        self._text: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.tags.append((tag, values))
        if tag == "svg" and "data-chart" in values:
            self._chart = self.charts[values["data-chart"]] = Chart(values)
        elif self._chart is not None and tag in ("rect", "path"):
            mark = Mark(tag, values)
            self._chart.marks.append(mark)
            self._stack.append(mark)
        elif self._chart is not None and tag in ("text", "title"):
            self._text = []

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag in ("rect", "path") and self._stack:
            self._stack.pop()

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._chart = None
        elif tag in ("rect", "path") and self._stack:
            self._stack.pop()
        elif tag in ("text", "title") and self._text is not None and self._chart is not None:
            words = "".join(self._text)
            if tag == "title" and self._stack:
                self._stack[-1].title = words
            elif tag == "text":
                self._chart.texts.append(words)
            self._text = None

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)


def data_counts(marks: list[Mark]) -> int:
    return sum(int(m.attrs["data-count"]) for m in marks)


# -- the report of real peers ----------------------------------------------------------------


async def test_figures_of_real_peers(fleet: list[Path]) -> None:
    report = build_report([str(p) for p in fleet])
    o = report.overview
    assert report.sources == tuple(str(p) for p in fleet)
    assert (o.connections, o.refused, o.chargers) == (5, 0, 5)
    assert o.frames == count(fleet, "SELECT count(*) FROM frames")
    assert o.bytes == count(fleet, "SELECT sum(size) FROM frames")
    assert (o.transactions, o.energy_wh) == (3, sum(ENERGY_WH.values()))
    assert (o.callerrors, o.unanswered, o.malformed) == (2, 0, 0)
    assert {(t.identity, t.energy_wh) for t in report.energy.shown} == set(ENERGY_WH.items())
    assert [(e.code, e.kind, e.count, e.top_action) for e in report.errors] == [
        ("InternalError", "callerror", 2, "Heartbeat")
    ]
    heartbeat = next(r for r in report.latency if r.action == "Heartbeat")
    calls = count(
        fleet, "SELECT count(*) FROM frames WHERE action = 'Heartbeat' AND message_type = 2"
    )
    assert (heartbeat.direction, heartbeat.calls, heartbeat.errors) == ("to_csms", calls, 2)
    assert sum(n for _, n in heartbeat.bins) == calls
    assert report.notes == ()


async def test_html_charts_carry_the_recorded_numbers(fleet: list[Path]) -> None:
    report = build_report([str(p) for p in fleet])
    page = Page(render_html(report))
    assert set(page.charts) == {"volume", "energy", "status", "latency", "errors", "findings"}
    # Energy: one bar per transaction, labelled with exactly the Wh the meter reported.
    energy = page.charts["energy"]
    for identity, wh in ENERGY_WH.items():
        (bar,) = energy.rects(**{"data-identity": identity})
        assert bar.attrs["data-wh"] == str(wh)
        assert fmt_wh(wh) in energy.texts
        assert f"{identity}, transaction" in bar.title
        assert fmt_wh(wh) in bar.title
    assert {"5,000 Wh", "2,100 Wh", "666 Wh"} <= set(energy.texts)
    # Volume: the stacked bars add up to every frame, both ways of stacking.
    volume = page.charts["volume"]
    frames = count(fleet, "SELECT count(*) FROM frames")
    by_type = [
        m
        for m in volume.rects()
        if m.attrs.get("data-series") in ("CALL", "CALLRESULT", "CALLERROR")
    ]
    by_direction = [m for m in volume.rects() if m.attrs.get("data-series", "").startswith("to_")]
    assert data_counts(by_type) == data_counts(by_direction) == frames
    assert data_counts(volume.rects(**{"data-series": "CALLERROR"})) == 2
    # Errors: InternalError twice.
    (bar,) = page.charts["errors"].rects(**{"data-series": "callerror"})
    assert bar.attrs["data-count"] == "2"
    assert "InternalError" in page.charts["errors"].texts
    assert "mostly Heartbeat" in bar.title
    # Latency: the Heartbeat histogram holds every Heartbeat answer.
    heartbeat = page.charts["latency"].rects(**{"data-series": "Heartbeat"})
    calls = count(
        fleet, "SELECT count(*) FROM frames WHERE action = 'Heartbeat' AND message_type = 2"
    )
    assert data_counts(heartbeat) == calls
    assert "Heartbeat → CSMS" in page.charts["latency"].texts


async def test_status_timeline_of_real_peers(fleet: list[Path]) -> None:
    status = Page(render_html(build_report([str(p) for p in fleet]))).charts["status"]
    lanes = [t for t in status.texts if " · " in t]
    assert lanes == ["SIM-16 · connector 1", "SIM-201 · EVSE 1/1", "SIM-21 · EVSE 1/1"]
    for identity, busy in (("SIM-16", "Charging"), ("SIM-201", "Occupied"), ("SIM-21", "Occupied")):
        spans = [m for m in status.rects() if m.title.startswith(f"{identity} ")]
        assert [m.attrs["data-series"] for m in spans] == ["Available", busy, "Available"]
        assert spans[-1].title.endswith("still so when last seen")


def test_terminal_summary_and_html_file(fleet: list[Path], tmp_path: Path, cli: CliRunner) -> None:
    target = tmp_path / "report.html"
    code, out, err = cli("report", *map(str, fleet), "--html", str(target))
    assert code == 0
    assert err.strip().splitlines() == [f"ocproxy: wrote {target} ({_kib(target)} KiB)"]
    assert "5 (0 refused)" in out
    assert fmt_kwh(sum(ENERGY_WH.values())) in out
    assert "InternalError" in out
    assert "Heartbeat" in out
    for identity in ENERGY_WH:
        assert identity in out
    text = target.read_text("utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert "5,000 Wh" in text
    assert not list(tmp_path.glob(".report.html.*"))  # no temporary file left behind


def _kib(path: Path) -> str:
    return f"{path.stat().st_size / 1024:,.0f}"


def test_one_charger(fleet: list[Path], cli: CliRunner, tmp_path: Path) -> None:
    report = build_report([str(p) for p in fleet], identity="SIM-201")
    assert (report.overview.chargers, report.overview.energy_wh) == (1, ENERGY_WH["SIM-201"])
    assert report.overview.frames == count(
        [fleet[0]],
        "SELECT count(*) FROM frames JOIN connections USING (connection_id) "
        "WHERE identity = 'SIM-201'",
    )
    assert [c.identity for c in report.chargers] == ["SIM-201"]
    code, _, err = cli("report", *map(str, fleet), "--identity", "NOPE")
    assert code == 2
    assert _one_error_line(err).startswith("no charger 'NOPE' in ")
    assert "(its chargers: ERR-1.6, " in err


# -- bad input: one line, exit code 2 --------------------------------------------------------

CliRunner = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> CliRunner:
    """``ocproxy ARGV...`` in-process: (exit code, stdout, stderr)."""
    return lambda *argv: run_ocproxy(capsys, *argv)


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("ocproxy: error: ")
    return lines[0].removeprefix("ocproxy: error: ")


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda p: p.write_text("hello"), "is not an ocproxy recording (not a DuckDB file)"),
        (lambda p: _plain_duckdb(p), "is not an ocproxy recording (no _ocproxy_migrations table)"),
        (lambda p: p.mkdir(), "is not an ocproxy recording (a directory must be a Parquet export"),
    ],
)
def test_what_is_not_a_recording_is_named(
    tmp_path: Path, cli: CliRunner, make: Callable[[Path], Any], problem: str
) -> None:
    path = tmp_path / "thing.duckdb"
    make(path)
    target = tmp_path / "out.html"
    code, out, err = cli("report", str(path), "--html", str(target))
    assert (code, out) == (2, "")
    assert _one_error_line(err).startswith(f"{path} {problem}")
    assert not target.exists()
    assert list(tmp_path.glob(".out.html.*")) == []


def _plain_duckdb(path: Path) -> None:
    with duckdb.connect(str(path)) as db:
        db.execute("CREATE TABLE t AS SELECT 1 AS x")


def test_an_empty_recording_is_an_error_with_an_empty_report(
    tmp_path: Path, cli: CliRunner
) -> None:
    empty = record(tmp_path / "empty.duckdb", [])
    target = tmp_path / "empty.html"
    code, out, err = cli("report", str(empty), "--html", str(target))
    assert (code, out) == (2, "")
    assert _one_error_line(err) == (
        f"{empty}: it holds no connections or frames, nothing to report "
        f"(wrote an empty report to {target})"
    )
    page = Page(target.read_text("utf-8"))
    assert set(page.charts) == {"volume", "energy", "status", "latency", "errors", "findings"}
    for chart in page.charts.values():
        assert chart.attrs["data-empty"] == "true"
        assert chart.rects() == []
        assert len(chart.texts) == 1
        assert chart.texts[0].startswith("No ")
    assert "hold no connections or frames" in target.read_text("utf-8")


def test_missing_sources_and_bad_options(tmp_path: Path, cli: CliRunner) -> None:
    code, _, err = cli("report", str(tmp_path / "nope.duckdb"))
    assert code == 2
    assert _one_error_line(err).endswith("nope.duckdb: no such file or directory")
    code, _, err = cli("report", str(tmp_path / "*.duckdb"))
    assert code == 2
    assert _one_error_line(err).endswith("*.duckdb: no file matches")
    empty = record(tmp_path / "e.duckdb", [])
    code, _, err = cli("report", str(empty), "--html", str(tmp_path / "no" / "dir" / "r.html"))
    assert code == 2
    assert "cannot write --html" in _one_error_line(err)
    code, _, err = cli("report", str(empty), "--html", str(tmp_path))
    assert code == 2
    assert _one_error_line(err) == f"--html {tmp_path}: is a directory"
    code, _, err = cli("report", str(empty), "--top", "0")
    assert code == 2
    assert "--top: '0' is not a positive integer" in err
    code, _, err = cli("report")
    assert code == 2
    assert "SOURCE" in err


# -- literal recordings: bounds and escaping --------------------------------------------------

T0 = datetime(2026, 3, 1, tzinfo=UTC).timestamp()


def record(path: Path, events: list[Any]) -> Path:
    with Recorder(path) as recorder:
        for event in events:
            recorder.submit(event)
    return path


def charger_events(identity: str, n: int, changes: int, seconds: float) -> list[Any]:
    """One 1.6 connection with ``changes`` StatusNotifications over ``seconds``, answered."""
    cid = f"c-{n}"
    events: list[Any] = [
        ConnectionOpened(
            cid, T0, identity, f"/ocpp/{identity}", None, ("ocpp1.6",), "ocpp1.6", None, 101
        )
    ]
    statuses = ("Available", "Preparing", "Charging", "Finishing", "Faulted")
    for i in range(changes):
        at = T0 + 1 + i * seconds / changes
        stamp = datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")
        note = {
            "connectorId": 1,
            "errorCode": "NoError",
            "status": statuses[(i + n) % 5],
            "timestamp": stamp,
        }
        call = json.dumps([2, f"m{i}", "StatusNotification", note])
        answer = json.dumps([3, f"m{i}", {}])
        events.append(
            FrameReceived(cid, 2 * i, at, Direction.TO_CSMS, Opcode.TEXT, call, len(call))
        )
        events.append(
            FrameReceived(
                cid, 2 * i + 1, at + 0.01, Direction.TO_CHARGER, Opcode.TEXT, answer, len(answer)
            )
        )
    events.append(ConnectionClosed(cid, T0 + seconds + 2, 1000, "", ClosedBy.CHARGER))
    return events


def test_what_reaches_the_page_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 12 chargers, three days, 100 to 210 status changes each: more than the page shows.
    events = [
        e for n in range(12) for e in charger_events(f"CP-{n:02}", n, 100 + 10 * n, 3 * 86400)
    ]
    path = record(tmp_path / "many.duckdb", events)
    monkeypatch.setattr(report_module, "TIMELINE_COLUMNS", 40)
    report = build_report([str(path)], top=5)
    assert report.volume.bucket_s == 3600
    assert len(report.volume.starts) <= MAX_BUCKETS
    assert sum(sum(c) for c in report.volume.by_type.values()) == report.overview.frames
    timeline = report.timeline
    assert (timeline.chargers, timeline.chargers_shown) == (12, 5)
    # The most eventful chargers, each lane folded to at most 40 spans covering every period.
    assert [lane.identity for lane in timeline.lanes] == [
        "CP-07",
        "CP-08",
        "CP-09",
        "CP-10",
        "CP-11",
    ]
    for lane in timeline.lanes:
        n = int(lane.identity[3:])
        assert len(lane.spans) <= 40
        assert sum(s.periods for s in lane.spans) == 100 + 10 * n
        assert all(a.end == b.start for a, b in zip(lane.spans, lane.spans[1:], strict=False))
    assert len(report.chargers) == 5
    assert len(report.latency) == 1
    assert len(render_html(report)) < 200_000


def test_everything_from_the_recording_is_escaped(tmp_path: Path) -> None:
    hostile = '<script>alert("x")</script>&'
    path = record(tmp_path / "hostile.duckdb", charger_events(hostile, 0, 3, 60))
    text = render_html(build_report([str(path)]))
    assert "<script>alert" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in text
    page = Page(text)
    assert [t for t, _ in page.tags].count("script") == 1  # the page's own
    # Self-contained: nothing is loaded from anywhere.
    assert not [a for _, attrs in page.tags for a in attrs if a in ("src", "href")]
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in text


def test_a_recording_older_than_the_schema(tmp_path: Path) -> None:
    # Made by the first migration only: frames.injected and later columns are missing.
    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as db:
        db.execute("CREATE TABLE _ocproxy_migrations (name VARCHAR, applied_at TIMESTAMPTZ)")
        name, first = MIGRATIONS[0]
        first(db)
        db.execute("INSERT INTO _ocproxy_migrations VALUES (?, now())", [name])
        db.execute(
            "INSERT INTO connection_opens (connection_id, identity, ocpp_version, opened_at, "
            "handshake_status) VALUES ('c', 'OLD', '1.6', '2026-01-01 00:00:00+00', 101)"
        )
        db.execute(
            "INSERT INTO frames (connection_id, seq, ts, direction, message_type, message_id, "
            "action, parse_status, payload, request_seq, latency_ms, pairing) VALUES "
            "('c', 0, '2026-01-01 00:00:01+00', 'to_csms', 2, 'a', 'Heartbeat', 'ok', '{}', "
            "NULL, NULL, NULL), ('c', 1, '2026-01-01 00:00:01.2+00', 'to_charger', 3, 'a', "
            "'Heartbeat', 'ok', '{}', 0, 200, 'matched')"
        )
    report = build_report([str(path)])
    assert (report.overview.frames, report.overview.chargers) == (2, 1)
    assert [(r.action, r.calls, r.p50_ms) for r in report.latency] == [("Heartbeat", 1, 200)]
    assert report.latency[0].bins == ((9, 1),)  # 200 ms: 10^(9/4) = 178 <= 200 < 316


def test_a_connection_without_frames_gives_no_data_charts(tmp_path: Path) -> None:
    # A connection without frames: a report, with "no data" charts, not an error.
    opened = ConnectionOpened(
        "c", T0, "QUIET", "/ocpp/QUIET", None, ("ocpp1.6",), "ocpp1.6", None, 101
    )
    report = build_report([str(record(tmp_path / "quiet.duckdb", [opened]))])
    assert not report.empty
    assert report.overview.connections == 1
    assert report.overview.first_at == report.overview.last_at == datetime.fromtimestamp(T0, UTC)
    assert set(Page(render_html(report)).charts["volume"].attrs) >= {"data-empty"}


# -- small pieces ----------------------------------------------------------------------------


def test_buckets_ticks_and_formats() -> None:
    day = datetime(2026, 1, 1, tzinfo=UTC)
    assert bucket_width(day, day) == 0.01
    assert bucket_width(day, day.replace(hour=1)) == 60  # 60 buckets
    assert bucket_width(day, day.replace(day=31)) == 43200  # 30 days: 60 half-days
    assert nice_ticks(0) == [0.0, 1.0]
    assert nice_ticks(7) == [0, 2, 4, 6, 8]
    assert nice_ticks(2) == [0, 1, 2]  # counts: whole numbers
    assert nice_ticks(5000) == [0, 1000, 2000, 3000, 4000, 5000]
    assert (fmt_wh(5000), fmt_wh(1500.5), fmt_wh(666)) == ("5,000 Wh", "1,500.5 Wh", "666 Wh")
    assert fmt_kwh(7766) == "7.766 kWh"


def test_no_source_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no SOURCE given"):
        build_report([])


# -- audit findings --------------------------------------------------------------------------


def flawed_recording(path: Path) -> Path:
    """Two chargers recorded with the audit on: CP-BAD's StatusNotification breaks two
    schema rules and its Heartbeat is never answered; CP-NAIVE sends a naive timestamp."""
    frames: dict[str, list[tuple[Direction, list[Any], float]]] = {
        "CP-BAD": [
            (Direction.TO_CSMS, [2, "s1", "StatusNotification", {
                "connectorId": "1", "errorCode": "noerror", "status": "Available"}], 1.0),
            (Direction.TO_CHARGER, [3, "s1", {}], 1.1),
            (Direction.TO_CSMS, [2, "h1", "Heartbeat", {}], 10.0),
            (Direction.TO_CSMS, [2, "h2", "Heartbeat", {}], 3600.0),
            (Direction.TO_CHARGER, [3, "h2", {"currentTime": "2026-03-01T01:00:00Z"}], 3600.1),
        ],
        "CP-NAIVE": [
            (Direction.TO_CSMS, [2, "n1", "StatusNotification", {
                "connectorId": 1, "errorCode": "NoError", "status": "Charging",
                "timestamp": "2026-03-01T00:00:05"}], 5.0),
            (Direction.TO_CHARGER, [3, "n1", {}], 5.1),
        ],
    }  # fmt: skip
    with Recorder(path, auditor=Auditor()) as recorder:
        for n, (identity, steps) in enumerate(frames.items()):
            cid = f"f-{n}"
            recorder.submit(
                ConnectionOpened(
                    cid, T0, identity, f"/{identity}", None, ("ocpp1.6",), "ocpp1.6", None, 101
                )
            )
            for seq, (direction, message, at) in enumerate(steps):
                data = json.dumps(message)
                recorder.submit(
                    FrameReceived(cid, seq, T0 + at, direction, Opcode.TEXT, data, len(data))
                )
            recorder.submit(ConnectionClosed(cid, T0 + 7200, 1000, "", ClosedBy.CHARGER))
    return path


def test_findings_by_charger_rule_and_severity(tmp_path: Path) -> None:
    path = flawed_recording(tmp_path / "flawed.duckdb")
    findings = build_report([str(path)]).findings
    assert (findings.total, findings.by_severity) == (4, (("error", 4),))
    assert [(c.identity, c.error, c.warning, c.info) for c in findings.chargers] == [
        ("CP-BAD", 3, 0, 0),
        ("CP-NAIVE", 1, 0, 0),
    ]
    groups = {(g.identity, g.rule): g for g in findings.groups}
    assert set(groups) == {
        ("CP-BAD", "schema-enum"),
        ("CP-BAD", "schema-type"),
        ("CP-BAD", "unanswered-call"),
        ("CP-NAIVE", "timestamp-without-zone"),
    }
    unanswered = groups["CP-BAD", "unanswered-call"]
    assert (unanswered.seq, unanswered.count) == (2, 1)
    assert unanswered.frame == '[2, "h1", "Heartbeat", {}]'
    assert groups["CP-BAD", "schema-type"].path == "$.connectorId"
    assert '"connectorId": "1"' in (groups["CP-BAD", "schema-type"].frame or "")
    # the timeline: a bucket per hour over the two hours the findings span
    assert sum(sum(c) for c in findings.series.values()) == 4
    assert list(findings.series) == ["error"]
    # one charger: only its findings
    only = build_report([str(path)], identity="CP-NAIVE").findings
    assert (only.total, [g.rule for g in only.groups]) == (1, ["timestamp-without-zone"])


def test_findings_section_in_the_page(tmp_path: Path) -> None:
    path = flawed_recording(tmp_path / "flawed.duckdb")
    page = render_html(build_report([str(path)], top=2))
    assert '<section id="findings">' in page
    assert page.count('<tr data-rule="') == 2  # top=2 groups shown ...
    assert "2 of 4 (charger, rule) groups" in page  # ... and it says so
    assert "4 findings (4 errors)" in page
    assert "<pre>[2, &quot;s1&quot;, &quot;StatusNotification&quot;" in page
    # a recording made without the audit has no findings: the chart says so
    quiet = record(tmp_path / "quiet.duckdb", charger_events("CP-1", 0, 3, 60))
    assert "No findings recorded." in render_html(build_report([str(quiet)]))
