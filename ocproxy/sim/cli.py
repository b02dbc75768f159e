"""``ocproxy sim csms`` and ``ocproxy sim chargers``: the demo's simulated peers as commands,
so the real proxy can be tried in two terminals (or three: CSMS, proxy, chargers)."""

from __future__ import annotations

import argparse
import asyncio
import os
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.markup import escape

from ocproxy.argtypes import non_negative_float, positive_float, positive_int
from ocproxy.errors import ConfigError, OcproxyError, ProxyError
from ocproxy.proxy.config import parse_listen
from ocproxy.signals import until_stopped
from ocproxy.sim.csms import SimCsms
from ocproxy.sim.fleet import FleetOptions, FleetResult, run_fleet
from ocproxy.sim.stations import SUBPROTOCOL_BY_VERSION
from ocproxy.terminal import make_console

DEFAULT_CSMS_LISTEN = "127.0.0.1:9200"

_SIM_EPILOG = """\
Try the real proxy in three terminals:
  ocproxy sim csms --listen 127.0.0.1:9200
  ocproxy proxy --listen 127.0.0.1:9000 --upstream ws://127.0.0.1:9200 --control 9100
  ocproxy sim chargers --to ws://127.0.0.1:9000/ocpp -n 3 --stay
"""

_CSMS_EPILOG = """\
examples:
  ocproxy sim csms
      a CSMS on ws://127.0.0.1:9200 that accepts any charger on any path
  ocproxy sim csms --listen 0.0.0.0:9200 --initiate --heartbeat-interval 30
      reachable from other machines; asks each booted charger for its heartbeat
      interval (GetConfiguration / GetVariables) and asks for a heartbeat every 30 s

It answers every CALL of OCPP 1.6, 2.0.1 and 2.1 (schema-validated, by the ocpp
package) with Accepted, prints one line per charger event, and runs until Ctrl-C or
SIGTERM (exit 0) or --duration. Exit 1 when it cannot listen; 2 for bad arguments.
"""

_CHARGERS_EPILOG = """\
examples:
  ocproxy sim chargers --to ws://127.0.0.1:9000/ocpp -n 3
      SIM-01..SIM-03 each boot, charge once (Authorize, a metered transaction) and
      hang up; exit 0 when all three are done
  ocproxy sim chargers --to ws://127.0.0.1:9000/ocpp -n 5 --version 2.0.1 --stay
      stay connected with heartbeats, as real stations do, and reconnect (booting
      again) when the connection is closed, e.g. by `ocproxy disconnect`; Ctrl-C stops
  ocproxy sim chargers --to ws://127.0.0.1:9000/ocpp --pace 0 --transactions 20
      as fast as the server answers

Each charger dials URL/IDENTITY offering one OCPP version. Exit 0 when every charger
finished (or when stopped by Ctrl-C, SIGTERM or --duration); 1 when one could not
connect, was refused or got a CALLERROR (without --stay), one line each; 2 for bad
arguments.
"""


def add_sim_command(commands: Any) -> None:
    sim = commands.add_parser(
        "sim",
        help="run a simulated CSMS or simulated chargers (to try the proxy by hand)",
        description="The simulated peers of `ocproxy demo`, as commands: a CSMS that "
        "accepts every charger, and chargers that boot and charge. Built on the ocpp "
        "package, so what they send is schema-valid OCPP.",
        epilog=_SIM_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    peers = sim.add_subparsers(dest="peer", metavar="PEER", required=True)
    _add_csms(peers)
    _add_chargers(peers)


def _add_csms(peers: Any) -> None:
    cmd = peers.add_parser(
        "csms",
        help="a CSMS that accepts every charger and answers Accepted",
        description="Run a simulated CSMS: it accepts a charger on any path (the identity "
        "is the last path segment), answers every CALL with Accepted and prints what "
        "happens, until stopped.",
        epilog=_CSMS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmd.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default=DEFAULT_CSMS_LISTEN,
        help=f"address to listen on (default {DEFAULT_CSMS_LISTEN})",
    )
    cmd.add_argument(
        "--version",
        dest="versions",
        action="append",
        choices=list(SUBPROTOCOL_BY_VERSION),
        help="accept only this OCPP version (repeat for several; default all three)",
    )
    cmd.add_argument(
        "--heartbeat-interval",
        type=positive_int,
        default=300,
        metavar="SECONDS",
        help="the interval given in BootNotification answers (default 300)",
    )
    cmd.add_argument(
        "--initiate",
        action="store_true",
        help="after each accepted boot, send the charger a CALL of its own "
        "(GetConfiguration or GetVariables)",
    )
    _add_common(cmd)
    cmd.set_defaults(func=run_sim_csms)


def _add_chargers(peers: Any) -> None:
    cmd = peers.add_parser(
        "chargers",
        help="chargers that boot, charge and hang up (or stay connected)",
        description="Run N simulated chargers against a CSMS or a proxy: each boots "
        "(BootNotification, Heartbeat, StatusNotification), charges (Authorize, a "
        "metered transaction) and hangs up, or stays connected with --stay.",
        epilog=_CHARGERS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmd.add_argument(
        "--to", required=True, metavar="URL", help="ws:// URL to dial; the identity is appended"
    )
    cmd.add_argument(
        "-n", "--count", type=positive_int, default=1, metavar="N", help="chargers (default 1)"
    )
    cmd.add_argument(
        "--version",
        choices=list(SUBPROTOCOL_BY_VERSION),
        default="1.6",
        help="the OCPP version they speak (default 1.6)",
    )
    cmd.add_argument(
        "--pace",
        type=non_negative_float,
        default=1.0,
        metavar="SECONDS",
        help="pause between a charger's steps (default 1; 0: as fast as answered)",
    )
    cmd.add_argument(
        "--transactions",
        type=non_negative_int,
        default=1,
        metavar="N",
        help="charging sessions per charger after its first boot (default 1)",
    )
    cmd.add_argument(
        "--prefix",
        default="SIM-",
        metavar="TEXT",
        help="identities are PREFIX01, PREFIX02, ... (default SIM-)",
    )
    cmd.add_argument(
        "--stay",
        action="store_true",
        help="stay connected sending heartbeats, and reconnect when the connection is "
        "closed, until stopped",
    )
    cmd.add_argument(
        "--heartbeat",
        type=positive_float,
        metavar="SECONDS",
        help="with --stay: seconds between heartbeats (default: the interval the CSMS gave)",
    )
    cmd.add_argument(
        "--reconnect",
        type=non_negative_float,
        default=5.0,
        metavar="SECONDS",
        help="with --stay: wait before reconnecting (default 5)",
    )
    _add_common(cmd)
    cmd.set_defaults(func=run_sim_chargers)


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 0") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 0")
    return value


def _add_common(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "--duration",
        type=positive_float,
        metavar="SECONDS",
        help="stop after this long (exit 0) instead of at Ctrl-C",
    )
    cmd.add_argument("--quiet", action="store_true", help="no line per event, summary only")


# -- running -----------------------------------------------------------------------------


def run_sim_csms(args: argparse.Namespace, console: Console | None = None) -> int:
    console = console or make_console(highlight=False)
    host, port = parse_listen(args.listen)
    versions = args.versions or list(SUBPROTOCOL_BY_VERSION)
    return asyncio.run(_csms(console, args, host, port, versions))


async def _csms(
    console: Console, args: argparse.Namespace, host: str, port: int, versions: list[str]
) -> int:
    csms = SimCsms(
        subprotocols=[SUBPROTOCOL_BY_VERSION[v] for v in versions],
        heartbeat_interval=args.heartbeat_interval,
        initiate=args.initiate,
        on_event=None if args.quiet else _printer(console),
    )
    try:
        await csms.start(host, port)
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ProxyError(f"cannot listen on {args.listen}: {why}") from exc
    try:
        console.print(
            f"[bold]simulated CSMS[/] on {csms.url} (OCPP {', '.join(versions)}); "
            + ("Ctrl-C to stop" if args.duration is None else f"stopping in {args.duration:g} s"),
            soft_wrap=True,
        )
        await until_stopped(None, args.duration)
    finally:
        await csms.stop()
    console.print(f"stopped; {len(csms.transcripts)} charger(s) were seen")
    return 0


def run_sim_chargers(args: argparse.Namespace, console: Console | None = None) -> int:
    console = console or make_console(highlight=False)
    parts = urlsplit(args.to)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConfigError(f"--to {args.to!r} is not a ws:// or wss:// URL")
    if (args.heartbeat is not None or args.reconnect != 5.0) and not args.stay:
        raise ConfigError("--heartbeat and --reconnect only apply with --stay")
    options = FleetOptions(
        url=args.to,
        count=args.count,
        version=args.version,
        prefix=args.prefix,
        pace=args.pace,
        transactions=args.transactions,
        stay=args.stay,
        heartbeat=args.heartbeat,
        reconnect=args.reconnect,
    )
    tell = _printer(console, quiet=args.quiet)
    result = FleetResult()  # filled as the chargers go, so a stopped fleet still reports
    stopped = asyncio.run(until_stopped(run_fleet(options, tell, result), args.duration))
    console.print(
        f"{options.count} charger(s): {result.transactions} transaction(s), "
        f"{result.energy_wh} Wh; {len(result.failures)} failed"
        + ("" if stopped is None else f" (stopped: {stopped})")
    )
    if result.failures:
        raise OcproxyError(f"{len(result.failures)} of {options.count} charger(s) failed")
    return 0


def _printer(console: Console, *, quiet: bool = False) -> Any:
    def tell(identity: str, text: str, failed: bool = False) -> None:
        if quiet and not failed:
            return
        stamp = datetime.now().strftime("%H:%M:%S")
        style = "red" if failed else "default"
        console.print(
            f"[dim]{stamp}[/] [bold]{escape(identity)}[/] [{style}]{escape(text)}[/]",
            soft_wrap=True,
        )

    return tell
