"""What a relay (the proxy, or the mitmproxy addon) reports to the recorder.

Plain frozen values with explicit timestamps, so the same recorder serves every
source and tests can feed it literal events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from ocproxy.core.frames import Direction, Opcode


class ClosedBy(StrEnum):
    CHARGER = "charger"
    CSMS = "csms"
    PROXY = "proxy"


@dataclass(frozen=True, slots=True)
class ConnectionOpened:
    connection_id: str
    ts: float
    identity: str
    path: str
    remote_addr: str | None
    offered_subprotocols: tuple[str, ...]
    subprotocol: str | None
    upstream_url: str | None
    # 101 when both legs are open; otherwise the status the charger got (401, 502, ...).
    handshake_status: int
    # (name, value) pairs in received order, Authorization password already removed.
    request_headers: tuple[tuple[str, str], ...] = ()
    response_headers: tuple[tuple[str, str], ...] = ()
    source: str = "proxy"
    run_id: str | None = None
    replay_of: str | None = None  # the recorded connection this one replays
    mirror_of: str | None = None  # the charger connection this secondary leg mirrors
    tls_version: str | None = None  # the charger leg's, e.g. "TLSv1.3"; None for ws://
    # The verified charger certificate (security profile 3).
    client_cert_subject: str | None = None
    client_cert_common_name: str | None = None
    client_cert_serial: str | None = None
    client_cert_fingerprint: str | None = None
    insecure_upstream: bool = False  # the CSMS's certificate was not verified (lab only)


@dataclass(slots=True)
class FrameReceived:
    """One whole WebSocket message as the proxy received it, before forwarding.

    Never changed once made, but not ``frozen``: the recorder process builds one per
    frame, and a frozen dataclass's ``__init__`` (``object.__setattr__`` per field) cost
    ~1.2 us of the recorder's ~21 us a frame."""

    connection_id: str
    seq: int
    ts: float
    direction: Direction
    opcode: Opcode | None
    # The message as received: ``str`` for text, ``bytes`` for binary; None when only
    # the size is known (a message over the size limit).
    data: str | bytes | None
    size: int
    too_large: bool = False
    identity: str = field(default="", compare=False)
    # Sent by the proxy itself (ocproxy inject), or the answer to such a CALL.
    injected: bool = False


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    connection_id: str
    ts: float
    code: int | None
    reason: str | None
    closed_by: ClosedBy


@dataclass(frozen=True, slots=True)
class ConfigReloaded:
    """The proxy re-read its configuration (SIGHUP): what changed, or why nothing did."""

    ts: float
    ok: bool
    changes: tuple[str, ...] = ()  # the settings that differ, by config key
    error: str | None = None


RecorderEvent = ConnectionOpened | FrameReceived | ConnectionClosed | ConfigReloaded
