"""``ocproxy tail``: watch a running proxy's frames live, or the end of a recording.

Without DB it subscribes to the control endpoint of ``ocproxy proxy --control ...``
and redraws a :class:`rich.live.Live` view as events arrive; :func:`follow` is the
event-consuming part, usable without any display. With DB it reads the recording
read-only and prints the view once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import Any

import duckdb
from rich.console import Console, RenderableType
from rich.live import Live

from ocproxy.argtypes import positive_int
from ocproxy.audit.offline import open_recording
from ocproxy.control.cli import add_control_option
from ocproxy.control.client import ControlClient
from ocproxy.core.frames import Direction
from ocproxy.errors import ConfigError, ControlError, unknown_identity
from ocproxy.proxy.config import parse_control
from ocproxy.tail.render import fit, render
from ocproxy.tail.snapshot import (
    ConnectionRow,
    TailFilters,
    TailSnapshot,
    apply_event,
    closed_text,
    connection_row,
    end,
    frame_row_from_record,
    new_snapshot,
)
from ocproxy.terminal import make_console

DEFAULT_LIMIT = 50
REFRESH_CONNECTIONS_S = 2.0  # how often the live view re-reads the frame counts
ENDED = "the control endpoint closed the connection (proxy stopped, or this tail fell behind)"

EPILOG = """\
examples:
  ocproxy proxy --upstream wss://csms.example.net/ocpp --control 9100 &
  ocproxy tail --control 127.0.0.1:9100
      live: connections above, the newest frames below; Ctrl-C to quit
  ocproxy tail --identity CP-17 --action MeterValues
  ocproxy tail site.duckdb --direction to_charger --limit 200
      the last 200 frames sent to chargers in a finished recording, printed once
  ocproxy tail site.duckdb --identity CP-17 --payload --limit 10
      the last 10 frames of CP-17, each with its payload

Latency is shown for responses; findings of the audit are marked with a red
"⚑ rule-id", CALLs ocproxy injected (and their answers) with "◆ injected". The legs
ocproxy opens to a secondary CSMS (proxy --mirror) are left out unless --legs says
otherwise, and marked "mirror" after the identity.
Exit codes: 0 (Ctrl-C, or DB printed), 1 no control endpoint / refused token / the
endpoint went away, 2 bad arguments or a file that is not an ocproxy recording.
"""


def add_tail_command(commands: Any) -> None:
    cmd = commands.add_parser(
        "tail",
        help="watch a running proxy's frames live, or the end of a recording",
        description="Show the connections and a scrolling list of frames (coloured by "
        "direction and type, latency for responses, findings marked) live from a "
        "running `ocproxy proxy --control ...`, or once from a finished recording.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmd.add_argument(
        "db",
        nargs="?",
        metavar="DB",
        help="a finished recording to show instead of the live proxy",
    )
    cmd.add_argument("--identity", metavar="ID", help="only this charger's frames")
    cmd.add_argument("--action", metavar="ACTION", help="only frames of this OCPP action")
    cmd.add_argument(
        "--direction",
        choices=[d.value for d in Direction],
        help="only frames sent this way",
    )
    cmd.add_argument(
        "--legs",
        choices=("charger", "mirror", "all"),
        default="charger",
        help="whose connections: the chargers' own (default), mirror (the legs ocproxy "
        "opened to a secondary CSMS, see --mirror in ocproxy proxy) or all (mirror lines "
        'are marked "mirror")',
    )
    cmd.add_argument(
        "--limit",
        type=positive_int,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"show (and keep) the last N frames (default {DEFAULT_LIMIT})",
    )
    cmd.add_argument(
        "--payload",
        action="store_true",
        help="show each frame's payload (as recorded: redacted) under it",
    )
    add_control_option(cmd)
    cmd.set_defaults(func=run_tail)


def run_tail(args: argparse.Namespace, console: Console | None = None) -> int:
    console = console or make_console()
    filters = TailFilters(args.identity, args.action, args.direction, args.legs)
    if args.db is not None:
        snapshot = replace(read_recording(args.db, filters, args.limit), payloads=args.payload)
        console.print(render(snapshot, width=console.width if console.is_terminal else None))
        return 0
    host, port = parse_control(args.control)
    return asyncio.run(
        tail_live(host, port, args.token, filters, args.limit, console, payloads=args.payload)
    )


# -- a finished recording ----------------------------------------------------------------


def read_recording(path: str, filters: TailFilters, limit: int) -> TailSnapshot:
    """The connections and the last ``limit`` frames of a recording (read-only)."""
    with open_recording(path) as db:
        try:
            return _read(db, filters, limit, path)
        except duckdb.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"cannot read {path}: {first}") from exc


def _read(
    db: duckdb.DuckDBPyConnection, filters: TailFilters, limit: int, path: str
) -> TailSnapshot:
    tables = {
        r[0] for r in db.execute("SELECT table_name FROM information_schema.tables").fetchall()
    }
    columns = {r[0] for r in db.execute("DESCRIBE frames").fetchall()}
    injected = "f.injected" if "injected" in columns else "false"
    connection_columns = {r[0] for r in db.execute("DESCRIBE connections").fetchall()}
    # Recordings from before mirroring have no mirror legs.
    mirror = "c.mirror_of IS NOT NULL" if "mirror_of" in connection_columns else "false"
    findings = "g.rules" if "findings" in tables else "NULL::VARCHAR[]"
    findings_cte = _FINDINGS_CTE if "findings" in tables else ""
    findings_join = "LEFT JOIN g USING (connection_id, seq)" if "findings" in tables else ""
    params = {**_filter_params(filters), "limit": limit}
    frames_sql = _FRAMES_SQL.format(
        cte=findings_cte, injected=injected, findings=findings, join=findings_join, mirror=mirror
    )
    records = _records(db, frames_sql, params)
    total_row = db.execute(_COUNT_SQL.format(mirror=mirror), _filter_params(filters)).fetchone()
    connections = [
        _connection(record)
        for record in _records(
            db,
            _CONNECTIONS_SQL.format(mirror=mirror),
            {"identity": filters.identity, "legs": filters.legs},
        )
    ]
    if filters.identity is not None and not connections:
        # A misspelt identity must not look like a quiet charger.
        raise ConfigError(unknown_identity(filters.identity, path))
    return new_snapshot(
        filters,
        limit,
        connections=connections,
        frames=[frame_row_from_record(r) for r in reversed(records)],
        total=int(total_row[0]) if total_row else 0,
        source=path,
    )


def _filter_params(filters: TailFilters) -> dict[str, Any]:
    return {
        "identity": filters.identity,
        "action": filters.action,
        "direction": filters.direction,
        "legs": filters.legs,
    }


_WHERE = """
($identity IS NULL OR c.identity = $identity)
AND ($action IS NULL OR f.action = $action)
AND ($direction IS NULL OR f.direction = $direction)
AND ($legs = 'all' OR ({mirror}) = ($legs = 'mirror'))
"""
_FINDINGS_CTE = """
WITH g AS (
    SELECT connection_id, seq, list(DISTINCT rule) AS rules
    FROM findings WHERE seq IS NOT NULL GROUP BY connection_id, seq
)
"""
_FRAMES_SQL = (
    """
{cte}
SELECT f.connection_id, f.seq, epoch_us(f.ts) / 1e6 AS ts, c.identity, f.direction,
       f.message_type, f.message_id, f.action, f.latency_ms, f.size, f.parse_status,
       f.error_code, f.pairing, {injected} AS injected, {findings} AS findings,
       f.payload::VARCHAR AS payload, CASE WHEN f.payload IS NULL THEN f.raw END AS raw,
       {mirror} AS mirror
FROM frames f LEFT JOIN connections c USING (connection_id) {join}
WHERE """
    + _WHERE
    + """
ORDER BY f.ts DESC, f.connection_id DESC, f.seq DESC
LIMIT $limit
"""
)
_COUNT_SQL = (
    "SELECT count(*) FROM frames f LEFT JOIN connections c USING (connection_id) WHERE " + _WHERE
)
_CONNECTIONS_SQL = """
SELECT c.connection_id, c.identity, c.subprotocol, epoch_us(c.opened_at) / 1e6 AS opened_at,
       c.handshake_status, c.closed_at IS NOT NULL AS is_closed, c.close_code, c.closed_by,
       coalesce(n.frames, 0) AS frames, {mirror} AS mirror
FROM connections c
LEFT JOIN (SELECT connection_id, count(*) AS frames FROM frames GROUP BY connection_id) n
    USING (connection_id)
WHERE ($identity IS NULL OR c.identity = $identity)
    AND ($legs = 'all' OR ({mirror}) = ($legs = 'mirror'))
ORDER BY c.opened_at, c.connection_id
"""


def _records(
    db: duckdb.DuckDBPyConnection, sql: str, params: Mapping[str, Any]
) -> list[dict[str, Any]]:
    cursor = db.execute(sql, dict(params))
    names = [d[0] for d in cursor.description or []]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _connection(record: dict[str, Any]) -> ConnectionRow:
    status = record["handshake_status"]
    if status is not None and status != 101:
        record["closed"] = f"refused (HTTP {status})"
    elif record["is_closed"]:
        record["closed"] = closed_text(record["close_code"], record["closed_by"])
    return connection_row(record)


# -- a running proxy ---------------------------------------------------------------------


async def start(
    client: ControlClient, filters: TailFilters, limit: int, source: str = ""
) -> TailSnapshot:
    """Subscribe, then list the connections: the snapshot ``follow`` starts from.

    Subscribing first leaves no gap; an ``open`` already in the list is ignored when its
    event follows, and frame counts only grow.
    """
    await client.request("subscribe", **filters.params())
    listed = await client.request("connections")
    return new_snapshot(
        filters,
        limit,
        connections=[connection_row(c) for c in listed],
        source=source,
        live=True,
    )


async def follow(
    client: ControlClient,
    snapshot: TailSnapshot,
    on_update: Callable[[TailSnapshot], None],
    *,
    refresh: float | None = REFRESH_CONNECTIONS_S,
) -> TailSnapshot:
    """Fold every pushed event into the snapshot, calling ``on_update`` with each new one.

    Every ``refresh`` seconds the connections are listed again so their frame counts
    stay right when filters hold frames back. Returns, marked ended, once the endpoint
    closes.
    """
    updates: asyncio.Queue[Mapping[str, Any] | None] = asyncio.Queue()

    async def pump() -> None:
        async for event in client.events():
            updates.put_nowait(event)
        updates.put_nowait(None)

    async def poll(every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                listed = await client.request("connections")
            except ControlError:
                return  # the endpoint is closing: pump() ends the follow
            updates.put_nowait({"event": "connections", "connections": listed})

    tasks = [asyncio.create_task(pump())]
    if refresh:
        tasks.append(asyncio.create_task(poll(refresh)))
    try:
        while (update := await updates.get()) is not None:
            snapshot = apply_event(snapshot, update)
            on_update(snapshot)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    snapshot = end(snapshot, ENDED)
    on_update(snapshot)
    return snapshot


async def tail_live(
    host: str,
    port: int,
    token: str | None,
    filters: TailFilters,
    limit: int,
    console: Console,
    *,
    payloads: bool = False,
) -> int:
    """The live view until Ctrl-C (exit 0) or until the endpoint goes away (ControlError)."""
    async with ControlClient(host, port, token) as client:
        first = await start(client, filters, limit, f"{host}:{port}")
        current = [replace(first, payloads=payloads)]

        def view() -> RenderableType:
            if console.is_terminal:
                return fit(current[0], console)
            return render(current[0], None)  # piped: printed once, in full, natural width

        stop = asyncio.Event()
        with _on_signals(stop.set), Live(get_renderable=view, console=console):
            follower = asyncio.create_task(follow(client, current[0], _store(current)))
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({follower, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for task in (follower, stopper):
                task.cancel()
            await asyncio.gather(follower, stopper, return_exceptions=True)
        if not follower.cancelled() and (failure := follower.exception()) is not None:
            raise failure
        if stop.is_set():
            return 0
    raise ControlError(ENDED)


def _store(box: list[TailSnapshot]) -> Callable[[TailSnapshot], None]:
    def store(snapshot: TailSnapshot) -> None:
        box[0] = snapshot  # read by the Live refresh thread: snapshots are immutable

    return store


@contextlib.contextmanager
def _on_signals(callback: Callable[[], None]) -> Iterator[None]:
    """Ctrl-C and SIGTERM call ``callback`` on the loop (a clean exit 0), where supported."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, callback)
        except (NotImplementedError, RuntimeError):  # Windows, or not the main thread
            continue
        installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
