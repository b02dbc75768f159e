"""The ``ocproxy`` command line: a thin layer over the library.

Exit codes: 0 success, 1 runtime failure (recording or listening failed),
2 bad command line or config (one line on stderr, like argparse's own errors).
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import functools
import importlib
import re
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, NoReturn

from ocproxy import __version__
from ocproxy.argtypes import non_negative_float, non_negative_int, positive_float, positive_int
from ocproxy.errors import ConfigError, OcproxyError
from ocproxy.proxy.config import (
    DEFAULT_MAX_MESSAGE_SIZE,
    MirrorRoute,
    ProxyConfig,
    check_ws_url,
    load_config,
    parse_listen,
)
from ocproxy.recorder import DEFAULT_DB
from ocproxy.terminal import make_console

_PROXY_EPILOG = """\
examples:
  ocproxy proxy --listen 0.0.0.0:9000 --upstream wss://csms.example.net/ocpp --db site.duckdb
      a charger dialling ws://PROXY:9000/ocpp/CP-1 is relayed to
      wss://csms.example.net/ocpp/ocpp/CP-1 (upstream + the charger's path and query)
  ocproxy proxy --config site.toml
      routes identity patterns to different CSMSs (see docs/config.md)

Every frame both ways is recorded in the DuckDB file (tables connections, frames).
SIGINT/SIGTERM close every connection with 1001, flush the recording and exit 0.
"""

_DEMO_EPILOG = """\
example:
  ocproxy demo --db demo.duckdb
      then: ocproxy query demo.duckdb "SELECT action, count(*) FROM frames GROUP BY ALL"
"""


class _OneLineErrors(argparse.ArgumentParser):
    """A bad command line is one line on stderr and exit 2, naming the help of the command
    that was mistyped (the usage is there); a misspelt command, choice or option gets the
    nearest one suggested.

    Every command's parser is one of these: subparsers take their parent's class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_suggest_choice(message)} (see {self.prog} --help)\n")

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: None = None
    ) -> argparse.Namespace:
        # argparse leaves a subcommand's unknown arguments to the top parser, whose error
        # would point to `ocproxy --help`: the subcommand that was given them says it.
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = _innermost(self, parsed)
            command.error(
                f"unrecognized arguments: {' '.join(extras)}{_suggest_option(command, extras)}"
            )
        return parsed


def _innermost(
    parser: argparse.ArgumentParser, parsed: argparse.Namespace
) -> argparse.ArgumentParser:
    """The parser of the (sub)command the command line chose: `ocproxy sim chargers`'s."""
    while True:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = getattr(parsed, subparsers[0].dest, None) if subparsers else None
        if chosen not in (subparsers[0].choices if subparsers else {}):
            return parser
        parser = subparsers[0].choices[chosen]


def _suggest_option(parser: argparse.ArgumentParser, extras: list[str]) -> str:
    """`; did you mean --jobs?` for `--jbs`, or nothing when no option is near."""
    given = next((e.split("=", 1)[0][2:] for e in extras if e.startswith("--")), None)
    # Compared without the leading dashes, which every option shares.
    known = [o[2:] for a in parser._actions for o in a.option_strings if o.startswith("--")]
    near = difflib.get_close_matches(given, known, n=1, cutoff=0.6) if given else []
    return f"; did you mean --{near[0]}?" if near else ""


_INVALID_CHOICE = re.compile(
    r"invalid choice: '?(?P<given>[^']*?)'? \(choose from (?P<choices>.*)\)$"
)


def _suggest_choice(message: str) -> str:
    """argparse's `invalid choice: 'prxy' (choose from ...)`, with the nearest choice."""
    found = _INVALID_CHOICE.search(message)
    if found is None:
        return message
    choices = [c.strip().strip("'") for c in found["choices"].split(",")]
    near = difflib.get_close_matches(found["given"], choices, n=1, cutoff=0.5)
    if not near:
        return message
    given = found["given"]
    return message.replace(f"'{given}' (", f"'{given}'; did you mean '{near[0]}'? (", 1)


# Every command but proxy and demo, in the order --help lists them: the module that adds
# it and the function. A command's module is imported only to parse a command line that
# names it (or for the whole list): `ocproxy inject` starts without DuckDB's and the
# audit's imports, and `ocproxy proxy` relays for weeks without any of them.
_COMMANDS: dict[str, tuple[str, str]] = {
    "audit": ("ocproxy.audit.cli", "add_audit_command"),
    "replay": ("ocproxy.replay.cli", "add_replay_command"),
    "inject": ("ocproxy.control.cli", "add_inject_command"),
    "disconnect": ("ocproxy.control.disconnect", "add_disconnect_command"),
    "reload": ("ocproxy.control.reload", "add_reload_command"),
    "tail": ("ocproxy.tail.cli", "add_tail_command"),
    "inspect": ("ocproxy.inspect.cli", "add_inspect_command"),
    "query": ("ocproxy.analytics.cli", "add_query_command"),
    "report": ("ocproxy.analytics.report_cli", "add_report_command"),
    "export": ("ocproxy.analytics.export_cli", "add_export_command"),
    "import": ("ocproxy.importer.cli", "add_import_command"),
    "demo": ("ocproxy.cli", "_add_demo"),
    "sim": ("ocproxy.sim.cli", "add_sim_command"),
    "addon-path": ("ocproxy.mitm.cli", "add_addon_path_command"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``only``, that command alone (and ``proxy``).

    The commands' modules are imported here, not at the top: ``ocproxy proxy`` relays
    for weeks in the process that parsed its command line, and should hold neither
    DuckDB, Arrow, the audit nor Textual for it (measured: 108 -> ~45 MB); and a
    command starts in the time its own imports take, not every command's."""
    parser: argparse.ArgumentParser = _OneLineErrors(
        prog="ocproxy",
        description="A transparent OCPP-J proxy between chargers and their CSMS that "
        "records every frame into DuckDB.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ocproxy {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_proxy(commands)
    for name, (module, function) in _COMMANDS.items():
        if only is None or only == name:
            getattr(importlib.import_module(module), function)(commands)
    return parser


def _add_proxy(commands: Any) -> None:
    cmd = commands.add_parser(
        "proxy",
        help="relay chargers to their CSMS and record every frame",
        description="Relay OCPP-J WebSocket connections from chargers to their CSMS, "
        "byte for byte, recording every frame into DuckDB.",
        epilog=_PROXY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmd.add_argument(
        "--listen", metavar="HOST:PORT", help="address chargers connect to (default 0.0.0.0:9000)"
    )
    cmd.add_argument("--upstream", metavar="URL", help="CSMS base URL, ws:// or wss://")
    cmd.add_argument("--config", metavar="FILE", help="TOML file: options and identity routes")
    cmd.add_argument("--db", metavar="FILE", help=f"DuckDB recording (default ./{DEFAULT_DB})")
    cmd.add_argument(
        "--connect-timeout",
        type=positive_float,
        metavar="SECONDS",
        help="give up on the CSMS after this long; the charger gets HTTP 502 (default 10)",
    )
    cmd.add_argument(
        "--ping-interval",
        type=non_negative_float,
        metavar="SECONDS",
        help="WebSocket ping on each leg so no leg idles into a 60 s cut; 0 disables (default 20)",
    )
    cmd.add_argument(
        "--ping-timeout",
        type=positive_float,
        metavar="SECONDS",
        help="close a leg whose pong is this late (default 20)",
    )
    cmd.add_argument(
        "--max-message-size",
        type=positive_int,
        metavar="BYTES",
        help="larger messages close both legs with 1009 and are recorded by length "
        f"(default {DEFAULT_MAX_MESSAGE_SIZE})",
    )
    cmd.add_argument(
        "--queue-limit",
        type=positive_int,
        metavar="FRAMES",
        help="recorder queue bound; when full, forwarding waits (counted) (default 10000)",
    )
    cmd.add_argument(
        "--flush-interval",
        type=positive_float,
        metavar="SECONDS",
        help="commit what the recorder holds at least this often: at most this much "
        "recording (plus what is in transit to the recorder) is lost to a kill -9 "
        "(default 0.25)",
    )
    cmd.add_argument(
        "--backlog",
        type=positive_int,
        metavar="N",
        help="connections the kernel queues before they are accepted, so that a fleet "
        "reconnecting at once is not refused (default 4096; capped by net.core.somaxconn)",
    )
    cmd.add_argument(
        "--max-pending-dials",
        type=non_negative_int,
        metavar="N",
        help="open at most N CSMS connections at once; other chargers wait in turn, "
        "none is refused (default 0: no bound)",
    )
    cmd.add_argument(
        "--rotate",
        metavar="WHEN",
        help="a new recording file hourly, daily or every SIZE (e.g. 500MB): --db site.duckdb "
        "records into site-<UTC start>.duckdb files; readers take the glob 'site-*.duckdb'",
    )
    cmd.add_argument(
        "--recorder-memory",
        metavar="SIZE",
        help="memory the recorder's DuckDB may use (e.g. 256MB, 1GB); beyond it, it spills "
        "to a SITE.duckdb.tmp directory beside the recording (default 256MB)",
    )
    cmd.add_argument(
        "--reuse-port",
        action="store_true",
        help="listen with SO_REUSEPORT, so that a new proxy can start on the same --listen "
        "while the old one drains (give them different --db files, or --rotate)",
    )
    cmd.add_argument(
        "--drain",
        type=non_negative_float,
        metavar="SECONDS",
        help="on SIGTERM, stop accepting and close live connections one by one, evenly "
        "over SECONDS (1001 'proxy restarting'), so a restart is no reconnect storm "
        "(default 0: all at once)",
    )
    cmd.add_argument(
        "--audit",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="check every frame against the OCPP schemas and RPC rules while recording "
        "(table findings); on by default",
    )
    cmd.add_argument(
        "--response-timeout",
        type=positive_float,
        metavar="SECONDS",
        help="the audit reports answers later than this as late-response (default 30)",
    )
    tls = cmd.add_argument_group("TLS (security profiles 2 and 3)")
    tls.add_argument(
        "--tls-cert",
        action="append",
        default=[],
        metavar="PEM",
        help="serve wss:// with this certificate chain; repeat for RSA + ECDSA or other names "
        "(chosen by SNI)",
    )
    tls.add_argument(
        "--tls-key",
        action="append",
        default=[],
        metavar="PEM",
        help="the key of each --tls-cert, in the same order",
    )
    tls.add_argument(
        "--client-ca",
        metavar="PEM",
        help="require charger certificates signed by this CA (profile 3); their subject, "
        "serial and fingerprint are recorded",
    )
    tls.add_argument(
        "--strict-client-cert",
        action="store_true",
        help="refuse (HTTP 403) a charger whose certificate names another identity "
        "(default: record a finding)",
    )
    tls.add_argument(
        "--upstream-ca",
        metavar="PEM",
        help="verify wss:// CSMSs against this CA bundle instead of the system store",
    )
    tls.add_argument(
        "--insecure-upstream",
        action="store_true",
        help="do not verify the CSMS's certificate (lab only; recorded on every connection)",
    )
    tls.add_argument(
        "--upstream-client-cert",
        metavar="PEM",
        help="the proxy's own client certificate towards the CSMS (per route in --config)",
    )
    tls.add_argument("--upstream-client-key", metavar="PEM", help="its key")
    tls.add_argument(
        "--forward-client-cert",
        action="store_true",
        help="pass the verified charger certificate upstream in X-Forwarded-Client-Cert "
        "(a copy sent by the charger is always removed)",
    )
    cmd.add_argument(
        "--control",
        metavar="HOST:PORT",
        help="serve the control endpoint for ocproxy tail / inject / query --live here "
        "(PORT alone: loopback); a token is written to ~/.config/ocproxy/control-PORT.token",
    )
    cmd.add_argument(
        "--mirror",
        metavar="URL",
        help="also send every charger's messages to this secondary CSMS; its answers are "
        "recorded, never forwarded (per identity pattern: [[mirror]] in --config)",
    )
    cmd.add_argument(
        "--keep-ids",
        action="store_true",
        help="record idTag/idToken as sent instead of pseudonymised (for a lab)",
    )
    cmd.add_argument(
        "--quiet",
        action="store_true",
        help="no line per frame, summary only (in front of a fleet: recording costs less)",
    )
    cmd.set_defaults(func=_run_proxy)


def _add_demo(commands: Any) -> None:
    cmd = commands.add_parser(
        "demo",
        help="run simulated chargers and a CSMS through the proxy, then show the recording",
        description="On loopback: a simulated CSMS and a handful of simulated chargers "
        "(OCPP 1.6 and 2.0.1, built on the ocpp package) run boot, heartbeats, status "
        "notifications, authorize and a metered transaction through the proxy for a few "
        "seconds; then what was recorded is printed.",
        epilog=_DEMO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmd.add_argument(
        "--db", metavar="FILE", default="demo.duckdb", help="DuckDB recording (default demo.duckdb)"
    )
    cmd.add_argument("--chargers", type=positive_int, default=4, help="how many (default 4)")
    cmd.add_argument(
        "--pace",
        type=non_negative_float,
        default=0.3,
        metavar="SECONDS",
        help="pause between a charger's steps (default 0.3)",
    )
    cmd.add_argument("--quiet", action="store_true", help="no line per frame")
    cmd.set_defaults(func=_run_demo)


# Command-line options that override the config file's value of the same name when given.
_VALUE_OPTIONS = (
    "db",
    "connect_timeout",
    "ping_timeout",
    "max_message_size",
    "queue_limit",
    "flush_interval",
    "backlog",
    "max_pending_dials",
    "drain",
    "rotate",
    "recorder_memory",
    "audit",
    "response_timeout",
    "client_ca",
    "upstream_ca",
    "upstream_client_cert",
    "upstream_client_key",
    "control",
)
_FLAG_OPTIONS = (
    "quiet",
    "reuse_port",
    "keep_ids",
    "strict_client_cert",
    "insecure_upstream",
    "forward_client_cert",
)


def proxy_config(args: argparse.Namespace) -> ProxyConfig:
    """Options from --config, overridden by the command line."""
    config = load_config(args.config) if args.config else ProxyConfig(listen_host="0.0.0.0")
    overrides: dict[str, Any] = {}
    if args.config is None or args.listen is not None:
        host, port = parse_listen(args.listen or "0.0.0.0:9000")
        overrides.update(listen_host=host, listen_port=port)
    if args.upstream is not None:
        overrides["upstream"] = check_ws_url(args.upstream)
    overrides.update(
        {name: getattr(args, name) for name in _VALUE_OPTIONS if getattr(args, name) is not None}
    )
    overrides.update({name: True for name in _FLAG_OPTIONS if getattr(args, name)})
    if args.ping_interval is not None:
        overrides["ping_interval"] = args.ping_interval or None
    if args.tls_cert or args.tls_key:
        overrides.update(tls_cert=tuple(args.tls_cert), tls_key=tuple(args.tls_key))
    if args.mirror is not None:
        overrides["mirrors"] = (MirrorRoute("*", check_ws_url(args.mirror, "--mirror")),)
    return replace(config, **overrides).validate()


def _run_proxy(args: argparse.Namespace) -> int:
    from ocproxy.app import loop_factory, serve_until_signal

    config = proxy_config(args)
    stats = asyncio.run(
        # SIGHUP re-reads --config, with the command line's options still on top.
        serve_until_signal(config, make_console(), functools.partial(proxy_config, args)),
        loop_factory=loop_factory(),
    )
    return 1 if stats.frames_lost or stats.errors else 0


def _run_demo(args: argparse.Namespace) -> int:
    from ocproxy.demo import run_demo

    return asyncio.run(
        run_demo(args.db, make_console(), chargers=args.chargers, pace=args.pace, quiet=args.quiet)
    )


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    named = words[0] if words and (words[0] == "proxy" or words[0] in _COMMANDS) else None
    parser = build_parser(named)
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        parser.exit(exc.exit_code, f"ocproxy: error: {exc}\n")
    except OcproxyError as exc:
        print(f"ocproxy: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
