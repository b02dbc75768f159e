"""docs/migration.md end to end: evaluate a new CSMS with --mirror and `report --mirror`,
then move the chargers to it with a reload of the config file (SIGHUP) and `ocproxy
disconnect --identity PATTERN --spread`, and check the move with the `cutover` query.

Two simulated CSMSs and simulated chargers (``ocproxy.sim``) in this process; the proxy,
report, disconnect and query are real ``ocproxy`` processes, as a site host runs them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import duckdb
import pytest
from helpers_cli import run_ocproxy
from helpers_ws import wait_until

from ocproxy.control.client import ControlClient
from ocproxy.sim.csms import SimCsms
from ocproxy.sim.fleet import FleetOptions, run_fleet
from ocproxy.tail.cli import follow, start
from ocproxy.tail.snapshot import TailFilters, TailSnapshot

TIMEOUT = 60


async def _ocproxy(*argv: str | Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ocproxy", *map(str, argv),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


class Proxy:
    """``ocproxy proxy --config FILE`` as a process, and the lines it prints."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self.url = ""
        self.control = ""
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            line = raw.decode().strip()
            self.lines.append(line)
            if "listening on ws://" in line:
                self.url = line.split("listening on ")[1].split(",")[0]
            if line.startswith("control endpoint on "):
                self.control = line.split("control endpoint on ")[1].split(" ")[0]

    async def said(self, text: str) -> None:
        await wait_until(lambda: any(text in line for line in self.lines), repr(text), 20)

    async def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        await self.process.wait()
        await self._reader
        assert self.process.returncode == 0, self.lines


@asynccontextmanager
async def proxy(config: Path, db: Path) -> AsyncIterator[Proxy]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ocproxy", "proxy", "--config", str(config), "--db", str(db),
        "--quiet", stdout=asyncio.subprocess.PIPE, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    running = Proxy(process)
    try:
        await running.said("listening on")
        yield running
    finally:
        if process.returncode is None:
            await running.stop()


@asynccontextmanager
async def _tails(control: str) -> AsyncIterator[tuple[list[TailSnapshot], list[TailSnapshot]]]:
    """Two live ``ocproxy tail`` views (tail.cli's start and follow): the default one
    and ``--legs all``; each box holds the latest snapshot."""
    host, port = control.rsplit(":", 1)
    async with (
        ControlClient(host, int(port)) as first,
        ControlClient(host, int(port)) as second,
    ):
        boxes: list[list[TailSnapshot]] = []
        tasks = []
        for client, filters in ((first, TailFilters()), (second, TailFilters(legs="all"))):
            box = [await start(client, filters, 1000)]
            boxes.append(box)
            update = functools.partial(box.__setitem__, 0)
            tasks.append(asyncio.create_task(follow(client, box[0], update, refresh=None)))
        try:
            yield boxes[0], boxes[1]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def _config(
    old: SimCsms,
    *,
    mirror: SimCsms | None = None,
    route: SimCsms | None = None,
    allow: list[str] | None = None,
) -> str:
    text = f'listen = "127.0.0.1:0"\ncontrol = "127.0.0.1:0"\nupstream = "{old.url}"\n'
    if mirror is not None:
        text += f'[[mirror]]\nidentity = "DEPOT-*"\nupstream = "{mirror.url}"\n'
        text += f"allow_actions = {json.dumps(allow or [])}\n"
    if route is not None:
        text += f'[[route]]\nidentity = "DEPOT-*"\nupstream = "{route.url}"\n'
    return text


async def _evaluate(tmp_path: Path, old: SimCsms, new: SimCsms) -> str:
    """Step 1: a day's traffic mirrored to the new CSMS (here: three sessions)."""
    config = tmp_path / "evaluate.toml"
    config.write_text(_config(old, mirror=new))
    db = tmp_path / "evaluation.duckdb"
    async with proxy(config, db) as running, _tails(running.control) as (own, every):
        options = FleetOptions(
            url=f"{running.url}/ocpp", count=3, prefix="DEPOT-", pace=0.02, transactions=1
        )
        result = await run_fleet(options, lambda *_: None)
        assert result.failures == []
        # Three charger connections of 22 frames each, and copies on three mirror legs.
        await wait_until(lambda: own[0].total == 66, "the chargers' frames tailed", 20)
        await wait_until(
            lambda: len({r.connection_id for r in every[0].frames if r.mirror}) == 3,
            "the mirror legs' frames tailed",
            20,
        )
    with duckdb.connect(str(db), read_only=True) as con:
        legs = dict(con.execute("SELECT connection_id, source FROM connections").fetchall())
    # ocproxy tail, live: the chargers' own connections by default; with --legs all the
    # mirror legs too, each of their frames marked as such.
    assert {r.connection_id for r in own[0].frames} == {c for c, s in legs.items() if s == "proxy"}
    assert not any(r.mirror for r in own[0].frames)
    assert not any(c.mirror for c in own[0].connections)
    assert {r.connection_id: r.mirror for r in every[0].frames} == {
        c: s == "mirror" for c, s in legs.items()
    }
    assert every[0].mirror_ids == {c for c, s in legs.items() if s == "mirror"}
    code, out, err = await _ocproxy("report", db, "--mirror")
    assert (code, err) == (0, ""), err
    return out


async def _cut_over(tmp_path: Path, old: SimCsms, new: SimCsms) -> list[dict[str, Any]]:
    """Steps 2-4: reload the routes, close the DEPOT chargers spread over a second, and
    read the move back live and from the file."""
    config = tmp_path / "site.toml"
    config.write_text(_config(old))
    db = tmp_path / "site.duckdb"
    said: list[tuple[str, str]] = []

    def tell(who: str, what: str, _failed: bool) -> None:
        said.append((who, what))

    def booted() -> int:
        return sum(what.startswith("boot Accepted") for _, what in said)

    async with proxy(config, db) as running:
        fleets = []
        for prefix, n in (("DEPOT-", 3), ("OTHER-", 1)):
            options = FleetOptions(
                url=f"{running.url}/ocpp", count=n, prefix=prefix, pace=0,
                transactions=0, stay=True, reconnect=0.1,
            )  # fmt: skip
            fleets.append(asyncio.create_task(run_fleet(options, tell)))
        try:
            await wait_until(lambda: booted() == 4, "4 chargers booted", 20)
            # A misspelt action refuses the whole new config: the routes stay as they were.
            config.write_text(_config(old, route=new, mirror=new, allow=["RemoteStart"]))
            running.process.send_signal(signal.SIGHUP)
            await running.said("config not reloaded")
            assert (
                "allow_actions entry 'RemoteStart' is not an action of OCPP 1.6, 2.0.1, 2.1"
            ) in running.lines[-1]
            code, out, err = await _ocproxy(
                "disconnect", "--identity", "NOPE-*", "--control", running.control
            )
            assert (code, out, err) == (
                2, "", "ocproxy: error: --identity 'NOPE-*' matches none of the 4 live chargers\n"
            )  # fmt: skip
            config.write_text(_config(old, route=new))
            running.process.send_signal(signal.SIGHUP)
            await running.said("config reloaded: routes")
            code, out, err = await _ocproxy(
                "disconnect", "--identity", "DEPOT-*", "--spread", "1s",
                "--reason", "moving to the new CSMS", "--control", running.control,
            )  # fmt: skip
            assert (code, err) == (0, ""), out
            await wait_until(lambda: booted() == 7, "the DEPOT chargers booted again", 20)
            code, out, err = await _ocproxy(
                "query", "--live", "cutover", "--param", f"to={new.url}",
                "--control", running.control, "--format", "json",
            )  # fmt: skip
            assert (code, err) == (0, ""), err
            live = json.loads(out)
        finally:
            for fleet in fleets:
                fleet.cancel()
            await asyncio.gather(*fleets, return_exceptions=True)
    code, out, err = await _ocproxy(
        "query", db, "cutover", "--param", f"to={new.url}", "--format", "json"
    )
    assert (code, err) == (0, ""), err
    recorded: list[dict[str, Any]] = json.loads(out)
    assert [r["identity"] for r in live] == [r["identity"] for r in recorded]
    with duckdb.connect(str(db), read_only=True) as con:
        reloads = con.execute(
            "SELECT ok, changes, error FROM config_reloads ORDER BY reloaded_at"
        ).fetchall()
    assert [(ok, changes) for ok, changes, _ in reloads] == [(False, []), (True, ["routes"])]
    assert "'RemoteStart' is not an action of OCPP" in reloads[0][2]
    return recorded


async def _playbook(tmp_path: Path) -> None:
    async with (
        asyncio.timeout(TIMEOUT),
        SimCsms() as old,
        SimCsms(heartbeat_interval=60) as new,
    ):
        evaluation = await _evaluate(tmp_path, old, new)
        moves = await _cut_over(tmp_path, old, new)
    # The evaluation: the new CSMS answers every boot, asking for another heartbeat.
    assert re.search(r"chargers mirrored\s+│ 3\s", evaluation)
    assert "never accepted" not in evaluation
    assert [
        [cell.strip() for cell in line.split("│")[1:4]]
        for line in evaluation.splitlines()
        if "interval: 300 → 60" in line
    ] == [["BootNotification", "interval: 300 → 60", "3"]]
    # The move, per charger: closed by the proxy one after the other, back on the new
    # CSMS at once, and its first boot there accepted; OTHER-01 stayed where it was.
    depots = moves[:3]
    assert [m["identity"] for m in moves] == ["DEPOT-01", "DEPOT-02", "DEPOT-03", "OTHER-01"]
    for move in depots:
        assert (move["from_upstream"], move["to_upstream"]) == (old.url, new.url)
        assert (move["left_by"], move["left_reason"]) == ("proxy", "moving to the new CSMS")
        assert move["handshake_status"] == 101
        assert (move["boot_answer"], move["boot_status"], move["boot_interval_s"]) == (
            "CALLRESULT", "Accepted", 60,
        )  # fmt: skip
        assert move["connections_on_new"] == 1
        assert move["current_upstream"] == new.url
        assert move["moved_at"] <= move["boot_sent_at"] <= move["boot_answered_at"]
    assert sorted(m["moved_at"] for m in depots) == [m["moved_at"] for m in depots]
    other = moves[3]
    assert (other["moved_at"], other["to_upstream"], other["current_upstream"]) == (
        None, None, old.url,
    )  # fmt: skip


def test_the_migration_playbook(tmp_path: Path) -> None:
    # One event loop is enough: the commands run as processes of their own.
    asyncio.run(_playbook(tmp_path))


@pytest.mark.parametrize(
    ("config", "said"),
    [
        (
            'upstream = "ws://127.0.0.1:1"\n[[mirror]]\nidentity = "DEPOT-*"\n'
            'upstream = "https://candidate.example"\n',
            "[[mirror]] 'DEPOT-*' upstream 'https://candidate.example' is not a ws:// or "
            "wss:// URL",
        ),
        (
            'upstream = "ws://127.0.0.1:1"\nmirror = "http://candidate.example"\n',
            "mirror upstream 'http://candidate.example' is not a ws:// or wss:// URL",
        ),
        (
            'upstream = "ws://127.0.0.1:1"\n[[mirror]]\nidentity = "DEPOT-*"\n'
            'upstream = "ws://127.0.0.1:2"\nallow_actions = ["TriggerMessage", "Reboot"]\n',
            "[[mirror]] 'DEPOT-*': allow_actions entry 'Reboot' is not an action of OCPP "
            "1.6, 2.0.1, 2.1",
        ),
        (
            'upstream = "ws://127.0.0.1:1"\n[[mirror]]\nidentity = "DEPOT-*"\n'
            'upstream = "ws://127.0.0.1:2"\nallow_actions = "TriggerMessage"\n',
            "[[mirror]] 'DEPOT-*': allow_actions must be a list of action names",
        ),
    ],
    ids=["mirror-https", "mirror-http", "unknown-action", "actions-not-a-list"],
)
def test_a_bad_mirror_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: str, said: str
) -> None:
    path = tmp_path / "site.toml"
    path.write_text(config)
    db = tmp_path / "site.duckdb"
    code, out, err = run_ocproxy(capsys, "proxy", "--config", path, "--db", db)
    assert (code, out) == (2, "")
    assert err.startswith("ocproxy: error: ")
    assert said in err
    assert err.count("\n") == 1
    assert not db.exists()  # nothing started, nothing recorded


def test_a_mirror_url_that_is_not_ws_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ("proxy", "--upstream", "ws://127.0.0.1:1", "--mirror", "http://candidate.example")
    code, out, err = run_ocproxy(capsys, *argv)
    assert (code, out) == (2, "")
    assert err.startswith("ocproxy: error: ")
    assert err.endswith("--mirror 'http://candidate.example' is not a ws:// or wss:// URL\n")
    assert err.count("\n") == 1
