"""The control protocol: JSON messages over one WebSocket, checked without I/O.

A client sends ``{"id": N, "op": OP, ...}`` and gets ``{"id": N, "ok": true, "result":
...}`` or ``{"id": N, "ok": false, "error": "..."}``. After ``subscribe`` the server also
pushes ``{"event": "frame" | "open" | "close", ...}`` messages. Ops:

- ``connections``: the live connections.
- ``subscribe`` (``identity``, ``action``, ``direction``: optional filters): stream frames.
- ``sql`` (``query``, ``limit``, ``params``): a read-only SELECT on the live recording;
  the result has ``columns``, ``rows``, ``truncated`` and ``file``, the file it ran on
  (with ``--rotate``, the current one only).
- ``inject`` (``identity``, ``action``, ``payload``, ``to``: ``charger`` | ``csms``,
  ``force``, ``timeout``): send a CALL of the proxy's own; the result is the answer frame.
- ``close`` (``identity`` or ``connection_id``, ``code``, ``reason``): close a connection.
- ``reload``: re-read the config, as SIGHUP does; the result is ``{"applied": bool,
  "changes": [setting, ...], "error": why it was refused or null}``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from ocproxy.audit.auditor import Finding
from ocproxy.core.events import ConnectionClosed, ConnectionOpened
from ocproxy.core.frames import Direction
from ocproxy.core.observe import ObservedFrame
from ocproxy.errors import ControlError

OPS = ("connections", "subscribe", "sql", "inject", "close", "reload")


@dataclass(frozen=True)
class Request:
    id: Any
    op: str
    params: dict[str, Any]

    def text(self, name: str, *, required: bool = True) -> str | None:
        value = self.params.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value:
            raise ControlError(f"{self.op}: {name} must be a non-empty string")
        return value


@dataclass(frozen=True)
class Filters:
    identity: str | None = None
    action: str | None = None
    direction: str | None = None

    def accepts(self, frame: ObservedFrame) -> bool:
        return (
            (self.identity is None or frame.identity == self.identity)
            and (self.action is None or frame.action == self.action)
            and (self.direction is None or frame.direction == self.direction)
        )


def request_id(text: str | bytes) -> Any:
    """The id of a request, if it can be read at all: every answer carries it back."""
    try:
        message = json.loads(text)
    except ValueError:
        return None
    return message.get("id") if isinstance(message, dict) else None


def parse_request(text: str | bytes) -> Request:
    try:
        message = json.loads(text)
    except ValueError as exc:
        raise ControlError(f"request is not JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise ControlError("request must be a JSON object")
    op = message.pop("op", None)
    if op not in OPS:
        raise ControlError(f"unknown op {op!r}; one of {', '.join(OPS)}")
    return Request(message.pop("id", None), op, message)


def parse_filters(request: Request) -> Filters:
    direction = request.text("direction", required=False)
    if direction is not None and direction not in (d.value for d in Direction):
        raise ControlError("direction must be to_csms or to_charger")
    return Filters(
        request.text("identity", required=False),
        request.text("action", required=False),
        direction,
    )


def ok(request_id: Any, result: Any) -> str:
    return json.dumps({"id": request_id, "ok": True, "result": result}, default=_json_default)


def failed(request_id: Any, error: str) -> str:
    return json.dumps({"id": request_id, "ok": False, "error": error})


def frame_event(
    frame: ObservedFrame, findings: list[Finding] | tuple[Finding, ...]
) -> dict[str, Any]:
    return {
        "event": "frame",
        "connection_id": frame.connection_id,
        "identity": frame.identity,
        "seq": frame.seq,
        "ts": frame.ts,
        "direction": frame.direction,
        "opcode": frame.opcode,
        "size": frame.size,
        "message_type": frame.message_type,
        "message_id": frame.message_id,
        "action": frame.action,
        "parse_status": frame.parse_status,
        "error_code": frame.error_code,
        "latency_ms": frame.latency_ms,
        "request_seq": frame.request_seq,
        "pairing": frame.pairing,
        "injected": frame.injected,
        "raw": None if frame.raw is None else frame.raw.decode("utf-8", "backslashreplace"),
        "payload": frame.payload,  # compact JSON as recorded (redacted); None if malformed
        "findings": [{"rule": f.rule, "severity": str(f.severity)} for f in findings],
    }


def open_event(event: ConnectionOpened) -> dict[str, Any]:
    return {
        "event": "open",
        "connection_id": event.connection_id,
        "identity": event.identity,
        "subprotocol": event.subprotocol,
        "handshake_status": event.handshake_status,
        "ts": event.ts,
        # "mirror" (with the charger's connection in mirror_of) for a leg to a secondary CSMS
        "source": event.source,
        "mirror_of": event.mirror_of,
    }


def close_event(event: ConnectionClosed) -> dict[str, Any]:
    return {
        "event": "close",
        "connection_id": event.connection_id,
        "code": event.code,
        "reason": event.reason,
        "closed_by": str(event.closed_by),
        "ts": event.ts,
    }


def _json_default(value: Any) -> Any:
    """SQL results hold timestamps, decimals, blobs: make them JSON."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(raw).decode()
    return str(value)
