"""Every TCP connection the proxy accepts leaves a row, and a fleet dialling at once waits
its turn instead of being refused (issue 13 item 3, issue 14 item 1)."""

from __future__ import annotations

import asyncio
import resource
from dataclasses import replace
from typing import Any

from helpers_ws import raw_upgrade_request, upstream, wait_until
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from ocproxy.proxy.server import ProxyServer, raise_open_files_limit
from ocproxy.recorder.writer import Recorder

TIMEOUT = 20.0


async def _raw(port: int, data: bytes, *, then_wait: float = 0.0) -> bytes:
    """Send ``data`` on a plain TCP connection; whatever the proxy answers before closing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if then_wait:
            await asyncio.sleep(then_wait)
        return await reader.read()
    finally:
        writer.close()


def _attempts(rec: Any) -> list[dict[str, Any]]:
    return rec.rows(
        "SELECT handshake_status, close_reason, closed_by, identity, path FROM connections "
        "ORDER BY opened_at"
    )


async def test_attempts_given_up_before_the_handshake_are_recorded(proxy_factory: Any) -> None:
    long_url = b"GET /ocpp/" + b"x" * 65_536 + b" HTTP/1.1\r\nHost: p\r\n\r\n"
    many_headers = b"GET /ocpp/CP1 HTTP/1.1\r\n" + b"X-A: 1\r\n" * 300 + b"\r\n"
    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream() as up,
            # The request must be whole within connect_timeout + 5 s.
            proxy_factory(upstream=up.url, connect_timeout=0.2) as (proxy, box),
        ):
            port = proxy.server.port
            too_long = await _raw(port, long_url)
            too_many = await _raw(port, many_headers)
            malformed = await _raw(port, b"NOT HTTP AT ALL\r\n\r\n")
            slow = await _raw(port, b"GET /ocpp/CP-SLOW HTTP/1.1\r\n", then_wait=0.0)
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()  # connects and leaves at once
            await wait_until(lambda: proxy.recorder.stats.connections >= 5, "5 rows", 10.0)
    assert too_long.startswith(b"HTTP/1.1 414")
    assert too_many.startswith(b"HTTP/1.1 431")
    assert malformed == b""
    assert slow == b""
    rows = _attempts(box[0])
    statuses = sorted(r["handshake_status"] for r in rows)
    assert statuses == [400, 408, 414, 431, 499], rows
    by_status = {r["handshake_status"]: r for r in rows}
    assert "too long" in by_status[414]["close_reason"]
    assert "too large" in by_status[431]["close_reason"]
    assert "malformed HTTP request" in by_status[400]["close_reason"]
    assert "within 5.2 s" in by_status[408]["close_reason"]
    assert by_status[499]["closed_by"] == "charger"
    assert all(r["closed_by"] == "proxy" for s, r in by_status.items() if s != 499)


async def test_chargers_beyond_max_pending_dials_wait_their_turn(proxy_factory: Any) -> None:
    """With one dial at a time and a CSMS slow to answer, all chargers still connect."""
    in_flight = 0
    most = 0

    async def slow_accept(ws: ServerConnection, request: Request) -> Response | None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.1)
        in_flight -= 1
        return None

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async def charger(url: str, name: str) -> str | bytes:
        async with connect(f"{url}/ocpp/{name}") as ws:
            await ws.send(f'[2,"1","Heartbeat",{{}}] {name}')
            return await ws.recv()

    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream(echo, process_request=slow_accept) as up,
            proxy_factory(upstream=up.url, max_pending_dials=1) as (proxy, box),
        ):
            names = [f"CP-{i}" for i in range(6)]
            answers = await asyncio.gather(*(charger(proxy.url, n) for n in names))
    assert answers == [f'[2,"1","Heartbeat",{{}}] {n}' for n in names]
    assert most == 1  # never two CSMS handshakes at once
    rows = _attempts(box[0])
    assert sorted(r["handshake_status"] for r in rows) == [101] * 6


def test_open_files_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if hard != resource.RLIM_INFINITY and hard > 256:
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        notes: list[str] = []
        raise_open_files_limit(notes)
        now, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert now == hard or hard == resource.RLIM_INFINITY
        room = (now - 64) // 2
        # A word only when the hard limit leaves less room than a fleet of 10,000 needs.
        assert bool(notes) is (room < 10_000), notes
        if notes:
            assert "ulimit -Hn" in notes[0]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_drain_closes_connections_one_by_one_in_the_order_they_came(
    proxy_factory: Any,
) -> None:
    """``stop(drain=...)``: no new charger is accepted, live ones are closed in turn."""

    async def csms(ws: ServerConnection) -> None:
        async for _message in ws:
            pass

    closed: list[str] = []

    async def charger(url: str, name: str) -> None:
        async with connect(f"{url}/ocpp/{name}") as ws:
            await ws.send('[2,"1","Heartbeat",{}]')
            await ws.wait_closed()
            assert ws.close_code == 1001
            assert ws.close_reason == "proxy restarting"
            closed.append(name)

    async with asyncio.timeout(TIMEOUT):
        async with upstream(csms) as up, proxy_factory(upstream=up.url) as (proxy, box):
            names = [f"CP-{i}" for i in range(4)]
            tasks = []
            for count, name in enumerate(names, 1):  # one at a time: the order is known
                tasks.append(asyncio.ensure_future(charger(proxy.url, name)))
                await wait_until(lambda c=count: len(proxy.server.sessions) == c, "open")
            stopping = asyncio.ensure_future(proxy.server.stop(1001, "proxy restarting", drain=2.0))
            await wait_until(lambda: len(closed) == 1, "the first charger closed")
            assert len(proxy.server.sessions) >= 2  # the others are still being relayed
            await stopping
            await asyncio.gather(*tasks)
    assert closed == names
    rows = box[0].rows("SELECT close_code, close_reason, closed_by FROM connections")
    assert {(r["close_code"], r["close_reason"], r["closed_by"]) for r in rows} == {
        (1001, "proxy restarting", "proxy")
    }


async def test_reuse_port_lets_a_second_proxy_listen_beside_a_draining_one(
    proxy_factory: Any, tmp_path: Any
) -> None:
    """--reuse-port: a new proxy starts on the same address while the old one still
    listens, and new chargers reach one of them (the kernel spreads them)."""

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream(echo) as up,
            proxy_factory(upstream=up.url, reuse_port=True) as (old, _box),
        ):
            recorder = Recorder(tmp_path / "next.duckdb").start()
            config = replace(old.server.config, listen_port=old.server.port)
            new = await ProxyServer(config, recorder).start()
            try:
                assert new.port == old.server.port
                await old.server.stop(1001, "proxy restarting")  # the old one goes
                async with connect(f"ws://127.0.0.1:{new.port}/ocpp/CP-AFTER") as ws:
                    await ws.send("still here")
                    assert await ws.recv() == "still here"
            finally:
                await new.stop()
                recorder.close()


async def test_slow_handshakes_do_not_stop_other_chargers(proxy_factory: Any) -> None:
    """Fifty connections trickling their request a byte at a time, and fifty that never
    send a byte, while real chargers connect: those connect, the others are given up
    (408) and recorded."""

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async def trickle(port: int, stop: asyncio.Event) -> None:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = b"GET /ocpp/SLOW HTTP/1.1\r\n" + b"X-Pad: slowly\r\n" * 1000
        try:
            for byte in request:  # never done before the proxy gives up
                # Given up by the proxy, as it should be: uvloop's transport then refuses
                # writes with RuntimeError rather than ConnectionError, so look first.
                if stop.is_set() or writer.transport.is_closing():
                    break
                writer.write(bytes([byte]))
                await asyncio.sleep(0.05)
        except ConnectionError:
            pass  # given up by the proxy: as it should
        finally:
            writer.close()

    async def silent(port: int) -> asyncio.StreamWriter:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return writer

    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream(echo) as up,
            proxy_factory(upstream=up.url, connect_timeout=0.5) as (proxy, box),
        ):
            port = proxy.server.port
            stop = asyncio.Event()
            slow = [asyncio.ensure_future(trickle(port, stop)) for _ in range(50)]
            idle = [await silent(port) for _ in range(50)]
            for i in range(5):
                async with connect(f"{proxy.url}/ocpp/CP-OK-{i}") as ws:
                    await ws.send("hello")
                    assert await ws.recv() == "hello"
            # Every slow or silent one is given up at connect_timeout + 5 s, and recorded.
            await wait_until(lambda: proxy.recorder.stats.connections >= 105, "105 rows", 15)
            stop.set()
            await asyncio.gather(*slow)
            for writer in idle:
                writer.close()
    rows = box[0].rows("SELECT handshake_status, count(*) AS n FROM connections GROUP BY ALL")
    assert {r["handshake_status"]: r["n"] for r in rows} == {101: 5, 408: 100}


async def test_a_charger_leaving_while_its_csms_is_dialled_leaves_one_row(
    proxy_factory: Any,
) -> None:
    """The charger hangs up while the proxy still waits for its CSMS's handshake, which
    then fails: one row (the dial's outcome), not a second one for the hang-up."""
    held: list[asyncio.StreamWriter] = []

    async def mute(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # takes the TCP connection, never answers the upgrade

    csms = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = csms.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(TIMEOUT):
            async with proxy_factory(upstream=f"ws://127.0.0.1:{port}", connect_timeout=0.5) as (
                proxy,
                box,
            ):
                reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
                writer.write(raw_upgrade_request(proxy.server.port, "/ocpp/CP-GONE"))
                await writer.drain()
                await wait_until(lambda: bool(held), "the proxy dialled the CSMS", 5)
                writer.close()  # gone before the CSMS answers
                await wait_until(lambda: proxy.recorder.stats.connections >= 1, "a row", 10)
                await asyncio.sleep(1.0)  # time enough for a second row, were there one
                del reader
    finally:
        for w in held:
            w.close()
        csms.close()
    rows = _attempts(box[0])
    assert len(rows) == 1
    assert rows[0]["identity"] == "CP-GONE"
    assert rows[0]["handshake_status"] in (502, 504)
