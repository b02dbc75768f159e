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
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import math
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from mitmproxy import command, connection, ctx, exceptions, http
from mitmproxy import flow as mflow
from mitmproxy.addonmanager import Loader

from ocproxy import __version__
from ocproxy.audit.auditor import Auditor
from ocproxy.core.events import (
    ClosedBy,
    ConnectionClosed,
    ConnectionOpened,
    FrameReceived,
    RecorderEvent,
)
from ocproxy.core.frames import Direction, MessageType, Opcode, parse_frame
from ocproxy.core.handshake import (
    SUBPROTOCOL_VERSIONS,
    headers_for_record,
    identity_from_path,
    offered_subprotocols,
    redact_url,
)
from ocproxy.errors import RecorderError
from ocproxy.mitm import SOURCE
from ocproxy.proxy.server import wall_clock
from ocproxy.recorder import Recorder, RecorderStats, Sink

logger = logging.getLogger(__name__)

DEFAULT_SUBPROTOCOLS = ",".join(SUBPROTOCOL_VERSIONS)
_ANSWERS = frozenset({int(MessageType.CALLRESULT), int(MessageType.CALLERROR)})
# Status the charger gets from mitmproxy when the CSMS cannot be reached.
_BAD_GATEWAY = 502

# mitmproxy's Loader.add_option is annotated ``typespec: type``; it takes Optional too.
_OPTIONAL_STR = cast(type, str | None)

F = TypeVar("F", bound=Callable[..., Any])


def _command(name: str) -> Callable[[F], F]:
    """mitmproxy's ``@command.command``, typed so mypy --strict keeps checking the method."""
    return cast(Callable[[F], F], command.command(name))


def quantize(ts: float) -> float:
    """A float timestamp in whole microseconds, like :func:`ocproxy.proxy.server.wall_clock`."""
    return math.floor(ts * 1_000_000) / 1_000_000


# -- options ------------------------------------------------------------------------------


def path_matcher(spec: str) -> Callable[[str], bool] | None:
    """``ocproxy_paths`` as a predicate on the request path (query excluded); None: any path.

    A shell-style pattern (``/ocpp/*``, fnmatch, case-sensitive), or a regular
    expression after ``re:`` (``re:^/(ocpp|steve)/``, searched). Raises ValueError for
    a bad regular expression.
    """
    spec = spec.strip()
    if not spec:
        return None
    if spec.startswith("re:"):
        try:
            pattern = re.compile(spec[3:])
        except re.error as exc:
            raise ValueError(f"ocproxy_paths: bad regular expression {spec[3:]!r}: {exc}") from exc
        return lambda path: pattern.search(path) is not None
    return lambda path: fnmatch.fnmatchcase(path, spec)


def subprotocol_set(spec: str) -> frozenset[str]:
    """``ocproxy_subprotocols`` (comma-separated) as a lower-case set; empty: no check."""
    return frozenset(p.strip().lower() for p in spec.split(",") if p.strip())


def injection_target(words: Iterable[str]) -> Direction:
    """Where ``ocproxy.inject`` sends its CALL.

    Nothing or ``charger``: to the charger; ``csms``, ``--to csms`` or ``--to=csms``: to
    the CSMS (``--to charger`` works too).
    """
    tokens = [w for word in words for w in word.replace("=", " ").split()]
    if tokens[:1] == ["--to"]:
        tokens = tokens[1:]
    if not tokens or tokens == ["charger"]:
        return Direction.TO_CHARGER
    if tokens == ["csms"]:
        return Direction.TO_CSMS
    raise ValueError(f"expected nothing, 'csms' or '--to csms|charger', got {' '.join(words)!r}")


_INJECT_HELP = (
    "Send the OCPP CALL [2, id, ACTION, PAYLOAD] on a live OCPP WebSocket flow, with a fresh "
    'UUID as message id: to the charger, or to the CSMS with a last argument "--to csms" (or '
    '"csms"). PAYLOAD is a JSON object; quote it with single quotes. The CALL and its answer '
    "are recorded with injected = true, and the answer is not forwarded. Returns the id."
)


# -- state ------------------------------------------------------------------------------------


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


class _LogSink(Sink):
    """Reports write failures (disk full, file gone) through mitmproxy's log."""

    def on_error(self, message: str) -> None:
        logger.error(f"ocproxy: {message}")


@dataclass(eq=False)
class _Recording:
    """One Recorder as the addon uses it: opened on the worker thread, fed from the loop."""

    recorder: Recorder
    failed: bool = False  # opening failed: what was submitted is lost and counted
    frames: int = 0  # frames submitted, to count them as lost if opening fails

    @property
    def usable(self) -> bool:
        return not self.failed


@dataclass(eq=False)
class _Live:
    """A recorded WebSocket flow that has not ended yet."""

    opened: ConnectionOpened
    client_id: str
    recording: _Recording | None
    seq: int = 0
    # Message id of each CALL sent by ocproxy.inject, not yet answered -> its direction.
    pending: dict[str, Direction] = field(default_factory=dict)

    def next_seq(self) -> int:
        seq = self.seq
        self.seq += 1
        return seq


# -- the addon ---------------------------------------------------------------------------------


class OcproxyRecorder:
    """Records OCPP WebSocket flows into an ocproxy recording (DuckDB)."""

    def __init__(self) -> None:
        self._recording: _Recording | None = None
        self._settings: tuple[str | None, bool] | None = None
        self._live: dict[str, _Live] = {}
        self._path_match: Callable[[str], bool] | None = None
        self._subprotocols = subprotocol_set(DEFAULT_SUBPROTOCOLS)
        self._keep_messages = False
        self._worker: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
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
        if updated & {"ocproxy_db", "ocproxy_audit"}:
            self._configure_recording(ctx.options.ocproxy_db, bool(ctx.options.ocproxy_audit))

    def done(self) -> None:
        """Close what is still open in the recording, flush it and report what was lost."""
        self._idle_closes.uninstall()
        for live in self._live.values():
            self._submit(live, self._closed(live, 1006, "mitmproxy shut down", ClosedBy.PROXY))
        self._live.clear()
        recording, self._recording = self._recording, None
        self._settings = None
        if recording is not None:
            self._run_in_worker(self._close, recording)
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None
        if self.unrecorded_frames:
            logger.error(
                f"ocproxy: {self.unrecorded_frames} OCPP frames were relayed but not recorded "
                "(no usable recording; see the ocproxy_db line above)"
            )

    # -- the recording -------------------------------------------------------------------------

    def _configure_recording(self, db: str | None, audit: bool) -> None:
        path = str(Path(db).expanduser()) if db else None
        if (path, audit) == self._settings:
            return  # configure runs more than once at start-up
        self._settings = (path, audit)
        old = self._recording
        new = None if path is None else _Recording(self._recorder(path, audit))
        self._recording = new
        # Connections that outlive a switch are closed in the old file and opened again,
        # with a new connection id and seq from 0, in the new one: each file stands alone.
        for live in self._live.values():
            self._submit(live, self._closed(live, None, "ocproxy_db changed", ClosedBy.PROXY))
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
            self._run_in_worker(self._close, old)
        if new is None:
            logger.info("ocproxy: not recording (set ocproxy_db=FILE to record OCPP traffic)")
        else:
            self._run_in_worker(self._open, new)

    def _recorder(self, path: str, audit: bool) -> Recorder:
        options = ctx.options
        settings = {
            "db": path,
            "audit": audit,
            "paths": options.ocproxy_paths,
            "subprotocols": options.ocproxy_subprotocols,
            "mode": list(options.mode),
            "ocproxy": __version__,
        }
        return Recorder(
            path,
            source=SOURCE,
            settings=settings,
            sinks=[_LogSink()],
            auditor=Auditor() if audit else None,
        )

    def _run_in_worker(self, job: Callable[[_Recording], None], recording: _Recording) -> None:
        if self._loop is None:
            self._loop = ctx.master.event_loop
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ocproxy-mitm")
        self._worker.submit(job, recording)

    def _open(self, recording: _Recording) -> None:
        """On the worker thread: open, create and migrate the database."""
        try:
            recording.recorder.start()
        except RecorderError as exc:
            loop = self._loop
            assert loop is not None
            loop.call_soon_threadsafe(self._open_failed, recording, str(exc))
            return
        logger.info(f"ocproxy: recording OCPP WebSocket traffic to {recording.recorder.path}")

    def _open_failed(self, recording: _Recording, message: str) -> None:
        """On the loop: the frames already submitted to it are lost; later ones are counted."""
        recording.failed = True
        self.unrecorded_frames += recording.frames
        # A warning: mitmproxy exits when an error is logged during its start-up.
        logger.warning(f"ocproxy: {message}; OCPP traffic is relayed but NOT recorded")

    def _close(self, recording: _Recording) -> None:
        """On the worker thread: flush and close."""
        stats = recording.recorder.close()
        if not recording.failed:
            logger.info(f"ocproxy: {_summary(stats)} in {recording.recorder.path}")

    def _submit(self, live: _Live, event: RecorderEvent) -> None:
        recording = live.recording
        if recording is not None and recording.usable:
            recording.recorder.submit(event)

    # -- flows -------------------------------------------------------------------------------

    def response(self, flow: http.HTTPFlow) -> None:
        """A WebSocket handshake the CSMS refused (401, 404, ...) is recorded, like the proxy."""
        response = flow.response
        if flow.websocket is not None or response is None or not _is_upgrade(flow):
            return
        status = response.status_code
        self._record_refusal(flow, status, f"CSMS refused: HTTP {status}", ClosedBy.CSMS)

    def error(self, flow: http.HTTPFlow) -> None:
        """A WebSocket handshake that got no answer (CSMS unreachable): mitmproxy sends 502."""
        if flow.response is not None or flow.id in self._live or not _is_upgrade(flow):
            return
        detail = f"CSMS unreachable: {flow.error.msg if flow.error else 'no response'}"
        self._record_refusal(flow, _BAD_GATEWAY, detail, ClosedBy.PROXY)

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        reason = self._not_ocpp(flow)
        if reason is not None:
            logger.info(f"ocproxy: not recording WebSocket {_describe(flow)}: {reason}")
            return
        recording = self._recording
        opened = _opened(flow, None if recording is None else recording.recorder.run_id)
        live = _Live(opened, flow.client_conn.id, recording)
        self._live[flow.id] = live
        self._submit(live, opened)

    def websocket_message(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        live = self._live.get(flow.id)
        if live is None:
            return None
        websocket = flow.websocket
        assert websocket is not None
        message = websocket.messages[-1]
        content = message.content
        direction = Direction.TO_CSMS if message.from_client else Direction.TO_CHARGER
        injected = message.injected
        if live.pending and not injected and _answers_injected(live, content, direction):
            # The answer to ocproxy.inject's CALL is for ocproxy only: not forwarded.
            # (= message.drop(), which mitmproxy leaves unannotated.)
            message.dropped = True
            injected = True
        event = FrameReceived(
            live.opened.connection_id,
            live.next_seq(),
            wall_clock(),
            direction,
            Opcode.TEXT if message.is_text else Opcode.BINARY,
            content,  # bytes, as the proxy passes them: raw keeps the exact bytes
            len(content),
            identity=live.opened.identity,
            injected=injected,
        )
        if not self._keep_messages:
            # Keep the latest: addons after this one (mitmdump's dumper) still read it.
            del websocket.messages[:-1]
        recording = live.recording
        if recording is None or not recording.usable:
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
        self._submit(live, self._closed(live, code, reason, closed_by))
        if not self._keep_messages:
            websocket.messages.clear()

    def client_disconnected(self, client: connection.Client) -> None:
        """Safety net: a flow whose connection went without ``websocket_end`` is closed too."""
        if client.peername is not None:
            self._idle_closes.peers.discard(tuple(client.peername))
        gone = [key for key, live in self._live.items() if live.client_id == client.id]
        for key in gone:
            live = self._live.pop(key)
            self._submit(live, self._closed(live, 1006, "connection lost", ClosedBy.PROXY))

    # -- injection --------------------------------------------------------------------------

    @_command("ocproxy.inject")
    def inject(self, flow: mflow.Flow, action: str, payload: str, *to: str) -> str:
        # The help mitmproxy shows is _INJECT_HELP (set below: one paragraph, no indents).
        live = self._live.get(flow.id)
        if live is None or not isinstance(flow, http.HTTPFlow) or not flow.live:
            raise exceptions.CommandError(
                "ocproxy.inject: not a live OCPP WebSocket flow recorded by ocproxy"
            )
        try:
            target = injection_target(to)
            body = json.loads(payload)
        except ValueError as exc:
            raise exceptions.CommandError(f"ocproxy.inject: {exc}") from exc
        if not isinstance(body, dict):
            raise exceptions.CommandError("ocproxy.inject: the payload must be a JSON object")
        message_id = str(uuid.uuid4())
        frame = json.dumps([2, message_id, action, body], separators=(",", ":"), ensure_ascii=False)
        live.pending[message_id] = target
        to_client = target is Direction.TO_CHARGER
        ctx.master.commands.call("inject.websocket", flow, to_client, frame.encode(), True)
        peer = "charger" if to_client else "CSMS"
        logger.info(
            f"ocproxy: injected {action} CALL {message_id} to the {peer} of "
            f"{live.opened.identity!r}"
        )
        return message_id

    inject.__doc__ = _INJECT_HELP

    # -- helpers -----------------------------------------------------------------------------

    def _not_ocpp(self, flow: http.HTTPFlow) -> str | None:
        """Why this WebSocket flow is not recorded, or None when it is OCPP."""
        path = urlsplit(flow.request.path).path
        if self._path_match is not None and not self._path_match(path):
            return f"path does not match ocproxy_paths={ctx.options.ocproxy_paths!r}"
        if self._subprotocols:
            offered = _offered(flow)
            if not any(p.lower() in self._subprotocols for p in offered):
                listed = ", ".join(offered) if offered else "none"
                return f"offers no OCPP subprotocol (offered: {listed})"
        return None

    def _record_refusal(self, flow: http.HTTPFlow, status: int, reason: str, by: ClosedBy) -> None:
        if self._not_ocpp(flow) is not None:
            return
        recording = self._recording
        opened = _opened(flow, None if recording is None else recording.recorder.run_id, status)
        live = _Live(opened, flow.client_conn.id, recording)
        self._submit(live, opened)
        self._submit(live, ConnectionClosed(opened.connection_id, wall_clock(), None, reason, by))

    @staticmethod
    def _closed(
        live: _Live, code: int | None, reason: str | None, by: ClosedBy
    ) -> ConnectionClosed:
        # The proxy records "" for a close without a reason (and for 1006).
        return ConnectionClosed(live.opened.connection_id, wall_clock(), code, reason or "", by)


# -- pure helpers -------------------------------------------------------------------------------


def _header_values(headers: Any, name: str) -> list[str]:
    wanted = name.lower().encode()
    return [
        value.decode("utf-8", "surrogateescape")
        for key, value in headers.fields
        if key.lower() == wanted
    ]


def _header_items(headers: Any) -> list[tuple[str, str]]:
    """(name, value) pairs in received order, decoded like mitmproxy (and websockets) do."""
    return [
        (key.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        for key, value in headers.fields
    ]


def _offered(flow: http.HTTPFlow) -> list[str]:
    return offered_subprotocols(_header_values(flow.request.headers, "Sec-WebSocket-Protocol"))


def _is_upgrade(flow: http.HTTPFlow) -> bool:
    upgrade = _header_values(flow.request.headers, "Upgrade")
    return any(value.strip().lower() == "websocket" for value in upgrade)


def _upstream_url(flow: http.HTTPFlow) -> str:
    """Where mitmproxy sent the handshake, as a ws:// or wss:// URL (password redacted)."""
    request = flow.request
    scheme = {"http": "ws", "https": "wss"}.get(request.scheme, request.scheme)
    host = f"[{request.host}]" if ":" in request.host else request.host
    return redact_url(f"{scheme}://{host}:{request.port}{request.path}")


def _opened(flow: http.HTTPFlow, run_id: str | None, status: int | None = None) -> ConnectionOpened:
    request, response = flow.request, flow.response
    peer = flow.client_conn.peername
    chosen = None
    if response is not None and response.status_code == 101:
        chosen = next(iter(_header_values(response.headers, "Sec-WebSocket-Protocol")), None)
    return ConnectionOpened(
        connection_id=str(uuid.uuid4()),
        ts=quantize(request.timestamp_start),
        identity=identity_from_path(request.path),
        path=request.path,
        remote_addr=None if peer is None else f"{peer[0]}:{peer[1]}",
        offered_subprotocols=tuple(_offered(flow)),
        subprotocol=chosen,
        upstream_url=_upstream_url(flow),
        handshake_status=status if status is not None else _status(flow),
        request_headers=tuple(headers_for_record(_header_items(request.headers))),
        response_headers=() if response is None else tuple(_header_items(response.headers)),
        source=SOURCE,
        run_id=run_id,
    )


def _status(flow: http.HTTPFlow) -> int:
    return flow.response.status_code if flow.response is not None else _BAD_GATEWAY


def _answers_injected(live: _Live, content: bytes, direction: Direction) -> bool:
    """Whether this message answers a CALL sent by ocproxy.inject (and forget that CALL)."""
    frame = parse_frame(content)
    if frame.message_type not in _ANSWERS or frame.message_id is None:
        return False
    sent_to = live.pending.get(frame.message_id)
    if sent_to is None or sent_to is direction:  # an answer travels the other way
        return False
    del live.pending[frame.message_id]
    return True


def _describe(flow: http.HTTPFlow) -> str:
    peer = flow.client_conn.peername
    source = "" if peer is None else f" from {peer[0]}:{peer[1]}"
    return f"{flow.request.path}{source}"


def _summary(stats: RecorderStats) -> str:
    frames, connections = stats.frames_recorded, stats.connections
    text = f"recorded {_plural(frames, 'frame')} on {_plural(connections, 'connection')}"
    if stats.frames_lost:
        text += f", {stats.frames_lost} frames LOST"
    return text


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
