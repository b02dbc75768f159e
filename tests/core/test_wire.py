"""WireReader on literal bytes: what it forwards, what it reports, what it takes out.

No sockets: frames are written by hand here (not with ``wire.frame``, which is under
test too), fed in every chunking, and the reader's output is compared with its input.
The reader's contract: the bytes it returns are the bytes it was given, in order, minus
exactly the frames its events refused (a fragmented message only when held whole), and
never a partial frame; its events get each whole message unmasked and inflated.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from helpers_ws import ws_frame
from hypothesis import given, settings
from hypothesis import strategies as st

from ocproxy.core import wire
from ocproxy.core.wire import (
    Deflate,
    WireOpcode,
    WireReader,
    close_payload,
    frame,
    parse_close,
)

CONT, TEXT, BINARY = WireOpcode.CONT, WireOpcode.TEXT, WireOpcode.BINARY
CLOSE, PING, PONG = WireOpcode.CLOSE, WireOpcode.PING, WireOpcode.PONG
RSV1, RSV2, RSV3 = 0x40, 0x20, 0x10
KEY = b"\x37\xfa\x21\x3d"
TAIL = b"\x00\x00\xff\xff"
LIMIT = 1 << 20


@pytest.fixture(autouse=True)
def _shared_empty_list_stays_empty() -> Iterator[None]:
    """Readers with nothing pending share one empty list (memory per charger): no test
    may find it appended to."""
    yield
    assert wire._NOTHING == []


# -- frames written by hand --------------------------------------------------------------


def masked_with(payload: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i & 3] for i, b in enumerate(payload))


raw = ws_frame  # one frame written by hand (tests/helpers_ws.py)


def up(opcode: int, payload: bytes = b"", **kwargs: Any) -> bytes:
    """A frame from the charger (a client: masked)."""
    return raw(opcode, payload, key=KEY, **kwargs)


def down(opcode: int, payload: bytes = b"", **kwargs: Any) -> bytes:
    """A frame from the CSMS (a server: unmasked)."""
    return raw(opcode, payload, **kwargs)


def deflated(compressor: Any, data: bytes) -> bytes:
    """One message's payload as permessage-deflate sends it (RFC 7692 7.2.1)."""
    out = bytes(compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))
    assert out.endswith(TAIL)
    return out[: -len(TAIL)]


def fresh() -> Any:
    return zlib.compressobj(wbits=-zlib.MAX_WBITS)


# -- the events ----------------------------------------------------------------------------

Event = tuple[Any, ...]


@dataclass
class Seen:
    """Every event in order; refuses what ``refuse(opcode, payload)`` says."""

    refuse: Callable[[int, bytes], bool] = lambda opcode, payload: False
    log: list[Event] = field(default_factory=list)

    def message(self, opcode: int, payload: bytes, compressed: bool) -> bool:
        self.log.append(("message", opcode, payload, compressed))
        return not self.refuse(opcode, payload)

    def control(self, opcode: int, payload: bytes) -> bool:
        self.log.append(("control", opcode, payload))
        return not self.refuse(opcode, payload)

    def failed(self, code: int, reason: str, size: int | None) -> None:
        self.log.append(("failed", code, reason, size))


def reader(
    seen: Seen | None = None,
    *,
    masked: bool = True,
    deflate: Deflate | None = None,
    max_size: int = LIMIT,
) -> tuple[WireReader, Seen]:
    seen = Seen() if seen is None else seen
    return WireReader(seen, masked=masked, deflate=deflate, max_size=max_size), seen


def feed_all(wire: WireReader, chunks: list[bytes]) -> bytes:
    return b"".join(b"".join(wire.feed(chunk)) for chunk in chunks)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


def boundaries(frames: list[bytes]) -> set[int]:
    total, out = 0, {0}
    for one in frames:
        total += len(one)
        out.add(total)
    return out


# -- whole frames ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70_000])
@pytest.mark.parametrize("masked", [True, False])
def test_one_frame_of_each_length_form_passes_unchanged(size: int, masked: bool) -> None:
    payload = bytes(i % 251 for i in range(size))
    data = (up if masked else down)(BINARY, payload)
    assert len(data) - size == 2 + (4 if masked else 0) + (2 if 126 <= size < 65536 else 0) + (
        8 if size >= 65536 else 0
    )
    wire, seen = reader(masked=masked)
    assert b"".join(wire.feed(data)) == data
    assert seen.log == [("message", BINARY, payload, False)]
    assert not wire.in_message


@pytest.mark.parametrize("form", [16, 64])
def test_lengths_in_a_longer_form_than_needed_are_read(form: int) -> None:
    data = up(TEXT, b"[]", form=form) + up(PING, b"p", form=form)
    wire, seen = reader()
    assert b"".join(wire.feed(data)) == data
    assert seen.log == [("message", TEXT, b"[]", False), ("control", PING, b"p")]


def test_several_frames_in_one_feed_come_out_as_one_piece() -> None:
    data = b"".join(up(TEXT, b'[2,"%d","Heartbeat",{}]' % i) for i in range(5))
    wire, seen = reader()
    out = wire.feed(data)
    assert out == [data]  # nothing taken out: the input itself, not a copy per frame
    assert [e[2] for e in seen.log] == [b'[2,"%d","Heartbeat",{}]' % i for i in range(5)]


@pytest.mark.parametrize("masked", [True, False])
def test_split_at_every_byte_boundary(masked: bool) -> None:
    make = up if masked else down
    frames = [
        make(TEXT, b"x" * 130),  # 16-bit length
        make(BINARY, b"\x00\xff", form=64),  # 64-bit length
        make(TEXT, b'[2,"1",', fin=False),
        make(PING, b"between"),
        make(CONT, b'"Heartbeat",{}]'),
        make(PONG, b""),
        make(CLOSE, b"\x03\xe8bye"),
    ]
    data = b"".join(frames)
    once, whole = reader(masked=masked)
    assert b"".join(once.feed(data)) == data
    assert whole.log[-1] == ("control", CLOSE, b"\x03\xe8bye")
    edges = boundaries(frames)
    for cut in range(1, len(data)):
        wire, seen = reader(masked=masked)
        first, second = wire.feed(data[:cut]), wire.feed(data[cut:])
        assert b"".join(first + second) == data, cut
        assert len(b"".join(first)) in edges, cut  # never a partial frame
        assert seen.log == whole.log, cut
    wire, seen = reader(masked=masked)
    forwarded = 0
    for i in range(len(data)):  # one byte at a time
        forwarded += len(b"".join(wire.feed(data[i : i + 1])))
        assert forwarded in edges
    assert forwarded == len(data)
    assert seen.log == whole.log


# -- chunkings and refusals, generated ----------------------------------------------------

# An item of a stream: ("msg", opcode, payload, form), ("ctl", opcode, payload), or
# ("frag", opcode, [(payload, [controls after this fragment])...]).
Item = tuple[Any, ...]

payloads = st.binary(max_size=200)
controls = st.tuples(st.just("ctl"), st.sampled_from([PING, PONG]), st.binary(max_size=125))
messages = st.tuples(
    st.just("msg"), st.sampled_from([TEXT, BINARY]), payloads, st.sampled_from([None, 16, 64])
)
fragmented = st.tuples(
    st.just("frag"),
    st.sampled_from([TEXT, BINARY]),
    st.lists(st.tuples(payloads, st.lists(controls, max_size=2)), min_size=2, max_size=4),
)
streams = st.lists(st.one_of(messages, controls, fragmented), min_size=1, max_size=8)


def build(items: list[Item], masked: bool, keys: list[bytes]) -> list[list[bytes]]:
    """Each item's frames (a fragmented message's controls in place)."""
    out: list[list[bytes]] = []
    k = 0

    def key() -> bytes | None:
        nonlocal k
        k += 1
        return keys[k % len(keys)] if masked else None

    for item in items:
        if item[0] == "msg":
            out.append([raw(item[1], item[2], key=key(), form=item[3])])
        elif item[0] == "ctl":
            out.append([raw(item[1], item[2], key=key())])
        else:
            frames = []
            parts = item[2]
            for i, (part, between) in enumerate(parts):
                opcode = item[1] if i == 0 else CONT
                frames.append(raw(opcode, part, fin=i == len(parts) - 1, key=key()))
                frames += [raw(c[1], c[2], key=key()) for c in between if i < len(parts) - 1]
            out.append(frames)
    return out


def refused(opcode: int, payload: bytes) -> bool:
    return payload[:1] == b"X"


def model(
    items: list[Item],
    built: list[list[bytes]],
    hold: bool,
    refused: Callable[[int, bytes], bool] = refused,
) -> tuple[bytes, list[Event]]:
    """What the reader must forward and report when ``refused`` says no."""
    out = b""
    log: list[Event] = []
    for item, frames in zip(items, built, strict=True):
        if item[0] == "ctl":
            log.append(("control", item[1], item[2]))
            out += b"" if refused(item[1], item[2]) else frames[0]
        elif item[0] == "msg":
            log.append(("message", item[1], item[2], False))
            out += b"" if refused(item[1], item[2]) else frames[0]
        else:
            whole = b"".join(part for part, _ in item[2])
            between = [c for i, (_, cs) in enumerate(item[2]) if i < len(item[2]) - 1 for c in cs]
            log += [("control", c[1], c[2]) for c in between]
            log.append(("message", item[1], whole, False))
            if not hold:  # forwarded in place, whatever the events say
                out += b"".join(
                    f
                    for f, c in zip(frames, _kinds(item), strict=True)
                    if c is None or not refused(c[1], c[2])
                )
                continue
            # Held: the controls go on at once, the message once whole (or never).
            out += b"".join(
                f
                for f, c in zip(frames, _kinds(item), strict=True)
                if c and not refused(c[1], c[2])
            )
            if not refused(item[1], whole):
                out += b"".join(f for f, c in zip(frames, _kinds(item), strict=True) if c is None)
    return out, log


def _kinds(item: Item) -> list[Item | None]:
    """Per frame of a fragmented item: None for a fragment, the control item otherwise."""
    kinds: list[Item | None] = []
    for i, (_, between) in enumerate(item[2]):
        kinds.append(None)
        if i < len(item[2]) - 1:
            kinds += between
    return kinds


@settings(derandomize=True, max_examples=300, database=None, deadline=None)
@given(
    items=streams,
    masked=st.booleans(),
    keys=st.lists(st.binary(min_size=4, max_size=4), min_size=1, max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
)
def test_any_chunking_forwards_the_input_unchanged(
    items: list[Item], masked: bool, keys: list[bytes], cuts: list[int]
) -> None:
    built = build(items, masked, keys)
    frames = [f for group in built for f in group]
    data = b"".join(frames)
    edges = boundaries(frames)
    wire, seen = reader(masked=masked)
    forwarded = b""
    for chunk in chunked(data, [c for c in cuts if c < len(data)]):
        forwarded += b"".join(wire.feed(chunk))
        assert len(forwarded) in edges  # the proxy's own frames may go in at any return
    assert forwarded == data
    expected_out, expected_log = model(items, built, hold=False, refused=lambda o, p: False)
    assert expected_out == data  # (the model agrees when nothing is refused)
    assert seen.log == expected_log
    assert not wire.in_message
    assert not wire.stopped


@settings(derandomize=True, max_examples=300, database=None, deadline=None)
@given(
    items=streams,
    masked=st.booleans(),
    hold=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
)
def test_forwarded_is_the_input_minus_exactly_what_was_taken_out(
    items: list[Item], masked: bool, hold: bool, cuts: list[int]
) -> None:
    # Refused: every message and control frame whose payload starts with "X".
    items = [_x_first(item, i) for i, item in enumerate(items)]
    built = build(items, masked, [KEY])
    data = b"".join(f for group in built for f in group)
    wire, seen = reader(Seen(refused), masked=masked)
    wire.hold = hold
    forwarded = b""
    for chunk in chunked(data, [c for c in cuts if c < len(data)]):
        forwarded += b"".join(wire.feed(chunk))
    expected_out, expected_log = model(items, built, hold)
    assert seen.log == expected_log
    assert forwarded == expected_out


def _x_first(item: Item, i: int) -> Item:
    """Every other item refused: its payload made to start with "X"."""
    if i % 2:
        return item
    if item[0] == "frag":
        parts = list(item[2])
        parts[0] = (b"X" + parts[0][0], parts[0][1])
        return (item[0], item[1], parts)
    payload = (b"X" + item[2])[:125] if item[0] == "ctl" else b"X" + item[2]
    return (*item[:2], payload, *item[3:])


# -- protocol violations ------------------------------------------------------------------


def violation(data: bytes, *, masked: bool = True, deflate: Deflate | None = None) -> Event:
    """Feed ``good + data + more``: the good frame passes, then the reader fails and stops."""
    good = raw(TEXT, b"ok", key=KEY if masked else None)
    more = raw(TEXT, b"never", key=KEY if masked else None)
    wire, seen = reader(masked=masked, deflate=deflate)
    assert b"".join(wire.feed(good + data + more)) == good
    assert wire.stopped
    assert wire.feed(more) == []
    assert seen.log[0] == ("message", TEXT, b"ok", False)
    assert len(seen.log) == 2, seen.log
    return seen.log[1]


def test_unmasked_frame_from_the_charger_side() -> None:
    assert violation(down(TEXT, b"[]")) == ("failed", 1002, "incorrect masking", None)


def test_masked_frame_from_the_csms_side() -> None:
    assert violation(up(TEXT, b"[]"), masked=False) == (
        "failed",
        1002,
        "masked frame from server",
        None,
    )


@pytest.mark.parametrize(
    ("bad", "deflate"),
    [
        (up(TEXT, b"[]", rsv=RSV2), None),
        (up(TEXT, b"[]", rsv=RSV3), None),
        (up(TEXT, b"[]", rsv=RSV1), None),  # compressed, but nothing negotiated
        (up(PING, b"", rsv=RSV1), Deflate(True, True)),  # control frames are never compressed
        (up(PING, b"", rsv=RSV2), None),
    ],
)
def test_reserved_bits(bad: bytes, deflate: Deflate | None) -> None:
    assert violation(bad, deflate=deflate) == ("failed", 1002, "reserved bits must be 0", None)


def test_rsv1_on_a_continuation_frame() -> None:
    first = up(TEXT, b"a", fin=False, rsv=RSV1)  # compressed: RSV1 on the first frame only
    wire, seen = reader(deflate=Deflate(True, True))
    assert wire.feed(first + up(CONT, b"b", rsv=RSV1)) == [first]
    assert seen.log == [("failed", 1002, "reserved bits must be 0", None)]


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_reserved_opcodes(opcode: int) -> None:
    event = violation(up(opcode, b"x"))
    assert event == ("failed", 1002, f"invalid opcode: {opcode}", None)


@pytest.mark.parametrize("opcode", [PING, PONG, CLOSE])
def test_fragmented_control_frame(opcode: int) -> None:
    assert violation(up(opcode, b"\x03\xe8", fin=False)) == (
        "failed",
        1002,
        "fragmented control frame",
        None,
    )


@pytest.mark.parametrize("opcode", [PING, PONG, CLOSE])
def test_control_frame_longer_than_125(opcode: int) -> None:
    assert violation(up(opcode, b"\x03\xe8" + b"r" * 124)) == (
        "failed",
        1002,
        "control frame too long",
        None,
    )
    wire, seen = reader()  # 125 is allowed
    data = up(PING, b"p" * 125)
    assert b"".join(wire.feed(data)) == data
    assert seen.log == [("control", PING, b"p" * 125)]


def test_control_frame_too_long_is_refused_from_its_header_alone() -> None:
    wire, seen = reader()
    assert wire.feed(up(PING, length=126)[:4]) == []  # 2 + 2 length bytes, no payload
    assert seen.log == [("failed", 1002, "control frame too long", None)]


def test_continuation_without_a_start() -> None:
    assert violation(up(CONT, b"x")) == ("failed", 1002, "unexpected continuation frame", None)


@pytest.mark.parametrize("opcode", [TEXT, BINARY])
def test_a_new_message_inside_a_fragmented_one(opcode: int) -> None:
    first = up(TEXT, b"a", fin=False)
    wire, seen = reader()
    assert b"".join(wire.feed(first)) == first
    assert wire.in_message
    assert wire.feed(up(opcode, b"b")) == []
    assert seen.log == [("failed", 1002, "expected a continuation frame", None)]
    assert wire.stopped
    assert not wire.in_message


def test_violation_in_a_later_feed_forwards_nothing_of_it() -> None:
    wire, seen = reader()
    good = up(TEXT, b"1")
    half = up(TEXT, b"2" * 50)[:20]
    assert wire.feed(good + half) == [good]
    assert wire.feed(up(TEXT, b"2" * 50)[20:] + down(TEXT, b"3")) == [up(TEXT, b"2" * 50)]
    assert seen.log[-1] == ("failed", 1002, "incorrect masking", None)


# -- message size ------------------------------------------------------------------------------


def test_too_big_is_refused_from_the_header_before_the_payload() -> None:
    wire, seen = reader(max_size=100)
    ok = up(TEXT, b"a" * 100)  # exactly the limit
    assert b"".join(wire.feed(ok)) == ok
    header = up(TEXT, length=101)[:6]  # 2 bytes + mask key, no payload
    assert wire.feed(header) == []
    assert seen.log[-1] == ("failed", 1009, "message of at least 101 bytes", 101)
    assert wire.stopped


def test_a_20_mb_frame_is_refused_as_soon_as_its_length_is_read() -> None:
    wire, seen = reader(max_size=16 * 1024 * 1024)
    header = up(BINARY, length=20_000_000)[:14]
    assert len(header) == 14  # 2 + 8 length bytes + mask key
    for i in range(9):  # nothing decided before the length is whole
        assert wire.feed(header[i : i + 1]) == []
        assert seen.log == []
    assert wire.feed(header[9:10]) == []
    assert seen.log == [("failed", 1009, "message of at least 20000000 bytes", 20_000_000)]
    assert wire.stopped
    assert wire.feed(header[10:] + b"\x00" * 1000) == []


@pytest.mark.parametrize("length", [2**63, 2**64 - 1])
def test_a_64_bit_length_with_its_high_bit_set(length: int) -> None:
    # RFC 6455 5.2: the most significant bit must be 0. (Reported as a 1009, the size
    # would not fit the recording's BIGINT column.)
    wire, seen = reader()
    assert wire.feed(bytes([0x82, 0xFF]) + length.to_bytes(8, "big") + KEY) == []
    assert seen.log == [
        ("failed", 1002, "the most significant bit of a 64-bit length must be 0", None)
    ]


def test_fragments_adding_up_past_the_limit() -> None:
    wire, seen = reader(max_size=100)
    first = up(TEXT, b"a" * 60, fin=False)
    assert b"".join(wire.feed(first)) == first  # not too big yet: on its way
    ping = up(PING, b"p")
    assert b"".join(wire.feed(ping)) == ping  # controls do not count
    assert wire.feed(up(CONT, b"b" * 41)[:6]) == []
    assert seen.log[-1] == ("failed", 1009, "message of at least 101 bytes", 101)
    wire, seen = reader(max_size=100)
    data = first + up(CONT, b"b" * 40)
    assert b"".join(wire.feed(data)) == data
    assert seen.log == [("message", TEXT, b"a" * 60 + b"b" * 40, False)]


# -- control frames between fragments -------------------------------------------------------------


def test_control_frames_between_fragments_are_forwarded_in_place() -> None:
    frames = [
        up(TEXT, b'[2,"1",', fin=False),
        up(PING, b"1"),
        up(CONT, b'"Heartbeat"', fin=False),
        up(PONG, b"2"),
        up(PING, b"3"),
        up(CONT, b",{}]"),
    ]
    wire, seen = reader()
    outs = [wire.feed(f) for f in frames]
    assert outs == [[f] for f in frames]  # each forwarded as it came
    assert seen.log == [
        ("control", PING, b"1"),
        ("control", PONG, b"2"),
        ("control", PING, b"3"),
        ("message", TEXT, b'[2,"1","Heartbeat",{}]', False),
    ]


def test_a_refused_control_frame_is_taken_out_in_place() -> None:
    frames = [up(TEXT, b"a", fin=False), up(PONG, b"own"), up(CONT, b"b"), up(PONG, b"peer")]
    wire, _ = reader(Seen(lambda opcode, payload: payload == b"own"))
    out = wire.feed(b"".join(frames))
    assert out == [frames[0], b"".join(frames[2:])]


def test_close_frame_stops_reading_and_what_follows_is_dropped() -> None:
    close = up(CLOSE, b"\x03\xe8done")
    after = up(TEXT, b"late")
    wire, seen = reader()
    assert b"".join(wire.feed(up(TEXT, b"x") + close + after)) == up(TEXT, b"x") + close
    assert wire.stopped
    assert wire.feed(after) == []
    assert seen.log[-1] == ("control", CLOSE, b"\x03\xe8done")


# -- compression -------------------------------------------------------------------------------

TEXTS = [
    b'[2,"1","MeterValues",{"connectorId":1,"meterValue":[{"sampledValue":[{"value":"10"}]}]}]',
    b'[2,"2","MeterValues",{"connectorId":1,"meterValue":[{"sampledValue":[{"value":"11"}]}]}]',
    b'[3,"2",{}]',
    b"",
    b'[2,"3","MeterValues",{"connectorId":1,"meterValue":[{"sampledValue":[{"value":"12"}]}]}]',
]


@pytest.mark.parametrize("masked", [True, False])
def test_compressed_messages_without_context_takeover(masked: bool) -> None:
    make = up if masked else down
    frames = [make(TEXT, deflated(fresh(), text), rsv=RSV1) for text in TEXTS]
    data = b"".join(frames)
    wire, seen = reader(masked=masked, deflate=Deflate(True, True))
    assert feed_all(wire, chunked(data, list(range(0, len(data), 7)))) == data
    assert seen.log == [("message", TEXT, text, True) for text in TEXTS]


@pytest.mark.parametrize("masked", [True, False])
def test_compressed_messages_with_context_takeover(masked: bool) -> None:
    make = up if masked else down
    compressor = fresh()
    payloads = [deflated(compressor, text) for text in TEXTS]
    # The later messages refer back to the earlier ones: they need the kept window.
    with pytest.raises(zlib.error):
        zlib.decompressobj(-zlib.MAX_WBITS).decompress(payloads[1] + TAIL)
    data = b"".join(make(TEXT, p, rsv=RSV1) for p in payloads)
    wire, seen = reader(masked=masked, deflate=Deflate(False, False))
    assert b"".join(wire.feed(data)) == data
    assert seen.log == [("message", TEXT, text, True) for text in TEXTS]


def test_each_side_resets_its_context_as_negotiated() -> None:
    """client_no_context_takeover is the masked direction's, server_... the other's."""
    compressor = fresh()
    kept = [deflated(compressor, text) for text in TEXTS[:2]]
    for masked in (True, False):
        data = b"".join(raw(TEXT, p, rsv=RSV1, key=KEY if masked else None) for p in kept)
        for deflate in (Deflate(True, False), Deflate(False, True)):
            resets = (
                deflate.client_no_context_takeover if masked else deflate.server_no_context_takeover
            )
            wire, seen = reader(masked=masked, deflate=deflate)
            wire.feed(data)
            if resets:  # a fresh window per message cannot follow the back-references
                assert seen.log[0] == ("message", TEXT, TEXTS[0], True)
                assert seen.log[1][:2] == ("failed", 1007)
                assert seen.log[1][2].startswith("invalid compressed data")
            else:
                assert seen.log == [("message", TEXT, t, True) for t in TEXTS[:2]]


def test_a_compressed_fragmented_message() -> None:
    payload = deflated(fresh(), TEXTS[0] * 3)
    frames = [
        up(TEXT, payload[:5], fin=False, rsv=RSV1),  # RSV1 on the first frame only
        up(PING, b"x"),
        up(CONT, payload[5:9], fin=False),
        up(CONT, payload[9:]),
    ]
    wire, seen = reader(deflate=Deflate(True, True))
    assert feed_all(wire, frames) == b"".join(frames)
    assert seen.log == [("control", PING, b"x"), ("message", TEXT, TEXTS[0] * 3, True)]


def test_a_compressed_frame_ending_with_a_final_block() -> None:
    # RFC 7692 7.2.3.3 lets a sender end each message with BFINAL set.
    compressor = fresh()
    payload = compressor.compress(TEXTS[0]) + compressor.flush(zlib.Z_FINISH)
    data = up(TEXT, payload, rsv=RSV1) + up(TEXT, deflated(fresh(), TEXTS[1]), rsv=RSV1)
    wire, seen = reader(deflate=Deflate(True, True))
    assert b"".join(wire.feed(data)) == data
    assert seen.log == [("message", TEXT, TEXTS[0], True), ("message", TEXT, TEXTS[1], True)]


def test_a_compressed_message_inflating_past_the_limit() -> None:
    bomb = deflated(fresh(), b"a" * 100_000)
    assert len(bomb) < 200
    before = up(TEXT, deflated(fresh(), b"fine"), rsv=RSV1)
    wire, seen = reader(deflate=Deflate(True, True), max_size=1000)
    out = wire.feed(before + up(TEXT, bomb, rsv=RSV1) + up(TEXT, b"after"))
    assert out == [before]
    assert seen.log == [
        ("message", TEXT, b"fine", True),
        ("failed", 1009, "message of at least 1001 bytes", 1001),
    ]
    assert wire.stopped


def test_invalid_compressed_data() -> None:
    wire, seen = reader(deflate=Deflate(True, True))
    assert wire.feed(up(TEXT, b"\xff\xfe\xfd", rsv=RSV1)) == []
    assert seen.log[0][:2] == ("failed", 1007)
    assert wire.stopped


# -- hold: a fragmented message kept whole -----------------------------------------------------


def test_hold_keeps_a_fragmented_message_until_it_is_whole() -> None:
    frames = [
        up(TEXT, b"[3,", fin=False),
        up(PING, b"p"),
        up(CONT, b'"id"', fin=False),
        up(CONT, b",{}]"),
    ]
    wire, seen = reader()
    wire.hold = True
    outs = [wire.feed(f) for f in frames]
    assert outs == [[], [frames[1]], [], [frames[0] + frames[2] + frames[3]]]
    assert seen.log == [("control", PING, b"p"), ("message", TEXT, b'[3,"id",{}]', False)]


def test_hold_and_a_refused_message_is_taken_out_whole() -> None:
    answer = [up(TEXT, b'[3,"mine"', fin=False), up(CONT, b",{}]")]
    after = up(TEXT, b'[2,"9","Heartbeat",{}]')
    wire, seen = reader(Seen(lambda opcode, payload: b'"mine"' in payload))
    wire.hold = True
    assert wire.feed(answer[0]) == []
    assert wire.in_message
    assert wire.feed(answer[1] + after) == [after]
    assert not midway(wire)
    assert [e[2] for e in seen.log] == [b'[3,"mine",{}]', b'[2,"9","Heartbeat",{}]']


def midway(wire: WireReader) -> bool:
    """``wire.in_message``, read anew (an assert on the property narrows it for mypy)."""
    return wire.in_message


def test_a_refused_single_frame_message_is_taken_out_without_hold() -> None:
    before, mine, after = up(TEXT, b"1"), up(TEXT, b"mine"), up(TEXT, b"2")
    wire, _ = reader(Seen(lambda opcode, payload: payload == b"mine"))
    assert wire.feed(before + mine + after) == [before, after]


def test_a_refused_fragmented_message_not_held_is_forwarded_anyway() -> None:
    frames = [up(TEXT, b"mi", fin=False), up(CONT, b"ne")]
    wire, seen = reader(Seen(lambda opcode, payload: payload == b"mine"))
    assert feed_all(wire, frames) == b"".join(frames)  # its first fragment was gone already
    assert seen.log == [("message", TEXT, b"mine", False)]


def test_hold_set_in_the_middle_of_a_message_does_not_hold_it() -> None:
    frames = [up(TEXT, b"a", fin=False), up(CONT, b"b")]
    wire, _ = reader()
    assert wire.feed(frames[0]) == [frames[0]]
    wire.hold = True
    assert wire.feed(frames[1]) == [frames[1]]


def test_hold_keeps_a_compressed_message_and_the_next_still_inflates() -> None:
    answer = deflated(fresh(), b'[3,"mine",{"status":"Accepted"}]')
    nxt = deflated(fresh(), b'[2,"5","StatusNotification",{"status":"Accepted"}]')
    data = (
        up(TEXT, answer[:4], fin=False, rsv=RSV1) + up(CONT, answer[4:]) + up(TEXT, nxt, rsv=RSV1)
    )
    wire, seen = reader(Seen(lambda o, p: b'"mine"' in p), deflate=Deflate(True, True))
    wire.hold = True
    assert wire.feed(data) == [up(TEXT, nxt, rsv=RSV1)]
    assert seen.log[-1] == (
        "message",
        TEXT,
        b'[2,"5","StatusNotification",{"status":"Accepted"}]',
        True,
    )


# -- the proxy's own frames ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
@pytest.mark.parametrize("opcode", [TEXT, BINARY])
def test_frame_unmasked_is_the_minimal_frame(size: int, opcode: int) -> None:
    payload = b"\x81" * size
    assert frame(opcode, payload, mask=False) == raw(opcode, payload)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536])
def test_frame_masked_reads_back_with_a_fresh_key(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    one, two = frame(TEXT, payload, mask=True), frame(TEXT, payload, mask=True)
    head = 2 + (2 if 126 <= size < 65536 else 8 if size >= 65536 else 0)
    assert one[:head] == raw(TEXT, payload, key=KEY)[:head]
    assert one[head : head + 4] != two[head : head + 4]  # 2**-32 to fail by chance
    wire, seen = reader(masked=True)
    assert b"".join(wire.feed(one + two)) == one + two
    assert seen.log == [("message", TEXT, payload, False)] * 2


def test_frame_of_a_control_frame() -> None:
    assert frame(PING, b"tok", mask=False) == b"\x89\x03tok"
    wire, seen = reader(masked=True)
    wire.feed(frame(CLOSE, close_payload(1001, "going"), mask=True))
    assert seen.log == [("control", CLOSE, b"\x03\xe9going")]


def test_close_payload_and_parse_close() -> None:
    assert close_payload(1000, "bye") == b"\x03\xe8bye"
    assert close_payload(4000, "") == b"\x0f\xa0"
    assert close_payload(None, "ignored") == b""
    assert parse_close(b"") == (1005, "")
    assert parse_close(b"\x03") == (1005, "")
    assert parse_close(b"\x03\xe8") == (1000, "")
    assert parse_close(close_payload(1011, "é ☃")) == (1011, "é ☃")
    assert parse_close(b"\x03\xea\xff ok") == (1002, "\ufffd ok")


@pytest.mark.parametrize(
    "reason",
    [
        pytest.param("r" * 200, id="ascii"),
        pytest.param("é" * 100, id="2-byte"),
        pytest.param("☃" * 50, id="3-byte"),  # 41 snowmen are 123 bytes exactly
        pytest.param("x" + "𝄞" * 40, id="4-byte"),
    ],
)
def test_a_long_close_reason_is_cut_to_a_valid_close_frame(reason: str) -> None:
    payload = close_payload(1001, reason)
    assert len(payload) <= 125  # a control frame's limit
    text = payload[2:].decode("utf-8")  # RFC 6455 5.5.1: the reason is UTF-8
    assert reason.startswith(text)
    assert len(text.encode()) > 119  # cut no shorter than it had to be
