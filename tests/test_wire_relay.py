"""The pass-through relay with real peers on loopback: the peers' own frames cross.

After both opening handshakes the proxy forwards the bytes each peer sent, masking keys
and compression included. Where framing matters the peers here are raw TCP sockets
that write and read frames by hand (``helpers_ws.ws_frame`` / ``read_frame``), so the
bytes one peer wrote can be compared with the bytes the other read; elsewhere they are
websockets clients and servers. Every test records into a real DuckDB file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from helpers_ws import (
    Message,
    PingCountingClient,
    as_message,
    close_rcvd,
    drain,
    one_connection,
    raw_charger,
    raw_csms,
    raw_upgrade_request,
    read_frame,
    read_to_eof,
    receive,
    send,
    upstream,
    wait_until,
    wire,
    ws_frame,
)
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from ocproxy.core import wire as core_wire
from ocproxy.core.frames import Direction
from ocproxy.errors import InjectError
from ocproxy.proxy import relay

TIMEOUT = 20
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
KEYS = [b"\x01\x02\x03\x04", b"\xa5\x5a\xff\x00", b"\x00\x00\x00\x00", b"\xde\xad\xbe\xef"]


def key(i: int) -> bytes:
    return KEYS[i % len(KEYS)]


@pytest.fixture(autouse=True)
def _shared_empty_lists_stay_empty() -> Iterator[None]:
    """Legs with nothing waiting share empty lists (memory per charger): no test, the
    injections at message boundaries included, may find one appended to."""
    yield
    assert (relay._NO_PENDING, relay._NO_HELD, core_wire._NOTHING) == ([], [], [])


def frames_of(rec: Any, direction: str) -> list[Message]:
    return wire(rec.frames(one_connection(rec)["connection_id"]), direction)


def close_of(rec: Any) -> tuple[Any, Any, Any]:
    row = one_connection(rec)
    return row["closed_by"], row["close_code"], row["close_reason"]


async def write_in_pieces(writer: asyncio.StreamWriter, data: bytes, seed: int) -> None:
    """Write ``data`` in uneven pieces, letting each reach the socket (not one segment)."""
    rng = random.Random(seed)
    pos = 0
    while pos < len(data):
        step = rng.choice([1, 2, 3, 7, 64, 1000])
        writer.write(data[pos : pos + step])
        await writer.drain()
        if rng.random() < 0.2:
            await asyncio.sleep(0.001)
        pos += step


# -- framing, exactly ---------------------------------------------------------------------


def _charger_stream() -> tuple[bytes, list[Message]]:
    """Masked frames as a charger may send them, and the messages they make."""
    frames = [
        ws_frame(TEXT, b'[2,"1","Heartbeat",{}]', key=key(0)),
        ws_frame(TEXT, b'[2,"2","DataTransfer",{"data":"', fin=False, key=key(1)),
        ws_frame(PING, b"between-1", key=key(2)),
        ws_frame(CONT, b"x" * 300, fin=False, key=key(3)),  # 16-bit length
        ws_frame(PONG, b"unsolicited", key=key(0)),
        ws_frame(PING, b"between-2", key=key(1)),
        ws_frame(CONT, b'"}]', key=key(2)),
        ws_frame(BINARY, bytes(range(256)) * 300, key=key(3)),  # 64-bit length
        ws_frame(BINARY, b"\x00\xff", fin=False, key=key(0), form=64),  # 64-bit, not minimal
        ws_frame(CONT, b"", fin=False, key=key(1)),
        ws_frame(CONT, b"\x80", key=key(2), form=16),
        ws_frame(TEXT, b"", key=key(3)),
    ]
    messages: list[Message] = [
        ("text", b'[2,"1","Heartbeat",{}]'),
        ("text", b'[2,"2","DataTransfer",{"data":"' + b"x" * 300 + b'"}]'),
        ("binary", bytes(range(256)) * 300),
        ("binary", b"\x00\xff\x80"),
        ("text", b""),
    ]
    return b"".join(frames), messages


def _csms_stream() -> tuple[bytes, list[Message]]:
    """Unmasked frames as a CSMS may send them, and the messages they make."""
    frames = [
        ws_frame(TEXT, b'[3,"1",{"currentTime":"2025-01-01T00:00:00Z"}]'),
        ws_frame(BINARY, b"\x01", fin=False),
        ws_frame(PING, b""),
        ws_frame(CONT, b"\x02" * 70_000, fin=False),
        ws_frame(PING, b"p" * 125),
        ws_frame(CONT, b"\x03"),
        ws_frame(TEXT, '[2,"9","DataTransfer",{"data":"é☃"}]'.encode(), form=16),
    ]
    messages: list[Message] = [
        ("text", b'[3,"1",{"currentTime":"2025-01-01T00:00:00Z"}]'),
        ("binary", b"\x01" + b"\x02" * 70_000 + b"\x03"),
        ("text", '[2,"9","DataTransfer",{"data":"é☃"}]'.encode()),
    ]
    return b"".join(frames), messages


@contextlib.asynccontextmanager
async def raw_pair(proxy_factory: Any) -> AsyncIterator[tuple[Any, Any, Any, Any, Any, Any]]:
    """A raw charger and a raw CSMS through the proxy (no keepalive): the proxy, its
    recording box, then the charger's and the CSMS's reader and writer."""
    async with (
        raw_csms() as csms,
        proxy_factory(upstream=f"ws://127.0.0.1:{csms.port}", ping_interval=None) as (
            proxy,
            box,
        ),
    ):
        c_reader, c_writer, _ = await raw_charger(proxy.server.port)
        s_reader, s_writer, _ = await csms.peers.get()
        yield proxy, box, c_reader, c_writer, s_reader, s_writer


@pytest.mark.parametrize("initiator", ["charger", "csms"])
async def test_raw_frames_cross_byte_exact_with_controls_between_fragments(
    proxy_factory: Any, initiator: str
) -> None:
    """Both ways: fragments, pings and pongs between them, every length form, masking
    keys: what one raw peer wrote is what the other read, and so is the closing handshake."""
    up_bytes, up_messages = _charger_stream()
    down_bytes, down_messages = _csms_stream()
    first_close = ws_frame(CLOSE, b"\x0f\xa1" + "bye ☃".encode(), key=key(1))  # 4001
    reply_close = ws_frame(CLOSE, b"\x0f\xa1" + "bye ☃".encode())
    if initiator == "csms":
        first_close, reply_close = (
            ws_frame(CLOSE, b"\x0f\xa2going"),  # 4002
            ws_frame(CLOSE, b"\x0f\xa2going", key=key(2)),
        )
    async with asyncio.timeout(TIMEOUT):
        async with raw_pair(proxy_factory) as (_proxy, box, c_reader, c_writer, s_reader, s_writer):
            async with asyncio.TaskGroup() as group:
                group.create_task(write_in_pieces(c_writer, up_bytes, 1))
                group.create_task(write_in_pieces(s_writer, down_bytes, 2))
                at_csms = group.create_task(s_reader.readexactly(len(up_bytes)))
                at_charger = group.create_task(c_reader.readexactly(len(down_bytes)))
            assert at_csms.result() == up_bytes
            assert at_charger.result() == down_bytes
            # The closing handshake, end to end.
            if initiator == "charger":
                first = (c_writer, s_reader)
                reply = (s_writer, c_reader)
            else:
                first = (s_writer, c_reader)
                reply = (c_writer, s_reader)
            first[0].write(first_close)
            assert (await read_frame(first[1])).wire == first_close
            reply[0].write(reply_close)
            assert (await read_frame(reply[1])).wire == reply_close
            s_writer.close()  # the server ends the TCP connection (RFC 6455 7.1.1)
            assert await read_to_eof(c_reader) == b""  # and the proxy ends the charger's
            c_writer.close()
    rec = box[0]
    assert frames_of(rec, "to_csms") == up_messages  # one row per message, not per frame
    assert frames_of(rec, "to_charger") == down_messages
    if initiator == "charger":
        assert close_of(rec) == ("charger", 4001, "bye ☃")
    else:
        assert close_of(rec) == ("csms", 4002, "going")
    assert rec.stats.frames_lost == 0


async def test_a_close_without_a_code_crosses_and_is_recorded_1005(proxy_factory: Any) -> None:
    async with asyncio.timeout(TIMEOUT):
        async with raw_pair(proxy_factory) as (_proxy, box, c_reader, c_writer, s_reader, s_writer):
            c_writer.write(ws_frame(CLOSE, key=key(0)))
            assert (await read_frame(s_reader)).wire == ws_frame(CLOSE, key=key(0))
            s_writer.write(ws_frame(CLOSE))
            assert (await read_frame(c_reader)).wire == ws_frame(CLOSE)
            s_writer.close()
            assert await read_to_eof(c_reader) == b""
            c_writer.close()
    assert close_of(box[0]) == ("charger", 1005, "")


# -- permessage-deflate end to end ----------------------------------------------------------


def _compressible(rng: random.Random, i: int, who: str) -> Message:
    size = rng.choice([0, 1, 20, 300, 5000, 70_000])
    words = ["Voltage", "Current.Import", "Energy.Active.Import.Register", "Outlet", "L1"]
    data = " ".join(rng.choice(words) for _ in range(size // 8 + 1))[:size]
    if i % 5 == 4:
        return "binary", rng.randbytes(size)  # incompressible too
    return "text", json.dumps([2, f"{who}{i}", "DataTransfer", {"data": data}]).encode()


async def test_deflate_leg_pair_many_messages_both_ways(proxy_factory: Any) -> None:
    rng = random.Random(7)
    count = 150
    up_msgs = [_compressible(rng, i, "u") for i in range(count)]
    down_msgs = [_compressible(rng, i, "d") for i in range(count)]
    upstream_got: list[Message] = []

    async def csms(ws: ServerConnection) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(_send_all(ws, down_msgs))
            upstream_got.extend(await receive(ws, count))
        await ws.wait_closed()

    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream(csms, compression="deflate", max_size=None) as up,
            proxy_factory(upstream=up.url) as (proxy, box),
            connect(proxy.url + "/ocpp/CP1", compression="deflate", max_size=None) as charger,
        ):
            async with asyncio.TaskGroup() as group:
                group.create_task(_send_all(charger, up_msgs))
                charger_got = await receive(charger, count)
            await wait_until(lambda: len(upstream_got) == count, "the CSMS got every message")
            csms_side = up.handled[0].protocol.extensions
            assert [e.name for e in charger.protocol.extensions] == ["permessage-deflate"]
            assert [e.name for e in csms_side] == ["permessage-deflate"]
            # Both peers reset their window per message, so either stream can lose one.
            assert charger.protocol.extensions[0].local_no_context_takeover  # type: ignore[attr-defined]
            assert csms_side[0].local_no_context_takeover  # type: ignore[attr-defined]
            await charger.close()
    assert upstream_got == up_msgs
    assert charger_got == down_msgs
    rec = box[0]
    # Recorded inflated: the messages as the peers sent them, not their deflated bytes.
    assert frames_of(rec, "to_csms") == up_msgs
    assert frames_of(rec, "to_charger") == down_msgs
    assert rec.stats.frames_lost == 0
    assert close_of(rec)[:2] == ("charger", 1000)


async def _send_all(ws: Any, messages: list[Message]) -> None:
    for message in messages:
        await send(ws, message)


async def test_deflate_fragmented_messages_with_pings_between(proxy_factory: Any) -> None:
    """websockets compresses a fragmented message as one: RSV1 on its first frame."""
    parts = ['[2,"1","DataTransfer",{"data":"', "Energy " * 2000, '"}]']
    whole = "".join(parts).encode()

    async def csms(ws: ServerConnection) -> None:
        got = await ws.recv(decode=False)
        await ws.send(iter([got[:10], got[10:5000], got[5000:]]), text=True)
        await ws.wait_closed()

    async def fragments() -> Any:
        for i, part in enumerate(parts):
            await charger.ping(b"mid%d" % i)  # a ping before each fragment
            yield part

    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream(csms, compression="deflate") as up,
            proxy_factory(upstream=up.url) as (proxy, box),
            connect(proxy.url + "/ocpp/CP1", compression="deflate") as charger,
        ):
            await charger.send(fragments())
            assert await charger.recv(decode=False) == whole
            assert up.pings == 3
            await charger.close()
    rec = box[0]
    assert frames_of(rec, "to_csms") == [("text", whole)]
    assert frames_of(rec, "to_charger") == [("text", whole)]


# -- the proxy's own frames go in at message boundaries -----------------------------------------


Row = tuple[str, bytes, bool]  # (direction, raw, injected)


def _recorded(rec: Any) -> list[Row]:
    rows = rec.frames(one_connection(rec)["connection_id"])
    assert [r["seq"] for r in rows] == list(range(len(rows)))
    return [(r["direction"], bytes(r["raw"]), r["injected"]) for r in rows]


def _same_rows(recorded: list[Row], crossed: list[Row]) -> None:
    """The rows are those that crossed (in any order; see the ordering test)."""
    assert sorted(recorded) == sorted(crossed)


async def _inject_towards_charger_mid_message(proxy_factory: Any) -> tuple[list[Row], list[Row]]:
    """The CSMS is half-way through a fragmented message to the charger when the proxy
    injects a CALL towards the charger: the CALL follows the message's last fragment
    (control frames still pass at once). The charger's answer, itself fragmented with
    a ping in between, is taken out whole: the CSMS gets only the ping.

    Returns (rows recorded, rows in the order they crossed)."""
    pieces = [
        ws_frame(TEXT, b'[2,"c1","DataTransfer",', fin=False),
        ws_frame(CONT, b'{"data":"' + b"z" * 200, fin=False),
        ws_frame(PING, b"csms-ping"),
        ws_frame(CONT, b'"}]'),
    ]
    async with asyncio.timeout(TIMEOUT):
        async with raw_pair(proxy_factory) as (proxy, box, c_reader, c_writer, s_reader, s_writer):
            [session] = proxy.server.sessions
            s_writer.write(pieces[0])
            assert (await read_frame(c_reader)).wire == pieces[0]
            async with asyncio.TaskGroup() as group:
                injecting = group.create_task(
                    session.inject(Direction.TO_CHARGER, "GetConfiguration", {"key": []}, 5.0)
                )
                for _ in range(3):
                    await asyncio.sleep(0)  # the inject task runs up to awaiting the answer
                assert not injecting.done()
                for piece in pieces[1:]:
                    s_writer.write(piece)
                    # Had the CALL gone out at once, it would be read here instead.
                    assert (await read_frame(c_reader)).wire == piece
                call = await read_frame(c_reader)
                assert (call.fin, call.opcode, call.masked) == (True, TEXT, False)
                message_id = json.loads(call.payload)[1]
                assert json.loads(call.payload) == [2, message_id, "GetConfiguration", {"key": []}]
                answer = json.dumps([3, message_id, {"configurationKey": []}]).encode()
                ping = ws_frame(PING, b"charger-ping", key=key(1))
                after = ws_frame(TEXT, b'[2,"u1","Heartbeat",{}]', key=key(2))
                c_writer.write(
                    ws_frame(TEXT, answer[:7], fin=False, key=key(0))
                    + ping
                    + ws_frame(CONT, answer[7:], key=key(3))
                    + after
                )
            assert injecting.result() == answer
            assert await s_reader.readexactly(len(ping) + len(after)) == ping + after
            c_writer.write(ws_frame(CLOSE, b"\x03\xe8", key=key(0)))
            assert (await read_frame(s_reader)).opcode == CLOSE
            s_writer.write(ws_frame(CLOSE, b"\x03\xe8"))
            s_writer.close()
            await read_to_eof(c_reader)
            c_writer.close()
    whole = b'[2,"c1","DataTransfer",{"data":"' + b"z" * 200 + b'"}]'
    crossed = [
        ("to_charger", whole, False),
        ("to_charger", call.payload, True),
        ("to_csms", answer, True),
        ("to_csms", b'[2,"u1","Heartbeat",{}]', False),
    ]
    return _recorded(box[0]), crossed


async def _inject_towards_csms_mid_message(proxy_factory: Any) -> tuple[list[Row], list[Row]]:
    """The same the other way: the charger is mid-message when a CALL goes to the CSMS;
    the CSMS's answer never reaches the charger."""
    async with asyncio.timeout(TIMEOUT):
        async with raw_pair(proxy_factory) as (proxy, box, c_reader, c_writer, s_reader, s_writer):
            [session] = proxy.server.sessions
            first = ws_frame(TEXT, b'[2,"m1","MeterValues",', fin=False, key=key(0))
            last = ws_frame(CONT, b'{"connectorId":1,"meterValue":[]}]', key=key(1))
            c_writer.write(first)
            assert (await read_frame(s_reader)).wire == first
            async with asyncio.TaskGroup() as group:
                injecting = group.create_task(
                    session.inject(Direction.TO_CSMS, "Heartbeat", {}, 5.0)
                )
                for _ in range(3):
                    await asyncio.sleep(0)
                c_writer.write(last)
                assert (await read_frame(s_reader)).wire == last
                call = await read_frame(s_reader)
                assert (call.fin, call.opcode, call.masked) == (True, TEXT, True)  # from a client
                message_id = json.loads(call.payload)[1]
                answer = json.dumps([3, message_id, {"currentTime": "now"}]).encode()
                s_writer.write(ws_frame(TEXT, answer))
            assert injecting.result() == answer
            c_writer.write(ws_frame(CLOSE, b"\x03\xe8", key=key(0)))
            assert (await read_frame(s_reader)).opcode == CLOSE
            s_writer.write(ws_frame(CLOSE, b"\x03\xe8"))
            # The charger reads the CSMS's close and nothing else: the answer was taken out.
            assert (await read_frame(c_reader)).wire == ws_frame(CLOSE, b"\x03\xe8")
            s_writer.close()
            await read_to_eof(c_reader)
            c_writer.close()
    crossed = [
        ("to_csms", b'[2,"m1","MeterValues",{"connectorId":1,"meterValue":[]}]', False),
        ("to_csms", call.payload, True),
        ("to_charger", answer, True),
    ]
    return _recorded(box[0]), crossed


async def test_an_injected_call_waits_for_the_last_fragment_of_the_csms_message(
    proxy_factory: Any,
) -> None:
    recorded, crossed = await _inject_towards_charger_mid_message(proxy_factory)
    _same_rows(recorded, crossed)


async def test_an_injected_call_to_the_csms_waits_for_the_charger_message(
    proxy_factory: Any,
) -> None:
    recorded, crossed = await _inject_towards_csms_mid_message(proxy_factory)
    _same_rows(recorded, crossed)


@pytest.mark.parametrize("towards", ["charger", "csms"])
async def test_an_injected_call_is_recorded_in_the_order_it_crossed(
    proxy_factory: Any, towards: str
) -> None:
    scenario = (
        _inject_towards_charger_mid_message
        if towards == "charger"
        else _inject_towards_csms_mid_message
    )
    recorded, crossed = await scenario(proxy_factory)
    assert recorded == crossed


@pytest.mark.parametrize("towards", ["charger", "csms"])
async def test_an_injected_calls_answer_taken_out_of_a_compressed_stream(
    proxy_factory: Any, towards: str
) -> None:
    """The answer comes compressed; the messages after it repeat its text, so a deflater
    keeping its window would refer back into the answer the other peer never got. They
    still inflate there: the answering peer was told to reset its window per message."""
    blob = "".join(random.Random(3).choice("ABCDEFGH") for _ in range(3000))
    follow: list[Message] = [
        ("text", json.dumps([2, f"f{i}", "DataTransfer", {"data": blob + str(i)}]).encode())
        for i in range(5)
    ]

    async def answer_then_follow(ws: Any) -> None:
        """The answering peer: answer the CALL, then send the follow-up messages."""
        call = json.loads(await ws.recv())
        await ws.send(json.dumps([3, call[1], {"data": blob}]))
        for message in follow:
            await send(ws, message)

    got: list[Message] = []

    async def csms(ws: ServerConnection) -> None:
        if towards == "csms":
            await answer_then_follow(ws)
        else:
            got.extend(await receive(ws, len(follow)))
        await ws.wait_closed()

    direction = Direction.TO_CHARGER if towards == "charger" else Direction.TO_CSMS
    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream(csms, compression="deflate") as up,
            proxy_factory(upstream=up.url) as (proxy, box),
            connect(proxy.url + "/ocpp/CP1", compression="deflate") as charger,
        ):
            await wait_until(lambda: len(proxy.server.sessions) == 1, "the session started")
            [session] = proxy.server.sessions
            async with asyncio.TaskGroup() as group:
                injecting = group.create_task(
                    session.inject(direction, "DataTransfer", {"vendorId": "x"}, 5.0)
                )
                if towards == "charger":
                    await answer_then_follow(charger)
                    await wait_until(lambda: len(got) == len(follow), "the CSMS got them all")
                else:
                    got.extend(await receive(charger, len(follow)))
            answer = json.loads(injecting.result())
            assert answer[0] == 3
            assert answer[2] == {"data": blob}
            await charger.close()
    assert got == follow  # never the answer, and each one inflated
    rows = _recorded(box[0])
    away = "to_csms" if towards == "charger" else "to_charger"
    injected = [(f"to_{towards}", True), (away, True)]
    assert [(d, i) for d, _, i in rows] == injected + [(away, False)] * len(follow)
    assert [raw for d, raw, i in rows if not i] == [m[1] for m in follow]


# -- bad input costs only its own connection --------------------------------------------------

HEARTBEAT_ANSWER = b'[3,"%s",{"currentTime":"2025-01-01T00:00:00Z"}]'
BAD_UTF8 = b'[2,"1","DataTransfer",{"data":"\xc3\x28"}]'


@dataclass(frozen=True)
class Bad:
    """A charger that sends ``data`` after its handshake and what it must end with."""

    data: bytes
    code: int  # of the close frame the charger gets
    reason: str  # of that close, and recorded
    closed_by: str


BADS = {
    "BAD-HEADER": Bad(ws_frame(0xB, b"x", key=key(0)), 1002, "invalid opcode: 11", "proxy"),
    "BAD-RSV": Bad(
        ws_frame(TEXT, b"[]", rsv=0x20, key=key(1)), 1002, "reserved bits must be 0", "proxy"
    ),
    "BAD-BIG": Bad(
        ws_frame(BINARY, length=20_000_000, key=key(2)),  # its header alone
        1009,
        "message of at least 20000000 bytes",
        "proxy",
    ),
    "BAD-UNMASKED": Bad(
        ws_frame(TEXT, b'[2,"1","Heartbeat",{}]'), 1002, "incorrect masking", "proxy"
    ),
    # Forwarded as it is: the CSMS judges it (websockets fails it with 1007).
    "BAD-UTF8": Bad(
        ws_frame(TEXT, BAD_UTF8, key=key(3)),
        1007,
        "invalid continuation byte at position 31",
        "csms",
    ),
}


async def _bad_charger(port: int, name: str, start: asyncio.Event) -> tuple[int, str, bytes]:
    """Send the garbage, read the close frame, answer it: (code, reason, rest of stream)."""
    reader, writer, _ = await raw_charger(port, f"/ocpp/{name}")
    await start.wait()
    writer.write(BADS[name].data)
    close = await read_frame(reader)
    assert close.opcode == CLOSE, close
    with contextlib.suppress(ConnectionError):
        writer.write(ws_frame(CLOSE, close.payload, key=key(0)))
    rest = await read_to_eof(reader)
    writer.close()
    return int.from_bytes(close.payload[:2], "big"), close.payload[2:].decode(), rest


async def test_bad_input_under_load_costs_only_its_own_connection(proxy_factory: Any) -> None:
    good_count, round_trips = 20, 30
    at_csms: dict[str, list[Message]] = {}
    csms_closes: dict[str, tuple[int, str]] = {}

    async def csms(ws: ServerConnection) -> None:
        assert ws.request is not None
        name = ws.request.path.rsplit("/", 1)[-1]
        at_csms[name] = []
        try:
            while True:
                message = as_message(await ws.recv())
                at_csms[name].append(message)
                call = json.loads(message[1])
                await ws.send((HEARTBEAT_ANSWER % call[1].encode()).decode())
        except ConnectionClosed:
            close = close_rcvd(ws) or ws.protocol.close_sent
            assert close is not None
            csms_closes[name] = (close.code, close.reason)

    start = asyncio.Event()
    connected = 0

    async def good_charger(url: str, name: str) -> tuple[list[Message], bool]:
        nonlocal connected
        async with connect(f"{url}/ocpp/{name}") as ws:
            connected += 1
            if connected == good_count:
                start.set()
            answers = []
            for i in range(round_trips):
                await ws.send(json.dumps([2, f"{name}-{i}", "Heartbeat", {}]))
                answers.append(as_message(await ws.recv()))
            still_open = ws.state is State.OPEN
        return answers, still_open

    goods = [f"GOOD-{i:02}" for i in range(good_count)]
    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream(csms) as up,
            proxy_factory(upstream=up.url, ping_interval=None) as (proxy, box),
        ):
            async with asyncio.TaskGroup() as group:
                good_tasks = {n: group.create_task(good_charger(proxy.url, n)) for n in goods}
                bad_tasks = {
                    n: group.create_task(_bad_charger(proxy.server.port, n, start)) for n in BADS
                }
            await wait_until(lambda: up.open == 0, "every CSMS connection closed")
    for name, task in good_tasks.items():
        answers, still_open = task.result()
        assert still_open, name
        assert answers == [
            ("text", HEARTBEAT_ANSWER % f"{name}-{i}".encode()) for i in range(round_trips)
        ]
    for name, bad in BADS.items():
        assert bad_tasks[name].result() == (bad.code, bad.reason, b""), name
        assert csms_closes[name] == (bad.code, bad.reason), name
    # No garbage reached the CSMS's handler: the invalid UTF-8 reached its websockets,
    # which failed the connection (the 1007 reason above names the byte).
    assert {n: at_csms[n] for n in BADS} == {n: [] for n in BADS}
    rec = box[0]
    rows = {r["identity"]: r for r in rec.connections()}
    for name, bad in BADS.items():
        row = rows[name]
        assert (row["closed_by"], row["close_code"], row["close_reason"]) == (
            bad.closed_by,
            bad.code,
            bad.reason,
        ), name
    for name in goods:
        frames = rec.frames(rows[name]["connection_id"])
        assert len(frames) == 2 * round_trips
        assert all(f["parse_status"] == "ok" for f in frames)
        assert (rows[name]["closed_by"], rows[name]["close_code"]) == ("charger", 1000)
    [big] = rec.frames(rows["BAD-BIG"]["connection_id"])
    assert (big["parse_status"], big["size"], big["direction"]) == (
        "too_large",
        20_000_000,
        "to_csms",
    )
    [utf8] = rec.frames(rows["BAD-UTF8"]["connection_id"])
    assert (utf8["parse_status"], utf8["opcode"], bytes(utf8["raw"])) == (
        "invalid_utf8",
        "text",
        BAD_UTF8,
    )
    for name in ("BAD-HEADER", "BAD-RSV", "BAD-UNMASKED"):
        assert rec.frames(rows[name]["connection_id"]) == []
    assert rec.stats.frames_lost == 0


async def test_a_masked_frame_from_the_csms_fails_both_legs_1002(proxy_factory: Any) -> None:
    async with asyncio.timeout(TIMEOUT):
        async with (
            raw_csms() as csms,
            proxy_factory(upstream=f"ws://127.0.0.1:{csms.port}", ping_interval=None) as (
                proxy,
                box,
            ),
            connect(proxy.url + "/ocpp/CP1") as charger,
        ):
            s_reader, s_writer, _ = await csms.peers.get()
            s_writer.write(ws_frame(TEXT, b'[3,"1",{}]'))
            assert await charger.recv() == '[3,"1",{}]'
            s_writer.write(ws_frame(TEXT, b'[3,"2",{}]', key=key(1)))
            assert await drain(charger) == []
            close = close_rcvd(charger)
            assert close is not None
            assert (close.code, close.reason) == (1002, "masked frame from server")
            at_csms = await read_frame(s_reader)  # the proxy is the CSMS's client: masked
            assert (at_csms.opcode, at_csms.masked) == (CLOSE, True)
            assert at_csms.payload == b"\x03\xea" + b"masked frame from server"
            assert await read_to_eof(s_reader) == b""  # and its stream is given up at once
    assert close_of(box[0]) == ("proxy", 1002, "masked frame from server")
    assert frames_of(box[0], "to_charger") == [("text", b'[3,"1",{}]')]


VIOLATIONS = {
    # sender: (good frame, bad frame, the close the other peer gets)
    "csms-masked": (
        ws_frame(TEXT, b'[3,"1",{}]'),
        ws_frame(TEXT, b'[3,"2",{}]', key=key(1)),
        (1002, "masked frame from server"),
    ),
    "charger-unmasked": (
        ws_frame(TEXT, b'[2,"1","Heartbeat",{}]', key=key(2)),
        ws_frame(TEXT, b'[2,"2","Heartbeat",{}]'),
        (1002, "incorrect masking"),
    ),
    "charger-too-big": (
        ws_frame(TEXT, b'[2,"1","Heartbeat",{}]', key=key(3)),
        ws_frame(BINARY, length=20_000_000, key=key(0)),
        (1009, "message of at least 20000000 bytes"),
    ),
}


@pytest.mark.parametrize("case", list(VIOLATIONS))
async def test_frames_read_with_a_violation_arrive_before_the_close(
    proxy_factory: Any, case: str
) -> None:
    good, bad, (code, reason) = VIOLATIONS[case]
    async with asyncio.timeout(TIMEOUT):
        async with raw_pair(proxy_factory) as (proxy, box, c_reader, c_writer, s_reader, s_writer):
            await wait_until(lambda: len(proxy.server.sessions) == 1, "the session started")
            sender, receiver = (
                (s_writer, c_reader) if case.startswith("csms") else (c_writer, s_reader)
            )
            sender.write(good + bad)  # one write: one read at the proxy
            first, second = await read_frame(receiver), await read_frame(receiver)
            s_writer.close()
            c_writer.close()
    assert (first.opcode, first.payload) == (TEXT, read_payload(good))
    assert (second.opcode, second.payload) == (CLOSE, code.to_bytes(2, "big") + reason.encode())
    assert close_of(box[0]) == ("proxy", code, reason)


def read_payload(frame: bytes) -> bytes:
    """The unmasked payload of one whole frame written by ``ws_frame``."""
    n = frame[1] & 0x7F
    start = 2 + (4 if frame[1] & 0x80 else 0)
    body = frame[start : start + n]
    if frame[1] & 0x80:
        mask = frame[2:6]
        body = bytes(b ^ mask[i & 3] for i, b in enumerate(body))
    return body


# -- closing --------------------------------------------------------------------------------


@pytest.mark.parametrize("initiator", ["charger", "csms"])
async def test_close_code_and_reason_cross_end_to_end(proxy_factory: Any, initiator: str) -> None:
    code, reason = (4001, "maintenance ☃") if initiator == "charger" else (4002, "reboot é")

    async def csms(ws: ServerConnection) -> None:
        if initiator == "csms":
            await ws.close(code, reason)
        await ws.wait_closed()

    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream(csms) as up,
            proxy_factory(upstream=up.url) as (proxy, box),
            connect(proxy.url + "/ocpp/CP1") as charger,
        ):
            await wait_until(lambda: len(up.handled) == 1, "the CSMS has the connection")
            if initiator == "charger":
                await charger.close(code, reason)
            else:
                await charger.wait_closed()
            await wait_until(lambda: up.open == 0, "the CSMS's connection closed")
            theirs = up.handled[0]
            for ws in (charger, theirs):  # each got the other's close, and its reply
                assert ws.protocol.close_rcvd is not None
                assert (ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason) == (
                    code,
                    reason,
                )
    assert close_of(box[0]) == (initiator, code, reason)


@pytest.mark.parametrize("vanishing", ["charger", "csms"])
async def test_a_peer_vanishing_without_close_gets_the_other_a_1001(
    proxy_factory: Any, vanishing: str
) -> None:
    async def csms(ws: ServerConnection) -> None:
        await ws.send('[2,"1","TriggerMessage",{}]')
        if vanishing == "csms":
            ws.transport.abort()
        await ws.wait_closed()

    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream(csms) as up,
            proxy_factory(upstream=up.url) as (proxy, box),
            connect(proxy.url + "/ocpp/CP1") as charger,
        ):
            assert await charger.recv() == '[2,"1","TriggerMessage",{}]'
            if vanishing == "charger":
                charger.transport.abort()
                await wait_until(lambda: up.open == 0, "the CSMS's connection closed")
                close = close_rcvd(up.handled[0])
            else:
                await charger.wait_closed()
                close = close_rcvd(charger)
            assert close is not None
            assert (close.code, close.reason) == (1001, f"{vanishing} connection lost")
    assert close_of(box[0]) == (vanishing, 1006, "")


# -- pings ---------------------------------------------------------------------------------------


async def test_the_proxys_keepalive_pongs_are_taken_out(proxy_factory: Any) -> None:
    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream() as up,
            # A pong not matched to the proxy's ping would fail the leg after 1 s (1011).
            proxy_factory(upstream=up.url, ping_interval=0.05, ping_timeout=1.0) as (proxy, box),
            connect(
                proxy.url + "/ocpp/CP1", ping_interval=None, create_connection=PingCountingClient
            ) as charger,
        ):
            assert isinstance(charger, PingCountingClient)
            await wait_until(lambda: up.pings >= 5 and charger.pings >= 5, "5 pings each way")
            await asyncio.sleep(0.1)  # a forwarded pong would be on its way by now
            # Each peer answered the proxy's pings; neither got the other's pongs.
            assert (up.pongs, charger.pongs) == (0, 0)
            assert charger.state is State.OPEN
            assert up.handled[0].state is State.OPEN
            await charger.close()
    assert close_of(box[0])[:2] == ("charger", 1000)
    assert box[0].frames() == []  # control frames are not recorded


@pytest.mark.parametrize("pinger", ["charger", "csms"])
async def test_a_peers_own_ping_is_answered_by_the_other_peer(
    proxy_factory: Any, pinger: str
) -> None:
    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream() as up,
            proxy_factory(upstream=up.url, ping_interval=None) as (proxy, box),
            connect(
                proxy.url + "/ocpp/CP1", ping_interval=None, create_connection=PingCountingClient
            ) as charger,
        ):
            assert isinstance(charger, PingCountingClient)
            await wait_until(lambda: len(up.handled) == 1, "the CSMS has the connection")
            ws, other = (charger, up) if pinger == "charger" else (up.handled[0], charger)
            for payload in (b"", b"hello", b"x" * 125):
                pong = await ws.ping(payload)
                await pong  # the other peer's pong, with the same payload
            assert other.pings == 3
            assert (up.pongs, charger.pongs) == ((3, 0) if pinger == "csms" else (0, 3))
            await charger.close()
    assert box[0].frames() == []


# -- the proxy's own close -----------------------------------------------------------------------


async def test_the_proxys_close_with_a_long_reason_is_a_valid_close(proxy_factory: Any) -> None:
    reason = "é" * 100  # 200 bytes of UTF-8; byte 123 is inside an "é"
    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream() as up,
            proxy_factory(upstream=up.url) as (proxy, box),
            connect(proxy.url + "/ocpp/CP1") as charger,
        ):
            await wait_until(lambda: len(proxy.server.sessions) == 1, "the session started")
            [session] = proxy.server.sessions
            await session.shutdown(4000, reason)
            await wait_until(lambda: up.open == 0, "the CSMS's connection closed")
            for ws in (charger, up.handled[0]):
                close = close_rcvd(ws)
                assert close is not None
                assert close.code == 4000
                assert reason.startswith(close.reason)
    assert close_of(box[0]) == ("proxy", 4000, reason)


HIGH_BIT = "the most significant bit of a 64-bit length must be 0"


def close_of_row(row: dict[str, Any]) -> tuple[Any, Any, Any]:
    return row["closed_by"], row["close_code"], row["close_reason"]


async def test_a_frame_length_with_its_high_bit_set_costs_only_its_connection(
    proxy_factory: Any,
) -> None:
    # RFC 6455 5.2: the most significant bit of a 64-bit length must be 0.
    header = bytes([0x82, 0xFF]) + (2**64 - 1).to_bytes(8, "big") + key(0)

    async def echo(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                await ws.send(message)

    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream(echo) as up,
            proxy_factory(upstream=up.url, ping_interval=None) as (proxy, box),
            connect(proxy.url + "/ocpp/GOOD") as good,
        ):
            await good.send('[2,"1","Heartbeat",{}]')
            assert await good.recv() == '[2,"1","Heartbeat",{}]'
            reader, writer, _ = await raw_charger(proxy.server.port, "/ocpp/BAD")
            writer.write(header)
            close = await read_frame(reader)
            writer.close()
            for i in range(2, 5):
                await good.send(f'[2,"{i}","Heartbeat",{{}}]')
                assert await good.recv() == f'[2,"{i}","Heartbeat",{{}}]'
            await good.close()
    assert (close.opcode, close.payload) == (CLOSE, b"\x03\xea" + HIGH_BIT.encode())
    rec = box[0]
    assert rec.stats.errors == []
    assert rec.stats.frames_lost == 0
    rows = {r["identity"]: r for r in rec.connections()}
    assert set(rows) == {"GOOD", "BAD"}
    assert len(rec.frames(rows["GOOD"]["connection_id"])) == 8
    assert close_of_row(rows["BAD"]) == ("proxy", 1002, HIGH_BIT)


async def test_a_csms_keeping_its_compression_context(proxy_factory: Any) -> None:
    """A CSMS may refuse to reset its window (it then breaks RFC 7692's rule for an offer
    with server_no_context_takeover, but it happens): its messages, which refer back to
    the ones before, are still recorded inflated; an injection towards it is refused,
    since its answer could not be taken out."""
    texts = [json.dumps([2, f"s{i}", "DataTransfer", {"data": "Energy" * 50}]) for i in range(3)]
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    payloads = [
        (compressor.compress(t.encode()) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4] for t in texts
    ]
    async with asyncio.timeout(TIMEOUT):
        async with (
            raw_csms(extensions="permessage-deflate") as csms,
            proxy_factory(upstream=f"ws://127.0.0.1:{csms.port}", ping_interval=None) as (
                proxy,
                box,
            ),
            connect(proxy.url + "/ocpp/CP1", compression="deflate") as charger,
        ):
            _, s_writer, request = await csms.peers.get()
            assert b"server_no_context_takeover" in request
            s_writer.write(b"".join(ws_frame(TEXT, p, rsv=0x40) for p in payloads))
            assert [await charger.recv() for _ in texts] == texts
            [session] = proxy.server.sessions
            with pytest.raises(InjectError, match="keeps its compression context"):
                await session.inject(Direction.TO_CSMS, "Heartbeat", {}, 1.0)
            s_writer.write(ws_frame(CLOSE, b"\x03\xe8"))
            await charger.wait_closed()
            s_writer.close()
    assert frames_of(box[0], "to_charger") == [("text", t.encode()) for t in texts]


# -- frames that come with the opening handshake ----------------------------------------------


async def test_frames_that_come_with_the_handshakes_are_relayed(proxy_factory: Any) -> None:
    """A charger that writes frames right behind its upgrade request, and a CSMS that
    writes frames in the same segment as its 101: nothing is lost or parsed twice."""
    from_csms = ws_frame(TEXT, b'[2,"s1","TriggerMessage",{}]') + ws_frame(PING, b"early")
    from_charger = ws_frame(TEXT, b'[2,"c1","BootNotification",{}]', key=key(1)) + ws_frame(
        BINARY, b"\x00\x01", key=key(2)
    )
    async with asyncio.timeout(TIMEOUT):
        async with (
            raw_csms(greeting=from_csms) as csms,
            proxy_factory(upstream=f"ws://127.0.0.1:{csms.port}", ping_interval=None) as (
                proxy,
                box,
            ),
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
            writer.write(raw_upgrade_request(proxy.server.port) + from_charger)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 ")
            s_reader, s_writer, _ = await csms.peers.get()
            assert await reader.readexactly(len(from_csms)) == from_csms
            assert await s_reader.readexactly(len(from_charger)) == from_charger
            s_writer.close()
            writer.close()
    assert frames_of(box[0], "to_csms") == [
        ("text", b'[2,"c1","BootNotification",{}]'),
        ("binary", b"\x00\x01"),
    ]
    assert frames_of(box[0], "to_charger") == [("text", b'[2,"s1","TriggerMessage",{}]')]


async def test_a_charger_not_answering_the_keepalive_is_closed_1011(proxy_factory: Any) -> None:
    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream() as up,
            proxy_factory(upstream=up.url, ping_interval=0.05, ping_timeout=0.3) as (proxy, box),
        ):
            reader, writer, _ = await raw_charger(proxy.server.port)
            pings = 0
            while (got := await read_frame(reader)).opcode == PING:  # never answered
                assert not got.masked
                pings += 1
            assert pings >= 1
            assert (got.opcode, got.payload) == (CLOSE, b"\x03\xf3keepalive ping timeout")
            writer.write(ws_frame(CLOSE, got.payload, key=key(0)))
            assert await read_to_eof(reader) == b""
            writer.close()
            await wait_until(lambda: up.open == 0, "the CSMS's connection closed")
            close = close_rcvd(up.handled[0])
            assert close is not None
            assert (close.code, close.reason) == (1011, "keepalive ping timeout")
            assert up.pongs == 0
    assert close_of(box[0]) == ("proxy", 1011, "keepalive ping timeout")


@pytest.mark.parametrize("with_close", [False, True])
async def test_a_csms_hanging_up_right_after_its_101(proxy_factory: Any, with_close: bool) -> None:
    """The CSMS leg may end before the relay takes it over: the charger is still told."""
    greeting = ws_frame(CLOSE, b"\x03\xe8bye") if with_close else b""
    async with asyncio.timeout(TIMEOUT):
        async with (
            raw_csms(greeting=greeting, hangup=True) as csms,
            proxy_factory(
                upstream=f"ws://127.0.0.1:{csms.port}", ping_interval=None, close_timeout=2.0
            ) as (proxy, box),
            connect(proxy.url + "/ocpp/CP1") as charger,
        ):
            await charger.wait_closed()
            close = close_rcvd(charger)
            assert close is not None
            expected = (1000, "bye") if with_close else (1001, "csms connection lost")
            assert (close.code, close.reason) == expected
            await wait_until(lambda: not proxy.server.sessions, "the session ended")
    assert close_of(box[0]) == (("csms", 1000, "bye") if with_close else ("csms", 1006, ""))
