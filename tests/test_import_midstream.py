"""Reading WebSocket messages from a TCP stream whose start was not captured
(``ocproxy.importer.wsframes`` and ``midstream``), with literal bytes."""

from __future__ import annotations

import zlib

from ocproxy.core.events import ConnectionClosed, ConnectionOpened, FrameReceived
from ocproxy.core.frames import Direction
from ocproxy.importer.midstream import SOURCE, MidConnections, segments_command
from ocproxy.importer.wsframes import CLOSE, TEXT, DirectionReader, starts_message

KEY = b"\x12\x34\x56\x78"


def frame(
    payload: bytes, *, opcode: int = TEXT, fin: bool = True, mask: bool, rsv1: bool = False
) -> bytes:
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes([first, (0x80 if mask else 0) | n])
    elif n < 1 << 16:
        head = bytes([first, (0x80 if mask else 0) | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([first, (0x80 if mask else 0) | 127]) + n.to_bytes(8, "big")
    if not mask:
        return head + payload
    return head + KEY + bytes(b ^ KEY[i % 4] for i, b in enumerate(payload))


CALL = b'[2,"7","Heartbeat",{}]'
ANSWER = b'[3,"7",{"currentTime":"2026-01-01T00:00:00Z"}]'


def test_a_segment_that_begins_inside_a_frame_is_skipped_until_one_begins_a_message() -> None:
    big = b'[2,"6","DataTransfer",{"vendorId":"x","data":"' + b"y" * 300 + b'"}]'
    whole = frame(big, mask=True)
    reader = DirectionReader()
    # The capture begins 40 bytes into a frame: its rest is no frame start.
    assert reader.feed(1.0, whole[40:]) == []
    assert not reader.synced
    out = reader.feed(2.0, frame(CALL, mask=True))
    assert [(m.ts, m.opcode, m.data, m.masked) for m in out] == [(2.0, TEXT, CALL, True)]
    # From there on, frames back to back, split anywhere, several in one segment.
    stream = frame(ANSWER, mask=True) + whole + frame(CALL, mask=True)
    assert reader.feed(3.0, stream[:5]) == []
    out = reader.feed(4.0, stream[5:])
    assert [m.data for m in out] == [ANSWER, big, CALL]
    assert {m.ts for m in out} == {4.0}


def test_what_is_no_frame_start() -> None:
    assert starts_message(frame(CALL, mask=True), None)
    assert starts_message(frame(CALL, mask=False), False)
    assert not starts_message(frame(CALL, mask=False), True)  # the charger's side masks
    assert not starts_message(frame(b"not json", mask=True), None)
    assert not starts_message(frame(b'{"a": 1}', mask=True), None)  # not an OCPP-J array
    assert not starts_message(frame(CALL, opcode=0, mask=True), None)  # a continuation
    assert not starts_message(bytes([0x17, 0x03, 0x03, 0x00, 0x20]), None)  # a TLS record
    assert not starts_message(frame(CALL, mask=True) + b"\xff\xff", None)  # garbage after


def test_fragments_pings_compression_and_close() -> None:
    reader = DirectionReader()
    parts = frame(CALL[:10], fin=False, mask=False) + frame(b"", opcode=9, mask=False)
    parts += frame(CALL[10:], opcode=0, mask=False)
    deflate = zlib.compressobj(wbits=-15)
    packed = deflate.compress(ANSWER) + deflate.flush(zlib.Z_SYNC_FLUSH)
    parts += frame(packed[:-4], mask=False, rsv1=True)
    parts += frame((1000).to_bytes(2, "big") + b"bye", opcode=CLOSE, mask=False)
    out = reader.feed(1.0, parts)
    assert [(m.opcode, m.data) for m in out] == [
        (TEXT, CALL), (TEXT, ANSWER), (CLOSE, b"\x03\xe8bye"),
    ]  # fmt: skip


def test_a_compressed_message_that_refers_to_earlier_data_is_counted_and_skipped() -> None:
    deflate = zlib.compressobj(wbits=-15)
    deflate.compress(ANSWER)
    deflate.flush(zlib.Z_SYNC_FLUSH)  # sent before the capture began
    again = deflate.compress(ANSWER) + deflate.flush(zlib.Z_SYNC_FLUSH)
    reader = DirectionReader()
    assert reader.feed(1.0, frame(again[:-4], mask=False, rsv1=True)) == []
    assert reader.uninflated == 1


def test_a_malformed_header_drops_the_sync() -> None:
    reader = DirectionReader()
    assert len(reader.feed(1.0, frame(CALL, mask=True))) == 1
    assert reader.feed(2.0, b"\x8f\x00") == []  # opcode 15: no frame
    assert (reader.synced, reader.resyncs) == (False, 1)
    assert [m.data for m in reader.feed(3.0, frame(CALL, mask=True))] == [CALL]


def _line(stream: int, ts: float, src: str, port: int, seq: int, payload: bytes) -> bytes:
    return f"{stream}\t{ts}\t{src}\t\t{port}\t{seq}\t{payload.hex()}\n".encode()


def test_a_stream_becomes_a_connection_marked_mid_connection() -> None:
    """The third pass's lines: a retransmission, a segment that begins mid-frame, both
    directions, a 1.6-only action telling the version, and the charger's close."""
    start = b'[2,"1","StartTransaction",{"connectorId":1,"idTag":"A","meterStart":0,'
    start += b'"timestamp":"2026-01-01T00:00:00Z"}]'
    answer = b'[3,"1",{"transactionId":5,"idTagInfo":{"status":"Accepted"}}]'
    up = frame(start, mask=True)
    down = frame(answer, mask=False)
    close = frame((1000).to_bytes(2, "big"), opcode=CLOSE, mask=True)
    cp, csms = ("10.0.0.5", 40712), ("10.0.0.1", 9000)
    lines = [
        _line(3, 10.0, cp[0], cp[1], 500, b"tail of an earlier frame"),
        _line(3, 10.1, csms[0], csms[1], 900, frame(b"[3", mask=False)[3:]),  # mid-frame too
        _line(3, 11.0, cp[0], cp[1], 524, up),
        _line(3, 11.0, cp[0], cp[1], 524, up),  # retransmitted
        _line(3, 11.2, csms[0], csms[1], 903, down),
        _line(3, 12.0, cp[0], cp[1], 524 + len(up), close),
        _line(4, 12.0, "10.0.0.9", 22, 1, b"SSH-2.0-OpenSSH_9.2\r\n"),  # something else
        _line(5, 12.5, "10.0.0.7", 41000, 1, bytes.fromhex("170303002a") + b"x" * 42),  # wss
    ]
    mid = MidConnections()
    events = list(mid.read(iter(lines)))
    opened, first, second, closed = events
    assert isinstance(opened, ConnectionOpened)
    assert (opened.identity, opened.path, opened.remote_addr, opened.source) == (
        "10.0.0.5:40712", "", "10.0.0.5:40712", SOURCE,
    )  # fmt: skip
    assert (opened.subprotocol, opened.handshake_status, opened.ts) == ("ocpp1.6", 101, 10.0)
    assert isinstance(first, FrameReceived)
    assert isinstance(second, FrameReceived)
    assert [(f.seq, f.ts, f.direction, f.data) for f in (first, second)] == [
        (0, 11.0, Direction.TO_CSMS, start), (1, 11.2, Direction.TO_CHARGER, answer),
    ]  # fmt: skip
    assert isinstance(closed, ConnectionClosed)
    assert (closed.code, str(closed.closed_by)) == (1000, "charger")
    assert mid.messages == 2
    assert mid.notes() == [
        f"1 connection(s) captured mid-connection (no upgrade seen): imported from their "
        f"first whole frame, source '{SOURCE}', the charger's address as identity",
        "1 TLS connection(s) begun before the capture skipped: without their handshake they "
        "cannot be decrypted",
        "1 other TCP stream(s) skipped: no WebSocket upgrade and no whole OCPP-J frame in them",
    ]


def test_the_third_pass_leaves_out_the_streams_already_read() -> None:
    command = segments_command("tshark", "c.pcap", {"10", "2"})
    assert command[command.index("-Y") + 1] == "tcp.len > 0 && !(tcp.stream in {2 10})"
