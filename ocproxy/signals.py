"""Stopping a command cleanly: Ctrl-C and SIGTERM as events on the loop, not exceptions."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable


async def until_stopped(work: Awaitable[object] | None, duration: float | None) -> str | None:
    """Run ``work`` (or nothing) until it ends, Ctrl-C / SIGTERM, or ``duration``.

    Returns why it was stopped early ("signal", "duration"), None if ``work`` ended.
    A stopped ``work`` is cancelled: chargers hang up, a CSMS closes its connections.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reason: list[str] = []

    def stop_by(why: str) -> None:
        reason.append(why)
        stop.set()

    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop_by, "signal")
        except (NotImplementedError, RuntimeError):  # not the main thread (tests), Windows
            continue
        installed.append(sig)
    timer = None if duration is None else loop.call_later(duration, stop_by, "duration")
    waiter = asyncio.ensure_future(stop.wait())
    worker = None if work is None else asyncio.ensure_future(work)
    tasks = [waiter] if worker is None else [waiter, worker]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if timer is not None:
            timer.cancel()
        for sig in installed:
            loop.remove_signal_handler(sig)
    if worker is not None and worker.done() and not worker.cancelled():
        worker.result()  # a failure in the work itself is not hidden
    return reason[0] if reason else None
