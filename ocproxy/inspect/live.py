"""The inspector on a running proxy: its control endpoint, in bounded memory.

A pump task folds every pushed event into per-charger state as it arrives (cheap, no
drawing); the application takes what changed a few times a second and redraws only
that. Each charger keeps its last :data:`KEEP` frames, every charger together the last
:data:`KEEP_ALL`, so following 2,000 frames/s for hours holds the same memory as for a
minute. Chargers that disconnect stay listed, as closed.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ocproxy.control.client import ControlClient, RequestRefused
from ocproxy.errors import ControlError
from ocproxy.inspect.filters import Filter, matches
from ocproxy.inspect.model import Answer, ChargerRow, Detail, Finding, FrameItem, Key

KEEP = 2_000  # frames kept per charger
KEEP_ALL = 10_000  # frames kept across chargers (the "all chargers" list)
_ANSWERS = 20_000  # CALL -> answer pairings kept
_PAGE = 100


@dataclass
class _Connection:
    connection_id: str
    identity: str
    subprotocol: str | None
    opened: float | None
    frames: int = 0
    closed: float | None = None
    close: str | None = None  # "1001 by proxy"
    refused: bool = False
    outstanding: set[int] = field(default_factory=set)  # seqs of unanswered CALLs
    findings: list[int] = field(default_factory=lambda: [0, 0, 0])


class LiveSource:
    live = True

    def __init__(self, host: str, port: int, token: str | None = None) -> None:
        self.title = f"live · {host}:{port}"
        self._client = ControlClient(host, port, token)
        self._connections: dict[str, _Connection] = {}
        self._latest: dict[str, str] = {}  # identity -> its latest connection_id
        self._frames: dict[str, deque[FrameItem]] = {}
        self._all: deque[FrameItem] = deque(maxlen=KEEP_ALL)
        self._answers: OrderedDict[tuple[str, int], Answer] = OrderedDict()
        self._changed: set[str] = set()
        self._pump: asyncio.Task[None] | None = None
        self.ended: str | None = None
        self.received = 0

    async def start(self) -> LiveSource:
        await self._client.__aenter__()
        await self._client.request("subscribe")
        for listed in await self._client.request("connections"):
            self._open(listed, listed.get("opened_at"))
            self._connections[listed["connection_id"]].frames = int(listed.get("frames") or 0)
        self._pump = asyncio.create_task(self._run_pump())
        return self

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
        await self._client.__aexit__(None, None, None)

    async def _run_pump(self) -> None:
        async for event in self._client.events():
            self.fold(event)
        self.ended = "the control endpoint closed (the proxy stopped, or this view fell behind)"

    # -- folding events (no I/O) ------------------------------------------------------------

    def fold(self, event: Mapping[str, Any]) -> None:
        kind = event.get("event")
        if kind == "frame":
            self._frame(event)
        elif kind == "open":
            self._open(event, event.get("ts"))
            if event.get("handshake_status") not in (None, 101):
                refused = self._connections[str(event["connection_id"])]
                refused.refused = True
                refused.close = f"refused (HTTP {event['handshake_status']})"
        elif kind == "close":
            closed = self._connections.get(str(event.get("connection_id")))
            if closed is not None:
                code = event.get("code")
                closed.closed = event.get("ts")
                closed.close = f"{'-' if code is None else code} by {event.get('closed_by')}"
                self._changed.add(closed.identity)

    def _open(self, values: Mapping[str, Any], ts: Any) -> None:
        connection_id = str(values["connection_id"])
        identity = str(values.get("identity") or "?")
        if connection_id not in self._connections:
            self._connections[connection_id] = _Connection(
                connection_id, identity, values.get("subprotocol"), ts
            )
        self._latest[identity] = connection_id
        self._frames.setdefault(identity, deque(maxlen=KEEP))
        self._changed.add(identity)

    def _frame(self, event: Mapping[str, Any]) -> None:
        self.received += 1
        item = item_from_event(event)
        if item.connection_id not in self._connections:  # opened before we subscribed
            self._open(event, event.get("ts"))
        connection = self._connections[item.connection_id]
        connection.frames = max(connection.frames, item.seq + 1)
        for _rule, severity in item.findings:
            index = ("error", "warning", "info").index(severity) if severity in (
                "error", "warning", "info") else 2  # fmt: skip
            connection.findings[index] += 1
        if item.is_call:
            connection.outstanding.add(item.seq)
            if len(connection.outstanding) > 1_000:  # a peer that never answers
                connection.outstanding.discard(min(connection.outstanding))
        elif item.is_response and item.request_seq is not None:
            connection.outstanding.discard(item.request_seq)
            self._answers[(item.connection_id, item.request_seq)] = Answer(
                item.seq, int(item.message_type or 0), item.latency_ms, item.error_code
            )
            if len(self._answers) > _ANSWERS:
                self._answers.popitem(last=False)
        self._frames.setdefault(item.identity, deque(maxlen=KEEP)).append(item)
        self._all.append(item)
        self._changed.add(item.identity)

    def take_changes(self) -> set[str]:
        """The identities that changed since the last call."""
        changed, self._changed = self._changed, set()
        return changed

    # -- what the application asks --------------------------------------------------------

    async def chargers(self) -> list[ChargerRow]:
        return [c for identity in sorted(self._latest) if (c := self.charger(identity))]

    def charger(self, identity: str) -> ChargerRow | None:
        latest = self._connections.get(self._latest.get(identity, ""))
        if latest is None:
            return None
        mine = [c for c in self._connections.values() if c.identity == identity]
        closed = [c for c in mine if c.close is not None]
        state = "refused" if latest.refused else ("open" if latest.close is None else "closed")
        return ChargerRow(
            identity=identity,
            version=None if latest.subprotocol is None else latest.subprotocol.removeprefix("ocpp"),
            state=state,
            since=latest.opened if state == "open" else (latest.closed or latest.opened),
            frames=sum(c.frames for c in mine),
            open_calls=len(latest.outstanding) if state == "open" else 0,
            findings=(
                sum(c.findings[0] for c in mine),
                sum(c.findings[1] for c in mine),
                sum(c.findings[2] for c in mine),
            ),
            last_close=closed[-1].close if closed else None,
            connection_id=latest.connection_id,
            connection_ids=tuple(c.connection_id for c in mine),
            ends_at=latest.closed,
        )

    def _items(self, identity: str | None, flt: Filter, responses: bool) -> list[FrameItem]:
        source = self._all if identity is None else self._frames.get(identity, ())
        hide = not responses and not flt.has("type")
        return [
            self._answered(item)
            for item in source
            if not (hide and item.is_response and item.request_seq is not None)
            and (not flt or matches(flt, item.fields()))
        ]

    def _answered(self, item: FrameItem) -> FrameItem:
        if not item.is_call:
            return item
        answer = self._answers.get((item.connection_id, item.seq))
        return item if answer is None else replace(item, answer=answer)

    async def page(
        self,
        identity: str | None,
        flt: Filter,
        *,
        after: Key | None = None,
        before: Key | None = None,
        last: bool = False,
        responses: bool = False,
        limit: int = _PAGE,
    ) -> list[FrameItem]:
        items = self._items(identity, flt, responses)
        if after is not None:
            return [i for i in items if i.key > after][:limit]
        if before is not None:
            return [i for i in items if i.key < before][-limit:]
        return items[-limit:] if last else items[:limit]

    async def around(
        self, identity: str | None, flt: Filter, key: Key, *, responses: bool = False
    ) -> list[FrameItem]:
        items = self._items(identity, flt, responses)
        index = next((n for n, i in enumerate(items) if i.key >= key), len(items))
        start = max(0, index - 1)
        return items[start : start + _PAGE]

    async def find(
        self, identity: str | None, flt: Filter, text: str, start: Key | None, *,
        forward: bool = True, responses: bool = False,
    ) -> FrameItem | None:  # fmt: skip
        wanted = text.lower()
        items = self._items(identity, flt, responses)
        ordered = items if forward else list(reversed(items))
        for item in ordered:
            if start is not None and (item.key <= start if forward else item.key >= start):
                continue
            if wanted in (item.payload or "").lower() or text in (item.action, item.message_id):
                return item
        return None

    async def frame(self, connection_id: str, seq: int) -> FrameItem | None:
        connection = self._connections.get(connection_id)
        frames = self._frames.get(connection.identity, ()) if connection else ()
        found = next((i for i in frames if i.connection_id == connection_id and i.seq == seq), None)
        return None if found is None else self._answered(found)

    async def pair_of(self, item: FrameItem) -> FrameItem | None:
        if item.request_seq is not None:
            return await self.frame(item.connection_id, item.request_seq)
        if item.answer is not None:
            return await self.frame(item.connection_id, item.answer.seq)
        return None

    async def detail(self, item: FrameItem) -> Detail:
        pair = await self.pair_of(item)
        handshake: dict[str, Any] = {}
        findings: tuple[Finding, ...] = ()
        try:
            handshake = await self._one_row(
                "SELECT path, remote_addr, offered_subprotocols, subprotocol, upstream_url, "
                "handshake_status, request_headers, response_headers, tls_version, "
                "client_cert_subject FROM connections WHERE connection_id = $c",
                {"c": item.connection_id},
            )
            if item.findings:
                rows = await self._sql(
                    "SELECT rule, severity, message, path FROM findings "
                    "WHERE connection_id = $c AND seq = $s ORDER BY rule",
                    {"c": item.connection_id, "s": item.seq},
                )
                findings = tuple(Finding(r[0], r[1], r[2] or "", r[3]) for r in rows)
        except ControlError as exc:
            handshake = {"(not available)": str(exc)}
        if not findings:
            findings = tuple(Finding(rule, severity, "") for rule, severity in item.findings)
        return Detail(item, pair, handshake, findings)

    async def _sql(self, query: str, params: dict[str, Any]) -> list[list[Any]]:
        result = await self._client.request("sql", query=query, params=params, limit=100)
        rows: list[list[Any]] = result["rows"]
        return rows

    async def _one_row(self, query: str, params: dict[str, Any]) -> dict[str, Any]:
        result = await self._client.request("sql", query=query, params=params, limit=1)
        if not result["rows"]:
            return {}
        row = dict(zip(result["columns"], result["rows"][0], strict=True))
        for name in ("request_headers", "response_headers"):
            if isinstance(row.get(name), str):
                row[name] = json.loads(row[name])
        return row

    # -- acting on a charger ----------------------------------------------------------------

    async def inject(
        self, identity: str, action: str, payload: dict[str, Any], within: float = 30.0
    ) -> Any:
        """Send a CALL to the charger; its answer frame (a list), or ControlError why not
        (refused by the proxy, or no answer ``within`` seconds)."""
        result = await self._client.request(
            "inject", identity=identity, action=action, payload=payload, timeout=within
        )
        return result["answer"]

    async def disconnect(self, identity: str, code: int, reason: str) -> None:
        try:
            await self._client.request("close", identity=identity, code=code, reason=reason)
        except RequestRefused as exc:
            raise ControlError(f"not disconnected: {exc.reason}") from exc


def item_from_event(event: Mapping[str, Any]) -> FrameItem:
    """A frame from a control ``frame`` event (``protocol.frame_event``, as JSON)."""
    status = str(event.get("parse_status") or "ok")
    payload = event.get("payload")
    return FrameItem(
        connection_id=str(event["connection_id"]),
        seq=int(event["seq"]),
        ts_us=round(float(event["ts"]) * 1e6),
        identity=str(event.get("identity") or "?"),
        direction=str(event["direction"]),
        message_type=event.get("message_type"),
        message_id=event.get("message_id"),
        action=event.get("action"),
        parse_status=status,
        payload=payload,
        size=int(event.get("size") or 0),
        error_code=event.get("error_code"),
        latency_ms=event.get("latency_ms"),
        pairing=event.get("pairing"),
        request_seq=event.get("request_seq"),
        injected=bool(event.get("injected")),
        raw=event.get("raw") if payload is None else None,
        findings=tuple(
            (str(f.get("rule")), str(f.get("severity"))) for f in event.get("findings") or ()
        ),
    )
