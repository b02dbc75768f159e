"""``fleet_bench.py``'s recording checks, tables and goals (the measuring is over there)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
from _cli import (
    Column,
    cells,
    fmt,
    markdown_table,
    print_table,
    ratio,
    source_line,
)
from _harness import (
    Memory,
)
from rich import box
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from fleet_bench import Idle, Storm

GOAL_BEFORE_FIRST_KIB = 120e6 / 1024  # 120 MB
GOAL_PER_CHARGER_KIB = 12.0
GOAL_P99_RATIO = 2.0


# -- recording checks ----------------------------------------------------------------------------


def _query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()


def check_idle_recording(
    db: Path, dial: dict[str, Any], heartbeats: dict[str, Any], relay_exit: int | None
) -> dict[str, Any]:
    """One connection row per charger, every Heartbeat and its answer, nothing lost."""
    directions = dict(_query(db, "SELECT direction, count(*) FROM frames GROUP BY ALL"))
    found = {
        "connections": _query(db, "SELECT count(*) FROM connection_opens")[0][0],
        "to_csms": directions.get("to_csms", 0),
        "to_charger": directions.get("to_charger", 0),
        "frames_lost": _query(db, "SELECT coalesce(sum(frames_lost), 0) FROM run_stats")[0][0],
        "findings": _query(db, "SELECT count(*) FROM findings")[0][0],
        "relay_exit": relay_exit,
    }
    sent, answered = heartbeats.get("heartbeats_sent", 0), heartbeats.get("heartbeats_answered", 0)
    found["ok"] = (
        relay_exit == 0
        and found["connections"] == dial["attempts"]
        and found["to_csms"] == sent
        # an answer still on its way when the chargers closed is recorded, not counted
        and answered <= found["to_charger"] <= sent
        and found["frames_lost"] == 0
        and found["findings"] == 0
    )
    return found


def check_storm_recording(db: Path, attempts: int, relay_exit: int | None) -> dict[str, Any]:
    """One ``connections`` row per attempt, with how each handshake ended."""
    statuses = _query(
        db,
        "SELECT coalesce(handshake_status::VARCHAR, 'none'), count(*) "
        "FROM connection_opens GROUP BY ALL ORDER BY 2 DESC",
    )
    codes = _query(
        db,
        "SELECT coalesce(close_code::VARCHAR, 'none'), count(*) "
        "FROM connections GROUP BY ALL ORDER BY 2 DESC",
    )
    rows = _query(db, "SELECT count(*) FROM connections")[0][0]
    found = {
        "attempts": attempts,
        "rows": rows,
        "handshake_status": {str(k): v for k, v in statuses},
        "close_code": {str(k): v for k, v in codes},
        "relay_exit": relay_exit,
    }
    found["ok"] = relay_exit == 0 and rows == attempts
    return found


# -- tables ---------------------------------------------------------------------------------------


def _mib(memory: Memory | None, kind: str) -> float | None:
    value = None if memory is None else getattr(memory, kind)
    return None if value is None else value / 1024


def _pair(memory: Memory | None) -> str | None:
    """ "RSS / PSS" in MiB."""
    if memory is None:
        return None
    return f"{memory.rss_kib / 1024:,.0f} / {fmt(_mib(memory, 'pss_kib'), ',.0f')}"


def idle_rows(idle: list[Idle]) -> list[dict[str, Any]]:
    out = []
    for r in idle:
        heartbeats = r.heartbeats
        per = {kind: r.per_charger_kib(f"{kind}_kib") for kind in ("rss", "pss", "uss")}
        out.append(
            {
                "target": r.target,
                "chargers": r.chargers,
                "connected": r.dial.get("connected"),
                "processes": None if r.idle is None else r.idle.processes,
                "before_rss_mib": _mib(r.before_first, "rss_kib"),
                "before_pss_mib": _mib(r.before_first, "pss_kib"),
                "before": _pair(r.before_first),
                "idle_rss_mib": _mib(r.idle, "rss_kib"),
                "idle_pss_mib": _mib(r.idle, "pss_kib"),
                "idle": _pair(r.idle),
                **{f"per_charger_{kind}_kib": value for kind, value in per.items()},
                "per_charger": None
                if per["rss"] is None
                else " / ".join(fmt(per[kind], ".1f") for kind in ("rss", "pss", "uss")),
                "heartbeats": f"{heartbeats['heartbeats_answered']:,}/"
                f"{heartbeats['heartbeats_sent']:,}"
                if heartbeats
                else None,
                "recorded": None if r.recording is None else r.recording["ok"],
                "skipped": r.skipped,
                "error": r.error,
            }
        )
    return out


IDLE_COLUMNS = [
    Column("Target", "Target", "target"),
    Column("Chargers", "Char-\ngers", "chargers", ",d"),
    Column("Connected", "Conn-\nected", "connected", ",d"),
    Column("Processes", "Pro-\ncess-\nes", "processes", "d"),
    Column("Before 1st charger MiB, RSS / PSS", "Before\nMiB\nRSS / PSS", "before"),
    Column("Idle MiB, RSS / PSS", "Idle\nMiB\nRSS / PSS", "idle"),
    Column("Per charger KiB, RSS / PSS / USS", "Per charger\nKiB\nRSS/PSS/USS", "per_charger"),
    Column("Heartbeats answered/sent", "Heart-\nbeats", "heartbeats"),
    Column("Every frame recorded", "Rec.\nok", "recorded"),
]
IDLE_NOTE = (
    "memory of the relay's whole process tree; before = once it listens, before the first "
    "charger; idle = N chargers connected and heartbeating; per charger = (idle - the same "
    "with the chargers' processes started, none dialled) / N"
)


def storm_rows(storms: list[Storm]) -> list[dict[str, Any]]:
    direct = {(s.chargers, s.round): s.figures for s in storms if s.target == "direct"}
    out = []
    for s in storms:
        f, base = s.figures, direct.get((s.chargers, s.round), {})
        rec = s.recording
        out.append(
            {
                "target": s.target,
                "chargers": s.chargers,
                "round": s.round,
                "connected": f.get("connected"),
                "failed": f.get("failed"),
                "failures": "; ".join(f"{n:,} {why}" for why, n in f.get("failures", {}).items())
                or None,
                "p50_s": f.get("p50_s"),
                "p99_s": f.get("p99_s"),
                "max_s": f.get("max_s"),
                "over_10_s": f.get("over_10_s"),
                "p99_vs_direct": None
                if s.target == "direct"
                else ratio(f.get("p99_s"), base.get("p99_s")),
                "pss_connected_mib": _mib(s.memory_connected, "pss_kib"),
                "rows_attempts": None if rec is None else f"{rec['rows']:,}/{rec['attempts']:,}",
                "skipped": s.skipped,
                "error": s.error,
            }
        )
    return out


STORM_COLUMNS = [
    Column("Target", "Target", "target"),
    Column("Chargers", "Char-\ngers", "chargers", ",d"),
    Column("Round", "Rd", "round", "d"),
    Column("Connected", "Conn-\nected", "connected", ",d"),
    Column("Failed", "Failed", "failed", ",d"),
    Column("p50 s", "p50\ns", "p50_s", ".2f"),
    Column("p99 s", "p99\ns", "p99_s", ".2f"),
    Column("max s", "max\ns", "max_s", ".2f"),
    Column("> 10 s", "> 10\ns", "over_10_s", ",d"),
    Column("p99 vs direct", "p99\nvs\ndirect", "p99_vs_direct", ".2f", "x"),
    Column("Relay PSS MiB, all connected", "PSS\nMiB", "pss_connected_mib", ",.0f"),
    Column("Rows/attempts", "Rows/\nattempts", "rows_attempts"),
]
STORM_NOTE = (
    "connect time = from the moment every charger dials at once to its WebSocket handshake "
    "done (TCP included); rows = the recording's connections rows"
)


def _table(title: str, note: str, columns: list[Column], rows: list[dict[str, Any]]) -> Table:
    table = Table(title=title, caption=note, box=box.SIMPLE_HEAD)
    for column in columns:
        table.add_column(column.header, justify="left" if column.key == "target" else "right")
    for row in rows:
        values = cells(row, columns)
        problem = row["skipped"] or row["error"]
        table.add_row(
            *(
                values
                if not problem
                else [*values[:2], str(problem)[:60]] + [""] * (len(values) - 3)
            )
        )
    return table


# -- goals and the report --------------------------------------------------------------------


def goal_lines(idle: list[Idle], storms: list[Storm]) -> list[str]:
    """Issue 13's goals for ocproxy. Memory: both sums are shown, each with its verdict;
    PSS is what the tree holds, RSS counts pages its processes share once per process.
    Per charger, RSS growth is the steady figure: a connection's memory is private, so it
    adds to RSS and PSS alike, but PSS and USS also move when other processes on the
    machine start or stop mapping the same libraries."""
    lines = ["goals (issue 13), ocproxy's whole process tree:"]
    for r in idle:
        if r.target != "ocproxy" or r.before_first is None:
            continue
        sums = [("RSS", r.before_first.rss_kib), ("PSS", r.before_first.pss_kib)]
        said = [
            f"{kind} {kib * 1024 / 1e6:.0f} MB: {_verdict(kib <= GOAL_BEFORE_FIRST_KIB)}"
            for kind, kib in sums
            if kib is not None
        ]
        lines.append(f"  before the first charger (<= 120 MB): {', '.join(said)}")
        per = r.per_charger_kib("rss_kib")
        lines.append(
            f"  {r.chargers:,} idle chargers (<= 12 KiB each, RSS growth): {fmt(per, '.1f')} "
            f"KiB: {_verdict(None if per is None else per <= GOAL_PER_CHARGER_KIB)} "
            f"(PSS {fmt(r.per_charger_kib('pss_kib'), '.1f')}, "
            f"USS {fmt(r.per_charger_kib('uss_kib'), '.1f')})"
        )
    for row in storm_rows(storms):
        if row["target"] != "ocproxy" or row["error"] or row["skipped"]:
            continue
        ok = row["failed"] == 0 and (row["p99_vs_direct"] or 99) <= GOAL_P99_RATIO
        lines.append(
            f"  storm of {row['chargers']:,} (round {row['round']}): {row['failed']:,} failed, "
            f"p99 {fmt(row['p99_vs_direct'], '.2f')}x direct (0 failed, <= 2x): {_verdict(ok)}"
        )
    return lines


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "NOT met", None: "not measured"}[met]


def print_storm_line(s: Storm, console: Console) -> None:
    f = s.figures
    if f:
        console.print(
            f"  {f['connected']:,}/{f['attempts']:,} connected, p99 {fmt(f['p99_s'], '.2f')} s, "
            f"failures: {f['failures'] or 'none'}; recording: {s.recording}",
            highlight=False,
        )
    if s.relay_stderr:
        console.print(f"[yellow]relay stderr:[/] {s.relay_stderr[-1500:]}", highlight=False)


def summaries(idle: list[Idle], storms: list[Storm]) -> dict[str, Any]:
    return {
        "idle_rows": idle_rows(idle),
        "storm_rows": storm_rows(storms),
        "goals": goal_lines(idle, storms),
    }


def report(
    idle: list[Idle],
    storms: list[Storm],
    meta: dict[str, Any],
    args: argparse.Namespace,
    console: Console,
) -> None:
    load = meta["load_average_at_start"][0]
    where = f"{meta['cpus']} CPUs, load average at start {load:.1f}"
    tables = [
        (f"(a), (b) memory ({where})", IDLE_NOTE, IDLE_COLUMNS, idle_rows(idle)),
        (f"(c) reconnect storm ({where})", STORM_NOTE, STORM_COLUMNS, storm_rows(storms)),
    ]
    for title, note, columns, rows in tables:
        if rows:
            print_table(console, _table(title, note, columns, rows))
            if args.markdown:
                print("\n" + markdown_table(rows, columns, left="target") + "\n")
                print(f"{note}.\n")
    for line in [source_line(meta), *goal_lines(idle, storms)]:
        console.print(line, highlight=False)
    for r in idle:
        if r.processes:
            console.print(
                f"{r.target} at {r.chargers:,} idle chargers, by process: MiB, and in "
                "brackets KiB per charger (growth since the baseline / connected)"
            )
            for name, m in r.processes.items():
                pss, uss = fmt(_mib(m, "pss_kib"), ",.0f"), fmt(_mib(m, "uss_kib"), ",.0f")
                growth = _growth(m, r.baseline_processes.get(name), r.dial.get("connected"))
                console.print(
                    f"  RSS {m.rss_kib / 1024:,.0f} PSS {pss} USS {uss} {growth} {name[:90]}",
                    highlight=False,
                    soft_wrap=True,
                )


def _growth(now: Memory, then: Memory | None, chargers: int | None) -> str:
    if then is None or not chargers:
        return "(new)"
    per = [
        None if a is None or b is None else (a - b) / chargers
        for a, b in (
            (now.rss_kib, then.rss_kib),
            (now.pss_kib, then.pss_kib),
            (now.uss_kib, then.uss_kib),
        )
    ]
    return "(" + " / ".join(fmt(v, ".1f") for v in per) + ")"
