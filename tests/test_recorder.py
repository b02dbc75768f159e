"""The recorder on a real DuckDB file: migrations, batching, backpressure, durability."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from ocproxy.core.events import ClosedBy, ConnectionClosed, ConnectionOpened, FrameReceived
from ocproxy.core.frames import Direction, Opcode
from ocproxy.errors import RecorderError
from ocproxy.recorder import Recorder
from ocproxy.recorder.migrations import MIGRATIONS, migrate

T0 = 1_780_000_000.0


def _opened(connection_id: str = "c1") -> ConnectionOpened:
    return ConnectionOpened(
        connection_id=connection_id,
        ts=T0,
        identity="CP 1",
        path="/ocpp/CP%201",
        remote_addr="127.0.0.1:50000",
        offered_subprotocols=("ocpp2.0.1", "ocpp1.6"),
        subprotocol="ocpp1.6",
        upstream_url="ws://csms/ocpp/CP%201",
        handshake_status=101,
    )


def _frame(seq: int, data: bytes, direction: Direction = Direction.TO_CSMS) -> FrameReceived:
    return FrameReceived("c1", seq, T0 + seq / 1000, direction, Opcode.TEXT, data, len(data))


def test_migrations_are_idempotent_and_named(tmp_path: Path) -> None:
    with duckdb.connect(str(tmp_path / "m.duckdb")) as db:
        assert migrate(db) == [name for name, _ in MIGRATIONS]
        assert migrate(db) == []
        names = [r[0] for r in db.execute("SELECT name FROM _ocproxy_migrations").fetchall()]
    assert names == [name for name, _ in MIGRATIONS]


def test_events_become_rows(db_path: Path) -> None:
    with Recorder(db_path) as recorder:
        recorder.submit(_opened())
        recorder.submit(_frame(0, b'[2,"a","Heartbeat",{}]'))
        recorder.submit(
            _frame(1, b'[3,"a",{"currentTime":"2026-01-01T00:00:00Z"}]', Direction.TO_CHARGER)
        )
        recorder.submit(ConnectionClosed("c1", T0 + 5, 1000, "bye", ClosedBy.CHARGER))
    with duckdb.connect(str(db_path), read_only=True) as db:
        connection = db.execute(
            "SELECT identity, offered_subprotocols, ocpp_version, close_code, closed_by, "
            "epoch(closed_at - opened_at) FROM connections"
        ).fetchall()
        frames = db.execute(
            "SELECT seq, direction, raw, action, request_seq, latency_ms, pairing "
            "FROM frames ORDER BY seq"
        ).fetchall()
        stats = db.execute("SELECT frames_recorded, frames_lost FROM run_stats").fetchall()
    assert connection == [("CP 1", ["ocpp2.0.1", "ocpp1.6"], "1.6", 1000, "charger", 5.0)]
    assert frames == [
        (0, "to_csms", b'[2,"a","Heartbeat",{}]', "Heartbeat", None, None, None),
        (
            1,
            "to_charger",
            b'[3,"a",{"currentTime":"2026-01-01T00:00:00Z"}]',
            "Heartbeat",
            0,
            1.0,
            "matched",
        ),
    ]
    assert stats == [(2, 0)]


def test_odd_but_valid_json_payloads_are_all_stored(db_path: Path) -> None:
    # Python's json accepts all of these; DuckDB's JSON type refuses a lone surrogate
    # escape. One such frame must not fail the batch it is in.
    frames = [
        b'[2,"a","DataTransfer",{"vendorId":"\\ud800"}]',
        b'[2,"b","DataTransfer",{"vendorId":"x","data":1e999}]',
        b'[2,"c","DataTransfer",{"vendorId":"x","data":123456789012345678901234567890}]',
        b'[2,"d","DataTransfer",{"vendorId":"x","k":1,"k":2}]',
        b' [ 2 , "e" , "DataTransfer" , { "vendorId" : "\xc3\xa9" } ] \n',
    ]
    with Recorder(db_path) as recorder:
        recorder.submit(_opened())
        for seq, data in enumerate(frames):
            recorder.submit(_frame(seq, data))
    assert recorder.stats.frames_lost == 0, recorder.stats.errors
    with duckdb.connect(str(db_path), read_only=True) as db:
        rows = db.execute("SELECT raw, payload FROM frames ORDER BY seq").fetchall()
    assert [raw for raw, _ in rows] == frames
    assert rows[0][1] is None  # in raw only
    assert rows[1][1] == '{"vendorId":"x","data":1e999}'
    assert rows[4][1] == '{ "vendorId" : "\u00e9" }'


def test_batches_by_size_and_keeps_every_frame(db_path: Path) -> None:
    count = 25_000
    with Recorder(db_path, batch_rows=1000) as recorder:
        recorder.submit(_opened())
        for seq in range(count):
            recorder.submit(_frame(seq, b'[2,"%d","Heartbeat",{}]' % seq))
    with duckdb.connect(str(db_path), read_only=True) as db:
        row = db.execute("SELECT count(*), min(seq), max(seq), count(DISTINCT seq) FROM frames")
        assert row.fetchone() == (count, 0, count - 1, count)


def test_flushes_by_age_while_running(db_path: Path) -> None:
    """A quiet proxy still commits within the flush interval: read it from another process."""
    recorder = Recorder(db_path, flush_interval=0.05).start()
    try:
        recorder.submit(_opened())
        recorder.submit(_frame(0, b'[2,"1","Heartbeat",{}]'))
        # DuckDB lets no other process open the file while it is written, so look for
        # the commit in the write-ahead log the flush produced.
        wal = Path(str(db_path) + ".wal")
        deadline = 200
        while deadline and not (wal.exists() and wal.stat().st_size > 0):
            deadline -= 1
            time.sleep(0.01)  # polling for a file, not timing anything
        assert wal.exists()
        assert wal.stat().st_size > 0
    finally:
        recorder.close()


def test_other_programs_file_is_refused_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "notes.duckdb"
    path.write_bytes(b"SQLite format 3\x00" + b"\x00" * 4096)
    with pytest.raises(RecorderError, match="cannot open recording"):
        Recorder(path).start()
    assert path.read_bytes().startswith(b"SQLite format 3")


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RecorderError, match="does not exist"):
        Recorder(tmp_path / "nope" / "x.duckdb").start()


async def test_backpressure_waits_are_counted(db_path: Path) -> None:
    recorder = Recorder(db_path, queue_limit=10).start()
    try:
        recorder.submit(_opened())
        # Far more than the writer can process while they are submitted.
        for seq in range(20_000):
            recorder.submit(_frame(seq, b'[2,"%d","Heartbeat",{}]' % seq))
        assert recorder.congested
        async with asyncio.timeout(30):
            await recorder.wait_for_room()
        assert not recorder.congested
        assert recorder.stats.backpressure_waits == 1
        assert recorder.stats.max_queue_depth > recorder.queue_limit
    finally:
        stats = recorder.close()
    assert stats.frames_recorded == 20_000


def test_kill_9_loses_no_committed_row(tmp_path: Path) -> None:
    """A writer killed with SIGKILL: every row it had flushed is there on the next open."""
    db = tmp_path / "killed.duckdb"
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_recorder import _opened, _frame
        from ocproxy.recorder import Recorder
        recorder = Recorder({str(db)!r}, flush_interval=0.01).start()
        recorder.submit(_opened())
        for seq in range(1000):
            recorder.submit(_frame(seq, b'[2,"%d","Heartbeat",{{}}]' % seq))
        while recorder.depth:
            time.sleep(0.01)
        time.sleep(0.2)  # past the flush interval: the batch is committed
        print("flushed", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "flushed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM frames").fetchone() == (1000,)


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE (POSIX)")
def test_full_disk_is_reported_with_its_own_reason(tmp_path: Path) -> None:
    """A write that fails at COMMIT ends the transaction itself: the rollback that follows
    must not replace "could not write" with "cannot rollback - no transaction is active".

    The disk is made full for real: a file size limit (RLIMIT_FSIZE) on the writer's process.
    """
    db = tmp_path / "full.duckdb"
    script = textwrap.dedent(
        f"""
        import os, resource, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_recorder import _opened, _frame
        from ocproxy.recorder import Recorder
        path = {str(db)!r}
        recorder = Recorder(path).start()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write() instead of a kill
        used = max(os.path.getsize(p) for p in (path, path + ".wal") if os.path.exists(p))
        resource.setrlimit(resource.RLIMIT_FSIZE, (used + 65536, resource.RLIM_INFINITY))
        recorder.submit(_opened())
        for seq in range(2000):
            data = os.urandom(1000).hex().encode()
            recorder.submit(_frame(seq, b'[2,"%d","DataTransfer",{{"data":"%s"}}]' % (seq, data)))
        stats = recorder.close()
        print(stats.frames_lost)
        for error in stats.errors:
            print(error)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lost, *errors = proc.stdout.splitlines()
    assert int(lost) > 0
    assert errors, proc.stdout
    assert all("no transaction is active" not in error for error in errors), errors
    assert "File too large" in errors[0], errors
    assert "frames lost" in errors[0]
    # The connection's open row went down with the first batch, and is said so.
    assert "frames lost (and 1 connection open/close rows)" in errors[0], errors


def test_failed_writes_are_counted_without_growing_the_runs_errors(tmp_path: Path) -> None:
    """A disk full for a day fails every flush: the first ERRORS_KEPT failures are said
    as they are, the rest counted in one line; every lost frame is in frames_lost."""
    from ocproxy.recorder.writer import ERRORS_KEPT

    recorder = Recorder(tmp_path / "gone.duckdb").open_here()
    here = recorder._here
    assert here is not None
    recorder.process(_opened())
    here.deadline = 0.0
    recorder.flush_due()
    here.db.close()  # every write from now on fails
    batches = ERRORS_KEPT + 15
    for n in range(batches):
        recorder.process(_frame(n + 1, b'[2,"%d","Heartbeat",{}]' % n))
        here.deadline = 0.0
        recorder.flush_due()
    stats = recorder.stats
    assert stats.frames_lost == batches
    assert len(stats.errors) == ERRORS_KEPT + 1
    assert all("1 frames lost" in error for error in stats.errors[:ERRORS_KEPT])
    assert stats.errors[-1] == (
        "... and 15 more failed writes like these (frames_lost counts all their frames)"
    )
