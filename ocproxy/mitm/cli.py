"""``ocproxy addon-path``: where the mitmproxy addon script is, in the installed package."""

from __future__ import annotations

import argparse
from typing import Any

from ocproxy.mitm import addon_path

EPILOG = """\
example:
  mitmdump -s "$(ocproxy addon-path)" --set ocproxy_db=site.duckdb \\
      --mode reverse:https://csms.example.net@9000
"""


def add_addon_path_command(commands: Any) -> None:
    """Register ``ocproxy addon-path`` on the ``ocproxy`` subcommand parser."""
    cmd = commands.add_parser(
        "addon-path",
        help="print the path of the mitmproxy addon that records OCPP traffic",
        description="Print the path of the mitmproxy addon script inside the installed "
        "ocproxy package, for mitmdump/mitmproxy/mitmweb -s. The addon records every OCPP "
        "WebSocket flow into the same tables as ocproxy proxy (--set ocproxy_db=FILE).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmd.set_defaults(func=_print_addon_path)


def _print_addon_path(args: argparse.Namespace) -> int:
    print(addon_path())
    return 0
