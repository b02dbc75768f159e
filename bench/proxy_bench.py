"""How much does ocproxy cost? Round trips/s and latency, direct vs through the proxy.

One run measures four cases on loopback: chargers -> CSMS directly, and chargers ->
``ocproxy proxy`` (the real CLI, recording into a fresh DuckDB file) -> CSMS, at 1 and
at 100 chargers by default. The CSMS, the load generator and the proxy each run in
their own process (see ``_workload.py``). After each proxy case the proxy gets
SIGTERM, must exit 0, and its recording must hold every frame the chargers exchanged.

    .venv/bin/python bench/proxy_bench.py [--duration 5] [--chargers 1,100]
        [--json results.json] [--markdown]

Target: through-proxy throughput >= 0.5x direct, at 1 and at 100 chargers.
Exit status: 0 when every case ran and every frame was recorded, 1 otherwise
(missing the throughput target is reported, not an error).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import platform
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import duckdb
from rich import box
from rich.console import Console
from rich.table import Table

WORKLOAD = Path(__file__).with_name("_workload.py")
TARGET_RATIO = 0.5
TARGET_TEXT = f"target: through-proxy throughput >= {TARGET_RATIO}x direct at 1 and at 100 chargers"
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 60.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


# -- child processes --------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child, before exec (Linux): SIGTERM it if the benchmark is killed outright."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Child:
    """A subprocess whose stdout and stderr are drained into memory as they come."""

    def __init__(self, name: str, process: asyncio.subprocess.Process) -> None:
        self.name = name
        self.process = process
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._new_line = asyncio.Event()
        assert process.stdout is not None
        assert process.stderr is not None
        self._drains = [
            asyncio.create_task(self._drain(process.stdout, self.stdout)),
            asyncio.create_task(self._drain(process.stderr, self.stderr)),
        ]

    @classmethod
    async def start(
        cls, name: str, *args: str, env: dict[str, str] | None = None, stdin_pipe: bool = False
    ) -> Child:
        """``stdin_pipe``: the child's stdin stays open until this process is gone."""
        process = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.PIPE if stdin_pipe else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        return cls(name, process)

    async def _drain(self, stream: asyncio.StreamReader, into: list[str]) -> None:
        async for line in stream:
            into.append(line.decode("utf-8", "replace"))
            self._new_line.set()
        self._new_line.set()

    async def wait_for(self, pattern: str, within: float) -> re.Match[str]:
        """The first stdout match of ``pattern``; fail if the child exits or times out."""
        try:
            async with asyncio.timeout(within):
                while True:
                    match = re.search(pattern, "".join(self.stdout))
                    if match:
                        return match
                    if self._drains[0].done():  # stdout closed: the child is exiting
                        await self.wait(STARTUP_TIMEOUT)
                        raise RuntimeError(f"{self.name} exited early: {self.describe()}")
                    self._new_line.clear()
                    await self._new_line.wait()
        except TimeoutError:
            raise RuntimeError(f"{self.name} not ready after {within:g} s") from None

    async def wait(self, within: float) -> int:
        async with asyncio.timeout(within):
            code = await self.process.wait()
            await asyncio.gather(*self._drains)
        return code

    async def terminate(self, within: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then wait for the exit code."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        return await self.wait(within)

    def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    def describe(self) -> str:
        err = "".join(self.stderr).strip()
        return f"exit {self.process.returncode}; stderr: {err[-2000:] or '(empty)'}"


@contextlib.asynccontextmanager
async def children() -> AsyncIterator[list[Child]]:
    """Every child started in the block is killed on the way out, whatever happened."""
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in started:
            child.kill()
        for child in started:
            with contextlib.suppress(Exception):
                await child.wait(10.0)


async def start_csms(started: list[Child], compression: str = "deflate") -> int:
    command = [sys.executable, str(WORKLOAD), "csms", "--watch-stdin"]
    command += ["--compression", compression]
    child = await Child.start("csms", *command, stdin_pipe=True)
    started.append(child)
    match = await child.wait_for(r"PORT (\d+)", STARTUP_TIMEOUT)
    return int(match.group(1))


async def start_proxy(started: list[Child], csms_port: int, db: Path) -> tuple[Child, int]:
    args = ["--listen", "127.0.0.1:0", "--upstream", f"ws://127.0.0.1:{csms_port}"]
    command = [sys.executable, "-m", "ocproxy", "proxy", *args, "--db", str(db), "--quiet"]
    command += os.environ.get("OCPROXY_BENCH_ARGS", "").split()
    # A wide console so rich never wraps the "listening on" line.
    child = await Child.start("ocproxy proxy", *command, env={"COLUMNS": "250"})
    started.append(child)
    match = await child.wait_for(r"listening on ws://127\.0\.0\.1:(\d+)", STARTUP_TIMEOUT)
    return child, int(match.group(1))


async def run_load(
    started: list[Child],
    url: str,
    chargers: int,
    duration: float,
    warmup: float,
    compression: str = "deflate",
) -> dict[str, Any]:
    args = ["--url", url, "--chargers", str(chargers)]
    args += ["--duration", str(duration), "--warmup", str(warmup)]
    args += ["--compression", compression]
    child = await Child.start("load generator", sys.executable, str(WORKLOAD), "load", *args)
    started.append(child)
    code = await child.wait(duration + warmup + 120.0)
    lines = [line for line in child.stdout if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"load generator gave no result: {child.describe()}")
    result: dict[str, Any] = json.loads(lines[-1])
    if code != 0:
        raise RuntimeError(f"load generator failed: {result['errors'][:3]} {child.describe()}")
    return result


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a live process (Linux /proc), None where unavailable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendant_pids(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc): the proxy's recorder and forkserver."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpu_snapshot(watched: dict[str, Child]) -> dict[str, dict[int, float | None]]:
    """CPU seconds so far of each watched process and, under "NAME children", its tree."""
    out: dict[str, dict[int, float | None]] = {}
    for name, child in watched.items():
        pid = child.process.pid
        out[name] = {pid: cpu_seconds(pid)}
        out[f"{name} children"] = {p: cpu_seconds(p) for p in descendant_pids(pid)}
    return out


def cpu_per_round_trip(
    before: dict[str, dict[int, float | None]],
    after: dict[str, dict[int, float | None]],
    load: dict[str, Any],
) -> dict[str, float | None]:
    """µs of CPU per round trip for the chargers' process and each watched process tree."""
    trips = load["results_received"] or 1
    out: dict[str, float | None] = {"chargers": load["cpu_s"] / trips * 1e6}
    for name, pids in before.items():
        deltas = [
            end - start
            for pid, start in pids.items()
            if start is not None and (end := after.get(name, {}).get(pid)) is not None
        ]
        out[name] = sum(deltas) / trips * 1e6 if deltas else None
    return out


async def load_with_cpu(
    case: Case, started: list[Child], url: str, watched: dict[str, Child], args: argparse.Namespace
) -> None:
    before = cpu_snapshot(watched)
    case.load = await run_load(
        started, url, case.chargers, args.duration, args.warmup, args.compression
    )
    case.cpu_us_per_round_trip = cpu_per_round_trip(before, cpu_snapshot(watched), case.load)


# -- one case -----------------------------------------------------------------------------


@dataclass
class Case:
    path: str  # "direct" or "proxy"
    chargers: int
    load: dict[str, Any] = field(default_factory=dict)
    recording: dict[str, Any] | None = None
    proxy_exit: int | None = None
    proxy_stderr: str = ""
    proxy_stdout: str = ""
    cpu_us_per_round_trip: dict[str, float | None] = field(default_factory=dict)
    error: str | None = None

    @property
    def name(self) -> str:
        return f"{self.path}, {self.chargers} charger{'s' if self.chargers != 1 else ''}"

    @property
    def frames_ok(self) -> bool | None:
        if self.path == "direct":
            return None
        return self.error is None and bool(self.recording and self.recording["ok"])


async def measure_direct(case: Case, args: argparse.Namespace) -> None:
    async with children() as started:
        port = await start_csms(started, args.compression)
        url = f"ws://127.0.0.1:{port}"
        await load_with_cpu(case, started, url, {"csms": started[0]}, args)
        await started[0].terminate()


async def measure_proxy(case: Case, args: argparse.Namespace, workdir: Path) -> None:
    db = workdir / f"proxy-{case.chargers}.duckdb"
    started: list[Child] = []
    try:
        async with children() as started:
            csms_port = await start_csms(started, args.compression)
            proxy, port = await start_proxy(started, csms_port, db)
            url = f"ws://127.0.0.1:{port}"
            await load_with_cpu(case, started, url, {"csms": started[0], "proxy": proxy}, args)
            case.proxy_exit = await proxy.terminate()
            await started[0].terminate()
    finally:
        # Read after children() has killed and reaped everything: the output is complete.
        if len(started) > 1:
            case.proxy_stderr = "".join(started[1].stderr).strip()
            case.proxy_stdout = "".join(started[1].stdout).strip()[-3000:]
    case.recording = verify_recording(db, case.load, case.proxy_exit)


def verify_recording(db: Path, load: dict[str, Any], proxy_exit: int | None) -> dict[str, Any]:
    """Every CALL sent and every CALLRESULT received is a row in ``frames``, none lost;
    the traffic is valid OCPP, so the live audit found nothing."""
    with duckdb.connect(str(db), read_only=True) as con:

        def one(sql: str) -> Any:
            row = con.execute(sql).fetchone()
            return None if row is None else row[0]

        directions = dict(
            con.execute("SELECT direction, count(*) FROM frames GROUP BY ALL").fetchall()
        )
        found = {
            "frames": one("SELECT count(*) FROM frames"),
            "to_csms": directions.get("to_csms", 0),
            "to_charger": directions.get("to_charger", 0),
            "run_stats_rows": one("SELECT count(*) FROM run_stats"),
            "runs_with_frames_lost": one("SELECT count(*) FROM run_stats WHERE frames_lost > 0"),
            "connections_opened": one(
                "SELECT count(*) FROM connection_opens WHERE handshake_status = 101"
            ),
            "connections_closed": one("SELECT count(*) FROM connection_closes"),
            "malformed": one("SELECT count(*) FROM frames WHERE parse_status <> 'ok'"),
            "unmatched_results": one(
                "SELECT count(*) FROM frames WHERE message_type = 3 AND pairing <> 'matched'"
            ),
            "findings": one("SELECT count(*) FROM findings"),
            "backpressure_waits": one("SELECT sum(backpressure_waits) FROM run_stats"),
            "max_queue_depth": one("SELECT max(max_queue_depth) FROM run_stats"),
        }
    expected = load["calls_sent"] + load["results_received"]
    found["expected_frames"] = expected
    found["ok"] = (
        proxy_exit == 0
        and found["frames"] == expected
        and found["to_csms"] == load["calls_sent"]
        and found["to_charger"] == load["results_received"]
        and found["run_stats_rows"] == 1
        and found["runs_with_frames_lost"] == 0
        and found["findings"] == 0
    )
    return found


async def run_case(case: Case, args: argparse.Namespace, workdir: Path, console: Console) -> None:
    console.print(f"[bold]{case.name}[/]: {args.warmup:g} s warm-up + {args.duration:g} s ...")
    try:
        if case.path == "direct":
            await measure_direct(case, args)
        else:
            await measure_proxy(case, args, workdir)
    except Exception as exc:
        case.error = f"{type(exc).__name__}: {exc}"
        console.print(f"[bold red]{case.name} failed:[/] {case.error}", highlight=False)
    report_problems(case, console)


def report_problems(case: Case, console: Console) -> None:
    if case.proxy_stderr:
        console.print(f"[yellow]proxy stderr ({case.name}):[/]\n{case.proxy_stderr[-3000:]}")
    rec = case.recording
    if rec is not None and not rec["ok"]:
        console.print(f"[bold red]recording check failed ({case.name}):[/] {rec}")
        console.print(f"proxy exit {case.proxy_exit}; proxy output (tail):\n{case.proxy_stdout}")


# -- results ------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def rows(cases: list[Case]) -> list[dict[str, Any]]:
    """One flat row per case, with ratios to the direct case of the same charger count."""
    direct = {c.chargers: c.load for c in cases if c.path == "direct" and not c.error}
    out = []
    for case in cases:
        load, base = case.load, direct.get(case.chargers, {})
        row: dict[str, Any] = {
            "case": case.name,
            "path": case.path,
            "chargers": case.chargers,
            "round_trips_per_s": load.get("round_trips_per_s"),
            "p50_ms": load.get("p50_ms"),
            "p99_ms": load.get("p99_ms"),
            "throughput_ratio": None,
            "p50_ratio": None,
            "p99_ratio": None,
            "every_frame_recorded": case.frames_ok,
            "error": case.error,
        }
        if case.path == "proxy":
            for key, metric in [("throughput", "round_trips_per_s"), ("p50", "p50_ms")]:
                row[f"{key}_ratio"] = ratio(load.get(metric), base.get(metric))
            row["p99_ratio"] = ratio(load.get("p99_ms"), base.get("p99_ms"))
        out.append(row)
    return out


def targets(table_rows: list[dict[str, Any]]) -> dict[str, bool | None]:
    met: dict[str, bool | None] = {}
    for row in table_rows:
        if row["path"] == "proxy":
            value = row["throughput_ratio"]
            met[str(row["chargers"])] = None if value is None else value >= TARGET_RATIO
    return met


def fmt(value: Any, spec: str = ".0f", suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:{spec}}{suffix}"


@dataclass(frozen=True)
class Column:
    title: str  # Markdown header
    header: str  # rich header, on up to three short lines so the table fits 80 columns
    key: str
    spec: str = ""
    suffix: str = ""


COLUMNS = [
    Column("Path", "Path", "path"),
    Column("Chargers", "Char-\ngers", "chargers", "d"),
    Column("Round trips/s", "Round\ntrips/s", "round_trips_per_s", ",.0f"),
    Column("p50 ms", "p50\nms", "p50_ms", ".2f"),
    Column("p99 ms", "p99\nms", "p99_ms", ".2f"),
    Column("Throughput ratio", "rt/s\nratio", "throughput_ratio", ".2f", "x"),
    Column("p50 ratio", "p50\nratio", "p50_ratio", ".2f", "x"),
    Column("p99 ratio", "p99\nratio", "p99_ratio", ".2f", "x"),
    Column("Every frame recorded", "Every\nframe\nrecorded", "every_frame_recorded"),
]
RATIO_NOTE = "ratio = proxy / direct at the same charger count"


def cells(row: dict[str, Any]) -> list[str]:
    return [fmt(row[c.key], c.spec, c.suffix) for c in COLUMNS]


def rich_table(table_rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title, caption=RATIO_NOTE, box=box.SIMPLE_HEAD)
    for column in COLUMNS:
        justify: Literal["left", "right"] = "left" if column.key == "path" else "right"
        table.add_column(column.header, justify=justify, no_wrap=True)
    for row in table_rows:
        table.add_row(*cells(row))
    return table


def markdown_table(table_rows: list[dict[str, Any]]) -> str:
    headers = [c.title for c in COLUMNS]
    aligns = [":---" if c.key == "path" else "---:" for c in COLUMNS]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(aligns) + "|"]
    lines += ["| " + " | ".join(cells(row)) + " |" for row in table_rows]
    return "\n".join(lines)


def cpu_table(cases: list[Case]) -> Table:
    """CPU time each process spent per round trip, over the whole load run."""
    table = Table(
        title="CPU per round trip (µs)",
        caption="proxy = the relaying process; recorder = the processes it started "
        "(its recorder, and the idle forkserver that started it)",
        box=box.SIMPLE_HEAD,
    )
    for header in ("Path", "Chargers", "chargers", "CSMS", "proxy", "recorder"):
        table.add_column(header, justify="left" if header == "Path" else "right")
    for case in cases:
        cpu = case.cpu_us_per_round_trip
        keys = ("chargers", "csms", "proxy", "proxy children")
        table.add_row(case.path, str(case.chargers), *[fmt(cpu.get(k), ".0f") for k in keys])
    return table


def target_lines(met: dict[str, bool | None]) -> list[str]:
    verdicts = {True: "met", False: "NOT met", None: "not measured"}
    return [TARGET_TEXT] + [f"  {n} charger(s): {verdicts[ok]}" for n, ok in met.items()]


def environment(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "websockets": metadata.version("websockets"),
        "duckdb": duckdb.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "chargers": args.chargers,
        "compression": args.compression,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def report(
    cases: list[Case], args: argparse.Namespace, meta: dict[str, Any], console: Console
) -> bool:
    table_rows = rows(cases)
    met = targets(table_rows)
    meta["load_average_at_end"] = os.getloadavg()
    title = (
        f"ocproxy overhead, {args.duration:g} s per case ({meta['cpus']} CPUs, "
        f"compression: {args.compression})"
    )
    console.print(rich_table(table_rows, title))
    console.print(cpu_table(cases))
    for case in cases:
        if case.path == "proxy":
            console.print(f"{case.name}: every frame recorded: {fmt(case.frames_ok)}")
    for line in target_lines(met):
        console.print(line, highlight=False)
    if args.markdown:
        print("\n" + markdown_table(table_rows) + "\n")
        print(f"{RATIO_NOTE}.  ")
        print("\n".join(f"{line}  " for line in target_lines(met)))
    if args.json:
        document: dict[str, Any] = {"environment": meta, "target": TARGET_TEXT, "target_met": met}
        document |= {"rows": table_rows, "cases": [asdict(c) for c in cases]}
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
        console.print(f"results written to {args.json}")
    return all(c.error is None for c in cases) and all(c.frames_ok is not False for c in cases)


# -- command line ---------------------------------------------------------------------------


def charger_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list like 1,100") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: charger counts must be >= 1")
    return counts


def positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Throughput and latency of OCPP round trips, direct vs through ocproxy.",
        epilog=TARGET_TEXT,
    )
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
        choices=("deflate", "none"),
        default="deflate",
        help="what the chargers and the CSMS offer: permessage-deflate (websockets' "
        "default, the default here) or none",
    )
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    p.add_argument("--keep", action="store_true", help="keep the DuckDB recordings")
    return p


def cancel_on_signals() -> None:
    """SIGINT/SIGTERM cancel the run, so that every ``children()`` block kills its processes."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)


async def run(args: argparse.Namespace, console: Console) -> bool:
    cancel_on_signals()
    meta = environment(args)
    console.print(TARGET_TEXT, highlight=False)
    workdir = Path(tempfile.mkdtemp(prefix="ocproxy-bench-"))
    cases = [Case(path, n) for n in args.chargers for path in ("direct", "proxy")]
    try:
        for case in cases:
            await run_case(case, args, workdir, console)
    finally:
        if args.keep:
            console.print(f"recordings kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return report(cases, args, meta, console)


def run_to_exit_code(
    bench: Callable[[argparse.Namespace, Console], Coroutine[Any, Any, bool]],
    args: argparse.Namespace,
    console: Console,
) -> int:
    """Run a benchmark's coroutine; 0 when it ran clean, 1 when not, 130 if interrupted."""
    try:
        ok = asyncio.run(bench(args, console))
    except asyncio.CancelledError:
        console.print("interrupted; every subprocess was stopped")
        return 130
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    return run_to_exit_code(run, parser().parse_args(argv), Console())


if __name__ == "__main__":
    sys.exit(main())
