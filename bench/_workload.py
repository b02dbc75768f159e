"""The benchmark's two peers, each run in its own process by ``proxy_bench.py``.

``python bench/_workload.py csms``
    A minimal OCPP 1.6 CSMS on 127.0.0.1 (a free port, printed as ``PORT <n>``): it
    answers every CALL ``[2, id, action, payload]`` with ``[3, id, {}]``, which is
    what OCPP 1.6 says a MeterValues CALL gets, and a Heartbeat with its
    ``currentTime``.
    It runs until SIGTERM or SIGINT.

``python bench/_workload.py load --url ws://127.0.0.1:PORT --chargers N --duration S``
    N simulated chargers, one connection each (``/ocpp/CP-{i}``, offering ``ocpp1.6``),
    each doing sequential CALL -> CALLRESULT round trips with ~300-byte MeterValues
    CALLs: a warm-up, then the measured window. No new CALL starts after the window
    ends; each charger waits for its outstanding answer, then closes with 1000. One
    JSON line on stdout gives the counts and the latency percentiles.

Both sides keep websockets' defaults (permessage-deflate included) so that the direct
and the through-proxy measurements negotiate the same thing on every leg;
``--compression none`` on both turns it off (the proxy, negotiating per leg, then has
none on either leg either).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.typing import Subprotocol

SUBPROTOCOL = Subprotocol("ocpp1.6")
COMPRESSIONS = ("deflate", "none")  # permessage-deflate (websockets' default), or none
DEFAULT_BACKLOG = 100  # asyncio's; the fleet benchmark's storms ask for more
DEFAULT_OPEN_TIMEOUT = 10.0  # websockets'; the storms give the chargers' own instead

# What the CSMS answers: OCPP 1.6's MeterValues.conf, an empty object. The benchmark's
# traffic must be valid OCPP, or the live audit records a finding for every answer and
# the benchmark measures that instead (tests/audit/test_bench_workload.py checks it).
_RESPONSE_PAYLOAD = "{}"


# -- CSMS -------------------------------------------------------------------------


def _answer(message: str | bytes) -> str | None:
    """``[3, id, payload]`` for a CALL, None for anything else."""
    try:
        frame = json.loads(message)
    except ValueError:
        return None
    if not isinstance(frame, list) or len(frame) != 4 or frame[0] != 2:
        return None
    if frame[2] == "Heartbeat":  # the fleet benchmark's idle chargers
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return f'[3,{json.dumps(frame[1])},{{"currentTime":"{now}"}}]'
    return f"[3,{json.dumps(frame[1])},{_RESPONSE_PAYLOAD}]"


async def _csms_handler(ws: ServerConnection) -> None:
    try:
        async for message in ws:
            answer = _answer(message)
            if answer is not None:
                await ws.send(answer)
    except ConnectionClosed:
        pass


def _stop_when_stdin_closes(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """The benchmark holds our stdin: EOF means it is gone, so no CSMS outlives it."""

    def watch() -> None:
        sys.stdin.buffer.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch, name="stdin-watch", daemon=True).start()


def _compression(name: str) -> str | None:
    return None if name == "none" else name


async def run_csms(
    watch_stdin: bool,
    compression: str = "deflate",
    backlog: int = DEFAULT_BACKLOG,
    open_timeout: float = DEFAULT_OPEN_TIMEOUT,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if watch_stdin:
        _stop_when_stdin_closes(loop, stop)
    async with serve(
        _csms_handler,
        "127.0.0.1",
        0,
        subprotocols=[SUBPROTOCOL],
        compression=_compression(compression),
        backlog=backlog,
        open_timeout=open_timeout,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"PORT {port}", flush=True)
        await stop.wait()


# -- load generator -----------------------------------------------------------------


@dataclass
class Phases:
    """perf_counter instants: warm-up until ``measure_from``, measured until ``stop_at``."""

    measure_from: float
    stop_at: float


@dataclass
class Tally:
    calls_sent: int = 0
    results_received: int = 0
    completed_in_window: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, CALLs started in window
    errors: list[str] = field(default_factory=list)


def meter_values_call(charger: int, n: int) -> tuple[str, str]:
    """A ~300-byte MeterValues CALL (OCPP 1.6) and its message id."""
    message_id = f"{charger}-{n}"
    energy = 1_000_000 + n * 7
    sampled = [
        {
            "value": f"{energy}.0",
            "context": "Sample.Periodic",
            "measurand": "Energy.Active.Import.Register",
            "unit": "Wh",
        },
        {"value": f"{7200 + n % 100}", "measurand": "Power.Active.Import", "unit": "W"},
    ]
    payload = {
        "connectorId": 1,
        "transactionId": 4200 + charger,
        "meterValue": [{"timestamp": "2025-01-15T10:24:30.000Z", "sampledValue": sampled}],
    }
    frame = [2, message_id, "MeterValues", payload]
    return json.dumps(frame, separators=(",", ":")), message_id


def heartbeat_call(message_id: str) -> str:
    """An OCPP 1.6 Heartbeat CALL, what an idle charger sends every interval."""
    return f'[2,"{message_id}","Heartbeat",{{}}]'


def _check_result(answer: str | bytes, message_id: str) -> str | None:
    frame = json.loads(answer)
    if not isinstance(frame, list) or frame[:2] != [3, message_id]:
        return f"unexpected answer to {message_id}: {str(answer)[:80]}"
    return None


async def _round_trips(ws: ClientConnection, charger: int, phases: Phases, tally: Tally) -> None:
    """Sequential round trips until ``phases.stop_at``; never leaves a CALL unanswered."""
    n = 0
    while (started := time.perf_counter()) < phases.stop_at:
        message, message_id = meter_values_call(charger, n)
        n += 1
        await ws.send(message)
        tally.calls_sent += 1
        answer = await ws.recv()
        done = time.perf_counter()
        tally.results_received += 1
        problem = _check_result(answer, message_id)
        if problem is not None:
            tally.errors.append(problem)
            return
        if started >= phases.measure_from:
            tally.latencies.append(done - started)
        if phases.measure_from <= done < phases.stop_at:
            tally.completed_in_window += 1


async def _charger(ws: ClientConnection, charger: int, phases: Phases, tally: Tally) -> None:
    try:
        await _round_trips(ws, charger, phases, tally)
    except (ConnectionClosed, ValueError) as exc:
        tally.errors.append(f"CP-{charger}: {type(exc).__name__}: {exc}")
    finally:
        await ws.close()


async def _connect_all(url: str, chargers: int, compression: str) -> list[ClientConnection]:
    base = url.rstrip("/")
    attempts = [
        connect(
            f"{base}/ocpp/CP-{i}",
            subprotocols=[SUBPROTOCOL],
            open_timeout=30,
            compression=_compression(compression),
        )
        for i in range(chargers)
    ]
    results = await asyncio.gather(*attempts, return_exceptions=True)
    connections = [r for r in results if isinstance(r, ClientConnection)]
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        await asyncio.gather(*(ws.close() for ws in connections))
        raise RuntimeError(
            f"{len(failures)} of {chargers} chargers could not connect: {failures[0]}"
        )
    for ws in connections:
        if ws.subprotocol != SUBPROTOCOL:
            raise RuntimeError(f"negotiated subprotocol {ws.subprotocol!r}, not {SUBPROTOCOL}")
    return connections


def _percentile_ms(values: list[float], pct: int) -> float | None:
    if len(values) < 2:
        return values[0] * 1000.0 if values else None
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1] * 1000.0


async def run_load(
    url: str, chargers: int, duration: float, warmup: float, compression: str = "deflate"
) -> dict[str, object]:
    cpu_started = time.process_time()
    connections = await _connect_all(url, chargers, compression)
    extensions = sorted({str(e.name) for ws in connections for e in ws.protocol.extensions})
    start = time.perf_counter()
    phases = Phases(measure_from=start + warmup, stop_at=start + warmup + duration)
    tally = Tally()
    await asyncio.gather(*(_charger(ws, i, phases, tally) for i, ws in enumerate(connections)))
    cpu_s = time.process_time() - cpu_started
    result = asdict(tally)
    del result["latencies"]
    result.update(
        chargers=chargers,
        duration_s=duration,
        warmup_s=warmup,
        cpu_s=cpu_s,
        extensions=extensions,
        measured_round_trips=len(tally.latencies),
        round_trips_per_s=tally.completed_in_window / duration,
        p50_ms=_percentile_ms(tally.latencies, 50),
        p99_ms=_percentile_ms(tally.latencies, 99),
        mean_ms=statistics.fmean(tally.latencies) * 1000.0 if tally.latencies else None,
    )
    return result


# -- command line ---------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    csms = commands.add_parser("csms", help="run the CSMS until SIGTERM")
    csms.add_argument(
        "--watch-stdin", action="store_true", help="also stop when stdin reaches end of file"
    )
    csms.add_argument("--compression", choices=COMPRESSIONS, default="deflate")
    csms.add_argument(
        "--backlog", type=int, default=DEFAULT_BACKLOG, help="listen backlog (default 100)"
    )
    csms.add_argument(
        "--open-timeout",
        type=float,
        default=DEFAULT_OPEN_TIMEOUT,
        help="seconds a client has to finish its handshake (default 10)",
    )
    load = commands.add_parser("load", help="run the chargers once, print one JSON line")
    load.add_argument("--url", required=True, help="ws://127.0.0.1:PORT (CSMS or proxy)")
    load.add_argument("--chargers", type=int, default=1)
    load.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    load.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    load.add_argument("--compression", choices=COMPRESSIONS, default="deflate")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "csms":
        asyncio.run(run_csms(args.watch_stdin, args.compression, args.backlog, args.open_timeout))
        return 0
    try:
        result = asyncio.run(
            run_load(args.url, args.chargers, args.duration, args.warmup, args.compression)
        )
    except (OSError, RuntimeError, WebSocketException) as exc:
        print(f"load generator failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result), flush=True)
    return 0 if not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
