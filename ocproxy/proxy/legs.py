"""websockets connections that hand over each message's bytes *and* its opcode.

``recv()`` either decodes text (and raises on invalid UTF-8, losing the message) or,
with ``decode=False``, returns bytes without saying whether the frame was text or
binary. A transparent relay needs both, so the assembler notes the opcode of every
message as its first frame arrives, and :meth:`recv_message` pairs them up again.

The proxy's own legs (:class:`RelayedChargerLeg`, :class:`RelayedCsmsLeg`) use
websockets for the opening handshake only: every byte after the HTTP head goes to the
relay unparsed (:mod:`ocproxy.proxy.relay`), which passes the peers' frames through.
The mirror's leg to a secondary CSMS (:class:`CsmsLeg`) is a websockets connection
all along.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from typing import Protocol, cast

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.connection import Connection
from websockets.asyncio.messages import Assembler
from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode

from ocproxy.core.frames import Opcode as FrameOpcode


class _OpcodeAssembler(Assembler):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.opcodes: deque[FrameOpcode] = deque()

    def put(self, frame: Frame) -> None:
        super().put(frame)
        if frame.opcode is Opcode.TEXT:
            self.opcodes.append(FrameOpcode.TEXT)
        elif frame.opcode is Opcode.BINARY:
            self.opcodes.append(FrameOpcode.BINARY)


class _RawMessages(Connection):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.recv_messages = _OpcodeAssembler(
            self.max_queue_high,
            self.max_queue_low,
            pause=self.transport.pause_reading,
            resume=self.transport.resume_reading,
        )

    async def recv_message(self) -> tuple[bytes, FrameOpcode]:
        """The next whole message as received (bytes, never decoded) and its opcode."""
        data = await self.recv(decode=False)
        assembler = self.recv_messages
        assert isinstance(assembler, _OpcodeAssembler)
        return data, assembler.opcodes.popleft()

    async def send_message(self, data: bytes, opcode: FrameOpcode) -> None:
        """Send bytes unchanged, as a text or binary message."""
        await self.send(data, text=opcode is FrameOpcode.TEXT)


class WireUser(Protocol):
    """Who reads a :class:`Wire`: the relay's side of the leg."""

    def received(self, data: bytes) -> None: ...

    def leg_lost(self) -> None: ...

    def leg_resumed(self) -> None: ...


class _Nobody:
    """The user of a wire nobody reads yet: what arrives stays with the leg (held)."""

    def received(self, data: bytes) -> None:
        return None

    def leg_lost(self) -> None:
        return None

    def leg_resumed(self) -> None:
        return None


_NOBODY = _Nobody()
_HELD_HIGH = 64 * 1024  # bytes held before a relay taps the leg: then stop reading
_HEAD_END = b"\r\n\r\n"


class Wire(asyncio.Protocol):
    """What a relayed leg's transport talks to once the handshake is done: a few slots.

    websockets' connection object (its parser, assembler, futures, headers) is let go
    after the handshake; each live leg holds only this, its transport and the relay's
    reader: memory per charger is what a fleet multiplies."""

    __slots__ = ("lost", "paused", "received", "transport", "user")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        # One reference, not three callbacks: bound methods and partials held per leg
        # cost ~0.5 KB per charger.
        self.user: WireUser = _NOBODY
        self.paused = False
        self.lost = False
        self.received = 0  # chunks received: was this leg silent since the last look?

    def data_received(self, data: bytes) -> None:
        self.received += 1
        self.user.received(data)

    def eof_received(self) -> bool:
        return False  # the peer is done: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.user.leg_lost()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.user.leg_resumed()


class _Detached:
    """Stands in for the transport in websockets' connection once the relay owns it, so
    websockets' own end-of-connection handling (close, abort) cannot reach the peer."""

    def abort(self) -> None:
        return None

    def close(self) -> None:
        return None

    def is_closing(self) -> bool:
        return True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


class _Relayed(_RawMessages):
    """websockets does the opening handshake; after it, every byte goes to the relay.

    The bytes that follow the HTTP head are never fed to websockets' parser: until the
    relay takes the leg over they are held as they came, then handed over in order. So
    a frame that arrives with the head (a CSMS that speaks at once) is not parsed by
    websockets, and the relay sees the whole stream from its first byte.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._head: bytearray | None = bytearray()  # None once the head is complete
        self._held: list[bytes] = []
        self._held_size = 0
        self._held_paused = False

    def take_over(self) -> tuple[Wire, list[bytes]]:
        """Hand the transport to a :class:`Wire`; the bytes held so far, to feed it first.

        websockets is told the connection is gone (its handler may end and its objects
        be freed) and keeps a stand-in transport, so it can no longer write or close."""
        transport = self.transport
        wire = Wire(transport)
        transport.set_protocol(wire)
        held, self._held = self._held, []
        if self._held_paused:
            self._held_paused = False
            transport.resume_reading()
        self.transport = _Detached()  # type: ignore[assignment]
        self.connection_lost(None)
        return wire, held

    def data_received(self, data: bytes) -> None:
        head = self._head
        if head is None:
            self._hold(data)
            return
        seen = len(head)
        head += data
        end = head.find(_HEAD_END, max(seen - 3, 0))
        if end < 0 or not self._switches(head):
            super().data_received(data)
            return
        cut = end + 4 - seen
        self._head = None
        super().data_received(data[:cut])
        if cut < len(data):
            self._hold(data[cut:])

    def _switches(self, head: bytearray) -> bool:
        """Does this head switch the connection to WebSocket (so frames follow it)?"""
        return True

    def _hold(self, data: bytes) -> None:
        self._held.append(data)
        self._held_size += len(data)
        if self._held_size > _HELD_HIGH and not self._held_paused:
            self._held_paused = True
            self.transport.pause_reading()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Before the relay takes the leg over (a handshake that failed): websockets' close."""
        if self._held_paused:
            self._held_paused = False
            self.transport.resume_reading()
        await super().close(code, reason)


class ChargerLeg(_RawMessages, ServerConnection):
    """The leg between a charger and the proxy (the proxy is the server)."""


class CsmsLeg(_RawMessages, ClientConnection):
    """The leg between the proxy and the CSMS (the proxy is the client)."""


Abandoned = Callable[["RelayedChargerLeg"], None]


class RelayedChargerLeg(_Relayed, ChargerLeg):
    """The proxy's charger leg: bytes go to the relay as they come.

    Every accepted TCP connection is accounted for: the server marks it ``settled`` once
    it recorded the attempt; one that ends unsettled (a request never completed, too
    long, malformed, given up) is reported to ``abandoned`` so that it is recorded too.
    """

    abandoned: Abandoned | None = None  # set by the server for each leg it creates
    request_timeout: float | None = None  # the whole HTTP request must come by then
    settled = False
    timed_out = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.request_timeout is not None:
            loop = asyncio.get_running_loop()
            self._request_timer = loop.call_later(self.request_timeout, self._request_late)

    def _request_late(self) -> None:
        if self.request is None and not self.settled:
            self.timed_out = True
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        timer = getattr(self, "_request_timer", None)
        if timer is not None:
            timer.cancel()
        super().connection_lost(exc)
        if not self.settled and self.abandoned is not None:
            self.settled = True
            self.abandoned(self)


class RelayedCsmsLeg(_Relayed, CsmsLeg):
    """The proxy's CSMS leg: bytes go to the relay as they come."""

    def _switches(self, head: bytearray) -> bool:
        # A refusal's body is websockets' to read (the charger gets it mirrored).
        return head.startswith((b"HTTP/1.1 101 ", b"HTTP/1.0 101 "))


TlsFailure = Callable[[str | None, str], None]


def tls_charger_leg(
    context: Callable[[], ssl.SSLContext], timeout: float, failed: TlsFailure
) -> type[RelayedChargerLeg]:
    """A ChargerLeg class that terminates TLS itself, so a failed handshake is seen.

    asyncio's own TLS server drops a failed handshake before any protocol hears of it
    (it only logs in debug mode). Here the plain TCP connection comes first; the leg
    upgrades it with ``loop.start_tls`` and reports a failure, with the peer address
    and OpenSSL's reason, to ``failed``.
    """

    class TlsChargerLeg(RelayedChargerLeg):
        _secured = False

        def connection_lost(self, exc: Exception | None) -> None:
            # Before TLS is up, websockets has nothing to tear down (the failure is
            # reported by _start_tls).
            if self._secured:
                super().connection_lost(exc)

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            # uvloop's TCP transport has Transport's methods without subclassing it.
            tcp = cast(asyncio.Transport, transport)
            # No byte may reach the WebSocket parser before the TLS layer is in place:
            # started eagerly, start_tls installs its protocol before this returns.
            # (uvloop starts reading after connection_made, whatever pause_reading said,
            # so a task started later would let the ClientHello reach this protocol.)
            tcp.pause_reading()
            loop = asyncio.get_running_loop()
            self._tls_task = asyncio.Task(self._start_tls(tcp), loop=loop, eager_start=True)

        async def _start_tls(self, transport: asyncio.Transport) -> None:
            peer = transport.get_extra_info("peername")
            remote = None if peer is None else f"{peer[0]}:{peer[1]}"
            loop = asyncio.get_running_loop()
            try:
                secure = await loop.start_tls(
                    transport, self, context(), server_side=True, ssl_handshake_timeout=timeout
                )
            except (ssl.SSLError, OSError, TimeoutError, ConnectionError) as exc:
                transport.abort()
                failed(remote, _tls_reason(exc))
                return
            assert secure is not None
            self._secured = True
            super().connection_made(secure)

    return TlsChargerLeg


def _tls_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, TimeoutError):
        return "TLS handshake timed out"
    return f"TLS handshake failed: {type(exc).__name__}: {exc}".rstrip(": ")
