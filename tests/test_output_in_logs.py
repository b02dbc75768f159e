"""Output into a log (a pipe, a file, systemd): nothing squeezed to the 80 columns rich
assumes there, nor to a narrow ``$COLUMNS``. Tables come out at their natural width, never
truncated, and one-line messages stay on one line.

Every command here runs as a user runs it, ``ocproxy ... | cat``: stdout is a pipe.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

OCPROXY = [sys.executable, "-m", "ocproxy"]
NARROW = {**os.environ, "COLUMNS": "40"}
IDENTITY = "DEPOT-NORTH-CHARGER-WITH-A-LONG-NAME-01"


def _run(*argv: str | Path, cwd: Path) -> str:
    done = subprocess.run(
        [*OCPROXY, *map(str, argv)],
        cwd=cwd,
        env=NARROW,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    return done.stdout


def _assert_nothing_cut(out: str) -> None:
    assert out.strip()
    assert "…" not in out, out
    assert max(map(len, out.splitlines())) > 40  # laid out wider than $COLUMNS


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("logs")
    out = _run("demo", "--db", "site.duckdb", "--pace", "0", "--quiet", cwd=directory)
    # The demo's own tables: every column header whole.
    _assert_nothing_cut(out)
    for header in ("identity", "subprotocol", "close_code", "closed_by", "p50_ms"):
        assert f" {header} " in out, out
    return directory / "site.duckdb"


def test_the_audit_table_keeps_every_column_whole(recording: Path) -> None:
    out = _run("audit", recording, cwd=recording.parent)
    _assert_nothing_cut(out)
    lines = out.splitlines()
    assert lines[0] == "ocproxy audit: 4 findings over 4 connections"
    rows = [line for line in lines if "heartbeat-drift" in line]
    assert len(rows) == 4, out
    # The example frame is whole, on the line below its finding's message.
    examples = [line for line in lines if '"Heartbeat",{}]' in line]
    assert len(examples) == 4, out


@pytest.mark.parametrize(
    "argv",
    [["tail", "{db}", "--limit", "10"], ["report", "{db}"], ["query", "{db}", "sessions"]],
    ids=lambda argv: argv[0],
)
def test_tables_and_panels_are_drawn_at_their_natural_width(
    argv: list[str], recording: Path
) -> None:
    out = _run(*(a.format(db=recording) for a in argv), cwd=recording.parent)
    _assert_nothing_cut(out)
    widths = {len(line) for line in out.splitlines() if line.startswith(("│", "┃"))}
    assert widths, out
    assert max(widths) < 400, out  # natural, not the unbounded width the console claims


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def csms(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    process = subprocess.Popen(
        [*OCPROXY, "sim", "csms", "--listen", f"127.0.0.1:{port}", "--quiet"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for_port(port, process)
        yield f"ws://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)


def _wait_for_port(port: int, process: subprocess.Popen[str]) -> None:
    for _ in range(300):
        assert process.poll() is None, process.communicate()[0]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def test_the_proxy_log_keeps_lines_whole(csms: str, tmp_path: Path) -> None:
    """`ocproxy proxy > proxy.log`: the start-up line, each frame's line and the exit
    summary (with a charger's long identity) are whole lines."""
    port = _free_port()
    proxy = subprocess.Popen(
        [*OCPROXY, "proxy", "--listen", f"127.0.0.1:{port}", "--upstream", csms,
         "--db", "site.duckdb"],
        cwd=tmp_path,
        env=NARROW,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proxy.stdout is not None
    # Its start-up line says it listens (a probe connection would be recorded, as 499).
    first = proxy.stdout.readline()
    try:
        charger = subprocess.run(
            [*OCPROXY, "sim", "chargers", "--to", f"ws://127.0.0.1:{port}", "--pace", "0",
             "--prefix", IDENTITY[:-2], "--quiet"],
            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert charger.returncode == 0, charger.stdout + charger.stderr
    finally:
        proxy.send_signal(signal.SIGTERM)
        rest, err = proxy.communicate(timeout=60)
    out = first + rest
    assert proxy.returncode == 0, err
    _assert_nothing_cut(out)
    lines = out.splitlines()
    assert lines[0] == (
        f"ocproxy listening on ws://127.0.0.1:{port}, recording to site.duckdb; Ctrl-C to stop"
    )
    frames = [line for line in lines if " id=" in line]
    assert len(frames) >= 10, out
    assert all(line.endswith(" B") and IDENTITY in line for line in frames), out
    title = next(line for line in lines if line.startswith("ocproxy: connections recorded"))
    assert title.endswith(" backpressure waits)"), out
    row = next(line for line in lines if line.startswith("│ " + IDENTITY))
    cells = [cell.strip() for cell in row.strip("│").split("│")]
    assert cells[1:3] == ["ocpp1.6", "101"], row
    assert cells[-1] == "1000 by charger", row
