"""Terminal output: one line per frame while proxying, a summary table on exit.

Rendering is a pure function of the recorded values (``frame_line``,
``summary_table``), tested by rendering to a string console; :class:`ConsoleSink`
only decides *when* to print.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from ocproxy.core.events import ConnectionClosed, ConnectionOpened
from ocproxy.core.frames import MessageType, ParseStatus
from ocproxy.core.observe import ObservedFrame
from ocproxy.recorder.sink import RecorderStats, Sink
from ocproxy.terminal import make_console

if TYPE_CHECKING:
    from ocproxy.audit.auditor import Finding

_TYPE_NAMES = {int(t): t.name for t in MessageType}
_DIRECTION_STYLE = {"to_csms": "cyan", "to_charger": "magenta"}
_ARROWS = {"to_csms": "→ csms   ", "to_charger": "← charger"}


def frame_line(frame: ObservedFrame, *, mirror: bool = False) -> Text:
    """``12:00:01.123  CP-1  → csms  CALL  BootNotification  id=1  212 B``; a frame of a
    mirror leg (to or from the secondary CSMS) says ``mirror`` after the identity."""
    style = _DIRECTION_STYLE.get(frame.direction, "white")
    kind = _kind(frame)
    line = Text()
    line.append(datetime.fromtimestamp(frame.ts, UTC).strftime("%H:%M:%S.%f")[:-3], "dim")
    line.append("  ")
    line.append(frame.identity or "?", "bold")
    if mirror:
        line.append(" mirror", "magenta")
    line.append("  ")
    line.append(_ARROWS.get(frame.direction, frame.direction), style)
    line.append("  ")
    line.append(f"{kind:<15}", _kind_style(frame, style))
    line.append(" ")
    line.append(frame.action or "-", style)
    if frame.message_id is not None:
        line.append(f"  id={frame.message_id}", "dim")
    if frame.error_code:
        line.append(f"  {frame.error_code}", "red")
    if frame.latency_ms is not None:
        line.append(f"  {frame.latency_ms:.1f} ms", "yellow")
    if frame.pairing not in (None, "matched"):
        line.append(f"  [{frame.pairing}]", "red")
    line.append(f"  {frame.size} B", "dim")
    return line


def _kind(frame: ObservedFrame) -> str:
    if frame.parse_status != ParseStatus.OK:
        return f"MALFORMED:{frame.parse_status}"
    return _TYPE_NAMES.get(frame.message_type or 0, "?")


def _kind_style(frame: ObservedFrame, style: str) -> str:
    if frame.parse_status != ParseStatus.OK:
        return "bold red"
    if frame.message_type in (MessageType.CALLERROR, MessageType.CALLRESULTERROR):
        return "bold red"
    return f"bold {style}"


# Closed connections kept apart in the exit table; earlier ones are summed in one row,
# so that a proxy running for weeks with chargers reconnecting does not grow with them.
CLOSED_KEPT = 1_000


@dataclass(slots=True)
class ConnectionSummary:
    identity: str
    subprotocol: str | None = None
    handshake_status: int = 101
    frames_to_csms: int = 0
    frames_to_charger: int = 0
    bytes: int = 0
    call_errors: int = 0
    malformed: int = 0
    close: str = "open"


@dataclass
class Summary:
    """Per-connection counts gathered while recording, for the exit table."""

    connections: dict[str, ConnectionSummary] = field(default_factory=dict)
    # The closed connections beyond the last CLOSED_KEPT, summed; and how many.
    earlier: ConnectionSummary | None = None
    folded: int = 0
    _closed: deque[str] = field(default_factory=deque)

    def opened(self, event: ConnectionOpened) -> None:
        self.connections[event.connection_id] = ConnectionSummary(
            event.identity, event.subprotocol, event.handshake_status
        )

    def frame(self, frame: ObservedFrame) -> None:
        row = self.plain_frame(frame.connection_id, frame.direction, frame.size)
        if row is not None:
            row.call_errors += frame.message_type == MessageType.CALLERROR
            row.malformed += frame.parse_status != ParseStatus.OK

    def plain_frame(
        self, connection_id: str, direction: str, size: int
    ) -> ConnectionSummary | None:
        """:meth:`frame` for a well-formed CALL or CALLRESULT (no error, not malformed);
        the connection's row, if it is counted."""
        row = self.connections.get(connection_id)
        if row is None:
            return None
        if direction == "to_csms":
            row.frames_to_csms += 1
        else:
            row.frames_to_charger += 1
        row.bytes += size
        return row

    def closed(self, event: ConnectionClosed) -> None:
        row = self.connections.get(event.connection_id)
        if row is not None:
            code = "-" if event.code is None else str(event.code)
            row.close = f"{code} by {event.closed_by}"
            self._closed.append(event.connection_id)
            while len(self._closed) > CLOSED_KEPT:
                self._fold(self.connections.pop(self._closed.popleft()))

    def _fold(self, row: ConnectionSummary) -> None:
        earlier = self.earlier
        if earlier is None:
            earlier = self.earlier = ConnectionSummary("", None, 0, close="closed")
        self.folded += 1
        earlier.identity = f"({self.folded} earlier connections)"
        earlier.frames_to_csms += row.frames_to_csms
        earlier.frames_to_charger += row.frames_to_charger
        earlier.bytes += row.bytes
        earlier.call_errors += row.call_errors
        earlier.malformed += row.malformed


def backpressure_note(stats: RecorderStats, audit: bool) -> str | None:
    """A line for the exit summary when forwarding had to wait for the recorder."""
    if not stats.backpressure_waits:
        return None
    hint = "; --no-audit makes each frame cheaper to record" if audit else ""
    return (
        f"forwarding waited for the recorder {stats.backpressure_waits} times "
        f"({stats.backpressure_wait_s * 1000:.0f} ms in all): frames came faster than it "
        f"records them{hint}"
    )


def summary_table(summary: Summary, stats: RecorderStats | None = None) -> Group:
    """The exit summary: a title line, then a row per connection."""
    title = "ocproxy: connections recorded"
    if stats is not None:
        title += (
            f" ({stats.frames_recorded} frames recorded, {stats.frames_lost} lost, "
            f"{stats.backpressure_waits} backpressure waits)"
        )
    # The title is a line of its own, not the table's: a table's title wraps at the
    # table's width, and a log line must not.
    table = Table()
    for name in ("identity", "subprotocol", "status", "→ csms", "→ charger", "bytes"):
        table.add_column(name, justify="right" if name.startswith(("→", "b")) else "left")
    for name in ("errors", "malformed", "closed"):
        table.add_column(name, justify="right" if name != "closed" else "left")
    rows = list(summary.connections.values())
    if summary.earlier is not None:
        rows.insert(0, summary.earlier)
    for row in rows:
        table.add_row(
            row.identity,
            row.subprotocol or "-",
            str(row.handshake_status) if row.handshake_status else "-",
            str(row.frames_to_csms),
            str(row.frames_to_charger),
            str(row.bytes),
            _count(row.call_errors),
            _count(row.malformed),
            row.close,
        )
    return Group(Text(title, style="italic"), table)


def _count(value: int) -> Text:
    return Text(str(value), "bold red" if value else "")


class ConsoleSink(Sink):
    """Prints each frame as the recorder processes it (on the writer thread)."""

    def __init__(self, console: Console, *, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self.summary = Summary()
        self._lock = threading.Lock()
        # connection id -> identity of the mirror legs (to a secondary CSMS)
        self._mirrors: dict[str, str] = {}

    def on_open(self, event: ConnectionOpened) -> None:
        if event.source == "mirror":
            self._mirrors[event.connection_id] = event.identity
            if not self.quiet:
                self.console.print(_mirror_opened(event))
            return
        with self._lock:
            self.summary.opened(event)
        if self.quiet:
            return
        if event.handshake_status == 101:
            text = f"{event.identity} connected ({event.subprotocol or 'no subprotocol'})"
            self.console.print(Text(text, "green"))
        else:
            text = f"{event.identity} refused: HTTP {event.handshake_status}"
            self.console.print(Text(text, "yellow"))

    @property
    def wants_rows(self) -> bool:  # type: ignore[override]
        return not self.quiet  # a printed line needs the row; the summary does not

    def on_plain_frame(self, connection_id: str, direction: str, size: int) -> None:
        if connection_id not in self._mirrors:
            with self._lock:
                self.summary.plain_frame(connection_id, direction, size)

    def on_frame(self, frame: ObservedFrame, findings: Sequence[Finding] = ()) -> None:
        mirror = frame.connection_id in self._mirrors
        if not mirror:
            with self._lock:
                self.summary.frame(frame)
        if not self.quiet:
            self.console.print(frame_line(frame, mirror=mirror), soft_wrap=True)

    def on_close(self, event: ConnectionClosed) -> None:
        if event.connection_id in self._mirrors:
            identity = self._mirrors.pop(event.connection_id)
            behind = "dropped" in (event.reason or "") or "behind" in (event.reason or "")
            if not self.quiet or behind:  # lost copies are said even with --quiet
                reason = f": {event.reason}" if event.reason else ""
                self.console.print(
                    Text(
                        f"{identity} mirror: leg closed{reason}",
                        "bold red" if behind else "magenta",
                    )
                )
            return
        with self._lock:
            self.summary.closed(event)
        if not self.quiet:
            row = self.summary.connections.get(event.connection_id)
            name = row.identity if row else event.connection_id
            code = "no close code" if event.code is None else str(event.code)
            reason = f" {event.reason}" if event.reason else ""
            self.console.print(
                Text(f"{name} closed: {code}{reason} (by {event.closed_by})", "green")
            )

    def on_error(self, message: str) -> None:
        self.console.print(Text(f"RECORDING ERROR: {message}", "bold red"))


def _mirror_opened(event: ConnectionOpened) -> Text:
    if event.handshake_status == 101:
        return Text(f"{event.identity} mirror: secondary CSMS connected", "magenta")
    return Text(f"{event.identity} mirror: secondary refused, HTTP {event.handshake_status}", "red")


def console_sinks(quiet: bool) -> tuple[list[Sink], Callable[[], Summary]]:
    """For a recorder in a child process: print there, hand the summary back at close."""
    # Line by line even into a pipe or file, so the child's lines interleave in time with
    # the parent's instead of arriving in one block at exit.
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sink = ConsoleSink(make_console(), quiet=quiet)
    return [sink], lambda: sink.summary
