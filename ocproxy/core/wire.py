"""One direction of a WebSocket connection as a relay sees it: frames, left as they came.

Sans-I/O, after websockets' ``protocol.py``: :meth:`WireReader.feed` takes the bytes a
peer sent and returns the bytes to pass on, unchanged, while it tells its
:class:`WireEvents` what the stream holds: each whole data message (unmasked, inflated
when compressed), each control frame, the first protocol violation. It never raises on
peer data. The relay forwards the peer's own frames, masking keys and compression
included, so after the opening handshake it never frames, masks or deflates a message
itself; it only inflates a copy of a compressed message for the recording.

What may be taken out of the stream: a control frame the events refuse (the proxy's own
pongs), and a whole message the events refuse. A message is only whole in hand when it
is one frame or when :attr:`WireReader.hold` was set while its fragments came; otherwise
its first fragments are gone already and it is forwarded whatever the events say.
Removing a compressed message is only safe when its sender resets its compression
context for every message, which is why the proxy negotiates ``*_no_context_takeover``.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from websockets.speedups import apply_mask

_TAIL = b"\x00\x00\xff\xff"  # RFC 7692 7.2.2: removed by the sender, appended to inflate
_NOTHING: list[bytes] = []  # shared by every reader with nothing pending: never appended to


class WireOpcode(IntEnum):
    CONT = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class WireEvents(Protocol):
    """What a :class:`WireReader` reports; the return values decide what is forwarded."""

    def message(self, opcode: int, payload: bytes, compressed: bool) -> bool:
        """A whole data message; False to keep it from the other peer (when it can be)."""

    def control(self, opcode: int, payload: bytes) -> bool:
        """A ping, pong or close frame; False to keep it from the other peer."""

    def failed(self, code: int, reason: str, size: int | None) -> None:
        """The stream broke the protocol (1002) or a message is too big (1009, ``size``)."""


@dataclass(frozen=True, slots=True)
class Deflate:
    """permessage-deflate as negotiated: whether each side resets its context per message."""

    client_no_context_takeover: bool = False
    server_no_context_takeover: bool = False


class WireReader:
    """Frames of one direction; ``masked``: the sender is a client (the charger's side)."""

    __slots__ = (
        "_buf",
        "_events",
        "_have",
        "_held",
        "_inflater",
        "_masked",
        "_max_size",
        "_need",
        "_part_compressed",
        "_part_opcode",
        "_part_size",
        "_parts",
        "_reset",
        "deflate",
        "hold",
        "stopped",
    )

    def __init__(
        self,
        events: WireEvents,
        *,
        masked: bool,
        deflate: Deflate | None,
        max_size: int,
    ) -> None:
        self._events = events
        self._masked = masked
        self.deflate = deflate
        self._max_size = max_size
        # The pieces of an unfinished frame, and of an unfinished fragmented message. Both
        # start as the shared _NOTHING (never appended to: each gets a list of its own when
        # it has pieces): two empty lists per leg are 224 bytes per charger.
        self._buf: list[bytes] = _NOTHING
        self._have = 0
        self._need = 0
        self._parts: list[bytes] = _NOTHING
        self._part_opcode = 0
        self._part_size = 0
        self._part_compressed = False
        self._held: list[bytes] | None = None
        self._inflater: zlib._Decompress | None = None
        # The sender's context resets with each message: inflate each with a fresh window.
        self._reset = deflate is not None and (
            deflate.client_no_context_takeover if masked else deflate.server_no_context_takeover
        )
        self.hold = False  # keep a fragmented message's frames until it is whole
        self.stopped = False  # after a close frame or a violation: nothing more is read

    @property
    def in_message(self) -> bool:
        """A fragmented data message has begun and not ended: nothing may go in between."""
        return bool(self._parts)

    def feed(self, data: bytes) -> list[bytes]:
        """The bytes to forward, in order, for ``data`` received."""
        if self._ended():
            return []
        if self._buf:
            # A frame begun earlier: gather the pieces, join them once it is whole (a big
            # frame trickling in small reads is not copied again on every read).
            self._buf.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            data = b"".join(self._buf)
            self._buf = _NOTHING
        out: list[bytes] = []
        start = pos = 0
        n = len(data)
        need = 0  # bytes the unfinished frame at ``pos`` needs in all, when known
        while n - pos >= 2:
            b0 = data[pos]
            b1 = data[pos + 1]
            length = b1 & 0x7F
            head = pos + 2
            if length == 126:
                if n - pos < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                head = pos + 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = pos + 10
            if b1 & 0x80:
                head += 4
            problem = self._check(b0, b1, length)
            if problem is not None:
                self._flush(out, data, start, pos)
                self._fail(*problem)
                return out
            end = head + length
            if end > n:
                need = end - pos
                break
            payload = data[head:end]
            if b1 & 0x80:
                payload = apply_mask(payload, data[head - 4 : head])
            opcode = b0 & 0x0F
            keep: bool | bytes | None
            if opcode & 0x8:
                keep = self._events.control(opcode, payload)
                if opcode == WireOpcode.CLOSE:
                    self.stopped = True
            else:
                keep = self._data(b0, opcode, payload, data, pos, end)
                if self.stopped:  # too big once inflated
                    self._flush(out, data, start, pos)
                    return out
            if keep is not True:
                # Taken out of the stream (False), or held whole (None): forward what
                # came before it, continue after it.
                self._flush(out, data, start, pos)
                if keep is not None and keep is not False:
                    out.append(keep)
                start = end
            pos = end
            if self.stopped:
                break
        self._flush(out, data, start, pos)
        if pos < n and not self.stopped:
            self._buf = [data[pos:]]
            self._have, self._need = n - pos, need
        return out

    def _ended(self) -> bool:
        # A method, not the attribute: the events may stop the reader while it reads.
        return self.stopped

    @staticmethod
    def _flush(out: list[bytes], data: bytes, start: int, pos: int) -> None:
        if pos > start:
            out.append(data if start == 0 and pos == len(data) else data[start:pos])

    def _check(self, b0: int, b1: int, length: int) -> tuple[int, str, int | None] | None:
        """Why this frame header breaks the protocol or the size limit, if it does."""
        if length >= 1 << 63:
            return 1002, "the most significant bit of a 64-bit length must be 0", None
        if bool(b1 & 0x80) is not self._masked:
            return 1002, "incorrect masking" if self._masked else "masked frame from server", None
        opcode = b0 & 0x0F
        if b0 & 0x30:
            return 1002, "reserved bits must be 0", None
        if opcode & 0x8:
            if opcode > WireOpcode.PONG:
                return 1002, f"invalid opcode: {opcode}", None
            if not b0 & 0x80:
                return 1002, "fragmented control frame", None
            if length > 125:
                return 1002, "control frame too long", None
            if b0 & 0x40:
                return 1002, "reserved bits must be 0", None
            return None
        if opcode > WireOpcode.BINARY:
            return 1002, f"invalid opcode: {opcode}", None
        continuing = self.in_message
        if opcode == WireOpcode.CONT and not continuing:
            return 1002, "unexpected continuation frame", None
        if opcode != WireOpcode.CONT and continuing:
            return 1002, "expected a continuation frame", None
        if b0 & 0x40 and (self.deflate is None or opcode == WireOpcode.CONT):
            return 1002, "reserved bits must be 0", None
        size = self._part_size + length
        if size > self._max_size:
            return 1009, f"message of at least {size} bytes", size
        return None

    def _data(
        self, b0: int, opcode: int, payload: bytes, data: bytes, pos: int, end: int
    ) -> bool | bytes | None:
        """One data frame; what to do with its bytes (see :meth:`feed`)."""
        if not b0 & 0x80:  # a fragment, more to come
            if opcode != WireOpcode.CONT:
                self._part_opcode = opcode
                self._part_compressed = bool(b0 & 0x40)
                if self.hold:
                    self._held = []
            if self._parts:
                self._parts.append(payload)
            else:
                self._parts = [payload]
            self._part_size += len(payload)
            if self._held is not None:
                self._held.append(data[pos:end])
                return None
            return True
        fragmented = opcode == WireOpcode.CONT
        if fragmented:
            self._parts.append(payload)
            message = b"".join(self._parts)
            opcode, compressed = self._part_opcode, self._part_compressed
            self._parts = _NOTHING
            self._part_size = 0
        else:
            message, compressed = payload, bool(b0 & 0x40)
        held, self._held = self._held, None
        if compressed:
            inflated = self._inflate(message)
            if inflated is None:
                return False
            message = inflated
        keep = self._events.message(opcode, message, compressed)
        if held is not None:
            if not keep:
                return False
            held.append(data[pos:end])
            return b"".join(held)
        return keep or fragmented  # a fragmented message's first frames are gone already

    def _inflate(self, message: bytes) -> bytes | None:
        if self._inflater is None or self._reset:
            self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            inflated = self._inflater.decompress(message + _TAIL, self._max_size + 1)
        except zlib.error as exc:
            self._fail(1007, f"invalid compressed data: {exc}", None)
            return None
        if len(inflated) > self._max_size:
            self._fail(1009, f"message of at least {self._max_size + 1} bytes", self._max_size + 1)
            return None
        return inflated

    def _fail(self, code: int, reason: str, size: int | None) -> None:
        self.stopped = True
        self._parts = _NOTHING
        self._held = None
        self._events.failed(code, reason, size)


# -- frames of the proxy's own ----------------------------------------------------------


def frame(opcode: int, payload: bytes, *, mask: bool) -> bytes:
    """One whole, uncompressed frame; ``mask`` with a fresh key towards a server."""
    length = len(payload)
    head = bytearray([0x80 | opcode])
    bit = 0x80 if mask else 0
    if length < 126:
        head.append(bit | length)
    elif length < 1 << 16:
        head.append(bit | 126)
        head += length.to_bytes(2, "big")
    else:
        head.append(bit | 127)
        head += length.to_bytes(8, "big")
    if not mask:
        return bytes(head) + payload
    key = os.urandom(4)
    return bytes(head) + key + apply_mask(payload, key)


def close_payload(code: int | None, reason: str) -> bytes:
    """A close frame's payload; ``None`` for a close without a code (1005 reported)."""
    if code is None:
        return b""
    # At most 123 bytes of reason, cut between characters: a close frame's reason must
    # be valid UTF-8 (RFC 6455 5.5.1).
    cut = reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")
    return code.to_bytes(2, "big") + cut


def parse_close(payload: bytes) -> tuple[int, str]:
    """(code, reason) of a received close frame: 1005 when it holds none."""
    if len(payload) < 2:
        return 1005, ""
    return int.from_bytes(payload[:2], "big"), payload[2:].decode("utf-8", "replace")
