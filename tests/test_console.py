"""Console rendering, as rich's own tests do it: render to a string console, compare."""

from __future__ import annotations

from rich.console import Console

from ocproxy.console import CLOSED_KEPT, Summary, backpressure_note, frame_line, summary_table
from ocproxy.core.correlation import Correlator
from ocproxy.core.events import ClosedBy, ConnectionClosed, ConnectionOpened, FrameReceived
from ocproxy.core.frames import Direction, Opcode
from ocproxy.core.observe import ObservedFrame, observe
from ocproxy.recorder import RecorderStats

T0 = 1_780_000_000.0  # 2026-05-28 20:26:40 UTC


def _render(renderable: object, width: int = 120) -> str:
    console = Console(width=width, record=True, color_system=None, force_terminal=False)
    console.print(renderable)
    return console.export_text()


def _observed(
    correlator: Correlator, seq: int, data: bytes, direction: Direction, ts: float
) -> ObservedFrame:
    event = FrameReceived("c1", seq, ts, direction, Opcode.TEXT, data, len(data), identity="CP-1")
    return observe(event, correlator)


def test_frame_lines() -> None:
    correlator = Correlator()
    call = _observed(correlator, 0, b'[2,"7","Heartbeat",{}]', Direction.TO_CSMS, T0)
    result = _observed(
        correlator, 1, b'[3,"7",{"currentTime":"x"}]', Direction.TO_CHARGER, T0 + 0.0125
    )
    error = _observed(correlator, 2, b'[4,"9","NotImplemented","",{}]', Direction.TO_CSMS, T0 + 1)
    broken = _observed(correlator, 3, b'[2,"1",', Direction.TO_CHARGER, T0 + 2)
    assert _render(frame_line(call)).strip() == (
        "20:26:40.000  CP-1  → csms     CALL            Heartbeat  id=7  22 B"
    )
    assert _render(frame_line(result)).strip() == (
        "20:26:40.012  CP-1  ← charger  CALLRESULT      Heartbeat  id=7  12.5 ms  27 B"
    )
    assert _render(frame_line(error)).strip() == (
        "20:26:41.000  CP-1  → csms     CALLERROR       -  id=9  NotImplemented  [unknown_id]  30 B"
    )
    assert _render(frame_line(broken)).strip() == (
        "20:26:42.000  CP-1  ← charger  MALFORMED:invalid_json -  7 B"
    )


def test_frame_line_colours_by_direction() -> None:
    correlator = Correlator()
    call = _observed(correlator, 0, b'[2,"7","Heartbeat",{}]', Direction.TO_CSMS, T0)
    line = frame_line(call)
    styles = {str(span.style) for span in line.spans}
    assert "cyan" in styles
    assert "bold cyan" in styles


def test_backpressure_note_only_when_forwarding_waited() -> None:
    assert backpressure_note(RecorderStats(run_id="r"), audit=True) is None
    stats = RecorderStats(run_id="r", backpressure_waits=12, backpressure_wait_s=0.8384)
    assert backpressure_note(stats, audit=True) == (
        "forwarding waited for the recorder 12 times (838 ms in all): frames came faster "
        "than it records them; --no-audit makes each frame cheaper to record"
    )
    assert backpressure_note(stats, audit=False) == (
        "forwarding waited for the recorder 12 times (838 ms in all): frames came faster "
        "than it records them"
    )


def test_summary_table() -> None:
    summary = Summary()
    summary.opened(
        ConnectionOpened(
            "c1", T0, "CP-1", "/CP-1", None, ("ocpp1.6",), "ocpp1.6", "ws://x/CP-1", 101
        )
    )
    correlator = Correlator()
    summary.frame(_observed(correlator, 0, b'[2,"7","Heartbeat",{}]', Direction.TO_CSMS, T0))
    summary.frame(_observed(correlator, 1, b"not json", Direction.TO_CHARGER, T0))
    summary.closed(ConnectionClosed("c1", T0 + 1, 1000, "", ClosedBy.CHARGER))
    stats = RecorderStats(run_id="r", frames_recorded=2)
    text = _render(summary_table(summary, stats), width=140)
    assert "2 frames recorded, 0 lost, 0 backpressure waits" in text
    row = next(line for line in text.splitlines() if "CP-1" in line)
    cells = [cell.strip() for cell in row.strip("│ ").split("│")]
    assert cells == ["CP-1", "ocpp1.6", "101", "1", "1", "30", "0", "1", "1000 by charger"]


def test_summary_keeps_the_last_closed_connections_and_sums_the_earlier_ones() -> None:
    """A proxy running for weeks sees chargers reconnect again and again: the exit
    table keeps every live connection and the last CLOSED_KEPT closed ones, and one row
    sums the closed connections before them."""
    summary = Summary()
    extra = 5
    for n in range(CLOSED_KEPT + extra + 1):
        cid = f"c{n}"
        summary.opened(
            ConnectionOpened(
                cid, T0, f"CP-{n}", f"/CP-{n}", None, ("ocpp1.6",), "ocpp1.6", "ws://x", 101
            )
        )
        heartbeat = _observed(Correlator(), 0, b'[2,"7","Heartbeat",{}]', Direction.TO_CSMS, T0)
        heartbeat.connection_id = cid
        summary.frame(heartbeat)
        if n < CLOSED_KEPT + extra:  # the last one stays open
            summary.closed(ConnectionClosed(cid, T0 + 1, 1000, "", ClosedBy.CHARGER))
    assert len(summary.connections) == CLOSED_KEPT + 1
    assert summary.folded == extra
    assert "c0" not in summary.connections
    assert f"c{CLOSED_KEPT + extra}" in summary.connections  # open: never folded
    text = _render(summary_table(summary), width=140)
    row = next(line for line in text.splitlines() if "earlier" in line)
    cells = [cell.strip() for cell in row.strip("│ ").split("│")]
    # Each of the 5 sent one 22-byte Heartbeat.
    assert cells == [
        f"({extra} earlier connections)",
        "-",
        "-",
        "5",
        "0",
        "110",
        "0",
        "0",
        "closed",
    ]


def test_mirror_legs_are_marked_and_kept_out_of_the_summary() -> None:
    from ocproxy.console import ConsoleSink

    console = Console(width=200, record=True, color_system=None, force_terminal=False)
    sink = ConsoleSink(console)
    opened = ConnectionOpened(
        connection_id="m1",
        ts=T0,
        identity="CP-1",
        path="/ocpp/CP-1",
        remote_addr=None,
        offered_subprotocols=("ocpp1.6",),
        subprotocol="ocpp1.6",
        upstream_url="ws://secondary",
        handshake_status=101,
        source="mirror",
        mirror_of="c1",
    )
    sink.on_open(opened)
    data = b'[2,"7","Heartbeat",{}]'
    event = FrameReceived(
        "m1", 0, T0, Direction.TO_CSMS, Opcode.TEXT, data, len(data), identity="CP-1"
    )
    sink.on_frame(observe(event, Correlator()))
    sink.on_close(
        ConnectionClosed("m1", T0 + 1, 1006, "secondary fell behind: 3 copies dropped", "proxy")
    )
    lines = console.export_text().splitlines()
    assert lines[0] == "CP-1 mirror: secondary CSMS connected"
    assert "CP-1 mirror  → csms" in lines[1]
    assert lines[2] == "CP-1 mirror: leg closed: secondary fell behind: 3 copies dropped"
    assert sink.summary.connections == {}  # the charger's own connections only
