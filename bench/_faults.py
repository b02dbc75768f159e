"""The faults ``fault_bench.py`` needs beyond killing processes: a slow CSMS, a disk that
fills, and the recorder's memory over a long run.

    python bench/_faults.py slow-csms --delay-ms 20 --stall-at 2 --stall-for 1

runs the slow CSMS alone (it prints ``PORT N`` and answers until SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from _harness import STARTUP_TIMEOUT, Child, descendant_pids, process_memory
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

HERE = Path(__file__)
# What a disk that filled is grown to when "the operator frees space".
FREED_MB = 1024


# -- a slow CSMS ---------------------------------------------------------------------------


@dataclass
class _Pace:
    delay_s: float
    stall_at_s: float
    stall_for_s: float
    first: float | None = None  # loop time of the first CALL: the stall is timed from it

    async def wait(self, now: float) -> None:
        if self.first is None:
            self.first = now
        start = self.first + self.stall_at_s
        if start <= now < start + self.stall_for_s:
            await asyncio.sleep(start + self.stall_for_s - now)
        await asyncio.sleep(self.delay_s)


async def _serve_slowly(pace: _Pace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def handler(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                frame = json.loads(message)
                await pace.wait(loop.time())
                await ws.send(f"[3,{json.dumps(frame[1])},{{}}]")  # MeterValues.conf

    async with serve(handler, "127.0.0.1", 0, subprotocols=[Subprotocol("ocpp1.6")]) as server:
        print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
        await stop.wait()


async def start_slow_csms(
    started: list[Child], delay_ms: float, stall_at: float, stall_for: float
) -> tuple[Child, int]:
    command = [sys.executable, str(HERE), "slow-csms", "--delay-ms", f"{delay_ms:g}"]
    command += ["--stall-at", f"{stall_at:g}", "--stall-for", f"{stall_for:g}"]
    child = await Child.start("slow csms", *command)
    started.append(child)
    match = await child.wait_for(r"PORT (\d+)", STARTUP_TIMEOUT)
    return child, int(match.group(1))


# -- a disk that fills ---------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(directory: Path, size_mb: int, *, mount: bool = True) -> Iterator[bool]:
    """A tmpfs of ``size_mb`` on ``directory``; yields False (and mounts nothing) where
    mounting is refused (not root, no CAP_SYS_ADMIN) or not wanted."""
    directory.mkdir(parents=True, exist_ok=True)
    command = ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(directory)]
    mounted = mount and subprocess.run(command, capture_output=True, check=False).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(directory)], capture_output=True, check=False)


def grow_disk(directory: Path) -> None:
    """The operator freed space: the tmpfs grows, the files on it stay."""
    remount = ["mount", "-o", f"remount,size={FREED_MB}m", str(directory)]
    subprocess.run(remount, capture_output=True, check=True)


async def start_ocproxy_limited(
    started: list[Child], upstream_port: int, db: Path, max_file_bytes: int
) -> tuple[Child, int]:
    """``ocproxy proxy`` under ``ulimit -f``: a write past the limit fails with EFBIG
    (Python ignores SIGXFSZ), as a write to a full disk fails with ENOSPC."""
    args = ["--listen", "127.0.0.1:0", "--upstream", f"ws://127.0.0.1:{upstream_port}"]
    proxy = [sys.executable, "-m", "ocproxy", "proxy", *args, "--db", str(db), "--quiet"]
    blocks = max(max_file_bytes // 1024, 1)  # ulimit -f counts 1024-byte blocks in bash
    script = f"ulimit -f {blocks} && exec {shlex.join(proxy)}"
    child = await Child.start("ocproxy proxy", "bash", "-c", script, env={"COLUMNS": "250"})
    started.append(child)
    match = await child.wait_for(r"listening on ws://127\.0\.0\.1:(\d+)", STARTUP_TIMEOUT)
    return child, int(match.group(1))


# -- the recorder's memory -------------------------------------------------------------------


def recorder_pid(proxy_pid: int) -> int | None:
    """The proxy's recorder process (None with --control: it is a thread then)."""
    for pid in descendant_pids(proxy_pid):
        with contextlib.suppress(OSError):
            if b"ocproxy.recorder.child" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
    return None


@dataclass
class MemoryTrace:
    """Resident memory of a process, in MiB, sampled every ``every`` seconds."""

    samples: list[float] = field(default_factory=list)

    @property
    def summary(self) -> str:
        if not self.samples:
            return "no samples"
        first, peak, last = self.samples[0], max(self.samples), self.samples[-1]
        return f"{first:.0f} MiB at the start, {peak:.0f} MiB at most, {last:.0f} MiB at the end"


@contextlib.asynccontextmanager
async def sampling(pid: int | None, every: float = 1.0) -> AsyncIterator[MemoryTrace]:
    trace = MemoryTrace()

    async def sample() -> None:
        while pid is not None and (found := process_memory(pid)) is not None:
            trace.samples.append(found.rss_kib / 1024)
            await asyncio.sleep(every)

    task = asyncio.create_task(sample())
    try:
        yield trace
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    slow = commands.add_parser("slow-csms", help="a CSMS that answers late, and stalls once")
    slow.add_argument("--delay-ms", type=float, default=20.0)
    slow.add_argument("--stall-at", type=float, default=2.0, help="seconds after the 1st CALL")
    slow.add_argument("--stall-for", type=float, default=1.0, help="seconds without answers")
    args = parser.parse_args()
    pace = _Pace(args.delay_ms / 1000.0, args.stall_at, args.stall_for)
    asyncio.run(_serve_slowly(pace))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
