"""ocproxy inside mitmproxy: an addon that records OCPP WebSocket traffic like ``ocproxy proxy``.

::

    mitmdump -s "$(ocproxy addon-path)" --set ocproxy_db=site.duckdb \\
        --mode reverse:https://csms.example.net@9000

The addon (:class:`ocproxy.mitm.addon.OcproxyRecorder`) is an adapter: it turns
mitmproxy's ``websocket_start`` / ``websocket_message`` / ``websocket_end`` hooks into
the same :mod:`ocproxy.core.events` the proxy produces and hands them to the same
:class:`~ocproxy.recorder.Recorder` (parsing, correlation, audit and storage all run
there), so a recording made through mitmproxy has the same tables and columns as one
made by ``ocproxy proxy``; only ``connections.source`` says ``mitmproxy``.

This module imports nothing from mitmproxy, so ``ocproxy addon-path`` works where
mitmproxy is not installed (e.g. when mitmproxy runs from its own binary
distribution and only needs the path).
"""

from __future__ import annotations

from pathlib import Path

SCRIPT_NAME = "ocproxy_recorder.py"
"""The file mitmproxy loads with ``-s``; it defines ``addons = [OcproxyRecorder()]``."""

SOURCE = "mitmproxy"
"""What ``connections.source`` and ``runs.source`` say for recordings made by the addon."""


def addon_path() -> Path:
    """The addon script inside the installed package, for ``mitmdump -s PATH``."""
    return Path(__file__).resolve().with_name(SCRIPT_NAME)


__all__ = ["SCRIPT_NAME", "SOURCE", "addon_path"]
