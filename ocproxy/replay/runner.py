"""Play a script against a live peer: as the charger (we dial the CSMS) or as the CSMS
(a charger dials us). Here: the handshake either way, and recording the connection's
open and close; the exchanges themselves run in :class:`~ocproxy.replay.session.Session`.

A handshake that fails is not an exception but a result: the report says why (naming
the status or subprotocol), every exchange counts as not replayed, and the caller
still prints the summary. Only a listen address in use raises (ProxyError, exit 1).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from ocproxy.core.events import ClosedBy, ConnectionOpened
from ocproxy.core.events import ConnectionClosed as ClosedEvent
from ocproxy.core.handshake import (
    end_to_end_headers,
    headers_for_record,
    identity_from_path,
    offered_subprotocols,
    redact_url,
)
from ocproxy.errors import ProxyError
from ocproxy.proxy.config import DEFAULT_MAX_MESSAGE_SIZE
from ocproxy.proxy.legs import ChargerLeg, CsmsLeg
from ocproxy.proxy.server import wall_clock
from ocproxy.recorder.process import EventSink
from ocproxy.replay.compare import Difference, DiffKind, IgnoreRules
from ocproxy.replay.output import ExchangeResult, Outcome, ReplayReport
from ocproxy.replay.script import Role, Script
from ocproxy.replay.session import Leg, Session


@dataclass(frozen=True)
class ReplayOptions:
    role: Role
    target: str | None = None  # charger: the CSMS base URL; the recorded path is appended
    listen: tuple[str, int] = ("127.0.0.1", 9000)  # csms
    identity: str | None = None  # charger: dial as this identity instead of the recorded one
    headers: tuple[tuple[str, str], ...] = ()
    speed: float | None = 1.0  # None: as fast as the answers come
    timeout: float = 30.0
    match: str = "payload"  # or "action"
    shift_time: bool = False
    rules: IgnoreRules = field(default_factory=IgnoreRules.parse)


def target_url(base: str, path: str, identity: str | None) -> str:
    """``base`` + the recorded path and query, the last path segment replaced if asked."""
    if identity is not None:
        route, sep, query = path.partition("?")
        path = route.rsplit("/", 1)[0] + "/" + quote(identity, safe="") + sep + query
    return base.rstrip("/") + path


async def replay(
    script: Script,
    options: ReplayOptions,
    recorder: EventSink,
    *,
    stop: asyncio.Event | None = None,
    progress: Callable[[], None] = lambda: None,
    on_listening: Callable[[int], None] = lambda port: None,
) -> ReplayReport:
    """Replay ``script``; the report holds every difference, even after a failure."""
    report = ReplayReport(script.source.connection_id, str(options.role), "", script.total)
    report.warnings.extend(script.warnings)
    report.unsolicited_recorded = script.unsolicited
    for skipped in script.skipped:
        report.add(
            ExchangeResult(
                skipped.index, skipped.action, "raw", Outcome.SKIPPED, note=skipped.reason
            )
        )
    stop = stop or asyncio.Event()
    ctx = Context(script, options, recorder, report, stop, progress)
    if options.role is Role.CHARGER:
        await _as_charger(ctx)
    else:
        await _as_csms(ctx, on_listening)
    return report


@dataclass
class Context:
    script: Script
    options: ReplayOptions
    recorder: EventSink
    report: ReplayReport
    stop: asyncio.Event
    progress: Callable[[], None]

    def opened(self, leg: Leg, url: str | None) -> str:
        """Record the replayed connection as opened; return its connection id."""
        request, response = leg.request, leg.response
        assert request is not None
        assert response is not None
        ours = self.options.role is Role.CHARGER
        address = leg.local_address if ours else leg.remote_address
        return self.record_open(
            path=request.path,
            offered=offered_subprotocols(request.headers.get_all("Sec-WebSocket-Protocol")),
            subprotocol=leg.subprotocol,
            status=response.status_code,
            url=url,
            address=None if address is None else f"{address[0]}:{address[1]}",
            headers=(request.headers.raw_items(), response.headers.raw_items()),
        )

    def record_open(
        self,
        *,
        path: str,
        offered: Sequence[str],
        subprotocol: str | None,
        status: int,
        url: str | None,
        address: str | None = None,
        headers: tuple[Iterable[tuple[str, str]], Iterable[tuple[str, str]]] = ((), ()),
    ) -> str:
        connection_id = str(uuid.uuid4())
        identity = identity_from_path(path)
        self.recorder.submit(
            ConnectionOpened(
                connection_id=connection_id,
                ts=wall_clock(),
                identity=identity,
                path=path,
                remote_addr=address,
                offered_subprotocols=tuple(offered),
                subprotocol=subprotocol,
                upstream_url=None if url is None else redact_url(url),
                handshake_status=status,
                request_headers=tuple(headers_for_record(headers[0])),
                response_headers=tuple(headers[1]),
                source="replay",
                run_id=self.recorder.run_id,
                replay_of=self.script.source.connection_id,
            )
        )
        self.report.replay_id, self.report.identity = connection_id, identity
        return connection_id

    def record_close(self, connection_id: str, leg: Leg) -> None:
        """Record how the connection ended: who closed first, and the code they sent."""
        me = ClosedBy.CHARGER if self.options.role is Role.CHARGER else ClosedBy.CSMS
        peer = ClosedBy.CSMS if me is ClosedBy.CHARGER else ClosedBy.CHARGER
        protocol = leg.protocol
        rcvd, sent = protocol.close_rcvd, protocol.close_sent
        if rcvd is not None and (sent is None or protocol.close_rcvd_then_sent):
            code, reason, by = int(rcvd.code), rcvd.reason, peer
        elif sent is not None:
            code, reason, by = int(sent.code), sent.reason, me
        else:  # the peer vanished without a Close frame
            code, reason, by = 1006, "", peer
        self.recorder.submit(ClosedEvent(connection_id, wall_clock(), code, reason, by))

    def record_refusal(self, connection_id: str, status: int) -> None:
        peer = ClosedBy.CSMS if self.options.role is Role.CHARGER else ClosedBy.CHARGER
        reason = f"target refused: HTTP {status}"
        self.recorder.submit(ClosedEvent(connection_id, wall_clock(), None, reason, peer))

    def abandon(self, failure: str | None) -> None:
        """Nothing more can be replayed: say why, count every exchange as not replayed."""
        self.report.failure = self.report.failure or failure
        for step in self.script.steps:
            self.report.count(step.action, Outcome.NOT_REPLAYED)
        for expected in self.script.expected:
            self.report.count(expected.action, Outcome.NOT_REPLAYED)


# -- as the charger --------------------------------------------------------------------


async def _as_charger(ctx: Context) -> None:
    source, options = ctx.script.source, ctx.options
    assert options.target is not None
    url = target_url(options.target, source.path, options.identity)
    ctx.report.peer = redact_url(url)
    headers = _request_headers(source.request_headers, options.headers)
    extra: dict[str, Any] = {}
    if any(name.lower() == "user-agent" for name, _ in headers):
        extra["user_agent_header"] = None  # the recorded one is among the headers
    try:
        leg = await connect(
            url,
            subprotocols=[Subprotocol(p) for p in source.offered_subprotocols] or None,
            additional_headers=headers,
            open_timeout=options.timeout,
            max_size=DEFAULT_MAX_MESSAGE_SIZE,
            create_connection=CsmsLeg,
            proxy=None,
            **extra,
        )
    except InvalidStatus as exc:
        _refused(ctx, url, exc.response)
        return
    except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
        ctx.abandon(f"cannot connect to {redact_url(url)}: {type(exc).__name__}: {exc}")
        return
    assert isinstance(leg, CsmsLeg)
    await _run_session(ctx, leg, ctx.opened(leg, url))


def _refused(ctx: Context, url: str, response: Response) -> None:
    status, path = response.status_code, ctx.script.source.path
    if ctx.options.identity is not None:
        path = target_url("", path, ctx.options.identity)
    offered = ctx.script.source.offered_subprotocols
    connection_id = ctx.record_open(
        path=path,
        offered=offered,
        subprotocol=None,
        status=status,
        url=url,
        headers=((), response.headers.raw_items()),
    )
    ctx.record_refusal(connection_id, status)
    ctx.report.connection.append(
        Difference(DiffKind.HANDSHAKE, "status", "101", str(status), "connection")
    )
    ctx.abandon(f"the target refused the handshake: HTTP {status} {response.reason_phrase}")


def _request_headers(
    recorded: Sequence[tuple[str, str]], extra: Sequence[tuple[str, str]]
) -> list[tuple[str, str]]:
    # The recorded Authorization lost its secret when it was recorded: only --header
    # can supply one. Everything else end-to-end is sent as the charger sent it.
    names = {name.lower() for name, _ in extra}
    kept = [
        (n, v)
        for n, v in end_to_end_headers(recorded)
        if n.lower() not in names and n.lower() != "authorization"
    ]
    return kept + list(extra)


# -- as the CSMS -----------------------------------------------------------------------


async def _as_csms(ctx: Context, on_listening: Callable[[int], None]) -> None:
    host, port = ctx.options.listen
    accepted: asyncio.Future[ChargerLeg] = asyncio.get_running_loop().create_future()
    finished = asyncio.Event()
    wanted = ctx.script.source.subprotocol

    def select(_: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
        # No match: complete the handshake without one, then close (OCPP-J), not HTTP 400.
        return Subprotocol(wanted) if wanted is not None and wanted in offered else None

    def busy(leg: ServerConnection, _: Request) -> Response | None:
        return leg.respond(409, "replay already serving a charger\n") if accepted.done() else None

    async def handler(leg: ServerConnection) -> None:
        assert isinstance(leg, ChargerLeg)
        if not accepted.done():
            accepted.set_result(leg)
        await finished.wait()  # the session runs in replay()'s task, not here

    try:
        server = await serve(
            handler,
            host,
            port,
            create_connection=ChargerLeg,
            select_subprotocol=select,
            process_request=busy,
            max_size=DEFAULT_MAX_MESSAGE_SIZE,
            server_header=None,
        )
    except OSError as exc:
        raise ProxyError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    bound = int(server.sockets[0].getsockname()[1])
    ctx.report.peer = f"ws://{host}:{bound}"
    on_listening(bound)
    try:
        leg = await _first_charger(accepted, ctx.stop)
        if leg is None:
            ctx.report.interrupted = True
            ctx.abandon(None)  # Ctrl-C while waiting: interrupted, not a difference
            return
        connection_id = ctx.opened(leg, None)
        if ctx.report.identity != ctx.script.source.identity:
            ctx.report.warnings.append(
                f"the charger connected as {ctx.report.identity!r}; "
                f"the recording is of {ctx.script.source.identity!r}"
            )
        await _run_session(ctx, leg, connection_id)
    finally:
        finished.set()
        server.close()
        await server.wait_closed()


async def _first_charger(
    accepted: asyncio.Future[ChargerLeg], stop: asyncio.Event
) -> ChargerLeg | None:
    stopping = asyncio.ensure_future(stop.wait())
    either: list[asyncio.Future[Any]] = [accepted, stopping]
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        await asyncio.gather(stopping, return_exceptions=True)  # nothing left pending
    return accepted.result() if accepted.done() else None


# -- one replayed connection -------------------------------------------------------------


async def _run_session(ctx: Context, leg: Leg, connection_id: str) -> None:
    wanted = ctx.script.source.subprotocol
    if leg.subprotocol == wanted:
        await Session(ctx, leg, connection_id).run()
        return
    ctx.report.connection.append(
        Difference(DiffKind.HANDSHAKE, "subprotocol", wanted, leg.subprotocol, "connection")
    )
    ctx.abandon(
        f"the peer agreed on subprotocol {leg.subprotocol or 'none'}, the recording on "
        f"{wanted or 'none'}: nothing was replayed"
    )
    # OCPP-J: a CSMS that cannot speak the charger's version closes with 1002.
    await leg.close(1002 if ctx.options.role is Role.CSMS else 1000, "subprotocol mismatch")
    ctx.record_close(connection_id, leg)
