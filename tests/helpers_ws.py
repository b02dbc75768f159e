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
    """A charger connection that counts the Ping frames it receives."""

    pings = 0

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame) and event.opcode is Opcode.PING:
            self.pings += 1
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
