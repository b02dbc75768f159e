"""What does a relay cost? Round trips/s, latency and CPU per round trip, side by side.

Each case runs fresh processes on loopback: the CSMS and the load generator of
``_workload.py``, and between them one target (``_peers.py``):

- ``direct``: no relay;
- ``ocproxy``: ``python -m ocproxy proxy --quiet``, recording (audit on) into a fresh DuckDB
  file; ``ocproxy-no-audit`` adds ``--no-audit``;
- ``nginx``: Debian's nginx-light from a generated config (one worker, ``proxy_pass`` with
  the WebSocket upgrade, no access log);
- ``splice``: the Python splice anchor ``pysplice.py --tap`` (``--anchors DIR``);
- ``mitmdump``: mitmproxy with the ocproxy addon, recording.

Per target, charger count and compression: round trips/s (mean over the rounds), the
ratio to direct, p50/p99 latency, and the CPU time of the relay's whole process tree
per round trip (read from /proc), per round. The second round runs the cases in
reverse order, so that drift on a shared machine evens out. After each recording
relay's case, it gets SIGTERM, must exit 0, and its recording must hold every frame.

    .venv/bin/python bench/proxy_bench.py [--targets direct,ocproxy,...] [--chargers 1,100]
        [--compression none,deflate] [--rounds 2] [--json FILE] [--markdown]

Exit status: 0 when every case that could run ran and every frame was recorded, 1
otherwise (a goal missed is reported, not an error; a target missing here is skipped).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import proxy_report
from _cli import (
    add_output_options,
    charger_counts,
    environment,
    name_list,
    positive,
    positive_int,
)
from _harness import (
    Child,
    cancel_on_signals,
    children,
    cpu_seconds,
    run_to_exit_code,
    tree_cpu_seconds,
)
from _peers import (
    DEFAULT_ANCHORS,
    MITMDUMP_BARE,
    RECORDING_TARGETS,
    TARGETS,
    Relay,
    RelayOptions,
    add_relay_options,
    run_load,
    skip_reason,
    start_csms,
    start_relay,
    verify_recording,
)
from _workload import COMPRESSIONS
from rich.console import Console

# -- one case, one round ----------------------------------------------------------------------


@dataclass
class Round:
    number: int
    load: dict[str, Any] = field(default_factory=dict)
    cpu_us_per_round_trip: dict[str, float | None] = field(default_factory=dict)
    recording: dict[str, Any] | None = None
    proxy_exit: int | None = None
    proxy_stderr: str = ""
    proxy_stdout: str = ""
    error: str | None = None


@dataclass
class Case:
    path: str  # the target: "direct", "ocproxy", "nginx", ...
    chargers: int
    compression: str = "none"
    rounds: list[Round] = field(default_factory=list)
    skipped: str | None = None

    @property
    def name(self) -> str:
        plural = "s" if self.chargers != 1 else ""
        return f"{self.path}, {self.chargers} charger{plural}, compression {self.compression}"

    @property
    def error(self) -> str | None:
        return next((r.error for r in self.rounds if r.error), None)

    @property
    def good(self) -> list[Round]:
        return [r for r in self.rounds if r.error is None and r.load]

    @property
    def load(self) -> dict[str, Any]:
        """The rounds' mean round trips/s, p50 and p99; empty when no round ran clean."""
        keys = ("round_trips_per_s", "p50_ms", "p99_ms")
        return {k: mean([r.load.get(k) for r in self.good]) for k in keys} if self.good else {}

    @property
    def cpu_us_per_round_trip(self) -> dict[str, float | None]:
        keys = {k for r in self.good for k in r.cpu_us_per_round_trip}
        return {k: mean([r.cpu_us_per_round_trip.get(k) for r in self.good]) for k in keys}

    @property
    def frames_ok(self) -> bool | None:
        if self.path not in RECORDING_TARGETS or self.skipped:
            return None
        return self.error is None and all(r.recording and r.recording["ok"] for r in self.rounds)

    def document(self) -> dict[str, Any]:
        return asdict(self) | {
            "load": self.load,
            "cpu_us_per_round_trip": self.cpu_us_per_round_trip,
            "every_frame_recorded": self.frames_ok,
        }


def mean(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def cpu_snapshot(csms: Child, relay: Relay) -> dict[str, float | None]:
    """CPU seconds so far: the CSMS, the relay's own process, the relay's whole tree."""
    out = {"csms": cpu_seconds(csms.pid)}
    if relay.child is not None:
        tree = tree_cpu_seconds(relay.child.pid)
        out["proxy"], out["proxy children"] = (None, None) if tree is None else tree
    return out


def cpu_per_round_trip(
    before: dict[str, float | None], after: dict[str, float | None], load: dict[str, Any]
) -> dict[str, float | None]:
    """µs of CPU per round trip over the load run: the chargers' process, the CSMS, the
    relay ("proxy" its own process, "proxy children" the rest of its tree)."""
    trips = load["results_received"] or 1
    out: dict[str, float | None] = {"chargers": load["cpu_s"] / trips * 1e6}
    for key, start in before.items():
        end = after.get(key)
        out[key] = None if start is None or end is None else (end - start) / trips * 1e6
    own, rest = out.get("proxy"), out.get("proxy children")
    if own is not None and rest is not None:
        out["proxy tree"] = own + rest
    return out


async def measure_round(
    case: Case, number: int, args: argparse.Namespace, options: RelayOptions
) -> Round:
    result = Round(number)
    relay: Relay | None = None
    tag = f"{case.path}-{case.chargers}-{case.compression}-r{number}"
    try:
        async with children() as started:
            csms, port = await start_csms(started, case.compression)
            relay = await start_relay(case.path, started, port, options, tag)
            before = cpu_snapshot(csms, relay)
            result.load = await run_load(
                started, relay.url, case.chargers, args.duration, args.warmup, case.compression
            )
            result.cpu_us_per_round_trip = cpu_per_round_trip(
                before, cpu_snapshot(csms, relay), result.load
            )
            result.proxy_exit = await relay.stop()
            await csms.terminate()
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        # Read after children() has killed and reaped everything: the output is complete.
        if relay is not None:
            result.proxy_stdout, result.proxy_stderr = relay.output()
    if relay is not None and relay.db is not None and result.error is None:
        result.recording = verify_recording(relay.db, result.load, result.proxy_exit)
    return result


def report_problems(case: Case, run: Round, console: Console) -> None:
    if run.error:
        console.print(f"[bold red]{case.name} failed:[/] {run.error}", highlight=False)
    if run.proxy_stderr:
        console.print(f"[yellow]relay stderr ({case.name}):[/]\n{run.proxy_stderr[-3000:]}")
    rec = run.recording
    if rec is not None and not rec["ok"]:
        console.print(f"[bold red]recording check failed ({case.name}):[/] {rec}")
        console.print(f"relay exit {run.proxy_exit}; its output (tail):\n{run.proxy_stdout}")


async def run_cases(
    cases: list[Case], args: argparse.Namespace, options: RelayOptions, console: Console
) -> None:
    """Every case ``args.rounds`` times, in reverse order on every second round."""
    for case in cases:
        case.skipped = skip_reason(case.path, options)
    runnable = [c for c in cases if not c.skipped]
    for skipped in sorted({c.skipped for c in cases if c.skipped}):
        console.print(skipped, highlight=False)
    for number in range(1, args.rounds + 1):
        order = runnable if number % 2 else runnable[::-1]
        for i, case in enumerate(order, 1):
            console.print(
                f"[bold]round {number}/{args.rounds}, {i}/{len(order)}: {case.name}[/]: "
                f"{args.warmup:g} s warm-up + {args.duration:g} s ..."
            )
            run = await measure_round(case, number, args, options)
            case.rounds.append(run)
            report_problems(case, run, console)


# -- command line ---------------------------------------------------------------------------


def add_run_options(
    p: argparse.ArgumentParser, compression_default: str, rounds_default: int
) -> None:
    """The options every round-trip benchmark here takes."""
    p.add_argument(
        "--duration", type=positive, default=5.0, help="measured seconds per case (default 5)"
    )
    p.add_argument(
        "--warmup", type=positive, default=1.0, help="seconds before measuring (default 1)"
    )
    p.add_argument(
        "--chargers", type=charger_counts, default=[1, 100], help="charger counts (default 1,100)"
    )
    p.add_argument(
        "--compression",
        type=name_list(COMPRESSIONS),
        default=[compression_default],
        help="what the chargers and the CSMS offer: none, or deflate (permessage-deflate, "
        f"websockets' default); none,deflate runs both (default {compression_default})",
    )
    add_output_options(p)
    p.add_argument(
        "--rounds",
        type=positive_int,
        default=rounds_default,
        help="times each case runs, every second round in reverse order "
        f"(default {rounds_default})",
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Round trips/s, latency and CPU per round trip of OCPP traffic, direct "
        "and through each relay.",
        epilog="Goals (issue 13), compression none: ocproxy <= 60 µs/rt at 100 chargers, "
        "<= 100 at 1; ocproxy --no-audit <= 45 at 100. Compression defaults to none since "
        "the relay passes compressed frames through; --compression deflate measures that.",
    )
    add_run_options(p, "none", rounds_default=2)
    p.add_argument(
        "--targets",
        type=name_list((*TARGETS, MITMDUMP_BARE)),
        default=list(TARGETS),
        help=f"what to measure, in this order (default {','.join(TARGETS)}; "
        f"{MITMDUMP_BARE} = mitmdump without the addon)",
    )
    add_relay_options(p)
    return p


def settings(args: argparse.Namespace, **more: Any) -> dict[str, Any]:
    """The environment and the run's settings, for the JSON document."""
    return environment(
        duration_s=args.duration,
        warmup_s=args.warmup,
        chargers=args.chargers,
        compression=args.compression,
        rounds=args.rounds,
        ocproxy_bench_args=os.environ.get("OCPROXY_BENCH_ARGS", ""),
        **more,
    )


def plan(args: argparse.Namespace, targets: Sequence[str]) -> list[Case]:
    return [
        Case(target, n, compression)
        for compression in args.compression
        for n in args.chargers
        for target in targets
    ]


async def measure_all(
    cases: list[Case],
    args: argparse.Namespace,
    console: Console,
    anchors: Path = DEFAULT_ANCHORS,
    proxy_args: str = "",
) -> float:
    """Run every case in a temporary directory (kept with ``--keep``); the wall seconds."""
    workdir = Path(tempfile.mkdtemp(prefix="ocproxy-bench-"))
    started = time.monotonic()
    try:
        options = RelayOptions(workdir, anchors, tuple(shlex.split(proxy_args)))
        await run_cases(cases, args, options, console)
    finally:
        if args.keep:
            console.print(f"recordings kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return time.monotonic() - started


async def run(args: argparse.Namespace, console: Console) -> bool:
    cancel_on_signals()
    meta = settings(args, targets=args.targets, proxy_args=args.proxy_args)
    cases = plan(args, args.targets)
    meta["wall_s"] = await measure_all(cases, args, console, args.anchors, args.proxy_args)
    return proxy_report.report(cases, args, meta, console)


def main(argv: list[str] | None = None) -> int:
    return run_to_exit_code(run, parser().parse_args(argv), Console())


if __name__ == "__main__":
    sys.exit(main())
