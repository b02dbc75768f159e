"""websockets connections that hand over each message's bytes *and* its opcode.

``recv()`` either decodes text (and raises on invalid UTF-8, losing the message) or,
with ``decode=False``, returns bytes without saying whether the frame was text or
binary. A transparent relay needs both, so the assembler notes the opcode of every
message as its first frame arrives, and :meth:`recv_message` pairs them up again.
"""

from __future__ import annotations

import asyncio
from collections import deque

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


class ChargerLeg(_RawMessages, ServerConnection):
    """The leg between a charger and the proxy (the proxy is the server)."""


class CsmsLeg(_RawMessages, ClientConnection):
    """The leg between the proxy and the CSMS (the proxy is the client)."""
