"""``ocproxy inspect [RECORDING...] [--control HOST:PORT]``: the interactive inspector."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from ocproxy.control.cli import add_control_option
from ocproxy.errors import OcproxyError
from ocproxy.proxy.config import parse_control

EPILOG = """\
examples:
  ocproxy inspect site.duckdb
      a finished recording (read-only): chargers, frames, payloads, findings
  ocproxy inspect 'recordings/*.duckdb' --identity CP-17
      several recordings as one, starting on charger CP-17
  ocproxy inspect --control 127.0.0.1:9100
      a running `ocproxy proxy --control 9100`, live: frames as they come, and keys to
      inject a CALL (i) or disconnect a charger (d)

Inside: ? lists every key; / takes a filter expression such as
  action:Boot*,Authorize dir:csms type:CALLERROR rule:schema-* severity:warning
  since:2026-01-31T12:00 "text in payloads" -action:Heartbeat is:injected
Exit codes: 0 quit; 1 the control endpoint is not there, refuses, or something failed
(one line); 2 bad arguments, a recording that cannot be opened, or one a running proxy
is still writing (inspect that one live, with --control).
"""


def add_inspect_command(commands: Any) -> None:
    cmd = commands.add_parser(
        "inspect",
        help="explore a recording, or a running proxy, interactively (keys: ?)",
        description="An interactive terminal inspector: chargers, each CALL beside its "
        "answer, payloads, findings with their explanation, filters typed at any time, "
        "search, and (live) inject and disconnect.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmd.add_argument(
        "recordings",
        nargs="*",
        metavar="RECORDING",
        help="recordings (files or globs), opened read-only; none: the running proxy",
    )
    cmd.add_argument("--identity", metavar="ID", help="start on this charger")
    add_control_option(cmd)
    cmd.set_defaults(func=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    from ocproxy.inspect.app import InspectApp
    from ocproxy.inspect.live import LiveSource
    from ocproxy.inspect.recording import RecordingSource

    if args.recordings:
        source: Any = RecordingSource(args.recordings)  # ConfigError (exit 2) if not
        try:
            return _run(InspectApp(source, identity=args.identity))
        finally:
            source.close()
    host, port = parse_control(args.control)

    async def live() -> int:
        source = await LiveSource(host, port, args.token).start()  # ControlError (exit 1)
        try:
            app = InspectApp(source, identity=args.identity)
            await app.run_async()
            return _outcome(app)
        finally:
            await source.close()

    return asyncio.run(live())


def _run(app: Any) -> int:
    app.run()
    return _outcome(app)


def _outcome(app: Any) -> int:
    if app.failure is not None:
        raise OcproxyError(f"inspect stopped: {app.failure}")
    return 0
