"""Batched appends through Arrow: ~100x faster than row-at-a-time INSERT in DuckDB."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

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
            _insert(db, "frames", frames)
            if fields is None:
                derived.append(db, frames)
            else:
                fields.add(frames, now)
                if fields.due(now):
                    fields.flush(db)
        if batch.closes:
            _append_closes(db, batch.closes)
        if batch.reloads:
            db.executemany(
                "INSERT INTO config_reloads VALUES (?, ?, ?, ?, ?)",
                [[run_id, _utc(r.ts), r.ok, list(r.changes), r.error] for r in batch.reloads],
            )
        if batch.findings:
            _insert(db, "findings", _findings_table(batch.findings))
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


_OPEN_SCHEMA = pa.schema(
    [
        ("connection_id", pa.string()),
        ("run_id", pa.string()),
        ("source", pa.string()),
        ("identity", pa.string()),
        ("path", pa.string()),
        ("remote_addr", pa.string()),
        ("offered_subprotocols", pa.list_(pa.string())),
        ("subprotocol", pa.string()),
        ("ocpp_version", pa.string()),
        ("upstream_url", pa.string()),
        ("opened_at", TS),
        ("handshake_status", pa.int32()),
        ("request_headers", pa.string()),
        ("response_headers", pa.string()),
        ("replay_of", pa.string()),
        ("tls_version", pa.string()),
        ("client_cert_subject", pa.string()),
        ("client_cert_common_name", pa.string()),
        ("client_cert_serial", pa.string()),
        ("client_cert_fingerprint", pa.string()),
        ("insecure_upstream", pa.bool_()),
        ("mirror_of", pa.string()),
    ]
)
_CLOSE_SCHEMA = pa.schema(
    [
        ("connection_id", pa.string()),
        ("closed_at", TS),
        ("close_code", pa.int32()),
        ("close_reason", pa.string()),
        ("closed_by", pa.string()),
    ]
)


def _append_opens(
    db: duckdb.DuckDBPyConnection, opens: list[ConnectionOpened], run_id: str, source: str
) -> None:
    # Through Arrow, like the frames: a reconnect storm opens thousands at once, and
    # executemany cost ~460 us a row (measured: 10,000 opens, 4.6 s of the recorder's
    # CPU, on the cores the relay and the CSMS were handshaking on).
    rows = [
        (
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
        )
        for e in opens
    ]
    _insert(db, "connection_opens", _rows_table(_OPEN_SCHEMA, rows))


def _append_closes(db: duckdb.DuckDBPyConnection, closes: list[ConnectionClosed]) -> None:
    rows = [(e.connection_id, _utc(e.ts), e.code, e.reason, str(e.closed_by)) for e in closes]
    _insert(db, "connection_closes", _rows_table(_CLOSE_SCHEMA, rows))


def _rows_table(schema: pa.Schema, rows: Sequence[tuple[Any, ...]]) -> pa.Table:
    columns = zip(*rows, strict=True)
    return pa.table(dict(zip(schema.names, columns, strict=True)), schema=schema)


def _insert(db: duckdb.DuckDBPyConnection, table: str, rows: pa.Table) -> None:
    """Append an Arrow table's rows to ``table``, matching columns by name."""
    db.register("_ocproxy_batch", rows)
    try:
        db.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _ocproxy_batch")
    finally:
        db.unregister("_ocproxy_batch")


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)
