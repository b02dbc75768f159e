"""What ``ocproxy tail`` shows, as immutable values built by pure functions.

A :class:`TailSnapshot` holds the connections and the last ``limit`` frame rows; the
live view folds each control-endpoint event into a new snapshot with
:func:`apply_event`, ``tail DB`` builds one from the recording's rows with
:func:`frame_row_from_record`. Rendering (``ocproxy.tail.render``) only reads them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ocproxy.core.frames import MessageType, ParseStatus

_TYPE_NAMES = {int(t): t.name for t in MessageType}
# Closed (or refused) connections kept in a live snapshot, most recent last; older ones
# are dropped so a long tail stays bounded.
KEEP_CLOSED = 20


@dataclass(frozen=True, slots=True)
class TailFilters:
    """The same filters as the control endpoint's ``subscribe`` (None: any)."""

    identity: str | None = None
    action: str | None = None
    direction: str | None = None
    # Whose connections: the chargers' own ("charger"), the proxy's legs to a secondary
    # CSMS ("mirror", proxy --mirror) or both ("all"); told apart on this side.
    legs: str = "charger"

    def accepts(self, row: FrameRow) -> bool:
        return (
            (self.identity is None or row.identity == self.identity)
            and (self.action is None or row.action == self.action)
            and (self.direction is None or row.direction == self.direction)
            and self.accepts_leg(row.mirror)
        )

    def accepts_identity(self, identity: str) -> bool:
        return self.identity is None or identity == self.identity

    def accepts_leg(self, mirror: bool) -> bool:
        return self.legs == "all" or mirror == (self.legs == "mirror")

    def accepts_connection(self, row: ConnectionRow) -> bool:
        return self.accepts_identity(row.identity) and self.accepts_leg(row.mirror)

    def params(self) -> dict[str, str]:
        """The filters that are set, as ``subscribe`` parameters."""
        values = {"identity": self.identity, "action": self.action, "direction": self.direction}
        return {name: value for name, value in values.items() if value is not None}


@dataclass(frozen=True, slots=True)
class ConnectionRow:
    connection_id: str
    identity: str
    subprotocol: str | None
    opened_at: float | None  # epoch seconds
    frames: int  # frames on the connection so far (both directions, every action)
    handshake_status: int = 101
    closed: str | None = None  # "1000 by charger" once closed; None while open
    mirror: bool = False  # the proxy's leg to a secondary CSMS (proxy --mirror)

    @property
    def refused(self) -> bool:
        return self.handshake_status != 101


@dataclass(frozen=True, slots=True)
class FrameRow:
    connection_id: str
    seq: int
    ts: float  # epoch seconds
    identity: str
    direction: str  # "to_csms" / "to_charger"
    type_name: str  # "CALL", "CALLRESULT", ... or "?" for a malformed / unknown type
    action: str | None
    message_id: str | None
    latency_ms: float | None  # responses only
    size: int
    parse_status: str
    error_code: str | None
    pairing: str | None
    injected: bool
    findings: tuple[str, ...] = ()  # rule ids, sorted, each once
    payload: str | None = None  # compact JSON as recorded (redacted); None if malformed
    raw: str | None = None  # the frame's text when it has no payload (malformed)
    mirror: bool = False  # on the proxy's leg to a secondary CSMS (proxy --mirror)

    @property
    def malformed(self) -> bool:
        return self.parse_status != ParseStatus.OK

    @property
    def is_error(self) -> bool:
        return self.type_name in ("CALLERROR", "CALLRESULTERROR")

    @property
    def is_response(self) -> bool:
        return self.type_name in ("CALLRESULT", "CALLERROR", "CALLRESULTERROR")


@dataclass(frozen=True, slots=True)
class TailSnapshot:
    """Connections and the last ``limit`` frames that pass ``filters``."""

    filters: TailFilters = field(default_factory=TailFilters)
    limit: int = 50
    connections: tuple[ConnectionRow, ...] = ()
    frames: tuple[FrameRow, ...] = ()
    total: int = 0  # frames that passed the filters, including those no longer kept
    source: str = ""  # what is tailed: "127.0.0.1:9100" or the recording's path
    live: bool = False
    ended: str | None = None  # why a live tail stopped, once it has
    payloads: bool = False  # show each frame's payload under it (tail --payload)
    # Live: the connections announced as mirror legs, so their frames are marked so.
    mirror_ids: frozenset[str] = frozenset()


def type_name(message_type: int | None) -> str:
    return _TYPE_NAMES.get(message_type, "?") if message_type is not None else "?"


def frame_row_from_event(event: Mapping[str, Any]) -> FrameRow:
    """A row from a control ``frame`` event (``protocol.frame_event``, as JSON)."""
    rules = [f["rule"] for f in event.get("findings") or () if isinstance(f, Mapping)]
    return _frame_row(event, rules)


def frame_row_from_record(record: Mapping[str, Any]) -> FrameRow:
    """A row from a recording: the ``frames`` columns plus ``identity`` (from
    ``connections``), ``ts`` in epoch seconds and ``findings``, a list of rule ids."""
    return _frame_row(record, [str(rule) for rule in record.get("findings") or ()])


def _frame_row(values: Mapping[str, Any], rules: Iterable[str]) -> FrameRow:
    latency = values.get("latency_ms")
    return FrameRow(
        connection_id=str(values["connection_id"]),
        seq=int(values["seq"]),
        ts=float(values["ts"]),
        identity=str(values.get("identity") or "?"),
        direction=str(values["direction"]),
        type_name=type_name(values.get("message_type")),
        action=values.get("action"),
        message_id=values.get("message_id"),
        latency_ms=None if latency is None else float(latency),
        size=int(values.get("size") or 0),
        parse_status=str(values.get("parse_status") or ParseStatus.OK),
        error_code=values.get("error_code"),
        pairing=values.get("pairing"),
        injected=bool(values.get("injected")),
        findings=tuple(sorted(set(rules))),
        payload=values.get("payload"),
        raw=None if values.get("payload") is not None else _text(values.get("raw")),
        mirror=bool(values.get("mirror")),
    )


def _text(raw: Any) -> str | None:
    if raw is None or isinstance(raw, str):
        return raw
    return bytes(raw).decode("utf-8", "backslashreplace")


def connection_row(values: Mapping[str, Any]) -> ConnectionRow:
    """A row from the ``connections`` op's result, an ``open`` event or a recording
    (``opened_at`` in epoch seconds; ``closed`` already formatted, if closed)."""
    opened_at = values.get("opened_at", values.get("ts"))
    status = values.get("handshake_status")
    return ConnectionRow(
        connection_id=str(values["connection_id"]),
        identity=str(values.get("identity") or "?"),
        subprotocol=values.get("subprotocol"),
        opened_at=None if opened_at is None else float(opened_at),
        frames=int(values.get("frames") or 0),
        handshake_status=101 if status is None else int(status),
        closed=values.get("closed"),
        mirror=_is_mirror(values),
    )


def _is_mirror(values: Mapping[str, Any]) -> bool:
    """A recording's ``mirror`` column, or an ``open`` event's ``source`` / ``mirror_of``."""
    return bool(values.get("mirror") or values.get("mirror_of") or values.get("source") == "mirror")


def closed_text(code: int | None, closed_by: str | None) -> str:
    """``1000 by charger``; ``- by csms`` when no close code was received."""
    return f"{'-' if code is None else code} by {closed_by or '?'}"


def new_snapshot(
    filters: TailFilters | None = None,
    limit: int = 50,
    *,
    connections: Iterable[ConnectionRow] = (),
    frames: Sequence[FrameRow] = (),
    total: int | None = None,
    source: str = "",
    live: bool = False,
    payloads: bool = False,
) -> TailSnapshot:
    filters = filters or TailFilters()
    if limit < 1:
        raise ValueError("limit must be at least 1")
    kept = tuple(frames)[-limit:]
    return TailSnapshot(
        filters=filters,
        limit=limit,
        connections=tuple(c for c in connections if filters.accepts_connection(c)),
        frames=kept,
        total=len(frames) if total is None else total,
        source=source,
        live=live,
        payloads=payloads,
    )


def apply_event(snapshot: TailSnapshot, event: Mapping[str, Any]) -> TailSnapshot:
    """The snapshot after one pushed event (``frame``, ``open`` or ``close``), or after
    ``{"event": "connections", "connections": [...]}``, a fresh ``connections`` result.

    A frame that does not pass the filters only advances its connection's frame count;
    an event of another kind leaves the snapshot as it is.
    """
    kind = event.get("event")
    if kind == "connections":
        return merge_connections(snapshot, [connection_row(c) for c in event["connections"]])
    if kind == "frame":
        return add_frame(snapshot, frame_row_from_event(event))
    if kind == "open":
        return _opened(snapshot, event)
    if kind == "close":
        text = closed_text(event.get("code"), event.get("closed_by"))
        return _closed(snapshot, str(event.get("connection_id")), text)
    return snapshot


def add_frame(snapshot: TailSnapshot, row: FrameRow) -> TailSnapshot:
    if row.connection_id in snapshot.mirror_ids:
        row = replace(row, mirror=True)
    connections = _count_frame(snapshot.connections, row, snapshot.filters)
    if not snapshot.filters.accepts(row):
        return replace(snapshot, connections=connections)
    return replace(
        snapshot,
        connections=connections,
        frames=(*snapshot.frames, row)[-snapshot.limit :],
        total=snapshot.total + 1,
    )


def merge_connections(snapshot: TailSnapshot, live: Iterable[ConnectionRow]) -> TailSnapshot:
    """Fold in a fresh ``connections`` result: new ones are added, counts only grow.

    Connections missing from it are left alone: their ``close`` event is on its way.
    """
    current = {c.connection_id: c for c in snapshot.connections}
    for row in live:
        if not snapshot.filters.accepts_connection(row):
            continue
        known = current.get(row.connection_id)
        current[row.connection_id] = (
            row if known is None else replace(known, frames=max(known.frames, row.frames))
        )
    return replace(snapshot, connections=tuple(current.values()))


def end(snapshot: TailSnapshot, why: str) -> TailSnapshot:
    return replace(snapshot, ended=why)


def _count_frame(
    connections: tuple[ConnectionRow, ...], row: FrameRow, filters: TailFilters
) -> tuple[ConnectionRow, ...]:
    for index, connection in enumerate(connections):
        if connection.connection_id == row.connection_id:
            if connection.frames > row.seq:
                return connections
            updated = replace(connection, frames=row.seq + 1)
            return (*connections[:index], updated, *connections[index + 1 :])
    if not filters.accepts_identity(row.identity) or not filters.accepts_leg(row.mirror):
        return connections
    # Opened before we subscribed and missing from the connections list we were given.
    unknown = ConnectionRow(
        row.connection_id, row.identity, None, None, row.seq + 1, mirror=row.mirror
    )
    return (*connections, unknown)


def _opened(snapshot: TailSnapshot, event: Mapping[str, Any]) -> TailSnapshot:
    row = connection_row(event)
    if row.mirror:
        snapshot = replace(snapshot, mirror_ids=snapshot.mirror_ids | {row.connection_id})
    if not snapshot.filters.accepts_connection(row):
        return snapshot
    if any(c.connection_id == row.connection_id for c in snapshot.connections):
        return snapshot  # already in the connections list we were given
    if row.refused:
        row = replace(row, closed=f"refused (HTTP {row.handshake_status})")
    return replace(snapshot, connections=_prune((*snapshot.connections, row)))


def _closed(snapshot: TailSnapshot, connection_id: str, text: str) -> TailSnapshot:
    connections = tuple(
        replace(c, closed=text) if c.connection_id == connection_id and c.closed is None else c
        for c in snapshot.connections
    )
    return replace(snapshot, connections=_prune(connections))


def _prune(connections: tuple[ConnectionRow, ...]) -> tuple[ConnectionRow, ...]:
    """Every open connection, and only the last KEEP_CLOSED closed or refused ones."""
    closed = [c for c in connections if c.closed is not None]
    if len(closed) <= KEEP_CLOSED:
        return connections
    dropped = {id(c) for c in closed[: len(closed) - KEEP_CLOSED]}
    return tuple(c for c in connections if id(c) not in dropped)
