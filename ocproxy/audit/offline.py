"""Audit a finished recording: replay its rows through the same parser, correlator and
auditor the live proxy uses, so both give the same findings for the same frames."""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from ocproxy.audit.auditor import Auditor, AuditSettings, Finding
from ocproxy.core.correlation import Correlator
from ocproxy.core.events import ClosedBy, ConnectionClosed, ConnectionOpened, FrameReceived
from ocproxy.core.frames import Direction, Opcode, ParseStatus
from ocproxy.core.observe import observe
from ocproxy.errors import ConfigError, no_such_file, open_failure, unknown_identity

_REQUIRED = {"m001_initial"}
_DUCKDB_MAGIC = b"DUCK"  # at offset 8 of every DuckDB database file


@dataclass(frozen=True)
class AuditScope:
    identities: tuple[str, ...] = ()
    since: datetime | None = None
    # The chargers' own connections, the legs ocproxy opened to a secondary CSMS
    # (mirror_of set), or all: as the named queries' legs parameter.
    legs: str = "charger"


@dataclass(frozen=True)
class FrameRef:
    """Enough of a frame to show it as evidence."""

    identity: str
    raw: bytes | None


def open_recording(path: str | Path) -> duckdb.DuckDBPyConnection:
    """Open an ocproxy recording read-only; a ConfigError names what is wrong with it."""
    if not Path(path).is_file():
        raise ConfigError(no_such_file(path))
    with open(path, "rb") as handle:
        header = handle.read(12)
    if header[8:12] != _DUCKDB_MAGIC:
        # Checked first: DuckDB would open a SQLite file (say) through an extension it
        # downloads on the spot.
        raise ConfigError(f"{path} is not a DuckDB database")
    try:
        db = duckdb.connect(
            str(path),
            read_only=True,
            config={"autoinstall_known_extensions": False, "autoload_known_extensions": False},
        )
    except duckdb.Error as exc:  # e.g. locked by the proxy still recording into it
        raise ConfigError(open_failure(path, exc)) from exc
    # DuckDB draws a bar on stdout for queries over 2 s, even in the audit's worker
    # processes, where it would corrupt a JSON report written to stdout.
    db.execute("SET enable_progress_bar = false")
    tables = {
        row[0] for row in db.execute("SELECT table_name FROM information_schema.tables").fetchall()
    }
    if "_ocproxy_migrations" not in tables:
        db.close()
        raise ConfigError(f"{path} is a DuckDB database but not an ocproxy recording")
    applied = {row[0] for row in db.execute("SELECT name FROM _ocproxy_migrations").fetchall()}
    if not applied >= _REQUIRED:
        db.close()
        missing = ", ".join(sorted(_REQUIRED - applied))
        raise ConfigError(f"{path} was made by an older ocproxy (lacks {missing})")
    return db


# Findings, the frames they cite by (connection, seq), and identities by connection.
AuditResult = tuple[list[Finding], dict[tuple[str, int], FrameRef], dict[str, str]]


def audit_recording(
    db: duckdb.DuckDBPyConnection,
    scope: AuditScope | None = None,
    settings: AuditSettings | None = None,
) -> AuditResult:
    """Findings for every connection in scope, the frames they cite, and identities."""
    findings, identities = audit_events(db, scope, settings)
    return findings, evidence_frames(db, findings, identities), identities


def audit_events(
    db: duckdb.DuckDBPyConnection,
    scope: AuditScope | None = None,
    settings: AuditSettings | None = None,
) -> tuple[list[Finding], dict[str, str]]:
    """Findings for every connection in scope, in :func:`finding_order`, and identities."""
    scope = scope or AuditScope()
    auditor = Auditor(settings)
    correlators: dict[str, Correlator] = {}
    findings: list[Finding] = []
    identities: dict[str, str] = {}
    for event in _events(db, scope):
        if isinstance(event, ConnectionOpened):
            identities[event.connection_id] = event.identity
            correlators[event.connection_id] = Correlator()
            findings.extend(auditor.opened(event))
        elif isinstance(event, FrameReceived):
            correlator = correlators.get(event.connection_id) or correlators.setdefault(
                event.connection_id, Correlator()
            )
            findings.extend(auditor.frame(observe(event, correlator)))
        else:
            findings.extend(auditor.closed(event))
    # The recording's own end (of the whole file, whatever the scope: the same findings
    # for any --jobs): CALLs still unanswered by then on connections left open.
    end = recording_end(db)
    if end is not None:
        findings.extend(auditor.finish(end))
    # Stable: a frame's findings keep the auditor's order.
    findings.sort(key=finding_order)
    return findings, identities


def recording_end(db: duckdb.DuckDBPyConnection) -> float | None:
    """The last time anything happened in the recording, in seconds."""
    row = db.execute(
        """
        SELECT greatest(
            (SELECT epoch_us(max(ts)) FROM frames),
            (SELECT epoch_us(max(opened_at)) FROM connection_opens),
            (SELECT epoch_us(max(closed_at)) FROM connection_closes))
        """
    ).fetchone()
    return None if row is None or row[0] is None else row[0] / 1e6


def require_identities(
    db: duckdb.DuckDBPyConnection, identities: Iterable[str], where: str | Path
) -> None:
    """ConfigError (exit 2) naming each identity no connection of ``db`` has.

    A misspelt --identity must not read as "no findings" (a green CI gate) or as an
    empty result.
    """
    wanted = list(dict.fromkeys(identities))
    if not wanted:
        return
    known = {
        row[0]
        for row in db.execute(
            "SELECT DISTINCT identity FROM connections "
            "WHERE identity IN (SELECT unnest($ids::VARCHAR[]))",
            {"ids": wanted},
        ).fetchall()
    }
    missing = [i for i in wanted if i not in known]
    if not missing:
        return
    total, some = db.execute(
        "SELECT count(DISTINCT identity), list(DISTINCT identity ORDER BY identity)[1:5] "
        "FROM connections"
    ).fetchone() or (0, [])
    message = unknown_identity(missing[0], where)
    if not total:
        raise ConfigError(f"{message}: it has no connections")
    listed = ", ".join(some or []) + (f", ... ({total} in all)" if total > len(some or []) else "")
    raise ConfigError(f"{message} (its chargers: {listed})")


def finding_order(finding: Finding) -> tuple[float, str, int]:
    """Time, connection, frame: one order whatever way the recording was read."""
    return finding.ts, finding.connection_id, -1 if finding.seq is None else finding.seq


def _events(
    db: duckdb.DuckDBPyConnection, scope: AuditScope
) -> Iterator[ConnectionOpened | FrameReceived | ConnectionClosed]:
    """Opens, frames and closes in the order the live recorder saw them."""
    where, params = scope_sql(scope, db)
    present = {row[0] for row in db.execute("DESCRIBE connections").fetchall()}
    # Recordings made before m005 have no TLS columns: read them as NULL.
    tls_columns = ", ".join(c if c in present else f"NULL AS {c}" for c in _TLS_COLUMNS)
    opens_sql = _OPENS_SQL.format(where=where, tls_columns=tls_columns)
    opens = [_opened(row) for row in _rows(db, opens_sql, params)]
    closes = [_closed(row) for row in _rows(db, _CLOSES_SQL.format(where=where), params)]
    frames = (_frame(row) for row in _rows(db, _FRAMES_SQL.format(where=where), params))
    # Sorted by (ts, kind): an open precedes its first frame, a close follows its last.
    Keyed = tuple[float, int, int, ConnectionOpened | FrameReceived | ConnectionClosed]
    keyed_opens: Iterator[Keyed] = ((e.ts, 0, i, e) for i, e in enumerate(opens))
    keyed_frames: Iterator[Keyed] = ((e.ts, 1, i, e) for i, e in enumerate(frames))
    keyed_closes: Iterator[Keyed] = ((e.ts, 2, i, e) for i, e in enumerate(closes))
    for _ts, _kind, _i, event in heapq.merge(keyed_opens, keyed_frames, keyed_closes):
        yield event


def scope_sql(scope: AuditScope, db: duckdb.DuckDBPyConnection) -> tuple[str, dict[str, Any]]:
    clauses = ["handshake_status IS NOT NULL"]
    params: dict[str, Any] = {}
    if scope.legs != "all":
        columns = {row[0] for row in db.execute("DESCRIBE connections").fetchall()}
        if "mirror_of" in columns:
            clauses.append(f"mirror_of IS {'NULL' if scope.legs == 'charger' else 'NOT NULL'}")
        elif scope.legs == "mirror":  # made before mirroring existed: no mirror legs
            clauses.append("false")
    if scope.identities:
        clauses.append("identity IN (SELECT unnest($identities::VARCHAR[]))")
        params["identities"] = list(scope.identities)
    if scope.since is not None:
        clauses.append("(closed_at IS NULL OR closed_at >= $since)")
        params["since"] = scope.since
    return " AND ".join(clauses), params


_OPENS_SQL = """
SELECT connection_id, epoch_us(opened_at) AS us, identity, path, remote_addr,
       offered_subprotocols, subprotocol, upstream_url, handshake_status,
       request_headers::VARCHAR AS request_headers, {tls_columns}
FROM connections WHERE {where} ORDER BY opened_at, connection_id
"""
_TLS_COLUMNS = ("client_cert_subject", "client_cert_common_name")
_CLOSES_SQL = """
SELECT connection_id, epoch_us(closed_at) AS us, close_code, close_reason, closed_by
FROM connections WHERE closed_at IS NOT NULL AND {where} ORDER BY closed_at, connection_id
"""
_FRAMES_SQL = """
SELECT connection_id, seq, epoch_us(ts) AS us, direction, opcode, raw, size, parse_status
FROM frames WHERE connection_id IN (SELECT connection_id FROM connections WHERE {where})
ORDER BY ts, connection_id, seq
"""


def _rows(
    db: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]
) -> Iterator[tuple[Any, ...]]:
    cursor = db.execute(sql, params)
    while batch := cursor.fetchmany(10_000):
        yield from batch


def _opened(row: tuple[Any, ...]) -> ConnectionOpened:
    headers = tuple((str(n), str(v)) for n, v in json.loads(row[9] or "[]"))
    return ConnectionOpened(
        connection_id=row[0],
        ts=row[1] / 1e6,
        identity=row[2],
        path=row[3],
        remote_addr=row[4],
        offered_subprotocols=tuple(row[5] or ()),
        subprotocol=row[6],
        upstream_url=row[7],
        handshake_status=row[8],
        request_headers=headers,
        client_cert_subject=row[10],
        client_cert_common_name=row[11],
    )


def _closed(row: tuple[Any, ...]) -> ConnectionClosed:
    by = ClosedBy(row[4]) if row[4] in {b.value for b in ClosedBy} else ClosedBy.PROXY
    return ConnectionClosed(row[0], row[1] / 1e6, row[2], row[3], by)


def _frame(row: tuple[Any, ...]) -> FrameReceived:
    connection_id, seq, us, direction, opcode, raw, size, status = row
    return FrameReceived(
        connection_id,
        seq,
        us / 1e6,
        Direction(direction),
        None if opcode is None else Opcode(opcode),
        None if raw is None else bytes(raw),
        size,
        too_large=status == ParseStatus.TOO_LARGE,
    )


def evidence_frames(
    db: duckdb.DuckDBPyConnection, findings: list[Finding], identities: dict[str, str]
) -> dict[tuple[str, int], FrameRef]:
    """The raw bytes of the first cited frame of each (identity, rule)."""
    wanted: dict[tuple[str, str], tuple[str, int]] = {}
    for f in findings:
        if f.seq is not None:
            wanted.setdefault(
                (identities.get(f.connection_id, "?"), f.rule), (f.connection_id, f.seq)
            )
    cited = sorted(set(wanted.values()))
    # One query for every cited frame: one per frame costs seconds on a big recording.
    rows = db.execute(
        "SELECT connection_id, seq, raw FROM frames WHERE (connection_id, seq) IN "
        "(SELECT (unnest($ids::VARCHAR[]), unnest($seqs::BIGINT[])))",
        {"ids": [c for c, _ in cited], "seqs": [s for _, s in cited]},
    ).fetchall()
    found = {(row[0], row[1]): row[2] for row in rows}
    return {
        (connection_id, seq): FrameRef(
            identities.get(connection_id, "?"),
            None if found.get((connection_id, seq)) is None else bytes(found[(connection_id, seq)]),
        )
        for connection_id, seq in cited
    }
