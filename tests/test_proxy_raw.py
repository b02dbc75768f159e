"""The proxy against raw websockets peers on loopback: what crosses, and what is recorded.

Every test runs a real ``ProxyServer`` + ``Recorder`` (the ``proxy_factory`` fixture),
a raw ``websockets`` server as the CSMS and a raw ``websockets`` client (or a raw TCP
socket) as the charger, then compares what the peers sent and received with the rows
of the closed DuckDB recording.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from typing import Any

import pytest
from helpers_ws import (
    Message,
    PingCountingClient,
    as_message,
    close_rcvd,
    closed_port,
    drain,
    headers_json,
    one_connection,
    raw_upgrade_request,
    read_status,
    receive,
    send,
    silent_server,
    upstream,
    wait_until,
    wire,
)
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.protocol import State
from websockets.typing import Subprotocol

TIMEOUT = 10


# -- recording helpers ---------------------------------------------------------------


def check_frames(
    rec: Any, connection_id: str, to_csms: list[Message], to_charger: list[Message]
) -> list[dict[str, Any]]:
    """Recorded frames = exactly what crossed, in order per direction; seq 0..n-1."""
    rows = rec.frames(connection_id)
    assert [r["seq"] for r in rows] == list(range(len(rows)))
    assert wire(rows, "to_csms") == to_csms
    assert wire(rows, "to_charger") == to_charger
    assert len(rows) == len(to_csms) + len(to_charger)
    for row in rows:
        assert row["size"] == len(bytes(row["raw"]))
    return rows


def check_stats(rec: Any, frames: int) -> None:
    assert rec.stats.frames_lost == 0
    assert rec.stats.frames_recorded == frames
    assert rec.stats.errors == []


# -- 1. upstream URL -------------------------------------------------------------------


@pytest.mark.parametrize("base_path", ["", "/", "/csms", "/csms/", "/csms//"])
async def test_upstream_url_is_base_plus_charger_path_and_query(
    proxy_factory: Any, base_path: str
) -> None:
    charger_path = "/ocpp/CP%201?x=1&y=a%2Fb&z="
    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream() as up,
            proxy_factory(upstream=up.url + base_path) as (proxy, box),
            connect(proxy.url + charger_path, compression=None) as charger,
        ):
            await wait_until(lambda: len(up.handled) == 1, "upstream handled the connection")
            seen = up.handled[0].request
            assert seen is not None
            assert seen.path == base_path.rstrip("/") + charger_path
            await charger.close()
    row = one_connection(box[0])
    assert row["identity"] == "CP 1"
    assert row["path"] == charger_path
    assert row["upstream_url"] == up.url + base_path.rstrip("/") + charger_path
    assert row["handshake_status"] == 101
    check_stats(box[0], 0)


# -- 2. subprotocols -------------------------------------------------------------------


async def test_subprotocols_offered_in_order_and_upstream_choice_mirrored(
    proxy_factory: Any,
) -> None:
    offered = ["ocpp2.1", "ocpp2.0.1", "ocpp1.6"]
    seen_offers: list[list[str]] = []

    def pick(conn: ServerConnection, subprotocols: list[Subprotocol]) -> Subprotocol | None:
        seen_offers.append(list(subprotocols))
        return Subprotocol("ocpp2.0.1")  # not the charger's first choice

    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream(select_subprotocol=pick) as up,
            proxy_factory(upstream=up.url) as (proxy, box),
            connect(
                proxy.url + "/ocpp/CP1", subprotocols=[Subprotocol(p) for p in offered]
            ) as charger,
        ):
            assert charger.subprotocol == "ocpp2.0.1"
            assert charger.response is not None
            assert charger.response.headers.get_all("Sec-WebSocket-Protocol") == ["ocpp2.0.1"]
            await wait_until(lambda: len(up.handled) == 1, "upstream handled the connection")
            assert up.handled[0].subprotocol == "ocpp2.0.1"
            await charger.close()
    assert seen_offers == [offered]
    request = up.requests[0]
    header_values = request.headers.get_all("Sec-WebSocket-Protocol")
    assert [p.strip() for v in header_values for p in v.split(",")] == offered
    row = one_connection(box[0])
    assert row["offered_subprotocols"] == offered
    assert row["subprotocol"] == "ocpp2.0.1"
    assert row["ocpp_version"] == "2.0.1"


async def test_upstream_accepting_no_subprotocol_completes_then_close_is_mirrored(
    proxy_factory: Any,
) -> None:
    async def refuse(ws: ServerConnection) -> None:
        await ws.close(1002, "no supported subprotocol")

    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream(refuse, select_subprotocol=lambda conn, offered: None) as up,
            proxy_factory(upstream=up.url) as (proxy, box),
            connect(proxy.url + "/ocpp/CP1", subprotocols=[Subprotocol("ocpp9.9")]) as charger,
        ):
            # The handshake completed, without a subprotocol ...
            assert charger.subprotocol is None
            assert charger.response is not None
            assert charger.response.status_code == 101
            assert "Sec-WebSocket-Protocol" not in charger.response.headers
            # ... and then the charger sees the CSMS's close.
            received = await drain(charger)
            assert received == []
            close = close_rcvd(charger)
            assert close is not None
            assert (close.code, close.reason) == (1002, "no supported subprotocol")
    row = one_connection(box[0])
    assert row["offered_subprotocols"] == ["ocpp9.9"]
    assert row["subprotocol"] is None
    assert row["handshake_status"] == 101
    assert (row["close_code"], row["close_reason"], row["closed_by"]) == (
        1002,
        "no supported subprotocol",
        "csms",
    )


async def test_charger_offering_no_subprotocol(proxy_factory: Any) -> None:
    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream() as up,
            proxy_factory(upstream=up.url) as (proxy, box),
            connect(proxy.url + "/ocpp/CP1") as charger,
        ):
            assert charger.subprotocol is None
            await wait_until(lambda: len(up.handled) == 1, "upstream handled the connection")
            await charger.close()
    assert "Sec-WebSocket-Protocol" not in up.requests[0].headers
    row = one_connection(box[0])
    assert row["offered_subprotocols"] == []
    assert row["subprotocol"] is None
    assert row["handshake_status"] == 101


async def test_charger_offering_no_subprotocol_to_upstream_requiring_one_gets_its_400(
    proxy_factory: Any,
) -> None:
    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream(subprotocols=[Subprotocol("ocpp1.6")]) as up,
            proxy_factory(upstream=up.url) as (proxy, box),
        ):
            with pytest.raises(InvalidStatus) as info:
                async with connect(proxy.url + "/ocpp/CP1"):
                    pass
            assert info.value.response.status_code == 400
            assert up.open == 0
    row = one_connection(box[0])
    assert row["handshake_status"] == 400
    assert row["closed_by"] == "csms"


# -- 3. upstream refuses the handshake --------------------------------------------------


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_upstream_refusal_is_mirrored(proxy_factory: Any, status: int) -> None:
    def refuse(connection: ServerConnection, request: Any) -> Any:
        response = connection.respond(status, "refused by csms\n")
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Basic realm="x"'
        response.headers["X-Csms"] = "refusal"
        return response

    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream(process_request=refuse) as up,
            proxy_factory(upstream=up.url) as (proxy, box),
        ):
            with pytest.raises(InvalidStatus) as info:
                async with connect(proxy.url + "/ocpp/CP1", subprotocols=[Subprotocol("ocpp1.6")]):
                    pass
            response = info.value.response
            assert response.status_code == status
            assert response.body == b"refused by csms\n"
            assert response.headers.get("X-Csms") == "refusal"
            if status == 401:
                assert response.headers.get_all("WWW-Authenticate") == ['Basic realm="x"']
            else:
                assert "WWW-Authenticate" not in response.headers
            await wait_until(lambda: up.open == 0, "upstream connection closed")
    assert len(up.requests) == 1
    row = one_connection(box[0])
    assert row["handshake_status"] == status
    assert row["subprotocol"] is None
    assert row["closed_by"] == "csms"
    check_stats(box[0], 0)


# -- 4. headers ------------------------------------------------------------------------


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_end_to_end_headers_forwarded_hop_by_hop_not(proxy_factory: Any) -> None:
    authorization = basic("CP1", "s3cret-pw")
    extra = [
        ("Authorization", authorization),
        ("X-Site", "a"),
        ("Connection", "X-Hop"),  # names X-Hop hop-by-hop (RFC 9110 §7.6.1)
        ("X-Hop", "1"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Authorization", basic("proxyuser", "proxy-pw")),
        ("TE", "trailers"),
        ("Sec-WebSocket-Extensions", "x-charger-ext"),
    ]
    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream(compression="deflate", server_header="CSMS/1.0") as up,
            proxy_factory(upstream=up.url) as (proxy, box),
            connect(
                proxy.url + "/ocpp/CP1",
                additional_headers=extra,
                user_agent_header="Charger/1.0 (test)",
                compression=None,
            ) as charger,
        ):
            await wait_until(lambda: len(up.handled) == 1, "upstream handled the connection")
            # Compression is negotiated end to end: the charger offered no deflate, so the
            # CSMS is offered none either (and never the charger's unknown extension).
            assert charger.protocol.extensions == []
            assert up.handled[0].protocol.extensions == []
            assert charger.response is not None
            assert "Sec-WebSocket-Extensions" not in charger.response.headers
            assert charger.response.headers.get("Server") == "CSMS/1.0"
            charger_key = charger.request.headers["Sec-WebSocket-Key"] if charger.request else ""
            await charger.close()

    seen = up.requests[0].headers
    assert seen.get_all("Authorization") == [authorization]
    assert seen.get_all("User-Agent") == ["Charger/1.0 (test)"]
    assert seen.get_all("X-Site") == ["a"]
    for hop in ("X-Hop", "Keep-Alive", "Proxy-Authorization", "TE"):
        assert hop not in seen, hop
    assert [v.lower() for v in seen.get_all("Connection")] == ["upgrade"]
    assert seen.get_all("Host") == [f"127.0.0.1:{up.port}"]
    assert seen.get_all("Sec-WebSocket-Extensions") == []
    keys = seen.get_all("Sec-WebSocket-Key")
    assert len(keys) == 1
    assert keys != [charger_key]

    row = one_connection(box[0])
    recorded = headers_json(row["request_headers"])
    text = row["request_headers"]
    assert ("Authorization", "Basic CP1:[redacted]") in recorded
    assert "s3cret-pw" not in text
    assert authorization.split()[1] not in text
    assert "proxy-pw" not in text
    assert basic("proxyuser", "proxy-pw").split()[1] not in text
    assert ("X-Site", "a") in recorded
    assert ("User-Agent", "Charger/1.0 (test)") in recorded


@pytest.mark.parametrize("csms_compression", [None, "deflate"])
async def test_compression_negotiated_end_to_end(
    proxy_factory: Any, csms_compression: str | None
) -> None:
    """Both legs compress, or neither: the relay passes the peers' own frames through."""
    big = json.dumps([2, "1", "DataTransfer", {"data": "a" * 5000}])
    async with asyncio.timeout(TIMEOUT):

        async def echo(ws: ServerConnection) -> None:
            for _ in range(3):
                await ws.send(await ws.recv())
            await ws.wait_closed()

        async with (
            upstream(echo, compression=csms_compression) as up,
            proxy_factory(upstream=up.url) as (proxy, box),
            connect(proxy.url + "/ocpp/CP1", compression="deflate") as charger,
        ):
            await wait_until(lambda: len(up.handled) == 1, "upstream handled the connection")
            charger_side = [e.name for e in charger.protocol.extensions]
            csms_side = [e.name for e in up.handled[0].protocol.extensions]
            assert charger_side == csms_side
            assert charger_side == ([] if csms_compression is None else ["permessage-deflate"])
            for _ in range(3):  # several messages: each side's context is reset or kept right
                await charger.send(big)
                assert await charger.recv() == big
            await charger.close()
    if csms_compression is not None:
        # Neither peer keeps its window across messages, so a message can be taken out.
        offered = up.requests[0].headers["Sec-WebSocket-Extensions"]
        assert "server_no_context_takeover" in offered
        assert charger.response is not None
        answer = charger.response.headers["Sec-WebSocket-Extensions"]
        assert "client_no_context_takeover" in answer
        assert "server_no_context_takeover" in answer
    rec = box[0]
    row = one_connection(rec)
    message = ("text", big.encode())
    check_frames(rec, row["connection_id"], [message] * 3, [message] * 3)
    check_stats(rec, 6)


# -- 5. bytes, opcodes, order -----------------------------------------------------------

MIXED: list[Message] = [
    ("text", '[2,"1","DataTransfer",{"data":"héllo ☃ 𝄞 ü"}]'.encode()),
    ("binary", b"\xff\xfe\x80\x00 not utf-8 \xc3\x28"),
    ("text", b""),
    ("binary", b""),
    ("binary", b'[2,"2","Heartbeat",{}]'),  # valid JSON, but sent as binary
    ("text", ("€" + "x" * 999_997).encode()),  # 1 MB exactly (3 + 999_997 bytes)
    ("text", b' \t[3, "1" , {} ]\n'),  # whitespace kept byte-for-byte
]


@pytest.mark.parametrize("compression", [None, "deflate"])
async def test_messages_cross_unchanged_both_ways(
    proxy_factory: Any, compression: str | None
) -> None:
    to_charger = list(reversed(MIXED))
    upstream_got: list[Message] = []

    async def csms(ws: ServerConnection) -> None:
        upstream_got.extend(await receive(ws, len(MIXED)))
        for message in to_charger:
            await send(ws, message)
        await ws.wait_closed()

    assert len(MIXED[5][1]) == 1_000_000
    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream(csms, max_size=None, compression=compression) as up,
            proxy_factory(upstream=up.url) as (proxy, box),
            connect(proxy.url + "/ocpp/CP1", max_size=None, compression=compression) as charger,
        ):
            for message in MIXED:
                await send(charger, message)
            charger_got = await receive(charger, len(to_charger))
            await charger.close()
    assert upstream_got == MIXED
    assert charger_got == to_charger
    rec = box[0]
    row = one_connection(rec)
    rows = check_frames(rec, row["connection_id"], MIXED, to_charger)
    # Sequential exchange: all charger messages first, then all CSMS messages.
    assert [r["direction"] for r in rows] == ["to_csms"] * 7 + ["to_charger"] * 7
    by_raw = {bytes(r["raw"]): r for r in rows if r["direction"] == "to_csms"}
    assert by_raw[MIXED[1][1]]["parse_status"] == "invalid_utf8"
    assert by_raw[b""] is not None
    check_stats(rec, 2 * len(MIXED))


async def test_order_kept_with_500_messages_each_way_interleaved(proxy_factory: Any) -> None:
    count = 500
    up_msgs: list[Message] = [
        ("text" if i % 3 else "binary", json.dumps([2, f"s{i}", "Ping", {"i": i}]).encode())
        for i in range(count)
    ]
    down_msgs: list[Message] = [
        ("binary" if i % 4 else "text", json.dumps([2, f"c{i}", "Pong", {"i": i}]).encode())
        for i in range(count)
    ]
    upstream_got: list[Message] = []

    async def csms(ws: ServerConnection) -> None:
        async def sender() -> None:
            for message in down_msgs:
                await send(ws, message)

        async with asyncio.TaskGroup() as group:
            group.create_task(sender())
            upstream_got.extend(await receive(ws, count))
        await ws.wait_closed()

    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream(csms) as up,
            proxy_factory(upstream=up.url) as (proxy, box),
            connect(proxy.url + "/ocpp/CP1") as charger,
        ):

            async def sender() -> None:
                for message in up_msgs:
                    await send(charger, message)

            async with asyncio.TaskGroup() as group:
                group.create_task(sender())
                charger_got = await receive(charger, count)
            await charger.close()
    assert upstream_got == up_msgs
    assert charger_got == down_msgs
    rec = box[0]
    row = one_connection(rec)
    rows = check_frames(rec, row["connection_id"], up_msgs, down_msgs)
    assert len(rows) == 2 * count
    assert all(r["parse_status"] == "ok" for r in rows)
    check_stats(rec, 2 * count)


async def test_calls_and_responses_are_parsed_and_paired(proxy_factory: Any) -> None:
    boot = (
        "text",
        b'[2,"b-1","BootNotification",{"chargePointVendor":"V","chargePointModel":"M"}]',
    )
    boot_conf = (
        "text",
        b'[3,"b-1",{"status":"Accepted","currentTime":"2024-01-01T00:00:00Z","interval":300}]',
    )
    reset = ("text", b'[2,"r-1","Reset",{"type":"Soft"}]')
    reset_err = ("text", b'[4,"r-1","NotSupported","no reset",{}]')

    async def csms(ws: ServerConnection) -> None:
        assert as_message(await ws.recv()) == boot
        await send(ws, boot_conf)
        await send(ws, reset)
        assert as_message(await ws.recv()) == reset_err
        await ws.close(1000, "done")

    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream(csms, subprotocols=[Subprotocol("ocpp1.6")]) as up,
            proxy_factory(upstream=up.url) as (proxy, box),
            connect(proxy.url + "/ocpp/CP1", subprotocols=[Subprotocol("ocpp1.6")]) as charger,
        ):
            await send(charger, boot)
            assert await receive(charger, 2) == [boot_conf, reset]
            await send(charger, reset_err)
            assert await drain(charger) == []
    rec = box[0]
    row = one_connection(rec)
    assert row["subprotocol"] == "ocpp1.6"
    rows = check_frames(rec, row["connection_id"], [boot, reset_err], [boot_conf, reset])
    got = [
        (
            r["seq"],
            r["direction"],
            r["opcode"],
            r["message_type"],
            r["message_id"],
            r["action"],
            r["parse_status"],
            r["request_seq"],
            r["pairing"],
        )
        for r in rows
    ]
    assert got == [
        (0, "to_csms", "text", 2, "b-1", "BootNotification", "ok", None, None),
        (1, "to_charger", "text", 3, "b-1", "BootNotification", "ok", 0, "matched"),
        (2, "to_charger", "text", 2, "r-1", "Reset", "ok", None, None),
        (3, "to_csms", "text", 4, "r-1", "Reset", "ok", 2, "matched"),
    ]
    for r in rows:
        if r["message_type"] in (3, 4):
            assert r["latency_ms"] is not None
            assert r["latency_ms"] >= 0
        else:
            assert r["latency_ms"] is None
    assert json.loads(rows[0]["payload"]) == {"chargePointVendor": "V", "chargePointModel": "M"}
    assert rows[3]["error_code"] == "NotSupported"
    assert rows[3]["error_description"] == "no reset"
    assert (row["close_code"], row["close_reason"], row["closed_by"]) == (1000, "done", "csms")
    check_stats(rec, 4)


# -- 6. close codes ---------------------------------------------------------------------


async def test_charger_close_code_and_reason_reach_upstream(proxy_factory: Any) -> None:
    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream() as up,
            proxy_factory(upstream=up.url) as (proxy, box),
            connect(proxy.url + "/ocpp/CP1") as charger,
        ):
            await wait_until(lambda: len(up.handled) == 1, "upstream handled the connection")
            await charger.close(4001, "bye")
            await wait_until(lambda: up.open == 0, "upstream connection closed")
            upstream_close = close_rcvd(up.handled[0])
            assert upstream_close is not None
            assert (upstream_close.code, upstream_close.reason) == (4001, "bye")
            charger_close = close_rcvd(charger)
            assert charger_close is not None
            assert charger_close.code == 4001
    row = one_connection(box[0])
    assert (row["close_code"], row["close_reason"], row["closed_by"]) == (4001, "bye", "charger")


@pytest.mark.parametrize(("code", "reason"), [(1000, "done"), (4002, "later")])
async def test_upstream_close_code_and_reason_reach_charger(
    proxy_factory: Any, code: int, reason: str
) -> None:
    async def csms(ws: ServerConnection) -> None:
        await ws.send('[2,"x","Heartbeat",{}]')
        await ws.close(code, reason)

    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream(csms) as up,
            proxy_factory(upstream=up.url) as (proxy, box),
            connect(proxy.url + "/ocpp/CP1") as charger,
        ):
            got = await drain(charger)
            close = close_rcvd(charger)
            assert close is not None
            assert (close.code, close.reason) == (code, reason)
            await wait_until(lambda: up.open == 0, "upstream connection closed")
    assert got == [("text", b'[2,"x","Heartbeat",{}]')]
    rec = box[0]
    row = one_connection(rec)
    assert (row["close_code"], row["close_reason"], row["closed_by"]) == (code, reason, "csms")
    check_frames(rec, row["connection_id"], [], got)
    check_stats(rec, 1)


async def test_charger_dropping_without_close_frame_closes_upstream_1001(
    proxy_factory: Any,
) -> None:
    upstream_got: list[Message] = []

    async def csms(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                upstream_got.append(as_message(message))

    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream(csms) as up,
            proxy_factory(upstream=up.url) as (proxy, box),
            connect(proxy.url + "/ocpp/CP1") as charger,
        ):
            await wait_until(lambda: len(up.handled) == 1, "upstream handled the connection")
            await charger.send('[2,"1","Heartbeat",{}]')
            await wait_until(lambda: len(upstream_got) == 1, "upstream got the message")
            charger.transport.abort()
            await wait_until(lambda: up.open == 0, "upstream connection closed")
            close = close_rcvd(up.handled[0])
            assert close is not None
            assert close.code == 1001
    rec = box[0]
    row = one_connection(rec)
    assert (row["close_code"], row["closed_by"]) == (1006, "charger")
    check_frames(rec, row["connection_id"], [("text", b'[2,"1","Heartbeat",{}]')], [])
    check_stats(rec, 1)


async def test_upstream_dropping_without_close_frame_closes_charger_1001(
    proxy_factory: Any,
) -> None:
    async def csms(ws: ServerConnection) -> None:
        await ws.send('[2,"1","Heartbeat",{}]')
        await asyncio.sleep(0.05)  # let the frame leave before the TCP reset
        ws.transport.abort()

    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream(csms) as up,
            proxy_factory(upstream=up.url) as (proxy, box),
            connect(proxy.url + "/ocpp/CP1") as charger,
        ):
            got = await drain(charger)
            close = close_rcvd(charger)
            assert close is not None
            assert close.code == 1001
            await wait_until(lambda: up.open == 0, "upstream connection closed")
    assert got == [("text", b'[2,"1","Heartbeat",{}]')]
    rec = box[0]
    row = one_connection(rec)
    assert (row["close_code"], row["closed_by"]) == (1006, "csms")
    check_frames(rec, row["connection_id"], [], got)
    check_stats(rec, 1)


# -- 7. unreachable upstream, and no upstream connection outliving a failed handshake ----


async def test_unreachable_upstream_gives_502(proxy_factory: Any) -> None:
    url = f"ws://127.0.0.1:{closed_port()}"
    async with asyncio.timeout(TIMEOUT), proxy_factory(upstream=url) as (proxy, box):
        with pytest.raises(InvalidStatus) as info:
            async with connect(proxy.url + "/ocpp/CP1"):
                pass
        assert info.value.response.status_code == 502
    row = one_connection(box[0])
    assert row["handshake_status"] == 502
    assert row["upstream_url"] == url + "/ocpp/CP1"
    assert row["closed_by"] == "proxy"
    check_stats(box[0], 0)


async def test_upstream_that_never_answers_gives_502_within_connect_timeout(
    proxy_factory: Any,
) -> None:
    async with asyncio.timeout(TIMEOUT):
        async with (
            silent_server() as silent,
            proxy_factory(upstream=f"ws://127.0.0.1:{silent.port}", connect_timeout=1.0) as (
                proxy,
                box,
            ),
        ):
            with pytest.raises(InvalidStatus) as info:
                async with connect(proxy.url + "/ocpp/CP1", open_timeout=8):
                    pass
            assert info.value.response.status_code == 502
            assert silent.accepted == 1
            await wait_until(lambda: silent.open == 0, "proxy dropped the hung upstream socket")
    row = one_connection(box[0])
    assert row["handshake_status"] == 502
    assert row["closed_by"] == "proxy"


async def test_charger_rejected_by_websockets_leaves_no_upstream_connection(
    proxy_factory: Any,
) -> None:
    async with asyncio.timeout(TIMEOUT):
        async with upstream() as up, proxy_factory(upstream=up.url) as (proxy, box):
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
            try:
                writer.write(
                    raw_upgrade_request(
                        proxy.server.port, headers=[("Sec-WebSocket-Version", "12")]
                    )
                )
                status = await read_status(reader)
            finally:
                writer.close()
            assert 400 <= status < 500
            # The proxy did open the upstream leg, and closed it again.
            assert len(up.connections) == 1
            await wait_until(lambda: up.open == 0, "upstream connection closed")
    row = one_connection(box[0])
    assert row["handshake_status"] == status
    assert row["closed_by"] == "proxy"


@pytest.mark.parametrize("gated", [False, True])
async def test_charger_gone_during_handshake_leaves_no_upstream_connection(
    proxy_factory: Any, gated: bool
) -> None:
    gate = asyncio.Event()
    if not gated:
        gate.set()

    async def hold(connection: ServerConnection, request: Any) -> None:
        await gate.wait()

    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream(process_request=hold) as up,
            proxy_factory(upstream=up.url) as (proxy, box),
        ):
            _, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
            writer.write(raw_upgrade_request(proxy.server.port))
            await writer.drain()
            if gated:
                await wait_until(lambda: len(up.requests) == 1, "upstream got the request")
            writer.transport.abort()
            if gated:
                await asyncio.sleep(0.1)  # let the proxy notice the charger is gone
                gate.set()
            await wait_until(lambda: len(up.connections) == 1, "proxy opened the upstream leg")
            await wait_until(lambda: up.open == 0, "upstream connection closed")
    rows = box[0].connections()
    for row in rows:  # whatever was recorded about it is complete
        assert row["closed_by"] is not None
    check_stats(box[0], 0)


# -- 8. max message size ----------------------------------------------------------------


@pytest.mark.parametrize("shape", ["single", "fragmented", "deflate"])
async def test_too_large_from_charger_closes_both_legs_1009(proxy_factory: Any, shape: str) -> None:
    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream() as up,
            proxy_factory(upstream=up.url, max_message_size=1024) as (proxy, box),
            connect(
                proxy.url + "/ocpp/CP1", compression="deflate" if shape == "deflate" else None
            ) as charger,
        ):
            await wait_until(lambda: len(up.handled) == 1, "upstream handled the connection")
            small = '[2,"1","Heartbeat",{}]'
            await charger.send(small)
            if shape == "fragmented":
                await charger.send(["a" * 600, "b" * 600, "c" * 600])
            else:
                await charger.send("x" * 2000)
            assert await drain(charger) == []
            await _both_legs_closed(charger, up, 1009)
    rec = box[0]
    row = one_connection(rec)
    assert (row["close_code"], row["closed_by"]) == (1009, "proxy")
    rows = rec.frames(row["connection_id"])
    assert [r["seq"] for r in rows] == [0, 1]
    assert bytes(rows[0]["raw"]) == small.encode()
    big = rows[1]
    assert big["direction"] == "to_csms"
    assert big["parse_status"] == "too_large"
    assert big["size"] >= 1025, (big["size"], big["parse_detail"])
    check_stats(rec, 2)


async def _both_legs_closed(charger: Any, up: Any, code: int) -> None:
    close = close_rcvd(charger)
    assert close is not None
    assert close.code == code
    await wait_until(lambda: up.open == 0, "upstream connection closed")
    upstream_close = close_rcvd(up.handled[0])
    assert upstream_close is not None
    assert upstream_close.code == code


async def test_too_large_from_upstream_closes_both_legs_1009(proxy_factory: Any) -> None:
    async def csms(ws: ServerConnection) -> None:
        await ws.send("y" * 3000)
        await ws.wait_closed()

    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream(csms, compression=None) as up,
            proxy_factory(upstream=up.url, max_message_size=1024) as (proxy, box),
            connect(proxy.url + "/ocpp/CP1") as charger,
        ):
            assert await drain(charger) == []
            await _both_legs_closed(charger, up, 1009)
    rec = box[0]
    row = one_connection(rec)
    assert (row["close_code"], row["closed_by"]) == (1009, "proxy")
    rows = rec.frames(row["connection_id"])
    assert len(rows) == 1
    assert rows[0]["direction"] == "to_charger"
    assert rows[0]["parse_status"] == "too_large"
    assert rows[0]["size"] >= 1025
    check_stats(rec, 1)


# -- 9. bad input -----------------------------------------------------------------------

BAD: list[tuple[Message, str]] = [
    (("text", b"this is not json"), "invalid_json"),
    (("text", b'[2,"1","Heartbeat",{},]'), "invalid_json"),
    (("text", b'{"2": "1"}'), "not_an_array"),
    (("text", b'[2,"1","Heartbeat"]'), "wrong_arity"),
    (("text", b'[9,"1","Heartbeat",{}]'), "unknown_message_type"),
    (("text", b'[2,1,"Heartbeat",{}]'), "message_id_not_string"),
    (("text", ('[2,"' + "i" * 37 + '","Heartbeat",{}]').encode()), "message_id_too_long"),
    (("text", b'[2,"2","Heartbeat",null]'), "payload_not_object"),
    (("binary", b"\x80\x81\xfe\xff"), "invalid_utf8"),
    (("text", b"[]"), "empty_array"),
]


async def test_bad_input_forwarded_unchanged_and_recorded(proxy_factory: Any) -> None:
    sent = [message for message, _ in BAD]
    reply: Message = ("text", b'[3,"only-this",{}]')
    upstream_got: dict[str, list[Message]] = {}

    async def csms(ws: ServerConnection) -> None:
        assert ws.request is not None
        name = ws.request.path.rsplit("/", 1)[-1]
        if name == "BAD":
            upstream_got[name] = await receive(ws, len(sent))
            await send(ws, reply)
            await ws.close(1000, "enough")
        else:
            got = []
            for _ in range(50):
                message = as_message(await ws.recv())
                got.append(message)
                call = json.loads(message[1])
                await ws.send(json.dumps([3, call[1], {"currentTime": "t"}]))
            upstream_got[name] = got
            await ws.wait_closed()

    good = [("text", json.dumps([2, f"g{i}", "Heartbeat", {}]).encode()) for i in range(50)]

    async def bad_charger(url: str) -> list[Message]:
        async with connect(url + "/ocpp/BAD") as ws:
            for message in sent:
                await send(ws, message)
            return await drain(ws)

    async def good_charger(url: str) -> tuple[list[Message], bool]:
        async with connect(url + "/ocpp/GOOD") as ws:
            answers = []
            for message in good:
                await send(ws, message)
                answers.append(as_message(await ws.recv()))
            still_open = ws.state is State.OPEN
            await ws.close()
            return answers, still_open

    async with asyncio.timeout(TIMEOUT):
        async with upstream(csms) as up, proxy_factory(upstream=up.url) as (proxy, box):
            async with asyncio.TaskGroup() as group:
                bad_task = group.create_task(bad_charger(proxy.url))
                good_task = group.create_task(good_charger(proxy.url))
            await wait_until(lambda: up.open == 0, "upstream connections closed")
    # The charger receives only what the CSMS sent: the proxy answered nothing itself.
    assert bad_task.result() == [reply]
    assert upstream_got["BAD"] == sent
    answers, still_open = good_task.result()
    assert still_open
    assert upstream_got["GOOD"] == good
    assert len(answers) == 50

    rec = box[0]
    rows = {r["identity"]: r for r in rec.connections()}
    bad_row, good_row = rows["BAD"], rows["GOOD"]
    frames = check_frames(rec, bad_row["connection_id"], sent, [reply])
    statuses = [r["parse_status"] for r in frames if r["direction"] == "to_csms"]
    assert statuses == [status for _, status in BAD]
    opcodes = [r["opcode"] for r in frames if r["direction"] == "to_csms"]
    assert opcodes == [op for (op, _), _ in BAD]
    assert (bad_row["close_code"], bad_row["closed_by"]) == (1000, "csms")

    good_frames = check_frames(rec, good_row["connection_id"], good, answers)
    assert all(r["parse_status"] == "ok" for r in good_frames)
    responses = [r for r in good_frames if r["direction"] == "to_charger"]
    assert all(r["pairing"] == "matched" and r["latency_ms"] is not None for r in responses)
    assert all(r["action"] == "Heartbeat" for r in responses)
    assert (good_row["close_code"], good_row["closed_by"]) == (1000, "charger")
    check_stats(rec, len(sent) + 1 + 100)


# -- 10. proxy stop ---------------------------------------------------------------------


async def test_proxy_stop_closes_both_legs_1001_and_keeps_frames(proxy_factory: Any) -> None:
    to_csms = [("text", json.dumps([2, f"m{i}", "Heartbeat", {}]).encode()) for i in range(20)]
    to_charger = [("binary", f"down {i}".encode()) for i in range(20)]

    async def csms(ws: ServerConnection) -> None:
        await receive(ws, len(to_csms))
        for message in to_charger:
            await send(ws, message)
        await ws.wait_closed()

    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream(csms) as up,
            proxy_factory(upstream=up.url) as (proxy, box),
            connect(proxy.url + "/ocpp/CP1") as charger,
        ):
            for message in to_csms:
                await send(charger, message)
            assert await receive(charger, len(to_charger)) == to_charger
            await proxy.server.stop()
            assert await drain(charger) == []
            await _both_legs_closed(charger, up, 1001)
    rec = box[0]
    row = one_connection(rec)
    assert (row["close_code"], row["closed_by"]) == (1001, "proxy")
    check_frames(rec, row["connection_id"], to_csms, to_charger)
    check_stats(rec, 40)


# -- 11. keepalive ----------------------------------------------------------------------


async def test_keepalive_pings_both_legs_and_idle_connection_stays_open(
    proxy_factory: Any,
) -> None:
    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream() as up,
            # ping_timeout < the time 8 pings take: an unanswered ping would have closed
            # its leg (websockets' latency can't prove the pongs: uvloop's clock ticks in
            # milliseconds, and a loopback pong takes less).
            proxy_factory(upstream=up.url, ping_interval=0.2, ping_timeout=1.0) as (proxy, box),
            connect(
                proxy.url + "/ocpp/CP1", ping_interval=None, create_connection=PingCountingClient
            ) as charger,
        ):
            assert isinstance(charger, PingCountingClient)
            await wait_until(lambda: up.pings >= 8, "upstream received 8 pings")
            await wait_until(lambda: charger.pings >= 8, "charger received 8 pings")
            assert charger.state is State.OPEN
            assert up.handled[0].state is State.OPEN
            assert up.open == 1
            [session] = proxy.server.sessions
            assert not session.finished.done()
            await charger.close()
    rec = box[0]
    row = one_connection(rec)
    assert row["closed_by"] == "charger", {
        k: row[k] for k in ("close_code", "close_reason", "closed_by")
    }
    check_stats(rec, 0)  # pings are not recorded as frames
