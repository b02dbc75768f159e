"""One relayed connection: two pumps, one per direction, and the close that ends both.

Each pump reads a whole message from one leg, gives it a ``seq``, hands it to the
recorder (never blocking; waiting only when the recorder's queue is full) and sends
the same bytes with the same opcode on the other leg. The first leg to close decides
``closed_by`` and the close code the other leg gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from websockets.exceptions import ConnectionClosed, PayloadTooBig
from websockets.frames import Close, CloseCode
from websockets.protocol import State

from ocproxy.core.events import ClosedBy, FrameReceived
from ocproxy.core.events import ConnectionClosed as ClosedEvent
from ocproxy.core.frames import CallError, CallResult, Direction, parse_frame
from ocproxy.core.frames import Opcode as FrameOpcode
from ocproxy.errors import InjectError
from ocproxy.proxy.legs import ChargerLeg, CsmsLeg, RelayedChargerLeg, RelayedCsmsLeg
from ocproxy.proxy.mirror import Mirror
from ocproxy.recorder.process import EventSink

# Codes a peer may put in a Close frame (RFC 6455 §7.4); 1005, 1006 and 1015 are
# only ever *reported*, never sent.
_UNSENDABLE = frozenset({1004, 1005, 1006, 1015})
RelayedLeg = RelayedChargerLeg | RelayedCsmsLeg


@dataclass(frozen=True)
class CloseDecision:
    """How a leg ended, and what to send on the other leg."""

    closed_by: ClosedBy
    code: int  # as recorded: 1006 when the peer vanished without a Close frame
    reason: str
    mirror_code: int | None  # None: send a Close frame without a code (mirrors 1005)
    mirror_reason: str


def decide_close(leg: ChargerLeg | CsmsLeg, side: ClosedBy) -> CloseDecision:
    """Read how ``leg`` closed; ``side`` is the peer at its far end."""
    protocol = leg.protocol
    rcvd, sent = protocol.close_rcvd, protocol.close_sent
    if rcvd is not None and (sent is None or protocol.close_rcvd_then_sent):
        return _mirror(side, rcvd)
    if sent is not None:
        # websockets failed this leg itself: too big (1009), protocol error, ping timeout.
        mirror = sent.code if sent.code not in _UNSENDABLE else int(CloseCode.GOING_AWAY)
        return CloseDecision(ClosedBy.PROXY, int(sent.code), sent.reason, mirror, sent.reason)
    return CloseDecision(
        side,
        int(CloseCode.ABNORMAL_CLOSURE),
        "",
        int(CloseCode.GOING_AWAY),
        f"{side} connection lost",
    )


def _mirror(side: ClosedBy, close: Close) -> CloseDecision:
    code = int(close.code)
    if code == CloseCode.NO_STATUS_RCVD:
        return CloseDecision(side, code, "", None, "")
    if code in _UNSENDABLE:
        return CloseDecision(side, code, close.reason, int(CloseCode.GOING_AWAY), close.reason)
    return CloseDecision(side, code, close.reason, code, close.reason)


class Session:
    """Relays one charger connection to its CSMS connection until either closes."""

    def __init__(
        self,
        connection_id: str,
        identity: str,
        charger: RelayedChargerLeg,
        csms: RelayedCsmsLeg,
        recorder: EventSink,
        clock: Callable[[], float] = time.time,
        mirror: Mirror | None = None,
    ) -> None:
        self.connection_id = connection_id
        self.mirror = mirror
        self.identity = identity
        self.charger = charger
        self.csms = csms
        self.recorder = recorder
        self.clock = clock
        self._seq = 0
        self._decision: CloseDecision | None = None
        # Injected CALLs awaiting their answer, by the direction they were sent in. One per
        # direction: OCPP allows one outstanding CALL per direction.
        self._injected: dict[Direction, tuple[str, asyncio.Future[bytes]]] = {}
        self.opened_at = clock()
        self.subprotocol = charger.subprotocol

    async def run(self) -> CloseDecision:
        """Relay both ways; return how the connection ended once both legs are closed."""
        async with asyncio.TaskGroup() as outer:
            mirroring = None if self.mirror is None else outer.create_task(self.mirror.run(self))
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pump(self.charger, self.csms, Direction.TO_CSMS))
                group.create_task(self._pump(self.csms, self.charger, Direction.TO_CHARGER))
            if self.mirror is not None and mirroring is not None:
                await self.mirror.close()
                if not self.mirror.connected:
                    mirroring.cancel()  # still dialling the secondary: nothing to close
        for _message_id, answer in self._injected.values():
            if not answer.done():
                answer.set_exception(InjectError(f"{self.identity} disconnected"))
        assert self._decision is not None
        decision = self._decision
        self.recorder.submit(
            ClosedEvent(
                self.connection_id,
                self.clock(),
                decision.code,
                decision.reason,
                decision.closed_by,
            )
        )
        return decision

    async def shutdown(self, code: int = 1001, reason: str = "proxy shutting down") -> None:
        """Close both legs on the proxy's own initiative (SIGTERM, control endpoint)."""
        # A leg that already ended on its own decided, even if its pump has not run yet.
        for leg, direction in (
            (self.charger, Direction.TO_CSMS),
            (self.csms, Direction.TO_CHARGER),
        ):
            if leg.connection_lost_waiter.done():
                self._leg_ended(leg, direction)
        if self._decision is None:
            self._decision = CloseDecision(ClosedBy.PROXY, code, reason, code, reason)
        await asyncio.gather(self.charger.close(code, reason), self.csms.close(code, reason))

    async def _pump(self, src: RelayedLeg, dst: RelayedLeg, direction: Direction) -> None:
        """Relay ``src`` to ``dst`` until ``src`` ends; pause it while either side is behind.

        The messages themselves are relayed in ``src``'s data callback (``_relay``);
        this coroutine only waits: for the end of ``src``, or for a stall, when it
        waits for the recorder and ``dst``'s write buffer before reading again.
        """
        flow = _Flow(asyncio.get_running_loop())
        lost = src.connection_lost_waiter
        lost.add_done_callback(flow.wake_up)
        src.relay_to(functools.partial(self._relay, direction, src, dst, flow))
        while not lost.done():
            await flow.wait()
            if flow.stalled and not lost.done():
                await self.recorder.wait_for_room()
                with contextlib.suppress(Exception):  # dst ended: its own pump handles that
                    await dst.drain()
                flow.stalled = False
                if not lost.done():
                    src.transport.resume_reading()
        await self._source_closed(src, dst, direction)

    def _relay(
        self,
        direction: Direction,
        src: RelayedLeg,
        dst: RelayedLeg,
        flow: _Flow,
        data: bytes,
        opcode: FrameOpcode,
    ) -> None:
        """One whole message from ``src``: record it, then forward it (or swallow it)."""
        if self._injected and self._answers_injection(data, direction):
            return
        mirror = self.mirror if direction is Direction.TO_CSMS else None
        if mirror is not None and mirror.answers_forwarded(data):
            self._submit(direction, data, opcode, injected=True)  # for the secondary only
            return
        self._submit(direction, data, opcode)
        # A frame for a leg that is closing is recorded but cannot be delivered; the
        # pump reading that leg sees its close and handles it.
        if dst.forward(data, opcode) and mirror is not None:
            mirror.offer(data, opcode)
        # A closing leg is never paused: its closing handshake needs its Close frame read.
        if (
            (dst.paused or self.recorder.congested)
            and not flow.stalled
            and src.protocol.state is State.OPEN
        ):
            flow.stalled = True
            src.transport.pause_reading()
            flow.wake_up()

    async def _source_closed(self, src: RelayedLeg, dst: RelayedLeg, direction: Direction) -> None:
        await src.wait_closed()
        self._leg_ended(src, direction)
        decision = self._decision
        assert decision is not None
        if decision.mirror_code is None:
            await dst.close(code=None, reason="")  # type: ignore[arg-type]
        else:
            await dst.close(decision.mirror_code, decision.mirror_reason)

    def _leg_ended(self, src: RelayedLeg, direction: Direction) -> None:
        """The first leg to end decides how the connection ended."""
        if self._decision is None:
            side = ClosedBy.CHARGER if direction is Direction.TO_CSMS else ClosedBy.CSMS
            self._decision = decide_close(src, side)
            self._record_too_large(src, direction)

    def _record_too_large(self, src: RelayedLeg, direction: Direction) -> None:
        exc = src.protocol.parser_exc
        if not isinstance(exc, PayloadTooBig):
            return
        # Unknown size when decompression went over the limit: record the least it was.
        size = exc.max_size + 1 if exc.size is None else exc.size + (exc.current_size or 0)
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

    async def inject(
        self, to: Direction, action: str, payload: dict[str, Any], answer_within: float
    ) -> bytes:
        """Send a CALL of the proxy's own towards ``to``; return the raw answer.

        The CALL and its answer are recorded with ``injected`` set; the answer is never
        forwarded. Raises InjectError when a CALL is already outstanding that way,
        TimeoutError when no answer comes in time.
        """
        if to in self._injected:
            raise InjectError(
                f"an injected CALL to the {_peer(to)} of {self.identity} is still unanswered; "
                "OCPP allows one outstanding CALL per direction: retry when it is answered"
            )
        message_id = str(uuid.uuid4())  # cannot collide with the peers' own ids
        data = json.dumps([2, message_id, action, payload], separators=(",", ":")).encode()
        answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._injected[to] = (message_id, answer)
        try:
            self._submit(to, data, FrameOpcode.TEXT, injected=True)
            leg = self.charger if to is Direction.TO_CHARGER else self.csms
            try:
                await leg.send_message(data, FrameOpcode.TEXT)
            except ConnectionClosed as exc:
                raise InjectError(f"{self.identity}: the {_peer(to)} leg is closed") from exc
            async with asyncio.timeout(answer_within):
                return await answer
        finally:
            del self._injected[to]

    def _answers_injection(self, data: bytes, direction: Direction) -> bool:
        """Swallow (record, never forward) the answer to a CALL the proxy injected."""
        pending = self._injected.get(direction.reverse)
        if pending is None:
            return False
        frame = parse_frame(data)
        if not isinstance(frame, CallResult | CallError) or frame.message_id != pending[0]:
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

    async def forward_from_mirror(self, data: bytes) -> None:
        """A CALL the secondary CSMS may send: to the charger, recorded as injected."""
        self._submit(Direction.TO_CHARGER, data, FrameOpcode.TEXT, injected=True)
        with contextlib.suppress(ConnectionClosed):
            await self.charger.send_message(data, FrameOpcode.TEXT)

    @property
    def frames(self) -> int:
        """Frames relayed (and injected) so far on this connection."""
        return self._seq

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq += 1
        return seq


class _Flow:
    """Wakes a pump when its leg ends or must stop reading for a while."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._future: asyncio.Future[None] = loop.create_future()
        self.stalled = False

    def wake_up(self, _: object = None) -> None:
        if not self._future.done():
            self._future.set_result(None)

    async def wait(self) -> None:
        await self._future
        self._future = self._loop.create_future()


def _peer(direction: Direction) -> str:
    return "charger" if direction is Direction.TO_CHARGER else "CSMS"
