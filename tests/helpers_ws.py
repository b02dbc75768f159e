"""Raw WebSocket peers for proxy tests: a tracked upstream server and raw HTTP chargers.

Everything here is real networking on 127.0.0.1 with port 0; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Request
from websockets.utils import accept_key

Message = tuple[str, bytes]  # (opcode "text"/"binary", exact bytes)
Handler = Callable[[ServerConnection], Awaitable[None]]


def one_connection(rec: Any) -> dict[str, Any]:
    """The recording's only connection row."""
    rows = rec.connections()
    assert len(rows) == 1, rows
    return rows[0]


def wire(rows: list[dict[str, Any]], direction: str) -> list[Message]:
    """Recorded frames of one direction as (opcode, exact bytes), in order."""
    return [(r["opcode"], bytes(r["raw"])) for r in rows if r["direction"] == direction]


def as_message(data: str | bytes) -> Message:
    """What a websockets peer received, as (opcode, bytes on the wire)."""
    if isinstance(data, str):
        return "text", data.encode("utf-8")
    return "binary", bytes(data)


async def send(ws: ClientConnection | ServerConnection, message: Message) -> None:
    opcode, data = message
    if opcode == "text":
        await ws.send(data.decode("utf-8"))
    else:
        await ws.send(data)


async def receive(ws: ClientConnection | ServerConnection, count: int) -> list[Message]:
    return [as_message(await ws.recv()) for _ in range(count)]


async def drain(ws: ClientConnection | ServerConnection) -> list[Message]:
    """Every message until the connection closes (cleanly or not)."""
    out: list[Message] = []
    try:
        while True:
            out.append(as_message(await ws.recv()))
    except ConnectionClosed:
        return out


def close_rcvd(ws: ClientConnection | ServerConnection) -> Close | None:
    return ws.protocol.close_rcvd


async def wait_until(predicate: Callable[[], bool], what: str, limit: float = 5.0) -> None:
    """Poll ``predicate`` (state on the far side of a socket has no Event to await)."""
    try:
        async with asyncio.timeout(limit):
            while not predicate():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting until {what}") from None


@dataclass
class Upstream:
    """A raw websockets server standing in for the CSMS, counting its TCP connections."""

    port: int = 0
    connections: list[ServerConnection] = field(default_factory=list)
    handled: list[ServerConnection] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    open: int = 0
    pings: int = 0
    pongs: int = 0
    received: dict[int, list[Message]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


@asynccontextmanager
async def upstream(
    handler: Handler | None = None,
    *,
    process_request: Callable[..., Any] | None = None,
    **kwargs: Any,
) -> AsyncIterator[Upstream]:
    box = Upstream()

    class Tracked(ServerConnection):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            box.open += 1
            box.connections.append(self)

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            box.open -= 1

        def process_event(self, event: Any) -> None:
            if isinstance(event, Frame) and event.opcode is Opcode.PING:
                box.pings += 1
            if isinstance(event, Frame) and event.opcode is Opcode.PONG:
                box.pongs += 1
            super().process_event(event)

    async def _process_request(connection: ServerConnection, request: Request) -> Any:
        box.requests.append(request)
        if process_request is None:
            return None
        result = process_request(connection, request)
        if asyncio.iscoroutine(result):
            result = await result
        return result

    async def _handle(ws: ServerConnection) -> None:
        box.handled.append(ws)
        if handler is None:
            await ws.wait_closed()
        else:
            await handler(ws)

    kwargs.setdefault("ping_interval", None)
    async with serve(
        _handle,
        "127.0.0.1",
        0,
        process_request=_process_request,
        create_connection=Tracked,
        **kwargs,
    ) as server:
        box.port = server.sockets[0].getsockname()[1]
        yield box


class PingCountingClient(ClientConnection):
    """A charger connection that counts the Ping (and Pong) frames it receives."""

    pings = 0
    pongs = 0

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame) and event.opcode is Opcode.PING:
            self.pings += 1
        if isinstance(event, Frame) and event.opcode is Opcode.PONG:
            self.pongs += 1
        super().process_event(event)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raw_upgrade_request(
    port: int, path: str = "/ocpp/CP1", headers: Iterable[tuple[str, str]] = ()
) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        *(f"{name}: {value}" for name, value in headers),
    ]
    if not any(name.lower() == "sec-websocket-version" for name, _ in headers):
        lines.append("Sec-WebSocket-Version: 13")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_status(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1])


@dataclass
class SilentServer:
    """Accepts TCP, reads, never answers: a CSMS that hangs in the handshake."""

    port: int = 0
    open: int = 0
    accepted: int = 0


@asynccontextmanager
async def silent_server() -> AsyncIterator[SilentServer]:
    box = SilentServer()
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        box.open += 1
        box.accepted += 1
        writers.append(writer)
        try:
            while await reader.read(4096):
                pass
        finally:
            box.open -= 1
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    box.port = server.sockets[0].getsockname()[1]
    try:
        yield box
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


def headers_json(value: str) -> list[tuple[str, str]]:
    return [(name, val) for name, val in json.loads(value)]


# -- raw WebSocket frames and raw peers (framing and masking exactly as written) ------------


def ws_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    key: bytes | None = None,
    form: int | None = None,
    length: int | None = None,
) -> bytes:
    """One frame written by hand: masked with ``key`` if given; ``form`` 7, 16 or 64 is
    the length encoding (minimal by default); ``length`` a declared length other than the
    payload's (for a header alone)."""
    n = len(payload) if length is None else length
    if form is None:
        form = 7 if n < 126 else 16 if n < 1 << 16 else 64
    bit = 0x80 if key is not None else 0
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    if form == 7:
        head += bytes([bit | n])
    elif form == 16:
        head += bytes([bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + n.to_bytes(8, "big")
    if key is None:
        return head + payload
    return head + key + bytes(b ^ key[i & 3] for i, b in enumerate(payload))


@dataclass(frozen=True)
class RawFrame:
    fin: bool
    rsv: int
    opcode: int
    masked: bool
    payload: bytes  # unmasked
    wire: bytes  # exactly as read


async def read_frame(reader: asyncio.StreamReader) -> RawFrame:
    """The next frame from a raw peer's stream, parsed by hand."""
    head = await reader.readexactly(2)
    n = head[1] & 0x7F
    extra = b""
    if n == 126:
        extra = await reader.readexactly(2)
    elif n == 127:
        extra = await reader.readexactly(8)
    if extra:
        n = int.from_bytes(extra, "big")
    key = await reader.readexactly(4) if head[1] & 0x80 else b""
    body = await reader.readexactly(n)
    payload = bytes(b ^ key[i & 3] for i, b in enumerate(body)) if key else body
    return RawFrame(
        fin=bool(head[0] & 0x80),
        rsv=head[0] & 0x70,
        opcode=head[0] & 0x0F,
        masked=bool(key),
        payload=payload,
        wire=head + extra + key + body,
    )


async def raw_charger(
    port: int, path: str = "/ocpp/CP1", headers: Iterable[tuple[str, str]] = ()
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A TCP connection that did the opening handshake by hand; and the 101's head."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw_upgrade_request(port, path, headers))
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    return reader, writer, head


@dataclass
class RawCsms:
    """A CSMS that answers the opening handshake by hand, then leaves the stream to the
    test: ``peers`` gets (reader, writer, request head) for each connection."""

    port: int = 0
    peers: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]] = field(
        default_factory=asyncio.Queue
    )


@asynccontextmanager
async def raw_csms(
    extensions: str | None = None, greeting: bytes = b"", hangup: bool = False
) -> AsyncIterator[RawCsms]:
    """``extensions``: the Sec-WebSocket-Extensions answer, if any (taken as given);
    ``greeting``: frames written in the same write as the 101 answer; ``hangup``: end
    the TCP connection right after them."""
    box = RawCsms()
    writers: list[asyncio.StreamWriter] = []
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip().decode()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        lines = [
            "HTTP/1.1 101 Switching Protocols",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Accept: {accept_key(key)}",
        ]
        if extensions is not None:
            lines.append(f"Sec-WebSocket-Extensions: {extensions}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + greeting)
        if hangup:
            writer.close()
        await box.peers.put((reader, writer, head))
        await done.wait()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    box.port = server.sockets[0].getsockname()[1]
    try:
        yield box
    finally:
        done.set()
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    """What is left on a raw stream until its peer ends it (or resets it)."""
    try:
        return await reader.read()
    except ConnectionError:
        return b""
