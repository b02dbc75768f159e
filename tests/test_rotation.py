"""Rotating recordings (issue 14 item 5): a new file at a boundary, nothing lost between."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest
from helpers_ws import upstream
from rich.console import Console
from test_control import _ocproxy
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection

from ocproxy.app import running_proxy
from ocproxy.control.client import ControlClient
from ocproxy.control.token import token_path
from ocproxy.core.events import ClosedBy, ConnectionClosed, ConnectionOpened, FrameReceived
from ocproxy.core.frames import Direction, Opcode
from ocproxy.errors import ConfigError
from ocproxy.proxy.config import ProxyConfig, load_config
from ocproxy.recorder.rotation import Rotation
from ocproxy.recorder.writer import Recorder


def test_names_and_boundaries() -> None:
    start = datetime(2026, 12, 5, 7, 23, 11, tzinfo=UTC)
    hourly, daily = Rotation.parse("hourly"), Rotation.parse("Daily")
    assert hourly.path(Path("/r/site.duckdb"), start) == Path("/r/site-2026-12-05T07-23-11.duckdb")
    assert hourly.next_boundary(start) == datetime(2026, 12, 5, 8, tzinfo=UTC)
    assert daily.next_boundary(start) == datetime(2026, 12, 6, tzinfo=UTC)
    assert Rotation.parse("500MB").path(Path("site.duckdb"), start.replace(microsecond=42_000)) == (
        Path("site-2026-12-05T07-23-11.042.duckdb")
    )
    assert Rotation.parse("500MB").size == 500 << 20
    assert Rotation.parse("2g").size == 2 << 30
    assert Rotation.parse("1.5GB").size == int(1.5 * (1 << 30))
    assert Rotation.parse("500MB").next_boundary(start) is None


@pytest.mark.parametrize("bad", ["weekly", "", "0MB", "-3GB", "12 parsecs", "10KB"])
def test_a_malformed_rotation_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="--rotate"):
        Rotation.parse(bad)


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (["--rotate", "fortnightly", "--control", "127.0.0.1:0"], "give hourly, daily or a"),
        (["--recorder-memory", "16MB"], "--recorder-memory '16MB': at least 32MB"),
    ],
)
def test_the_command_line_refuses_in_one_line(options: list[str], said: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ocproxy", "proxy", "--upstream", "ws://127.0.0.1:1", *options],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert said in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_connection_that_spans_files_has_its_rows_in_each(tmp_path: Path) -> None:
    """Size rotation at 1 MB: every frame is in exactly one file, in order, and each file
    that holds a connection's frames holds its open row too."""
    base = tmp_path / "site.duckdb"
    recorder = Recorder(base, rotation=Rotation.parse("1MB"), batch_rows=200).open_here()
    cid = "c0000000-0000-0000-0000-000000000000"
    recorder.process(
        ConnectionOpened(
            connection_id=cid,
            ts=1.0,
            identity="CP-1",
            path="/ocpp/CP-1",
            remote_addr=None,
            offered_subprotocols=("ocpp1.6",),
            subprotocol="ocpp1.6",
            upstream_url="ws://csms",
            handshake_status=101,
            run_id=recorder.run_id,
        )
    )
    payload = "x" * 800
    total = 4000
    for seq in range(total):
        data = f'[2,"{seq}","DataTransfer",{{"vendorId":"v","data":"{payload}"}}]'.encode()
        recorder.process(
            FrameReceived(cid, seq, 2.0 + seq, Direction.TO_CSMS, Opcode.TEXT, data, len(data))
        )
    recorder.process(ConnectionClosed(cid, 9999.0, 1000, "", ClosedBy.CHARGER))
    stats = recorder.finish()
    files = sorted(tmp_path.glob("site-*.duckdb"))
    assert len(files) >= 2, files
    seqs: list[int] = []
    for path in files:
        with duckdb.connect(str(path), read_only=True) as db:
            seqs += [row[0] for row in db.execute("SELECT seq FROM frames ORDER BY seq").fetchall()]
            opens = db.execute("SELECT connection_id FROM connection_opens").fetchall()
            assert opens == [(cid,)]
            ((recorded,),) = db.execute("SELECT frames_recorded FROM run_stats").fetchall()
            assert recorded == db.execute("SELECT count(*) FROM frames").fetchone()[0]  # type: ignore[index]
    assert seqs == list(range(total))
    assert stats.frames_recorded == total
    with duckdb.connect(str(files[-1]), read_only=True) as db:
        assert db.execute("SELECT close_code FROM connection_closes").fetchall() == [(1000,)]
    # The readers take the glob: the set reads as one recording.
    done = subprocess.run(
        [sys.executable, "-m", "ocproxy", "query", str(tmp_path / "site-*.duckdb"),
         "SELECT (SELECT count(*) FROM frames) AS n, (SELECT count(DISTINCT seq) FROM frames) "
         "AS seqs, (SELECT count(*) FROM connections) AS c, (SELECT max(close_code) FROM "
         "connections) AS code, (SELECT count(*) FROM runs) AS runs", "--format", "csv"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # One connection (its open row is in every file), closed; one run; no "given twice".
    assert done.stdout.split() == ["n,seqs,c,code,runs", f"{total},{total},1,1000,1"]
    assert "given twice" not in done.stderr


async def test_live_sql_follows_the_rotation_and_names_its_file(tmp_path: Path) -> None:
    """--rotate with --control: the recorder is a thread of the proxy then; the control
    endpoint's sql runs on the current file and says which; nothing is lost between."""
    base = tmp_path / "site.duckdb"
    config = ProxyConfig(
        listen_host="127.0.0.1",
        listen_port=0,
        db=str(base),
        quiet=True,
        audit=False,
        control="127.0.0.1:0",
        rotate="1MB",
    )
    total = 1200
    answers: list[dict[str, Any]] = []
    count = "SELECT count(*) AS n FROM frames"
    async with asyncio.timeout(60), upstream(_echo) as csms:
        config = replace(config, upstream=csms.url)
        async with running_proxy(config, Console(file=io.StringIO())) as (proxy, _):
            port = int(_newest(token_path(0).parent.glob("control-*.token")).stem.split("-")[1])
            async with (
                ControlClient("127.0.0.1", port) as control,
                connect(f"ws://127.0.0.1:{proxy.port}/ocpp/CP-R") as charger,
            ):
                for seq in range(total):
                    await charger.send(f'[2,"{seq}","DataTransfer",{{"data":"{"x" * 800}"}}]')
                    await charger.recv()
                    if seq in (0, total - 1):
                        answers.append(await control.request("sql", query=count))
            # The command line says which file a live query saw.
            code, _out, err = await _ocproxy(
                "query", "--live", count, "--control", f"127.0.0.1:{port}"
            )
    files = _rotated(tmp_path)
    assert len(files) >= 2, files
    first, last = answers
    assert (first["file"], last["file"]) == (str(files[0]), str(files[-1]))
    assert first["rotating"] is True
    assert code == 0
    assert err.startswith(f"ocproxy: live, on {files[-1]} only (the current file of --rotate")
    assert first["rows"] == [[2]]  # the CALL and its echo, before the query
    in_files = [_count(path) for path in files]
    assert last["rows"] == [[in_files[-1]]]  # the current file's frames, all of them
    assert sum(in_files) == 2 * total
    assert [_count(path, "connection_opens") for path in files] == [1] * len(files)


async def _echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


def _rotated(directory: Path) -> list[Path]:
    return sorted(directory.glob("site-*.duckdb"))


def _newest(paths: Iterable[Path]) -> Path:
    return max(paths, key=lambda p: p.stat().st_mtime)


def _count(path: Path, table: str = "frames") -> int:
    with duckdb.connect(str(path), read_only=True) as db:
        ((n,),) = db.execute(f"SELECT count(*) FROM {table}").fetchall()
    return int(n)


@pytest.mark.parametrize("bad", ["lots", "", "0MB", "-1GB", "31MB", "10KB"])
def test_a_malformed_recorder_memory_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="--recorder-memory"):
        ProxyConfig(upstream="ws://127.0.0.1:1", recorder_memory=bad).validate()


def test_recorder_memory_in_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    config.write_text('upstream = "ws://127.0.0.1:1"\nrecorder_memory = "1GB"\n')
    assert load_config(config).validate().recorder_memory == "1GB"
    config.write_text('upstream = "ws://127.0.0.1:1"\nrecorder_memory = 1024\n')
    with pytest.raises(ConfigError, match="at least 32MB"):
        load_config(config).validate()


@pytest.mark.parametrize(("given", "limit"), [(None, "256.0 MiB"), ("48MB", "48.0 MiB")])
def test_the_recorder_memory_bound_reaches_duckdb(
    tmp_path: Path, given: str | None, limit: str
) -> None:
    settings = {} if given is None else {"recorder_memory": given}
    with Recorder(tmp_path / "r.duckdb", settings=settings) as recorder:
        result = recorder.query("SELECT current_setting('memory_limit') AS m").result(30)
    assert result.rows == [(limit,)]
