"""One WebSocket flow as the addon sees it: which flows are OCPP, and their recorder events.

Small pure functions of mitmproxy's flow objects plus :class:`Live`, the state the
addon keeps per recorded flow, so the hooks in :mod:`ocproxy.mitm.addon` stay short.
Nothing here touches the recording itself: the hooks hand what is built here to
:meth:`ocproxy.recorder.Recorder.submit`.
"""

from __future__ import annotations

import fnmatch
import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import http, websocket

from ocproxy.core.events import ClosedBy, ConnectionClosed, ConnectionOpened, FrameReceived
from ocproxy.core.frames import Direction, Opcode
from ocproxy.core.handshake import (
    SUBPROTOCOL_VERSIONS,
    headers_for_record,
    identity_from_path,
    offered_subprotocols,
    redact_url,
)
from ocproxy.mitm import SOURCE
from ocproxy.mitm.recording import Recording
from ocproxy.proxy.server import wall_clock

DEFAULT_SUBPROTOCOLS = ",".join(SUBPROTOCOL_VERSIONS)
# Status the charger gets from mitmproxy when the CSMS cannot be reached.
BAD_GATEWAY = 502


def quantize(ts: float) -> float:
    """A float timestamp in whole microseconds, like :func:`ocproxy.proxy.server.wall_clock`."""
    return math.floor(ts * 1_000_000) / 1_000_000


# -- which flows are recorded (the ocproxy_paths and ocproxy_subprotocols options) ---------------


def path_matcher(spec: str) -> Callable[[str], bool] | None:
    """``ocproxy_paths`` as a predicate on the request path (query excluded); None: any path.

    A shell-style pattern (``/ocpp/*``, fnmatch, case-sensitive), or a regular
    expression after ``re:`` (``re:^/(ocpp|steve)/``, searched). Raises ValueError for
    a bad regular expression.
    """
    spec = spec.strip()
    if not spec:
        return None
    if spec.startswith("re:"):
        try:
            pattern = re.compile(spec[3:])
        except re.error as exc:
            raise ValueError(f"ocproxy_paths: bad regular expression {spec[3:]!r}: {exc}") from exc
        return lambda path: pattern.search(path) is not None
    return lambda path: fnmatch.fnmatchcase(path, spec)


def subprotocol_set(spec: str) -> frozenset[str]:
    """``ocproxy_subprotocols`` (comma-separated) as a lower-case set; empty: no check."""
    return frozenset(p.strip().lower() for p in spec.split(",") if p.strip())


# -- per-flow state ------------------------------------------------------------------------------


@dataclass(eq=False)
class Live:
    """A recorded WebSocket flow that has not ended yet."""

    opened: ConnectionOpened
    client_id: str
    recording: Recording | None
    seq: int = 0
    # Message id of each CALL sent by ocproxy.inject, not yet answered -> its direction.
    pending: dict[str, Direction] = field(default_factory=dict)

    def next_seq(self) -> int:
        seq = self.seq
        self.seq += 1
        return seq


# -- recorder events -----------------------------------------------------------------------------


def opened_event(
    flow: http.HTTPFlow, run_id: str | None, status: int | None = None
) -> ConnectionOpened:
    request, response = flow.request, flow.response
    peer = flow.client_conn.peername
    chosen = None
    if response is not None and response.status_code == 101:
        chosen = next(iter(header_values(response.headers, "Sec-WebSocket-Protocol")), None)
    return ConnectionOpened(
        connection_id=str(uuid.uuid4()),
        ts=quantize(request.timestamp_start),
        identity=identity_from_path(request.path),
        path=request.path,
        remote_addr=None if peer is None else f"{peer[0]}:{peer[1]}",
        offered_subprotocols=tuple(offered(flow)),
        subprotocol=chosen,
        upstream_url=_upstream_url(flow),
        handshake_status=status if status is not None else _status(flow),
        request_headers=tuple(headers_for_record(_header_items(request.headers))),
        response_headers=() if response is None else tuple(_header_items(response.headers)),
        source=SOURCE,
        run_id=run_id,
    )


def frame_event(live: Live, message: websocket.WebSocketMessage, injected: bool) -> FrameReceived:
    content = message.content
    return FrameReceived(
        live.opened.connection_id,
        live.next_seq(),
        wall_clock(),
        Direction.TO_CSMS if message.from_client else Direction.TO_CHARGER,
        Opcode.TEXT if message.is_text else Opcode.BINARY,
        content,  # bytes, as the proxy passes them: raw keeps the exact bytes
        len(content),
        identity=live.opened.identity,
        injected=injected,
    )


def closed_event(
    live: Live, code: int | None, reason: str | None, by: ClosedBy
) -> ConnectionClosed:
    # The proxy records "" for a close without a reason (and for 1006).
    return ConnectionClosed(live.opened.connection_id, wall_clock(), code, reason or "", by)


# -- reading the flow ----------------------------------------------------------------------------


def header_values(headers: Any, name: str) -> list[str]:
    wanted = name.lower().encode()
    return [
        value.decode("utf-8", "surrogateescape")
        for key, value in headers.fields
        if key.lower() == wanted
    ]


def _header_items(headers: Any) -> list[tuple[str, str]]:
    """(name, value) pairs in received order, decoded like mitmproxy (and websockets) do."""
    return [
        (key.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        for key, value in headers.fields
    ]


def offered(flow: http.HTTPFlow) -> list[str]:
    return offered_subprotocols(header_values(flow.request.headers, "Sec-WebSocket-Protocol"))


def is_upgrade(flow: http.HTTPFlow) -> bool:
    upgrade = header_values(flow.request.headers, "Upgrade")
    return any(value.strip().lower() == "websocket" for value in upgrade)


def _upstream_url(flow: http.HTTPFlow) -> str:
    """Where mitmproxy sent the handshake, as a ws:// or wss:// URL (password redacted)."""
    request = flow.request
    scheme = {"http": "ws", "https": "wss"}.get(request.scheme, request.scheme)
    host = f"[{request.host}]" if ":" in request.host else request.host
    return redact_url(f"{scheme}://{host}:{request.port}{request.path}")


def _status(flow: http.HTTPFlow) -> int:
    return flow.response.status_code if flow.response is not None else BAD_GATEWAY


def describe(flow: http.HTTPFlow) -> str:
    peer = flow.client_conn.peername
    source = "" if peer is None else f" from {peer[0]}:{peer[1]}"
    return f"{flow.request.path}{source}"
