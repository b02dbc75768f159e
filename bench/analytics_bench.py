"""How fast are the named queries, the export and the report on a big recording?

1. Uses the recording given (or writes one with ``make_recording.py``: 10 million
   frames of 300 chargers over about three weeks, unless ``--frames`` says otherwise).
2. Times every named query twice: through the library (``open_sources`` + ``run``,
   the result as an Arrow table) and through the command line as a user runs it
   (``python -m ocproxy query DB NAME --format parquet -o FILE``, a new process: its
   figure includes starting Python, about the ``ocproxy --version`` figure shown).
3. Times ``ocproxy export DB --parquet DIR`` and, over the lake it wrote, every named
   query again through the library.
4. Times ``ocproxy report DB --html FILE`` when that command exists.
5. ``frame_fields`` (the payload fields the slow queries read, stored at insert): a
   recording written by ``make_recording.py`` (which appends around the recorder) gets
   them back-filled first, timed as an older file being opened for writing would be
   (a recording given as DB only with ``--backfill``: the bench writes to it then);
   and their cost at insert is measured on batches of the recording's own frames
   (MeterValues only, and the usual mix), in µs per frame, beside the frames insert.
6. ``--before REV`` also times every named query as it was at git revision REV (its
   ``analysis/NAME.sql``), through the library, on the same recording.

A command not yet wired into ``ocproxy.cli`` (``export``, ``report`` while they are
being built) is run through its module's ``add_<command>_command`` on the same parser;
the output marks it "(unwired)". A command that does not exist at all is reported as missing.

    .venv/bin/python bench/analytics_bench.py [DB] [--frames 10000000] [--skip-cli]
        [--skip-lake] [--backfill] [--before REV] [--repeat N] [--skip-insert]
        [--keep DIR] [--json results.json]

Targets: each named query <= 2 s (library), the full report <= 10 s (through the
command line).
Exit status: 0 when everything ran (missing a target is reported, not an error), 1 if
a step failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
from rich import box
from rich.console import Console
from rich.table import Table

from ocproxy.analytics import bind, load_queries, open_sources, run
from ocproxy.recorder import derived
from ocproxy.recorder.migrations import migrate

QUERY_TARGET_S = 2.0
REPORT_TARGET_S = 10.0
INSERT_BATCHES = (5_000, 500)  # the recorder's batch_rows, and a quiet moment's batch
INSERT_REPEATS = 20
HERE = Path(__file__).resolve().parent

# Runs ``ocproxy COMMAND ...`` like ``python -m ocproxy``; a command missing from
# ocproxy.cli is added from ocproxy.analytics.<command>_cli when that module has it.
_LAUNCHER = """
import argparse, importlib, sys
import ocproxy.cli as cli

build = cli.build_parser

def parser_with_command():
    parser = build()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = sys.argv[1]
    if command not in action.choices:
        module = importlib.import_module(f"ocproxy.analytics.{command}_cli")
        getattr(module, f"add_{command}_command")(action)
    return parser

cli.build_parser = parser_with_command
sys.exit(cli.main(sys.argv[1:]))
"""


@dataclass
class Timing:
    step: str
    how: str
    seconds: float | None
    rows: int | None = None
    target_s: float | None = None
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.seconds is None:
            return "n/a"
        if self.target_s is None:
            return ""
        return "ok" if self.seconds <= self.target_s else "MISSED"


def command_status(command: str) -> str:
    """'wired' (in ocproxy.cli), 'module' (only its *_cli module) or 'missing'."""
    probe = subprocess.run(
        [sys.executable, "-m", "ocproxy", command, "--help"], capture_output=True, text=True
    )
    if probe.returncode == 0:
        return "wired"
    probe = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, command, "--help"], capture_output=True, text=True
    )
    return "module" if probe.returncode == 0 else "missing"


def run_cli(status: str, argv: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    prefix = ["-m", "ocproxy"] if status == "wired" else ["-c", _LAUNCHER]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *prefix, *argv], capture_output=True, text=True)
    return time.perf_counter() - started, done


def _how(status: str, what: str) -> str:
    # A command not wired into ocproxy.cli yet runs through its add_*_command.
    return what if status == "wired" else f"{what} (unwired)"


def pick_identity(db: Path) -> str:
    """A charger from the middle of the list, for the trace query."""
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(
            """SELECT identity FROM connections WHERE handshake_status = 101
               GROUP BY identity ORDER BY identity"""
        ).fetchall()
    names = [str(r[0]) for r in rows]
    return names[len(names) // 2]


def time_library(
    source: Path, identity: str, label: str, revision: str | None = None, repeat: int = 1
) -> list[Timing]:
    timings = []
    for name, query in load_queries().items():
        given = {"identity": identity} if any(p.required for p in query.params) else {}
        sql = query.sql if revision is None else _sql_at(revision, name)
        if sql is None:
            continue
        seconds = float("inf")
        for _ in range(max(1, repeat)):
            started = time.perf_counter()
            with open_sources([str(source)]) as opened:
                result = run(opened.db, sql, bind(query, given), what=f"query {name}")
            seconds = min(seconds, time.perf_counter() - started)
        timings.append(
            Timing(f"query {name}", label, seconds, result.table.num_rows, QUERY_TARGET_S)
        )
    return timings


def _sql_at(revision: str, name: str) -> str | None:
    """A named query's SQL at a git revision; None if it did not exist then."""
    shown = subprocess.run(
        ["git", "show", f"{revision}:analysis/{name}.sql"],
        capture_output=True, text=True, cwd=HERE.parent,
    )  # fmt: skip
    return shown.stdout if shown.returncode == 0 else None


def _backfill(db: Path) -> list[Timing]:
    """Fill frame_fields for the frames that lack them, as m008 does for an older file."""
    with duckdb.connect(str(db)) as con:
        migrate(con)
        if derived.is_complete(con):
            return []
        started = time.perf_counter()
        added = derived.backfill(con)
        con.execute("CHECKPOINT")
        seconds = time.perf_counter() - started
    return [
        Timing(
            "back-fill frame_fields", "derived.backfill (as m008)", seconds, added,
            note="once, when an older file is first opened for writing",
        )
    ]  # fmt: skip


def _insert_cost(source: Path) -> list[Timing]:
    """µs per frame that frame_fields adds to a batch insert, beside the frames insert.

    Batches of the recording's own frames (payload as the recorder's Arrow batch has
    it: text) go into a fresh file the way ``batches.append`` writes them: one
    transaction, the frames INSERT, then ``derived.append``, on one thread."""
    timings = []
    with tempfile.TemporaryDirectory(prefix="ocproxy-insert-") as scratch:
        target = duckdb.connect(str(Path(scratch) / "insert.duckdb"), config={"threads": 1})
        try:
            migrate(target)
            with duckdb.connect(str(source), read_only=True) as con:
                ((frames,),) = con.execute("SELECT count(*) FROM frames").fetchall()
                n = max(INSERT_BATCHES)
                kinds = {
                    "MeterValues": f"WHERE action = 'MeterValues' LIMIT {n}",
                    "mixed": f"LIMIT {n} OFFSET {max(0, frames // 2 - n)}",
                }
                for kind, where in kinds.items():
                    table = con.sql(
                        f"SELECT * REPLACE (payload::VARCHAR AS payload) FROM frames {where}"
                    ).to_arrow_table()
                    for size in INSERT_BATCHES:
                        timings.append(_time_inserts(target, table.slice(0, size), kind))
        finally:
            target.close()
    return timings


def _time_inserts(db: duckdb.DuckDBPyConnection, batch: Any, kind: str) -> Timing:
    # The best of the repeats: the machine's other work only ever adds.
    frames_s = fields_s = float("inf")
    for _ in range(INSERT_REPEATS):
        db.execute("BEGIN TRANSACTION")
        db.register("_bench_batch", batch)
        started = time.perf_counter()
        db.execute("INSERT INTO frames BY NAME SELECT * FROM _bench_batch")
        inserted = time.perf_counter()
        derived.append(db, batch)
        fields_s = min(fields_s, time.perf_counter() - inserted)
        frames_s = min(frames_s, inserted - started)
        db.unregister("_bench_batch")
        db.execute("COMMIT")
    per_frame = 1e6 / batch.num_rows
    return Timing(
        f"frame_fields at insert, {kind} batch of {batch.num_rows:,}",
        "derived.append (best of 20)",
        fields_s,
        batch.num_rows,
        note=f"{fields_s * per_frame:.2f} µs/frame (the frames INSERT: "
        f"{frames_s * per_frame:.2f} µs/frame)",
    )


def time_cli_queries(db: Path, identity: str, scratch: Path) -> list[Timing]:
    timings = []
    for name, query in load_queries().items():
        params = (
            ["--param", f"identity={identity}"] if any(p.required for p in query.params) else []
        )
        out = scratch / f"{name}.parquet"
        seconds, done = run_cli(
            "wired", ["query", str(db), name, *params, "--format", "parquet", "-o", str(out)]
        )
        if done.returncode != 0:
            raise RuntimeError(f"ocproxy query {name} failed: {done.stderr.strip()}")
        rows = int(pq.read_metadata(out).num_rows)
        timings.append(Timing(f"query {name}", "CLI", seconds, rows, QUERY_TARGET_S))
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("db", nargs="?", type=Path, help="a recording (default: write one)")
    parser.add_argument(
        "--frames", type=int, default=10_000_000, help="frames when writing one (default 10M)"
    )
    parser.add_argument("--skip-cli", action="store_true", help="no command-line timings")
    parser.add_argument("--skip-lake", action="store_true", help="no export, no lake queries")
    parser.add_argument(
        "--backfill", action="store_true", help="back-fill frame_fields in DB if it lacks some"
    )
    parser.add_argument("--before", metavar="REV", help="also time the queries as at git REV")
    parser.add_argument("--skip-insert", action="store_true", help="no insert-cost figures")
    parser.add_argument(
        "--repeat", type=int, default=1, help="library timings: the best of N runs (default 1)"
    )
    parser.add_argument("--keep", type=Path, help="keep what is written (lake, results) here")
    parser.add_argument("--json", type=Path, help="also write every figure as JSON")
    args = parser.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 150)
    scratch = Path(tempfile.mkdtemp(prefix="ocproxy-analytics-bench-"))
    work = args.keep or scratch
    work.mkdir(parents=True, exist_ok=True)
    timings: list[Timing] = []
    facts: dict[str, Any] = {}
    try:
        db = args.db or work / "fleet.duckdb"
        if args.db is None or not db.exists():
            sys.path.insert(0, str(HERE))
            from make_recording import make_recording

            console.print(f"writing {args.frames:,} frames to {db} ...")
            if db.exists():
                db.unlink()
            summary = make_recording(db, args.frames)
            timings.append(
                Timing("write the recording", "make_recording.py", summary["seconds"], args.frames)
            )
        if args.db is None or args.backfill:
            timings += _backfill(db)
        facts.update(_describe(db))
        identity = pick_identity(db)
        facts["trace identity"] = identity
        console.print(
            f"recording: {db} ({facts['frames']:,} frames, {facts['chargers']} chargers, "
            f"{facts['first']} .. {facts['last']}, {facts['bytes'] / 1e9:.2f} GB)"
        )
        started, _ = run_cli("wired", ["--version"])
        timings.append(Timing("start python -m ocproxy", "CLI (--version)", started))
        timings += time_library(db, identity, "library", repeat=args.repeat)
        if args.before:
            label = f"library, SQL of {args.before}"
            timings += time_library(db, identity, label, args.before, repeat=args.repeat)
        if not args.skip_insert:
            timings += _insert_cost(db)
        if not args.skip_cli:
            timings += time_cli_queries(db, identity, work)
        if not args.skip_lake:
            timings += _export_and_query(db, identity, work, facts)
        timings.append(_report(db, work))
    except Exception as exc:
        console.print(f"[red]benchmark failed:[/red] {exc}")
        _print(console, timings, facts)
        return 1
    finally:
        if args.keep is None:
            shutil.rmtree(scratch, ignore_errors=True)
    _print(console, timings, facts)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {"facts": facts, "timings": [asdict(t) for t in timings]}, indent=2, default=str
            )
        )
    return 0


def _describe(db: Path) -> dict[str, Any]:
    with duckdb.connect(str(db), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        ((frames, first, last),) = con.execute(
            "SELECT count(*), min(ts), max(ts) FROM frames"
        ).fetchall()
        ((chargers, connections),) = con.execute(
            "SELECT count(DISTINCT identity), count(*) FROM connections"
        ).fetchall()
    return {
        "recording": str(db),
        "frames": frames,
        "chargers": chargers,
        "connections": connections,
        "first": str(first)[:19],
        "last": str(last)[:19],
        "bytes": db.stat().st_size,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, DuckDB {duckdb.__version__}",
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def _export_and_query(db: Path, identity: str, work: Path, facts: dict[str, Any]) -> list[Timing]:
    status = command_status("export")
    lake = work / "lake"
    shutil.rmtree(lake, ignore_errors=True)
    if status == "missing":
        return [Timing("export", "ocproxy export", None, note="the export command is missing")]
    seconds, done = run_cli(status, ["export", str(db), "--parquet", str(lake), "--quiet"])
    if done.returncode != 0:
        raise RuntimeError(f"ocproxy export failed: {done.stderr.strip()}")
    files = list(lake.rglob("*.parquet"))
    facts["lake files"] = len(files)
    facts["lake bytes"] = sum(f.stat().st_size for f in files)
    timings = [
        Timing(
            "export --parquet",
            _how(status, "CLI"),
            seconds,
            facts["frames"],
            note=f"{len(files):,} files, {facts['lake bytes'] / 1e9:.2f} GB",
        )
    ]
    again, done = run_cli(status, ["export", str(db), "--parquet", str(lake), "--quiet"])
    if done.returncode != 0:
        raise RuntimeError(f"ocproxy export (again) failed: {done.stderr.strip()}")
    timings.append(Timing("export again (replaces)", _how(status, "CLI"), again, facts["frames"]))
    return timings + [
        Timing(t.step, "library, over the lake", t.seconds, t.rows, t.target_s)
        for t in time_library(lake, identity, "lake")
    ]


def _report(db: Path, work: Path) -> Timing:
    status = command_status("report")
    if status == "missing":
        return Timing(
            "report --html", "ocproxy report", None, target_s=REPORT_TARGET_S,
            note="ocproxy report does not exist yet: not measured",
        )  # fmt: skip
    html = work / "report.html"
    seconds, done = run_cli(status, ["report", str(db), "--html", str(html)])
    if done.returncode != 0:
        raise RuntimeError(f"ocproxy report failed: {done.stderr.strip()}")
    size = html.stat().st_size if html.exists() else 0
    return Timing(
        "report --html",
        _how(status, "CLI"),
        seconds,
        target_s=REPORT_TARGET_S,
        note=f"{size / 1e3:.0f} kB page",
    )


def _print(console: Console, timings: list[Timing], facts: dict[str, Any]) -> None:
    table = Table(title="ocproxy analytics on a big recording", box=box.SIMPLE_HEAD)
    for column in ("step", "how", "seconds", "rows", "target", "", "note"):
        table.add_column(column, justify="right" if column in ("seconds", "rows") else "left")
    for t in timings:
        style = "red" if t.verdict == "MISSED" else None
        table.add_row(*_cells(t), style=style)
    console.print(table)
    for key, value in facts.items():
        console.print(f"  {key}: {value:,}" if isinstance(value, int) else f"  {key}: {value}")
    console.print("\nMarkdown:\n")
    print("| step | how | seconds | rows | target | | note |")
    print("|---|---|---:|---:|---|---|---|")
    for t in timings:
        print("| " + " | ".join(_cells(t)) + " |")


def _cells(t: Timing) -> list[str]:
    return [
        t.step,
        t.how,
        "n/a" if t.seconds is None else f"{t.seconds:.2f}",
        "" if t.rows is None else f"{t.rows:,}",
        "" if t.target_s is None else f"≤ {t.target_s:g} s",
        t.verdict,
        t.note,
    ]


if __name__ == "__main__":
    sys.exit(main())
