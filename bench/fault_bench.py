"""What a fault costs the recording, and whether the recording says so (issue 14 item 6).

    .venv/bin/python bench/fault_bench.py [--chargers 20] [--duration 4] [--markdown]
    .venv/bin/python bench/fault_bench.py --scenarios soak --soak-seconds 60 \
        [--proxy-args '--recorder-memory 256MB']

Each scenario runs the round-trip loader (``_workload.py load``) through a real
``ocproxy proxy`` to a real CSMS and breaks something half-way:

- ``kill -9 relay``: SIGKILL to the relaying process only (its recorder is orphaned);
- ``kill -9 all``: SIGKILL to the relay and its recorder at once (a process group, power
  loss);
- ``CSMS killed``: SIGKILL to the CSMS (every CSMS leg drops), then the proxy is stopped
  with SIGTERM;
- ``disk full``: the recording is on a tmpfs of ``--disk-mb`` MB (mounted here: run as
  root), which fills under the load; when the load is over the tmpfs is grown (the
  operator freed space) and the proxy stopped. Where mounting is refused, the proxy runs
  under ``ulimit -f`` (a file-size limit) instead, and the table says which;
- ``slow CSMS``: a CSMS of this file's own that answers each CALL ``--csms-delay`` ms
  late and stops answering for ``--duration / 4`` seconds half-way;
- ``soak`` (not in the default set): the plain load for ``--soak-seconds``, sampling the
  recorder's resident memory every second (``--proxy-args`` to try recorder options);
- ``storm`` (not in the default set): ``--storm-chargers`` dial at once (``_fleet_load.py``
  storm mode: no frames), then close; every attempt must leave a closed ``connections``
  row. The open-files limit is raised (the hard one too, as root) to two per charger.

After a crash a second ``ocproxy proxy`` opens the file and is stopped at once: it is what
closes a crashed run. Then it prints, per scenario: the frames the peers exchanged
through the proxy (CALLs the chargers sent, answers they received), the frames recorded
for the run, what ``run_stats`` reports lost (NULL: unknown), the connections closed as
``proxy-crash``, and whether the report holds: after a crash the loss must be reported
unknown (never 0) and every open connection closed; otherwise nothing may be lost.
The recorded frames missing after a crash, divided by the frame rate, is the loss window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import duckdb
from _faults import (
    grow_disk,
    recorder_pid,
    sampling,
    small_disk,
    start_ocproxy_limited,
    start_slow_csms,
)
from _fleet_load import close_fleet, dial, start_fleet
from _harness import Child, children, descendant_pids, raise_open_files, run_to_exit_code
from _peers import NGINX_BACKLOG, WORKLOAD, start_csms, start_ocproxy
from rich.console import Console
from rich.table import Table

from ocproxy.terminal import make_console

SCENARIOS = ("kill -9 relay", "kill -9 all", "CSMS killed", "disk full", "slow CSMS")
KILLS = ("kill -9 relay", "kill -9 all")
# The proxy's exit summary: "(N frames recorded, M lost, ...)".
_SUMMARY = re.compile(r"\((\d+) frames recorded, (\d+) lost")


@dataclass
class Outcome:
    scenario: str
    sent: int  # frames that crossed the proxy: CALLs sent + answers received
    recorded: int
    lost: int | None  # run_stats.frames_lost of the broken run; None: NULL (unknown)
    crash_closed: int  # connections closed as proxy-crash
    open_left: int  # connections of the run with no close at all
    rate: float  # frames per second before the fault
    exit_code: int | None = None  # the proxy's, when it was stopped (not killed)
    note: str = ""
    attempts: int | None = None  # storm: chargers that dialled; rows: their connections rows
    rows: int | None = None

    @property
    def holds(self) -> bool:
        if self.scenario in KILLS:
            return self.lost is None and self.open_left == 0 and self.recorded <= self.sent
        if self.scenario == "disk full":  # some lost, every one of them counted, exit 1
            return (
                bool(self.lost)
                and self.recorded + (self.lost or 0) == self.sent
                and (self.exit_code == 1)
            )
        if self.scenario == "storm":  # every attempt has its row, closed
            return self.lost == 0 and self.rows == self.attempts and self.open_left == 0
        return self.lost == 0 and self.recorded == self.sent and self.open_left == 0

    @property
    def window_ms(self) -> float | None:
        if self.scenario not in KILLS or not self.rate:
            return None
        return max(self.sent - self.recorded, 0) / self.rate * 1000.0


async def _load(started: list[Child], url: str, args: argparse.Namespace) -> Child:
    command = [sys.executable, str(WORKLOAD), "load", "--url", url]
    command += ["--chargers", str(args.chargers), "--duration", str(args.duration)]
    command += ["--warmup", "0", "--compression", "none"]
    child = await Child.start("load generator", *command)
    started.append(child)
    return child


def _tally(load: Child) -> dict[str, int]:
    lines = [line for line in load.stdout if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"the loader gave no result: {load.describe()}")
    result: dict[str, int] = json.loads(lines[-1])
    return result


async def _scenario(name: str, args: argparse.Namespace, workdir: Path) -> Outcome:
    db = workdir / f"{name.replace(' ', '-').replace('9', 'nine')}.duckdb"
    if name == "disk full":
        return await _disk_full(args, workdir)
    if name == "slow CSMS":
        return await _slow_csms(args, db)
    if name == "soak":
        return await _soak(args, db)
    if name == "storm":
        return await _storm(args, db)
    async with children() as started:
        csms, csms_port = await start_csms(started, "none")
        proxy, port = await start_ocproxy(started, csms_port, db, _proxy_args(args))
        load = await _load(started, f"ws://127.0.0.1:{port}", args)
        await asyncio.sleep(args.duration / 2)
        if name == "kill -9 relay":
            os.kill(proxy.pid, signal.SIGKILL)
        elif name == "kill -9 all":
            for pid in [proxy.pid, *descendant_pids(proxy.pid)]:
                os.kill(pid, signal.SIGKILL)
        else:
            csms.kill()
        await load.wait(args.duration + 120)
        tally = _tally(load)
        if name == "CSMS killed":
            await proxy.terminate()
        else:
            await proxy.wait(60)
            for pid in _orphaned_recorders():
                await _gone(pid)
            # The next proxy on the file closes the crashed run.
            again, _ = await start_ocproxy(started, csms_port, db, [])
            await again.terminate()
    return _read(name, db, tally, args.duration / 2)


def _proxy_args(args: argparse.Namespace) -> list[str]:
    return shlex.split(args.proxy_args)


async def _disk_full(args: argparse.Namespace, workdir: Path) -> Outcome:
    """The recording's disk fills under load; space is freed once the load is over."""
    disk = workdir / "small-disk"
    db = disk / "disk-full.duckdb"
    with small_disk(disk, args.disk_mb, mount=not args.no_mount) as mounted:
        async with children() as started:
            _csms, csms_port = await start_csms(started, "none")
            if mounted:
                proxy, port = await start_ocproxy(started, csms_port, db, _proxy_args(args))
            else:
                limit = args.disk_mb << 20
                proxy, port = await start_ocproxy_limited(started, csms_port, db, limit)
            load = await _load(started, f"ws://127.0.0.1:{port}", args)
            await load.wait(args.duration + 120)
            if mounted:
                grow_disk(disk)
            code = await proxy.terminate()
        said = _SUMMARY.search("".join(proxy.stdout))
        how = f"tmpfs of {args.disk_mb} MB" if mounted else f"ulimit -f {args.disk_mb} MB"
        outcome = _read("disk full", db, _tally(load), args.duration)
    if outcome.lost is None and said is not None:  # run_stats could not be written
        outcome.lost = int(said.group(2))
        how += "; lost from the exit summary"
    outcome.exit_code = code
    outcome.note = how
    return outcome


async def _slow_csms(args: argparse.Namespace, db: Path) -> Outcome:
    stall = args.duration / 4
    async with children() as started:
        _csms, csms_port = await start_slow_csms(started, args.csms_delay, args.duration / 2, stall)
        proxy, port = await start_ocproxy(started, csms_port, db, _proxy_args(args))
        load = await _load(started, f"ws://127.0.0.1:{port}", args)
        await load.wait(args.duration + 120)
        code = await proxy.terminate()
    outcome = _read("slow CSMS", db, _tally(load), args.duration)
    outcome.exit_code = code
    outcome.note = f"answers {args.csms_delay:g} ms late, none for {stall:g} s half-way"
    return outcome


async def _soak(args: argparse.Namespace, db: Path) -> Outcome:
    """A long run: what the recorder's resident memory does (``--proxy-args`` to vary)."""
    soak = argparse.Namespace(**{**vars(args), "duration": args.soak_seconds})
    async with children() as started:
        _csms, csms_port = await start_csms(started, "none")
        proxy, port = await start_ocproxy(started, csms_port, db, _proxy_args(args))
        async with sampling(recorder_pid(proxy.pid)) as trace:
            load = await _load(started, f"ws://127.0.0.1:{port}", soak)
            await load.wait(args.soak_seconds + 120)
        code = await proxy.terminate()
    outcome = _read("soak", db, _tally(load), args.soak_seconds)
    outcome.exit_code = code
    options = f" with {args.proxy_args}" if args.proxy_args else ""
    outcome.note = f"recorder RSS{options}: {trace.summary}"
    return outcome


async def _storm(args: argparse.Namespace, db: Path) -> Outcome:
    """``--storm-chargers`` dial the proxy at once (a fleet back after an outage), stay
    a moment, and close; every attempt must leave a closed ``connections`` row."""
    chargers = args.storm_chargers
    limits = raise_open_files(2 * chargers + 512, raise_hard=True)
    fleet_args = argparse.Namespace(
        loaders=2, heartbeat=60.0, open_timeout=60.0, compression="none"
    )
    async with children() as started:
        _csms, csms_port = await start_csms(started, "none", NGINX_BACKLOG, 60.0)
        proxy, port = await start_ocproxy(started, csms_port, db, _proxy_args(args))
        url = f"ws://127.0.0.1:{port}"
        fleet = await start_fleet(started, url, chargers, "storm", fleet_args)
        dialled = (await dial(fleet, fleet_args, chargers)).figures()
        await close_fleet(fleet)
        code = await proxy.terminate()
    outcome = _read("storm", db, {"calls_sent": 0, "results_received": 0}, 1.0)
    with duckdb.connect(str(db), read_only=True) as con:
        ((rows,),) = con.execute("SELECT count(*) FROM connections").fetchall()
    outcome.attempts, outcome.rows, outcome.exit_code = chargers, int(rows), code
    p99 = dialled["p99_s"]
    failures = ", ".join(f"{n:,} {why}" for why, n in dialled["failures"].items())
    outcome.note = (
        f"{chargers:,} at once: {dialled['connected']:,} connected"
        f"{'' if p99 is None else f' (p99 {p99:.1f} s)'}"
        f"{f' (failed: {failures})' if failures else ''}, {rows:,} connections rows; {limits}"
    )
    return outcome


def _orphaned_recorders() -> list[int]:
    """Recorder processes left behind by a relay killed alone (they close their run)."""
    found = []
    for pid in descendant_pids(os.getpid()):
        try:
            if b"ocproxy.recorder.child" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _gone(pid: int, within: float = 30.0) -> None:
    # Polling: another process's exit has no event to await here.
    async with asyncio.timeout(within):
        while _alive(pid):  # noqa: ASYNC110
            await asyncio.sleep(0.05)


def _read(name: str, db: Path, tally: dict[str, int], before_fault_s: float) -> Outcome:
    sent = int(tally["calls_sent"]) + int(tally["results_received"])
    with duckdb.connect(str(db), read_only=True) as con:
        ((run_id,),) = con.execute("SELECT run_id FROM runs ORDER BY started_at LIMIT 1").fetchall()
        ((recorded,),) = con.execute(
            "SELECT count(*) FROM frames JOIN connection_opens USING (connection_id) "
            "WHERE run_id = ?",
            [run_id],
        ).fetchall()
        stats = con.execute("SELECT frames_lost FROM run_stats WHERE run_id = ?", [run_id])
        lost = next(iter(stats.fetchone() or ()), None)  # no row: the disk was full
        ((crash_closed, open_left),) = con.execute(
            "SELECT count(*) FILTER (close_reason = 'proxy-crash'), "
            "count(*) FILTER (closed_at IS NULL) FROM connections WHERE run_id = ?",
            [run_id],
        ).fetchall()
    rate = sent / before_fault_s if name in KILLS else sent / (before_fault_s * 2)
    return Outcome(name, sent, int(recorded), lost, int(crash_closed), int(open_left), rate)


def _table(outcomes: list[Outcome]) -> Table:
    table = Table(title="what each fault cost the recording, and what it reports")
    for column in ("scenario", "frames sent", "recorded", "reported lost", "proxy-crash",
                   "left open", "loss window", "report holds"):  # fmt: skip
        table.add_column(column, justify="left" if column == "scenario" else "right")
    for o in outcomes:
        table.add_row(
            o.scenario,
            f"{o.sent:,}",
            f"{o.recorded:,}",
            "unknown (NULL)" if o.lost is None else f"{o.lost:,}",
            str(o.crash_closed),
            str(o.open_left),
            "-" if o.window_ms is None else f"{o.window_ms:.0f} ms",
            "yes" if o.holds else "NO",
        )
    return table


def _notes(outcomes: list[Outcome]) -> list[str]:
    return [f"{o.scenario}: {o.note} (proxy exit {o.exit_code})" for o in outcomes if o.note]


def _markdown(outcomes: list[Outcome]) -> str:
    rows = [
        "| scenario | frames sent | recorded | reported lost | proxy-crash | loss window | holds |",
        "|:---|---:|---:|---:|---:|---:|:---|",
    ]
    for o in outcomes:
        lost = "NULL" if o.lost is None else f"{o.lost:,}"
        window = "-" if o.window_ms is None else f"{o.window_ms:.0f} ms"
        rows.append(
            f"| {o.scenario} | {o.sent:,} | {o.recorded:,} | {lost} | {o.crash_closed} | "
            f"{window} | {'yes' if o.holds else 'NO'} |"
        )
    return "\n".join(rows)


async def run(args: argparse.Namespace, console: Console) -> bool:
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="ocproxy-fault-bench-", delete=not args.keep) as tmp:
        if args.keep:
            console.print(f"recordings kept in {tmp}", highlight=False)
        for name in args.scenarios.split(","):
            when = {
                "soak": f"{args.chargers} chargers, {args.soak_seconds:g} s of load",
                "storm": f"{args.storm_chargers} chargers at once",
            }.get(name.strip(), f"{args.chargers} chargers, fault after {args.duration / 2:g} s")
            console.print(f"{name}: {when}")
            outcomes.append(await _scenario(name.strip(), args, Path(tmp)))
    console.print(_table(outcomes))
    for line in _notes(outcomes):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    if args.markdown:
        console.print(_markdown(outcomes), markup=False, highlight=False, soft_wrap=True)
    return all(o.holds for o in outcomes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--chargers", type=int, default=20, help="default 20")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds of load (4)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    parser.add_argument("--keep", action="store_true", help="keep the recordings")
    parser.add_argument("--disk-mb", type=int, default=6, help="disk full: its size (6)")
    parser.add_argument(
        "--no-mount", action="store_true", help="disk full: ulimit -f instead of a tmpfs"
    )
    parser.add_argument(
        "--csms-delay", type=float, default=20.0, help="slow CSMS: ms per answer (20)"
    )
    parser.add_argument("--soak-seconds", type=float, default=60.0, help="soak: seconds (60)")
    parser.add_argument(
        "--storm-chargers", type=int, default=10_000, help="storm: chargers at once (10000)"
    )
    parser.add_argument(
        "--proxy-args", default="", help="more ocproxy proxy options, e.g. '--recorder-memory 1GB'"
    )
    args = parser.parse_args()
    return run_to_exit_code(run, args, make_console())


if __name__ == "__main__":
    sys.exit(main())
