"""Mirroring a charger to a second CSMS, with real ocpp peers on both sides."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import duckdb
from helpers_ws import raw_csms, upstream, wait_until
from ocpp.v16 import call_result
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection

import ocproxy.proxy.mirror as mirror_module
from ocproxy.analytics.queries import bind, get_query, run
from ocproxy.analytics.sources import open_sources
from ocproxy.proxy.config import MirrorRoute
from ocproxy.sim.charger import ChargerSpec, run_charger
from ocproxy.sim.csms import SimCsms


def _invalid_authorize(**_: Any) -> Any:
    return call_result.Authorize(id_tag_info={"status": "Invalid"})


def _mirror_report(db: Path) -> list[dict[str, Any]]:
    query = get_query("mirror")
    with open_sources([str(db)]) as opened:
        table = run(opened.db, query.sql, bind(query, {})).table
    return table.to_pylist()  # type: ignore[no-any-return]


async def test_secondary_answering_differently_is_reported(
    proxy_factory: Any, db_path: Path
) -> None:
    spec = ChargerSpec(identity="CP-MIRROR", version="1.6", meter_samples=2)
    async with (
        SimCsms() as primary,
        SimCsms(overrides={"Authorize": _invalid_authorize}) as secondary,
        proxy_factory(upstream=primary.url, mirrors=(MirrorRoute("CP-*", secondary.url),)) as (
            proxy,
            box,
        ),
    ):
        transcript = await run_charger(proxy.url, spec)
        # The secondary got every message the charger sent, in order.
        await wait_until(
            lambda: len(secondary.transcripts.get("CP-MIRROR", [])) >= len(transcript),
            "the secondary got every charger message",
        )
        secondary_got = secondary.transcripts["CP-MIRROR"].in_direction("to_csms")
    assert secondary_got == transcript.in_direction("to_csms")
    # The charger only ever saw the primary's answers: the session went on to charge.
    assert any("StartTransaction" in m for m in transcript.in_direction("to_csms"))
    recording = box[0]
    connections = recording.rows(
        "SELECT connection_id, source, mirror_of, handshake_status, closed_by FROM connections "
        "ORDER BY opened_at"
    )
    charger_row, mirror_row = connections
    assert mirror_row["mirror_of"] == charger_row["connection_id"]
    assert mirror_row["source"] == "mirror"
    assert mirror_row["handshake_status"] == 101
    report = _mirror_report(db_path)
    assert [(r["action"], r["primary_answer"], r["secondary_answer"]) for r in report] == [
        ("Authorize", "CALLRESULT", "CALLRESULT")
    ]
    assert json.loads(report[0]["primary_payload"])["idTagInfo"]["status"] == "Accepted"
    assert json.loads(report[0]["secondary_payload"])["idTagInfo"]["status"] == "Invalid"


async def test_secondary_dying_mid_session_never_disturbs_the_primary(
    proxy_factory: Any, db_path: Path
) -> None:
    spec = ChargerSpec(identity="CP-DIE", version="2.0.1", meter_samples=6, pace=0.05)
    secondary = SimCsms()
    await secondary.start()
    async with (
        SimCsms() as primary,
        proxy_factory(upstream=primary.url, mirrors=(MirrorRoute("*", secondary.url),)) as (
            proxy,
            box,
        ),
    ):
        charging = asyncio.create_task(run_charger(proxy.url, spec))
        await wait_until(
            lambda: len(secondary.transcripts.get("CP-DIE", [])) >= 4, "the mirror is running"
        )
        await secondary.stop()  # the secondary goes away mid-session
        transcript = await charging
        primary_side = primary.transcripts["CP-DIE"]
    assert transcript == primary_side  # the primary leg saw every message, undisturbed
    rows = box[0].rows("SELECT source, close_code, closed_by FROM connections ORDER BY opened_at")
    assert rows[0] == {"source": "proxy", "close_code": 1000, "closed_by": "charger"}
    assert rows[1]["source"] == "mirror"
    assert rows[1]["closed_by"] == "csms"


async def test_secondary_calls_refused_unless_allowed(proxy_factory: Any, db_path: Path) -> None:
    spec = ChargerSpec(identity="CP-ASK", version="1.6", heartbeats=2, pace=0.1)
    for allowed in ((), ("GetConfiguration",)):
        async with (
            SimCsms() as primary,
            SimCsms(initiate=True) as secondary,  # asks GetConfiguration after boot
            proxy_factory(
                upstream=primary.url,
                mirrors=(MirrorRoute("*", secondary.url, allow_actions=allowed),),
            ) as (proxy, box),
        ):
            transcript = await run_charger(proxy.url, spec)
        charger_got_ask = any(
            "GetConfiguration" in m for m in transcript.in_direction("to_charger")
        )
        with duckdb.connect(str(db_path), read_only=True) as con:
            answer = con.execute(
                "SELECT f.message_type, f.error_code, f.injected FROM frames f JOIN connections c "
                "USING (connection_id) WHERE c.source = 'mirror' AND f.direction = 'to_csms' "
                "AND f.action = 'GetConfiguration' AND f.message_type IN (3, 4) "
                "ORDER BY c.opened_at DESC LIMIT 1"
            ).fetchone()
        await asyncio.to_thread(db_path.unlink)  # a fresh recording for the next case
        assert box
        if allowed:
            assert charger_got_ask
            assert answer == (3, None, False)  # the charger's own answer, relayed
        else:
            assert not charger_got_ask
            assert answer == (4, "SecurityError", True)  # refused by the proxy


async def test_a_secondary_that_falls_behind_is_counted_then_let_go(
    proxy_factory: Any, monkeypatch: Any
) -> None:
    """Copies that find the backlog full are dropped and counted; after behind_limit the
    secondary's leg is closed with the count, and the charger never notices."""
    monkeypatch.setattr(mirror_module, "_BACKLOG", 5)
    monkeypatch.setattr(mirror_module.Mirror, "behind_limit", 0.2)

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    big = json.dumps([2, "x", "DataTransfer", {"vendorId": "v", "data": "d" * 100_000}])
    async with (
        upstream(echo) as primary,
        raw_csms() as secondary,  # answers the handshake, then never reads a byte
        proxy_factory(
            upstream=primary.url,
            mirrors=(MirrorRoute("CP-*", f"ws://127.0.0.1:{secondary.port}"),),
            close_timeout=1.0,
        ) as (proxy, box),
        connect(proxy.url + "/ocpp/CP-SLOW") as charger,
    ):
        await secondary.peers.get()
        [session] = proxy.server.sessions
        assert session.mirror is not None
        for _ in range(150):  # ~15 MB: more than loopback's socket buffers hold
            await charger.send(big)
            assert await charger.recv() == big  # the primary leg never waits for it
            await asyncio.sleep(0.002)
        mirror = session.mirror
        await wait_until(lambda: mirror.recorded_close, "the secondary's leg is closed", 30)
    rows = box[0].rows(
        "SELECT source, close_code, close_reason, closed_by FROM connections ORDER BY opened_at"
    )
    charger_row, mirror_row = rows
    assert charger_row["source"] == "proxy"
    assert (mirror_row["source"], mirror_row["closed_by"]) == ("mirror", "proxy")
    assert "secondary fell behind" in mirror_row["close_reason"]
    dropped = int(mirror_row["close_reason"].split(": ")[1].split(" copies")[0])
    assert dropped > 0


async def test_a_secondary_slow_to_close_does_not_move_the_chargers_close(
    proxy_factory: Any,
) -> None:
    """The charger's close is recorded when its connection ended, not after the mirror's
    close handshake with a secondary that never answers it (close_timeout later)."""

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async with (
        upstream(echo) as primary,
        raw_csms() as secondary,  # answers the handshake, then never a close
        proxy_factory(
            upstream=primary.url,
            mirrors=(MirrorRoute("CP-*", f"ws://127.0.0.1:{secondary.port}"),),
            close_timeout=3.0,
        ) as (proxy, box),
    ):
        async with connect(proxy.url + "/ocpp/CP-1") as charger:
            await secondary.peers.get()
            await charger.send('[2,"1","Heartbeat",{}]')
            await charger.recv()
        [session] = proxy.server.sessions
        await session.finished
    rows = box[0].rows("SELECT source, closed_at FROM connections ORDER BY opened_at")
    assert [row["source"] for row in rows] == ["proxy", "mirror"]
    # The secondary held its close until close_timeout; the charger's row was not held.
    assert rows[0]["closed_at"] < rows[1]["closed_at"]


async def test_the_secondarys_answer_owed_when_the_charger_leaves_is_still_recorded(
    proxy_factory: Any,
) -> None:
    """The charger leaves right after its primary's answer; the secondary answers a
    little later: its leg stays open for that answer (up to close_timeout), so the
    evaluation does not count it as never given."""

    async def answer(ws: ServerConnection, delay: float) -> None:
        async for message in ws:
            frame = json.loads(message)
            await asyncio.sleep(delay)
            await ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))

    async def primary_handler(ws: ServerConnection) -> None:
        await answer(ws, 0.0)

    async def secondary_handler(ws: ServerConnection) -> None:
        await answer(ws, 0.5)

    async with (
        upstream(primary_handler) as primary,
        upstream(secondary_handler) as secondary,
        proxy_factory(
            upstream=primary.url,
            mirrors=(MirrorRoute("CP-*", secondary.url),),
            close_timeout=3.0,
        ) as (proxy, box),
    ):
        async with connect(proxy.url + "/ocpp/CP-1") as charger:
            await charger.send('[2,"d1","DataTransfer",{"vendorId":"acme"}]')
            await charger.recv()
        [session] = proxy.server.sessions
        await session.finished
    rows = box[0].rows(
        "SELECT c.source, f.direction, f.message_type, c.close_reason FROM frames f "
        "JOIN connections c USING (connection_id) WHERE c.source = 'mirror' ORDER BY f.seq"
    )
    assert [(r["direction"], r["message_type"]) for r in rows] == [
        ("to_csms", 2),
        ("to_charger", 3),
    ]
    assert rows[0]["close_reason"] == "charger disconnected"
