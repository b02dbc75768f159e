"""The inspector on recordings: read-only DuckDB, one page of frames at a time.

Every page is a keyset query (``(ts, connection_id, seq)`` after or before the last
one shown, ``LIMIT``), with the page's starting time also given as a plain ``ts``
bound so that DuckDB skips the row groups before it: on a 10-million-frame recording a
page costs milliseconds and never holds more than a page in memory. Queries run on a
worker thread, one at a time (a DuckDB connection is not shared between threads).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import duckdb

from ocproxy.analytics.sources import Sources, open_sources
from ocproxy.errors import READING, ConfigError, RecorderError, first_line
from ocproxy.inspect.filters import Filter, to_sql
from ocproxy.inspect.model import Answer, ChargerRow, Detail, Finding, FrameItem, Key

PAGE = 100
_SLACK_US = 1_000_000  # latency is rounded; a pair is looked for within a second of it
_LOCKED_HINT = "inspect it live instead: ocproxy inspect --control HOST:PORT"

_FRAME_COLUMNS = """
    f.connection_id, f.seq, epoch_us(f.ts) AS ts_us, c.identity, f.direction, f.message_type,
    f.message_id, f.action, f.parse_status, f.payload::VARCHAR AS payload, f.size,
    f.error_code, f.error_description, f.latency_ms, f.pairing, f.request_seq,
    coalesce(f.injected, false) AS injected,
    CASE WHEN f.parse_status <> 'ok' THEN f.raw END AS raw
"""
_CONNECTIONS_SQL = """
WITH n AS (
    SELECT connection_id, count(*) AS frames,
           count(*) FILTER (WHERE message_type = 2 AND parse_status = 'ok') AS calls,
           count(*) FILTER (WHERE message_type IN (3, 4) AND request_seq IS NOT NULL) AS answered,
           max(epoch(ts)) AS last_ts
    FROM frames GROUP BY connection_id
), g AS (
    SELECT connection_id,
           count(*) FILTER (WHERE severity = 'error') AS e,
           count(*) FILTER (WHERE severity = 'warning') AS w,
           count(*) FILTER (WHERE severity = 'info') AS i
    FROM findings GROUP BY connection_id
)
SELECT c.identity, c.connection_id, c.ocpp_version, c.subprotocol, epoch(c.opened_at) AS opened,
       epoch(c.closed_at) AS closed, c.close_code, c.closed_by, c.handshake_status,
       coalesce(n.frames, 0) AS frames, coalesce(n.calls - n.answered, 0) AS open_calls,
       n.last_ts, coalesce(g.e, 0) AS e, coalesce(g.w, 0) AS w, coalesce(g.i, 0) AS i
FROM connections c LEFT JOIN n USING (connection_id) LEFT JOIN g USING (connection_id)
WHERE c.mirror_of IS NULL
ORDER BY c.identity, c.opened_at, c.connection_id
"""


_AFTER = (
    " AND f.ts >= make_timestamptz($t) AND (epoch_us(f.ts), f.connection_id, f.seq) > ($t, $c, $s)"
)
_BEFORE = (
    " AND f.ts <= make_timestamptz($t) AND (epoch_us(f.ts), f.connection_id, f.seq) < ($t, $c, $s)"
)


class RecordingSource:
    """``await source.chargers(...)``, ``page(...)``, ``find(...)``, ``detail(...)``."""

    live = False

    def __init__(self, paths: Sequence[str]) -> None:
        self.title = ", ".join(paths)
        self._sources = _open(paths)
        self._lock = asyncio.Lock()
        self._connections: dict[str, ChargerRow] = {}
        self.end: float | None = None

    def close(self) -> None:
        self._sources.close()

    async def _run(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        async with self._lock:
            work = asyncio.ensure_future(asyncio.to_thread(self._rows, sql, params or {}))
            try:
                return await asyncio.shield(work)
            finally:
                if not work.done():  # cancelled: the thread still uses the connection
                    await asyncio.wait([work])

    def _rows(self, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            cursor = self._sources.db.execute(sql, params)
            names = [d[0] for d in cursor.description or []]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        except duckdb.Error as exc:
            raise RecorderError(f"the recording could not be read: {first_line(exc)}") from exc

    # -- chargers -------------------------------------------------------------------------

    async def chargers(self) -> list[ChargerRow]:
        rows = await self._run(_CONNECTIONS_SQL)
        self.end = max((r["closed"] or r["last_ts"] or 0.0 for r in rows), default=None)
        by_identity: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_identity.setdefault(str(row["identity"]), []).append(row)
        chargers = [_charger(identity, rows, self.end) for identity, rows in by_identity.items()]
        self._connections = {c.identity: c for c in chargers}
        return chargers

    def charger(self, identity: str) -> ChargerRow | None:
        return self._connections.get(identity)

    # -- frames ---------------------------------------------------------------------------

    async def page(
        self,
        identity: str | None,
        flt: Filter,
        *,
        after: Key | None = None,
        before: Key | None = None,
        last: bool = False,
        responses: bool = False,
        limit: int = PAGE,
    ) -> list[FrameItem]:
        """A page of frames in time order: the first, the one after or before a key, or
        the last. Answers paired with a CALL ride on it unless ``responses``."""
        where, params = self._where(identity, flt, responses)
        if after is not None:
            where += _AFTER
            params.update(t=after[0], c=after[1], s=after[2])
        if before is not None:
            where += _BEFORE
            params.update(t=before[0], c=before[1], s=before[2])
        backwards = last or before is not None
        return await self._frames(where, params, limit, backwards=backwards)

    async def around(
        self, identity: str | None, flt: Filter, key: Key, *, responses: bool = False
    ) -> list[FrameItem]:
        """The page that starts a few frames before ``key`` (to land on a search hit)."""
        before = await self.page(identity, flt, before=key, responses=responses, limit=5)
        if not before:
            return await self.page(identity, flt, responses=responses)
        page = await self.page(identity, flt, after=before[0].key, responses=responses)
        return [before[0], *page][:PAGE]

    async def find(
        self, identity: str | None, flt: Filter, text: str, start: Key | None, *,
        forward: bool = True, responses: bool = False,
    ) -> FrameItem | None:  # fmt: skip
        """The next (or previous) frame after ``start`` whose payload holds ``text``, or
        whose action or message id is ``text``."""
        where, params = self._where(identity, flt, responses)
        where += (" AND (contains(lower(f.payload::VARCHAR), lower($q)) OR f.action = $q"
                  " OR f.message_id = $q)")  # fmt: skip
        params["q"] = text
        if start is not None:
            where += _AFTER if forward else _BEFORE
            params.update(t=start[0], c=start[1], s=start[2])
        items = await self._frames(where, params, 1, backwards=not forward)
        return items[0] if items else None

    async def _frames(
        self, where: str, params: dict[str, Any], limit: int, *, backwards: bool
    ) -> list[FrameItem]:
        # Two steps: the page's keys (DuckDB's top-N reads only the few key columns of
        # every candidate), then the page's rows by key, within its time span (row groups
        # outside it are skipped). Reading every column of every candidate is 30x slower.
        order = "DESC" if backwards else "ASC"
        keys = await self._run(
            "SELECT f.connection_id, f.seq, epoch_us(f.ts) AS ts_us FROM frames f "
            f"JOIN connections c USING (connection_id) WHERE {where} "
            f"ORDER BY f.ts {order}, f.connection_id {order}, f.seq {order} LIMIT {int(limit)}",
            params,
        )
        if not keys:
            return []
        rows = await self._run(
            f"SELECT {_FRAME_COLUMNS} FROM frames f JOIN connections c USING (connection_id) "
            "WHERE f.ts BETWEEN make_timestamptz($low) AND make_timestamptz($high) "
            "AND f.connection_id = ANY($ids) AND f.seq = ANY($seqs) "
            "ORDER BY f.ts, f.connection_id, f.seq",
            {
                "low": min(k["ts_us"] for k in keys),
                "high": max(k["ts_us"] for k in keys),
                "ids": sorted({k["connection_id"] for k in keys}),
                "seqs": sorted({k["seq"] for k in keys}),
            },
        )
        wanted = {(k["connection_id"], k["seq"]) for k in keys}
        return await self._complete([r for r in rows if (r["connection_id"], r["seq"]) in wanted])

    def _where(
        self, identity: str | None, flt: Filter, responses: bool
    ) -> tuple[str, dict[str, Any]]:
        where, params = to_sql(flt)
        if identity is not None:
            charger = self._connections.get(identity)
            params["ids"] = list(charger.connection_ids if charger else ())
            where += " AND f.connection_id = ANY($ids)"
        if not responses and not flt.has("type"):
            # shown beside their CALL instead
            where += " AND NOT (f.request_seq IS NOT NULL AND f.message_type IN (3, 4, 5))"
        return where, params

    async def _complete(self, rows: list[dict[str, Any]]) -> list[FrameItem]:
        """Attach findings and, to each CALL, its answer (one query each for the page)."""
        if not rows:
            return []
        ids = sorted({r["connection_id"] for r in rows})
        low, high = min(r["seq"] for r in rows), max(r["seq"] for r in rows)
        since = min(r["ts_us"] for r in rows)
        findings = await self._run(
            "SELECT connection_id, seq, rule, severity FROM findings WHERE "
            "connection_id = ANY($ids) AND seq BETWEEN $low AND $high ORDER BY rule",
            {"ids": ids, "low": low, "high": high},
        )
        answers = await self._run(
            "SELECT connection_id, seq, request_seq, message_type, latency_ms, error_code "
            "FROM frames WHERE connection_id = ANY($ids) AND ts >= make_timestamptz($t) "
            "AND request_seq BETWEEN $low AND $high AND message_type IN (3, 4, 5)",
            {"ids": ids, "t": since, "low": low, "high": high},
        )
        found: dict[tuple[str, int], list[tuple[str, str]]] = {}
        for f in findings:
            found.setdefault((f["connection_id"], f["seq"]), []).append((f["rule"], f["severity"]))
        answered = {
            (a["connection_id"], a["request_seq"]): Answer(
                a["seq"], a["message_type"], a["latency_ms"], a["error_code"]
            )
            for a in answers
        }
        return [_item(r, found, answered) for r in rows]

    # -- one frame --------------------------------------------------------------------------

    async def frame(
        self, connection_id: str, seq: int, *, low_us: int | None = None,
        high_us: int | None = None,
    ) -> FrameItem | None:  # fmt: skip
        """One frame; a time span it lies in, when known, spares a scan of the rest."""
        where = "f.connection_id = $fc AND f.seq = $fs"
        params: dict[str, Any] = {"fc": connection_id, "fs": seq}
        if low_us is not None:
            where += " AND f.ts >= make_timestamptz($lo)"
            params["lo"] = low_us
        if high_us is not None:
            where += " AND f.ts <= make_timestamptz($hi)"
            params["hi"] = high_us
        items = await self._frames(where, params, 1, backwards=False)
        return items[0] if items else None

    async def pair_of(self, item: FrameItem) -> FrameItem | None:
        """A response's CALL, or a CALL's answer: where the latency says it is (±1 s)."""
        if item.request_seq is not None:
            if item.latency_ms is None:
                return await self.frame(item.connection_id, item.request_seq, high_us=item.ts_us)
            near = item.ts_us - round(item.latency_ms * 1000)
            return await self.frame(item.connection_id, item.request_seq,
                                    low_us=near - _SLACK_US, high_us=item.ts_us)  # fmt: skip
        if item.answer is not None:
            if item.answer.latency_ms is None:
                return await self.frame(item.connection_id, item.answer.seq, low_us=item.ts_us)
            near = item.ts_us + round(item.answer.latency_ms * 1000)
            return await self.frame(item.connection_id, item.answer.seq,
                                    low_us=item.ts_us, high_us=near + _SLACK_US)  # fmt: skip
        return None

    async def detail(self, item: FrameItem) -> Detail:
        pair = await self.pair_of(item)
        handshake = await self._run(
            "SELECT path, remote_addr, offered_subprotocols, subprotocol, upstream_url, "
            "handshake_status, epoch(opened_at) AS opened_at, epoch(closed_at) AS closed_at, "
            "close_code, close_reason, closed_by, tls_version, client_cert_subject, "
            "request_headers::VARCHAR AS request_headers, "
            "response_headers::VARCHAR AS response_headers "
            "FROM connections WHERE connection_id = $c",
            {"c": item.connection_id},
        )
        findings = await self._run(
            "SELECT rule, severity, message, path FROM findings "
            "WHERE connection_id = $c AND seq = $s ORDER BY rule",
            {"c": item.connection_id, "s": item.seq},
        )
        return Detail(
            item,
            pair,
            _handshake(handshake[0]) if handshake else {},
            tuple(
                Finding(f["rule"], f["severity"], f["message"] or "", f["path"]) for f in findings
            ),
        )


def _open(paths: Sequence[str]) -> Sources:
    try:
        return open_sources(list(paths))
    except ConfigError as exc:
        message = str(exc)
        if message.endswith(READING):  # locked by the proxy that writes it
            raise ConfigError(message.removesuffix(READING) + _LOCKED_HINT) from exc
        raise


def _charger(identity: str, rows: list[dict[str, Any]], end: float | None) -> ChargerRow:
    latest = rows[-1]
    closed = [r for r in rows if r["closed"] is not None]
    status = latest["handshake_status"]
    if status is not None and status != 101:
        state, since = "refused", latest["opened"]
    elif latest["closed"] is None:
        state, since = "open", latest["opened"]
    else:
        state, since = "closed", latest["closed"]
    last_close = None
    if closed:
        code = closed[-1]["close_code"]
        last_close = f"{'-' if code is None else code} by {closed[-1]['closed_by'] or '?'}"
    return ChargerRow(
        identity=identity,
        version=latest["ocpp_version"] or _version(latest["subprotocol"]),
        state=state,
        since=since,
        frames=sum(int(r["frames"]) for r in rows),
        open_calls=max(0, int(latest["open_calls"])),
        findings=(sum(r["e"] for r in rows), sum(r["w"] for r in rows), sum(r["i"] for r in rows)),
        last_close=last_close,
        connection_id=latest["connection_id"],
        connection_ids=tuple(r["connection_id"] for r in rows),
        ends_at=latest["closed"] or end,
    )


def _version(subprotocol: str | None) -> str | None:
    return None if subprotocol is None else subprotocol.removeprefix("ocpp")


def _item(
    row: dict[str, Any],
    findings: dict[tuple[str, int], list[tuple[str, str]]],
    answers: dict[tuple[str, int], Answer],
) -> FrameItem:
    key = (row["connection_id"], row["seq"])
    raw = row.get("raw")
    return FrameItem(
        connection_id=row["connection_id"],
        seq=int(row["seq"]),
        ts_us=int(row["ts_us"]),
        identity=str(row["identity"]),
        direction=row["direction"],
        message_type=row["message_type"],
        message_id=row["message_id"],
        action=row["action"],
        parse_status=row["parse_status"] or "ok",
        payload=row["payload"],
        size=int(row["size"] or 0),
        error_code=row["error_code"],
        error_description=row["error_description"],
        latency_ms=row["latency_ms"],
        pairing=row["pairing"],
        request_seq=row["request_seq"],
        injected=bool(row["injected"]),
        raw=None if raw is None else bytes(raw).decode("utf-8", "backslashreplace"),
        findings=tuple(findings.get(key, ())),
        answer=answers.get(key) if row["message_type"] == 2 else None,
    )


def _handshake(row: dict[str, Any]) -> dict[str, Any]:
    for name in ("request_headers", "response_headers"):
        if row.get(name):
            row[name] = json.loads(row[name])
    return row
