"""The recorder: one thread owns the DuckDB connection; everyone else enqueues.

After datasette's ``database.py``: a queue in front of a single writer thread. The
event loop calls :meth:`Recorder.submit`, which never blocks and never drops; the
bound is enforced by :meth:`Recorder.wait_for_room`, which the relay awaits before
reading the next message when the queue is over its limit (backpressure, counted).

The writer thread parses and correlates (``core.observe``), so that work stays off
the event loop, and appends batches through Arrow, flushed by size and by age.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from ocproxy import __version__
from ocproxy.audit.auditor import Auditor
from ocproxy.core.correlation import Correlator
from ocproxy.core.events import ConfigReloaded, ConnectionOpened, FrameReceived, RecorderEvent
from ocproxy.core.frames import Direction, Opcode
from ocproxy.core.redaction import Redactor
from ocproxy.errors import WRITING, RecorderError, first_line, open_failure
from ocproxy.recorder import batches, derived
from ocproxy.recorder.crashes import close_crashed_run, crashed_runs
from ocproxy.recorder.intake import Intake
from ocproxy.recorder.migrations import migrate
from ocproxy.recorder.packed import Packed
from ocproxy.recorder.rotation import (
    DEFAULT_RECORDER_MEMORY,
    Rotation,
    file_size,
    recorder_memory,
)
from ocproxy.recorder.sink import DEFAULT_DB, RecorderStats, Sink

__all__ = ["DEFAULT_DB", "Recorder", "RecorderStats", "Sink"]


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool
    file: str | None = None  # the file it ran on: with a rotation, the current one


class LiveQuery:
    """A read-only query for the writer thread (only it may touch the live file)."""

    def __init__(self, sql: str, limit: int, params: dict[str, Any] | None = None) -> None:
        self.sql = sql
        self.limit = limit
        self.params = params or None
        self.file: str | None = None
        self.future: Future[QueryResult] = Future()

    def run(self, db: duckdb.DuckDBPyConnection) -> None:
        try:
            kinds = {s.type for s in db.extract_statements(self.sql)}
            if kinds != {duckdb.StatementType.SELECT}:
                raise RecorderError("live queries are read-only: one SELECT, no changes")
            cursor = db.cursor()
            try:
                cursor.execute(self.sql, self.params)
                columns = [d[0] for d in cursor.description or []]
                rows = cursor.fetchmany(self.limit + 1)
            finally:
                cursor.close()
        except duckdb.Error as exc:
            self.future.set_exception(RecorderError(first_line(exc)))
            return
        except RecorderError as exc:
            self.future.set_exception(exc)
            return
        result = QueryResult(columns, rows[: self.limit], len(rows) > self.limit, self.file)
        self.future.set_result(result)


@dataclass
class _Here:
    """The writer's state when it runs in the calling thread (see ``open_here``)."""

    db: duckdb.DuckDBPyConnection
    buffer: batches.Batch = field(default_factory=batches.Batch)
    correlators: dict[str, Correlator] = field(default_factory=dict)
    deadline: float | None = None


_STOP = object()
ERRORS_KEPT = 20  # failed writes said one by one in the run's errors
# DuckDB checkpoints (compresses the WAL into the file) every 16 MB by default. With
# ~600 bytes a frame that rewrites the same partly filled row group (122,880 rows)
# several times: measured on 100,000 frames, 15 us of writing per frame and 580 bytes
# of file; at 128 MB, 8 us and 300 bytes. Commits still go to the WAL at once.
# One DuckDB thread: the recorder has one core to itself at most (the relay needs the
# other), and waking DuckDB's pool for each batch cost ~1 ms of CPU per insert (measured:
# 750 frames, 3.5 -> 2.5 ms), which at a few thousand frames/s is several us a frame.
_WRITER_CONFIG: dict[str, str | bool | int | float | list[str]] = {
    "checkpoint_threshold": "128MB",
    "threads": 1,
}
SECRETS_ONLY = Redactor()  # secrets out, driver identifiers kept
_MIN_POLL_S = 0.002
_MAX_POLL_S = 0.05
_YIELD_EVERY = 32


class Recorder:
    """Records events into a DuckDB file from a single writer thread."""

    def __init__(
        self,
        path: str | Path = DEFAULT_DB,
        *,
        source: str = "proxy",
        settings: dict[str, Any] | None = None,
        queue_limit: int = 10_000,
        batch_rows: int = 5_000,
        flush_interval: float = 0.25,
        sinks: list[Sink] | None = None,
        auditor: Auditor | None = None,
        redactor: Redactor | None = SECRETS_ONLY,
        yield_every: int = _YIELD_EVERY,
        rotation: Rotation | None = None,
    ) -> None:
        self.path = Path(path)
        self.base = self.path  # with a rotation, the files are named after it
        self.rotation = rotation
        self.source = source
        self.settings = settings or {}
        self.queue_limit = queue_limit
        self.batch_rows = batch_rows
        self.flush_interval = flush_interval
        self.sinks = list(sinks or [])
        self.auditor = auditor
        # Secrets are always kept out; driver ids only with a key (see Redactor).
        self.redactor = redactor
        self._intake = Intake(redactor, auditor, self.sinks)
        # Every so many events the writer hands the GIL to the event loop sharing this
        # process; 0 when no loop does (the recorder's own process).
        self.yield_every = yield_every
        self.stats = RecorderStats(run_id=str(uuid.uuid4()))
        # deque.append and popleft are atomic: the loop thread appends, the writer pops.
        self._pending: deque[object] = deque()
        # Two single-writer counters instead of a shared one: the loop thread only
        # increments _submitted, the writer thread only _processed.
        self._submitted = 0
        self._processed = 0
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._here: _Here | None = None
        # One line per earlier run found to have crashed (its rows are closed at open).
        self.recovered: list[str] = []
        # With a rotation: the live connections' opens (each new file gets them again),
        # when the current file ends by time, and the stats when it began.
        self._live: dict[str, ConnectionOpened] = {}
        # Payload fields of frames already written, stored every few seconds (see there).
        self._fields = derived.Pending()
        self._more_failures = 0  # failed writes beyond the first ERRORS_KEPT
        self._rotate_at: datetime | None = None
        self._file_base = RecorderStats(run_id="")
        self._empty_size = 0

    @property
    def run_id(self) -> str:
        return self.stats.run_id

    @property
    def depth(self) -> int:
        """Events submitted but not yet processed."""
        return self._submitted - self._processed

    # -- life cycle -------------------------------------------------------------

    def start(self) -> Recorder:
        """Open (creating and migrating) the database on the writer thread; raise if it can't."""
        self._thread = threading.Thread(target=self._run, name="ocproxy-recorder", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            self._thread.join()
            error = self._start_error
            raise RecorderError(
                str(error) if isinstance(error, RecorderError) else open_failure(self.path, error)
            ) from error
        return self

    def close(self) -> RecorderStats:
        """Process everything submitted, flush, write the run's stats and close the file."""
        if self._thread is not None and self._thread.is_alive():
            self._pending.append(_STOP)
            self._thread.join()
        return self.stats

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- producer side (event loop thread) ---------------------------------------

    def submit(self, event: RecorderEvent) -> None:
        """Enqueue an event; never blocks, never drops. Call from one thread only."""
        self._submitted += 1
        depth = self._submitted - self._processed
        if depth > self.stats.max_queue_depth:
            self.stats.max_queue_depth = depth
        self._pending.append(event)

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
        """``submit(FrameReceived(...))`` for a whole message received."""
        self.submit(
            FrameReceived(
                connection_id,
                seq,
                ts,
                direction,
                opcode,
                data,
                len(data),
                identity=identity,
                injected=injected,
            )
        )

    @property
    def congested(self) -> bool:
        return self.depth >= self.queue_limit

    def query(
        self, sql: str, limit: int = 10_000, params: dict[str, Any] | None = None
    ) -> Future[QueryResult]:
        """Run a read-only query on the writer's connection, after what was submitted."""
        request = LiveQuery(sql, limit, params)
        self._pending.append(request)
        return request.future

    async def wait_for_room(self) -> None:
        """Wait while the queue is at its limit; each wait is counted in the stats."""
        if not self.congested:
            return
        started = time.perf_counter()
        self.stats.backpressure_waits += 1
        # Polling, not an Event: waking the loop from the writer thread on every batch
        # would cost more than this loop does in the rare congested case.
        while self.congested and self._thread is not None and self._thread.is_alive():  # noqa: ASYNC110
            await asyncio.sleep(0.002)
        self.stats.backpressure_wait_s += time.perf_counter() - started

    # -- in the calling thread (the recorder process) -------------------------------

    def open_here(self) -> Recorder:
        """Open the recording in the calling thread, which then feeds :meth:`process`.

        For a process with no event loop to share its thread with: no writer thread, no
        queue and no polling between receiving an event and recording it."""
        if self.rotation is not None:
            self._next_file(datetime.now(UTC))
        self._here = _Here(self._open())
        self._empty_size = file_size(self.path)
        return self

    def _next_file(self, start: datetime) -> None:
        assert self.rotation is not None
        first = path = self.rotation.path(self.base, start)
        n = 1
        while path.exists():  # two files begun in one second (size), or a second proxy
            n += 1
            path = first.with_name(f"{first.stem}-{n}{first.suffix}")
        self.path = path
        self._rotate_at = self.rotation.next_boundary(start)

    def _rotate_if_due(self) -> None:
        """Start the next file of the rotation, if it is time: the batch is written."""
        here = self._here
        rotation = self.rotation
        if rotation is None or here is None:
            return
        now = datetime.now(UTC)
        due = self._rotate_at is not None and now >= self._rotate_at
        if not due and not rotation.full(self.path, self._empty_size):
            return
        self._write_stats(here.db)
        here.db.close()
        self._file_base = dataclasses.replace(self.stats, errors=[])
        self._next_file(self._rotate_at if due and self._rotate_at is not None else now)
        here.db = self._open()
        self._empty_size = file_size(self.path)
        # Each file reads alone: the connections still open are opened in it again.
        reopened = batches.Batch(opens=list(self._live.values()))
        self._flush(here.db, reopened)

    def process(self, event: RecorderEvent) -> None:
        """Record one event now (batched); :meth:`flush_due` writes the batch on time."""
        here = self._here
        assert here is not None, "open_here() first"
        self._handle(event, here.buffer, here.correlators)
        if here.deadline is None:
            here.deadline = time.monotonic() + self.flush_interval
        if here.buffer.size >= self.batch_rows:
            here.buffer, here.deadline = self._flushed(here.db, here.buffer)
            self._rotate_if_due()

    def process_many(self, events: Iterable[RecorderEvent]) -> None:
        """:meth:`process` for each event, in one call: the recorder process's path."""
        here = self._here
        assert here is not None, "open_here() first"
        handle, limit = self._handle, self.batch_rows
        for event in events:
            handle(event, here.buffer, here.correlators)
            if here.deadline is None:
                here.deadline = time.monotonic() + self.flush_interval
            # Frames and findings are nearly all the rows: opens, closes and reloads
            # wait for the deadline (a sum over all five lists cost ~0.3 us a frame).
            if len(here.buffer.frames) + len(here.buffer.findings) >= limit:
                here.buffer, here.deadline = self._flushed(here.db, here.buffer)
                self._rotate_if_due()

    def process_packed(self, items: Iterable[Packed]) -> None:
        """:meth:`process_many` for events packed as tuples (:mod:`ocproxy.recorder.packed`),
        as the relay sends them to the recorder process: no event is built for a frame."""
        here = self._here
        assert here is not None, "open_here() first"
        packed, limit = self._intake.packed, self.batch_rows
        buffer = here.buffer
        for item in items:
            if item[0] == "f":
                packed(item, buffer.frames, buffer.findings, here.correlators)
            else:
                self._handle(item[1], buffer, here.correlators)
            if here.deadline is None:
                here.deadline = time.monotonic() + self.flush_interval
            # Frames and findings are nearly all the rows: see process_many.
            if len(buffer.frames) + len(buffer.findings) >= limit:
                here.buffer, here.deadline = self._flushed(here.db, buffer)
                self._rotate_if_due()
                buffer = here.buffer

    def flush_due(self) -> float | None:
        """Write the batch if it is due; seconds until the next one is (None: empty)."""
        here = self._here
        assert here is not None, "open_here() first"
        if here.deadline is None:
            return None
        left = here.deadline - time.monotonic()
        if left > 0:
            return left
        here.buffer, here.deadline = self._flushed(here.db, here.buffer)
        self._rotate_if_due()
        return None

    def finish(self, *, orphaned: bool = False) -> RecorderStats:
        """Write what is left and the run's stats, and close the file.

        ``orphaned``: the process feeding this one died without saying it was done, so
        what it relayed but never sent here is unknown: this run is closed as a crash
        (its open connections ``proxy-crash``, ``frames_lost`` NULL), never "0 lost"."""
        here = self._here
        assert here is not None, "open_here() first"
        try:
            self._flush(here.db, here.buffer)
        finally:
            if orphaned:
                self._store_fields(here.db)
                try:
                    close_crashed_run(here.db, self.run_id)
                except duckdb.Error as exc:
                    self.stats.errors.append(f"cannot close the run: {first_line(exc)}")
            else:
                self._write_stats(here.db)
            here.db.close()
        return self.stats

    # -- writer thread -------------------------------------------------------------

    def _run(self) -> None:
        try:
            here = self.open_here()._here
        except BaseException as exc:  # reported to start() and re-raised there
            self._start_error = exc
            self._ready.set()
            return
        self._ready.set()
        assert here is not None
        try:
            self._loop(here)
        finally:
            self._write_stats(here.db)  # the current file's: _rotate_if_due swaps here.db
            here.db.close()

    def _open(self) -> duckdb.DuckDBPyConnection:
        if self.path.parent and not self.path.parent.exists():
            raise FileNotFoundError(f"directory {self.path.parent} does not exist")
        # The proxy's --recorder-memory comes with its settings (a run records them).
        wanted = self.settings.get("recorder_memory", DEFAULT_RECORDER_MEMORY)
        memory = recorder_memory(str(wanted))
        try:
            db = duckdb.connect(
                str(self.path), config={**_WRITER_CONFIG, "memory_limit": f"{memory}B"}
            )
        except duckdb.Error as exc:
            raise RecorderError(open_failure(self.path, exc, WRITING)) from exc
        try:
            # DuckDB draws its own progress bar on stdout for a statement over 2 s (a
            # commit that checkpoints on a busy machine), through the command's output.
            db.execute("SET enable_progress_bar = false")
            migrate(db)
            db.execute(
                "INSERT INTO runs VALUES (?, now(), ?, ?, ?)",
                [self.run_id, __version__, self.source, json.dumps(self.settings, default=str)],
            )
            for run in crashed_runs(db, self.run_id):
                close_crashed_run(db, run.run_id)
                self.recovered.append(run.line())
            if self.recovered:
                # A crash loses the payload fields not yet stored (derived.Pending).
                derived.backfill(db)
        except duckdb.Error as exc:
            db.close()
            raise RecorderError(open_failure(self.path, exc, WRITING)) from exc
        return db

    def _loop(self, here: _Here) -> None:
        # The writer polls instead of blocking on a queue: a blocking get wakes this
        # thread (and contends for the GIL with the event loop) once per frame, which
        # at a few thousand frames/s costs more than the recording itself.
        pending = self._pending
        buffer = batches.Batch()
        correlators: dict[str, Correlator] = {}
        deadline: float | None = None
        idle = _MIN_POLL_S
        while True:
            if not pending:
                if deadline is not None and time.monotonic() >= deadline:
                    buffer, deadline = self._flushed(here.db, buffer)
                    self._rotate_if_due()
                time.sleep(idle)
                idle = min(idle * 2, _MAX_POLL_S)
                continue
            idle = _MIN_POLL_S
            yield_at = self.yield_every or -1
            for count in range(1, self.batch_rows + 1):
                if not pending:
                    break
                item = pending.popleft()
                if item is _STOP:
                    self._flush(here.db, buffer)
                    return
                if isinstance(item, LiveQuery):
                    # Answer from the file as it will be once everything before is in.
                    buffer, deadline = self._flushed(here.db, buffer)
                    self._rotate_if_due()
                    item.file = str(self.path)
                    self._store_fields(here.db)
                    item.run(here.db)
                    continue
                self._handle(item, buffer, correlators)  # type: ignore[arg-type]
                self._processed += 1
                if count == yield_at:
                    yield_at += self.yield_every
                    time.sleep(0)  # hand the GIL to the event loop if it is waiting
            if deadline is None:
                deadline = time.monotonic() + self.flush_interval
            if buffer.size >= self.batch_rows or time.monotonic() >= deadline:
                buffer, deadline = self._flushed(here.db, buffer)
                self._rotate_if_due()

    def _flushed(
        self, db: duckdb.DuckDBPyConnection, buffer: batches.Batch
    ) -> tuple[batches.Batch, None]:
        self._flush(db, buffer)
        return batches.Batch(), None

    def _handle(
        self, event: RecorderEvent, buffer: batches.Batch, correlators: dict[str, Correlator]
    ) -> None:
        if isinstance(event, FrameReceived):  # nearly every event
            self._intake.event(event, buffer.frames, buffer.findings, correlators)
        elif isinstance(event, ConnectionOpened):
            correlators[event.connection_id] = Correlator()
            if self.rotation is not None and event.handshake_status == 101:
                self._live[event.connection_id] = event
            buffer.opens.append(event)
            self.stats.connections += 1
            if self.auditor is not None:
                buffer.findings.extend(self.auditor.opened(event))
            for sink in self.sinks:
                sink.on_open(event)
        elif isinstance(event, ConfigReloaded):
            buffer.reloads.append(event)
        else:
            correlators.pop(event.connection_id, None)
            self._live.pop(event.connection_id, None)
            buffer.closes.append(event)
            if self.auditor is not None:
                buffer.findings.extend(self.auditor.closed(event))
            for sink in self.sinks:
                sink.on_close(event)

    def _flush(self, db: duckdb.DuckDBPyConnection, buffer: batches.Batch) -> None:
        if not buffer.size:
            return
        try:
            batches.append(
                db,
                buffer,
                run_id=self.run_id,
                source=self.source,
                fields=self._fields,
                now=time.monotonic(),
            )
        except Exception as exc:  # disk full, file gone: fail loudly, count, keep relaying
            self.stats.frames_lost += len(buffer.frames)
            # frames_lost counts frames; the connection rows lost with them are said here.
            rows = len(buffer.opens) + len(buffer.closes)
            also = f" (and {rows} connection open/close rows)" if rows else ""
            message = (
                f"recording to {self.path} failed, {len(buffer.frames)} frames lost{also}: "
                f"{first_line(exc)}"
            )
            self._failed(message)
            for sink in self.sinks:
                sink.on_error(message)
            return
        self.stats.frames_recorded += len(buffer.frames)

    def _failed(self, message: str) -> None:
        """Keep the first failed writes as they are and count the rest: a disk full for a
        day fails every flush, and the run's errors must not grow with it."""
        errors = self.stats.errors
        if len(errors) < ERRORS_KEPT:
            errors.append(message)
            return
        self._more_failures += 1
        more = (
            f"... and {self._more_failures} more failed writes like these "
            "(frames_lost counts all their frames)"
        )
        if len(errors) > ERRORS_KEPT:
            errors[-1] = more
        else:
            errors.append(more)

    def _store_fields(self, db: duckdb.DuckDBPyConnection) -> None:
        """Store the payload fields still gathered (before a file is closed or read)."""
        try:
            db.execute("BEGIN TRANSACTION")
            self._fields.flush(db)
            db.execute("COMMIT")
        except duckdb.Error as exc:
            # The frames are stored: readers compute the fields that are missing.
            with contextlib.suppress(duckdb.Error):
                db.execute("ROLLBACK")
            self.stats.errors.append(f"cannot store payload fields: {first_line(exc)}")

    def _write_stats(self, db: duckdb.DuckDBPyConnection) -> None:
        """The run's stats in this file: since the file began, with a rotation."""
        self._store_fields(db)
        stats, base = self.stats, self._file_base
        try:
            db.execute(
                "INSERT INTO run_stats VALUES (?, now(), ?, ?, ?, ?, ?, ?)",
                [
                    stats.run_id,
                    stats.connections - base.connections,
                    stats.frames_recorded - base.frames_recorded,
                    stats.frames_lost - base.frames_lost,
                    stats.backpressure_waits - base.backpressure_waits,
                    (stats.backpressure_wait_s - base.backpressure_wait_s) * 1000.0,
                    stats.max_queue_depth,
                ],
            )
        except duckdb.Error as exc:
            stats.errors.append(f"cannot write run stats: {first_line(exc)}")
