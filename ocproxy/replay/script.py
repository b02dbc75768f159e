"""A recorded connection as a replay script: what to send, what to expect, what to answer.

:func:`build_script` is pure: recorded frames in, a :class:`Script` out. From the
replaying side's point of view every exchange is either a :class:`Step` (we send a
CALL, SEND or byte-exact frame, and compare the answer) or an :class:`Expected`
request (the peer should send it; we answer from the recording and compare the
request). The byte-level rewrites a replay needs (fresh message ids, a CSMS-assigned
``transactionId`` carried over, timestamps shifted to the present) work on the raw
bytes so that everything else in a frame stays byte-exact.

:func:`load_script` is the only I/O here: it reads one connection from a recording.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import duckdb

from ocproxy.core.frames import Call, Direction, MessageType, Opcode, ParseStatus, Send, parse_frame
from ocproxy.errors import ConfigError, unknown_identity
from ocproxy.replay.rewrite import after_message_id as after_message_id
from ocproxy.replay.rewrite import json_frame as json_frame
from ocproxy.replay.rewrite import learn_values as learn_values
from ocproxy.replay.rewrite import map_values as map_values
from ocproxy.replay.rewrite import shift_timestamps as shift_timestamps
from ocproxy.replay.rewrite import with_message_id as with_message_id


class Role(StrEnum):
    CHARGER = "charger"
    CSMS = "csms"

    @property
    def sends(self) -> Direction:
        """The direction of the frames this side puts on the wire."""
        return Direction.TO_CSMS if self is Role.CHARGER else Direction.TO_CHARGER


class StepKind(StrEnum):
    CALL = "call"  # send, wait for the answer, compare it
    SEND = "send"  # OCPP 2.1 SEND: never answered
    RAW = "raw"  # malformed or unpaired: sent byte-exact, no answer expected


@dataclass(frozen=True, slots=True)
class RecordedFrame:
    seq: int
    ts: float
    direction: Direction
    opcode: Opcode | None
    raw: bytes | None
    message_type: int | None
    message_id: str | None
    action: str | None
    parse_status: str
    request_seq: int | None = None
    pairing: str | None = None
    # Sent by ocproxy itself (ocproxy inject), or the answer to such a CALL: not the
    # peer's, so neither replayed nor expected.
    injected: bool = False

    @property
    def ok(self) -> bool:
        return self.parse_status == ParseStatus.OK


@dataclass(frozen=True)
class SourceConnection:
    connection_id: str
    identity: str
    path: str
    offered_subprotocols: tuple[str, ...]
    subprotocol: str | None
    opened_at: float
    closed_by: str | None = None
    request_headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Step:
    index: int  # exchange number, in recorded order, from 1
    kind: StepKind
    action: str
    request: RecordedFrame
    response: RecordedFrame | None  # the recorded answer (CALL only)
    barrier: int  # how many expected requests were recorded before this frame


@dataclass(frozen=True, slots=True)
class Expected:
    index: int
    ordinal: int  # position among the expected requests
    action: str
    request: RecordedFrame
    payload: dict[str, Any]
    response: RecordedFrame | None  # our recorded answer; None: it was never answered


@dataclass(frozen=True, slots=True)
class Skipped:
    index: int
    action: str
    reason: str


@dataclass
class Script:
    source: SourceConnection
    role: Role
    start_ts: float  # recorded time that corresponds to the replay's start
    steps: list[Step] = field(default_factory=list)
    expected: list[Expected] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unsolicited: int = 0  # frames the peer sent that answered nothing

    @property
    def total(self) -> int:
        return len(self.steps) + len(self.expected) + len(self.skipped)


_RESPONSES = (MessageType.CALLRESULT, MessageType.CALLERROR)
_REQUESTS = (MessageType.CALL, MessageType.SEND)


def build_script(
    source: SourceConnection,
    frames: list[RecordedFrame],
    role: Role,
    *,
    skip_malformed: bool = False,
    start_ts: float | None = None,
) -> Script:
    """Split a connection's frames (in ``seq`` order) into steps and expected requests."""
    script = Script(source, role, source.opened_at if start_ts is None else start_ts)
    answers: dict[int, RecordedFrame] = {}
    for frame in frames:
        if frame.message_type in _RESPONSES and frame.request_seq is not None:
            answers.setdefault(frame.request_seq, frame)
    builder = _Builder(script, answers, skip_malformed)
    for frame in frames:
        if frame.injected:
            builder.injected(frame)
        elif frame.direction is role.sends:
            builder.outgoing(frame)
        else:
            builder.incoming(frame)
    return script


@dataclass
class _Builder:
    script: Script
    answers: dict[int, RecordedFrame]
    skip_malformed: bool
    index: int = 0
    requests: set[int] = field(default_factory=set)  # seqs of requests in the script

    def _next(self) -> int:
        self.index += 1
        return self.index

    def outgoing(self, frame: RecordedFrame) -> None:
        script = self.script
        if frame.ok and frame.message_type in _REQUESTS:
            self.requests.add(frame.seq)
            kind = StepKind.CALL if frame.message_type == MessageType.CALL else StepKind.SEND
            response = self.answers.get(frame.seq) if kind is StepKind.CALL else None
            step = Step(
                self._next(), kind, frame.action or "?", frame, response, len(script.expected)
            )
            if kind is StepKind.CALL and response is None:
                script.warnings.append(
                    f"exchange #{step.index} {step.action}: the recording holds no answer to "
                    "this CALL (never answered, or after --to); any answer will be reported"
                )
            script.steps.append(step)
            return
        if frame.message_type in _RESPONSES and frame.request_seq is not None:
            if frame.request_seq not in self.requests:
                self._skip(frame, "answers a CALL outside the replayed window")
            elif self.answers.get(frame.request_seq) is not frame:
                self._skip(frame, "a second answer to the same CALL")
            return  # an answer to an expected request: sent when that request arrives
        self._raw(frame)

    def _raw(self, frame: RecordedFrame) -> None:
        if frame.raw is None:
            self._skip(frame, "too large: only its size was recorded")
        elif not frame.ok and self.skip_malformed:
            self._skip(frame, f"malformed ({frame.parse_status}), --skip-malformed")
        else:
            barrier = len(self.script.expected)
            self.script.steps.append(
                Step(self._next(), StepKind.RAW, _label(frame), frame, None, barrier)
            )

    def injected(self, frame: RecordedFrame) -> None:
        if frame.message_type in _REQUESTS:
            self._skip(frame, "sent by ocproxy itself (ocproxy inject), not by the peer")
        # its answer went to ocproxy, not to the other peer: nothing to replay or expect

    def _skip(self, frame: RecordedFrame, reason: str) -> None:
        self.script.skipped.append(Skipped(self._next(), _label(frame), reason))

    def incoming(self, frame: RecordedFrame) -> None:
        script = self.script
        parsed = parse_frame(frame.raw) if frame.ok and frame.raw is not None else None
        if isinstance(parsed, Call | Send):
            self.requests.add(frame.seq)
            response = self.answers.get(frame.seq)
            if response is not None and not response.ok and self.skip_malformed:
                response = None
            expected = Expected(
                self._next(), len(script.expected), parsed.action, frame, parsed.payload, response
            )
            if isinstance(parsed, Call) and response is None:
                script.warnings.append(
                    f"exchange #{expected.index} {expected.action}: the recording holds no "
                    "answer to this CALL from the peer, so the replay will not answer it either"
                )
            script.expected.append(expected)
        elif frame.request_seq is None and frame.pairing != "matched":
            script.unsolicited += 1  # malformed, or an answer to nothing


def _label(frame: RecordedFrame) -> str:
    if not frame.ok:
        return f"(malformed: {frame.parse_status})"
    return frame.action or "(unpaired answer)"


# -- loading from a recording ----------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    connection: str | None = None
    identity: str | None = None
    since: datetime | None = None  # --from
    until: datetime | None = None  # --to


_CONNECTION_COLUMNS = """connection_id, identity, path, offered_subprotocols, subprotocol,
    epoch_us(opened_at), handshake_status, request_headers::VARCHAR, closed_by"""


def load_script(
    db: duckdb.DuckDBPyConnection, selection: Selection, role: Role, *, skip_malformed: bool
) -> Script:
    """The selected connection's frames as a script; ConfigError says what is missing."""
    source = _find_connection(db, selection)
    where, params = "connection_id = $id", dict[str, Any](id=source.connection_id)
    if selection.since is not None:
        where, params["since"] = where + " AND ts >= $since", selection.since
    if selection.until is not None:
        where, params["until"] = where + " AND ts <= $until", selection.until
    # Recordings made before m003 have no injected column: nothing was injected then.
    injected = "injected" if _has_column(db, "frames", "injected") else "false"
    cursor = db.execute(
        "SELECT seq, epoch_us(ts), direction, opcode, raw, message_type, message_id, action, "
        f"parse_status, request_seq, pairing, coalesce({injected}, false) FROM frames "
        f"WHERE {where} ORDER BY seq",
        params,
    )
    frames: list[RecordedFrame] = []
    while batch := cursor.fetchmany(10_000):
        frames.extend(_frame(row) for row in batch)
    if not frames:
        raise ConfigError(f"connection {source.connection_id} has no frames to replay")
    start = None if selection.since is None else max(source.opened_at, frames[0].ts)
    return build_script(source, frames, role, skip_malformed=skip_malformed, start_ts=start)


def _find_connection(db: duckdb.DuckDBPyConnection, selection: Selection) -> SourceConnection:
    if selection.connection is not None:
        rows = db.execute(
            f"SELECT {_CONNECTION_COLUMNS} FROM connections WHERE connection_id = ?",
            [selection.connection],
        ).fetchall()
        if not rows:
            raise ConfigError(f"no connection {selection.connection!r} in the recording")
        return _checked(rows[0])
    where = ["identity = $identity", "handshake_status = 101"]
    params: dict[str, Any] = {"identity": selection.identity}
    if _has_column(db, "connection_opens", "replay_of"):
        where.append("replay_of IS NULL")  # a replay of the same charger is not a source
    if selection.since is not None:
        where.append("(closed_at IS NULL OR closed_at >= $since)")
        params["since"] = selection.since
    if selection.until is not None:
        where.append("opened_at <= $until")
        params["until"] = selection.until
    rows = db.execute(
        f"SELECT {_CONNECTION_COLUMNS} FROM connections WHERE {' AND '.join(where)} "
        "ORDER BY opened_at",
        params,
    ).fetchall()
    if not rows:
        window = " in that time window" if selection.since or selection.until else ""
        raise ConfigError(unknown_identity(selection.identity, "the recording") + window)
    if len(rows) > 1:
        listed = ", ".join(f"{row[0]} (opened {_iso(row[5])})" for row in rows[:5])
        raise ConfigError(
            f"identity {selection.identity!r} has {len(rows)} connections there; pick one "
            f"with --connection ID or narrow --from/--to: {listed}"
        )
    return _checked(rows[0])


def _has_column(db: duckdb.DuckDBPyConnection, table: str, column: str) -> bool:
    row = db.execute(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = ? AND column_name = ?",
        [table, column],
    ).fetchone()
    return bool(row and row[0])


def _checked(row: tuple[Any, ...]) -> SourceConnection:
    connection_id, identity, path, offered, subprotocol, opened_us, status, headers, by = row
    if status != 101:
        raise ConfigError(f"connection {connection_id} was refused (HTTP {status}): no frames")
    pairs = tuple((str(n), str(v)) for n, v in json.loads(headers or "[]"))
    return SourceConnection(
        connection_id,
        identity,
        path,
        tuple(offered or ()),
        subprotocol,
        opened_us / 1e6,
        by,
        pairs,
    )


def _frame(row: tuple[Any, ...]) -> RecordedFrame:
    seq, us, direction, opcode, raw, message_type, message_id, action, status, req, pair, inj = row
    return RecordedFrame(
        seq,
        us / 1e6,
        Direction(direction),
        None if opcode is None else Opcode(opcode),
        None if raw is None else bytes(raw),
        message_type,
        message_id,
        action,
        status,
        req,
        pair,
        bool(inj),
    )


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, UTC).isoformat(timespec="seconds")
