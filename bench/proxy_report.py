"""``proxy_bench.py``'s tables, goals and JSON document (the measuring is over there)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _cli import Column, cells, fmt, markdown_table, print_table, ratio, source_line
from rich import box
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from proxy_bench import Case

# Issue 13's goals: CPU µs per round trip of the proxy's whole process tree, read with
# compression off.
GOALS = (("ocproxy", 100, 60.0), ("ocproxy-no-audit", 100, 45.0), ("ocproxy", 1, 100.0))
GOAL_COMPRESSION = "none"


# -- results ------------------------------------------------------------------------------------


def rows(cases: list[Case]) -> list[dict[str, Any]]:
    """One row per case; ratios to the direct case of the same chargers and compression."""
    direct = {(c.chargers, c.compression): c.load for c in cases if c.path == "direct"}
    out = []
    for case in cases:
        load, base = case.load, direct.get((case.chargers, case.compression), {})
        per_round = [r.cpu_us_per_round_trip.get("proxy tree") for r in case.good]
        present = [v for v in per_round if v is not None]
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
            "cpu_us_per_round_trip": statistics.fmean(present) if present else None,
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
