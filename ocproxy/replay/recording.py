"""The replay's own recording, written by a :class:`Recorder` in a child process.

Why a process and not the recorder's usual writer thread: the writer parses,
correlates, redacts and batches every frame (~40 µs of Python each) holding the GIL.
In the replaying process that work serializes with the event loop, and every answer
then waits for the GIL: a ``--speed max`` replay ran at ~0.6x of a direct client. In
a child process it runs on another core; the replay only pickles batches of plain
tuples (~2 µs a frame). The child is the same Recorder, so the rows are identical.

Like any multiprocessing user, a script that replays through this module must guard
its entry point with ``if __name__ == "__main__":`` (the ``ocproxy`` command does).

Batches go out when full or ``max_age`` after their first event, so a slow replay is
still recorded as it goes. A child that dies is reported in the stats' ``errors``
with the frames lost, like any recording failure; it never stops the replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import time
from multiprocessing.connection import Connection
from typing import Any, Protocol

from ocproxy.core.events import FrameReceived, RecorderEvent
from ocproxy.core.frames import Direction, Opcode
from ocproxy.errors import RecorderError
from ocproxy.recorder import Recorder, RecorderStats

_BATCH = 256
_MAX_AGE_S = 0.1
_CHILD_QUEUE_LIMIT = 20_000  # the child stops reading the pipe above this: backpressure
_Packed = tuple[Any, ...]


class EventSink(Protocol):
    """What a replay session needs of a recorder (a :class:`Recorder` is one)."""

    @property
    def run_id(self) -> str: ...

    @property
    def congested(self) -> bool: ...

    async def wait_for_room(self) -> None: ...

    def submit(self, event: RecorderEvent) -> None: ...


class RecordingProcess:
    """``Recorder(path, source=..., settings=...)`` running in a child process."""

    congested = False  # backpressure is the pipe: send() waits while the child is behind

    def __init__(
        self, path: str, *, source: str = "replay", settings: dict[str, Any] | None = None
    ) -> None:
        self.path, self.source, self.settings = path, source, settings or {}
        self._conn: Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._run_id = ""
        self._buffer: list[_Packed] = []
        self._timer: asyncio.TimerHandle | None = None
        self._lost = 0
        self._error: str | None = None

    @property
    def run_id(self) -> str:
        return self._run_id

    def start(self) -> RecordingProcess:
        """Start the child and wait until its recording is open; RecorderError if not."""
        # forkserver: each child is forked from a clean, thread-free server process (the
        # replay's own process has threads), and ocproxy needs POSIX anyway.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])  # duckdb & co. imported once, not per child
        ours, theirs = context.Pipe()
        self._process = context.Process(
            target=_child,
            args=(theirs, self.path, self.source, self.settings),
            name="ocproxy-replay-recorder",
            daemon=True,  # never outlives us; close() always joins it first
        )
        self._process.start()
        theirs.close()
        self._conn = ours
        try:
            kind, value = ours.recv()
        except EOFError:
            self._process.join()
            raise RecorderError(
                f"cannot open recording {self.path}: recorder process died"
            ) from None
        if kind == "error":
            self._process.join()
            raise RecorderError(str(value))
        self._run_id = str(value)
        return self

    async def wait_for_room(self) -> None:
        return None

    def submit(self, event: RecorderEvent) -> None:
        self._buffer.append(_pack(event))
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
        if self._error is not None:
            self._lost += sum(1 for item in batch if item[0] == "f")
            return
        try:
            self._conn.send(batch)
        except (OSError, ValueError) as exc:
            self._error = f"recording to {self.path} failed: recorder process gone ({exc})"
            self._lost += sum(1 for item in batch if item[0] == "f")

    def close(self) -> RecorderStats:
        """Send what is left, let the child flush and close the file, return its stats."""
        self._send()
        stats = RecorderStats(run_id=self._run_id)
        if self._conn is not None and self._error is None:
            try:
                self._conn.send(None)
                stats = self._conn.recv()
            except (OSError, EOFError) as exc:
                self._error = f"recording to {self.path} failed: recorder process gone ({exc})"
        if self._process is not None:
            self._process.join()
        if self._conn is not None:
            self._conn.close()
        if self._error is not None:
            stats.errors.append(f"{self._error}; {self._lost} frames lost")
            stats.frames_lost += self._lost
        return stats


def _pack(event: RecorderEvent) -> _Packed:
    # Plain tuples pickle several times faster than the frozen dataclasses.
    if isinstance(event, FrameReceived):
        opcode = None if event.opcode is None else event.opcode.value
        return (
            "f",
            event.connection_id,
            event.seq,
            event.ts,
            event.direction.value,
            opcode,
            event.data,
            event.size,
            event.too_large,
            event.identity,
            event.injected,
        )
    return ("e", event)


def _unpack(item: _Packed) -> RecorderEvent:
    if item[0] == "e":
        event: RecorderEvent = item[1]
        return event
    _, connection_id, seq, ts, direction, opcode, data, size, too_large, identity, injected = item
    return FrameReceived(
        connection_id,
        seq,
        ts,
        Direction(direction),
        None if opcode is None else Opcode(opcode),
        data,
        size,
        too_large=too_large,
        identity=identity,
        injected=injected,
    )


def _child(conn: Connection, path: str, source: str, settings: dict[str, Any]) -> None:
    # Ctrl-C reaches the whole process group: the parent decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The recording is off the replay's critical path: it only needs the CPU the replay
    # and its peer leave idle, and catches up within _CHILD_QUEUE_LIMIT (beyond that the
    # pipe makes the replay wait: nothing is lost). At nice 0 it preempted the ping-pong
    # and cost a --speed max replay ~20 % of its rate; at 19 it costs ~nothing.
    with contextlib.suppress(OSError):
        os.nice(19)
    try:
        recorder = Recorder(path, source=source, settings=settings).start()
    except Exception as exc:  # reported to the parent's start(), which raises it
        conn.send(("error", str(exc)))
        return
    conn.send(("ready", recorder.run_id))
    try:
        while (batch := conn.recv()) is not None:
            for item in batch:
                recorder.submit(_unpack(item))
            while recorder.depth > _CHILD_QUEUE_LIMIT:
                time.sleep(0.005)
    except EOFError:
        pass  # the parent is gone: keep what arrived
    finally:
        stats = recorder.close()
        with contextlib.suppress(OSError):
            conn.send(stats)
