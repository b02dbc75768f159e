"""The control endpoint: a token-guarded WebSocket on loopback, off unless --control.

It reads the proxy's live state (sessions) and reaches the recording only through the
recorder (DuckDB lets no other process open a file being written): the frame stream is
a recorder sink, live SQL runs on the writer thread.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request as HttpRequest
from websockets.http11 import Response

from ocproxy.audit import schemas
from ocproxy.audit.auditor import Finding
from ocproxy.control import protocol
from ocproxy.control.reload import Reloaded
from ocproxy.core.events import ConnectionClosed as ClosedEvent
from ocproxy.core.events import ConnectionOpened
from ocproxy.core.frames import Direction
from ocproxy.core.handshake import ocpp_version
from ocproxy.core.observe import ObservedFrame
from ocproxy.errors import ControlError, OcproxyError, ProxyError, no_live_connection
from ocproxy.proxy.relay import Session
from ocproxy.proxy.server import ProxyServer
from ocproxy.recorder import Recorder, Sink

log = logging.getLogger("ocproxy.control")
_SUBSCRIBER_BACKLOG = 10_000


class LiveFeed(Sink):
    """Carries what the recorder processed to subscribers on the event loop.

    Runs on the writer thread: events are queued and the loop is woken once per burst,
    not once per frame, and only while someone is subscribed.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.subscribers: dict[asyncio.Queue[dict[str, Any] | None], protocol.Filters] = {}
        self._outbox: deque[tuple[dict[str, Any], ObservedFrame | None]] = deque()
        self._scheduled = False

    def on_frame(self, frame: ObservedFrame, findings: Sequence[Finding] = ()) -> None:
        if self.subscribers:
            self._post(protocol.frame_event(frame, tuple(findings)), frame)

    def on_open(self, event: ConnectionOpened) -> None:
        if self.subscribers:
            self._post(protocol.open_event(event), None)

    def on_close(self, event: ClosedEvent) -> None:
        if self.subscribers:
            self._post(protocol.close_event(event), None)

    def _post(self, event: dict[str, Any], frame: ObservedFrame | None) -> None:
        self._outbox.append((event, frame))
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        self._scheduled = False
        while self._outbox:
            event, frame = self._outbox.popleft()
            for queue, filters in list(self.subscribers.items()):
                if frame is not None and not filters.accepts(frame):
                    continue
                if queue.qsize() >= _SUBSCRIBER_BACKLOG:
                    # A subscriber that cannot keep up is cut off, never silently thinned.
                    del self.subscribers[queue]
                    queue.put_nowait(None)
                    continue
                queue.put_nowait(event)


class ControlServer:
    def __init__(
        self,
        proxy: ProxyServer,
        feed: LiveFeed,
        token: str,
        host: str,
        port: int,
        reload: Callable[[], Reloaded] | None = None,
    ) -> None:
        self.proxy = proxy
        self.reload = reload  # what SIGHUP runs; None: this proxy has no config to re-read
        self.feed = feed
        self.token = token
        self.host = host
        self.port = port
        self._server: Server | None = None

    async def start(self) -> ControlServer:
        try:
            self._server = await serve(
                self._handle, self.host, self.port, process_request=self._authorise
            )
        except OSError as exc:
            raise ProxyError(
                f"cannot listen for control on {self.host}:{self.port}: {exc.strerror}"
            ) from exc
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _authorise(self, connection: ServerConnection, request: HttpRequest) -> Response | None:
        given = request.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip(), self.token):
            return None
        remote = connection.remote_address
        log.warning(
            "control request refused (%s token) from %s", "wrong" if given else "no", remote
        )
        return connection.respond(401, "a valid control token is required\n")

    async def _handle(self, connection: ServerConnection) -> None:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        async with asyncio.TaskGroup() as group:
            pusher = group.create_task(self._push(connection, queue))
            try:
                async for message in connection:
                    group.create_task(self._answer(connection, message, queue))
            except ConnectionClosed:
                pass  # a client that vanished without a close handshake: nothing to answer
            finally:
                self.feed.subscribers.pop(queue, None)
                pusher.cancel()

    async def _push(
        self, connection: ServerConnection, queue: asyncio.Queue[dict[str, Any] | None]
    ) -> None:
        while True:
            event = await queue.get()
            if event is None:
                await connection.close(1008, "subscriber too slow: frames would be lost")
                return
            try:
                await connection.send(json.dumps(event))
            except ConnectionClosed:
                return

    async def _answer(
        self,
        connection: ServerConnection,
        message: str | bytes,
        queue: asyncio.Queue[dict[str, Any] | None],
    ) -> None:
        request_id = protocol.request_id(message)
        try:
            request = protocol.parse_request(message)
            result = await self._dispatch(request, queue)
            reply = protocol.ok(request_id, result)
        except OcproxyError as exc:
            reply = protocol.failed(request_id, str(exc))
        except TimeoutError:
            reply = protocol.failed(request_id, "no answer before the timeout")
        try:
            await connection.send(reply)
        except ConnectionClosed:
            return

    async def _dispatch(
        self, request: protocol.Request, queue: asyncio.Queue[dict[str, Any] | None]
    ) -> Any:
        if request.op == "connections":
            return [_describe(s) for s in self.proxy.sessions]
        if request.op == "subscribe":
            self.feed.subscribers[queue] = protocol.parse_filters(request)
            return {"subscribed": True}
        if request.op == "sql":
            return await self._sql(request)
        if request.op == "inject":
            return await self._inject(request)
        if request.op == "reload":
            if self.reload is None:
                raise ControlError("reload: this proxy has no configuration to re-read")
            return self.reload().as_json()
        return await self._close(request)

    async def _sql(self, request: protocol.Request) -> dict[str, Any]:
        query = request.text("query")
        assert query is not None
        limit = int(request.params.get("limit", 10_000))
        params = request.params.get("params") or None
        if params is not None and not isinstance(params, dict):
            raise ControlError("sql: params must be an object of name: value")
        recorder = self.proxy.recorder
        if not isinstance(recorder, Recorder):  # the control endpoint runs the recorder in-process
            raise ControlError("sql: this proxy's recording is not reachable live")
        result = await asyncio.wrap_future(recorder.query(query, limit, params))
        # With --rotate the query ran on the current file only: the answer names it.
        return {
            "columns": result.columns,
            "rows": result.rows,
            "truncated": result.truncated,
            "file": result.file,
            "rotating": recorder.rotation is not None,
        }

    async def _inject(self, request: protocol.Request) -> dict[str, Any]:
        session = self._session(request)
        action = request.text("action")
        assert action is not None
        payload = request.params.get("payload", {})
        if not isinstance(payload, dict):
            raise ControlError("inject: payload must be a JSON object")
        to = Direction.TO_CSMS if request.params.get("to") == "csms" else Direction.TO_CHARGER
        version = ocpp_version(session.subprotocol)
        if version is not None and action not in schemas.actions(version):
            raise ControlError(f"inject: {action!r} is not an OCPP {version} action")
        if version is not None and not request.params.get("force"):
            violation = schemas.validate(version, action, payload, response=False)
            if violation is not None:
                raise ControlError(f"inject: {violation.message} (use force to send anyway)")
        timeout = float(request.params.get("timeout", 30.0))
        answer = await session.inject(to, action, payload, answer_within=timeout)
        return {"connection_id": session.connection_id, "answer": json.loads(answer)}

    async def _close(self, request: protocol.Request) -> dict[str, Any]:
        session = self._session(request)
        code = int(request.params.get("code", 1000))
        reason = str(request.params.get("reason", "closed by ocproxy control"))
        await session.shutdown(code, reason)
        return {"connection_id": session.connection_id, "code": code}

    def _session(self, request: protocol.Request) -> Session:
        wanted_id = request.params.get("connection_id")
        identity = request.params.get("identity")
        for session in self.proxy.sessions:
            if session.connection_id == wanted_id or (
                wanted_id is None and session.identity == identity
            ):
                return session
        missing = (
            no_live_connection(identity)
            if wanted_id is None
            else f"no live connection {wanted_id!r}"
        )
        raise ControlError(f"{request.op}: {missing}")


def _describe(session: Session) -> dict[str, Any]:
    return {
        "connection_id": session.connection_id,
        "identity": session.identity,
        "subprotocol": session.subprotocol,
        "opened_at": session.opened_at,
        "frames": session.frames,
    }
