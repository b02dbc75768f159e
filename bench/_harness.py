"""What every benchmark here shares about processes: starting, watching and stopping
them, and what they cost.

- ``Child`` / ``children()``: subprocesses whose output is drained into memory, killed
  whatever happens (and, on Linux, when the benchmark is killed outright);
- ``/proc`` readings: CPU seconds and memory (RSS, PSS, USS) of a process or its whole tree;
- the open-files limit, free ports, signals and the run's exit code.

Command-line types, the environment record and table cells are in ``_cli.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import re
import resource
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 60.0
# The longest line read from a child: the fleet loaders print every connect time on one.
LINE_LIMIT = 64 * 1024 * 1024
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


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
        cls,
        name: str,
        *args: str,
        env: dict[str, str] | None = None,
        stdin_pipe: bool = False,
        cwd: Path | None = None,
    ) -> Child:
        """``stdin_pipe``: the child's stdin stays open (for ``send_line``) until this
        process is gone."""
        process = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.PIPE if stdin_pipe else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            cwd=cwd,
            limit=LINE_LIMIT,
        )
        return cls(name, process)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def _drain(self, stream: asyncio.StreamReader, into: list[str]) -> None:
        try:
            async for line in stream:
                into.append(line.decode("utf-8", "replace"))
                self._new_line.set()
        except ValueError as exc:  # a line longer than LINE_LIMIT: say so, do not hang
            into.append(f"[benchmark: output not read past here: {exc}]\n")
        finally:
            self._new_line.set()

    async def wait_for(self, pattern: str, within: float, stream: str = "stdout") -> re.Match[str]:
        """The first match of ``pattern`` in the child's output; fail if it exits or times out."""
        lines, drain = (self.stdout, 0) if stream == "stdout" else (self.stderr, 1)
        try:
            async with asyncio.timeout(within):
                while True:
                    match = re.search(pattern, "".join(lines))
                    if match:
                        return match
                    if self._drains[drain].done():  # output closed: the child is exiting
                        await self.wait(STARTUP_TIMEOUT)
                        raise RuntimeError(f"{self.name} exited early: {self.describe()}")
                    self._new_line.clear()
                    await self._new_line.wait()
        except TimeoutError:
            raise RuntimeError(f"{self.name} not ready after {within:g} s") from None

    async def send_line(self, line: str) -> None:
        assert self.process.stdin is not None, "started without stdin_pipe"
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()

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


def cancel_on_signals() -> None:
    """SIGINT/SIGTERM cancel the run, so that every ``children()`` block kills its processes."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)


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


# -- /proc: CPU and memory ------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (field 3 onwards), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a live process (Linux /proc), None where unavailable."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def descendant_pids(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc): e.g. the proxy's recorder and forkserver."""
    below: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            below.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in below.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def tree_cpu_seconds(pid: int) -> tuple[float, float] | None:
    """CPU time of ``pid`` itself, and of the rest of its tree: every live descendant plus
    what each member has reaped. None when ``pid`` is gone.

    Counting reaped children (``cutime`` + ``cstime``) keeps the figure whole when a
    process of the tree ends during a measurement: its time moves from the live sum into
    its parent's reaped sum. One pass, so that the two parts are read together.
    """
    root = _stat_fields(pid)
    if root is None:
        return None
    own = (int(root[11]) + int(root[12])) / CLOCK_TICKS
    rest = (int(root[13]) + int(root[14])) / CLOCK_TICKS
    for member in descendant_pids(pid):
        fields = _stat_fields(member)
        if fields is not None:
            rest += sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLOCK_TICKS
    return own, rest


@dataclass(frozen=True)
class Memory:
    """Resident memory of a process or a tree, in KiB.

    RSS counts every page a process maps, so a tree's RSS counts shared pages (libraries,
    pages a fork still shares with its parent) once per process. PSS divides each shared
    page among the processes mapping it: a tree's PSS adds up to what it really holds,
    but a process's PSS also drops when some other process starts mapping the same
    library. USS is what only this process maps (private pages): what grows per
    connection. PSS and USS are None where /proc/PID/smaps_rollup is missing.
    """

    rss_kib: int
    pss_kib: int | None
    uss_kib: int | None
    processes: int

    def __add__(self, other: Memory) -> Memory:
        return Memory(
            self.rss_kib + other.rss_kib,
            _add(self.pss_kib, other.pss_kib),
            _add(self.uss_kib, other.uss_kib),
            self.processes + other.processes,
        )


def _add(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a + b


def _kib_fields(path: Path) -> dict[str, int]:
    """The "Name:  123 kB" lines of a /proc file, or nothing if it cannot be read."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+):\s+(\d+) kB", text, re.MULTILINE)}


def process_memory(pid: int) -> Memory | None:
    rss = _kib_fields(Path(f"/proc/{pid}/status")).get("VmRSS")
    if rss is None:
        return None
    rollup = _kib_fields(Path(f"/proc/{pid}/smaps_rollup"))
    clean, dirty = rollup.get("Private_Clean"), rollup.get("Private_Dirty")
    uss = None if clean is None or dirty is None else clean + dirty
    return Memory(rss, rollup.get("Pss"), uss, 1)


def tree_memory(pid: int) -> Memory | None:
    """RSS, PSS and USS of ``pid`` and every live descendant, summed; None when it is gone."""
    root = process_memory(pid)
    if root is None:
        return None
    for member in descendant_pids(pid):
        found = process_memory(member)
        if found is not None:
            root += found
    return root


def memory_by_process(pid: int) -> dict[str, Memory]:
    """Memory of ``pid`` and each live descendant, by "PID COMMAND LINE" (cut short)."""
    out: dict[str, Memory] = {}
    for member in (pid, *descendant_pids(pid)):
        found = process_memory(member)
        if found is not None:
            try:
                raw = Path(f"/proc/{member}/cmdline").read_bytes()
            except OSError:
                raw = b"?"
            command = raw.replace(b"\0", b" ").decode(errors="replace").strip()
            out[f"{member} {command[:100]}"] = found
    return out


# -- the machine ------------------------------------------------------------------------


def time_wait_sockets(port: int) -> int | None:
    """TCP sockets in TIME_WAIT with ``port`` at either end (Linux /proc/net/tcp and
    tcp6); None where neither can be read."""
    count, read = 0, False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        read = True
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "06":  # TCP_TIME_WAIT
                ends = (int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16))
                count += port in ends
    return count if read else None


async def drain_time_wait(port: int, within: float = 75.0) -> tuple[int | None, float]:
    """Wait until no socket to or from ``port`` is in TIME_WAIT (Linux keeps one 60 s);
    (how many there were, seconds waited)."""
    started = time.monotonic()
    first = time_wait_sockets(port)
    left = first
    while left and time.monotonic() - started < within:
        await asyncio.sleep(1.0)
        left = time_wait_sockets(port)
    return first, time.monotonic() - started


def raise_open_files(needed: int, raise_hard: bool = False) -> str:
    """Raise this process's open-files soft limit (its children inherit it) to the hard
    limit; with ``raise_hard``, the hard limit too when it is below ``needed`` and this
    process may (root). Says what it did, and whether that is too low for ``needed``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    refused = ""
    if raise_hard and hard != resource.RLIM_INFINITY and hard < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return f"open files: soft {soft}, hard {hard}: both raised to {needed} (privileged)"
        except (ValueError, OSError) as exc:
            refused = f" (raising the hard limit was refused: {exc})"
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    said = f"open files: soft limit {soft} raised to the hard limit {hard}"
    if soft == hard:
        said = f"open files: soft = hard limit = {hard}"
    if hard != resource.RLIM_INFINITY and hard < needed:
        said += (
            f", TOO LOW: about {needed} are needed (two per charger in a relay); expect "
            f"failures (raise it: ulimit -Hn {needed}, or --raise-hard-limit as root){refused}"
        )
    return said


def free_port() -> int:
    """A TCP port on 127.0.0.1 free right now (for programs that cannot take port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def wait_listening(port: int, child: Child, within: float = STARTUP_TIMEOUT) -> None:
    """Until something accepts TCP connections on 127.0.0.1:``port``; fail if ``child`` exits."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if child.process.returncode is not None:
            await child.wait(STARTUP_TIMEOUT)
            raise RuntimeError(f"{child.name} exited early: {child.describe()}")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{child.name} not listening on port {port} after {within:g} s")
