"""The recorder in a child process: the same :class:`Recorder`, off the relay's GIL.

Why a process and not only the writer thread: the writer parses, correlates, redacts,
audits and writes every frame (10-15 µs of CPU each, DuckDB's part included) holding the
GIL; in the relaying process that work serializes with the event loop and every frame
waits behind it. In a child it runs on another core; the relay only pickles batches of
plain tuples (~1 µs a frame, see :mod:`ocproxy.recorder.packed`). The child runs the
same Recorder, so the rows are identical.

Backpressure is the pipe: when the child is behind, sending a batch waits, and so does
forwarding; such waits are counted in the run's stats. A child that dies is reported in
the stats' ``errors`` with the frames lost, like any recording failure; it never stops
the relay. Entry points must guard with ``if __name__ == "__main__":`` (``ocproxy`` does).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import gc
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Protocol

from ocproxy.core.events import RecorderEvent
from ocproxy.core.frames import Direction, Opcode
from ocproxy.core.redaction import Redactor
from ocproxy.errors import RecorderError
from ocproxy.recorder.packed import DIRECTION_VALUES, OPCODE_VALUES, Packed, pack
from ocproxy.recorder.sink import RecorderStats, Sink

if TYPE_CHECKING:  # the child's; the relaying process never loads DuckDB or the audit
    from ocproxy.recorder.writer import Recorder

_BATCH = 256
_MAX_AGE_S = 0.05
_SLOW_SEND_S = 0.001  # a send that took longer waited for the child: count it


class EventSink(Protocol):
    """What a relay needs of a recorder (a :class:`Recorder` is one)."""

    @property
    def run_id(self) -> str: ...

    @property
    def congested(self) -> bool: ...

    async def wait_for_room(self) -> None: ...

    def submit(self, event: RecorderEvent) -> None: ...

    def submit_frame(
        self,
        connection_id: str,
        seq: int,
        ts: float,
        direction: Direction,
        opcode: Opcode,
        data: bytes,
        identity: str,
        injected: bool,
    ) -> None:
        """``submit(FrameReceived(...))`` for a whole message, without building the event."""


@dataclass(frozen=True)
class ChildOptions:
    """How the child builds its Recorder (everything picklable)."""

    source: str = "proxy"
    settings: dict[str, Any] = field(default_factory=dict)
    # Audit every frame, with this response timeout (seconds); None: no audit.
    audit_response_timeout: float | None = None
    redactor: Redactor | None = field(default_factory=Redactor)
    queue_limit: int = 10_000
    rotate: str | None = None  # see ocproxy.recorder.rotation
    flush_interval: float = 0.25
    # A callable building sinks in the child (e.g. the console's), and returning an
    # object the parent gets back at close (e.g. the console's summary).
    sinks: Any = None
    niceness: int = 0


class RecordingProcess:
    """``Recorder(path, ...)`` running in a child process."""

    congested = False  # backpressure is the pipe: send() waits while the child is behind

    def __init__(self, path: str, options: ChildOptions | None = None) -> None:
        self.path = path
        self.options = options or ChildOptions()
        self.result: Any = None  # what the child's sinks factory returned, after close()
        self.recovered: list[str] = []  # earlier runs found crashed (see Recorder.recovered)
        self._conn: Connection | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._run_id = ""
        self._buffer: list[Packed] = []
        self._timer: asyncio.TimerHandle | None = None
        self._lost = 0  # frames that never reached the child
        self._sent = 0  # frames the child received
        self._waits = 0
        self._wait_s = 0.0
        self._error: str | None = None

    @property
    def run_id(self) -> str:
        return self._run_id

    def start(self) -> RecordingProcess:
        """Start the child and wait until its recording is open; RecorderError if not.

        A fresh interpreter (``python -m ocproxy.recorder.child``), not a fork: it loads
        only what recording needs, and no third process (a forkserver) is kept around.
        """
        ours, theirs = socket.socketpair()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "ocproxy.recorder.child", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        conn = Connection(ours.detach())
        self._conn = conn
        # The child ignores SIGTERM; closing our end at exit lets it see EOF and stop.
        atexit.register(conn.close)
        try:
            conn.send((self.path, self.options))
            kind, value = conn.recv()
        except (EOFError, OSError):
            self._process.wait()
            raise RecorderError(
                f"cannot open recording {self.path}: recorder process died"
            ) from None
        if kind == "error":
            self._process.wait()
            raise RecorderError(str(value))
        self._run_id, self.recovered = value
        return self

    async def wait_for_room(self) -> None:
        return None

    def submit(self, event: RecorderEvent) -> None:
        self._add(pack(event))

    def submit_frame(
        self,
        connection_id: str,
        seq: int,
        ts: float,
        direction: Direction,
        opcode: Opcode,
        data: bytes,
        identity: str,
        injected: bool,
    ) -> None:
        # The relay's path, once per frame: straight to the tuple that is pickled.
        item = (
            "f", connection_id, seq, ts, DIRECTION_VALUES[direction], OPCODE_VALUES[opcode],
            data, len(data), False, identity, injected,
        )  # fmt: skip
        self._add(item)

    def _add(self, item: Packed) -> None:
        self._buffer.append(item)
        if len(self._buffer) >= _BATCH:
            self._send()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # outside a loop: the batch goes when full or at close()
            self._timer = loop.call_later(_MAX_AGE_S, self._send)

    def _send(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._buffer = self._buffer, []
        if not batch or self._conn is None:
            return
        frames = sum(1 for item in batch if item[0] == "f")
        if self._error is not None:
            self._lost += frames
            return
        started = time.perf_counter()
        try:
            self._conn.send(batch)
        except (OSError, ValueError) as exc:
            self._error = f"recording to {self.path} failed: recorder process gone ({exc})"
            self._lost += frames
            return
        self._sent += frames
        waited = time.perf_counter() - started
        if waited > _SLOW_SEND_S:
            self._waits += 1
            self._wait_s += waited

    def close(self) -> RecorderStats:
        """Send what is left, let the child flush and close the file, return its stats."""
        self._send()
        stats = RecorderStats(run_id=self._run_id)
        if self._conn is not None and self._error is None:
            try:
                self._conn.send(("close", self._waits, self._wait_s))
                stats, self.result = self._conn.recv()
            except (OSError, EOFError) as exc:
                self._error = f"recording to {self.path} failed: recorder process gone ({exc})"
        if self._process is not None:
            self._process.wait()
        if self._conn is not None:
            self._conn.close()
            atexit.unregister(self._conn.close)
        if self._error is not None:
            # What the child received but never wrote is lost too: the file says how
            # much of what we sent it holds.
            recorded = _frames_in_file(self.path, self._run_id)
            lost = self._lost + max(self._sent - (recorded or 0), 0)
            stats.frames_recorded = recorded or 0
            stats.errors.append(
                f"{self._error}; {lost} frames lost"
                if recorded is not None
                else f"{self._error}; {self._lost} frames lost, and up to {self._sent} more "
                "that it had received (the recording cannot be read to tell)"
            )
            stats.frames_lost += lost
        return stats


def _frames_in_file(path: str, run_id: str) -> int | None:
    """Frames of ``run_id`` in the recording, None if it cannot be read."""
    import duckdb  # only when the recorder process died: the relay has no use for it

    try:
        with duckdb.connect(path, read_only=True) as db:
            row = db.execute(
                "SELECT count(*) FROM frames JOIN connection_opens USING (connection_id) "
                "WHERE run_id = ?",
                [run_id],
            ).fetchone()
    except duckdb.Error:
        return None
    return None if row is None else int(row[0])


def child_main(fd: int) -> None:
    """The recorder process: ``python -m ocproxy.recorder.child FD`` (see ``start``)."""
    conn = Connection(fd)
    try:
        path, options = conn.recv()
    except EOFError:
        return
    _child(conn, path, options)


def _child(conn: Connection, path: str, options: ChildOptions) -> None:
    # Ctrl-C, and a SIGTERM sent to the whole process group (timeout(1), systemd, kill
    # -- -PGID), reach us too: the parent decides when we stop, after its last frames.
    # We stop when it says so or when the pipe closes (the parent is gone).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if options.niceness:
        with contextlib.suppress(OSError):
            os.nice(options.niceness)
    from ocproxy.audit.auditor import Auditor, AuditSettings
    from ocproxy.recorder.rotation import Rotation
    from ocproxy.recorder.writer import Recorder

    sinks: list[Sink] = []
    collect = None
    if options.sinks is not None:
        sinks, collect = options.sinks()
    try:
        recorder = Recorder(
            path,
            source=options.source,
            settings=options.settings,
            queue_limit=options.queue_limit,
            sinks=sinks,
            auditor=None
            if options.audit_response_timeout is None
            else Auditor(AuditSettings(response_timeout_s=options.audit_response_timeout)),
            redactor=options.redactor,
            rotation=None if options.rotate is None else Rotation.parse(options.rotate),
            flush_interval=options.flush_interval,
        ).open_here()
    except Exception as exc:  # reported to the parent's start(), which raises it
        conn.send(("error", str(exc)))
        return
    # The writer's garbage is acyclic and freed by reference counting; the collector's
    # default (a pass every 700 allocations) cost ~7 % of the recorder's time.
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    conn.send(("ready", (recorder.run_id, recorder.recovered)))
    _serve(conn, recorder, collect)


def _serve(conn: Connection, recorder: Recorder, collect: Any) -> None:
    """Record each batch as it arrives, in this thread; write on time when idle.

    Backpressure is the pipe: while this process records, it does not read, the pipe
    fills and the relay's send waits (counted there)."""
    try:
        while True:
            if not conn.poll(recorder.flush_due()):
                continue
            message = conn.recv()
            if isinstance(message, tuple) and message and message[0] == "close":
                recorder.stats.backpressure_waits += message[1]
                recorder.stats.backpressure_wait_s += message[2]
                break
            # In flight here: at most the batch in hand (the pipe holds the rest).
            stats = recorder.stats
            stats.max_queue_depth = max(stats.max_queue_depth, len(message))
            recorder.process_packed(message)
    except EOFError:
        # The relay is gone without a word: keep what arrived, and say the run crashed.
        recorder.finish(orphaned=True)
        return
    stats = recorder.finish()
    with contextlib.suppress(OSError):
        conn.send((stats, None if collect is None else collect()))
