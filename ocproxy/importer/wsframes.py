"""WebSocket messages read from one direction of a TCP stream whose start was not captured.

Pure: bytes in, messages out. A capture that begins mid-connection may begin in the
middle of a frame, and nothing marks where the next one starts. A segment is taken as
the start of a frame (TCP senders write a message at a time, so segments usually begin
one) only when every frame header in it is well formed and it begins a message: a text
or binary frame, masked if the charger sent it, not if the CSMS did, and, when that
first message is whole, uncompressed text, an OCPP-J array. From there frames are read
back to back; a malformed header or a gap in the stream (a packet the capture lost)
drops the sync until the next such segment.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field

# A frame longer than this at the sync point is taken as noise, not as a frame start.
MAX_SYNC_LENGTH = 16 << 20
TEXT, BINARY, CONTINUATION, CLOSE = 1, 2, 0, 8
_CONTROL = frozenset((8, 9, 10))
_OPCODES = frozenset((0, 1, 2, 8, 9, 10))


class _Malformed(Exception):
    """Not a WebSocket frame header."""


@dataclass(frozen=True, slots=True)
class Header:
    fin: bool
    compressed: bool  # RSV1: permessage-deflate
    opcode: int
    mask: bytes | None
    length: int
    size: int  # of the header itself


def read_header(data: bytes | bytearray, at: int) -> Header | None:
    """The frame header at ``at``; None if ``data`` ends inside it; _Malformed if it is none."""
    if len(data) - at < 2:
        return None
    first, second = data[at], data[at + 1]
    opcode = first & 0x0F
    if first & 0x30 or opcode not in _OPCODES:  # RSV2, RSV3: no extension here sets them
        raise _Malformed
    length, size = second & 0x7F, 2
    if length == 126:
        size = 4
    elif length == 127:
        size = 10
    masked = bool(second & 0x80)
    if len(data) - at < size + 4 * masked:
        return None
    if size == 4:
        length = int.from_bytes(data[at + 2 : at + 4], "big")
    elif size == 10:
        length = int.from_bytes(data[at + 2 : at + 10], "big")
        if length >> 63:
            raise _Malformed
    fin = bool(first & 0x80)
    if opcode in _CONTROL and (not fin or length > 125):
        raise _Malformed
    mask = bytes(data[at + size : at + size + 4]) if masked else None
    return Header(fin, bool(first & 0x40), opcode, mask, length, size + 4 * masked)


def unmask(payload: bytes | bytearray, mask: bytes | None) -> bytes:
    if mask is None:
        return bytes(payload)
    key = int.from_bytes((mask * (len(payload) // 4 + 1))[: len(payload)], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(len(payload), "big")


def starts_message(data: bytes, masked: bool | None) -> bool:
    """Whether ``data`` (a segment) plausibly begins with a frame that begins a message."""
    try:
        first = read_header(data, 0)
        if first is None or first.opcode not in (TEXT, BINARY) or first.length > MAX_SYNC_LENGTH:
            return False
        if masked is not None and (first.mask is not None) != masked:
            return False
        end = first.size + first.length
        readable = end <= len(data) and first.fin and first.opcode == TEXT
        if (
            readable
            and not first.compressed
            and not _ocpp_like(unmask(data[first.size : end], first.mask))
        ):
            return False
        at = end
        while at < len(data):  # the frames after it in the same segment must be frames too
            header = read_header(data, at)
            if header is None:
                return True
            if (header.mask is not None) != (first.mask is not None):
                return False
            at += header.size + header.length
    except _Malformed:
        return False
    return True


def _ocpp_like(payload: bytes) -> bool:
    try:
        value = json.loads(payload)
    except ValueError:
        return False
    return isinstance(value, list) and bool(value) and value[0] in (2, 3, 4, 5, 6)


@dataclass(frozen=True, slots=True)
class WsMessage:
    ts: float  # of the segment that completed it
    opcode: int  # TEXT, BINARY or CLOSE
    data: bytes  # unmasked and, if it was compressed, inflated
    masked: bool  # sent masked: by the client (the charger)


@dataclass
class DirectionReader:
    """One direction of a stream: feed its segments in order; whole messages come out."""

    masked: bool | None = None  # whether this side masks, once known
    synced: bool = False
    resyncs: int = 0  # times a malformed header or a gap dropped the sync
    uninflated: int = 0  # compressed messages that could not be inflated (no context)
    _buffer: bytearray = field(default_factory=bytearray)
    _parts: list[bytes] = field(default_factory=list)
    _first: tuple[int, bool] | None = None  # opcode and compression of the message begun
    _inflater: zlib._Decompress | None = None

    def gap(self) -> None:
        """Bytes of this direction were not captured: find the next frame start again."""
        if self.synced:
            self.resyncs += 1
        self.synced = False
        self._buffer.clear()
        self._parts.clear()
        self._first = None

    def feed(self, ts: float, data: bytes) -> list[WsMessage]:
        if not data:
            return []
        if not self.synced:
            if not starts_message(data, self.masked):
                return []
            self.synced = True
        self._buffer += data
        out: list[WsMessage] = []
        at = 0
        buffer = self._buffer
        while True:
            try:
                header = read_header(buffer, at)
            except _Malformed:
                self.gap()
                return out
            if header is None or len(buffer) - at < header.size + header.length:
                break
            start = at + header.size
            at = start + header.length
            self.masked = header.mask is not None
            message = self._frame(header, unmask(buffer[start:at], header.mask), ts)
            if message is not None:
                out.append(message)
        del buffer[:at]
        return out

    def _frame(self, header: Header, payload: bytes, ts: float) -> WsMessage | None:
        masked = header.mask is not None
        if header.opcode == CLOSE:
            return WsMessage(ts, CLOSE, payload, masked)
        if header.opcode in _CONTROL:
            return None  # ping, pong
        if header.opcode != CONTINUATION:
            self._first = (header.opcode, header.compressed)
            self._parts = []
        elif self._first is None:
            return None  # the rest of a message begun before the sync
        self._parts.append(payload)
        if not header.fin:
            return None
        opcode, compressed = self._first
        self._first = None
        data = b"".join(self._parts)
        self._parts = []
        if compressed:
            inflated = self._inflate(data)
            if inflated is None:
                return None
            data = inflated
        return WsMessage(ts, opcode, data, masked)

    def _inflate(self, data: bytes) -> bytes | None:
        """permessage-deflate; None if the message refers to what came before the capture."""
        if self._inflater is None:
            self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            return self._inflater.decompress(data + b"\x00\x00\xff\xff")
        except zlib.error:
            self._inflater = None
            self.uninflated += 1
            return None
