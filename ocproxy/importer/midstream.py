"""Connections whose WebSocket upgrade the capture does not hold: it began mid-connection.

tshark dissects WebSocket only after an upgrade it saw, so a third pass lists the TCP
segments of every other stream (neither an upgrade nor a TLS ClientHello was seen in
it), reassembled here by sequence number, and :mod:`ocproxy.importer.wsframes` finds
the first whole frame of each direction. A stream in which it finds one is imported
from there as a connection marked so:

- ``source`` = ``import:pcap:mid-connection``; ``path`` is empty (no request seen);
- ``identity`` is the charger's address and port (no frame carries the identity), so
  that two such connections are never taken for one charger's;
- the charger is the side whose frames are masked (RFC 6455: a client masks);
- the OCPP version (and so ``subprotocol``) is read from its first messages, as for a
  log (a 1.6-only or 2.x-only action, the shape of a BootNotification), else 1.6;
- opened at its first captured packet; closed by a close frame if one is captured.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field

from ocproxy.core.events import (
    ClosedBy,
    ConnectionClosed,
    ConnectionOpened,
    FrameReceived,
    RecorderEvent,
)
from ocproxy.core.frames import Direction, Opcode
from ocproxy.core.handshake import OcppVersion
from ocproxy.importer.logs import VERSION_LOOKAHEAD, message_version
from ocproxy.importer.mapping import SUBPROTOCOLS
from ocproxy.importer.wsframes import CLOSE, TEXT, DirectionReader, WsMessage

SOURCE = "import:pcap:mid-connection"
_FIELDS = (
    "tcp.stream", "frame.time_epoch", "ip.src", "ipv6.src", "tcp.srcport", "tcp.seq_raw",
    "tcp.payload",
)  # fmt: skip

Endpoint = tuple[str, str]  # address, port
# The first byte of a TLS record: change_cipher_spec, alert, handshake, application_data.
_TLS_RECORDS = (b"\x14", b"\x15", b"\x16", b"\x17")


def segments_command(tshark: str, path: str, known: Collection[str]) -> list[str]:
    """tshark listing the payload of every TCP segment of the streams not in ``known``."""
    where = "tcp.len > 0"
    if known:
        where += f" && !(tcp.stream in {{{' '.join(sorted(known, key=int))}}})"
    fields = [arg for name in _FIELDS for arg in ("-e", name)]
    # Each segment's own bytes: with TCP reassembly on, a dissector that takes a random
    # port for its protocol (and asks for more data) leaves a segment with no
    # tcp.payload, which would read here as a gap. Above TCP, nothing is needed.
    disabled = ("http", "tls", "websocket", "ssh", "data-text-lines")
    off = [arg for name in disabled for arg in ("--disable-protocol", name)]
    options = ["-o", "tcp.desegment_tcp_streams:FALSE"]
    return [tshark, "-r", path, "-n", *options, *off, "-Y", where, "-T", "fields", *fields]


@dataclass
class _Side:
    reader: DirectionReader = field(default_factory=DirectionReader)
    next_seq: int | None = None  # the TCP sequence number of the next byte expected


@dataclass
class _Orphan:
    number: str
    first_ts: float
    sides: dict[Endpoint, _Side] = field(default_factory=dict)
    charger: Endpoint | None = None
    connection_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    version: OcppVersion | None = None
    waiting: list[tuple[Endpoint, WsMessage]] = field(default_factory=list)
    seq: int = 0
    closed: bool = False
    tls: bool = False  # its first segment was a TLS record: encrypted, handshake not captured


@dataclass
class MidConnections:
    """Reads the third pass's lines; yields the events of the streams it can read."""

    streams: dict[str, _Orphan] = field(default_factory=dict)
    messages: int = 0

    def read(self, lines: Iterator[bytes]) -> Iterator[RecorderEvent]:
        for line in lines:
            cells = line.rstrip(b"\r\n").decode("ascii", "replace").split("\t")
            if len(cells) < len(_FIELDS):
                continue
            number, ts, ip4, ip6, port, seq, payload = cells[: len(_FIELDS)]
            try:
                segment = (float(ts), int(seq), bytes.fromhex(payload))
            except ValueError:
                continue
            yield from self._segment(number, (ip4 or ip6, port), *segment)
        for stream in self.streams.values():
            if stream.charger is not None and stream.version is None:
                yield from self._decide(stream, None)

    @property
    def found(self) -> int:
        """Streams read: connections imported."""
        return sum(1 for s in self.streams.values() if s.charger is not None)

    def notes(self) -> list[str]:
        found = [s for s in self.streams.values() if s.charger is not None]
        notes = []
        if found:
            notes.append(
                f"{len(found)} connection(s) captured mid-connection (no upgrade seen): "
                f"imported from their first whole frame, source '{SOURCE}', the charger's "
                "address as identity"
            )
        locked = sum(1 for s in self.streams.values() if s.charger is None and s.tls)
        if locked:
            notes.append(
                f"{locked} TLS connection(s) begun before the capture skipped: without their "
                "handshake they cannot be decrypted"
            )
        others = len(self.streams) - len(found) - locked
        if others:
            notes.append(
                f"{others} other TCP stream(s) skipped: no WebSocket upgrade and no whole "
                "OCPP-J frame in them"
            )
        uninflated = sum(s.reader.uninflated for o in found for s in o.sides.values())
        if uninflated:
            notes.append(
                f"{uninflated} compressed message(s) of mid-connection streams skipped: "
                "they refer to data sent before the capture began"
            )
        return notes

    def _segment(
        self, number: str, sender: Endpoint, ts: float, seq: int, data: bytes
    ) -> Iterator[RecorderEvent]:
        stream = self.streams.get(number)
        if stream is None:
            stream = self.streams[number] = _Orphan(number, ts)
            stream.tls = data[:1] in _TLS_RECORDS and data[1:2] == b"\x03"
        if stream.closed:
            return
        side = stream.sides.get(sender)
        if side is None:
            side = stream.sides[sender] = _Side()
            if stream.charger is not None:  # the other side of a known charger: the CSMS
                side.reader.masked = stream.charger == sender
            elif stream.waiting:  # the CSMS spoke first: this is the charger
                stream.charger = sender
                side.reader.masked = True
        data = _in_order(side, seq, data)
        for message in side.reader.feed(ts, data):
            yield from self._message(stream, sender, message)

    def _message(
        self, stream: _Orphan, sender: Endpoint, message: WsMessage
    ) -> Iterator[RecorderEvent]:
        if stream.charger is None:
            stream.charger = sender if message.masked else _other(stream, sender)
            if stream.charger is None:  # the CSMS's, and the charger not heard yet
                stream.waiting.append((sender, message))
                return
            for endpoint, side in stream.sides.items():
                side.reader.masked = endpoint == stream.charger
        if stream.version is not None:
            yield from self._event(stream, sender, message)
            return
        stream.waiting.append((sender, message))
        hint = None
        if message.opcode == TEXT:
            hint = message_version(message.data.decode("utf-8", "replace"))
        if hint is not None or len(stream.waiting) >= VERSION_LOOKAHEAD:
            yield from self._decide(stream, hint)

    def _decide(self, stream: _Orphan, hint: OcppVersion | None) -> Iterator[RecorderEvent]:
        stream.version = hint or OcppVersion.V16
        assert stream.charger is not None
        subprotocol = SUBPROTOCOLS[stream.version]
        address = _address(stream.charger)
        yield ConnectionOpened(
            connection_id=stream.connection_id,
            ts=stream.first_ts,
            identity=address,
            path="",
            remote_addr=address,
            offered_subprotocols=(),
            subprotocol=subprotocol,
            upstream_url=None,
            handshake_status=101,
            source=SOURCE,
        )
        waiting, stream.waiting = stream.waiting, []
        for sender, message in waiting:
            yield from self._event(stream, sender, message)

    def _event(
        self, stream: _Orphan, sender: Endpoint, message: WsMessage
    ) -> Iterator[RecorderEvent]:
        if stream.closed:
            return
        direction = Direction.TO_CSMS if sender == stream.charger else Direction.TO_CHARGER
        if message.opcode == CLOSE:
            stream.closed = True
            code = int.from_bytes(message.data[:2], "big") if len(message.data) >= 2 else None
            reason = message.data[2:].decode("utf-8", "replace") if code is not None else None
            by = ClosedBy.CHARGER if direction is Direction.TO_CSMS else ClosedBy.CSMS
            yield ConnectionClosed(stream.connection_id, message.ts, code, reason, by)
            return
        self.messages += 1
        stream.seq += 1
        yield FrameReceived(
            stream.connection_id,
            stream.seq - 1,
            message.ts,
            direction,
            Opcode.TEXT if message.opcode == TEXT else Opcode.BINARY,
            message.data,
            len(message.data),
            identity=_address(stream.charger),
        )


def _in_order(side: _Side, seq: int, data: bytes) -> bytes:
    """The segment's bytes not seen before (a retransmission repeats some); a gap (bytes
    the capture lost) makes the reader look for the next frame start."""
    expected = side.next_seq
    if expected is not None:
        ahead = (seq - expected) % (1 << 32)  # sequence numbers wrap
        if ahead >= 1 << 31:  # before what was expected: a retransmission, maybe longer
            seen = (expected - seq) % (1 << 32)
            if seen >= len(data):
                return b""
            data, seq = data[seen:], expected
        elif ahead:
            side.reader.gap()
    side.next_seq = (seq + len(data)) % (1 << 32)
    return data


def _address(endpoint: Endpoint | None) -> str:
    return "" if endpoint is None else f"{endpoint[0]}:{endpoint[1]}"


def _other(stream: _Orphan, sender: Endpoint) -> Endpoint | None:
    return next((e for e in stream.sides if e != sender), None)


def run_segments(tshark: str, path: str, known: Collection[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        segments_command(tshark, path, known), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
