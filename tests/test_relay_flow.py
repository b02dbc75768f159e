"""The relay's own flow: messages held until a session starts, fragments, backpressure.

The relay forwards each message in the data callback of the leg it arrived on, so
nothing but these rules stands between a fast sender and the proxy's memory: a leg
stops being read while the other leg's write buffer is full or the recorder is behind.
Raw websockets peers on loopback, a real recording.
"""

from __future__ import annotations

import asyncio
from typing import Any

from helpers_ws import (
    Message,
    one_connection,
    raw_upgrade_request,
    receive,
    send,
    upstream,
    wait_until,
    wire,
)
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection

TIMEOUT = 30


def _frames(rec: Any, direction: str) -> list[Message]:
    return wire(rec.frames(one_connection(rec)["connection_id"]), direction)


async def test_csms_speaking_first_is_held_then_relayed_in_order(proxy_factory: Any) -> None:
    # The CSMS's handler runs as soon as its handshake is done, while the charger's
    # handshake is still going on: its messages reach the proxy before the relay of
    # this connection exists, more of them than the proxy holds before it stops reading.
    first: list[Message] = [("text", b'[2,"%d","TriggerMessage",{}]' % i) for i in range(40)]

    async def csms(ws: ServerConnection) -> None:
        for message in first:
            await send(ws, message)
        await ws.wait_closed()

    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream(csms) as up,
            proxy_factory(upstream=up.url) as (proxy, box),
            connect(proxy.url + "/ocpp/CP1") as charger,
        ):
            assert await receive(charger, len(first)) == first
            await charger.close()
    rec = box[0]
    assert _frames(rec, "to_charger") == first
    assert rec.stats.frames_lost == 0


async def test_fragmented_messages_cross_whole(proxy_factory: Any) -> None:
    text_parts = ['[2,"1","DataTransfer",{"data":"', "x" * 1000, '"}]']
    binary_parts = [b"\x00\x01", b"\xff" * 3000, b"\x02"]

    async def csms(ws: ServerConnection) -> None:
        got = [await ws.recv(decode=False) for _ in range(2)]
        await ws.send(iter(binary_parts))  # fragmented the other way too
        await ws.send(got[0], text=True)
        await ws.wait_closed()

    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream(csms) as up,
            proxy_factory(upstream=up.url) as (proxy, box),
            connect(proxy.url + "/ocpp/CP1") as charger,
        ):
            await charger.send(iter(text_parts))
            await charger.send(iter(binary_parts))
            back = await receive(charger, 2)
            await charger.close()
    whole_text = "".join(text_parts).encode()
    whole_binary = b"".join(binary_parts)
    assert back == [("binary", whole_binary), ("text", whole_text)]
    rec = box[0]
    # One row per message, not per fragment.
    assert _frames(rec, "to_csms") == [("text", whole_text), ("binary", whole_binary)]
    assert _frames(rec, "to_charger") == back


async def test_csms_not_reading_stops_the_proxy_reading_the_charger(proxy_factory: Any) -> None:
    size, count = 1 << 20, 150  # 150 MB offered; loopback and websockets hold ~30 MB
    reading = asyncio.Event()
    got: list[bytes] = []

    async def csms(ws: ServerConnection) -> None:
        await reading.wait()
        got.extend([await ws.recv(decode=False) for _ in range(count)])
        await ws.wait_closed()

    sent = 0

    async def flood(charger: Any) -> None:
        nonlocal sent
        for i in range(count):
            await charger.send(i.to_bytes(4, "big") * (size // 4))
            sent += 1

    async with asyncio.timeout(TIMEOUT):
        async with (
            # max_queue=1: the stand-in CSMS itself buffers one message, not sixteen.
            upstream(csms, compression=None, max_size=None, max_queue=1) as up,
            proxy_factory(upstream=up.url, max_message_size=2 * size) as (proxy, box),
            connect(proxy.url + "/ocpp/CP1", compression=None) as charger,
        ):
            async with asyncio.TaskGroup() as group:
                group.create_task(flood(charger))
                await _stalls(lambda: sent)
                # Without the proxy's flow control it would read the charger's whole
                # flood into its own memory, and the charger would never stall.
                assert sent < count // 2, f"the charger sent {sent} MB unhindered"
                reading.set()
            await wait_until(lambda: len(got) == count, "the CSMS got every message", 20)
            await charger.close()
    assert [m[:4] for m in got] == [i.to_bytes(4, "big") for i in range(count)]
    rec = box[0]
    assert rec.stats.frames_recorded == count
    assert rec.stats.frames_lost == 0


async def test_a_recorder_behind_pauses_reading_and_loses_nothing(proxy_factory: Any) -> None:
    count = 300
    up_msgs: list[Message] = [("text", b'[2,"u%d","Heartbeat",{}]' % i) for i in range(count)]
    down_msgs: list[Message] = [("text", b'[2,"d%d","ClearCache",{}]' % i) for i in range(count)]
    upstream_got: list[Message] = []

    async def csms(ws: ServerConnection) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(_send_all(ws, down_msgs))
            upstream_got.extend(await receive(ws, count))
        await ws.wait_closed()

    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream(csms) as up,
            proxy_factory(upstream=up.url, recorder_options={"queue_limit": 5}) as (proxy, box),
            connect(proxy.url + "/ocpp/CP1") as charger,
        ):
            async with asyncio.TaskGroup() as group:
                group.create_task(_send_all(charger, up_msgs))
                charger_got = await receive(charger, count)
            await charger.close()
    assert upstream_got == up_msgs
    assert charger_got == down_msgs
    rec = box[0]
    assert _frames(rec, "to_csms") == up_msgs
    assert _frames(rec, "to_charger") == down_msgs
    # The writer polls every few ms: a queue of 5 fills long before, so the relay waited.
    assert rec.stats.backpressure_waits > 0
    assert rec.stats.frames_lost == 0


async def _send_all(ws: Any, messages: list[Message]) -> None:
    for message in messages:
        await send(ws, message)


async def _stalls(progress: Any, quiet: float = 1.0) -> None:
    """Return once ``progress()`` has not moved for ``quiet`` seconds."""
    last = -1
    while (now := progress()) != last:
        last = now
        await asyncio.sleep(quiet)


async def test_a_held_csms_leg_still_closes_when_the_charger_goes(proxy_factory: Any) -> None:
    # The CSMS talks at once, more than the proxy holds before it stops reading that
    # leg; then the charger vanishes before its session starts. Closing the CSMS leg
    # needs the CSMS's Close frame read: the held leg must be read again for it.
    async def chatty(ws: ServerConnection) -> None:
        for i in range(40):
            await ws.send(f'[2,"{i}","TriggerMessage",{{}}]')
        await ws.wait_closed()

    async def slow_accept(connection: ServerConnection, request: Any) -> None:
        await asyncio.sleep(0.2)  # the charger is gone by the time the CSMS accepts

    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream(chatty, process_request=slow_accept) as up,
            proxy_factory(upstream=up.url, close_timeout=20.0) as (proxy, box),
        ):
            _, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
            writer.write(raw_upgrade_request(proxy.server.port))
            await writer.drain()
            await wait_until(lambda: len(up.requests) == 1, "upstream got the request")
            writer.transport.abort()
            await wait_until(lambda: len(up.handled) == 1, "the CSMS accepted and talks")
            # Well under close_timeout: the close handshake completed, nothing timed out.
            await wait_until(lambda: up.open == 0, "upstream connection closed", 5.0)
    assert box[0].stats.frames_lost == 0
