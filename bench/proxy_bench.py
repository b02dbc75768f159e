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
import json
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

from _harness import (
    Child,
    Column,
    add_output_options,
    cancel_on_signals,
    cells,
    charger_counts,
    children,
    cpu_seconds,
    environment,
    fmt,
    markdown_table,
    name_list,
    positive,
    positive_int,
    print_table,
    ratio,
    run_to_exit_code,
    source_line,
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
from rich import box
from rich.console import Console
from rich.table import Table

# Issue 13's goals: CPU µs per round trip of the proxy's whole process tree, read with
# compression off.
GOALS = (("ocproxy", 100, 60.0), ("ocproxy-no-audit", 100, 45.0), ("ocproxy", 1, 100.0))
GOAL_COMPRESSION = "none"


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
        return {k: _mean([r.load.get(k) for r in self.good]) for k in keys} if self.good else {}

    @property
    def cpu_us_per_round_trip(self) -> dict[str, float | None]:
        keys = {k for r in self.good for k in r.cpu_us_per_round_trip}
        return {k: _mean([r.cpu_us_per_round_trip.get(k) for r in self.good]) for k in keys}

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


def _mean(values: list[Any]) -> float | None:
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


# -- results ------------------------------------------------------------------------------------


def rows(cases: list[Case]) -> list[dict[str, Any]]:
    """One row per case; ratios to the direct case of the same chargers and compression."""
    direct = {(c.chargers, c.compression): c.load for c in cases if c.path == "direct"}
    out = []
    for case in cases:
        load, base = case.load, direct.get((case.chargers, case.compression), {})
        per_round = [r.cpu_us_per_round_trip.get("proxy tree") for r in case.good]
        relay = case.path != "direct"
        row: dict[str, Any] = {
            "case": case.name,
            "path": case.path,
            "chargers": case.chargers,
            "compression": case.compression,
            "rounds": len(case.good),
            "round_trips_per_s": load.get("round_trips_per_s"),
            "p50_ms": load.get("p50_ms"),
            "p99_ms": load.get("p99_ms"),
            "throughput_ratio": ratio(load.get("round_trips_per_s"), base.get("round_trips_per_s"))
            if relay
            else None,
            "p50_ratio": ratio(load.get("p50_ms"), base.get("p50_ms")) if relay else None,
            "p99_ratio": ratio(load.get("p99_ms"), base.get("p99_ms")) if relay else None,
            "cpu_us_per_round_trip": _mean(per_round),
            "cpu_us_per_round_trip_by_round": per_round,
            "cpu_by_round": " / ".join(fmt(v, ".0f") for v in per_round) or None,
            "every_frame_recorded": case.frames_ok,
            "skipped": case.skipped,
            "error": case.error,
        }
        out.append(row)
    return out


COLUMNS = [
    Column("Target", "Target", "path"),
    Column("Chargers", "Char-\ngers", "chargers", "d"),
    Column("Compression", "Comp-\nres-\nsion", "compression"),
    Column("Round trips/s", "Round\ntrips/s", "round_trips_per_s", ",.0f"),
    Column("vs direct", "vs\ndirect", "throughput_ratio", ".2f"),
    Column("p50 ms", "p50\nms", "p50_ms", ".2f"),
    Column("p99 ms", "p99\nms", "p99_ms", ".2f"),
    Column("CPU µs/rt (each round)", "CPU µs/rt\n(each\nround)", "cpu_by_round", ""),
    Column("Every frame recorded", "Every\nframe\nrec.", "every_frame_recorded"),
]
NOTE = (
    "round trips/s, p50, p99: mean over the rounds; vs direct = round trips/s over direct's "
    "at the same chargers and compression; CPU µs/rt = CPU time of the relay's whole process "
    "tree per round trip, one figure per round"
)


def main_table(table_rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title, caption=NOTE, box=box.SIMPLE_HEAD)
    for column in COLUMNS:
        table.add_column(column.header, justify="left" if column.key == "path" else "right")
    for row in table_rows:
        values = cells(row, COLUMNS)
        if row["skipped"]:
            values = [*values[:3], row["skipped"], *["" for _ in values[4:]]]
        table.add_row(*values)
    return table


def cpu_table(cases: list[Case]) -> Table:
    """CPU time each process spent per round trip, over the whole load run (round mean)."""
    table = Table(
        title="CPU per round trip (µs, mean of the rounds)",
        caption="relay = the relay's own process; its children = the processes it started "
        "(ocproxy's recorder and forkserver, nginx's worker)",
        box=box.SIMPLE_HEAD,
    )
    headers = ("Target", "Chargers", "Compression", "chargers", "CSMS", "relay", "its children")
    for header in headers:
        table.add_column(header, justify="left" if header == "Target" else "right")
    for case in cases:
        if case.skipped:
            continue
        cpu = case.cpu_us_per_round_trip
        keys = ("chargers", "csms", "proxy", "proxy children")
        table.add_row(
            case.path,
            str(case.chargers),
            case.compression,
            *[fmt(cpu.get(k), ".0f") for k in keys],
        )
    return table


def goal_lines(table_rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        f"goals (issue 13), CPU per round trip of the proxy's tree, compression {GOAL_COMPRESSION}:"
    ]
    for target, chargers, limit in GOALS:
        found = [
            r
            for r in table_rows
            if (r["path"], r["chargers"], r["compression"]) == (target, chargers, GOAL_COMPRESSION)
        ]
        value = found[0]["cpu_us_per_round_trip"] if found else None
        verdict = "not measured" if value is None else ("met" if value <= limit else "NOT met")
        lines.append(f"  {target} at {chargers}: {fmt(value, '.0f')} µs (<= {limit:g}): {verdict}")
    return lines


def report(
    cases: list[Case], args: argparse.Namespace, meta: dict[str, Any], console: Console
) -> bool:
    table_rows = rows(cases)
    meta["load_average_at_end"] = os.getloadavg()
    title = (
        f"Relay cost, {args.rounds} round(s) x {args.duration:g} s per case "
        f"({meta['cpus']} CPUs, load average at start {meta['load_average_at_start'][0]:.1f})"
    )
    print_table(console, main_table(table_rows, title))
    print_table(console, cpu_table(cases))
    for line in [source_line(meta), *goal_lines(table_rows)]:
        console.print(line, highlight=False)
    if args.markdown:
        print("\n" + markdown_table(table_rows, COLUMNS) + "\n")
        print(f"{NOTE}.  ")
        print("\n".join(f"{line}  " for line in goal_lines(table_rows)))
    if args.json:
        document: dict[str, Any] = {"environment": meta, "goals": goal_lines(table_rows)}
        document |= {"rows": table_rows, "cases": [c.document() for c in cases]}
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
        console.print(f"results written to {args.json}")
    ran = [c for c in cases if not c.skipped]
    return all(c.error is None for c in ran) and all(c.frames_ok is not False for c in ran)


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
    return report(cases, args, meta, console)


def main(argv: list[str] | None = None) -> int:
    return run_to_exit_code(run, parser().parse_args(argv), Console())


if __name__ == "__main__":
    sys.exit(main())
