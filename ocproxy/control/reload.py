"""Reloading a running proxy's configuration: what SIGHUP and the control endpoint's
``reload`` op both run, and ``ocproxy reload``, which asks for it through the endpoint.

Either way the config is read again (``--config`` with the command line's options on
top), the proxy uses it for the connections from now on, and the attempt is recorded in
``config_reloads`` (see ProxyServer.reload), applied or refused.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ocproxy.control.cli import add_control_option
from ocproxy.control.client import ControlClient
from ocproxy.errors import ControlError, OcproxyError
from ocproxy.proxy.config import ProxyConfig, parse_control
from ocproxy.terminal import make_console

if TYPE_CHECKING:
    from ocproxy.proxy.server import ProxyServer

EPILOG = """\
examples:
  ocproxy proxy --config site.toml --control 9100 &
  (edit site.toml: a new [[route]])
  ocproxy reload
      config reloaded: routes
  ocproxy reload --control 127.0.0.1:9100 --token "$TOKEN"

The same as `kill -HUP` of the proxy, from wherever the control endpoint is reachable,
with the answer on the command line. New connections use the new config, live ones keep
their CSMS. Exit 0 when the config was reloaded (also when nothing changed); 1 when the
proxy refused it (the reason in one line, the running config untouched) or cannot be
reached; 2 for bad arguments.
"""


@dataclass(frozen=True)
class Reloaded:
    """What a reload did: applied (with the settings that changed) or refused (why)."""

    applied: bool
    changes: tuple[str, ...] = ()
    error: str | None = None

    def line(self) -> str:
        if not self.applied:
            return f"config not reloaded: {self.error}"
        return f"config reloaded: {', '.join(self.changes) or 'nothing changed'}"

    def as_json(self) -> dict[str, Any]:
        return {"applied": self.applied, "changes": list(self.changes), "error": self.error}


def reload_config(proxy: ProxyServer, reread: Callable[[], ProxyConfig]) -> Reloaded:
    """Read the config again and hand it to the proxy; a config that cannot be read or
    used changes nothing. Recorded in ``config_reloads`` either way."""
    try:
        config = reread()
    except OcproxyError as exc:
        proxy.reload_refused(str(exc))
        return Reloaded(False, error=str(exc))
    try:
        changes = proxy.reload(config)
    except OcproxyError as exc:  # recorded by reload itself
        return Reloaded(False, error=str(exc))
    return Reloaded(True, changes)


# -- ocproxy reload --------------------------------------------------------------------


def add_reload_command(commands: Any) -> None:
    cmd = commands.add_parser(
        "reload",
        help="make a running proxy re-read its config (like SIGHUP), and say what changed",
        description="Ask a running `ocproxy proxy --control ...` to re-read its config "
        "file, as SIGHUP does, and print what changed or why it was refused.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_control_option(cmd)
    cmd.set_defaults(func=run_reload)


def run_reload(args: argparse.Namespace) -> int:
    host, port = parse_control(args.control)
    outcome = asyncio.run(_reload(host, port, args.token))
    if not outcome.applied:
        raise ControlError(outcome.line())
    make_console(highlight=False).print(outcome.line(), soft_wrap=True)
    return 0


async def _reload(host: str, port: int, token: str | None) -> Reloaded:
    async with ControlClient(host, port, token) as control:
        result = await control.request("reload")
    if not isinstance(result, dict) or not isinstance(result.get("applied"), bool):
        raise ControlError(f"the control endpoint answered reload with {result!r}")
    return Reloaded(
        result["applied"], tuple(str(c) for c in result.get("changes") or ()), result.get("error")
    )
