"""Reloading the configuration without dropping a charger (issue 14 item 3)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb
import pytest
from helpers_ws import upstream, wait_until
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection

from ocproxy.errors import ConfigError
from ocproxy.proxy.config import Route

TIMEOUT = 20.0


async def _echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def test_a_reload_moves_new_connections_and_keeps_live_ones(proxy_factory: Any) -> None:
    async with asyncio.timeout(TIMEOUT):
        async with (
            upstream(_echo) as old,
            upstream(_echo) as new,
            proxy_factory(upstream=old.url) as (proxy, box),
            connect(proxy.url + "/ocpp/CP-LIVE") as live,
        ):
            # The live charger's connection stays open through the reloads.
            server = proxy.server
            moved = replace(server.config, routes=(Route("CP-NEW*", new.url),))
            assert server.reload(moved) == ("routes",)
            with pytest.raises(ConfigError, match="cannot change without a restart"):
                server.reload(replace(moved, listen_port=1))
            with pytest.raises(ConfigError):
                server.reload(replace(moved, routes=(Route("X", "http://nope"),)))
            assert server.config is moved  # the bad ones changed nothing
            async with connect(proxy.url + "/ocpp/CP-NEW-1") as fresh:
                await fresh.send("to the new CSMS")
                assert await fresh.recv() == "to the new CSMS"
            await live.send("still on the old one")
            assert await live.recv() == "still on the old one"
    assert [len(old.handled), len(new.handled)] == [1, 1]
    assert old.requests[0].path == "/ocpp/CP-LIVE"
    assert new.requests[0].path == "/ocpp/CP-NEW-1"
    rows = box[0].rows("SELECT ok, changes, error FROM config_reloads ORDER BY reloaded_at")
    assert [(r["ok"], list(r["changes"] or [])) for r in rows] == [
        (True, ["routes"]),
        (False, []),
        (False, []),
    ]
    assert "listen_port cannot change" in rows[1]["error"]


async def test_sighup_rereads_the_config_file(tmp_path: Path) -> None:
    """A real ``ocproxy proxy --config``: SIGHUP with a new route, then a broken file."""
    async with asyncio.timeout(60):
        async with upstream(_echo) as old, upstream(_echo) as new:
            config = tmp_path / "site.toml"
            config.write_text(f'listen = "127.0.0.1:0"\nupstream = "{old.url}"\n')
            db = tmp_path / "site.duckdb"
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "ocproxy", "proxy", "--config", str(config),
                "--db", str(db), "--quiet",
                stdout=asyncio.subprocess.PIPE,
                env={**os.environ, "COLUMNS": "200"},
            )  # fmt: skip
            assert proc.stdout is not None
            out = proc.stdout

            async def line_with(text: bytes) -> bytes:
                line = await out.readline()
                while text not in line and line:
                    line = await out.readline()
                return line

            try:
                line = await line_with(b"listening on")
                port = int(line.split(b"listening on ws://127.0.0.1:")[1].split(b",")[0])
                url = f"ws://127.0.0.1:{port}"
                async with connect(url + "/ocpp/CP-A") as live:
                    config.write_text(
                        f'listen = "127.0.0.1:0"\nupstream = "{old.url}"\n'
                        f'[[route]]\nidentity = "CP-B"\nupstream = "{new.url}"\n'
                    )
                    proc.send_signal(signal.SIGHUP)
                    assert b"config reloaded: routes" in await line_with(b"config ")
                    async with connect(url + "/ocpp/CP-B") as moved:
                        await moved.send("b")
                        assert await moved.recv() == "b"
                    config.write_text("this is not TOML [")
                    proc.send_signal(signal.SIGHUP)
                    assert b"config not reloaded:" in await line_with(b"config ")
                    await live.send("a")
                    assert await live.recv() == "a"
                await wait_until(lambda: len(new.handled) == 1, "the new CSMS had CP-B")
                proc.send_signal(signal.SIGTERM)
                await proc.communicate()
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    assert proc.returncode == 0
    assert [r.path for r in old.requests] == ["/ocpp/CP-A"]
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT ok FROM config_reloads ORDER BY reloaded_at").fetchall() == [
            (True,),
            (False,),
        ]


async def _start_proxy(db: Path, upstream_url: str) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ocproxy", "proxy", "--listen", "127.0.0.1:0",
        "--upstream", upstream_url, "--db", str(db), "--quiet",
        stdout=asyncio.subprocess.PIPE,
        start_new_session=True,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert proc.stdout is not None
    line = await proc.stdout.readline()
    while b"listening on" not in line:
        assert line, "the proxy stopped before listening"
        line = await proc.stdout.readline()
    port = int(line.split(b"listening on ws://127.0.0.1:")[1].split(b",")[0])
    return proc, f"ws://127.0.0.1:{port}"


@pytest.mark.parametrize("whole_group", [True, False], ids=["group", "relay-only"])
async def test_a_crashed_run_is_accounted_for(tmp_path: Path, whole_group: bool) -> None:
    """kill -9 of the proxy (its group, or its relaying process alone): the file says
    the run crashed, its open connection is closed as proxy-crash, frames_lost unknown."""
    db = tmp_path / "site.duckdb"
    async with asyncio.timeout(60), upstream(_echo) as up:
        proc, url = await _start_proxy(db, up.url)
        try:
            async with connect(url + "/ocpp/CP-CRASH") as charger:
                for i in range(5):
                    await charger.send(f'[2,"{i}","Heartbeat",{{}}]')
                    await charger.recv()
                await asyncio.sleep(0.6)  # past the flush interval: the frames are written
                if whole_group:
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.kill()
                await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if not whole_group:  # the orphaned recorder closes its run itself, then exits
            await wait_until(lambda: _run_stats(db) is not None, "the orphan's stats", 20)
        else:  # any reader says so before a proxy has closed the run
            reader = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "ocproxy", "query", str(db), "SELECT 1 AS one",
                stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _out, noted = await reader.communicate()
            assert reader.returncode == 0
            assert b"ended without its stats, a crash" in noted
            assert b"1 connections left open" in noted
        again, _url = await _start_proxy(db, up.url)
        assert again.stdout is not None
        again.send_signal(signal.SIGTERM)
        said, _ = await again.communicate()
    with duckdb.connect(str(db), read_only=True) as con:
        runs = con.execute(
            "SELECT r.run_id, s.frames_recorded, s.frames_lost FROM runs r "
            "JOIN run_stats s USING (run_id) ORDER BY r.started_at"
        ).fetchall()
        closes = con.execute("SELECT identity, close_reason, closed_by FROM connections").fetchall()
    assert len(runs) == 2
    (_, recorded, lost), (_, _, lost_again) = runs
    assert recorded == 10
    assert lost is None  # unknown, never 0
    assert lost_again == 0
    assert closes == [("CP-CRASH", "proxy-crash", "proxy")]
    if whole_group:  # found by the next run, and said in one line
        assert b"ended without its stats, a crash" in said
        assert b"1 connections were open" in said


def _run_stats(db: Path) -> tuple[object, ...] | None:
    try:
        with duckdb.connect(str(db), read_only=True) as con:
            return con.execute("SELECT * FROM run_stats").fetchone()
    except duckdb.Error:  # still held by the orphaned recorder
        return None
