"""The fleet benchmark's moving parts, on real processes: its chargers against the
benchmark CSMS, and the /proc readings of a process tree it reports.

Nothing here measures speed (that is the benchmark's job): these check that the chargers
speak the protocol the benchmark drives them with, and that a tree's memory and CPU are
read from every process in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from helpers_bench import BENCH, bench_module


def _lines_until(process: subprocess.Popen[str], prefix: str) -> str:
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith(prefix):
            return line
    raise AssertionError(f"no line starting with {prefix!r}; exit {process.wait()}")


@pytest.fixture
def csms_port() -> Iterator[int]:
    csms = subprocess.Popen(
        [sys.executable, str(BENCH / "_workload.py"), "csms", "--watch-stdin"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield int(_lines_until(csms, "PORT").split()[1])
    finally:
        csms.terminate()
        csms.wait(10)


def _fleet(port: int, mode: str, count: int) -> subprocess.Popen[str]:
    command = [sys.executable, str(BENCH / "_fleet_load.py"), "--url", f"ws://127.0.0.1:{port}"]
    command += ["--first", "10", "--count", str(count), "--mode", mode, "--heartbeat", "0.2"]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _say(process: subprocess.Popen[str], word: str) -> None:
    assert process.stdin is not None
    process.stdin.write(word + "\n")
    process.stdin.flush()


def test_a_storm_connects_every_charger_and_closes_on_request(csms_port: int) -> None:
    fleet = _fleet(csms_port, "storm", 5)
    try:
        _lines_until(fleet, "READY")
        _say(fleet, "go")
        dialled = json.loads(_lines_until(fleet, "{"))
        assert dialled["count"] == dialled["connected"] == 5
        assert len(dialled["connect_s"]) == 5
        assert dialled["failures"] == {}
        _say(fleet, "close")
        closed = json.loads(_lines_until(fleet, "{"))
        assert closed["heartbeats_sent"] == 0  # a storm's chargers only connect
        assert fleet.wait(30) == 0
    finally:
        fleet.kill()


def test_idle_chargers_heartbeat_and_get_answers(csms_port: int) -> None:
    fleet = _fleet(csms_port, "idle", 3)
    try:
        _lines_until(fleet, "READY")
        _say(fleet, "go")
        assert json.loads(_lines_until(fleet, "{"))["connected"] == 3
        # Each charger's first Heartbeat comes within one interval (0.2 s): wait for more.
        time.sleep(1.0)
        _say(fleet, "close")
        closed = json.loads(_lines_until(fleet, "{"))
        assert closed["heartbeats_sent"] >= 3
        assert closed["heartbeats_answered"] >= closed["heartbeats_sent"] - 3
        assert closed["heartbeat_errors"] == {}
        assert fleet.wait(30) == 0
    finally:
        fleet.kill()


def test_a_charger_that_cannot_connect_is_counted_with_its_reason() -> None:
    harness = bench_module("_harness")
    port = harness.free_port()  # nothing listens there
    fleet = _fleet(port, "storm", 2)
    try:
        _lines_until(fleet, "READY")
        _say(fleet, "go")
        dialled = json.loads(_lines_until(fleet, "{"))
        assert dialled["connected"] == 0
        assert dialled["failures"] == {"ConnectionRefusedError (errno 111)": 2}
        _say(fleet, "close")
        assert fleet.wait(30) == 0
    finally:
        fleet.kill()


def test_a_process_trees_memory_and_cpu_count_every_process() -> None:
    harness = bench_module("_harness")
    child = "import time; time.sleep(60)"
    parent = (
        "import subprocess, sys, time; "
        f"subprocess.Popen([sys.executable, '-c', {child!r}]); "
        "sum(range(3_000_000)); print('up', flush=True); time.sleep(60)"
    )
    tree = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    try:
        _lines_until(tree, "up")
        memory = harness.tree_memory(tree.pid)
        assert memory.processes == 2
        alone = harness.process_memory(tree.pid)
        assert memory.rss_kib > alone.rss_kib > 0
        if memory.pss_kib is not None:  # Linux with smaps_rollup
            assert 0 < memory.uss_kib <= memory.pss_kib <= memory.rss_kib
        assert len(harness.memory_by_process(tree.pid)) == 2
        own, rest = harness.tree_cpu_seconds(tree.pid)
        assert own > 0  # the parent's sum() and interpreter start-up
        assert rest >= 0
    finally:
        for pid in harness.descendant_pids(tree.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        tree.kill()
        tree.wait(10)
    assert harness.tree_memory(tree.pid) is None


def test_a_childs_long_output_line_is_read_whole() -> None:
    """A fleet loader prints every connect time on one line: 10,000 of them are ~200 kB."""
    harness = bench_module("_harness")

    async def run() -> list[str]:
        async with harness.children() as started:
            child = await harness.Child.start(
                "long line", sys.executable, "-c", "print('7' * 500_000); print('done')"
            )
            started.append(child)
            await child.wait_for("done", 30.0)
            return list(child.stdout)

    lines = asyncio.run(run())
    assert lines == ["7" * 500_000 + "\n", "done\n"]
