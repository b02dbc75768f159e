"""Mirroring a charger to a second CSMS, to evaluate or migrate to another network.

The secondary gets a copy of every message the charger sends to the primary, on its own
connection, recorded as a connection of its own (``mirror_of`` names the charger's).
Its answers are recorded and never forwarded. Its own CALLs reach the charger only for
the actions the route allows (then recorded on the charger's connection as injected,
and the charger's answer goes back to the secondary only); others are refused with a
CALLERROR from the proxy. Nothing the secondary does, including dying, can disturb the
primary leg: copies go through a bounded queue. A copy that finds the queue full is
dropped and counted; a secondary that stays that far behind for ``behind_limit``
seconds has its leg closed, recorded with the count and the reason (the next connection
of the charger is mirrored again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from ocproxy.core.events import ClosedBy, ConnectionOpened, FrameReceived
from ocproxy.core.events import ConnectionClosed as ClosedEvent
from ocproxy.core.frames import Call, CallError, CallResult, Direction, Opcode, parse_frame
from ocproxy.core.handshake import identity_from_path, redact_url
from ocproxy.proxy.config import MirrorRoute, ProxyConfig
from ocproxy.proxy.legs import CsmsLeg
from ocproxy.proxy.tls import upstream_context
from ocproxy.proxy.upstream import csms_request_headers
from ocproxy.recorder.process import EventSink

if TYPE_CHECKING:
    from websockets.http11 import Request

    from ocproxy.proxy.relay import Session

_BACKLOG = 1_000
_AWAITED = 64  # the secondary's answers owed that closing waits for (see Mirror)


class Mirror:
    behind_limit = 30.0  # seconds a secondary may stay a full backlog behind

    def __init__(
        self,
        route: MirrorRoute,
        request: Request,
        config: ProxyConfig,
        recorder: EventSink,
        clock: Callable[[], float],
    ) -> None:
        self.route = route
        self.request = request
        self.config = config
        self.recorder = recorder
        self.clock = clock
        self.connection_id = str(uuid.uuid4())
        self.url = route.upstream.rstrip("/") + request.path
        self.identity = identity_from_path(request.path)
        self.dropped = 0  # copies the secondary never got: it was behind
        self._behind_since: float | None = None
        self._gave_up: str | None = None
        self.recorded_close = False  # the secondary's leg is over and recorded so
        self._queue: asyncio.Queue[tuple[bytes, Opcode]] = asyncio.Queue(_BACKLOG)
        self._leg: CsmsLeg | None = None
        self._seq = 0
        self._alive = True
        # ids of the secondary's CALLs forwarded to the charger, awaiting its answer
        self._forwarded: set[str] = set()
        # ids of the charger's CALLs copied to the secondary, awaiting the secondary's
        # answer; when none is (and no copy waits to go), the leg may close without
        # cutting an answer off. The latest _AWAITED only: a secondary that never answers
        # must not grow it for the weeks a charger stays.
        self._awaiting: dict[str, None] = {}
        self._settled = asyncio.Event()
        self._finished = asyncio.Event()  # run() is over: the leg's close is recorded

    # -- called by the charger's session -----------------------------------------

    def offer(self, data: bytes, opcode: Opcode) -> None:
        """A copy of a charger message; never blocks the primary leg."""
        if not self._alive:
            return
        try:
            self._queue.put_nowait((data, opcode))
        except asyncio.QueueFull:
            self._behind(asyncio.get_running_loop().time())
            return
        self._behind_since = None

    def _behind(self, now: float) -> None:
        """The secondary is a whole backlog behind: drop this copy; give up after a while."""
        self.dropped += 1
        if self._behind_since is None:
            self._behind_since = now
            return
        if now - self._behind_since < self.behind_limit or self._leg is None:
            return
        self._alive = False
        self._gave_up = (
            f"secondary fell behind: {self.dropped} copies dropped, "
            f"{_BACKLOG} waiting for over {self.behind_limit:g} s"
        )
        # A close frame would wait behind everything it has not read: cut the TCP
        # connection. That ends run(), which records the close with this reason.
        self._leg.transport.abort()

    def answers_forwarded(self, data: bytes) -> bool:
        """Is this charger message the answer to a CALL the secondary sent it?"""
        if not self._forwarded:
            return False
        frame = parse_frame(data)
        if isinstance(frame, CallResult | CallError) and frame.message_id in self._forwarded:
            self._forwarded.discard(frame.message_id)
            self.offer(data, Opcode.TEXT)
            return True
        return False

    async def run(self, session: Session) -> None:
        """Mirror until the charger's session ends or the secondary goes; never raises."""
        try:
            await self._run(session)
        finally:
            self._finished.set()

    async def _run(self, session: Session) -> None:
        leg = await self._open(session)
        if leg is None:
            return
        self._leg = leg
        try:
            async with asyncio.TaskGroup() as group:
                sender = group.create_task(self._send(leg))
                await self._receive(leg, session)
                sender.cancel()
        except Exception as exc:  # the secondary's troubles stay here
            self._closed(ClosedBy.PROXY, None, f"mirror failed: {type(exc).__name__}: {exc}")
            return
        self._closed_from(leg)

    @property
    def connected(self) -> bool:
        return self._leg is not None

    def _check_settled(self) -> None:
        if not self._awaiting and self._queue.empty():
            self._settled.set()

    async def close(self) -> None:
        """The charger is gone: close the secondary's leg, once it has answered what it
        was sent (for at most close_timeout), so that no answer is cut off."""
        if self._leg is not None and self._alive:
            self._check_settled()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.close_timeout):
                    await self._settled.wait()
        self._alive = False
        if self._leg is not None:
            await self._leg.close(1001, "charger disconnected")
            # run() records the close once its reader has seen it; the session cancels
            # run() as soon as this returns, which left mirror legs without a close.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.close_timeout):
                    await self._finished.wait()

    # -- the secondary leg ----------------------------------------------------------

    async def _open(self, session: Session) -> CsmsLeg | None:
        tls = None
        if self.url.startswith("wss:"):
            tls = upstream_context(
                self.config.upstream_ca, None, None, self.config.insecure_upstream
            )
        offered = [Subprotocol(session.subprotocol)] if session.subprotocol else None
        status, detail = 101, ""
        leg: CsmsLeg | None = None
        try:
            opened = await connect(
                self.url,
                ssl=tls,
                subprotocols=offered,
                additional_headers=csms_request_headers(self.request, None, False),
                user_agent_header=None,
                open_timeout=self.config.connect_timeout,
                close_timeout=self.config.close_timeout,
                create_connection=CsmsLeg,
                proxy=None,
            )
            assert isinstance(opened, CsmsLeg)
            leg = opened
        except InvalidStatus as exc:
            status = exc.response.status_code
            detail = f"secondary refused: HTTP {status}"
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            status = 502
            detail = f"secondary unreachable: {exc}"
        self._record_open(session, status, leg)
        if leg is None:
            self._closed(ClosedBy.CSMS if status != 502 else ClosedBy.PROXY, None, detail)
            return None
        return leg

    async def _send(self, leg: CsmsLeg) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                data, opcode = await self._queue.get()
                self._record(Direction.TO_CSMS, data, opcode)
                frame = parse_frame(data)
                if isinstance(frame, Call):
                    self._awaiting[frame.message_id] = None
                    if len(self._awaiting) > _AWAITED:
                        del self._awaiting[next(iter(self._awaiting))]
                    self._settled.clear()
                await leg.send_message(data, opcode)
                self._check_settled()

    async def _receive(self, leg: CsmsLeg, session: Session) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                data, opcode = await leg.recv_message()
                self._record(Direction.TO_CHARGER, data, opcode)
                frame = parse_frame(data)
                if isinstance(frame, Call):
                    await self._secondary_call(leg, session, frame, data)
                elif isinstance(frame, CallResult | CallError):
                    self._awaiting.pop(frame.message_id, None)
                    self._check_settled()
        self._alive = False

    async def _secondary_call(
        self, leg: CsmsLeg, session: Session, frame: Call, data: bytes
    ) -> None:
        if frame.action in self.route.allow_actions:
            self._forwarded.add(frame.message_id)
            await session.forward_from_mirror(data)
            return
        refusal = json.dumps(
            [
                4,
                frame.message_id,
                "SecurityError",
                f"ocproxy mirror: {frame.action} from the secondary CSMS is not allowed",
                {},
            ],
            separators=(",", ":"),
        ).encode()
        self._record(Direction.TO_CSMS, refusal, Opcode.TEXT, injected=True)
        await leg.send_message(refusal, Opcode.TEXT)

    # -- recording ------------------------------------------------------------------

    def _record(
        self, direction: Direction, data: bytes, opcode: Opcode, *, injected: bool = False
    ) -> None:
        self.recorder.submit(
            FrameReceived(
                self.connection_id,
                self._seq,
                self.clock(),
                direction,
                opcode,
                data,
                len(data),
                identity=self.identity,
                injected=injected,
            )
        )
        self._seq += 1

    def _record_open(self, session: Session, status: int, leg: CsmsLeg | None) -> None:
        self.recorder.submit(
            ConnectionOpened(
                connection_id=self.connection_id,
                ts=self.clock(),
                identity=session.identity,
                path=self.request.path,
                remote_addr=None,
                offered_subprotocols=(session.subprotocol,) if session.subprotocol else (),
                subprotocol=None if leg is None else leg.subprotocol,
                upstream_url=redact_url(self.url),
                handshake_status=status,
                source="mirror",
                run_id=self.recorder.run_id,
                mirror_of=session.connection_id,
            )
        )

    def _closed_from(self, leg: CsmsLeg) -> None:
        rcvd, sent = leg.protocol.close_rcvd, leg.protocol.close_sent
        if self._gave_up is not None:
            self._closed(ClosedBy.PROXY, 1006, self._gave_up)
        elif rcvd is not None and (sent is None or leg.protocol.close_rcvd_then_sent):
            self._closed(ClosedBy.CSMS, int(rcvd.code), rcvd.reason)
        elif sent is not None:
            self._closed(ClosedBy.PROXY, int(sent.code), sent.reason)
        else:
            self._closed(ClosedBy.CSMS, 1006, "secondary connection lost")

    def _closed(self, by: ClosedBy, code: int | None, reason: str) -> None:
        self.recorded_close = True
        if self.dropped and self._gave_up is None:
            reason = f"{reason}; {self.dropped} copies dropped (secondary behind)".lstrip("; ")
        self.recorder.submit(ClosedEvent(self.connection_id, self.clock(), code, reason, by))
