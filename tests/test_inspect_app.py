"""``ocproxy inspect`` driven headless with Textual's pilot, on a real recording made by a
real proxy (simulated chargers, a raw charger with bad frames, an injected CALL).

Each test runs its own event loop (``asyncio.run``) rather than being an async test:
the conftest runs async tests on two loops, and the pilot needs only one. Screenshots
of the main screens go to tests/artifacts/ (gitignored), to be looked at.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from textual.pilot import Pilot
from textual.widgets import Static
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from ocproxy.audit.auditor import Auditor
from ocproxy.core.frames import Direction
from ocproxy.inspect.app import InspectApp
from ocproxy.inspect.recording import RecordingSource
from ocproxy.inspect.widgets import ChargersTable, FramesTable
from ocproxy.proxy.config import ProxyConfig
from ocproxy.proxy.server import ProxyServer
from ocproxy.recorder import Recorder
from ocproxy.sim.charger import ChargerSpec, run_charger
from ocproxy.sim.csms import SimCsms

ARTIFACTS = Path(__file__).parent / "artifacts"
BAD_BOOT = '[2,"bad-1","BootNotification",{"chargePointVendor":"Acme"}]'
BROKEN = '[2,"x",'


async def _record(path: Path) -> None:
    recorder = Recorder(path, flush_interval=0.05, auditor=Auditor()).start()
    async with SimCsms(initiate=True) as csms:
        config = ProxyConfig(listen_host="127.0.0.1", listen_port=0, upstream=csms.url,
                             db=str(path), quiet=True)  # fmt: skip
        server = await ProxyServer(config, recorder).start()
        try:
            url = f"ws://127.0.0.1:{server.port}/ocpp"
            await run_charger(url, ChargerSpec("CP-A", "1.6", pace=0.01, heartbeats=2))
            await run_charger(url, ChargerSpec("CP-B", "2.0.1", pace=0.01))
            async with connect(f"{url}/CP-BAD", subprotocols=[Subprotocol("ocpp1.6")]) as bad:
                await bad.send(BAD_BOOT)
                await bad.recv()
                await bad.send(BROKEN)
                await bad.send('[2,"hb-1","Heartbeat",{}]')
                await bad.recv()
                (session,) = [s for s in server.sessions if s.identity == "CP-BAD"]
                injection = asyncio.create_task(session.inject(
                    Direction.TO_CHARGER, "TriggerMessage", {"requestedMessage": "Heartbeat"}, 5
                ))  # fmt: skip
                trigger = json.loads(await bad.recv())
                await bad.send(json.dumps([3, trigger[1], {"status": "Accepted"}]))
                await injection
        finally:
            await server.stop()
            recorder.close()


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("inspect") / "site.duckdb"
    asyncio.run(_record(path))
    return path


async def until(pilot: Pilot[Any], condition: Callable[[], bool], what: str) -> None:
    for _ in range(200):
        if condition():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"timed out waiting until {what}")


def shot(app: InspectApp, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    app.save_screenshot(f"inspect-{name}.svg", str(ARTIFACTS))


def text_of(static: Static) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(static.content)
    return console.export_text()


def status(app: InspectApp) -> str:
    return text_of(app.query_one("#status", Static))


def detail(app: InspectApp) -> str:
    return text_of(app.query_one("#detail-body", Static))


def rows(app: InspectApp) -> list[list[str]]:
    table = app.query_one("#frames", FramesTable)
    return [[str(cell) for cell in table.get_row_at(n)] for n in range(table.row_count)]


async def _type(pilot: Pilot[Any], text: str) -> None:
    for char in text:
        await pilot.press(char if char != " " else "space")


async def _browse(path: Path) -> None:
    app = InspectApp(RecordingSource([str(path)]))
    async with app.run_test(size=(150, 45)) as pilot:
        await until(pilot, lambda: bool(rows(app)), "frames are shown")
        chargers = app.query_one("#chargers", ChargersTable)
        assert [str(k.value) for k in chargers.rows] == ["CP-A", "CP-B", "CP-BAD"]
        assert [str(c) for c in chargers.get_row_at(0)][:4] == ["CP-A", "1.6", "closed", "26"]
        # CP-A: each CALL with its answer beside it, the CSMS's own GetConfiguration too
        first = rows(app)
        assert first[0][2:4] == ["CALL", "BootNotification"]
        assert first[0][5].startswith("CALLRESULT ")
        assert first[0][5].endswith(" ms")
        assert [r[3] for r in first].count("GetConfiguration") == 1
        assert all(r[2] == "CALL" for r in first)  # answers ride on their CALL
        await until(pilot, lambda: "/ocpp/CP-A" in detail(app), "the detail is shown")
        for text in ("chargePointVendor", "its answer", "connection handshake"):
            assert text in detail(app), text
        shot(app, "recording")

        app.query_one("#frames", FramesTable).focus()
        await pilot.press("a")  # to the BootNotification's answer
        await until(pilot, lambda: "the CALL it answers" in detail(app), "the answer is shown")
        assert rows(app)[app.frames.cursor_row][2] == "CALLRESULT"
        await pilot.press("a")  # and back to its CALL
        await until(pilot, lambda: "its answer" in detail(app), "the CALL is shown again")
        await pilot.press("r")  # answers beside their CALL again

        # CP-BAD: a schema finding explained, a malformed frame, an injected CALL
        chargers.focus()
        await pilot.press("down", "down")
        await until(pilot, lambda: app.identity == "CP-BAD" and bool(rows(app)), "CP-BAD")
        bad = rows(app)
        assert [(r[2], r[3]) for r in bad] == [
            ("CALL", "BootNotification"), ("MALFORMED", "-"), ("CALL", "Heartbeat"),
            ("CALL", "TriggerMessage"),
        ]  # fmt: skip
        assert "⚑schema-required" in bad[0][6]
        assert "◆ injected" in bad[3][6]
        await until(pilot, lambda: "schema-required (error)" in detail(app), "the finding")
        assert "chargePointModel" in detail(app)  # the finding's message names the field
        shot(app, "findings")

        # a filter that does not parse says where, and changes nothing
        await pilot.press("slash")
        await _type(pilot, "dir:up")
        await pilot.press("enter")
        assert status(app).startswith("filter not applied: column 5: 'up' is not one of")
        assert rows(app) == bad
        shot(app, "filter-error")
        await pilot.press("ctrl+a", "ctrl+k")
        await _type(pilot, "is:malformed,finding")
        await pilot.press("enter")
        await until(pilot, lambda: len(rows(app)) == 1, "the filter applies")
        assert rows(app)[0][2] == "MALFORMED"
        await pilot.press("slash", "ctrl+a", "ctrl+k", "enter")  # no filter
        await until(pilot, lambda: len(rows(app)) == 4, "the filter is gone")

        # search: next and previous
        await pilot.press("s")
        await _type(pilot, "Heartbeat")
        await pilot.press("enter")
        await until(pilot, lambda: rows(app)[app.frames.cursor_row][3] == "Heartbeat", "found")
        await pilot.press("n")
        await until(pilot, lambda: "requestedMessage" in detail(app), "the next match")
        await pilot.press("p")
        await until(pilot, lambda: rows(app)[app.frames.cursor_row][3] == "Heartbeat", "back")
        await pilot.press("p")
        await until(pilot, lambda: "no more matches" in status(app), "the first match")

        # mark two frames, copy them, save them
        await pilot.press("g", "space", "down", "space", "y")
        copied = [json.loads(line) for line in app.clipboard.splitlines()]
        assert [(c["type"], c["action"]) for c in copied] == [
            ("CALL", "BootNotification"), ("MALFORMED", None)
        ]  # fmt: skip
        assert copied[1]["raw"] == BROKEN
        assert copied[0]["payload"] == {"chargePointVendor": "Acme"}
        saved = path.parent / "chosen.jsonl"
        await pilot.press("w")
        await pilot.press("ctrl+a", "ctrl+k")
        await _type(pilot, str(saved))
        await pilot.press("enter")
        await until(pilot, lambda: saved.exists(), "saved")
        assert saved.read_text() == app.clipboard

        await pilot.press("question_mark")
        await pilot.pause(0.1)
        shot(app, "help")
        await pilot.press("escape", "i")  # inject needs a running proxy
        assert "need a running proxy" in status(app)
        await pilot.press("q")
    assert app.failure is None


def test_browse_a_recording(recording: Path) -> None:
    asyncio.run(_browse(recording))


async def _small(path: Path) -> None:
    app = InspectApp(RecordingSource([str(path)]))
    async with app.run_test(size=(70, 20)) as pilot:
        await pilot.pause(0.2)
        notice = text_of(app.query_one("#too-small", Static))
        assert "This terminal is 70x20; ocproxy inspect needs at least 80x24" in notice
        assert app.has_class("too-small")
        shot(app, "too-small")
        await pilot.resize_terminal(100, 30)
        await pilot.pause(0.2)
        assert not app.has_class("too-small")


def test_a_small_terminal_is_told_so(recording: Path) -> None:
    asyncio.run(_small(recording))


def _ocproxy(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ocproxy", *argv], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip


def test_a_recording_being_written_points_to_control(recording: Path, tmp_path: Path) -> None:
    busy = tmp_path / "busy.duckdb"
    recorder = Recorder(busy).start()  # as a running proxy holds its recording
    try:
        locked = _ocproxy("inspect", str(busy))
    finally:
        recorder.close()
    assert (locked.returncode, locked.stdout) == (2, "")
    assert locked.stderr == (
        f"ocproxy: error: {busy} is being written by another process; inspect it live "
        "instead: ocproxy inspect --control HOST:PORT\n"
    )
    missing = _ocproxy("inspect", str(tmp_path / "nope.duckdb"))
    assert (missing.returncode, missing.stderr.count("\n")) == (2, 1)
    no_proxy = _ocproxy("inspect", "--control", "127.0.0.1:1", "--token", "t")
    assert no_proxy.returncode == 1
    assert no_proxy.stderr.startswith("ocproxy: error: no control endpoint at ws://127.0.0.1:1/")


async def _unreadable(path: Path) -> None:
    source = RecordingSource([str(path)])
    source.close()  # every query now fails, as on a file gone bad under the inspector
    app = InspectApp(source)
    async with app.run_test(size=(120, 30)) as pilot:
        await until(pilot, lambda: "could not be read" in status(app), "the failure is said")
        assert status(app).startswith("the recording could not be read: ")
        await pilot.press("g", "down", "s")  # keys still work: nothing crashed
        assert app.is_running
        await pilot.press("escape", "q")
    assert app.failure is None


def test_a_failing_recording_is_said_on_screen_not_thrown(recording: Path) -> None:
    asyncio.run(_unreadable(recording))
