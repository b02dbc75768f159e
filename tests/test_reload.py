"""Reloading the configuration without dropping a charger (issue 14 item 3)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb
import pytest
from helpers_ws import upstream, wait_until
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection
from websockets.sync.client import connect as sync_connect
from websockets.sync.server import ServerConnection as SyncServerConnection
from websockets.sync.server import serve as sync_serve

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


# -- ocproxy reload, through the control endpoint --------------------------------------


class _SyncEcho:
    """An echoing CSMS on a thread of its own, for tests that drive processes only."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self._server = sync_serve(self._echo, "127.0.0.1", 0)
        self.url = f"ws://127.0.0.1:{self._server.socket.getsockname()[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _echo(self, ws: SyncServerConnection) -> None:
        assert ws.request is not None
        self.paths.append(ws.request.path)
        for message in ws:
            ws.send(message)

    def __enter__(self) -> _SyncEcho:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._thread.join(10)


def _ocproxy(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ocproxy", *argv], capture_output=True, text=True, timeout=60
    )


def _proxy_lines(proc: subprocess.Popen[str], until: str) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    while not lines or until not in lines[-1]:
        line = proc.stdout.readline()
        assert line, f"the proxy stopped: {lines}"
        lines.append(line)
    return lines


def test_ocproxy_reload_through_the_control_endpoint(tmp_path: Path) -> None:
    """``ocproxy reload`` against a real ``ocproxy proxy --config --control``: applied
    (exit 0, what changed), refused (exit 1, one line, nothing changes), recorded as
    SIGHUP's are; a live charger keeps its CSMS throughout."""
    config = tmp_path / "site.toml"
    db = tmp_path / "site.duckdb"
    with _SyncEcho() as old, _SyncEcho() as new:
        config.write_text(f'listen = "127.0.0.1:0"\nupstream = "{old.url}"\n')
        proc = subprocess.Popen(
            [sys.executable, "-m", "ocproxy", "proxy", "--config", str(config), "--db", str(db),
             "--control", "127.0.0.1:0", "--quiet"],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
        try:
            said = "".join(_proxy_lines(proc, "listening on"))
            port = int(said.split("listening on ws://127.0.0.1:")[1].split(",")[0])
            control = said.split("control endpoint on ")[1].split(" ")[0]
            with sync_connect(f"ws://127.0.0.1:{port}/ocpp/CP-A") as live:
                config.write_text(
                    f'listen = "127.0.0.1:0"\nupstream = "{old.url}"\n'
                    f'[[route]]\nidentity = "CP-B"\nupstream = "{new.url}"\n'
                )
                applied = _ocproxy("reload", "--control", control)
                with sync_connect(f"ws://127.0.0.1:{port}/ocpp/CP-B") as moved:
                    moved.send("b")
                    assert moved.recv(10) == "b"
                again = _ocproxy("reload", "--control", control)
                config.write_text("this is not TOML [")
                broken = _ocproxy("reload", "--control", control)
                config.write_text(f'listen = "127.0.0.1:1"\nupstream = "{old.url}"\n')
                fixed = _ocproxy("reload", "--control", control)
                live.send("a")
                assert live.recv(10) == "a"
            assert "config reloaded: routes" in "".join(_proxy_lines(proc, "listen_port"))
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert (applied.returncode, applied.stdout, applied.stderr) == (
        0,
        "config reloaded: routes\n",
        "",
    )
    assert again.returncode == 0
    assert again.stdout == "config reloaded: nothing changed\n"
    assert broken.returncode == 1
    assert broken.stderr.startswith("ocproxy: error: config not reloaded: config ")
    assert "is not valid TOML" in broken.stderr
    assert fixed.returncode == 1
    assert fixed.stderr == (
        "ocproxy: error: config not reloaded: listen_port cannot change without a restart\n"
    )
    assert (old.paths, new.paths) == (["/ocpp/CP-A"], ["/ocpp/CP-B"])
    assert proc.returncode == 0
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(
            "SELECT ok, changes, error FROM config_reloads ORDER BY reloaded_at"
        ).fetchall()
    assert [(ok, list(changes or [])) for ok, changes, _ in rows] == [
        (True, ["routes"]),
        (True, []),
        (False, []),
        (False, []),
    ]
    assert "not valid TOML" in rows[2][2]
    assert "listen_port cannot change" in rows[3][2]


def test_ocproxy_reload_command_line_and_unreachable_endpoint() -> None:
    bad = _ocproxy("reload", "--control", "127.0.0.1:notaport")
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1
    with socket.socket() as unused:  # a port nobody listens on
        unused.bind(("127.0.0.1", 0))
        nobody = unused.getsockname()[1]
    gone = _ocproxy("reload", "--control", f"127.0.0.1:{nobody}", "--token", "t")
    assert gone.returncode == 1
    assert gone.stderr.startswith("ocproxy: error: no control endpoint at ws://127.0.0.1:")
    assert len(gone.stderr.strip().splitlines()) == 1
