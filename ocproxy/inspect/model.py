"""What the inspector shows, as immutable values both data sources build.

A :class:`FrameItem` is one frame; its :attr:`~FrameItem.key` (time in µs, connection,
seq) orders frames the way the recording does and is the keyset for paging. A CALL's
answer, when there is one, travels with it (:class:`Answer`) so that the frame list can
show each response beside its CALL.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Key = tuple[int, str, int]  # (epoch µs, connection_id, seq)
TYPE_NAMES = {2: "CALL", 3: "CALLRESULT", 4: "CALLERROR", 5: "CALLRESULTERROR", 6: "SEND"}
SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True, slots=True)
class Answer:
    seq: int
    message_type: int
    latency_ms: float | None
    error_code: str | None = None

    def text(self) -> str:
        name = TYPE_NAMES.get(self.message_type, "?")
        latency = "" if self.latency_ms is None else f" {self.latency_ms:.1f} ms"
        code = f" {self.error_code}" if self.error_code else ""
        return f"{name}{code}{latency}"


@dataclass(frozen=True, slots=True)
class FrameItem:
    connection_id: str
    seq: int
    ts_us: int
    identity: str
    direction: str
    message_type: int | None
    message_id: str | None
    action: str | None
    parse_status: str
    payload: str | None  # compact JSON as recorded (redacted)
    size: int = 0
    error_code: str | None = None
    error_description: str | None = None
    latency_ms: float | None = None
    pairing: str | None = None
    request_seq: int | None = None
    injected: bool = False
    raw: str | None = None  # the text of a frame that is not OCPP-J
    findings: tuple[tuple[str, str], ...] = ()  # (rule, severity)
    answer: Answer | None = None  # for a CALL: its response, once there is one

    @property
    def key(self) -> Key:
        return (self.ts_us, self.connection_id, self.seq)

    @property
    def ts(self) -> float:
        return self.ts_us / 1e6

    @property
    def malformed(self) -> bool:
        return self.parse_status != "ok"

    @property
    def type_name(self) -> str:
        if self.malformed:
            return "MALFORMED"
        return TYPE_NAMES.get(self.message_type or 0, "?")

    @property
    def is_call(self) -> bool:
        return not self.malformed and self.message_type == 2

    @property
    def is_response(self) -> bool:
        return not self.malformed and self.message_type in (3, 4, 5)

    def fields(self) -> dict[str, Any]:
        """The frame as :func:`ocproxy.inspect.filters.matches` reads it."""
        return {
            "identity": self.identity,
            "direction": self.direction,
            "message_type": self.message_type,
            "action": self.action,
            "message_id": self.message_id,
            "parse_status": self.parse_status,
            "payload": self.payload,
            "raw": self.raw,
            "ts": self.ts,
            "injected": self.injected,
            "findings": [{"rule": r, "severity": s} for r, s in self.findings],
        }

    def as_json(self) -> dict[str, Any]:
        """One line of a saved or copied selection (JSON lines)."""
        return {
            "ts": iso(self.ts),
            "identity": self.identity,
            "connection_id": self.connection_id,
            "seq": self.seq,
            "direction": self.direction,
            "type": self.type_name,
            "message_id": self.message_id,
            "action": self.action,
            "payload": None if self.payload is None else json.loads(self.payload),
            "raw": self.raw,
            "error_code": self.error_code,
            "latency_ms": self.latency_ms,
            "injected": self.injected,
            "findings": [{"rule": r, "severity": s} for r, s in self.findings],
        }


@dataclass(frozen=True, slots=True)
class ChargerRow:
    identity: str
    version: str | None  # "1.6", "2.0.1", "2.1" (of the latest connection)
    state: str  # "open", "closed" or "refused"
    since: float | None  # epoch s: opened (open) or closed (closed)
    frames: int
    open_calls: int  # CALLs on the latest connection without an answer yet
    findings: tuple[int, int, int] = (0, 0, 0)  # errors, warnings, infos
    last_close: str | None = None  # "1001 by proxy"
    connection_id: str | None = None  # the latest connection
    connection_ids: tuple[str, ...] = ()
    ends_at: float | None = None  # the latest connection's close (or the recording's end)


@dataclass(frozen=True, slots=True)
class Finding:
    rule: str
    severity: str
    message: str
    path: str | None = None


@dataclass(frozen=True)
class Detail:
    frame: FrameItem
    pair: FrameItem | None = None
    handshake: Mapping[str, Any] = field(default_factory=dict)
    findings: tuple[Finding, ...] = ()


def iso(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def clock(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%m-%d %H:%M:%S.%f")[:-3]


def answer_text(item: FrameItem, ends_at: float | None) -> str:
    """What the frame list says beside a frame: a CALL's answer, or how long it has gone
    unanswered; for a response, which CALL it answers."""
    if item.is_call:
        if item.answer is not None:
            return item.answer.text()
        if ends_at is None:
            return "no answer"
        return f"no answer after {max(0.0, ends_at - item.ts):.0f} s"
    if item.is_response:
        if item.request_seq is None:
            return f"[{item.pairing or 'unpaired'}]"
        latency = "" if item.latency_ms is None else f" {item.latency_ms:.1f} ms"
        return f"↩ seq {item.request_seq}{latency}"
    return ""


def pretty(text: str | None) -> str:
    """A payload pretty-printed (2 spaces); as given when it is not JSON."""
    if text is None:
        return "(no payload)"
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text
