"""What does recording through mitmproxy cost, next to ``ocproxy proxy``?

The same round-trip workload as ``proxy_bench.py`` (``_workload.py``: a minimal OCPP
1.6 CSMS, and N chargers doing sequential ~300-byte CALL -> CALLRESULT round trips),
measured three ways in one run, at 1 and at 100 chargers by default:

- **direct**: chargers -> CSMS;
- **ocproxy**: chargers -> ``python -m ocproxy proxy --quiet`` (recording) -> CSMS;
- **mitmdump**: chargers -> ``mitmdump --mode reverse:http://127.0.0.1:CSMS@127.0.0.1:0
  -s $(ocproxy addon-path) --set ocproxy_db=FRESH.duckdb --set flow_detail=0`` -> CSMS.

Both relays must exit 0 on SIGTERM and their recordings must hold every frame the
chargers exchanged (the same check as ``proxy_bench.py``, whose machinery this uses:
``proxy_bench.py --targets direct,ocproxy,mitmdump`` gives the same figures in its own
table). ``--bare`` adds a fourth path, mitmdump without the addon, to separate
mitmproxy's own cost from the addon's.

    .venv/bin/python bench/mitm_bench.py [--duration 5] [--chargers 1,100] [--bare]
        [--json results.json] [--markdown]

Exit status: 0 when every case ran and every frame was recorded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import proxy_bench as pb  # the sibling benchmark (this directory is on sys.path)
from _cli import (
    Column,
    cells,
    fmt,
    markdown_table,
    print_table,
    ratio,
)
from _harness import (
    cancel_on_signals,
    run_to_exit_code,
)
from _peers import MITMDUMP, MITMDUMP_BARE
from rich import box
from rich.console import Console
from rich.table import Table

PATHS = ("direct", "ocproxy", "mitmdump")


def rows(cases: list[pb.Case]) -> list[dict[str, Any]]:
    """One row per case; ratios to direct and to ocproxy at the same charger count and
    compression."""
    by = {(c.path, c.chargers, c.compression): c.load for c in cases if not c.error}
    out = []
    for case in cases:
        load = case.load
        direct = by.get(("direct", case.chargers, case.compression), {})
        proxy = by.get(("ocproxy", case.chargers, case.compression), {})
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
            "cpu_us_per_round_trip": case.cpu_us_per_round_trip.get("proxy tree"),
            "error": case.error,
        }
        if case.path != "direct":
            row["vs_direct"] = ratio(rate, direct.get("round_trips_per_s"))
        if case.path.startswith("mitmdump"):
            row["vs_proxy"] = ratio(rate, proxy.get("round_trips_per_s"))
            row["p50_vs_proxy"] = ratio(load.get("p50_ms"), proxy.get("p50_ms"))
        out.append(row)
    return out


COLUMNS = [
    Column("Path", "Path", "path"),
    Column("Chargers", "Char-\ngers", "chargers", "d"),
    Column("Round trips/s", "Round\ntrips/s", "round_trips_per_s", ",.0f"),
    Column("p50 ms", "p50\nms", "p50_ms", ".2f"),
    Column("p99 ms", "p99\nms", "p99_ms", ".1f"),
    Column("vs direct", "vs\ndir.", "vs_direct", ".2f", "x"),
    Column("vs proxy", "vs\nproxy", "vs_proxy", ".2f", "x"),
    Column("Relay CPU µs/rt", "CPU\nµs/rt", "cpu_us_per_round_trip", ".0f"),
    Column("Every frame recorded", "All\nrec.", "every_frame_recorded"),
]
NOTE = (
    "vs direct / vs proxy = round trips/s over that path's at the same charger count; "
    "relay CPU = CPU time of the ocproxy or mitmdump process tree per round trip"
)


def cpu_table(cases: list[pb.Case]) -> Table:
    """CPU time each process spent per round trip, over the whole load run."""
    table = Table(title="CPU per round trip (µs)", box=box.SIMPLE_HEAD)
    for header in ("Path", "Chargers", "chargers", "CSMS", "relay", "its children"):
        table.add_column(header, justify="left" if header == "Path" else "right")
    for case in cases:
        cpu = case.cpu_us_per_round_trip
        keys = ("chargers", "csms", "proxy", "proxy children")
        table.add_row(case.path, str(case.chargers), *[fmt(cpu.get(k), ".0f") for k in keys])
    return table


def rich_table(table_rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title, caption=NOTE, box=box.SIMPLE_HEAD, pad_edge=False)
    for column in COLUMNS:
        justify: Literal["left", "right"] = "left" if column.key == "path" else "right"
        table.add_column(column.header, justify=justify, no_wrap=True)
    for row in table_rows:
        table.add_row(*cells(row, COLUMNS))
    return table


def report(
    cases: list[pb.Case], args: argparse.Namespace, meta: dict[str, Any], console: Console
) -> bool:
    table_rows = rows(cases)
    meta["load_average_at_end"] = os.getloadavg()
    meta["mitmproxy"] = metadata.version("mitmproxy")
    title = f"ocproxy proxy vs mitmdump + addon, {args.duration:g} s per case ({meta['cpus']} CPUs)"
    print_table(console, rich_table(table_rows, title))
    print_table(console, cpu_table(cases))
    if args.markdown:
        print("\n" + markdown_table(table_rows, COLUMNS) + "\n")
        print(f"{NOTE}.")
    if args.json:
        document: dict[str, Any] = {"environment": meta, "rows": table_rows}
        document["cases"] = [c.document() for c in cases]
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
        console.print(f"results written to {args.json}")
    return all(c.error is None for c in cases) and all(c.frames_ok is not False for c in cases)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Throughput and latency of OCPP round trips: direct, ocproxy proxy, mitmdump."
    )
    pb.add_run_options(p, "deflate", rounds_default=1)
    p.add_argument("--bare", action="store_true", help="also measure mitmdump without the addon")
    return p


async def run(args: argparse.Namespace, console: Console) -> bool:
    cancel_on_signals()
    meta = pb.settings(args)
    cases = pb.plan(args, (*PATHS[:2], MITMDUMP_BARE, PATHS[2]) if args.bare else PATHS)
    meta["wall_s"] = await pb.measure_all(cases, args, console)
    return report(cases, args, meta, console)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    console = Console()
    if not MITMDUMP.exists():
        console.print(f"no mitmdump next to this Python ({MITMDUMP}); pip install mitmproxy")
        return 1
    return run_to_exit_code(run, args, console)


if __name__ == "__main__":
    sys.exit(main())
