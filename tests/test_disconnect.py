"""``ocproxy disconnect``: literal durations and plans, then the command as a second
process against a real proxy with simulated chargers that stay and reconnect."""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import duckdb
import pytest
from rich.console import Console

from ocproxy.app import running_proxy
from ocproxy.control.client import ControlClient
from ocproxy.control.disconnect import close_code, close_reason, duration, plan
from ocproxy.control.token import token_path
from ocproxy.proxy.config import ProxyConfig
from ocproxy.sim.csms import SimCsms
from ocproxy.sim.fleet import FleetOptions, run_fleet
from tests.helpers_ws import wait_until


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("250ms", 0.25), ("1.5m", 90), ("2h", 7200), ("1m30s", 90),
     ("1h0m5s", 3605), (" 10m ", 600)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "0", "0s", "-5s", "10x", "1m30", "s", "m5", "1,5m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        duration(text)


def test_close_codes_and_reasons() -> None:
    assert [close_code(c) for c in ("1000", "1001", "1011", "3000", "4999")] == [
        1000, 1001, 1011, 3000, 4999,
    ]  # fmt: skip
    for bad in ("999", "1004", "1005", "1006", "1015", "2000", "5000", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            close_code(bad)
    assert close_reason("é" * 61) == "é" * 61  # 122 bytes
    with pytest.raises(argparse.ArgumentTypeError, match="123 bytes"):
        close_reason("é" * 62)


def test_plan_spreads_matching_chargers_evenly_in_identity_order() -> None:
    live = [
        {"connection_id": "c3", "identity": "ACME-3"},
        {"connection_id": "c1", "identity": "ACME-1"},
        {"connection_id": "x1", "identity": "OTHER-1"},
        {"connection_id": "c2", "identity": "ACME-2"},
        {"connection_id": "c4", "identity": "acme-4"},  # case-sensitive, as routes are
    ]
    assert [(t.identity, t.at) for t in plan(live, "ACME-*", 60)] == [
        ("ACME-1", 0.0),
        ("ACME-2", 20.0),
        ("ACME-3", 40.0),
    ]
    assert [t.at for t in plan(live, "*", None)] == [0.0] * 5
    assert plan(live, "NONE-*", 60) == []
    assert [t.connection_id for t in plan(live, "ACME-[12]", None)] == ["c1", "c2"]


# -- against a real proxy ------------------------------------------------------------------


@asynccontextmanager
async def _site(db: Path, count: int) -> AsyncIterator[tuple[int, list[tuple[str, str]]]]:
    """A SimCsms, a proxy with a control endpoint, and ``count`` chargers that stay
    connected and reconnect 0.1 s after being closed. Yields the control port and the
    chargers' (identity, event) lines, as ``ocproxy sim chargers`` prints them."""
    said: list[tuple[str, str]] = []
    async with SimCsms() as csms:
        config = ProxyConfig(
            listen_host="127.0.0.1", listen_port=0, upstream=csms.url, db=str(db),
            quiet=True, control="127.0.0.1:0",
        )  # fmt: skip
        async with running_proxy(config, Console(file=io.StringIO())) as (proxy, _):
            tokens = token_path(0).parent.glob("control-*.token")
            port = int(max(tokens, key=lambda p: p.stat().st_mtime).stem.split("-")[1])
            options = FleetOptions(
                url=f"ws://127.0.0.1:{proxy.port}/ocpp", count=count, prefix="SP-", pace=0,
                transactions=0, stay=True, reconnect=0.1,
            )  # fmt: skip
            fleet = asyncio.create_task(
                run_fleet(options, lambda who, what, _failed: said.append((who, what)))
            )
            try:
                await wait_until(lambda: _booted(said) == count, f"{count} chargers booted", 20)
                yield port, said
            finally:
                fleet.cancel()
                await asyncio.gather(fleet, return_exceptions=True)


def _booted(said: list[tuple[str, str]]) -> int:
    return sum(what.startswith("boot Accepted") for _, what in said)


async def _ocproxy(*argv: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ocproxy", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _closes(db: Path) -> list[tuple[str, int | None, str | None, str | None]]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(
            "SELECT identity, close_code, close_reason, closed_by FROM connections "
            "WHERE closed_by = 'proxy' AND close_reason <> 'proxy shutting down' "
            "ORDER BY closed_at"
        ).fetchall()


async def _disconnect_one_charger_which_reconnects(tmp_path: Path) -> None:
    db = tmp_path / "r.duckdb"
    async with _site(db, 2) as (port, said):
        control = f"127.0.0.1:{port}"
        code, out, err = await _ocproxy(
            "disconnect", "SP-01", "--code", "4000", "--reason", "maintenance",
            "--control", control,
        )  # fmt: skip
        await wait_until(lambda: _booted(said) == 3, "SP-01 booted again", 20)
        again = await _ocproxy("disconnect", "SP-09", "--control", control)
    assert (code, err) == (0, ""), out
    assert "SP-01 closed (4000 maintenance)" in out
    assert ("SP-01", "closed by the server (4000 maintenance); reconnecting in 0.1 s") in said
    assert not any(who == "SP-02" and what.startswith("closed") for who, what in said)
    assert again == (2, "", "ocproxy: error: no live connection of charger 'SP-09'\n")
    assert _closes(db) == [("SP-01", 4000, "maintenance", "proxy")]


def test_disconnect_one_charger_which_reconnects(tmp_path: Path) -> None:
    # One event loop is enough: the commands run as processes of their own.
    asyncio.run(_disconnect_one_charger_which_reconnects(tmp_path))


async def _disconnect_a_pattern_spread_closes_each_once(tmp_path: Path) -> None:
    db = tmp_path / "r.duckdb"
    async with _site(db, 3) as (port, said):
        control = f"127.0.0.1:{port}"
        dry = await _ocproxy(
            "disconnect", "--identity", "SP-*", "--spread", "3s", "--dry-run", "--control", control
        )
        code, out, err = await _ocproxy(
            "disconnect", "--identity", "SP-*", "--spread", "600ms", "--reason", "moving",
            "--control", control,
        )  # fmt: skip
        await wait_until(lambda: _booted(said) == 6, "all booted again", 20)
        none = await _ocproxy("disconnect", "--identity", "XX-*", "--control", control)
        async with ControlClient("127.0.0.1", port) as client:
            live = await client.request("connections")
    assert dry == (0, "+0s  SP-01\n+1s  SP-02\n+2s  SP-03\n"
                      "3 connection(s) would be closed with 1001\n", "")  # fmt: skip
    assert (code, err) == (0, ""), out
    assert [line.split(" ", 1)[1] for line in out.splitlines()] == [
        "SP-01 closed (1001 moving)",
        "SP-02 closed (1001 moving)",
        "SP-03 closed (1001 moving)",
        "connection(s) closed over 0.6s",
    ]
    # Each charger was closed once: the connections they reconnected with are still open.
    assert sorted(c["identity"] for c in live) == ["SP-01", "SP-02", "SP-03"]
    assert [row[0] for row in _closes(db)] == ["SP-01", "SP-02", "SP-03"]
    assert none == (2, "", "ocproxy: error: --identity 'XX-*' matches none of the 3 live "
                           "chargers\n")  # fmt: skip


def test_disconnect_a_pattern_spread_closes_each_once(tmp_path: Path) -> None:
    # One event loop is enough: the commands run as processes of their own.
    asyncio.run(_disconnect_a_pattern_spread_closes_each_once(tmp_path))


async def _disconnect_bad_command_lines_are_one_line() -> None:
    for argv in (
        ("disconnect",),
        ("disconnect", "CP-1", "--identity", "CP-*"),
        ("disconnect", "CP-1", "--spread", "10s"),
        ("disconnect", "--identity", "CP-*", "--spread", "soon"),
        ("disconnect", "CP-1", "--code", "1006"),
    ):
        code, out, err = await _ocproxy(*argv, "--control", "127.0.0.1:1", "--token", "t")
        assert (code, out) == (2, ""), argv
        assert err.startswith("ocproxy"), argv
        assert err.count("\n") == 1, (argv, err)
    no_proxy = await _ocproxy("disconnect", "CP-1", "--control", "127.0.0.1:1", "--token", "t")
    assert no_proxy[0] == 1
    assert no_proxy[2].startswith("ocproxy: error: no control endpoint at ws://127.0.0.1:1/")


def test_disconnect_bad_command_lines_are_one_line() -> None:
    # One event loop is enough: the commands run as processes of their own.
    asyncio.run(_disconnect_bad_command_lines_are_one_line())
