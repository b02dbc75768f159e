"""What does recording through mitmproxy cost, next to ``ocproxy proxy``?

The same round-trip workload as ``proxy_bench.py`` (``_workload.py``: a minimal OCPP
1.6 CSMS, and N chargers doing sequential ~300-byte CALL -> CALLRESULT round trips),
measured three ways in one run, at 1 and at 100 chargers by default:

- **direct**: chargers -> CSMS;
- **proxy**: chargers -> ``python -m ocproxy proxy --quiet`` (recording) -> CSMS;
- **mitmdump**: chargers -> ``mitmdump --mode reverse:http://127.0.0.1:CSMS@127.0.0.1:0
  -s $(ocproxy addon-path) --set ocproxy_db=FRESH.duckdb --set flow_detail=0`` -> CSMS.

Both relays must exit 0 on SIGTERM and their recordings must hold every frame the
chargers exchanged (the same check as ``proxy_bench.py``). ``--bare`` adds a fourth
path, mitmdump without the addon, to separate mitmproxy's own cost from the addon's.

    .venv/bin/python bench/mitm_bench.py [--duration 5] [--chargers 1,100] [--bare]
        [--json results.json] [--markdown]

Exit status: 0 when every case ran and every frame was recorded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import proxy_bench as pb  # the sibling benchmark (this directory is on sys.path)
from rich import box
from rich.console import Console
from rich.table import Table

from ocproxy.mitm import addon_path

MITMDUMP = Path(sys.executable).with_name("mitmdump")
PATHS = ("direct", "proxy", "mitmdump")
BARE = "mitmdump-bare"  # --bare: mitmdump without the addon, to show what mitmproxy costs


class Case(pb.Case):
    @property
    def frames_ok(self) -> bool | None:
        return None if self.path == BARE else super().frames_ok


async def start_mitmdump(
    started: list[pb.Child], csms_port: int, db: Path | None, confdir: Path
) -> tuple[pb.Child, int]:
    command = [
        str(MITMDUMP),
        "--mode",
        f"reverse:http://127.0.0.1:{csms_port}@127.0.0.1:0",
        "--set",
        f"confdir={confdir}",
        "--set",
        "flow_detail=0",  # no line per flow or message, like ocproxy proxy --quiet
    ]
    if db is not None:
        command += ["-s", str(addon_path()), "--set", f"ocproxy_db={db}"]
    child = await pb.Child.start("mitmdump", *command)
    started.append(child)
    match = await child.wait_for(r"listening at 127\.0\.0\.1:(\d+)", pb.STARTUP_TIMEOUT)
    return child, int(match.group(1))


async def measure_mitmdump(case: pb.Case, args: argparse.Namespace, workdir: Path) -> None:
    db = None if case.path == BARE else workdir / f"mitmdump-{case.chargers}.duckdb"
    started: list[pb.Child] = []
    try:
        async with pb.children() as started:
            csms_port = await pb.start_csms(started, args.compression)
            relay, port = await start_mitmdump(started, csms_port, db, workdir / "mitmproxy-conf")
            url = f"ws://127.0.0.1:{port}"
            watched = {"csms": started[0], "proxy": relay}
            await pb.load_with_cpu(case, started, url, watched, args)
            case.proxy_exit = await relay.terminate()
            await started[0].terminate()
    finally:
        if len(started) > 1:
            output = "".join(started[1].stdout)
            # mitmdump logs to stdout: keep what is not routine (errors, ocproxy's lines).
            case.proxy_stderr = "".join(started[1].stderr).strip()
            case.proxy_stdout = output.strip()[-3000:]
    if db is not None:
        case.recording = pb.verify_recording(db, case.load, case.proxy_exit)


async def run_case(
    case: pb.Case, args: argparse.Namespace, workdir: Path, console: Console
) -> None:
    console.print(f"[bold]{case.name}[/]: {args.warmup:g} s warm-up + {args.duration:g} s ...")
    try:
        if case.path == "direct":
            await pb.measure_direct(case, args)
        elif case.path == "proxy":
            await pb.measure_proxy(case, args, workdir)
        else:
            await measure_mitmdump(case, args, workdir)
    except Exception as exc:
        case.error = f"{type(exc).__name__}: {exc}"
        console.print(f"[bold red]{case.name} failed:[/] {case.error}", highlight=False)
    pb.report_problems(case, console)


# -- results ------------------------------------------------------------------------------------


def rows(cases: list[pb.Case]) -> list[dict[str, Any]]:
    """One row per case; ratios to direct and to the proxy at the same charger count."""
    by = {(c.path, c.chargers): c.load for c in cases if not c.error}
    out = []
    for case in cases:
        load = case.load
        direct = by.get(("direct", case.chargers), {})
        proxy = by.get(("proxy", case.chargers), {})
        rate = load.get("round_trips_per_s")
        row: dict[str, Any] = {
            "case": case.name,
            "path": case.path,
            "chargers": case.chargers,
            "round_trips_per_s": rate,
            "p50_ms": load.get("p50_ms"),
            "p99_ms": load.get("p99_ms"),
            "vs_direct": None,
            "vs_proxy": None,
            "p50_vs_proxy": None,
            "every_frame_recorded": case.frames_ok,
            "cpu_us_per_round_trip": case.cpu_us_per_round_trip.get("proxy"),
            "error": case.error,
        }
        if case.path != "direct":
            row["vs_direct"] = pb.ratio(rate, direct.get("round_trips_per_s"))
        if case.path.startswith("mitmdump"):
            row["vs_proxy"] = pb.ratio(rate, proxy.get("round_trips_per_s"))
            row["p50_vs_proxy"] = pb.ratio(load.get("p50_ms"), proxy.get("p50_ms"))
        out.append(row)
    return out


COLUMNS = [
    pb.Column("Path", "Path", "path"),
    pb.Column("Chargers", "Char-\ngers", "chargers", "d"),
    pb.Column("Round trips/s", "Round\ntrips/s", "round_trips_per_s", ",.0f"),
    pb.Column("p50 ms", "p50\nms", "p50_ms", ".2f"),
    pb.Column("p99 ms", "p99\nms", "p99_ms", ".1f"),
    pb.Column("vs direct", "vs\ndir.", "vs_direct", ".2f", "x"),
    pb.Column("vs proxy", "vs\nproxy", "vs_proxy", ".2f", "x"),
    pb.Column("Relay CPU µs/rt", "CPU\nµs/rt", "cpu_us_per_round_trip", ".0f"),
    pb.Column("Every frame recorded", "All\nrec.", "every_frame_recorded"),
]
NOTE = (
    "vs direct / vs proxy = round trips/s over that path's at the same charger count; "
    "relay CPU = CPU time of the proxy or mitmdump process per round trip"
)


def cpu_table(cases: list[pb.Case]) -> Table:
    """CPU time each process spent per round trip, over the whole load run."""
    table = Table(title="CPU per round trip (µs)", box=box.SIMPLE_HEAD)
    for header in ("Path", "Chargers", "chargers", "CSMS", "relay"):
        table.add_column(header, justify="left" if header == "Path" else "right")
    for case in cases:
        cpu = case.cpu_us_per_round_trip
        values = [pb.fmt(cpu.get(k), ".0f") for k in ("chargers", "csms", "proxy")]
        table.add_row(case.path, str(case.chargers), *values)
    return table


def cells(row: dict[str, Any]) -> list[str]:
    return [pb.fmt(row[c.key], c.spec, c.suffix) for c in COLUMNS]


def rich_table(table_rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title, caption=NOTE, box=box.SIMPLE_HEAD, pad_edge=False)
    for column in COLUMNS:
        justify: Literal["left", "right"] = "left" if column.key == "path" else "right"
        table.add_column(column.header, justify=justify, no_wrap=True)
    for row in table_rows:
        table.add_row(*cells(row))
    return table


def markdown_table(table_rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(c.title for c in COLUMNS) + " |"]
    lines.append("|" + "|".join(":---" if c.key == "path" else "---:" for c in COLUMNS) + "|")
    lines += ["| " + " | ".join(cells(row)) + " |" for row in table_rows]
    return "\n".join(lines)


def report(
    cases: list[pb.Case], args: argparse.Namespace, meta: dict[str, Any], console: Console
) -> bool:
    table_rows = rows(cases)
    meta["load_average_at_end"] = os.getloadavg()
    meta["mitmproxy"] = metadata.version("mitmproxy")
    title = f"ocproxy proxy vs mitmdump + addon, {args.duration:g} s per case ({meta['cpus']} CPUs)"
    console.print(rich_table(table_rows, title))
    console.print(cpu_table(cases))
    if args.markdown:
        print("\n" + markdown_table(table_rows) + "\n")
        print(f"{NOTE}.")
    if args.json:
        document: dict[str, Any] = {"environment": meta, "rows": table_rows}
        document["cases"] = [asdict(c) for c in cases]
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
        console.print(f"results written to {args.json}")
    return all(c.error is None for c in cases) and all(c.frames_ok is not False for c in cases)


def parser() -> argparse.ArgumentParser:
    p = pb.parser()
    p.description = "Throughput and latency of OCPP round trips: direct, ocproxy proxy, mitmdump."
    p.epilog = None
    p.add_argument("--bare", action="store_true", help="also measure mitmdump without the addon")
    return p


async def run(args: argparse.Namespace, console: Console) -> bool:
    pb.cancel_on_signals()
    meta = pb.environment(args)
    workdir = Path(tempfile.mkdtemp(prefix="ocproxy-mitm-bench-"))
    paths = (*PATHS[:2], BARE, PATHS[2]) if args.bare else PATHS
    cases: list[pb.Case] = [Case(path, n) for n in args.chargers for path in paths]
    try:
        for case in cases:
            await run_case(case, args, workdir, console)
    finally:
        if args.keep:
            console.print(f"recordings kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return report(cases, args, meta, console)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    console = Console()
    if not MITMDUMP.exists():
        console.print(f"no mitmdump next to this Python ({MITMDUMP}); pip install mitmproxy")
        return 1
    return pb.run_to_exit_code(run, args, console)


if __name__ == "__main__":
    sys.exit(main())
