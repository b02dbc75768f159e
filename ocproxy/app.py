"""Running a proxy until told to stop: recorder + server + console, wired together.

Shared by ``ocproxy proxy`` and ``ocproxy demo``; the CLI only parses options.
"""

from __future__ import annotations

import asyncio
import functools
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from ocproxy.console import ConsoleSink, Summary, backpressure_note, console_sinks, summary_table
from ocproxy.control.reload import Reloaded, reload_config
from ocproxy.control.token import new_token, publish_token, withdraw_token
from ocproxy.core.redaction import Redactor
from ocproxy.idkey import resolve_id_key
from ocproxy.proxy.config import ProxyConfig, parse_control
from ocproxy.proxy.server import ProxyServer, collect_rarely
from ocproxy.recorder import RecorderStats
from ocproxy.recorder.process import ChildOptions, RecordingProcess

if TYPE_CHECKING:  # in-process only with --control: the relay loads them only then
    from ocproxy.control.server import ControlServer, LiveFeed
    from ocproxy.recorder.writer import Recorder


@dataclass
class RunOutcome:
    """What a finished run leaves: the per-connection summary and the recorder's stats."""

    summary: Summary = field(default_factory=Summary)
    stats: RecorderStats | None = None


@asynccontextmanager
async def running_proxy(
    config: ProxyConfig,
    console: Console,
    *,
    source: str = "proxy",
    reread: Callable[[], ProxyConfig] | None = None,
) -> AsyncIterator[tuple[ProxyServer, RunOutcome]]:
    """Start recorder and server; on exit close every connection (1001) and flush.

    Without a control endpoint the recorder runs in a child process (off the relay's
    GIL); the control endpoint's live stream and SQL need it in-process, on a thread.
    ``reread`` gives the config again for the control endpoint's ``reload``.
    """
    outcome = RunOutcome()
    settings = asdict(config)
    redactor = Redactor(None if config.keep_ids else resolve_id_key(config.id_key))
    recorder: Recorder | RecordingProcess
    feed: LiveFeed | None = None
    if not config.control:
        recorder = RecordingProcess(
            config.db,
            ChildOptions(
                source=source,
                settings=settings,
                audit_response_timeout=config.response_timeout if config.audit else None,
                redactor=redactor,
                queue_limit=config.queue_limit,
                rotate=config.rotate,
                flush_interval=config.flush_interval,
                sinks=functools.partial(console_sinks, config.quiet),
            ),
        )
    else:
        from ocproxy.audit.auditor import Auditor, AuditSettings
        from ocproxy.control.server import LiveFeed
        from ocproxy.recorder.rotation import Rotation
        from ocproxy.recorder.writer import Recorder

        feed = LiveFeed(asyncio.get_running_loop())
        audit = AuditSettings(response_timeout_s=config.response_timeout)
        sink = ConsoleSink(console, quiet=config.quiet)
        outcome.summary = sink.summary
        recorder = Recorder(
            config.db,
            source=source,
            settings=settings,
            queue_limit=config.queue_limit,
            flush_interval=config.flush_interval,
            sinks=[sink, feed],
            auditor=Auditor(audit) if config.audit else None,
            redactor=redactor,
            rotation=None if config.rotate is None else Rotation.parse(config.rotate),
        )
    # Opening DuckDB can take a moment on a large file: keep the loop free meanwhile.
    await asyncio.to_thread(recorder.start)
    try:
        proxy = await ProxyServer(config, recorder).start()
        collect_rarely()
        control = None
        try:
            if feed is not None and config.control is not None:
                reload = (
                    None if reread is None else functools.partial(_reload, proxy, reread, console)
                )
                control = await _start_control(proxy, feed, config, console, reload)
            yield proxy, outcome
        finally:
            if control is not None:
                await control.stop()
                withdraw_token(control.port)
            if config.drain > 0:
                await proxy.stop(1001, "proxy restarting", drain=config.drain)
            else:
                await proxy.stop(1001, "proxy shutting down")
    finally:
        outcome.stats = await asyncio.to_thread(recorder.close)
        if isinstance(recorder, RecordingProcess) and recorder.result is not None:
            outcome.summary = recorder.result


async def _start_control(
    proxy: ProxyServer,
    feed: LiveFeed,
    config: ProxyConfig,
    console: Console,
    reload: Callable[[], Reloaded] | None,
) -> ControlServer:
    from ocproxy.control.server import ControlServer

    assert config.control is not None
    host, port = parse_control(config.control)
    token = new_token(config.control_token)
    control = await ControlServer(proxy, feed, token, host, port, reload).start()
    path = publish_token(control.port, token)
    console.print(f"control endpoint on {host}:{control.port} (token in {path})", highlight=False)
    return control


async def serve_until_signal(
    config: ProxyConfig, console: Console, reread: Callable[[], ProxyConfig] | None = None
) -> RecorderStats:
    """``ocproxy proxy``: relay until SIGINT or SIGTERM, then shut down cleanly.

    SIGHUP calls ``reread`` for the configuration and reloads it (see ProxyServer.reload)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_proxy(config, console, reread=reread) as (proxy, outcome):
        if reread is not None:
            loop.add_signal_handler(signal.SIGHUP, _reload, proxy, reread, console)
        console.print(
            f"[bold]ocproxy[/] listening on {listen_url(config, proxy.port)}, "
            f"recording to [bold]{_recording(config)}[/]; Ctrl-C to stop",
            highlight=False,
            soft_wrap=True,  # one line, even into a pipe or a log file
        )
        for line in proxy.notes:
            console.print(f"[yellow]{line}[/]", highlight=False, soft_wrap=True)
        for line in proxy.recorder_recovered:
            console.print(
                f"[yellow]{line}; they are now closed as proxy-crash[/]",
                highlight=False,
                soft_wrap=True,
            )
        await stop.wait()
        spread = f", spread over {config.drain:g} s" if config.drain > 0 else ""
        console.print(
            f"stopping: closing connections with 1001{spread} and flushing the recording",
            highlight=False,
        )
    stats = outcome.stats
    assert stats is not None
    console.print(summary_table(outcome.summary, stats))
    note = backpressure_note(stats, audit=config.audit)
    if note is not None:
        console.print(f"[yellow]{note}[/]", highlight=False)
    for error in stats.errors:
        console.print(f"[bold red]{error}[/]")
    return stats


def _reload(proxy: ProxyServer, reread: Callable[[], ProxyConfig], console: Console) -> Reloaded:
    """SIGHUP or the control endpoint's reload: one line saying what changed, or why the
    running config stays."""
    outcome = reload_config(proxy, reread)
    style = "" if outcome.applied else "bold red"
    console.print(outcome.line(), style=style, highlight=False, soft_wrap=True, markup=False)
    return outcome


def _recording(config: ProxyConfig) -> str:
    if config.rotate is None:
        return config.db
    path = Path(config.db)
    return f"{path.with_name(f'{path.stem}-*{path.suffix or ".duckdb"}')} ({config.rotate})"


def listen_url(config: ProxyConfig, port: int) -> str:
    """What chargers dial: wss:// when the proxy terminates TLS, IPv6 hosts bracketed."""
    scheme = "wss" if config.tls_cert else "ws"
    host = config.listen_host
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (Linux, macOS): its C transports halve the relay's
    per-message cost; None (the standard loop) otherwise. The test suite runs on both."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
