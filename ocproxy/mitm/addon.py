"""The mitmproxy addon: OCPP WebSocket flows in, ocproxy's recorder events out.

In the style of mitmproxy's own ``addons/save.py``: ``load`` registers the options,
``configure`` opens (or switches, or closes) the recording, the WebSocket hooks turn
each flow into :class:`~ocproxy.core.events.ConnectionOpened`, one
:class:`~ocproxy.core.events.FrameReceived` per message and a
:class:`~ocproxy.core.events.ConnectionClosed`, exactly as ``ocproxy proxy`` reports
them, and hand them to :meth:`ocproxy.recorder.Recorder.submit`. Parsing,
correlation, the audit and storage all happen on the recorder's writer thread, so the
hooks on mitmproxy's event loop only build small values and enqueue them.

Opening and closing the DuckDB file (which can take a moment on a large file, and
flushes) happen on a worker thread, one at a time, so a ``set ocproxy_db=...`` from
mitmproxy's console never stalls live connections. The one exception is ``done``:
mitmproxy calls it synchronously (also when the script is reloaded), and it waits for
the last rows to be written.

Bad input never stops mitmproxy: an unusable database is one warning line (a warning,
not an error, because mitmproxy exits on errors logged during start-up), after which
OCPP traffic is still relayed and the frames that could not be recorded are counted
and reported when mitmproxy stops; non-OCPP WebSocket flows are one info line each;
malformed frames are recorded with their ``parse_status`` like the proxy does.

The pieces: :mod:`ocproxy.mitm.flows` (which flows are OCPP, per-flow state, the
events), :mod:`ocproxy.mitm.recording` (the Recorder and its worker thread) and
:mod:`ocproxy.mitm.inject` (the ``ocproxy.inject`` command).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from mitmproxy import command, connection, ctx, exceptions, http
from mitmproxy import flow as mflow
from mitmproxy.addonmanager import Loader

from ocproxy.core.events import ClosedBy, ConnectionClosed, RecorderEvent
from ocproxy.core.frames import Direction
from ocproxy.errors import ConfigError
from ocproxy.mitm.flows import (
    BAD_GATEWAY,
    DEFAULT_SUBPROTOCOLS,
    Live,
    closed_event,
    describe,
    frame_event,
    is_upgrade,
    offered,
    opened_event,
    path_matcher,
    quantize,
    subprotocol_set,
)
from ocproxy.mitm.inject import INJECT_HELP, answers_injected, injection_target, send_call
from ocproxy.mitm.recording import Recording, Worker, new_recorder
from ocproxy.proxy.server import wall_clock

logger = logging.getLogger(__name__)

# mitmproxy's Loader.add_option is annotated ``typespec: type``; it takes Optional too.
_OPTIONAL_STR = cast(type, str | None)
_BOOLEAN_OPTIONS = ("ocproxy_keep_messages", "ocproxy_audit", "ocproxy_keep_ids")


def _refuse_unparsable(deferred: dict[str, Any]) -> None:
    """Say so when a ``--set`` value of our boolean options cannot be parsed.

    mitmproxy applies a script's ``--set`` values in one batch once it has loaded; one
    value it cannot parse drops the whole batch without a word, ``ocproxy_db`` included,
    so nothing would be recorded. (An OptionsError raised here is swallowed too.) An
    error logged at start-up makes mitmproxy exit, as its own bad options do.
    """
    for name in _BOOLEAN_OPTIONS:
        value = deferred.get(name)
        values = getattr(value, "val", None)  # still the strings given on the command line
        if isinstance(values, list) and not all(v in ("true", "false") for v in values):
            logger.error(
                f"ocproxy: --set {name}={' '.join(values)}: give true or false "
                "(mitmproxy would drop every ocproxy option with it: nothing recorded)"
            )


F = TypeVar("F", bound=Callable[..., Any])


def _command(name: str) -> Callable[[F], F]:
    """mitmproxy's ``@command.command``, typed so mypy --strict keeps checking the method."""
    return cast(Callable[[F], F], command.command(name))


class _IdleCloses(logging.Handler):
    """Notices mitmproxy closing idle connections (``tcp_timeout``).

    mitmproxy does that by cancelling the connection's task, which the WebSocket layer
    reports like a charger that vanished (1006, closed by the client); its log line
    (with the client's address) is the only sign that mitmproxy closed it.
    """

    LOGGER = "mitmproxy.proxy.server"
    MESSAGE = "Closing connection due to inactivity"

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.peers: set[tuple[Any, ...]] = set()

    def emit(self, record: logging.LogRecord) -> None:
        client = getattr(record, "client", None)
        if client is not None and str(record.msg).startswith(self.MESSAGE):
            self.peers.add(tuple(client))

    def install(self) -> None:
        logging.getLogger(self.LOGGER).addHandler(self)

    def uninstall(self) -> None:
        logging.getLogger(self.LOGGER).removeHandler(self)


class OcproxyRecorder:
    """Records OCPP WebSocket flows into an ocproxy recording (DuckDB)."""

    def __init__(self) -> None:
        self._recording: Recording | None = None
        self._settings: tuple[str | None, bool, bool] | None = None
        self._live: dict[str, Live] = {}
        self._path_match: Callable[[str], bool] | None = None
        self._subprotocols = subprotocol_set(DEFAULT_SUBPROTOCOLS)
        self._keep_messages = False
        self._worker = Worker(self._open_failed)
        self.unrecorded_frames = 0  # OCPP frames relayed while no recording was usable
        self._idle_closes = _IdleCloses()

    # -- mitmproxy life cycle -------------------------------------------------------------

    def load(self, loader: Loader) -> None:
        self._idle_closes.install()
        loader.add_option(
            "ocproxy_db",
            _OPTIONAL_STR,
            None,
            "DuckDB file to record OCPP WebSocket traffic into (ocproxy's tables; created "
            "and migrated if needed, appended to otherwise). Unset: nothing is recorded.",
        )
        loader.add_option(
            "ocproxy_paths",
            str,
            "",
            "Only WebSocket flows whose request path (without the query) matches are "
            "recorded: a shell-style pattern such as /ocpp/*, or a regular expression "
            "after re:, such as re:^/(ocpp|steve)/. Empty: any path.",
        )
        loader.add_option(
            "ocproxy_subprotocols",
            str,
            DEFAULT_SUBPROTOCOLS,
            "Comma-separated WebSocket subprotocols that make a flow OCPP: it is recorded "
            "when the client offers one of them (case-insensitive). Empty: no check, so "
            "chargers that offer no subprotocol or a bogus one are recorded too.",
        )
        loader.add_option(
            "ocproxy_keep_messages",
            bool,
            False,
            "Keep every message of a recorded WebSocket flow in mitmproxy's memory (for "
            "the console or web UI). Off: once recorded, a flow keeps only its latest "
            "message, so chargers connected for days do not grow mitmproxy's memory.",
        )
        loader.add_option(
            "ocproxy_audit",
            bool,
            True,
            "Check every recorded frame against the OCPP schemas and RPC rules while "
            "recording, into table findings (like ocproxy proxy --audit).",
        )
        loader.add_option(
            "ocproxy_keep_ids",
            bool,
            False,
            "Record driver ids (idTag, idToken) as sent. Off: they are pseudonymised with "
            "the key in $OCPROXY_ID_KEY or ~/.config/ocproxy/id-key, as by ocproxy proxy.",
        )
        _refuse_unparsable(loader.master.options.deferred)

    def configure(self, updated: set[str]) -> None:
        if "ocproxy_paths" in updated:
            try:
                self._path_match = path_matcher(ctx.options.ocproxy_paths)
            except ValueError as exc:
                raise exceptions.OptionsError(str(exc)) from exc  # type: ignore[no-untyped-call]
        if "ocproxy_subprotocols" in updated:
            self._subprotocols = subprotocol_set(ctx.options.ocproxy_subprotocols)
        if "ocproxy_keep_messages" in updated:
            self._keep_messages = bool(ctx.options.ocproxy_keep_messages)
        if updated & {"ocproxy_db", "ocproxy_audit", "ocproxy_keep_ids"}:
            options = ctx.options
            self._configure_recording(
                options.ocproxy_db, bool(options.ocproxy_audit), bool(options.ocproxy_keep_ids)
            )

    def done(self) -> None:
        """Close what is still open in the recording, flush it and report what was lost."""
        self._idle_closes.uninstall()
        for live in self._live.values():
            self._submit(live, closed_event(live, 1006, "mitmproxy shut down", ClosedBy.PROXY))
        self._live.clear()
        recording, self._recording = self._recording, None
        self._settings = None
        if recording is not None:
            self._worker.close(recording)
        self._worker.shutdown()
        if recording is not None and recording.failed:
            # Its opening failed on the worker just now: the loop has not said so yet.
            self._open_failed(recording)
        if self.unrecorded_frames:
            logger.error(
                f"ocproxy: {self.unrecorded_frames} OCPP frames were relayed but not recorded "
                "(no usable recording; see the ocproxy_db line above)"
            )

    # -- the recording -------------------------------------------------------------------------

    def _configure_recording(self, db: str | None, audit: bool, keep_ids: bool) -> None:
        path = str(Path(db).expanduser()) if db else None
        if (path, audit, keep_ids) == self._settings:
            return  # configure runs more than once at start-up
        try:
            recorder = None if path is None else new_recorder(path, audit, keep_ids)
        except ConfigError as exc:  # no id key to be had: never record ids in clear instead
            raise exceptions.OptionsError(f"ocproxy: {exc}") from exc  # type: ignore[no-untyped-call]
        self._settings = (path, audit, keep_ids)
        old = self._recording
        new = None if recorder is None else Recording(recorder)
        self._recording = new
        # Connections that outlive a switch are closed in the old file and opened again,
        # with a new connection id and seq from 0, in the new one: each file stands alone.
        for live in self._live.values():
            self._submit(live, closed_event(live, None, "ocproxy_db changed", ClosedBy.PROXY))
            live.recording = new
            live.seq = 0
            live.opened = replace(
                live.opened,
                connection_id=str(uuid.uuid4()),
                ts=wall_clock(),
                run_id=None if new is None else new.recorder.run_id,
            )
            self._submit(live, live.opened)
        if old is not None:
            self._worker.close(old)
        if new is None:
            logger.info("ocproxy: not recording (set ocproxy_db=FILE to record OCPP traffic)")
        else:
            self._worker.open(new)

    def _open_failed(self, recording: Recording) -> None:
        """On the loop: the frames already submitted to it are lost; later ones are counted."""
        if recording.reported:
            return
        recording.reported = True
        self.unrecorded_frames += recording.frames
        # A warning: mitmproxy exits when an error is logged during its start-up.
        logger.warning(f"ocproxy: {recording.error}; OCPP traffic is relayed but NOT recorded")

    def _submit(self, live: Live, event: RecorderEvent) -> None:
        recording = live.recording
        if recording is not None and recording.usable:
            recording.recorder.submit(event)

    # -- flows -------------------------------------------------------------------------------

    def response(self, flow: http.HTTPFlow) -> None:
        """A WebSocket handshake the CSMS refused (401, 404, ...) is recorded, like the proxy."""
        response = flow.response
        if flow.websocket is not None or response is None or not is_upgrade(flow):
            return
        status = response.status_code
        self._record_refusal(flow, status, f"CSMS refused: HTTP {status}", ClosedBy.CSMS)

    def error(self, flow: http.HTTPFlow) -> None:
        """A WebSocket handshake that got no answer (CSMS unreachable): mitmproxy sends 502."""
        if flow.response is not None or flow.id in self._live or not is_upgrade(flow):
            return
        detail = f"CSMS unreachable: {flow.error.msg if flow.error else 'no response'}"
        self._record_refusal(flow, BAD_GATEWAY, detail, ClosedBy.PROXY)

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        reason = self._not_ocpp(flow)
        if reason is not None:
            logger.info(f"ocproxy: not recording WebSocket {describe(flow)}: {reason}")
            return
        recording = self._recording
        opened = opened_event(flow, None if recording is None else recording.recorder.run_id)
        live = Live(opened, flow.client_conn.id, recording)
        self._live[flow.id] = live
        self._submit(live, opened)

    def websocket_message(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        live = self._live.get(flow.id)
        if live is None:
            return None
        websocket = flow.websocket
        assert websocket is not None
        message = websocket.messages[-1]
        direction = Direction.TO_CSMS if message.from_client else Direction.TO_CHARGER
        injected = message.injected
        if live.pending and not injected and answers_injected(live, message.content, direction):
            # The answer to ocproxy.inject's CALL is for ocproxy only: not forwarded.
            # (= message.drop(), which mitmproxy leaves unannotated.)
            message.dropped = True
            injected = True
        event = frame_event(live, message, injected)
        if not self._keep_messages:
            # Keep the latest: addons after this one (mitmdump's dumper) still read it.
            del websocket.messages[:-1]
        recording = live.recording
        if recording is None:  # ocproxy_db unset: not recording was asked for, not lost
            return None
        if not recording.usable:
            self.unrecorded_frames += 1
            return None
        recording.frames += 1
        recorder = recording.recorder
        recorder.submit(event)
        if recorder.congested:
            # Backpressure, as in the proxy: mitmproxy awaits this before relaying further.
            return recorder.wait_for_room()
        return None

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        live = self._live.pop(flow.id, None)
        websocket = flow.websocket
        if live is None or websocket is None:
            return
        code, reason = websocket.close_code, websocket.close_reason
        if websocket.closed_by_client is None:
            closed_by = ClosedBy.PROXY
        else:
            closed_by = ClosedBy.CHARGER if websocket.closed_by_client else ClosedBy.CSMS
        peer = flow.client_conn.peername
        if peer is not None and tuple(peer) in self._idle_closes.peers:
            self._idle_closes.peers.discard(tuple(peer))
            closed_by = ClosedBy.PROXY
            reason = f"idle for tcp_timeout ({ctx.options.tcp_timeout} s): mitmproxy closed it"
        self._submit(live, closed_event(live, code, reason, closed_by))
        if not self._keep_messages:
            websocket.messages.clear()

    def client_disconnected(self, client: connection.Client) -> None:
        """Safety net: a flow whose connection went without ``websocket_end`` is closed too."""
        if client.peername is not None:
            self._idle_closes.peers.discard(tuple(client.peername))
        gone = [key for key, live in self._live.items() if live.client_id == client.id]
        for key in gone:
            live = self._live.pop(key)
            self._submit(live, closed_event(live, 1006, "connection lost", ClosedBy.PROXY))

    @_command("ocproxy.inject")
    def inject(self, flow: mflow.Flow, action: str, payload: str, *to: str) -> str:
        # The help mitmproxy shows is INJECT_HELP (set below: one paragraph, no indents).
        live = self._live.get(flow.id)
        if live is None or not isinstance(flow, http.HTTPFlow) or not flow.live:
            raise exceptions.CommandError(
                "ocproxy.inject: not a live OCPP WebSocket flow recorded by ocproxy"
            )
        return send_call(live, flow, action, payload, to)

    inject.__doc__ = INJECT_HELP

    # -- helpers -----------------------------------------------------------------------------

    def _not_ocpp(self, flow: http.HTTPFlow) -> str | None:
        """Why this WebSocket flow is not recorded, or None when it is OCPP."""
        path = urlsplit(flow.request.path).path
        if self._path_match is not None and not self._path_match(path):
            return f"path does not match ocproxy_paths={ctx.options.ocproxy_paths!r}"
        if self._subprotocols:
            offers = offered(flow)
            if not any(p.lower() in self._subprotocols for p in offers):
                listed = ", ".join(offers) if offers else "none"
                return f"offers no OCPP subprotocol (offered: {listed})"
        return None

    def _record_refusal(self, flow: http.HTTPFlow, status: int, reason: str, by: ClosedBy) -> None:
        if self._not_ocpp(flow) is not None:
            return
        recording = self._recording
        opened = opened_event(
            flow, None if recording is None else recording.recorder.run_id, status
        )
        live = Live(opened, flow.client_conn.id, recording)
        self._submit(live, opened)
        self._submit(live, ConnectionClosed(opened.connection_id, wall_clock(), None, reason, by))


# Importable from here as before the split into flows, recording and inject.
__all__ = [
    "DEFAULT_SUBPROTOCOLS",
    "OcproxyRecorder",
    "injection_target",
    "path_matcher",
    "quantize",
    "subprotocol_set",
]
