"""What one simulated peer put on, and took off, its WebSocket.

The ocpp ``ChargePoint`` is handed a :class:`RecordingConnection` instead of the raw
websockets connection, so every frame it sends or receives passes through here and the
transcript is exactly what went over the wire from that peer's point of view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from websockets.asyncio.connection import Connection
from websockets.http11 import Request
from websockets.protocol import State

Direction = Literal["to_csms", "to_charger"]
Side = Literal["charger", "csms"]

TO_CSMS: Direction = "to_csms"
TO_CHARGER: Direction = "to_charger"


@dataclass(frozen=True)
class WireMessage:
    direction: str  # "to_csms" | "to_charger"
    data: str


@dataclass
class Transcript:
    """Frames in the order this peer saw them.

    Each direction is exactly ordered (one TCP stream each way). The interleaving of
    the two directions is only identical on both peers when nothing crossed on the
    wire, i.e. when neither side sent while a frame from the other was in flight.
    """

    messages: list[WireMessage] = field(default_factory=list)

    def append(self, direction: str, data: str) -> None:
        self.messages.append(WireMessage(direction, data))

    def in_direction(self, direction: str) -> list[str]:
        return [m.data for m in self.messages if m.direction == direction]

    def __len__(self) -> int:
        return len(self.messages)


def _as_text(data: str | bytes) -> str:
    # OCPP-J is text-only; a binary frame is still recorded rather than dropped.
    return data if isinstance(data, str) else data.decode("utf-8", "replace")


class RecordingConnection:
    """The subset of a websockets connection that ocpp's ChargePoint uses, recorded."""

    def __init__(self, connection: Connection, transcript: Transcript, *, side: Side) -> None:
        self._connection = connection
        self.transcript = transcript
        self._outgoing: Direction = TO_CSMS if side == "charger" else TO_CHARGER
        self._incoming: Direction = TO_CHARGER if side == "charger" else TO_CSMS

    @property
    def subprotocol(self) -> str | None:
        return self._connection.subprotocol

    @property
    def request(self) -> Request | None:
        return self._connection.request

    async def recv(self) -> str | bytes:
        data = await self._connection.recv()
        self.transcript.append(self._incoming, _as_text(data))
        return data

    async def send(self, data: str | bytes) -> None:
        # Recorded before the await: on an open connection websockets writes an
        # unfragmented frame to the transport synchronously on entry, so this keeps
        # transcript order == wire order even when two tasks send concurrently. On a
        # connection that is not open send() raises without writing: nothing to record.
        if self._connection.state is State.OPEN:
            self.transcript.append(self._outgoing, _as_text(data))
        await self._connection.send(data)
