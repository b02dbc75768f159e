"""What ``ocproxy report`` shows, gathered with a bounded amount of data.

Built from the named queries (``sessions``, ``transactions``, ``status_timeline``,
``latency``, ``errors``), whose Arrow results are registered in the same DuckDB
connection and summarised there, plus two cheap aggregates over ``frames`` (message
volume per time bucket, latency histogram per action). Whatever the recording's size,
what reaches Python is small: at most :data:`MAX_BUCKETS` time buckets, ``top``
transactions, actions and chargers, and :data:`TIMELINE_COLUMNS` status spans per
connector lane (shorter periods are folded into the longest one of their column).

The dataclasses and the formats live in :mod:`ocproxy.analytics.report_data`;
:class:`Report` and the ``fmt_*`` formats are re-exported here (``import X as X``), so
imports from this module keep working.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import duckdb

from ocproxy.analytics.queries import bind, get_query, run
from ocproxy.analytics.report_data import (
    BINS_PER_DECADE,
    BUCKET_STEPS,
    ChargerRow,
    Energy,
    ErrorCode,
    Lane,
    LatencyRow,
    Overview,
    Span,
    Timeline,
    Transaction,
    Volume,
)
from ocproxy.analytics.report_data import Report as Report
from ocproxy.analytics.report_data import fmt_count as fmt_count
from ocproxy.analytics.report_data import fmt_duration as fmt_duration
from ocproxy.analytics.report_data import fmt_kwh as fmt_kwh
from ocproxy.analytics.report_data import fmt_ms as fmt_ms
from ocproxy.analytics.report_data import fmt_stamp as fmt_stamp
from ocproxy.analytics.report_data import fmt_step as fmt_step
from ocproxy.analytics.report_data import fmt_time as fmt_time
from ocproxy.analytics.report_data import fmt_wh as fmt_wh
from ocproxy.analytics.report_findings import gather_findings
from ocproxy.analytics.sources import open_sources
from ocproxy.audit.offline import require_identities
from ocproxy.errors import ConfigError

DEFAULT_TOP = 20
MAX_BUCKETS = 120
TIMELINE_COLUMNS = 300
TYPE_NAMES = {2: "CALL", 3: "CALLRESULT", 4: "CALLERROR", 5: "CALLRESULTERROR", 6: "SEND"}
MALFORMED = "malformed"
DIRECTIONS = ("to_csms", "to_charger")
NO_ANSWER = "(no answer)"


def build_report(
    sources: list[str],
    *,
    identity: str | None = None,
    top: int = DEFAULT_TOP,
    legs: str = "charger",
) -> Report:
    """Open the sources (``ConfigError`` for what is not a recording) and gather the report."""
    started = time.perf_counter()
    with open_sources(sources) as opened:
        if identity is not None:  # a misspelt charger: exit 2, not an empty report
            require_identities(opened.db, [identity], " ".join(sources))
        report = gather(opened.db, identity=identity, top=top, notes=opened.notes, legs=legs)
        paths = tuple(str(p) for p in opened.paths)
    return replace(report, sources=paths, elapsed_s=time.perf_counter() - started)


def gather(
    db: duckdb.DuckDBPyConnection,
    *,
    identity: str | None = None,
    top: int = DEFAULT_TOP,
    notes: list[str] | None = None,
    legs: str = "charger",
) -> Report:
    """Everything the report shows, from a connection that has the recording's views.

    ``legs``: the chargers' own connections (default), the mirror legs ocproxy opened
    to a secondary CSMS, or all of them, as the named queries' ``legs`` parameter."""
    if legs not in LEGS:
        raise ConfigError(f"legs must be one of {', '.join(LEGS)}, not {legs!r}")
    said = list(notes or [])
    for name in ("sessions", "transactions", "status_timeline", "latency", "errors"):
        _register(db, name, {"identity": identity, "legs": legs}, said)
    param = {"identity": identity, "legs": legs}
    overview = _overview(db, param)
    return Report(
        sources=(),
        identity=identity,
        overview=overview,
        volume=_volume(db, param, overview),
        energy=_energy(db, top),
        timeline=_timeline(db, top),
        latency=_latency(db, param, top),
        latency_pairs=_scalar(db, "SELECT count(*) FROM q_latency"),
        errors=_errors(db, top),
        chargers=_chargers(db, top),
        notes=tuple(said),
        findings=gather_findings(
            db, _rows, identity=identity, legs=legs, top=top, bucket_width=bucket_width
        ),
    )


def _register(
    db: duckdb.DuckDBPyConnection, name: str, param: dict[str, Any], notes: list[str]
) -> None:
    """Run a named query and make its result the table ``q_NAME``."""
    query = get_query(name)
    given = {k: v for k, v in param.items() if v is not None}
    result = run(db, query.sql, bind(query, given), what=f"report query {name}")
    if result.lenient_rows:
        notes.append(
            f"{name}: {result.lenient_rows} row(s) read leniently from payloads that violate "
            f"the OCPP schemas (`ocproxy query SOURCE {name}` shows the issues column)"
        )
    db.register(f"q_{name}", result.table)


def _rows(
    db: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    try:
        cursor = db.execute(sql, params or None)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    except duckdb.Error as exc:  # a source this version cannot read: one line, not a traceback
        raise ConfigError(f"report query failed: {str(exc).strip().splitlines()[0]}") from exc


def _scalar(db: duckdb.DuckDBPyConnection, sql: str) -> int:
    (row,) = _rows(db, sql)
    return int(next(iter(row.values())) or 0)


# The connections the report is about: the charger asked for (every one when $identity
# is NULL), their own legs, a secondary CSMS's (mirror) or both ($legs, as in the queries).
_CONNECTIONS = """SELECT connection_id, source FROM connections
    WHERE ($identity IS NULL OR identity = $identity)
        AND ($legs = 'all' OR (mirror_of IS NULL) = ($legs = 'charger'))"""
# Their frames. Only filtered when something is left out: a semi-join over every frame
# of a big recording costs a second.
_MINE = f"connection_id IN (SELECT connection_id FROM ({_CONNECTIONS}))"
LEGS = ("charger", "mirror", "all")

_OVERVIEW = """
WITH f AS (
    SELECT count(*) AS frames, min(ts) AS first_at, max(ts) AS last_at,
        coalesce(sum(size), 0)::BIGINT AS bytes,
        count(*) FILTER (WHERE parse_status IS DISTINCT FROM 'ok') AS malformed
    FROM frames WHERE {mine}
), s AS (
    SELECT count(*) FILTER (WHERE handshake_status = 101) AS connections,
        count(*) FILTER (WHERE handshake_status IS DISTINCT FROM 101) AS refused,
        count(DISTINCT identity) AS chargers, min(opened_at) AS opened_at
    FROM q_sessions
), t AS (
    SELECT count(*) AS transactions, coalesce(sum(energy_wh), 0)::DOUBLE AS energy_wh
    FROM q_transactions
), e AS (
    SELECT coalesce(sum(count) FILTER (WHERE kind <> 'unanswered'), 0)::BIGINT AS callerrors,
        coalesce(sum(count) FILTER (WHERE kind = 'unanswered'), 0)::BIGINT AS unanswered
    FROM q_errors
)
SELECT coalesce(first_at, opened_at) AS first_at, coalesce(last_at, opened_at) AS last_at,
    frames, bytes, malformed, connections, refused, chargers, transactions, energy_wh,
    callerrors, unanswered
FROM f, s, t, e
"""


def _overview(db: duckdb.DuckDBPyConnection, param: dict[str, Any]) -> Overview:
    (row,) = _rows(db, _OVERVIEW.replace("{mine}", _mine(db, param)), param)
    return Overview(**row)


def bucket_width(first: datetime | None, last: datetime | None) -> float:
    """The smallest of :data:`BUCKET_STEPS` that cuts the time range in <= MAX_BUCKETS."""
    span = (last - first).total_seconds() if first and last else 0.0
    for step in BUCKET_STEPS:
        if span / step < MAX_BUCKETS:
            return float(step)
    return float(BUCKET_STEPS[-1])


def _volume(db: duckdb.DuckDBPyConnection, param: dict[str, Any], overview: Overview) -> Volume:
    width = bucket_width(overview.first_at, overview.last_at)
    rows = _rows(
        db,
        f"""SELECT floor(epoch(ts) / $width)::BIGINT AS bucket, direction,
            CASE WHEN parse_status IS DISTINCT FROM 'ok' THEN 0 ELSE message_type END AS type,
            count(*) AS n
        FROM frames WHERE {_mine(db, param)} GROUP BY ALL""",
        {**param, "width": width},
    )
    if not rows:
        return Volume(width, (), {}, {})
    first = min(r["bucket"] for r in rows)
    count = max(r["bucket"] for r in rows) - first + 1
    starts = tuple(datetime.fromtimestamp((first + i) * width, UTC) for i in range(count))
    by_type: dict[str, list[int]] = {}
    by_direction: dict[str, list[int]] = {}
    for row in rows:
        kind = TYPE_NAMES.get(row["type"], MALFORMED)
        by_type.setdefault(kind, [0] * count)[row["bucket"] - first] += row["n"]
        way = row["direction"] or "unknown"
        by_direction.setdefault(way, [0] * count)[row["bucket"] - first] += row["n"]
    order = [*TYPE_NAMES.values(), MALFORMED]
    return Volume(
        width,
        starts,
        {k: tuple(by_type[k]) for k in order if k in by_type},
        {
            k: tuple(v)
            for k, v in sorted(by_direction.items(), key=lambda kv: _direction_order(kv[0]))
        },
    )


def _direction_order(direction: str) -> int:
    return DIRECTIONS.index(direction) if direction in DIRECTIONS else len(DIRECTIONS)


def _energy(db: duckdb.DuckDBPyConnection, top: int) -> Energy:
    (totals,) = _rows(
        db,
        """SELECT count(*) AS n, count(energy_wh) AS metered, coalesce(sum(energy_wh), 0) AS wh
        FROM q_transactions""",
    )
    chosen = _rows(
        db,
        """SELECT * FROM (
            SELECT identity, transaction_id, energy_wh, started_at, stopped_at FROM q_transactions
            WHERE energy_wh IS NOT NULL ORDER BY energy_wh DESC, identity, transaction_id LIMIT $top
        ) ORDER BY started_at NULLS LAST, identity, transaction_id""",
        {"top": top},
    )
    shown = tuple(
        Transaction(
            r["identity"],
            str(r["transaction_id"]),
            r["energy_wh"],
            r["started_at"],
            r["stopped_at"],
        )
        for r in chosen
    )
    return Energy(shown, totals["n"], totals["metered"], float(totals["wh"]))


_TIMELINE = """
WITH top AS (
    SELECT identity FROM q_status_timeline GROUP BY identity
    ORDER BY sum(notifications) DESC, identity LIMIT $top
),
seen AS (
    SELECT identity, max(greatest(opened_at, closed_at, last_frame_at)) AS last_seen
    FROM q_sessions GROUP BY identity
),
periods AS (
    SELECT s.identity, s.evse_id, s.connector_id, s.status, s.error_code, s.started_at,
        coalesce(s.ended_at, greatest(s.started_at, seen.last_seen)) AS ended_at,
        s.ended_at IS NULL AS current
    FROM q_status_timeline AS s SEMI JOIN top USING (identity) LEFT JOIN seen USING (identity)
    WHERE s.started_at IS NOT NULL
),
bounds AS (SELECT epoch(min(started_at)) AS t0, epoch(max(ended_at)) AS t1 FROM periods),
placed AS (
    SELECT p.*, epoch(ended_at) - epoch(started_at) AS seconds,
        floor((epoch(started_at) - t0) / greatest(t1 - t0, 1e-9) * $columns) AS col
    FROM periods AS p, bounds
),
folded AS (
    -- Periods starting in one column become one span: the longest one's status.
    SELECT identity, evse_id, connector_id, col,
        arg_max({'status': status, 'error_code': error_code}, seconds) AS what,
        min(started_at) AS start_at, max(ended_at) AS end_at, bool_or(current) AS current,
        count(*) AS periods
    FROM placed GROUP BY ALL
)
SELECT identity, evse_id, connector_id, what.status AS status, what.error_code AS error_code,
    start_at, coalesce(lead(start_at) OVER w, end_at) AS end_at, current, periods
FROM folded
WINDOW w AS (PARTITION BY identity, evse_id, connector_id ORDER BY col)
ORDER BY identity, evse_id NULLS FIRST, connector_id NULLS FIRST, start_at
"""


def _timeline(db: duckdb.DuckDBPyConnection, top: int) -> Timeline:
    rows = _rows(db, _TIMELINE, {"top": top, "columns": TIMELINE_COLUMNS})
    lanes: dict[tuple[str, str], list[Span]] = {}
    for r in rows:
        key = (r["identity"], connector_label(r["evse_id"], r["connector_id"]))
        span = Span(
            r["status"] or "?",
            r["error_code"],
            r["start_at"],
            r["end_at"],
            r["current"],
            r["periods"],
        )
        lanes.setdefault(key, []).append(span)
    chargers = _scalar(db, "SELECT count(DISTINCT identity) FROM q_status_timeline")
    built = tuple(Lane(i, c, tuple(s)) for (i, c), s in lanes.items())
    if not rows:
        return Timeline(built, chargers)
    start = min(r["start_at"] for r in rows)
    end = max(r["end_at"] for r in rows)
    return Timeline(built, chargers, start, end)


def connector_label(evse_id: int | None, connector_id: int | None) -> str:
    """1.6 connector 0 is the charger itself; 2.x names the EVSE too."""
    if evse_id is None:
        return "charger" if connector_id == 0 else f"connector {connector_id}"
    if connector_id is None:
        return f"EVSE {evse_id}"
    return f"EVSE {evse_id}/{connector_id}"


_LATENCY_BINS = f"""
SELECT action, c.source,
    CASE direction WHEN 'to_charger' THEN 'to_csms' ELSE 'to_charger' END AS direction,
    floor(log10(greatest(latency_ms, 0.01)) * {BINS_PER_DECADE})::INTEGER AS bin,
    count(*) AS n
FROM frames JOIN ({_CONNECTIONS}) AS c USING (connection_id)
WHERE message_type IN (3, 4) AND latency_ms IS NOT NULL AND NOT coalesce(injected, false)
    AND pairing IN ('matched', 'late')
GROUP BY ALL
"""


def _mine(db: duckdb.DuckDBPyConnection, param: dict[str, Any]) -> str:
    """The WHERE clause for the frames the report is about (TRUE: all of them)."""
    if param["identity"] is None and (
        param["legs"] == "all" or (param["legs"] == "charger" and not _has_mirror_legs(db))
    ):
        return "($identity IS NULL AND $legs IS NOT NULL)"  # every frame; binds both
    return _MINE


def _has_mirror_legs(db: duckdb.DuckDBPyConnection) -> bool:
    return _scalar(db, "SELECT count(*) FROM connections WHERE mirror_of IS NOT NULL") > 0


def _latency(
    db: duckdb.DuckDBPyConnection, param: dict[str, Any], top: int
) -> tuple[LatencyRow, ...]:
    busiest = _rows(
        db,
        "SELECT * FROM q_latency ORDER BY calls DESC, action, direction LIMIT $top",
        {"top": top},
    )
    bins: dict[tuple[str, str, str], list[tuple[int, int]]] = {}
    for r in _rows(db, _LATENCY_BINS, param):
        key = (r["action"], r["direction"], r["source"])
        bins.setdefault(key, []).append((r["bin"], r["n"]))
    return tuple(
        LatencyRow(
            **r, bins=tuple(sorted(bins.get((r["action"], r["direction"], r["source"]), [])))
        )
        for r in busiest
    )


def _errors(db: duckdb.DuckDBPyConnection, top: int) -> tuple[ErrorCode, ...]:
    rows = _rows(
        db,
        """SELECT coalesce(error_code, $none) AS code, kind, sum(count)::BIGINT AS count,
            arg_max(action, count) AS top_action, count(DISTINCT action) AS actions
        FROM q_errors GROUP BY ALL ORDER BY count DESC, code, kind LIMIT $top""",
        {"none": NO_ANSWER, "top": top},
    )
    return tuple(
        ErrorCode(r["code"], r["kind"], r["count"], r["top_action"], r["actions"]) for r in rows
    )


def _chargers(db: duckdb.DuckDBPyConnection, top: int) -> tuple[ChargerRow, ...]:
    rows = _rows(
        db,
        """WITH s AS (
            SELECT identity, count(*) FILTER (WHERE handshake_status = 101) AS connections,
                sum(frames)::BIGINT AS frames
            FROM q_sessions GROUP BY identity
        ), t AS (
            SELECT identity, count(*) AS transactions, coalesce(sum(energy_wh), 0) AS energy_wh
            FROM q_transactions GROUP BY identity
        ), e AS (
            SELECT identity,
                coalesce(sum(count) FILTER (WHERE kind <> 'unanswered'), 0)::BIGINT AS errors,
                coalesce(sum(count) FILTER (WHERE kind = 'unanswered'), 0)::BIGINT AS unanswered
            FROM q_errors GROUP BY identity
        )
        SELECT identity, coalesce(connections, 0) AS connections, coalesce(frames, 0) AS frames,
            coalesce(transactions, 0) AS transactions, coalesce(energy_wh, 0) AS energy_wh,
            coalesce(errors, 0) AS errors, coalesce(unanswered, 0) AS unanswered
        FROM s FULL JOIN t USING (identity) FULL JOIN e USING (identity)
        WHERE identity IS NOT NULL
        ORDER BY frames DESC, identity LIMIT $top""",
        {"top": top},
    )
    return tuple(ChargerRow(**r) for r in rows)
