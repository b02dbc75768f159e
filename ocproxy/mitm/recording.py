"""The addon's recording: one :class:`~ocproxy.recorder.Recorder`, opened and closed off the loop.

Opening a DuckDB file (create, migrate) and closing it (flush) can take a moment on
a large file, so both run on one worker thread, one at a time, and a ``set
ocproxy_db=...`` from mitmproxy's console never stalls live connections. The hooks
keep submitting to the :class:`Recording` meanwhile: the recorder queues what
arrives before it has started.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from mitmproxy import ctx

from ocproxy import __version__
from ocproxy.audit.auditor import Auditor
from ocproxy.core.redaction import Redactor
from ocproxy.errors import RecorderError
from ocproxy.idkey import resolve_id_key
from ocproxy.mitm import SOURCE
from ocproxy.recorder import Recorder, RecorderStats, Sink

# The addon's logger: these lines are the addon's, wherever they are written from.
logger = logging.getLogger("ocproxy.mitm.addon")


class LogSink(Sink):
    """Reports write failures (disk full, file gone) through mitmproxy's log."""

    def on_error(self, message: str) -> None:
        logger.error(f"ocproxy: {message}")


@dataclass(eq=False)
class Recording:
    """One Recorder as the addon uses it: opened on the worker thread, fed from the loop."""

    recorder: Recorder
    # Opening failed (set on the worker thread as it fails, so that frames from then on
    # are counted as lost at once): what was submitted is lost and counted.
    failed: bool = False
    error: str = ""  # why opening failed
    reported: bool = False  # the failure was said and its frames counted (on the loop)
    frames: int = 0  # frames submitted, to count them as lost if opening fails

    @property
    def usable(self) -> bool:
        return not self.failed


def new_recorder(path: str, audit: bool, keep_ids: bool = False) -> Recorder:
    """A Recorder for ``path``, its run settings taken from mitmproxy's options; driver
    ids pseudonymised as by ``ocproxy proxy`` unless ``keep_ids``."""
    options = ctx.options
    settings = {
        "db": path,
        "audit": audit,
        "keep_ids": keep_ids,
        "paths": options.ocproxy_paths,
        "subprotocols": options.ocproxy_subprotocols,
        "mode": list(options.mode),
        "ocproxy": __version__,
    }
    return Recorder(
        path,
        source=SOURCE,
        settings=settings,
        sinks=[LogSink()],
        auditor=Auditor() if audit else None,
        redactor=Redactor(None if keep_ids else resolve_id_key(None)),
    )


class Worker:
    """The one thread that opens and closes recordings, in the order they were asked for.

    ``on_open_failed`` runs on mitmproxy's event loop, where the addon's state lives.
    """

    def __init__(self, on_open_failed: Callable[[Recording], None]) -> None:
        self._on_open_failed = on_open_failed
        self._pool: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self, recording: Recording) -> None:
        self._run(self._open, recording)

    def close(self, recording: Recording) -> None:
        self._run(self._close, recording)

    def shutdown(self) -> None:
        """Wait for what was asked: mitmproxy's ``done`` must not return before the flush."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _run(self, job: Callable[[Recording], None], recording: Recording) -> None:
        # Created on first use: mitmproxy's loop and ctx.master exist by then, not at import.
        if self._loop is None:
            self._loop = ctx.master.event_loop
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ocproxy-mitm")
        self._pool.submit(job, recording)

    def _open(self, recording: Recording) -> None:
        """On the worker thread: open, create and migrate the database."""
        try:
            recording.recorder.start()
        except RecorderError as exc:
            recording.error = str(exc)
            recording.failed = True
            loop = self._loop
            assert loop is not None
            # The addon's done() says it itself if the loop is past running this.
            loop.call_soon_threadsafe(self._on_open_failed, recording)
            return
        logger.info(f"ocproxy: recording OCPP WebSocket traffic to {recording.recorder.path}")

    def _close(self, recording: Recording) -> None:
        """On the worker thread: flush and close."""
        stats = recording.recorder.close()
        if not recording.failed:
            logger.info(f"ocproxy: {summary(stats)} in {recording.recorder.path}")


def summary(stats: RecorderStats) -> str:
    frames, connections = stats.frames_recorded, stats.connections
    text = f"recorded {_plural(frames, 'frame')} on {_plural(connections, 'connection')}"
    if stats.frames_lost:
        text += f", {stats.frames_lost} frames LOST"
    return text


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
