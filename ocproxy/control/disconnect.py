"""``ocproxy disconnect``: close chargers' connections through the control endpoint.

One charger at once, or every live charger whose identity matches a pattern, spread
evenly over a duration (a staged cut-over: they reconnect, following the routes a
reload installed, at a pace the new CSMS can take). The set is taken once, at the
start: a charger that reconnects during the spread is not closed again.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.markup import escape

from ocproxy.control.cli import add_control_option
from ocproxy.control.client import ControlClient, RequestRefused
from ocproxy.errors import ConfigError, ControlError, no_live_connection
from ocproxy.proxy.config import parse_control
from ocproxy.signals import until_stopped
from ocproxy.terminal import make_console

DEFAULT_CODE = 1001
DEFAULT_REASON = "disconnected by ocproxy"
# Close codes an endpoint may send (RFC 6455 7.4, IANA registry); 1005, 1006 and 1015
# are reserved for reporting and never go on the wire.
_SENDABLE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})
_MAX_REASON_BYTES = 123  # a close frame's payload is at most 125 bytes, 2 for the code
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

EPILOG = """\
examples:
  ocproxy disconnect CP-17
      close CP-17's connection (both legs) with 1001 "going away"; a charger
      reconnects, as after a server restart
  ocproxy disconnect CP-17 --code 4000 --reason maintenance --control 127.0.0.1:9100
  ocproxy disconnect --identity 'ACME-*' --spread 10m
      every live ACME- charger, one after the other, evenly over ten minutes
  ocproxy disconnect --identity '*' --spread 30s --dry-run
      which chargers would be closed, and when, without closing any

PATTERN is an fnmatch pattern (*, ?, [abc]), case-sensitive like identities, as in
[[route]] of the config file. DURATION is 90, 90s, 1.5m, 2h or 1m30s. Exit 0 when
every connection was closed (or had already gone); 1 when the proxy is not there or
refuses, or when stopped part-way (Ctrl-C, SIGTERM); 2 for bad arguments, a
positional IDENTITY that is not live, or a PATTERN that matches no live charger.
"""


def add_disconnect_command(commands: Any) -> None:
    cmd = commands.add_parser(
        "disconnect",
        help="close a live charger's connection (or many, spread over time)",
        description="Close live connections of a running `ocproxy proxy --control ...`: "
        "both legs (charger and CSMS) get the close code, and the recording says the "
        "proxy closed them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmd.add_argument("identity", nargs="?", metavar="IDENTITY", help="the charger to disconnect")
    cmd.add_argument(
        "--identity",
        dest="pattern",
        metavar="PATTERN",
        help="every live charger whose identity matches this pattern (instead of IDENTITY)",
    )
    cmd.add_argument(
        "--spread",
        type=duration,
        metavar="DURATION",
        help="with --identity: close them one by one, evenly over this long (default: all now)",
    )
    cmd.add_argument(
        "--code",
        type=close_code,
        default=DEFAULT_CODE,
        metavar="N",
        help=f"WebSocket close code: 1000-1003, 1007-1014 or 3000-4999 (default {DEFAULT_CODE})",
    )
    cmd.add_argument(
        "--reason",
        type=close_reason,
        default=DEFAULT_REASON,
        metavar="TEXT",
        help=f'close reason, up to 123 bytes (default "{DEFAULT_REASON}")',
    )
    cmd.add_argument(
        "--dry-run",
        action="store_true",
        help="print which connections would be closed, and when; close none",
    )
    add_control_option(cmd)
    cmd.set_defaults(func=run_disconnect)


# -- argument types (pure) ----------------------------------------------------------------


def duration(text: str) -> float:
    """``90``, ``90s``, ``250ms``, ``1.5m``, ``2h``, ``1m30s`` -> seconds (> 0)."""
    parts = re.fullmatch(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h)?)+", text.strip())
    pieces = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", text.strip()) if parts else []
    if not pieces or (len(pieces) > 1 and any(unit == "" for _, unit in pieces)):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 90s, 10m, 1h30m)")
    seconds = sum(float(number) * _UNITS[unit or "s"] for number, unit in pieces)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration longer than 0")
    return seconds


def close_code(text: str) -> int:
    try:
        code = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a close code") from None
    if code not in _SENDABLE and not 3000 <= code <= 4999:
        raise argparse.ArgumentTypeError(
            f"{code} is not a close code that may be sent (1000-1003, 1007-1014, 3000-4999)"
        )
    return code


def close_reason(text: str) -> str:
    if len(text.encode("utf-8")) > _MAX_REASON_BYTES:
        raise argparse.ArgumentTypeError(f"the reason is longer than {_MAX_REASON_BYTES} bytes")
    return text


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:g}s" if rest else f"{int(minutes)}m"


@dataclass(frozen=True)
class Target:
    connection_id: str
    identity: str
    at: float  # seconds after the start


def plan(connections: Sequence[dict[str, Any]], pattern: str, spread: float | None) -> list[Target]:
    """The matching live connections, in identity order, each with its time to close:
    evenly spaced over ``spread``, the first at once (all at once without one)."""
    matching = sorted(
        (c for c in connections if fnmatch.fnmatchcase(str(c.get("identity")), pattern)),
        key=lambda c: (str(c["identity"]), str(c["connection_id"])),
    )
    step = 0.0 if spread is None or not matching else spread / len(matching)
    return [
        Target(str(c["connection_id"]), str(c["identity"]), round(n * step, 3))
        for n, c in enumerate(matching)
    ]


# -- running ------------------------------------------------------------------------------


def run_disconnect(args: argparse.Namespace, console: Console | None = None) -> int:
    console = console or make_console(highlight=False)
    if (args.identity is None) == (args.pattern is None):
        raise ConfigError("give IDENTITY or --identity PATTERN (one of them)")
    if args.spread is not None and args.pattern is None:
        raise ConfigError("--spread goes with --identity PATTERN")
    host, port = parse_control(args.control)
    return asyncio.run(_disconnect(host, port, args, console))


async def _disconnect(host: str, port: int, args: argparse.Namespace, console: Console) -> int:
    async with ControlClient(host, port, args.token) as control:
        live = await control.request("connections")
        if args.pattern is None:
            targets = [t for t in plan(live, "*", None) if t.identity == args.identity]
            if not targets:
                raise ConfigError(no_live_connection(args.identity))
        else:
            targets = plan(live, args.pattern, args.spread)
            if not targets:
                raise ConfigError(
                    f"--identity {args.pattern!r} matches none of the {len(live)} live chargers"
                )
        if args.dry_run:
            for target in targets:
                console.print(f"+{format_duration(target.at)}  {escape(target.identity)}")
            console.print(f"{len(targets)} connection(s) would be closed with {args.code}")
            return 0
        return await _close_all(control, targets, args, console)


async def _close_all(
    control: ControlClient, targets: list[Target], args: argparse.Namespace, console: Console
) -> int:
    done: list[str] = []

    async def close(target: Target) -> None:
        try:
            await control.request(
                "close", connection_id=target.connection_id, code=args.code, reason=args.reason
            )
        except RequestRefused:
            _say(console, target.identity, "had already disconnected")
        else:
            _say(console, target.identity, f"closed ({args.code} {args.reason})")
        done.append(target.identity)

    stopped = await until_stopped(_on_schedule(targets, close), None)
    if stopped is not None:
        left = len(targets) - len(done)
        raise ControlError(f"stopped after {len(done)} of {len(targets)}; {left} left connected")
    if len(targets) > 1:
        over = f" over {format_duration(args.spread)}" if args.spread else ""
        console.print(f"{len(done)} connection(s) closed{over}")
    return 0


async def _on_schedule(targets: list[Target], act: Callable[[Target], Awaitable[None]]) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    for target in targets:
        delay = start + target.at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await act(target)


def _say(console: Console, identity: str, text: str) -> None:
    stamp = datetime.now().strftime("%H:%M:%S")
    console.print(f"[dim]{stamp}[/] [bold]{escape(identity)}[/] {escape(text)}", soft_wrap=True)
