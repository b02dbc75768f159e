"""Many chargers in one process, for ``fleet_bench.py``: idle ones, or a reconnect storm.

``python bench/_fleet_load.py --url ws://127.0.0.1:PORT --first 0 --count 5000 --mode storm``

Talks with the benchmark over stdin and stdout, one line at a time:

1. prints ``READY`` once set up, and waits for a line ``go`` on stdin;
2. dials its chargers (``/ocpp/CP-{first + i}``, offering ``ocpp1.6``): in ``storm`` mode
   all at once (one ``gather``, no semaphore), in ``idle`` mode at most ``--concurrency``
   at a time; each connect time runs from the ``go`` line to the end of the WebSocket
   handshake (TCP connect included);
3. prints one JSON line: connect times of the chargers that connected, and the reasons
   of those that did not;
4. ``idle`` mode: each connected charger sends a Heartbeat every ``--heartbeat`` seconds
   (the first at a random instant within the first interval) and waits for its answer;
5. on a line ``close`` (or the end of stdin) closes every connection with 1000, prints a
   JSON line with the heartbeats sent and answered, and exits.

``start_fleet`` / ``dial`` / ``close_fleet`` are the benchmark's side of that exchange.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import threading
import time
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _harness import Child
from _workload import COMPRESSIONS, SUBPROTOCOL, heartbeat_call
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidMessage, InvalidStatus, WebSocketException

FLEET_LOAD = Path(__file__)


@dataclass
class Dialled:
    connections: list[ClientConnection] = field(default_factory=list)
    connect_s: list[float] = field(default_factory=list)
    failed_after_s: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)


@dataclass
class Heartbeats:
    sent: int = 0
    answered: int = 0
    errors: Counter[str] = field(default_factory=Counter)


def reason(exc: BaseException) -> str:
    """A short, countable description of why a charger could not connect."""
    if isinstance(exc, InvalidStatus):
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, TimeoutError):
        return "timed out during the opening handshake"
    if isinstance(exc, OSError):
        return f"{type(exc).__name__} (errno {exc.errno})"
    if isinstance(exc, InvalidMessage):
        cause = exc.__cause__
        return f"invalid HTTP response ({type(cause).__name__ if cause else exc})"
    return f"{type(exc).__name__}: {str(exc)[:80]}"


def _stdin_lines(loop: asyncio.AbstractEventLoop) -> asyncio.Queue[str]:
    """Lines of stdin as they come, "" at its end (a thread: stdin may be a pipe or a tty)."""
    queue: asyncio.Queue[str] = asyncio.Queue()

    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line.strip())
        loop.call_soon_threadsafe(queue.put_nowait, "")

    threading.Thread(target=read, name="stdin", daemon=True).start()
    return queue


async def _until(lines: asyncio.Queue[str], word: str) -> None:
    while await lines.get() not in (word, ""):
        pass


async def dial_all(args: argparse.Namespace, started: float) -> Dialled:
    """Every charger's connection attempt; a semaphore only in idle mode."""
    out = Dialled()
    limit = asyncio.Semaphore(args.concurrency if args.mode == "idle" else args.count)
    compression = None if args.compression == "none" else args.compression

    async def one(i: int) -> None:
        async with limit:
            try:
                ws = await connect(
                    f"{args.url.rstrip('/')}/ocpp/CP-{args.first + i}",
                    subprotocols=[SUBPROTOCOL],
                    open_timeout=args.open_timeout,
                    ping_interval=None,  # the chargers' traffic is their heartbeats
                    compression=compression,
                    close_timeout=10,
                )
            except (OSError, TimeoutError, WebSocketException) as exc:
                out.failed_after_s.append(time.perf_counter() - started)
                out.failures[reason(exc)] += 1
                return
        out.connect_s.append(time.perf_counter() - started)
        out.connections.append(ws)

    await asyncio.gather(*(one(i) for i in range(args.count)))
    return out


async def heartbeat(ws: ClientConnection, name: str, interval: float, tally: Heartbeats) -> None:
    await asyncio.sleep(random.uniform(0, interval))
    n = 0
    while True:
        message_id = f"{name}-hb-{n}"
        n += 1
        await ws.send(heartbeat_call(message_id))
        tally.sent += 1
        answer = json.loads(await ws.recv())
        if answer[:2] != [3, message_id]:
            tally.errors[f"unexpected answer {str(answer)[:60]}"] += 1
        else:
            tally.answered += 1
        await asyncio.sleep(interval)


async def _beat(ws: ClientConnection, name: str, interval: float, tally: Heartbeats) -> None:
    try:
        await heartbeat(ws, name, interval, tally)
    except (WebSocketException, ValueError) as exc:
        tally.errors[f"{type(exc).__name__}: {str(exc)[:60]}"] += 1


async def run(args: argparse.Namespace) -> int:
    lines = _stdin_lines(asyncio.get_running_loop())
    print("READY", flush=True)
    await _until(lines, "go")
    dialled = await dial_all(args, time.perf_counter())
    result = {
        "count": args.count,
        "connected": len(dialled.connections),
        "connect_s": dialled.connect_s,
        "failed_after_s": dialled.failed_after_s,
        "failures": dict(dialled.failures),
    }
    print(json.dumps(result), flush=True)
    tally = Heartbeats()
    async with asyncio.TaskGroup() as group:
        beats = [
            group.create_task(_beat(ws, f"CP-{args.first + i}", args.heartbeat, tally))
            for i, ws in enumerate(dialled.connections)
            if args.mode == "idle"
        ]
        await _until(lines, "close")
        for task in beats:
            task.cancel()
    with suppress(Exception):
        await asyncio.gather(*(ws.close() for ws in dialled.connections), return_exceptions=True)
    summary = {"heartbeats_sent": tally.sent, "heartbeats_answered": tally.answered}
    print(json.dumps(summary | {"heartbeat_errors": dict(tally.errors)}), flush=True)
    return 0


# -- the benchmark's side: starting the loaders and hearing from them -------------------


@dataclass
class Dial:
    """What a fleet of loaders reports after dialling: merged over the processes."""

    attempts: int = 0
    connected: int = 0
    connect_s: list[float] = field(default_factory=list)
    failed_after_s: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)

    def add(self, part: dict[str, Any]) -> None:
        self.attempts += part["count"]
        self.connected += part["connected"]
        self.connect_s += part["connect_s"]
        self.failed_after_s += part["failed_after_s"]
        self.failures.update(part["failures"])

    def figures(self) -> dict[str, Any]:
        """Counts and connect-time percentiles (seconds), without the per-charger lists."""
        times = sorted(self.connect_s)
        return {
            "attempts": self.attempts,
            "connected": self.connected,
            "failed": self.attempts - self.connected,
            "failures": dict(self.failures),
            "p50_s": _percentile(times, 50),
            "p99_s": _percentile(times, 99),
            "max_s": times[-1] if times else None,
            "mean_s": statistics.fmean(times) if times else None,
            "over_10_s": sum(t > 10 for t in times),
            "failed_after_max_s": max(self.failed_after_s, default=None),
        }


def _percentile(ordered: list[float], pct: int) -> float | None:
    if len(ordered) < 2:
        return ordered[0] if ordered else None
    return statistics.quantiles(ordered, n=100, method="inclusive")[pct - 1]


async def start_fleet(
    started: list[Child], url: str, chargers: int, mode: str, args: argparse.Namespace
) -> list[Child]:
    """``--loaders`` processes sharing ``chargers`` between them, each READY to dial."""
    loaders = min(args.loaders, chargers)
    fleet = []
    for k in range(loaders):
        first = chargers * k // loaders
        count = chargers * (k + 1) // loaders - first
        command = [sys.executable, str(FLEET_LOAD), "--url", url, "--mode", mode]
        command += ["--first", str(first), "--count", str(count)]
        command += [
            "--heartbeat",
            f"{args.heartbeat:g}",
            "--open-timeout",
            f"{args.open_timeout:g}",
        ]
        command += ["--compression", args.compression]
        child = await Child.start(
            f"chargers {first}-{first + count - 1}", *command, stdin_pipe=True
        )
        started.append(child)
        fleet.append(child)
    for child in fleet:
        await child.wait_for(r"READY", 60.0)
    return fleet


async def dial(fleet: list[Child], args: argparse.Namespace, chargers: int) -> Dial:
    """Say go to every loader at once; their merged report once every attempt has ended."""
    await asyncio.gather(*(child.send_line("go") for child in fleet))
    within = args.open_timeout + 60.0 + chargers / 50
    out = Dial()
    for child in fleet:
        match = await child.wait_for(r'(?m)^(\{"count".*\})$', within)
        out.add(json.loads(match.group(1)))
    return out


async def close_fleet(fleet: list[Child]) -> dict[str, Any]:
    """Every charger closes with 1000; the heartbeats sent and answered, summed."""
    for child in fleet:
        await child.send_line("close")
    total: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for child in fleet:
        match = await child.wait_for(r'(?m)^(\{"heartbeats_sent".*\})$', 120.0)
        part = json.loads(match.group(1))
        errors.update(part.pop("heartbeat_errors"))
        total.update(part)
        await child.wait(30.0)
    return {**total, "heartbeat_errors": dict(errors)}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--url", required=True, help="ws://127.0.0.1:PORT (CSMS or relay)")
    p.add_argument("--first", type=int, default=0, help="number of the first charger")
    p.add_argument("--count", type=int, required=True, help="chargers in this process")
    p.add_argument("--mode", choices=("idle", "storm"), required=True)
    p.add_argument("--heartbeat", type=float, default=60.0, help="idle: seconds between beats")
    p.add_argument("--concurrency", type=int, default=100, help="idle: dials at a time")
    p.add_argument("--open-timeout", type=float, default=60.0, help="per handshake, seconds")
    p.add_argument("--compression", choices=COMPRESSIONS, default="none")
    return p


if __name__ == "__main__":
    sys.exit(asyncio.run(run(parser().parse_args())))
