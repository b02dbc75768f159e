"""``ocproxy inject``: send a CALL into a live connection through the control endpoint."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from ocproxy.control.client import ControlClient, RequestRefused
from ocproxy.errors import ConfigError
from ocproxy.proxy.config import parse_control
from ocproxy.terminal import make_console

DEFAULT_CONTROL = "127.0.0.1:9100"
# How the control endpoint (control/server.py) ends a refusal on schema grounds.
_USE_FORCE = "(use force to send anyway)"

EPILOG = """\
examples:
  ocproxy proxy --upstream wss://csms.example.net/ocpp --control 9100 &
  ocproxy inject CP-17 TriggerMessage '{"requestedMessage": "StatusNotification"}'
  ocproxy inject CP-17 Reset '{"type": "Soft"}' --control 127.0.0.1:9100
  ocproxy inject CP-17 DataTransfer '{"vendorId": "acme"}' --to csms

The CALL gets a fresh unique id; the answer is printed, recorded as the reply to an
injected CALL (frames.injected) and never forwarded. Exit code 1 on a CALLERROR or when
no answer comes within --timeout; 2 for bad arguments.
"""


def add_control_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--control",
        metavar="HOST:PORT",
        default=DEFAULT_CONTROL,
        help=f"the running proxy's control endpoint (default {DEFAULT_CONTROL})",
    )
    parser.add_argument(
        "--token",
        help="control token (default: $OCPROXY_CONTROL_TOKEN, else the token file "
        "the proxy wrote for that port)",
    )


def add_inject_command(commands: Any) -> None:
    cmd = commands.add_parser(
        "inject",
        help="send a CALL to a live charger (or its CSMS) through a running proxy",
        description="Send a CALL of ocproxy's own into a live connection of a running "
        "`ocproxy proxy --control ...`, wait for the answer and print it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmd.add_argument("identity", metavar="IDENTITY", help="the charger's identity")
    cmd.add_argument("action", metavar="ACTION", help="the OCPP action, e.g. TriggerMessage")
    cmd.add_argument("payload", metavar="JSON", help="the CALL's payload, a JSON object")
    cmd.add_argument(
        "--to",
        choices=("charger", "csms"),
        default="charger",
        help="send it to the charger (default) or to its CSMS",
    )
    cmd.add_argument(
        "--force",
        action="store_true",
        help="send even if the payload violates the action's schema",
    )
    cmd.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the answer (default 30)",
    )
    add_control_option(cmd)
    cmd.set_defaults(func=run_inject)


def run_inject(args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.payload)
    except ValueError as exc:
        raise ConfigError(f"JSON payload is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise ConfigError("JSON payload must be a JSON object")
    host, port = parse_control(args.control)
    try:
        result = asyncio.run(_inject(host, port, args, payload))
    except RequestRefused as exc:
        # The control protocol's field is `force`; the person at the shell types --force.
        reason = exc.reason.replace(_USE_FORCE, "(use --force to send anyway)")
        if reason == exc.reason:
            raise
        raise RequestRefused(exc.op, reason) from exc
    answer = result["answer"]
    console = make_console()
    console.print_json(json.dumps(answer))
    return 1 if isinstance(answer, list) and answer and answer[0] == 4 else 0


async def _inject(
    host: str, port: int, args: argparse.Namespace, payload: dict[str, Any]
) -> dict[str, Any]:
    async with ControlClient(host, port, args.token) as control:
        result: dict[str, Any] = await control.request(
            "inject",
            identity=args.identity,
            action=args.action,
            payload=payload,
            to=args.to,
            force=args.force,
            timeout=args.timeout,
        )
        return result
