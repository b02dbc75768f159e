"""The command line as a user runs it: real subprocesses, real signals, real files."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import duckdb
import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from ocproxy.app import listen_url
from ocproxy.cli import main
from ocproxy.errors import ConfigError
from ocproxy.proxy.config import MirrorRoute, ProxyConfig, load_config


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ocproxy(*args: str) -> list[str]:
    return [sys.executable, "-m", "ocproxy", *args]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["proxy"], "no upstream"),
        (["proxy", "--upstream", "http://csms.example"], "not a ws:// or wss:// URL"),
        (["proxy", "--upstream", "ws://x", "--listen", "nonsense"], "is not HOST:PORT"),
        (["proxy", "--upstream", "ws://x", "--listen", "1.2.3.4:99999"], "out of range"),
        (["proxy", "--upstream", "ws://x", "--max-message-size", "-1"], "positive integer"),
        (["proxy", "--upstream", "ws://x", "--config", "/nonexistent.toml"], "cannot read config"),
        (["frobnicate"], "invalid choice"),
        ([], "required: COMMAND"),
        (["audit", "x.duckdb", "--format", "xml"], "invalid choice: 'xml'"),
        (["audit", "x.duckdb", "--jobs", "0"], "is not a number of processes"),
        (["report", "x.duckdb", "--top", "0"], "is not a positive integer"),
        (["export", "x.duckdb"], "--parquet"),
    ],
)
def test_bad_command_line_is_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("ocproxy")


@pytest.mark.parametrize(
    ("host", "tls", "url"),
    [
        ("0.0.0.0", False, "ws://0.0.0.0:9000"),
        ("::1", False, "ws://[::1]:9000"),
        ("127.0.0.1", True, "wss://127.0.0.1:9000"),
    ],
)
def test_the_start_up_line_names_what_chargers_dial(host: str, tls: bool, url: str) -> None:
    tls_files = {"tls_cert": ("c.pem",), "tls_key": ("k.pem",)} if tls else {}
    config = ProxyConfig(upstream="ws://csms", listen_host=host, **tls_files)  # type: ignore[arg-type]
    assert listen_url(config, 9000) == url


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("listen = ", "not valid TOML"),
        ('upstream = "ws://x"\nbogus = 1', "unknown key(s) bogus"),
        ('[[route]]\nidentity = "A*"', "each [[route]] needs identity and upstream"),
        ('upstream = "ws://x"\nping_interval = "fast"', "ping_interval must be a number"),
        ('[[route]]\nidentity = "A*"\nupstream = "https://x"', "not a ws:// or wss:// URL"),
    ],
)
def test_bad_config_file_exit_2(
    tmp_path: Path, toml: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "site.toml"
    config.write_text(toml)
    with pytest.raises(SystemExit) as exit_info:
        main(["proxy", "--config", str(config)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_every_option_may_be_set_in_the_file(tmp_path: Path) -> None:
    """Including ``mirror``, as a plain URL (what --mirror takes) or as [[mirror]] tables."""
    config = tmp_path / "site.toml"
    config.write_text('upstream = "ws://csms.test/ocpp"\nmirror = "ws://staging.test/ocpp"\n')
    assert load_config(config).mirrors == (MirrorRoute("*", "ws://staging.test/ocpp"),)
    config.write_text('upstream = "ws://x"\nmirror = "https://staging.test"\n')
    with pytest.raises(ConfigError, match="not a ws:// or wss:// URL"):
        load_config(config).validate()


def test_unopenable_recording_exit_1(tmp_path: Path) -> None:
    not_duckdb = tmp_path / "other.duckdb"
    not_duckdb.write_text("this is another program's file, not a DuckDB database\n" * 100)
    result = subprocess.run(
        _ocproxy(
            "proxy",
            "--upstream",
            "ws://127.0.0.1:1",
            "--listen",
            f"127.0.0.1:{_free_port()}",
            "--db",
            str(not_duckdb),
            "--quiet",
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "cannot open recording" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    # The other program's file is left as it was.
    assert not_duckdb.read_text().startswith("this is another program's file")


def test_help_teaches_with_examples() -> None:
    result = subprocess.run(
        _ocproxy("proxy", "--help"), capture_output=True, text=True, timeout=60, check=True
    )
    assert "examples:" in result.stdout
    assert "--upstream" in result.stdout


@pytest.mark.parametrize("to_group", [False, True], ids=["to-the-proxy", "to-its-group"])
async def test_sigterm_closes_with_1001_flushes_and_exits_0(tmp_path: Path, to_group: bool) -> None:
    """A real `ocproxy proxy` process: traffic, SIGTERM, then every frame is in the file.

    Sent to the whole process group (as timeout(1), systemd or ``kill -- -PGID`` do), the
    signal also reaches the recorder process, which must still write the last frames."""
    seen_close: list[int | None] = []

    async def csms(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)
        seen_close.append(ws.close_code)

    db = tmp_path / "site.duckdb"
    async with _proxy_process(csms, db) as (proc, url):
        charger = await _connect_when_listening(f"{url}/ocpp/CP-SIG")
        for i in range(20):
            await charger.send(f'[2,"{i}","Heartbeat",{{}}]')
            assert await charger.recv() == f'[2,"{i}","Heartbeat",{{}}]'
        returncode, stdout = await _stop(proc, group=to_group)
        await charger.wait_closed()
    assert returncode == 0, stdout
    assert charger.close_code == 1001
    assert seen_close == [1001]
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM frames").fetchone() == (40,)
        assert con.execute(
            "SELECT closed_by, close_code FROM connections WHERE identity = 'CP-SIG'"
        ).fetchall() == [("proxy", 1001)]
        assert con.execute("SELECT frames_recorded, frames_lost FROM run_stats").fetchall() == [
            (40, 0)
        ]
    assert "connections recorded" in stdout


async def test_queue_limit_bounds_the_recorder_process(tmp_path: Path) -> None:
    """``--queue-limit`` holds in the default mode too, where the recorder is a process:
    its queue stays within the limit plus the one batch (256) it took from the pipe."""
    payload = json.dumps({"data": "x" * 8000})

    async def csms(ws: ServerConnection) -> None:
        async for _message in ws:
            pass

    db = tmp_path / "flood.duckdb"
    async with _proxy_process(csms, db, "--queue-limit", "1") as (proc, url):
        charger = await _connect_when_listening(f"{url}/ocpp/CP-FLOOD")
        for i in range(3000):
            await charger.send(f'[2,"{i}","DataTransfer",{payload}]')
        await charger.close()
        returncode, stdout = await _stop(proc)
    assert returncode == 0, stdout
    with duckdb.connect(str(db), read_only=True) as con:
        ((recorded, lost, depth),) = con.execute(
            "SELECT frames_recorded, frames_lost, max_queue_depth FROM run_stats"
        ).fetchall()
    assert (recorded, lost) == (3000, 0)
    assert depth <= 1 + 256


@contextlib.asynccontextmanager
async def _proxy_process(
    csms: Callable[[ServerConnection], Awaitable[None]], db: Path, *options: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """``csms`` on loopback and a real ``ocproxy proxy --quiet`` in front of it: the
    process and the URL chargers dial. The process is killed on the way out if the test
    did not stop it."""
    port = _free_port()
    async with serve(csms, "127.0.0.1", 0, subprotocols=[Subprotocol("ocpp1.6")]) as upstream:
        upstream_port = upstream.sockets[0].getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            *_ocproxy(
                "proxy",
                "--listen",
                f"127.0.0.1:{port}",
                "--upstream",
                f"ws://127.0.0.1:{upstream_port}",
                "--db",
                str(db),
                "--quiet",
                *options,
            ),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group, to be signalled as a whole
        )
        try:
            yield proc, f"ws://127.0.0.1:{port}"
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def _stop(proc: asyncio.subprocess.Process, *, group: bool = False) -> tuple[int, str]:
    """SIGTERM to the proxy (or to its whole process group); its exit code and stdout."""
    if group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(60):
        stdout, _stderr = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, stdout.decode()


async def _connect_when_listening(url: str):  # type: ignore[no-untyped-def]
    """The subprocess needs a moment to start listening: retry refused connections."""
    async with asyncio.timeout(30):
        while True:
            try:
                return await connect(url, subprotocols=["ocpp1.6"])  # type: ignore[list-item]
            except OSError:
                await asyncio.sleep(0.1)


@pytest.mark.parametrize("on_path", [False, True], ids=["venv-not-on-path", "venv-on-path"])
def test_the_demo_hints_are_commands_that_run(tmp_path: Path, on_path: bool) -> None:
    """After ``make demo`` nothing put ``ocproxy`` on PATH: the demo's "Next:" commands
    must work as printed, whether or not the venv is activated."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.pathsep.join(
        d for d in os.environ["PATH"].split(os.pathsep) if Path(d) != Path(bin_dir)
    )
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{path}" if on_path else path}
    db = tmp_path / "demo.duckdb"
    shown = subprocess.run(
        _ocproxy("demo", "--db", str(db), "--pace", "0", "--quiet", "--chargers", "1"),
        capture_output=True, text=True, timeout=120, check=True, env=env, cwd=tmp_path,
    ).stdout  # fmt: skip
    hint = next(line for line in shown.splitlines() if " audit " in line).split("#")[0]
    result = subprocess.run(
        hint, shell=True, capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path
    )
    assert result.returncode == 0, (hint, result.stderr)
    assert hint.strip().startswith("ocproxy " if on_path else "/")


def test_demo_runs_and_records(tmp_path: Path) -> None:
    db = tmp_path / "demo.duckdb"
    result = subprocess.run(
        _ocproxy("demo", "--db", str(db), "--pace", "0", "--quiet"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Frames per action" in result.stdout
    with duckdb.connect(str(db), read_only=True) as con:
        versions = con.execute(
            "SELECT DISTINCT ocpp_version FROM connections ORDER BY 1"
        ).fetchall()
        assert versions == [("1.6",), ("2.0.1",)]
        unanswered = con.execute(
            "SELECT count(*) FROM frames c WHERE message_type = 2 AND NOT EXISTS "
            "(SELECT 1 FROM frames r WHERE r.connection_id = c.connection_id "
            "AND r.request_seq = c.seq)"
        ).fetchone()
        assert unanswered == (0,)
        actions = {row[0] for row in con.execute("SELECT DISTINCT action FROM frames").fetchall()}
    assert {"BootNotification", "StartTransaction", "TransactionEvent", "MeterValues"} <= actions


def test_python_dash_m_and_console_script_agree() -> None:
    module = subprocess.run(
        _ocproxy("--version"), capture_output=True, text=True, timeout=60, check=True
    )
    script = Path(sys.executable).with_name("ocproxy")
    installed = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=60, check=True
    )
    assert module.stdout == installed.stdout
    assert module.stdout.startswith("ocproxy ")


async def test_a_dead_recorder_is_loud_and_counted_and_forwarding_goes_on(
    tmp_path: Path,
) -> None:
    """Kill the recorder process mid-run: frames still flow, the loss is reported, exit 1."""

    async def csms(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                await ws.send(message)

    db = tmp_path / "site.duckdb"
    async with _proxy_process(csms, db) as (proc, url):
        charger = await _connect_when_listening(f"{url}/ocpp/CP-LOSS")
        children = _recorder_processes(proc.pid)
        assert len(children) == 1
        os.kill(children[0], signal.SIGKILL)
        for i in range(600):  # enough batches to reach the dead pipe
            await charger.send(f'[2,"{i}","Heartbeat",{{}}]')
            assert await charger.recv() == f'[2,"{i}","Heartbeat",{{}}]'
        returncode, stdout = await _stop(proc)
    assert returncode == 1
    assert "recorder process gone" in stdout
    assert "frames lost" in stdout


def _children(ppid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == ppid:
                pids.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return pids


def _recorder_processes(proxy: int) -> list[int]:
    """The recorder: the ``python -m ocproxy.recorder.child`` process the proxy started."""
    return [
        pid
        for pid in _children(proxy)
        if b"ocproxy.recorder.child" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


@pytest.mark.parametrize(
    "argv",
    [["audit", "{db}"], ["tail", "{db}"], ["query", "{db}", "SELECT 1"], ["report", "{db}"]],
    ids=["audit", "tail", "query", "report"],
)
def test_a_recording_being_written_is_one_clear_line(tmp_path: Path, argv: list[str]) -> None:
    """While another process (a running proxy) writes a recording, DuckDB locks it:
    every command says so in the same words instead of DuckDB's own message."""
    db = tmp_path / "live.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
            "print('open', flush=True); time.sleep(60)",
            str(db),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "open"
        result = subprocess.run(
            _ocproxy(*(a.format(db=db) for a in argv)),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 2, result.stderr
    assert f"{db} is being written by another process" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
