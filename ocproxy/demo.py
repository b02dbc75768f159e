"""``ocproxy demo``: the main job end to end on loopback, in a few seconds.

A simulated CSMS and a handful of simulated chargers (the ``ocpp`` package's classes)
run real sessions through a real proxy into a real DuckDB file; then the recording is
read back and shown.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import duckdb
from rich.console import Console
from rich.table import Table

from ocproxy.app import running_proxy
from ocproxy.errors import RecorderError
from ocproxy.proxy.config import ProxyConfig
from ocproxy.sim.charger import ChargerSpec, run_charger
from ocproxy.sim.csms import SimCsms

_VERSIONS = ("1.6", "2.0.1", "1.6", "2.0.1", "2.1")


def demo_specs(count: int, pace: float) -> list[ChargerSpec]:
    return [
        ChargerSpec(
            identity=f"DEMO-{i + 1:02d}",
            version=_VERSIONS[i % len(_VERSIONS)],
            vendor="ocproxy-sim",
            model=f"Sim-{_VERSIONS[i % len(_VERSIONS)]}",
            serial=f"SN{1000 + i}",
            meter_samples=3,
            wh_per_sample=1200 + 100 * i,
            pace=pace,
            heartbeats=2,
        )
        for i in range(count)
    ]


async def run_demo(
    db: str, console: Console, *, chargers: int = 4, pace: float = 0.3, quiet: bool = False
) -> int:
    """Run the demo; return the exit code (0 when every charger finished its session)."""
    specs = demo_specs(chargers, pace)
    async with SimCsms(initiate=True) as csms:
        config = replace(
            ProxyConfig(listen_host="127.0.0.1", listen_port=0, upstream=csms.url, db=db),
            quiet=quiet,
        )
        console.print(f"[bold]ocproxy demo[/]: simulated CSMS at {csms.url}, recording to {db}")
        async with running_proxy(config, console, source="demo") as (proxy, _sink):
            url = f"ws://127.0.0.1:{proxy.port}/ocpp"
            results = await asyncio.gather(
                *(_staggered(url, spec, i * pace / 2) for i, spec in enumerate(specs)),
                return_exceptions=True,
            )
    failures = [r for r in results if isinstance(r, BaseException)]
    for failure in failures:
        console.print(f"[red]charger failed: {failure!r}[/]")
    show_recording(Path(db), console)
    return 1 if failures else 0


async def _staggered(url: str, spec: ChargerSpec, delay: float) -> None:
    await asyncio.sleep(delay)
    await run_charger(url, spec)


def show_recording(path: Path, console: Console) -> None:
    """Print what the recording holds: connections, then frames per action."""
    try:
        db = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        raise RecorderError(f"cannot read {path}: {exc}") from exc
    with db:
        console.print(_table(db, "Connections", _CONNECTIONS_SQL))
        console.print(_table(db, "Frames per action", _ACTIONS_SQL))
        total = db.execute("SELECT count(*) FROM frames").fetchone()
    me = command_name()
    console.print(
        f"{total[0] if total else 0} frames recorded in [bold]{path}[/]. Next:\n"
        f"  {me} query {path} transactions      # energy per transaction\n"
        f"  {me} audit {path}                   # compliance findings\n"
        f"  {me} report {path} --html demo.html # charts\n"
        f"  {me} tail {path} --limit 20          # the last frames",
        highlight=False,
        soft_wrap=True,  # a long path must not split a command that is meant to be pasted
    )


def command_name() -> str:
    """How to run ocproxy again from here: ``ocproxy`` when that is on PATH (an activated
    venv), else the console script next to this interpreter (``.venv/bin/ocproxy`` after
    ``make demo``), so that the hints work when pasted."""
    script = Path(sys.executable).parent / "ocproxy"
    found = shutil.which("ocproxy")
    if not script.exists() or (found is not None and os.path.samefile(found, script)):
        return "ocproxy"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


_CONNECTIONS_SQL = """
SELECT c.identity, c.subprotocol, count(f.seq) AS frames,
       round(epoch(c.closed_at - c.opened_at), 2) AS seconds,
       c.close_code, c.closed_by
FROM connections c LEFT JOIN frames f USING (connection_id)
WHERE c.run_id = (SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1)
GROUP BY ALL ORDER BY c.identity
"""

_ACTIONS_SQL = """
SELECT f.action,
       count(*) FILTER (WHERE message_type = 2) AS calls,
       count(*) FILTER (WHERE message_type = 3) AS results,
       count(*) FILTER (WHERE message_type = 4) AS errors,
       round(median(latency_ms), 2) AS p50_ms
FROM frames f JOIN connections c USING (connection_id)
WHERE c.run_id = (SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1)
GROUP BY ALL ORDER BY calls DESC, f.action
"""


def _table(db: duckdb.DuckDBPyConnection, title: str, sql: str) -> Table:
    cursor = db.execute(sql)
    table = Table(title=title, title_justify="left")
    for column in cursor.description:
        table.add_column(column[0])
    for row in cursor.fetchall():
        table.add_row(*("" if v is None else str(v) for v in row))
    return table
