"""``ocproxy inspect --control``: the app against a real running proxy (control endpoint)
with simulated chargers that stay connected, driven headless with Textual's pilot:
frames followed live, a CALL injected (schema-checked first), a charger disconnected
that stays listed as closed."""

from __future__ import annotations

import asyncio
import io
import socket
from pathlib import Path
from typing import Any

from rich.console import Console
from textual.widgets import Button, Select, Static, TextArea

from ocproxy.app import running_proxy
from ocproxy.inspect.app import InspectApp
from ocproxy.inspect.filters import parse
from ocproxy.inspect.live import KEEP, LiveSource, item_from_event
from ocproxy.inspect.screens import DisconnectScreen, InjectScreen
from ocproxy.inspect.widgets import ChargersTable
from ocproxy.proxy.config import ProxyConfig
from ocproxy.sim.csms import SimCsms
from ocproxy.sim.fleet import FleetOptions, run_fleet
from tests.test_inspect_app import rows, shot, status, text_of, until


async def _live(db: Path) -> None:
    async with SimCsms() as csms:
        # A port of its own: the newest token file may be another proxy's (tests run
        # beside other proxies with a control endpoint).
        port = _free_port()
        config = ProxyConfig(listen_host="127.0.0.1", listen_port=0, upstream=csms.url,
                             db=str(db), quiet=True, control=f"127.0.0.1:{port}")  # fmt: skip
        async with running_proxy(config, Console(file=io.StringIO())) as (proxy, _):
            # Chargers that stay, heartbeat every 0.2 s, and wait long before reconnecting:
            # one that is disconnected stays closed for the rest of the test.
            options = FleetOptions(url=f"ws://127.0.0.1:{proxy.port}/ocpp", count=2,
                                   prefix="LIVE-", pace=0.02, stay=True, heartbeat=0.2,
                                   reconnect=60)  # fmt: skip
            fleet = asyncio.create_task(run_fleet(options, lambda *_: None))
            source = await LiveSource("127.0.0.1", port).start()
            try:
                await _drive(InspectApp(source))
            finally:
                fleet.cancel()
                await asyncio.gather(fleet, return_exceptions=True)
                await source.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _drive(app: InspectApp) -> None:
    async with app.run_test(size=(150, 45)) as pilot:
        chargers = app.query_one("#chargers", ChargersTable)
        await until(pilot, lambda: chargers.row_count == 2, "both chargers are listed")
        await until(pilot, lambda: app.identity == "LIVE-01", "the first one is selected")
        # following: heartbeats keep arriving at the bottom, each with its answer
        await until(pilot, lambda: sum(r[3] == "Heartbeat" for r in rows(app)) >= 3, "heartbeats")
        beats = [r for r in rows(app) if r[3] == "Heartbeat"]
        assert all(r[5].startswith("CALLRESULT ") for r in beats[:-1])
        assert rows(app)[0][3] == "BootNotification"
        assert "following" in status(app)
        shot(app, "live")

        await pilot.press("i")
        dialog = app.screen
        assert isinstance(dialog, InjectScreen)
        dialog.query_one("#action", Select).value = "GetConfiguration"
        dialog.query_one("#payload", TextArea).text = '{"key": 5}'
        dialog.query_one("#send", Button).press()
        answer = dialog.query_one("#answer", Static)
        await until(pilot, lambda: "not sent, the schema says" in text_of(answer), "refused")
        dialog.query_one("#payload", TextArea).text = '{"key": ["HeartbeatInterval"]}'
        dialog.query_one("#send", Button).press()
        await until(pilot, lambda: "answer: [" in text_of(answer), "the answer")
        assert '"key": "HeartbeatInterval"' in text_of(answer)
        shot(app, "inject")
        dialog.query_one("#action", Select).value = "ClearCache"  # the sim has no handler
        dialog.query_one("#payload", TextArea).text = "{}"
        dialog.query_one("#send", Button).press()
        await until(pilot, lambda: "NotImplemented" in text_of(answer), "a CALLERROR")
        await pilot.press("escape")
        await until(pilot, lambda: any("◆ injected" in r[6] for r in rows(app)), "injected row")

        await pilot.press("d")
        closing = app.screen
        assert isinstance(closing, DisconnectScreen)
        closing.query_one("#code", Select).value = 4000
        closing.query_one("#go", Button).press()
        await until(pilot, lambda: "LIVE-01 disconnected with 4000" in status(app), "closed")
        await until(pilot, lambda: str(chargers.get_row_at(0)[2]) == "closed", "shown closed")
        assert str(chargers.get_row_at(0)[6]) == "4000 by proxy"
        assert str(chargers.get_row_at(1)[2]) == "open"
        assert app.identity == "LIVE-01"  # still selected, still there
        shot(app, "disconnected")
        await pilot.press("d")
        assert "LIVE-01 is not connected" in status(app)
        await pilot.press("q")
    assert app.failure is None


def test_inspect_a_running_proxy(tmp_path: Path) -> None:
    asyncio.run(_live(tmp_path / "live.duckdb"))


def _event(seq: int, **values: Any) -> dict[str, Any]:
    return {"event": "frame", "connection_id": "c1", "identity": "CP-1", "seq": seq,
            "ts": 1_780_000_000 + seq, "direction": "to_csms", "message_type": 2,
            "message_id": f"m{seq}", "action": "Heartbeat", "parse_status": "ok",
            "payload": "{}", "findings": [], **values}  # fmt: skip


def test_live_memory_is_bounded_and_answers_pair() -> None:
    source = LiveSource("127.0.0.1", 9, "t")  # never started: events are folded by hand
    opened = {"event": "open", "connection_id": "c1", "identity": "CP-1",
              "subprotocol": "ocpp1.6", "handshake_status": 101, "ts": 1_780_000_000}  # fmt: skip
    source.fold(opened)
    warning = [{"rule": "r", "severity": "warning"}]
    for n in range(0, 3 * KEEP, 2):
        source.fold(_event(n))
        answer = _event(n + 1, direction="to_charger", message_type=3, request_seq=n,
                        latency_ms=1.5, findings=warning)  # fmt: skip
        source.fold(answer)
    kept = source._frames["CP-1"]
    assert len(kept) == KEEP
    assert kept[-1].seq == 3 * KEEP - 1
    charger = source.charger("CP-1")
    assert charger is not None
    assert (charger.frames, charger.open_calls) == (3 * KEEP, 0)
    assert charger.findings == (0, 3 * KEEP // 2, 0)
    assert source.take_changes() == {"CP-1"}
    assert source.take_changes() == set()
    page = asyncio.run(source.page("CP-1", parse("")))
    assert page[0].answer is not None
    assert page[0].answer.text() == "CALLRESULT 1.5 ms"
    source.fold({"event": "close", "connection_id": "c1", "code": 1006, "closed_by": "charger",
                 "ts": 1_780_009_000})  # fmt: skip
    closed = source.charger("CP-1")
    assert closed is not None
    assert (closed.state, closed.last_close) == ("closed", "1006 by charger")
    broken = item_from_event(_event(1, parse_status="invalid_json", payload=None, raw="[2,"))
    assert (broken.raw, broken.type_name) == ("[2,", "MALFORMED")
