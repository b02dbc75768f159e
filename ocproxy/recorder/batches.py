"""Batched appends through Arrow: ~100x faster than row-at-a-time INSERT in DuckDB."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

import duckdb
import pyarrow as pa

from ocproxy.audit.auditor import Finding
from ocproxy.core.events import ConfigReloaded, ConnectionClosed, ConnectionOpened
from ocproxy.core.handshake import ocpp_version
from ocproxy.recorder import derived
from ocproxy.recorder.rows import TS, FrameRows


@dataclass
class Batch:
    opens: list[ConnectionOpened] = field(default_factory=list)
    frames: FrameRows = field(default_factory=FrameRows)
    closes: list[ConnectionClosed] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    reloads: list[ConfigReloaded] = field(default_factory=list)

    @property
    def size(self) -> int:
        return (
            len(self.opens)
            + len(self.frames)
            + len(self.closes)
            + len(self.findings)
            + len(self.reloads)
        )


def append(
    db: duckdb.DuckDBPyConnection,
    batch: Batch,
    *,
    run_id: str,
    source: str,
    fields: derived.Pending | None = None,
    now: float = 0.0,
) -> None:
    """Append one batch in one transaction: opens, then frames, then closes.

    ``fields``: gather the frames' payload fields there and store them when it is due
    (``now``: monotonic seconds), instead of with each batch."""
    db.execute("BEGIN TRANSACTION")
    try:
        if batch.opens:
            _append_opens(db, batch.opens, run_id, source)
        if batch.frames:
            frames = batch.frames.table()
            db.register("_ocproxy_frames_batch", frames)
            db.execute("INSERT INTO frames BY NAME SELECT * FROM _ocproxy_frames_batch")
            if fields is None:
                derived.append(db, frames)
            else:
                fields.add(frames, now)
                if fields.due(now):
                    fields.flush(db)
            db.unregister("_ocproxy_frames_batch")
        if batch.closes:
            _append_closes(db, batch.closes)
        if batch.reloads:
            db.executemany(
                "INSERT INTO config_reloads VALUES (?, ?, ?, ?, ?)",
                [[run_id, _utc(r.ts), r.ok, list(r.changes), r.error] for r in batch.reloads],
            )
        if batch.findings:
            db.register("_ocproxy_findings_batch", _findings_table(batch.findings))
            db.execute("INSERT INTO findings BY NAME SELECT * FROM _ocproxy_findings_batch")
            db.unregister("_ocproxy_findings_batch")
        db.execute("COMMIT")
    except BaseException:
        # A failed COMMIT (disk full) has already ended the transaction, and a closed
        # connection has none: "cannot rollback" must not replace the reason it failed.
        with contextlib.suppress(duckdb.Error):
            db.execute("ROLLBACK")
        raise


def _findings_table(findings: list[Finding]) -> pa.Table:
    return pa.table(
        {
            "connection_id": [f.connection_id for f in findings],
            "seq": pa.array([f.seq for f in findings], pa.int64()),
            "ts": pa.array([_utc(f.ts) for f in findings], TS),
            "rule": [f.rule for f in findings],
            "severity": [str(f.severity) for f in findings],
            "message": [f.message for f in findings],
            "path": pa.array([f.path for f in findings], pa.string()),
        }
    )


def _append_opens(
    db: duckdb.DuckDBPyConnection, opens: list[ConnectionOpened], run_id: str, source: str
) -> None:
    # Opens and closes are few (one per connection), so executemany is fast enough.
    db.executemany(
        f"INSERT INTO connection_opens VALUES ({', '.join('?' * 22)})",
        [
            [
                e.connection_id,
                e.run_id or run_id,
                e.source or source,
                e.identity,
                e.path,
                e.remote_addr,
                list(e.offered_subprotocols),
                e.subprotocol,
                None if ocpp_version(e.subprotocol) is None else str(ocpp_version(e.subprotocol)),
                e.upstream_url,
                _utc(e.ts),
                e.handshake_status,
                json.dumps([list(h) for h in e.request_headers]),
                json.dumps([list(h) for h in e.response_headers]),
                e.replay_of,
                e.tls_version,
                e.client_cert_subject,
                e.client_cert_common_name,
                e.client_cert_serial,
                e.client_cert_fingerprint,
                e.insecure_upstream,
                e.mirror_of,
            ]
            for e in opens
        ],
    )


def _append_closes(db: duckdb.DuckDBPyConnection, closes: list[ConnectionClosed]) -> None:
    db.executemany(
        "INSERT INTO connection_closes VALUES (?, ?, ?, ?, ?)",
        [[e.connection_id, _utc(e.ts), e.code, e.reason, str(e.closed_by)] for e in closes],
    )


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)
