"""One relayed connection: the peers' frames pass through, a copy of each message is recorded.

After both opening handshakes, each leg's bytes go to a :class:`~ocproxy.core.wire.WireReader`
in the leg's data callback; what it returns is written to the other leg at once, in the
same callback: the peer's own frames, masking keys and compression included. No task,
future or queue per message, and no re-framing. Each whole message is handed to the
recorder with the connection's next ``seq``.

The proxy's own frames (injected CALLs, the secondary CSMS's allowed CALLs, keepalive
pings, its closes) go in only between messages, uncompressed (always allowed under
permessage-deflate); its pongs and the answers to its CALLs come out. The first leg to
close decides ``closed_by`` and the code; the peers' close frames pass through, so the
closing handshake is theirs, end to end.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from ocproxy.core.events import ClosedBy, FrameReceived
from ocproxy.core.events import ConnectionClosed as ClosedEvent
from ocproxy.core.frames import CallError, CallResult, Direction, parse_frame
from ocproxy.core.frames import Opcode as FrameOpcode
from ocproxy.core.wire import Deflate, WireOpcode, WireReader, close_payload, frame, parse_close
from ocproxy.errors import InjectError
from ocproxy.proxy.legs import RelayedChargerLeg, RelayedCsmsLeg
from ocproxy.proxy.mirror import Mirror
from ocproxy.recorder.process import EventSink

RelayedLeg = RelayedChargerLeg | RelayedCsmsLeg
_OPCODES: dict[int, FrameOpcode] = {
    WireOpcode.TEXT: FrameOpcode.TEXT,
    WireOpcode.BINARY: FrameOpcode.BINARY,
}
_GOING_AWAY = 1001


@dataclass(frozen=True)
class CloseDecision:
    """How a connection ended: who ended it, and the code and reason it was ended with."""

    closed_by: ClosedBy
    code: int  # as recorded: 1006 when the peer vanished without a close frame
    reason: str


@dataclass(frozen=True)
class Timeouts:
    close: float = 10.0  # after a close frame, how long a leg may take to end its TCP
    max_size: int = 16 * 1024 * 1024


# Shared by every leg with nothing waiting (never appended to: a leg gets a list of its
# own when it has something): four empty lists per charger were 224 bytes.
_NO_PENDING: list[tuple[bytes, Callable[[], None] | None]] = []
_NO_HELD: list[bytes] = []


class _Side:
    """One leg as the relay drives it; the reader of what its peer sends."""

    __slots__ = (
        "_timer",
        "client",
        "direction",
        "failure",
        "got_close",
        "held",
        "leg",
        "lost",
        "other",
        "own_close",
        "peer",
        "pending",
        "ping_token",
        "pinged_at",
        "reader",
        "seen",
        "sent_close",
        "session",
    )

    def __init__(
        self, session: Session, leg: RelayedLeg, peer: ClosedBy, deflate: Deflate | None
    ) -> None:
        self.session = session
        self.leg, self.held = leg.take_over()
        self.peer = peer
        self.direction = Direction.TO_CSMS if peer is ClosedBy.CHARGER else Direction.TO_CHARGER
        self.client = peer is ClosedBy.CSMS  # the proxy is this leg's client: it masks
        self.reader = WireReader(
            self,
            masked=peer is ClosedBy.CHARGER,
            deflate=deflate,
            max_size=session.timeouts.max_size,
        )
        self.other: _Side = self
        # Own data frames for this leg waiting for a message boundary, and what to do as
        # each goes out.
        self.pending: list[tuple[bytes, Callable[[], None] | None]] = _NO_PENDING
        self.failure: tuple[int, str, int | None] | None = None
        self.sent_close = False
        self.got_close = False
        self.own_close = False  # the close sent here was the proxy's: swallow the reply
        self.lost = False
        self.ping_token: bytes | None = None  # of the proxy's unanswered keepalive ping
        self.pinged_at = 0.0
        self.seen = -1  # leg.received at the last keepalive sweep
        self._timer: asyncio.TimerHandle | None = None

    # -- bytes from this leg ------------------------------------------------------

    def received(self, data: bytes) -> None:
        out = self.reader.feed(data)
        other = self.other
        if out and not other.lost:
            transport = other.leg.transport
            if len(out) == 1:
                transport.write(out[0])
            else:
                transport.writelines(out)
        if other.pending and not self.reader.in_message:
            other.flush_pending()
        failure, self.failure = self.failure, None
        if failure is not None:
            # After the frames of the same read that came before the bad one.
            self.session.violation(self, *failure)
            return
        session = self.session
        if self.got_close or other.got_close:  # only then can a closing handshake be done
            session.settle()
        if other.leg.paused or session.recorder.congested:
            session.stall(self)

    def leg_lost(self) -> None:
        self.session._lost(self)

    def leg_resumed(self) -> None:
        self.session._resume(self.other)

    # -- WireEvents ---------------------------------------------------------------

    def message(self, opcode: int, payload: bytes, compressed: bool) -> bool:
        # An IntEnum hashes as its int: no WireOpcode(opcode) (~0.15 us) per message.
        return self.session.message(self, _OPCODES[opcode], payload)

    def control(self, opcode: int, payload: bytes) -> bool:
        if opcode == WireOpcode.PONG:
            if self.ping_token is not None and payload == self.ping_token:
                self.ping_token = None
                return False
            return not self.other.sent_close
        if opcode == WireOpcode.PING:
            return not self.other.sent_close
        return self.session.close_frame(self, payload)

    def failed(self, code: int, reason: str, size: int | None) -> None:
        self.failure = (code, reason, size)  # acted on once the read is forwarded

    # -- frames of the proxy's own ---------------------------------------------------

    def send_own(
        self,
        payload: bytes,
        opcode: int = WireOpcode.TEXT,
        sent: Callable[[], None] | None = None,
    ) -> None:
        """A frame of the proxy's own to this leg, between the messages relayed to it.

        ``sent`` is called as it goes out (an injected CALL is recorded then, in the
        order it crossed, not when it was queued behind a fragmented message)."""
        data = frame(opcode, payload, mask=self.client)
        if opcode & 0x8 or not self.other.reader.in_message:
            if sent is not None:
                sent()
            self.leg.transport.write(data)
        elif self.pending:
            self.pending.append((data, sent))
        else:
            self.pending = [(data, sent)]

    def flush_pending(self) -> None:
        pending, self.pending = self.pending, _NO_PENDING
        if self.lost or self.sent_close:
            return  # never sent, so never recorded
        for data, sent in pending:
            if sent is not None:
                sent()
            self.leg.transport.write(data)

    def send_close(self, code: int | None, reason: str) -> None:
        if self.sent_close or self.lost:
            return
        self.sent_close = self.own_close = True
        self.send_own(close_payload(code, reason), WireOpcode.CLOSE)

    def handshake_done(self, timeout: float) -> None:
        """Both close frames have crossed this leg: end its TCP connection.

        The server ends it (RFC 6455 7.1.1); as the client, the proxy waits for the
        CSMS to, and gives up after ``timeout``."""
        if self.lost:
            return
        if self.client:
            self.deadline(timeout)
        else:
            self.leg.transport.close()

    def deadline(self, timeout: float) -> None:
        """A leg told to close that never ends its TCP connection is cut after ``timeout``."""
        if not self.lost and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(timeout, self.leg.transport.abort)

    def gone(self) -> None:
        self.lost = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Session:
    """Relays one charger connection to its CSMS connection until both legs are closed.

    Driven by the legs' callbacks from :meth:`start` on: no task per connection (only
    while the secondary CSMS of a mirror is dialled or the recorder is waited for)."""

    __slots__ = (
        "__weakref__",
        "_charger",
        "_csms",
        "_decision",
        "_ending",
        "_injected",
        "_on_end",
        "_seq",
        "_tasks",
        "_waiting",
        "clock",
        "connection_id",
        "deflate",
        "finished",
        "identity",
        "mirror",
        "opened_at",
        "recorder",
        "subprotocol",
        "timeouts",
    )

    def __init__(
        self,
        connection_id: str,
        identity: str,
        charger: RelayedChargerLeg,
        csms: RelayedCsmsLeg,
        recorder: EventSink,
        clock: Callable[[], float] = time.time,
        mirror: Mirror | None = None,
        *,
        deflate: Deflate | None = None,
        timeouts: Timeouts | None = None,
    ) -> None:
        self.connection_id = connection_id
        self.identity = identity
        self.recorder = recorder
        self.clock = clock
        self.mirror = mirror
        self.deflate = deflate
        self.timeouts = timeouts or Timeouts()
        self.opened_at = clock()
        self.subprotocol = charger.subprotocol
        self._seq = 0
        self._decision: CloseDecision | None = None
        self.finished: asyncio.Future[CloseDecision] = asyncio.get_running_loop().create_future()
        # The mirror's, the recorder wait; made when first needed (an empty set is 216
        # bytes, per charger).
        self._tasks: set[asyncio.Task[None]] | None = None
        self._waiting = False
        self._ending = False
        self._on_end: Callable[[Session], None] | None = None
        # Injected CALLs awaiting their answer, by the direction they were sent in. One per
        # direction: OCPP allows one outstanding CALL per direction.
        self._injected: dict[Direction, tuple[str, asyncio.Future[bytes]]] = {}
        # From here on the relay owns both transports; websockets lets go of them.
        self._charger = _Side(self, charger, ClosedBy.CHARGER, deflate)
        self._csms = _Side(self, csms, ClosedBy.CSMS, deflate)
        self._charger.other, self._csms.other = self._csms, self._charger

    def start(self, on_end: Callable[[Session], None] | None = None) -> None:
        """Relay both ways from now on; ``on_end`` once both legs are closed."""
        self._on_end = on_end
        if self.mirror is not None:
            self._track(self.mirror.run(self))
        for side in (self._charger, self._csms):
            side.leg.user = side
        for side in (self._charger, self._csms):
            held, side.held = side.held, _NO_HELD
            for data in held:
                side.received(data)
            if side.leg.lost:  # gone before the relay took it over
                self._lost(side)

    async def run(self) -> CloseDecision:
        """:meth:`start`, then wait for the end: how the connection ended."""
        self.start()
        return await self.finished

    def _track(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _end(self) -> None:
        """Both legs are closed: the mirror's leg goes too, then the close is recorded."""
        # Now, not after the mirror's close handshake: a slow secondary must not move
        # the time the charger's connection is recorded as closed.
        closed_at = self.clock()
        if self.mirror is not None:
            await self.mirror.close()
        for task in list(self._tasks or ()):
            if task is not asyncio.current_task():
                task.cancel()  # a mirror still dialling, a wait for the recorder
        for _message_id, answer in self._injected.values():
            if not answer.done():
                answer.set_exception(InjectError(f"{self.identity} disconnected"))
        decision = self._decision
        assert decision is not None
        self.recorder.submit(
            ClosedEvent(
                self.connection_id, closed_at, decision.code, decision.reason, decision.closed_by
            )
        )
        if self._on_end is not None:
            self._on_end(self)
        if not self.finished.done():
            self.finished.set_result(decision)

    async def shutdown(self, code: int = 1001, reason: str = "proxy shutting down") -> None:
        """Close both legs on the proxy's own initiative (SIGTERM, control endpoint)."""
        self._decide(CloseDecision(ClosedBy.PROXY, code, reason))
        for side in (self._charger, self._csms):
            side.send_close(code, reason)
        self.settle()
        for side in (self._charger, self._csms):
            side.deadline(self.timeouts.close)  # a peer that never answers the close
        await asyncio.shield(self.finished)

    # -- messages -------------------------------------------------------------------

    def message(self, src: _Side, opcode: FrameOpcode, payload: bytes) -> bool:
        """A whole message from ``src``'s peer: record it; False keeps it from the other."""
        direction = src.direction
        if self._injected and self._answers_injection(payload, direction):
            return False
        mirror = self.mirror if direction is Direction.TO_CSMS else None
        if mirror is not None and mirror.answers_forwarded(payload):
            self._submit(direction, payload, opcode, injected=True)  # for the secondary only
            return False
        self._submit(direction, payload, opcode)
        if src.other.sent_close:
            return False  # too late for the other peer: recorded, not delivered
        if mirror is not None:
            mirror.offer(payload, opcode)
        return True

    def _answers_injection(self, data: bytes, direction: Direction) -> bool:
        """Swallow (record, never forward) the answer to a CALL the proxy injected."""
        pending = self._injected.get(direction.reverse)
        if pending is None:
            return False
        parsed = parse_frame(data)
        if not isinstance(parsed, CallResult | CallError) or parsed.message_id != pending[0]:
            return False
        self._submit(direction, data, FrameOpcode.TEXT, injected=True)
        if not pending[1].done():
            pending[1].set_result(data)
        return True

    def _submit(
        self, direction: Direction, data: bytes, opcode: FrameOpcode, *, injected: bool = False
    ) -> None:
        seq = self._seq
        self._seq += 1
        self.recorder.submit_frame(
            self.connection_id, seq, self.clock(), direction, opcode, data, self.identity, injected
        )

    async def inject(
        self, to: Direction, action: str, payload: dict[str, Any], answer_within: float
    ) -> bytes:
        """Send a CALL of the proxy's own towards ``to``; return the raw answer.

        The CALL and its answer are recorded with ``injected`` set; the answer is never
        forwarded. Raises InjectError when a CALL is already outstanding that way or the
        leg is closing, TimeoutError when no answer comes in time.
        """
        if to in self._injected:
            raise InjectError(
                f"an injected CALL to the {_peer(to)} of {self.identity} is still unanswered; "
                "OCPP allows one outstanding CALL per direction: retry when it is answered"
            )
        side = self._charger if to is Direction.TO_CHARGER else self._csms
        if side.sent_close or side.lost:
            raise InjectError(f"{self.identity}: the {_peer(to)} leg is closed")
        if to is Direction.TO_CSMS and self.deflate and not self.deflate.server_no_context_takeover:
            raise InjectError(
                f"{self.identity}: the CSMS keeps its compression context across messages, "
                "so its answer could not be taken out of the stream"
            )
        message_id = str(uuid.uuid4())  # cannot collide with the peers' own ids
        data = json.dumps([2, message_id, action, payload], separators=(",", ":")).encode()
        answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._injected[to] = (message_id, answer)
        side.reader.hold = True  # a fragmented answer must be whole before it is kept back
        try:
            side.send_own(
                data, sent=lambda: self._submit(to, data, FrameOpcode.TEXT, injected=True)
            )
            async with asyncio.timeout(answer_within):
                return await answer
        finally:
            del self._injected[to]
            side.reader.hold = False

    async def forward_from_mirror(self, data: bytes) -> None:
        """A CALL the secondary CSMS may send: to the charger, recorded as injected."""
        if self._charger.sent_close or self._charger.lost:
            return
        self._charger.send_own(
            data,
            sent=lambda: self._submit(Direction.TO_CHARGER, data, FrameOpcode.TEXT, injected=True),
        )

    @property
    def frames(self) -> int:
        """Frames relayed (and injected) so far on this connection."""
        return self._seq

    # -- keepalive and flow control -------------------------------------------------

    def keepalive(self, now: float, ping_timeout: float) -> None:
        """One sweep: ping each leg silent since the last; fail one whose pong is late."""
        for side in (self._charger, self._csms):
            if side.lost or side.sent_close:
                continue
            if side.ping_token is not None:
                if now - side.pinged_at > ping_timeout:
                    self.violation(side, 1011, "keepalive ping timeout", None)
                continue
            received = side.leg.received
            if received == side.seen:
                side.ping_token = os.urandom(4)
                side.pinged_at = now
                side.send_own(side.ping_token, WireOpcode.PING)
            side.seen = received

    def stall(self, src: _Side) -> None:
        """Stop reading ``src`` while the other leg or the recorder is behind."""
        if src.reader.stopped or src.lost:
            return  # a closing leg is never paused: its peer's close must be read
        src.leg.transport.pause_reading()
        if self.recorder.congested and not self._waiting:
            self._waiting = True
            self._track(self._wait_for_room())

    async def _wait_for_room(self) -> None:
        try:
            await self.recorder.wait_for_room()
        finally:
            self._waiting = False
        self._resume(self._charger)
        self._resume(self._csms)

    def _resume(self, src: _Side) -> None:
        """Read ``src`` again once neither the other leg nor the recorder is behind."""
        if src.lost or src.other.leg.paused or self._waiting:
            return
        src.leg.transport.resume_reading()

    # -- closing --------------------------------------------------------------------

    def _decide(self, decision: CloseDecision) -> None:
        if self._decision is None:
            self._decision = decision

    def close_frame(self, src: _Side, payload: bytes) -> bool:
        """A close frame from ``src``'s peer; True passes it on to the other peer."""
        src.got_close = True
        code, reason = parse_close(payload)
        self._decide(CloseDecision(src.peer, code, reason))
        other = src.other
        if src.own_close or other.sent_close or other.lost:
            return False  # the answer to the proxy's own close, or nobody left to tell
        other.sent_close = True
        return True

    def violation(self, src: _Side, code: int, reason: str, size: int | None) -> None:
        """``src``'s peer broke the protocol or the size limit: fail both legs."""
        self._decide(CloseDecision(ClosedBy.PROXY, code, reason))
        if size is not None:
            self._record_too_large(src.direction, size)
        for side in (src, src.other):
            side.send_close(code, reason)
        src.leg.transport.close()  # its stream can no longer be read: no reply to wait for
        self.settle()

    def settle(self) -> None:
        """End the TCP connection of each leg whose closing handshake is complete."""
        for side in (self._charger, self._csms):
            if side.sent_close and side.got_close:
                side.handshake_done(self.timeouts.close)

    def _lost(self, side: _Side) -> None:
        side.gone()
        reason = f"{side.peer} connection lost"
        self._decide(CloseDecision(side.peer, 1006, ""))
        other = side.other
        if not other.lost:
            if not other.sent_close:
                other.send_close(_GOING_AWAY, reason)
            other.deadline(self.timeouts.close)
        if self._charger.lost and self._csms.lost and not self._ending:
            self._ending = True
            self._track(self._end())

    def _record_too_large(self, direction: Direction, size: int) -> None:
        self.recorder.submit(
            FrameReceived(
                self.connection_id,
                self._next_seq(),
                self.clock(),
                direction,
                None,
                None,
                size,
                too_large=True,
                identity=self.identity,
            )
        )

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq += 1
        return seq


def _peer(direction: Direction) -> str:
    return "charger" if direction is Direction.TO_CHARGER else "CSMS"
