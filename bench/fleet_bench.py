"""What does a relay cost per charger held, and does it survive a reconnect storm?

Three measurements on loopback, chargers in ``--loaders`` processes (``_fleet_load.py``)
against the benchmark CSMS (``_workload.py csms``, listen backlog 4096):

(a) **memory before the first charger**: RSS and PSS of the relay's whole process tree
    (ocproxy: relay, recorder, forkserver; nginx: master and worker) once it listens;
(b) **idle memory per charger**: N chargers connected through the relay, each sending a
    Heartbeat every 60 s that the CSMS answers; after a full interval, the tree's memory
    minus (a), divided by N; for ocproxy, nginx and the splice anchor side by side;
(c) **a reconnect storm**: N chargers dialling at once, direct and through ocproxy against
    the same CSMS in the same run: connect time per charger (TCP + WebSocket handshake),
    connected / failed with reasons, p50/p99/max; after each ocproxy storm its recording's
    ``connections`` must hold one row per attempt.

    .venv/bin/python bench/fleet_bench.py [--chargers 1000,10000] [--json FILE] [--markdown]

Exit status: 0 when every measurement ran (goals missed and failed handshakes are
reported, not errors), 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import fleet_report
from _cli import (
    add_output_options,
    charger_counts,
    environment,
    name_list,
    positive,
    positive_int,
)
from _fleet_load import close_fleet, dial, start_fleet
from _harness import (
    Child,
    Memory,
    cancel_on_signals,
    children,
    drain_time_wait,
    memory_by_process,
    raise_open_files,
    run_to_exit_code,
    tree_memory,
)
from _peers import (
    TARGETS,
    Relay,
    RelayOptions,
    add_relay_options,
    skip_reason,
    start_csms,
    start_relay,
)
from _workload import COMPRESSIONS
from rich.console import Console

CSMS_BACKLOG = 4096
RELAYS = tuple(t for t in TARGETS if t != "direct")
SYSCTLS = (
    "net/core/somaxconn",
    "net/ipv4/tcp_max_syn_backlog",
    "net/ipv4/tcp_syncookies",
    "net/ipv4/ip_local_port_range",
)


# -- (a) and (b): memory --------------------------------------------------------------------


@dataclass
class Idle:
    target: str
    chargers: int
    skipped: str | None = None
    error: str | None = None
    listening: Memory | None = None  # right after the relay listens
    before_first: Memory | None = None  # (a): --settle seconds later
    # (b) subtracts this: the chargers' processes started, none dialled yet, so that the
    # relay's PSS share of the libraries it has in common with them is the same as at idle
    baseline: Memory | None = None
    idle: Memory | None = None  # N chargers connected, after --hold seconds
    idle_max_rss_kib: int | None = None
    processes: dict[str, Memory] = field(default_factory=dict)  # at idle, one per process
    baseline_processes: dict[str, Memory] = field(default_factory=dict)
    dial: dict[str, Any] = field(default_factory=dict)
    heartbeats: dict[str, Any] = field(default_factory=dict)
    recording: dict[str, Any] | None = None
    relay_exit: int | None = None
    relay_stderr: str = ""

    def per_charger_kib(self, kind: str) -> float | None:
        if self.idle is None or self.baseline is None or not self.dial.get("connected"):
            return None
        now, then = getattr(self.idle, kind), getattr(self.baseline, kind)
        return None if now is None or then is None else (now - then) / self.dial["connected"]


async def measure_idle(
    result: Idle, args: argparse.Namespace, options: RelayOptions, console: Console
) -> None:
    relay: Relay | None = None
    try:
        async with children() as started:
            _, port = await start_csms(started, args.compression, CSMS_BACKLOG, args.open_timeout)
            tag = f"idle-{result.target}-{result.chargers}"
            relay = await start_relay(result.target, started, port, options, tag)
            assert relay.child is not None
            await _idle_fleet(result, started, relay.child.pid, relay.url, args, console)
            result.relay_exit = await relay.stop()
    finally:
        if relay is not None:
            result.relay_stderr = relay.output()[1][-3000:]
    if relay.db is not None:
        result.recording = fleet_report.check_idle_recording(
            relay.db, result.dial, result.heartbeats, result.relay_exit
        )


async def _idle_fleet(
    result: Idle,
    started: list[Child],
    pid: int,
    url: str,
    args: argparse.Namespace,
    console: Console,
) -> None:
    """(a), then N idle chargers through the relay ``pid`` listening at ``url``: (b)."""
    result.listening = tree_memory(pid)
    await asyncio.sleep(args.settle)
    result.before_first = tree_memory(pid)
    fleet = await start_fleet(started, url, result.chargers, "idle", args)
    result.baseline = tree_memory(pid)
    result.baseline_processes = memory_by_process(pid)
    result.dial = (await dial(fleet, args, result.chargers)).figures()
    console.print(f"  {result.dial['connected']:,} connected; holding {args.hold:g} s ...")
    samples = await _hold(pid, args.hold)
    result.idle = tree_memory(pid)
    result.processes = memory_by_process(pid)
    result.idle_max_rss_kib = max((m.rss_kib for m in samples), default=None)
    result.heartbeats = await close_fleet(fleet)


async def _hold(pid: int, seconds: float) -> list[Memory]:
    samples = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(5.0, left))
        if (sample := tree_memory(pid)) is not None:
            samples.append(sample)
    return samples


# -- (c): the storm ---------------------------------------------------------------------------


@dataclass
class Storm:
    target: str
    chargers: int
    round: int
    skipped: str | None = None
    error: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    memory_connected: Memory | None = None  # the relay's tree with every charger connected
    recording: dict[str, Any] | None = None
    relay_exit: int | None = None
    relay_stderr: str = ""
    time_wait_before: int | None = None  # sockets of the CSMS's port in TIME_WAIT, drained
    time_wait_waited_s: float = 0.0


async def measure_storm(
    result: Storm, csms_port: int, args: argparse.Namespace, options: RelayOptions
) -> None:
    """One storm: a fresh relay (none for direct) and fresh loaders, all gone afterwards."""
    tag = f"storm-{result.target}-{result.chargers}-r{result.round}"
    relay: Relay | None = None
    try:
        async with children() as started:
            relay = await start_relay(result.target, started, csms_port, options, tag)
            fleet = await start_fleet(started, relay.url, result.chargers, "storm", args)
            result.figures = (await dial(fleet, args, result.chargers)).figures()
            if relay.child is not None:
                result.memory_connected = tree_memory(relay.child.pid)
            await close_fleet(fleet)
            result.relay_exit = await relay.stop()
    finally:
        if relay is not None:
            result.relay_stderr = relay.output()[1][-3000:]
    if relay.db is not None:
        result.recording = fleet_report.check_storm_recording(
            relay.db, result.figures["attempts"], result.relay_exit
        )


async def run_storms(
    chargers: int, args: argparse.Namespace, options: RelayOptions, console: Console
) -> list[Storm]:
    """Every storm target ``--rounds`` times against one CSMS, the order reversed each round."""
    results: list[Storm] = []
    async with children() as started:
        _, port = await start_csms(started, args.compression, CSMS_BACKLOG, args.open_timeout)
        for number in range(1, args.rounds + 1):
            order = args.storm_targets if number % 2 else args.storm_targets[::-1]
            for target in order:
                result = Storm(target, chargers, number, skip_reason(target, options))
                results.append(result)
                if result.skipped:
                    continue
                result.time_wait_before, result.time_wait_waited_s = await drain_time_wait(port)
                console.print(
                    f"[bold]storm, round {number}: {chargers:,} chargers, {target}[/] ..."
                    f" (waited {result.time_wait_waited_s:.0f} s for "
                    f"{result.time_wait_before or 0:,} TIME_WAIT sockets of the CSMS's port)"
                )
                try:
                    await measure_storm(result, port, args, options)
                except Exception as exc:
                    result.error = f"{type(exc).__name__}: {exc}"
                    console.print(f"[red]{result.error}[/]", highlight=False)
                fleet_report.print_storm_line(result, console)
                await asyncio.sleep(args.pause)
    return results


# -- the run ----------------------------------------------------------------------------------


async def run_idle(args: argparse.Namespace, options: RelayOptions, console: Console) -> list[Idle]:
    results = []
    for chargers in args.chargers:
        for target in args.targets:
            result = Idle(target, chargers, skip_reason(target, options))
            results.append(result)
            if result.skipped:
                console.print(result.skipped, highlight=False)
                continue
            console.print(f"[bold]idle: {chargers:,} chargers through {target}[/] ...")
            try:
                await measure_idle(result, args, options, console)
            except Exception as exc:
                result.error = f"{type(exc).__name__}: {exc}"
                console.print(f"[red]{result.error}[/]", highlight=False)
            if result.relay_stderr:
                console.print(f"[yellow]relay stderr:[/] {result.relay_stderr}", highlight=False)
    return results


def machine() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in SYSCTLS:
        try:
            out[name.rsplit("/", 1)[1]] = Path("/proc/sys", name).read_text().strip()
        except OSError:
            out[name.rsplit("/", 1)[1]] = None
    return out


async def run(args: argparse.Namespace, console: Console) -> bool:
    cancel_on_signals()
    limits = raise_open_files(2 * max(args.chargers) + 512, args.raise_hard_limit)
    console.print(limits, highlight=False)
    meta = environment(**{k: v for k, v in vars(args).items() if k not in ("json", "anchors")})
    meta |= {"open_files": limits, "sysctl": machine(), "anchors": str(args.anchors)}
    workdir = Path(tempfile.mkdtemp(prefix="ocproxy-fleet-bench-"))
    options = RelayOptions(
        workdir, args.anchors, tuple(shlex.split(args.proxy_args)), 2 * max(args.chargers) + 64
    )
    idle: list[Idle] = []
    storms: list[Storm] = []
    try:
        if not args.skip_idle:
            idle = await run_idle(args, options, console)
        if not args.skip_storm:
            for chargers in args.chargers:
                storms += await run_storms(chargers, args, options, console)
    finally:
        if args.keep:
            console.print(f"files kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    meta["load_average_at_end"] = os.getloadavg()
    fleet_report.report(idle, storms, meta, args, console)
    if args.json:
        document = {"environment": meta, "idle": [asdict(r) for r in idle]}
        document |= {"storms": [asdict(s) for s in storms]}
        document |= fleet_report.summaries(idle, storms)
        text = json.dumps(document, indent=2, default=str) + "\n"
        await asyncio.to_thread(Path(args.json).write_text, text)
        console.print(f"results written to {args.json}")
    return all(r.error is None for r in idle) and all(s.error is None for s in storms)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Memory per idle charger and reconnect storms, through ocproxy and others.",
        epilog="Goals (issue 13): <= 120 MB before the first charger and <= 12 KiB per idle "
        "charger for ocproxy's whole tree (PSS); a storm of 10,000 through ocproxy: all "
        "connect, p99 connect <= 2x direct.",
    )
    p.add_argument("--chargers", type=charger_counts, default=[1000], help="default 1000")
    p.add_argument(
        "--targets",
        type=name_list(RELAYS),
        default=["ocproxy", "nginx", "splice"],
        help="relays for (a) and (b) (default ocproxy,nginx,splice)",
    )
    p.add_argument(
        "--storm-targets",
        type=name_list(TARGETS),
        default=["direct", "ocproxy"],
        help="what the storm dials (default direct,ocproxy)",
    )
    p.add_argument("--heartbeat", type=positive, default=60.0, help="seconds (default 60)")
    p.add_argument(
        "--hold", type=positive, default=65.0, help="idle seconds before measuring (default 65)"
    )
    p.add_argument(
        "--settle", type=positive, default=2.0, help="seconds after listening (default 2)"
    )
    p.add_argument("--loaders", type=positive_int, default=2, help="charger processes (default 2)")
    p.add_argument(
        "--open-timeout", type=positive, default=60.0, help="per handshake (default 60 s)"
    )
    p.add_argument("--rounds", type=positive_int, default=1, help="storm rounds (default 1)")
    p.add_argument(
        "--pause",
        type=float,
        default=3.0,
        help="seconds between storms (default 3), once no socket of the CSMS's port is left "
        "in TIME_WAIT",
    )
    p.add_argument("--compression", choices=COMPRESSIONS, default="none")
    p.add_argument("--skip-idle", action="store_true", help="only the storm")
    p.add_argument("--skip-storm", action="store_true", help="only (a) and (b)")
    add_relay_options(p)
    p.add_argument(
        "--raise-hard-limit",
        action="store_true",
        help="as root, also raise the open-files hard limit when it is below two per "
        "charger (the soft limit is always raised to the hard one)",
    )
    add_output_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_to_exit_code(run, parser().parse_args(argv), Console())


if __name__ == "__main__":
    sys.exit(main())
