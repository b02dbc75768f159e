"""``ocproxy tail``: rendering of literal snapshots to a string console, snapshots built
from literal events and rows, ``tail DB`` on a real recording, and the live view's
event consumer against a real proxy's control endpoint. Nothing of ocproxy's is mocked.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import shlex
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb
import pytest
from rich.console import Console
from rich.text import Text
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection
from websockets.typing import Subprotocol

from ocproxy.app import running_proxy
from ocproxy.audit.auditor import Auditor
from ocproxy.control import protocol
from ocproxy.control.client import ControlClient
from ocproxy.core.correlation import Correlator
from ocproxy.core.events import FrameReceived
from ocproxy.core.frames import Direction, Opcode
from ocproxy.core.observe import observe
from ocproxy.errors import ConfigError, ControlError
from ocproxy.proxy.config import ProxyConfig
from ocproxy.recorder.migrations import m001_initial
from ocproxy.tail.cli import add_tail_command, follow, read_recording, run_tail, start
from ocproxy.tail.render import (
    connections_panel,
    fit,
    frame_cells,
    notes,
    payload_text,
    render,
    short_ids,
)
from ocproxy.tail.snapshot import (
    KEEP_CLOSED,
    ConnectionRow,
    FrameRow,
    TailFilters,
    TailSnapshot,
    apply_event,
    frame_row_from_event,
    frame_row_from_record,
    merge_connections,
    new_snapshot,
)
from tests.conftest import ProxyFactory
from tests.helpers_ws import closed_port, upstream, wait_until

T0 = 1_780_000_000.0  # 2026-05-28 20:26:40 UTC
OCPP16 = Subprotocol("ocpp1.6")


# -- rendering ---------------------------------------------------------------------------


def _render(renderable: object, width: int = 200) -> str:
    console = Console(width=width, record=True, color_system=None, force_terminal=False)
    console.print(renderable)
    return console.export_text()


def _ansi(renderable: object, width: int = 160) -> str:
    console = Console(
        width=width, file=io.StringIO(), color_system="truecolor", force_terminal=True
    )
    console.print(renderable)
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


def _line(text: str, needle: str) -> list[str]:
    """The words of the one rendered line containing ``needle``, panel borders removed."""
    lines = [line for line in text.splitlines() if needle in line]
    assert len(lines) == 1, (needle, text)
    return lines[0].strip("│ ").split()


def _row(seq: int, **values: Any) -> FrameRow:
    defaults: dict[str, Any] = {
        "connection_id": "c1",
        "seq": seq,
        "ts": T0 + seq,
        "identity": "CP-1",
        "direction": "to_csms",
        "type_name": "CALL",
        "action": "Heartbeat",
        "message_id": f"m{seq}",
        "latency_ms": None,
        "size": 22,
        "parse_status": "ok",
        "error_code": None,
        "pairing": None,
        "injected": False,
        "findings": (),
    }
    return FrameRow(**(defaults | values))


CONNECTIONS = (
    ConnectionRow("c1", "CP-1", "ocpp1.6", T0 - 60, 7),
    ConnectionRow("c2", "CP-2", "ocpp2.0.1", T0 - 30, 3, closed="1000 by charger"),
    ConnectionRow(
        "c3", "CP-3", None, T0 - 10, 0, handshake_status=404, closed="refused (HTTP 404)"
    ),
)
FRAMES = (
    _row(0, action="BootNotification", message_id="b1", size=64, findings=("schema-required",)),
    _row(
        1,
        direction="to_charger",
        type_name="CALLRESULT",
        action="BootNotification",
        message_id="b1",
        latency_ms=12.5,
        size=70,
        pairing="matched",
    ),
    _row(
        2,
        direction="to_charger",
        action="GetConfiguration",
        message_id="g1",
        size=33,
    ),
    _row(
        3,
        type_name="CALLERROR",
        action="GetConfiguration",
        message_id="g1",
        latency_ms=3.25,
        size=35,
        error_code="NotImplemented",
        pairing="matched",
    ),
    _row(4, type_name="?", action=None, message_id=None, size=7, parse_status="invalid_json"),
    _row(
        5,
        direction="to_charger",
        action="TriggerMessage",
        message_id="i1",
        size=80,
        injected=True,
    ),
    _row(
        6,
        type_name="CALLRESULT",
        action="TriggerMessage",
        message_id="i1",
        latency_ms=4.0,
        size=40,
        injected=True,
        pairing="matched",
    ),
    _row(7, type_name="CALLERROR", action=None, message_id="zz", size=30, pairing="unknown_id",
         error_code="GenericError", findings=("callerror-without-call", "unknown-response-id")),
)  # fmt: skip
SNAPSHOT = new_snapshot(
    TailFilters(), 50, connections=CONNECTIONS, frames=FRAMES, total=120, source="site.duckdb"
)


def test_render_connections_panel() -> None:
    text = _render(render(SNAPSHOT))
    assert "connections · site.duckdb" in text
    assert _line(text, "ocpp1.6") == ["CP-1", "ocpp1.6", "2026-05-28", "20:25:40", "7", "open"]
    assert _line(text, "CP-2") == [
        "CP-2", "ocpp2.0.1", "2026-05-28", "20:26:10", "3", "closed", "1000", "by", "charger",
    ]  # fmt: skip
    assert _line(text, "CP-3") == [
        "CP-3", "-", "2026-05-28", "20:26:30", "0", "refused", "(HTTP", "404)",
    ]  # fmt: skip
    assert "1 open, 2 closed or refused" in text
    # open connections first
    assert text.index("ocpp1.6") < text.index("CP-2") < text.index("CP-3")


def test_render_frame_list() -> None:
    text = _render(render(SNAPSHOT))
    assert "frames · last 8 of 120" in text
    # time, identity, direction, type, action, id, latency, size, notes
    assert _line(text, "20:26:40.000") == [
        "20:26:40.000", "CP-1", "→", "csms", "CALL", "BootNotification", "b1",
        "64", "B", "⚑schema-required",
    ]  # fmt: skip
    assert _line(text, "20:26:41.000") == [
        "20:26:41.000", "CP-1", "←", "charger", "CALLRESULT", "BootNotification", "b1",
        "12.5", "ms", "70", "B",
    ]  # fmt: skip
    assert _line(text, "20:26:42.000") == [
        "20:26:42.000", "CP-1", "←", "charger", "CALL", "GetConfiguration", "g1", "33", "B",
    ]  # fmt: skip
    assert _line(text, "20:26:43.000") == [
        "20:26:43.000", "CP-1", "→", "csms", "CALLERROR", "GetConfiguration", "g1",
        "3.2", "ms", "35", "B", "NotImplemented",
    ]  # fmt: skip
    assert _line(text, "20:26:44.000") == [
        "20:26:44.000", "CP-1", "→", "csms", "MALFORMED", "-", "-", "7", "B", "invalid_json",
    ]  # fmt: skip
    assert _line(text, "20:26:45.000")[-4:] == ["80", "B", "◆", "injected"]
    assert _line(text, "20:26:46.000")[-6:] == ["4.0", "ms", "40", "B", "◆", "injected"]
    assert _line(text, "20:26:47.000")[-6:] == [
        "30", "B", "GenericError", "[unknown_id]",
        "⚑callerror-without-call", "⚑unknown-response-id",
    ]  # fmt: skip


def test_latency_only_for_responses() -> None:
    call = _row(0, latency_ms=99.0)  # a CALL never shows one, whatever the row says
    assert str(frame_cells(call)[6]) == ""
    result = _row(1, type_name="CALLRESULT", latency_ms=1.25)
    assert str(frame_cells(result)[6]) == "1.2 ms"


LONG = _row(
    9,
    identity="ACME-DEPOT-NORTH-0042",
    action="SignChargingStationCertificate",
    message_id="0a1b2c3d-1111-2222-3333-444455556666",
    findings=("schema-required",),
)


def test_columns_follow_the_width() -> None:
    snapshot = replace(SNAPSHOT, frames=(*SNAPSHOT.frames, LONG))
    wide = _render(render(snapshot, width=180), width=180)
    assert _line(wide, "ACME")[:7] == [
        "20:26:49.000", "ACME-DEPOT-NORTH-0042", "→", "csms", "CALL",
        "SignChargingStationCertificate", "0a1b2c3d-1111-2222-3333-444455556666",
    ]  # fmt: skip
    medium = _render(render(snapshot, width=130), width=130)
    assert "0a1b2c…556666" in _line(medium, "ACME")
    assert "b1" in _line(medium, "20:26:40.000")
    small = _render(render(snapshot, width=112), width=112)
    assert "b1" not in _line(small, "20:26:40.000")
    assert not any(word.startswith("0a1b2c3d") for word in _line(small, "ACME"))
    for text, width in ((wide, 180), (medium, 130), (small, 112)):
        assert max(len(line) for line in text.splitlines()) <= width
        # notes are never cut: every finding is shown whole
        assert "⚑callerror-without-call" in text
        assert "⚑unknown-response-id" in text
        assert _line(text, "ACME")[-1] == "⚑schema-required"


def test_narrow_width_gives_one_line_per_frame() -> None:
    text = _render(render(SNAPSHOT, width=90), width=90)
    assert max(len(line) for line in text.splitlines()) <= 90
    assert _line(text, "20:26:40.000") == [
        "20:26:40.000", "CP-1", "→", "CALL", "BootNotification", "id=b1", "64", "B",
        "⚑schema-required",
    ]  # fmt: skip
    assert _line(text, "20:26:41.000") == [
        "20:26:41.000", "CP-1", "←", "CALLRESULT", "BootNotification", "id=b1", "12.5", "ms",
        "70", "B",
    ]  # fmt: skip
    assert _line(text, "20:26:44.000") == [
        "20:26:44.000", "CP-1", "→", "MALFORMED", "-", "7", "B", "invalid_json",
    ]  # fmt: skip
    assert "⚑unknown-response-id" in text
    short = _render(render(SNAPSHOT, width=60), width=60)
    assert _line(short, "CP-2") == ["CP-2", "ocpp2.0.1", "20:26:10", "3", "closed", "1000"]


def test_short_ids_never_make_distinct_ids_look_alike() -> None:
    replayed = [f"9f3c2a7b1e0d4c6a8b2f-{n:x}" for n in range(1, 40)]  # replay's fresh ids
    shown = short_ids(replayed, 13)
    assert len(set(shown.values())) == len(replayed)
    assert shown[replayed[0]] == "9f3c2a…8b2f-1"
    assert all(len(text) <= 13 for text in shown.values())
    uuids = ["0a1b2c3d-1111-2222-3333-444455556666", "0a1b2c3d-9999-2222-3333-444455556666"]
    alike = short_ids(uuids, 13)  # same start, same end: more of the end until they differ
    assert alike[uuids[0]] != alike[uuids[1]]
    assert all(u.endswith(alike[u].split("…")[1]) for u in uuids)
    assert short_ids(["b1", None, "h1"], 13) == {"b1": "b1", "h1": "h1"}
    assert short_ids(["exactly-13-ch"], 13) == {"exactly-13-ch": "exactly-13-ch"}


@pytest.mark.parametrize("width", [90, 130])
def test_tail_shows_replayed_ids_apart(width: int) -> None:
    rows = tuple(_row(n, message_id=f"9f3c2a7b1e0d4c6a8b2f-{n:x}", ts=T0 + n) for n in range(1, 12))
    text = _render(render(replace(SNAPSHOT, frames=rows), width=width), width=width)
    ids = [w for line in text.splitlines() if "Heartbeat" in line for w in line.split()
           if "…" in w]  # fmt: skip
    assert len(ids) == len(set(ids)) == 11, text


def test_payloads_are_shown_under_their_frames() -> None:
    rows = (
        _row(0, action="BootNotification", message_id="b1",
             payload='{"chargePointVendor":"acme","chargePointModel":"X1"}'),
        _row(1, direction="to_charger", type_name="CALLRESULT", action="BootNotification",
             message_id="b1", latency_ms=9.0, payload='{"status":"Accepted","interval":300}'),
        _row(2, type_name="?", action=None, message_id=None, parse_status="invalid_json",
             raw='[2,"x",'),
        _row(3, action="Heartbeat", message_id="h1"),
    )  # fmt: skip
    snapshot = replace(SNAPSHOT, frames=rows, payloads=True)
    for width in (100, 200):
        lines = _render(render(snapshot, width=width), width=width).splitlines()
        frames = [i for i, line in enumerate(lines) if "20:26:4" in line]
        assert [lines[i + 1].strip("│ ") for i in frames] == [
            '{"chargePointVendor":"acme","chargePointModel":"X1"}',
            '{"status":"Accepted","interval":300}',
            '[2,"x",',
            "(no payload recorded)",
        ]
        assert lines[frames[1]].strip("│ ").split()[:6] == [
            "20:26:41.000", "CP-1", "←", "CALLRESULT", "BootNotification", "id=b1",
        ]  # fmt: skip
    assert payload_text(rows[2]).style == "red"


def test_height_keeps_the_newest_frames() -> None:
    text = _render(render(SNAPSHOT, height=16))
    assert "20:26:47.000" in text
    assert "20:26:40.000" not in text
    assert "frames · last " in text
    assert len(text.splitlines()) <= 16


@pytest.mark.parametrize("width", [70, 100, 120, 200])
def test_fit_keeps_the_newest_frames_on_a_live_screen(width: int) -> None:
    frames = [
        _row(
            i,
            message_id=f"{i:08}-1111-2222-3333-444455556666",
            findings=("message-id-reused", "schema-required") if i % 3 == 0 else (),
        )
        for i in range(60)
    ]
    snapshot = new_snapshot(limit=60, connections=CONNECTIONS, frames=frames, live=True)
    console = Console(width=width, height=24, record=True, color_system=None)
    console.print(fit(snapshot, console))
    text = console.export_text()
    assert len(text.splitlines()) <= 24
    assert "20:27:39.000" in text  # the newest frame, seq 59
    shown = int(re.findall(r"frames · last (\d+) of 60", text)[0])
    assert shown >= 4
    assert sum("20:2" in line for line in text.splitlines()) >= shown


def test_connections_panel_is_capped() -> None:
    many = [ConnectionRow(f"c{i}", f"CP-{i:02}", "ocpp1.6", T0 + i, i) for i in range(15)]
    text = _render(connections_panel(new_snapshot(connections=many), max_rows=4))
    assert "CP-03" in text
    assert "CP-04" not in text
    assert "… and 11 more" in text
    assert "15 open, 0 closed or refused" in text


def test_empty_live_and_ended_snapshots() -> None:
    live = new_snapshot(live=True, source="127.0.0.1:9100")
    text = _render(render(live))
    assert "waiting for frames…" in text
    assert "no connections" in text
    assert "live · Ctrl-C to quit" in text
    ended = replace(live, ended="the control endpoint closed the connection")
    text = _render(render(ended))
    assert "no frames" in text
    assert "the control endpoint closed the connection" in text


def test_filters_are_shown() -> None:
    snapshot = new_snapshot(TailFilters("CP-1", None, "to_csms"), 10)
    assert "identity=CP-1 direction=to_csms" in _render(render(snapshot))


def test_cells_are_styled_by_direction_and_type() -> None:
    def styles(cell: Text) -> set[str]:
        return {str(cell.style)} | {str(span.style) for span in cell.spans}

    to_csms, to_charger = frame_cells(FRAMES[0]), frame_cells(FRAMES[2])
    assert "cyan" in styles(to_csms[2])
    assert "bold cyan" in styles(to_csms[3])
    assert "magenta" in styles(to_charger[2])
    assert "bold magenta" in styles(to_charger[3])
    assert "bold red" in styles(frame_cells(FRAMES[3])[3])  # CALLERROR
    assert "bold red" in styles(frame_cells(FRAMES[4])[3])  # malformed
    assert "yellow" in styles(frame_cells(FRAMES[1])[6])  # latency
    finding = notes(FRAMES[0])
    assert any(
        str(span.style) == "bold red" and finding.plain[span.start : span.end] == "⚑schema-required"
        for span in finding.spans
    )
    injected = notes(FRAMES[5])
    assert [str(span.style) for span in injected.spans] == ["bold yellow"]


def test_ansi_colours() -> None:
    out = _ansi(render(SNAPSHOT))
    cyan, magenta, bold_red = "\x1b[36m", "\x1b[35m", "\x1b[1;31m"
    boot = next(line for line in out.splitlines() if "BootNotification" in line and "b1" in line)
    assert f"{cyan}→ csms" in boot
    assert f"{bold_red}⚑schema-required" in boot
    trigger = next(line for line in out.splitlines() if "TriggerMessage" in line)
    assert f"{magenta}← charger" in trigger
    error = next(line for line in out.splitlines() if "NotImplemented" in line)
    assert f"{bold_red}CALLERROR" in error


# -- snapshots from events and rows ------------------------------------------------------

FRAME_EVENT: dict[str, Any] = {
    "event": "frame",
    "connection_id": "c1",
    "identity": "CP-1",
    "seq": 4,
    "ts": T0 + 0.5,
    "direction": "to_charger",
    "opcode": "text",
    "size": 27,
    "message_type": 3,
    "message_id": "7",
    "action": "Heartbeat",
    "parse_status": "ok",
    "error_code": None,
    "latency_ms": 12.5,
    "request_seq": 3,
    "pairing": "matched",
    "injected": False,
    "raw": '[3,"7",{"currentTime":"x"}]',
    "payload": '{"currentTime":"x"}',
    "findings": [
        {"rule": "schema-required", "severity": "error"},
        {"rule": "schema-format", "severity": "error"},
        {"rule": "schema-required", "severity": "error"},
    ],
}
EXPECTED_ROW = FrameRow(
    connection_id="c1",
    seq=4,
    ts=T0 + 0.5,
    identity="CP-1",
    direction="to_charger",
    type_name="CALLRESULT",
    action="Heartbeat",
    message_id="7",
    latency_ms=12.5,
    size=27,
    parse_status="ok",
    error_code=None,
    pairing="matched",
    injected=False,
    findings=("schema-format", "schema-required"),
    payload='{"currentTime":"x"}',
)


def test_frame_row_from_event() -> None:
    assert frame_row_from_event(FRAME_EVENT) == EXPECTED_ROW


def test_frame_row_from_the_protocols_own_event() -> None:
    """The literal above has the keys protocol.frame_event really sends (through JSON)."""
    correlator = Correlator()
    for seq, (data, direction, ts) in enumerate(
        [
            (b'[2,"7","Heartbeat",{}]', Direction.TO_CSMS, T0),
            (b'[3,"7",{"currentTime":"x"}]', Direction.TO_CHARGER, T0 + 0.0125),
            (b"[2,", Direction.TO_CSMS, T0 + 1),
        ]
    ):
        event = FrameReceived(
            "c1", seq, ts, direction, Opcode.TEXT, data, len(data), identity="CP-1"
        )
        sent = json.loads(json.dumps(protocol.frame_event(observe(event, correlator), ())))
        assert set(sent) == set(FRAME_EVENT)
        row = frame_row_from_event(sent)
        assert (row.seq, row.ts, row.direction, row.size) == (seq, ts, str(direction), len(data))
        if seq == 1:
            assert (row.type_name, row.action, row.message_id) == ("CALLRESULT", "Heartbeat", "7")
            assert row.latency_ms == pytest.approx(12.5)
        if seq == 2:
            assert (row.type_name, row.parse_status, row.malformed) == ("?", "invalid_json", True)


def test_frame_row_from_record() -> None:
    record = {
        "connection_id": "c1",
        "seq": 4,
        "ts": T0 + 0.5,
        "identity": "CP-1",
        "direction": "to_charger",
        "message_type": 3,
        "message_id": "7",
        "action": "Heartbeat",
        "latency_ms": 12.5,
        "size": 27,
        "parse_status": "ok",
        "error_code": None,
        "pairing": "matched",
        "injected": False,
        "findings": ["schema-required", "schema-format"],
        "payload": '{"currentTime":"x"}',
        "raw": None,
    }
    assert frame_row_from_record(record) == EXPECTED_ROW
    bare = frame_row_from_record(
        record | {"identity": None, "message_type": None, "findings": None, "injected": None}
    )
    assert (bare.identity, bare.type_name, bare.findings, bare.injected) == ("?", "?", (), False)


def _open(connection_id: str, identity: str, status: int = 101, ts: float = T0) -> dict[str, Any]:
    return {
        "event": "open",
        "connection_id": connection_id,
        "identity": identity,
        "subprotocol": "ocpp1.6" if status == 101 else None,
        "handshake_status": status,
        "ts": ts,
    }


def _frame(connection_id: str, identity: str, seq: int, **values: Any) -> dict[str, Any]:
    return FRAME_EVENT | {
        "connection_id": connection_id,
        "identity": identity,
        "seq": seq,
        "ts": T0 + seq,
        "findings": [],
        **values,
    }


def test_apply_events_in_order() -> None:
    start_snapshot = new_snapshot(limit=3, live=True)
    events = [
        _open("c1", "CP-1"),
        *(_frame("c1", "CP-1", seq) for seq in range(5)),
        {"event": "close", "connection_id": "c1", "code": 1000, "closed_by": "charger", "ts": T0},
        {"event": "something-new"},
    ]
    snapshot = start_snapshot
    for event in events:
        snapshot = apply_event(snapshot, event)
    assert start_snapshot == new_snapshot(limit=3, live=True)  # never mutated
    assert [row.seq for row in snapshot.frames] == [2, 3, 4]  # the last `limit`
    assert snapshot.total == 5
    assert snapshot.connections == (
        ConnectionRow("c1", "CP-1", "ocpp1.6", T0, 5, 101, "1000 by charger"),
    )


def test_filters_hold_back_frames_but_count_them() -> None:
    snapshot = new_snapshot(TailFilters(direction="to_csms"), live=True)
    snapshot = apply_event(snapshot, _open("c1", "CP-1"))
    snapshot = apply_event(snapshot, _frame("c1", "CP-1", 0, direction="to_csms"))
    snapshot = apply_event(snapshot, _frame("c1", "CP-1", 1, direction="to_charger"))
    assert [row.seq for row in snapshot.frames] == [0]
    assert snapshot.total == 1
    assert snapshot.connections[0].frames == 2

    by_identity = new_snapshot(TailFilters(identity="CP-2"), live=True)
    for event in (_open("c1", "CP-1"), _frame("c1", "CP-1", 0), _open("c2", "CP-2")):
        by_identity = apply_event(by_identity, event)
    assert [c.identity for c in by_identity.connections] == ["CP-2"]
    assert by_identity.frames == ()

    by_action = new_snapshot(TailFilters(action="BootNotification"), live=True)
    by_action = apply_event(by_action, _frame("c1", "CP-1", 0))
    by_action = apply_event(by_action, _frame("c1", "CP-1", 1, action="BootNotification"))
    assert [row.action for row in by_action.frames] == ["BootNotification"]


def test_open_close_and_listed_connections() -> None:
    listed = [ConnectionRow("c1", "CP-1", "ocpp1.6", T0 - 5, 10)]
    snapshot = new_snapshot(connections=listed, live=True)
    snapshot = apply_event(snapshot, _open("c1", "CP-1"))  # already listed
    assert snapshot.connections == tuple(listed)
    snapshot = apply_event(snapshot, _frame("c1", "CP-1", 3))  # older than the count
    assert snapshot.connections[0].frames == 10
    snapshot = apply_event(snapshot, _frame("c9", "CP-9", 41))  # opened before we came
    assert snapshot.connections[1] == ConnectionRow("c9", "CP-9", None, None, 42)
    snapshot = apply_event(snapshot, _open("c4", "CP-4", status=404))
    assert snapshot.connections[2].closed == "refused (HTTP 404)"
    snapshot = apply_event(
        snapshot, {"event": "close", "connection_id": "c1", "code": None, "closed_by": "csms"}
    )
    assert snapshot.connections[0].closed == "- by csms"
    snapshot = apply_event(snapshot, {"event": "close", "connection_id": "nope", "code": 1000})
    assert len(snapshot.connections) == 3


def test_closed_connections_are_bounded() -> None:
    snapshot = new_snapshot(live=True)
    snapshot = apply_event(snapshot, _open("keep", "CP-open"))
    for i in range(KEEP_CLOSED + 5):
        snapshot = apply_event(snapshot, _open(f"c{i}", f"CP-{i}"))
        snapshot = apply_event(
            snapshot,
            {"event": "close", "connection_id": f"c{i}", "code": 1000, "closed_by": "charger"},
        )
    ids = [c.connection_id for c in snapshot.connections]
    assert ids[0] == "keep"
    assert ids[1:] == [f"c{i}" for i in range(5, KEEP_CLOSED + 5)]


def test_merge_connections() -> None:
    snapshot = new_snapshot(
        TailFilters(identity="CP-1"),
        connections=[ConnectionRow("c1", "CP-1", "ocpp1.6", T0, 5)],
    )
    merged = merge_connections(
        snapshot,
        [
            ConnectionRow("c1", "CP-1", "ocpp1.6", T0, 9),
            ConnectionRow("c2", "CP-2", "ocpp1.6", T0, 1),
            ConnectionRow("c3", "CP-1", "ocpp2.0.1", T0, 2),
        ],
    )
    assert [(c.connection_id, c.frames) for c in merged.connections] == [("c1", 9), ("c3", 2)]
    assert merge_connections(merged, [ConnectionRow("c1", "CP-1", None, T0, 1)]) == merged
    # the same, as the live view folds in a fresh `connections` result
    listed = {
        "event": "connections",
        "connections": [
            {
                "connection_id": "c1",
                "identity": "CP-1",
                "subprotocol": "ocpp1.6",
                "opened_at": T0,
                "frames": 9,
            },
            {
                "connection_id": "c2",
                "identity": "CP-2",
                "subprotocol": "ocpp1.6",
                "opened_at": T0,
                "frames": 1,
            },
        ],
    }
    assert [(c.connection_id, c.frames) for c in apply_event(snapshot, listed).connections] == [
        ("c1", 9)
    ]


# -- real peers through a real proxy -----------------------------------------------------

BOOT = '[2,"b1","BootNotification",{"chargePointVendor":"acme"}]'  # model missing: a finding
HEARTBEAT = '[2,"h1","Heartbeat",{}]'
GET_CONFIGURATION = '[2,"g1","GetConfiguration",{}]'
NOT_IMPLEMENTED = '[4,"g1","NotImplemented","",{}]'
BROKEN = '[2,"x",'


class Csms:
    """Answers every CALL from the charger and keeps what it received; the test sends
    its own CALL through ``handled[0]``."""

    def __init__(self) -> None:
        self.received: list[str | bytes] = []

    async def __call__(self, ws: ServerConnection) -> None:
        async for message in ws:
            self.received.append(message)
            frame = json.loads(message) if message != BROKEN else None
            if isinstance(frame, list) and frame[0] == 2:
                answer: dict[str, Any] = {"currentTime": "2026-05-28T20:26:40Z"}
                if frame[2] == "BootNotification":
                    answer |= {"interval": 300, "status": "Accepted"}
                await ws.send(json.dumps([3, frame[1], answer]))


async def _exchange(
    charger: ClientConnection,
    csms: Callable[[], ServerConnection],
    received: list[str | bytes],
    inject: Callable[[], Coroutine[Any, Any, Any]],
) -> list[tuple[str, str, str | None, str | None]]:
    """The peers' conversation; returns what each frame should look like in a tail:
    (direction, type, action, message id)."""
    await charger.send(BOOT)
    await charger.recv()
    await charger.send(HEARTBEAT)
    await charger.recv()
    await csms().send(GET_CONFIGURATION)
    assert await charger.recv() == GET_CONFIGURATION
    await charger.send(NOT_IMPLEMENTED)
    await charger.send(BROKEN)
    # relayed, so recorded, before the proxy injects its own CALL
    await wait_until(lambda: BROKEN in received, "the CSMS has the broken frame")
    injection = asyncio.create_task(inject())
    trigger = json.loads(await charger.recv())
    await charger.send(json.dumps([3, trigger[1], {"status": "Accepted"}]))
    await injection
    return [
        ("to_csms", "CALL", "BootNotification", "b1"),
        ("to_charger", "CALLRESULT", "BootNotification", "b1"),
        ("to_csms", "CALL", "Heartbeat", "h1"),
        ("to_charger", "CALLRESULT", "Heartbeat", "h1"),
        ("to_charger", "CALL", "GetConfiguration", "g1"),
        ("to_csms", "CALLERROR", "GetConfiguration", "g1"),
        ("to_csms", "?", None, None),
        ("to_charger", "CALL", "TriggerMessage", trigger[1]),
        ("to_csms", "CALLRESULT", "TriggerMessage", trigger[1]),
    ]


def _check_rows(rows: tuple[FrameRow, ...], expected: list[Any]) -> None:
    assert [(r.direction, r.type_name, r.action, r.message_id) for r in rows] == expected
    assert [r.seq for r in rows] == list(range(len(expected)))
    assert {r.identity for r in rows} == {"CP-1"}
    assert [r.injected for r in rows] == [False] * 7 + [True, True]
    assert [r.latency_ms is not None for r in rows] == [
        False, True, False, True, False, True, False, False, True,
    ]  # fmt: skip
    assert rows[5].error_code == "NotImplemented"
    assert rows[6].parse_status == "invalid_json"
    assert rows[6].size == len(BROKEN)
    assert rows[0].size == len(BOOT)
    assert "schema-required" in rows[0].findings
    assert "malformed-frame" in rows[6].findings


@pytest.fixture
async def recorded(proxy_factory: ProxyFactory) -> tuple[Path, list[Any]]:
    """A recording of the exchange, audited live, with one injected CALL."""
    handler = Csms()
    async with (
        upstream(handler, subprotocols=["ocpp1.6"]) as csms,
        proxy_factory(upstream=csms.url, recorder_options={"auditor": Auditor()}) as (proxy, box),
        connect(f"{proxy.url}/CP-1", subprotocols=[OCPP16]) as charger,
    ):

        async def inject() -> bytes:
            (session,) = proxy.server.sessions
            answer: bytes = await session.inject(
                Direction.TO_CHARGER, "TriggerMessage", {"requestedMessage": "Heartbeat"}, 5
            )
            return answer

        expected = await _exchange(charger, lambda: csms.handled[0], handler.received, inject)
    return box[0].path, expected


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ocproxy")
    add_tail_command(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["tail", *argv])


def test_tail_db(recorded: tuple[Path, list[Any]]) -> None:
    path, expected = recorded
    snapshot = read_recording(str(path), TailFilters(), 50)
    _check_rows(snapshot.frames, expected)
    assert snapshot.total == 9
    assert [(c.identity, c.subprotocol, c.frames, c.closed) for c in snapshot.connections] == [
        ("CP-1", "ocpp1.6", 9, "1000 by charger")
    ]

    console = Console(width=160, record=True, color_system=None)
    assert run_tail(_parse([str(path)]), console) == 0
    text = console.export_text()
    assert f"connections · {path}" in text
    assert "frames · last 9 of 9" in text
    assert _line(text, "⚑schema-required")[2:7] == ["→", "csms", "CALL", "BootNotification", "b1"]
    assert _line(text, "invalid_json")[4] == "MALFORMED"
    assert text.count("◆ injected") == 2


def test_tail_db_payload(recorded: tuple[Path, list[Any]]) -> None:
    path, _ = recorded
    console = Console(width=160, record=True, color_system=None)
    assert run_tail(_parse([str(path), "--payload", "--identity", "CP-1"]), console) == 0
    lines = console.export_text().splitlines()
    boot = next(i for i, line in enumerate(lines) if "CALLRESULT BootNotification" in
                " ".join(line.split()))  # fmt: skip
    assert json.loads(lines[boot + 1].strip("│ ")) == {
        "currentTime": "2026-05-28T20:26:40Z", "interval": 300, "status": "Accepted",
    }  # fmt: skip
    broken = next(i for i, line in enumerate(lines) if "MALFORMED" in line)
    assert lines[broken + 1].strip("│ ") == BROKEN
    trigger = next(i for i, line in enumerate(lines) if "CALL TriggerMessage" in
                   " ".join(line.split()))  # fmt: skip
    assert json.loads(lines[trigger + 1].strip("│ ")) == {"requestedMessage": "Heartbeat"}


def test_tail_db_filters_and_limit(recorded: tuple[Path, list[Any]]) -> None:
    path, expected = recorded
    to_csms = read_recording(str(path), TailFilters(direction="to_csms"), 2)
    assert [(r.direction, r.type_name, r.action) for r in to_csms.frames] == [
        e[:3] for e in expected if e[0] == "to_csms"
    ][-2:]
    assert to_csms.total == 5
    boot = read_recording(str(path), TailFilters("CP-1", "BootNotification"), 50)
    assert [r.message_id for r in boot.frames] == ["b1", "b1"]
    # A misspelt --identity must not look like a quiet charger (a CI gate turning green).
    with pytest.raises(ConfigError, match="no charger 'CP-2' in"):
        read_recording(str(path), TailFilters(identity="CP-2"), 50)

    console = Console(width=160, record=True, color_system=None)
    args = _parse([str(path), "--action", "Heartbeat", "--direction", "to_charger"])
    assert run_tail(args, console) == 0
    text = console.export_text()
    assert "frames · last 1 of 1 · action=Heartbeat direction=to_charger" in text
    assert _line(text, "h1")[2:7] == ["←", "charger", "CALLRESULT", "Heartbeat", "h1"]


def test_tail_db_of_the_oldest_recordings(tmp_path: Path) -> None:
    """A recording made before findings (m002) and injection (m003) existed."""
    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as db:
        db.execute("CREATE TABLE _ocproxy_migrations (name VARCHAR, applied_at TIMESTAMPTZ)")
        m001_initial(db)
        db.execute("INSERT INTO _ocproxy_migrations VALUES ('m001_initial', now())")
        db.execute(
            "INSERT INTO connection_opens (connection_id, identity, subprotocol, opened_at, "
            "handshake_status) VALUES ('c1', 'CP-OLD', 'ocpp1.6', to_timestamp(?), 101)",
            [T0],
        )
        db.execute(
            "INSERT INTO frames (connection_id, seq, ts, direction, size, message_type, "
            "message_id, action, parse_status) "
            "VALUES ('c1', 0, to_timestamp(?), 'to_csms', 22, 2, '7', 'Heartbeat', 'ok')",
            [T0 + 1],
        )
    snapshot = read_recording(str(path), TailFilters(), 50)
    assert snapshot.frames == (
        _row(0, ts=T0 + 1, identity="CP-OLD", direction="to_csms", message_id="7", size=22),
    )
    assert snapshot.connections == (ConnectionRow("c1", "CP-OLD", "ocpp1.6", T0, 1),)


@pytest.mark.parametrize("content", [None, b"not a database at all", b"\0" * 8 + b"DUCK" + b"x"])
def test_tail_bad_db_is_config_error(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "bad.duckdb"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as error:
        run_tail(_parse([str(path)]), Console(file=io.StringIO()))
    assert error.value.exit_code == 2
    assert "\n" not in str(error.value)


def test_the_doc_pages_examples_parse() -> None:
    """Every ``ocproxy tail`` line of docs/commands/tail.md (interactive ones included,
    which the docs tests do not run) is a command line tail accepts. (That every option
    is in the page's table, tests/test_docs.py checks.)"""
    page = (Path(__file__).parent.parent / "docs" / "commands" / "tail.md").read_text()
    examples = [
        shlex.split(line.split("#")[0])[2:]
        for line in page.splitlines()
        if (line.startswith("ocproxy tail ") and " [" not in line)  # not the synopsis
        or line.strip() == "ocproxy tail"
    ]
    assert len(examples) >= 6
    for argv in examples:
        args = _parse([a.replace("$TOKEN", "t") for a in argv])
        assert args.func is run_tail


def test_bad_options_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--limit", "0"], ["--direction", "sideways"]):
        with pytest.raises(SystemExit) as exit_info:
            _parse(argv)
        assert exit_info.value.code == 2
    assert "not a positive integer" in capsys.readouterr().err


# -- live, through the control endpoint --------------------------------------------------


@asynccontextmanager
async def _live_proxy(db_path: Path) -> AsyncIterator[tuple[Any, Any, Csms, int]]:
    """A proxy started as `ocproxy proxy --control 127.0.0.1:0` starts it, and its CSMS."""
    handler = Csms()
    async with upstream(handler, subprotocols=["ocpp1.6"]) as csms:
        config = ProxyConfig(
            listen_host="127.0.0.1",
            listen_port=0,
            upstream=csms.url,
            db=str(db_path),
            control="127.0.0.1:0",
            quiet=True,
        )
        out = io.StringIO()
        async with running_proxy(config, Console(file=out, width=200)) as (proxy, _sink):
            found = re.search(r"control endpoint on 127\.0\.0\.1:(\d+)", out.getvalue())
            assert found, out.getvalue()
            yield proxy, csms, handler, int(found.group(1))


async def test_live_follow_sees_every_frame_in_order(db_path: Path) -> None:
    async with (
        _live_proxy(db_path) as (proxy, csms, handler, port),
        ControlClient("127.0.0.1", port) as everything,
        ControlClient("127.0.0.1", port) as to_csms_only,
    ):
        seen: list[TailSnapshot] = []
        seen_csms: list[TailSnapshot] = []
        first = await start(everything, TailFilters(), 100, "live")
        first_csms = await start(to_csms_only, TailFilters(direction="to_csms"), 100)
        assert first.connections == ()
        assert first.live
        follower = asyncio.create_task(follow(everything, first, seen.append, refresh=0.05))
        follower_csms = asyncio.create_task(follow(to_csms_only, first_csms, seen_csms.append))

        async with connect(f"ws://127.0.0.1:{proxy.port}/CP-1", subprotocols=[OCPP16]) as charger:

            async def inject() -> Any:
                return await everything.request(
                    "inject",
                    identity="CP-1",
                    action="TriggerMessage",
                    payload={"requestedMessage": "Heartbeat"},
                    timeout=5,
                )

            expected = await _exchange(charger, lambda: csms.handled[0], handler.received, inject)
            await wait_until(lambda: bool(seen) and seen[-1].total == 9, "9 frames tailed")
            live_connection = seen[-1].connections[0]
            assert (live_connection.identity, live_connection.closed) == ("CP-1", None)
        await wait_until(
            lambda: seen[-1].connections[0].closed is not None, "the close event arrives"
        )
        await wait_until(lambda: seen_csms[-1].total == 5, "5 frames to the CSMS tailed")
        follower.cancel()
        follower_csms.cancel()
        await asyncio.gather(follower, follower_csms, return_exceptions=True)

    final = seen[-1]
    _check_rows(final.frames, expected)
    (connection,) = final.connections
    assert (connection.identity, connection.subprotocol) == ("CP-1", "ocpp1.6")
    assert connection.frames == 9
    assert connection.closed == "1000 by charger"
    # every update added at most one frame, in order: nothing arrived twice or late
    totals = [s.total for s in seen]
    assert totals == sorted(totals)
    assert [(r.direction, r.action) for r in seen_csms[-1].frames] == [
        (e[0], e[2]) for e in expected if e[0] == "to_csms"
    ]
    assert {r.direction for s in seen_csms for r in s.frames} == {"to_csms"}
    # the live view and the finished recording agree, field for field
    recorded = read_recording(str(db_path), TailFilters(), 100)
    assert recorded.frames == final.frames  # timestamps too: the proxy's clock ticks in µs


async def test_follow_ends_when_the_proxy_stops(db_path: Path) -> None:
    updates: list[TailSnapshot] = []
    async with _live_proxy(db_path) as (_proxy, _csms, _handler, port):
        client = ControlClient("127.0.0.1", port)
        await client.__aenter__()
        try:
            follower = asyncio.create_task(
                follow(client, await start(client, TailFilters(), 5), updates.append)
            )
            await asyncio.sleep(0.05)
        except BaseException:
            await client.__aexit__(None, None, None)
            raise
    try:
        final = await asyncio.wait_for(follower, 5)
    finally:
        await client.__aexit__(None, None, None)
    assert final.ended is not None
    assert "control endpoint closed" in final.ended
    assert updates[-1] == final


async def test_tail_exits_1_when_the_proxy_stops(db_path: Path) -> None:
    out = io.StringIO()
    args = _parse(["--control", "127.0.0.1:0"])
    async with _live_proxy(db_path) as (proxy, _csms, _handler, port):
        args.control = f"127.0.0.1:{port}"
        tail = asyncio.create_task(asyncio.to_thread(run_tail, args, Console(file=out, width=120)))
        # a thread starting a command (imports, a loop) can be slow on a busy machine
        await wait_until(lambda: _subscribed(proxy), "the tail subscribes", 30)
    with pytest.raises(ControlError, match="control endpoint closed") as error:
        await asyncio.wait_for(tail, 10)
    assert error.value.exit_code == 1
    assert "the control endpoint closed the connection" in out.getvalue()  # the last view


async def test_no_endpoint_and_wrong_token_are_control_errors(db_path: Path) -> None:
    port = closed_port()
    with pytest.raises(ControlError, match="no control endpoint") as error:
        await asyncio.to_thread(
            run_tail, _parse(["--control", f"127.0.0.1:{port}", "--token", "t"]), Console()
        )
    assert error.value.exit_code == 1
    with pytest.raises(ControlError, match="no control token"):
        await asyncio.to_thread(run_tail, _parse(["--control", str(port)]), Console())
    async with _live_proxy(db_path) as (_proxy, _csms, _handler, live_port):
        args = _parse(["--control", f"127.0.0.1:{live_port}", "--token", "wrong"])
        with pytest.raises(ControlError, match="refused") as error:
            await asyncio.to_thread(run_tail, args, Console(file=io.StringIO()))
        assert error.value.exit_code == 1


_TAIL_SCRIPT = """
import argparse, sys
from ocproxy.tail.cli import add_tail_command
parser = argparse.ArgumentParser(prog="ocproxy")
add_tail_command(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""


async def test_ctrl_c_exits_0(db_path: Path) -> None:
    """The live command in its own process, as a user runs it: Ctrl-C is a clean exit 0."""
    async with _live_proxy(db_path) as (proxy, _csms, _handler, port):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _TAIL_SCRIPT,
            "tail",
            "--control",
            f"127.0.0.1:{port}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "COLUMNS": "160"},
        )
        try:
            await wait_until(lambda: _subscribed(proxy), "the tail subscribes", limit=20)
            async with connect(
                f"ws://127.0.0.1:{proxy.port}/CP-7", subprotocols=[OCPP16]
            ) as charger:
                await charger.send(HEARTBEAT)
                await charger.recv()
                await asyncio.sleep(0.5)
                process.send_signal(signal.SIGINT)
                stdout, stderr = await asyncio.wait_for(process.communicate(), 10)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert process.returncode == 0, stderr.decode()
    text = stdout.decode()
    assert "connections · 127.0.0.1:" in text
    assert "CP-7" in text
    assert "Heartbeat" in text


def _subscribed(proxy: Any) -> bool:
    """Whether a subscriber is on the proxy's live feed (read through the recorder's sinks)."""
    return any(getattr(sink, "subscribers", None) for sink in proxy.recorder.sinks)
