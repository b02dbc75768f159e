"""The control endpoint with real peers: stream, live SQL, injection, close, tokens."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb
import pytest
from rich.console import Console
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from ocproxy.app import running_proxy
from ocproxy.control.client import ControlClient, RequestRefused
from ocproxy.control.token import token_path
from ocproxy.errors import ControlError
from ocproxy.proxy.config import ProxyConfig
from ocproxy.proxy.server import ProxyServer
from ocproxy.sim.charger import ChargerSpec, run_charger
from ocproxy.sim.csms import SimCsms


@asynccontextmanager
async def _proxy(
    db: Path, upstream: str, *, keep_ids: bool = False
) -> AsyncIterator[tuple[ProxyServer, int]]:
    config = ProxyConfig(
        listen_host="127.0.0.1",
        listen_port=0,
        upstream=upstream,
        db=str(db),
        quiet=True,
        control="127.0.0.1:0",
        keep_ids=keep_ids,
    )
    console = Console(file=io.StringIO())
    async with running_proxy(config, console) as (proxy, _sink):
        port = _control_port()
        yield proxy, port


def _control_port() -> int:
    tokens = sorted(token_path(0).parent.glob("control-*.token"), key=lambda p: p.stat().st_mtime)
    return int(tokens[-1].stem.removeprefix("control-"))


async def _wait_connected(control: ControlClient, identity: str) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            for connection in await control.request("connections"):
                if connection["identity"] == identity:
                    return connection  # type: ignore[no-any-return]
            await asyncio.sleep(0.02)


async def test_stream_gets_every_frame_in_order(tmp_path: Path) -> None:
    spec = ChargerSpec(identity="CP-TAIL", version="2.0.1", meter_samples=3)
    # --keep-ids: the stream shows frames as recorded, and this compares them byte for byte.
    async with (
        SimCsms(initiate=True) as csms,
        _proxy(tmp_path / "r.duckdb", csms.url, keep_ids=True) as (
            proxy,
            port,
        ),
        ControlClient("127.0.0.1", port) as control,
    ):
        assert await control.request("subscribe", identity="CP-TAIL") == {"subscribed": True}
        transcript = await run_charger(f"ws://127.0.0.1:{proxy.port}", spec)
        frames: list[dict[str, Any]] = []
        async with asyncio.timeout(10):
            async for event in control.events():
                if event["event"] == "frame":
                    frames.append(event)
                if len(frames) == len(transcript):
                    break
        rows = await control.request(
            "sql", query="SELECT count(*) AS n FROM frames WHERE injected = false"
        )
    assert [f["seq"] for f in frames] == list(range(len(transcript)))
    assert all(f["identity"] == "CP-TAIL" for f in frames)
    for direction in ("to_csms", "to_charger"):
        streamed = [f["raw"] for f in frames if f["direction"] == direction]
        assert streamed == transcript.in_direction(direction)
    responses = [f for f in frames if f["message_type"] == 3]
    assert all(f["latency_ms"] is not None for f in responses)
    assert rows["columns"] == ["n"]
    assert rows["rows"] == [[len(transcript)]]


async def test_inject_both_ways_answer_recorded_and_swallowed(tmp_path: Path) -> None:
    db = tmp_path / "r.duckdb"
    async with SimCsms() as csms:
        charger_done = asyncio.Event()
        async with _proxy(db, csms.url) as (proxy, port):
            spec = ChargerSpec(identity="CP-INJ", version="1.6", pace=0.05, heartbeats=1)
            async with asyncio.TaskGroup() as group:
                group.create_task(_run_and_flag(f"ws://127.0.0.1:{proxy.port}", spec, charger_done))
                async with ControlClient("127.0.0.1", port) as control:
                    await _wait_connected(control, "CP-INJ")
                    to_charger = await control.request(
                        "inject",
                        identity="CP-INJ",
                        action="GetConfiguration",
                        payload={"key": ["HeartbeatInterval"]},
                    )
                    to_csms = await control.request(
                        "inject", identity="CP-INJ", action="Heartbeat", payload={}, to="csms"
                    )
        charger_side = csms.transcripts["CP-INJ"]
    assert to_charger["answer"][0] == 3
    assert "configurationKey" in to_charger["answer"][2]
    assert to_csms["answer"][0] == 3
    assert "currentTime" in to_csms["answer"][2]
    injected_ids = {to_charger["answer"][1], to_csms["answer"][1]}
    # The CSMS never saw the charger's answer to our GetConfiguration, nor our Heartbeat's id
    # as a CALL from the charger... it did receive our Heartbeat CALL: that is the injection.
    csms_saw = [json.loads(m.data) for m in charger_side.messages]
    assert not any(m[0] == 3 and m[1] == to_charger["answer"][1] for m in csms_saw)
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(
            "SELECT direction, message_type, action, injected, pairing FROM frames "
            "WHERE message_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY seq",
            [sorted(injected_ids)],
        ).fetchall()
    assert rows == [
        ("to_charger", 2, "GetConfiguration", True, None),
        ("to_csms", 3, "GetConfiguration", True, "matched"),
        ("to_csms", 2, "Heartbeat", True, None),
        ("to_charger", 3, "Heartbeat", True, "matched"),
    ]


async def _run_and_flag(url: str, spec: ChargerSpec, done: asyncio.Event) -> None:
    try:
        await run_charger(url, replace(spec, meter_samples=20))
    finally:
        done.set()


async def test_tokens_are_required(tmp_path: Path) -> None:
    async with SimCsms() as csms, _proxy(tmp_path / "r.duckdb", csms.url) as (_proxy_server, port):
        url = f"ws://127.0.0.1:{port}/control"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
            with pytest.raises(InvalidStatus) as refused:
                await connect(url, additional_headers=headers)
            assert refused.value.response.status_code == 401
        with pytest.raises(ControlError, match="refused"):
            async with ControlClient("127.0.0.1", port, token="nope"):
                pass
        assert token_path(port).stat().st_mode & 0o077 == 0  # readable by its user only
    assert not token_path(port).exists()  # withdrawn when the proxy stopped


async def test_bad_requests_leave_connections_alone(tmp_path: Path) -> None:
    async with SimCsms() as csms, _proxy(tmp_path / "r.duckdb", csms.url) as (proxy, port):
        spec = ChargerSpec(identity="CP-BAD", version="1.6", pace=0.05, meter_samples=20)
        async with asyncio.TaskGroup() as group:
            charger = group.create_task(run_charger(f"ws://127.0.0.1:{proxy.port}", spec))
            async with ControlClient("127.0.0.1", port) as control:
                await _wait_connected(control, "CP-BAD")
                errors = []
                for params in (
                    {"identity": "CP-NONE", "action": "Reset", "payload": {"type": "Soft"}},
                    {"identity": "CP-BAD", "action": "Bogus", "payload": {}},
                    {"identity": "CP-BAD", "action": "Reset", "payload": {"type": "soft"}},
                    {"identity": "CP-BAD", "action": "Reset", "payload": []},
                ):
                    with pytest.raises(ControlError) as failure:
                        await control.request("inject", **params)
                    errors.append(str(failure.value))
                with pytest.raises(ControlError, match="read-only"):
                    await control.request("sql", query="DELETE FROM frames")
                with pytest.raises(ControlError, match="unknown op"):
                    await control.request("explode")
                assert await _wait_connected(control, "CP-BAD")
            transcript = await charger
    assert "no live connection" in errors[0]
    assert "not an OCPP 1.6 action" in errors[1]
    assert "use force" in errors[2]
    assert "JSON object" in errors[3]
    assert len(transcript) > 0  # the session ran to its end undisturbed


async def test_second_inject_while_outstanding_is_refused(tmp_path: Path) -> None:
    # A charger that never answers: a raw client that only reads.
    async with (
        SimCsms() as csms,
        _proxy(tmp_path / "r.duckdb", csms.url) as (proxy, port),
        connect(f"ws://127.0.0.1:{proxy.port}/CP-MUTE", subprotocols=["ocpp1.6"]),  # type: ignore[list-item]
        ControlClient("127.0.0.1", port) as control,
    ):
        await _wait_connected(control, "CP-MUTE")
        first = asyncio.create_task(
            control.request(
                "inject",
                identity="CP-MUTE",
                action="Reset",
                payload={"type": "Soft"},
                timeout=2,
            )
        )
        await asyncio.sleep(0.2)
        with pytest.raises(ControlError, match="still unanswered"):
            await control.request(
                "inject", identity="CP-MUTE", action="Reset", payload={"type": "Hard"}
            )
        with pytest.raises(ControlError, match="no answer"):
            await first


async def test_close_a_connection_with_a_code(tmp_path: Path) -> None:
    async with (
        SimCsms() as csms,
        _proxy(tmp_path / "r.duckdb", csms.url) as (proxy, port),
        connect(f"ws://127.0.0.1:{proxy.port}/CP-CLOSE", subprotocols=["ocpp1.6"]) as charger,  # type: ignore[list-item]
    ):
        async with ControlClient("127.0.0.1", port) as control:
            await _wait_connected(control, "CP-CLOSE")
            result = await control.request(
                "close", identity="CP-CLOSE", code=4000, reason="maintenance"
            )
            assert result["code"] == 4000
        await charger.wait_closed()
        assert charger.close_code == 4000
        assert charger.close_reason == "maintenance"


async def test_reload_answers_what_changed_and_is_recorded(tmp_path: Path) -> None:
    """The reload op runs the config reader the proxy was given, as SIGHUP does; a proxy
    given none (``ocproxy demo``, a library user) refuses the op instead."""
    db = tmp_path / "r.duckdb"
    config = ProxyConfig(
        listen_host="127.0.0.1", listen_port=0, upstream="ws://127.0.0.1:1", db=str(db),
        quiet=True, control="127.0.0.1:0",
    )  # fmt: skip
    answers = [replace(config, upstream="ws://127.0.0.1:2"), replace(config, listen_port=1)]
    console = Console(file=io.StringIO())
    async with (
        running_proxy(config, console, reread=lambda: answers.pop(0)),
        ControlClient("127.0.0.1", _control_port()) as control,
    ):
        moved = await control.request("reload")
        refused = await control.request("reload")
    assert moved == {"applied": True, "changes": ["upstream"], "error": None}
    assert refused == {
        "applied": False,
        "changes": [],
        "error": "listen_port cannot change without a restart",
    }
    async with (
        _proxy(tmp_path / "other.duckdb", "ws://127.0.0.1:1") as (_proxy_server, port),
        ControlClient("127.0.0.1", port) as control,
    ):
        with pytest.raises(RequestRefused, match="no configuration to re-read"):
            await control.request("reload")
    with duckdb.connect(str(db), read_only=True) as recording:
        rows = recording.execute("SELECT ok FROM config_reloads ORDER BY reloaded_at").fetchall()
    assert rows == [(True,), (False,)]


async def test_query_live_runs_named_queries_on_the_running_recording(tmp_path: Path) -> None:
    import argparse
    import io

    from ocproxy.analytics.cli import run_query_command

    spec = ChargerSpec(identity="CP-LIVE", version="1.6", meter_samples=2, wh_per_sample=2000)
    async with SimCsms() as csms, _proxy(tmp_path / "r.duckdb", csms.url) as (proxy, port):
        await run_charger(f"ws://127.0.0.1:{proxy.port}", spec)
        out, err = io.StringIO(), io.StringIO()
        args = argparse.Namespace(
            list=False,
            live=True,
            words=["transactions"],
            param=["identity=CP-LIVE"],
            format="json",
            output=None,
            control=f"127.0.0.1:{port}",
            token=None,
        )
        # The command runs its own event loop: give it a thread, as a second process would.
        code = await asyncio.to_thread(run_query_command, args, out, err)
    assert code == 0, err.getvalue()
    rows = json.loads(out.getvalue())
    assert [(r["identity"], r["energy_wh"]) for r in rows] == [("CP-LIVE", 4000)]


async def _ocproxy(*argv: str) -> tuple[int, str, str]:
    """``python -m ocproxy ARGV...`` as a second process, as a user runs it next to a proxy."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ocproxy",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_query_live_bad_sql_is_one_line_and_exit_2_as_offline(tmp_path: Path) -> None:
    async with SimCsms() as csms, _proxy(tmp_path / "r.duckdb", csms.url) as (_server, port):
        control = f"127.0.0.1:{port}"
        runs = {
            sql: await _ocproxy("query", "--live", sql, "--control", control)
            for sql in ("SELEC nonsense", "DELETE FROM frames", "SELECT * FROM nope")
        }
        fine = await _ocproxy("query", "--live", "SELECT count(*) AS n FROM findings",
                              "--control", control, "--format", "csv")  # fmt: skip
    assert fine == (0, "n\n0\n", "")
    expected = {
        "SELEC nonsense": 'SQL failed: Parser Error: syntax error at or near "SELEC"',
        "DELETE FROM frames": "SQL failed: live queries are read-only: one SELECT, no changes",
        "SELECT * FROM nope": "SQL failed: Catalog Error: Table with name nope does not exist",
    }
    for sql, (code, out, err) in runs.items():
        assert (code, out) == (2, ""), (sql, err)
        assert err.startswith(f"ocproxy: error: {expected[sql]}"), (sql, err)
        assert err.count("\n") == 1, (sql, err)


async def test_query_live_without_a_proxy_is_exit_1() -> None:
    """Not reaching the proxy is a runtime failure, not a bad argument."""
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, out, err = await _ocproxy(
        "query", "--live", "SELECT 1", "--control", f"127.0.0.1:{port}", "--token", "t"
    )
    assert (code, out) == (1, "")
    assert err.startswith(f"ocproxy: error: no control endpoint at ws://127.0.0.1:{port}/")
    assert err.count("\n") == 1, err


async def test_inject_schema_refusal_names_the_force_flag(tmp_path: Path) -> None:
    async with (
        SimCsms() as csms,
        _proxy(tmp_path / "r.duckdb", csms.url) as (proxy, port),
        connect(f"ws://127.0.0.1:{proxy.port}/CP-FLAG", subprotocols=["ocpp1.6"]),  # type: ignore[list-item]
        ControlClient("127.0.0.1", port) as control,
    ):
        await _wait_connected(control, "CP-FLAG")
        code, out, err = await _ocproxy(
            "inject", "CP-FLAG", "Reset", '{"type": "soft"}', "--control", f"127.0.0.1:{port}"
        )
    assert (code, out) == (1, "")
    assert err.startswith("ocproxy: error: inject: "), err
    assert err.endswith(" (use --force to send anyway)\n"), err
    assert err.count("\n") == 1, err


async def test_trace_marks_the_injected_call_and_its_answer(tmp_path: Path) -> None:
    db = tmp_path / "r.duckdb"
    async with (
        SimCsms() as csms,
        _proxy(db, csms.url) as (proxy, port),
        connect(f"ws://127.0.0.1:{proxy.port}/CP-TRACE", subprotocols=["ocpp1.6"]) as charger,  # type: ignore[list-item]
        ControlClient("127.0.0.1", port) as control,
    ):
        await charger.send('[2,"h1","Heartbeat",{}]')
        await charger.recv()
        await control.request(
            "inject", identity="CP-TRACE", action="Heartbeat", payload={}, to="csms"
        )
    code, out, err = await _ocproxy(
        "query", str(db), "trace", "--param", "identity=CP-TRACE", "--format", "json"
    )
    assert (code, err) == (0, ""), err
    rows = json.loads(out)
    assert [(r["type"], r["message_id"] == "h1", r["injected"]) for r in rows] == [
        ("CALL", True, False),
        ("CALLRESULT", True, False),
        ("CALL", False, True),
        ("CALLRESULT", False, True),
    ]
