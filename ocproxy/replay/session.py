"""One replayed connection: walk the steps, answer the peer, compare, record every frame.

Three tasks, all in one TaskGroup: the caller walks the steps (wait for the recorded
time scaled by ``speed`` and for the peer's requests recorded before the step, send,
wait for the answer, judge it); the receiver reads every frame (an answer goes to the
step waiting for it, a CALL from the peer is answered from the recording at once);
the watcher turns Ctrl-C into a clean close. Every frame sent or received is handed
to the recorder, so the replay is itself a recording.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from websockets.exceptions import ConnectionClosed

from ocproxy.core.events import FrameReceived
from ocproxy.core.frames import Call, CallError, CallResult, Direction, Opcode, Send, parse_frame
from ocproxy.proxy.legs import ChargerLeg, CsmsLeg
from ocproxy.proxy.server import wall_clock
from ocproxy.replay import script as rs
from ocproxy.replay.compare import (
    Difference,
    DiffKind,
    diff_payloads,
    judge_answer,
    judge_request,
    show,
    show_bytes,
)
from ocproxy.replay.output import ExchangeResult, Outcome
from ocproxy.replay.script import Expected, Role, Step, StepKind

if TYPE_CHECKING:
    from ocproxy.replay.runner import Context

Leg = CsmsLeg | ChargerLeg
# A compact answer to one of our CALLs (ids as _fresh_ids makes): found without parsing.
_ANSWER_HEAD = re.compile(rb'\A\[[34],"([0-9a-f-]{1,36})"')
_MATCH_SCAN = 64  # how many unused recorded requests of one action payload matching tries


@dataclass
class _Pending:
    step: Step
    future: asyncio.Future[bytes | None]


class Session:
    def __init__(self, ctx: Context, leg: Leg, connection_id: str) -> None:
        self.ctx, self.leg, self.connection_id = ctx, leg, connection_id
        self.script, self.options, self.report = ctx.script, ctx.options, ctx.report
        self.sends: Direction = ctx.script.role.sends
        self._seq = 0
        self._next_step = 0
        self._pending: dict[str, _Pending] = {}
        self._late: dict[str, ExchangeResult] = {}  # timed out, in case the answer still comes
        self._unused: dict[str, deque[Expected]] = {}  # per action, in recorded order
        for expected in ctx.script.expected:
            self._unused.setdefault(expected.action, deque()).append(expected)
        self._settled = [False] * len(ctx.script.expected)
        self._prefix = 0  # every expected request before this one is settled
        self._gave_up: set[int] = set()
        self._unexpected = 0
        self._values: dict[bytes, bytes] = {}  # recorded transactionId -> the replay's
        self._changed = asyncio.Event()
        self._closing = False  # we started the close
        self._receiver_done = False
        self._t0 = time.monotonic()
        self._ids = _fresh_ids()

    @property
    def stopped(self) -> bool:
        return self.report.interrupted or self._receiver_done

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._receive())
            watcher = group.create_task(self._watch())
            try:
                await self._send_steps()
                await self._wait_until(lambda: self._barrier(len(self._settled)))
                if self.script.role is Role.CSMS and self.script.source.closed_by == "charger":
                    await self._wait_until(lambda: self._receiver_done)  # as recorded
            finally:
                watcher.cancel()
                done = "interrupted" if self.report.interrupted else "finished"
                self._closing = not self._receiver_done
                await self.leg.close(1001 if self.report.interrupted else 1000, f"replay {done}")
        self._finish()
        self.ctx.record_close(self.connection_id, self.leg)

    # -- sending ---------------------------------------------------------------------

    async def _send_steps(self) -> None:
        recorder = self.ctx.recorder
        for position, step in enumerate(self.script.steps):
            await self._wait_turn(step)
            if recorder.congested:
                await recorder.wait_for_room()
            if self.stopped:
                return
            await self._perform(step)
            self._next_step = position + 1

    async def _wait_turn(self, step: Step) -> None:
        if self.options.speed is not None:
            due = self._t0 + (step.request.ts - self.script.start_ts) / self.options.speed
            await self._wait_until(lambda: False, due - time.monotonic())
        if not self._barrier(step.barrier):
            await self._wait_until(lambda: self._barrier(step.barrier))
            for ordinal in range(self._prefix, step.barrier):
                if not self._settled[ordinal]:  # not sent in time: stop waiting for it
                    self._settled[ordinal] = True
                    self._gave_up.add(ordinal)

    async def _wait_until(self, condition: Callable[[], bool], within: float | None = None) -> None:
        """Until ``condition`` holds, the session stops, or ``within`` (else --timeout) passes."""
        deadline = time.monotonic() + (self.options.timeout if within is None else within)
        while not self.stopped and not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._changed.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
            except TimeoutError:
                return

    def _barrier(self, count: int) -> bool:
        while self._prefix < count and self._settled[self._prefix]:
            self._prefix += 1
        return self._prefix >= count

    async def _perform(self, step: Step) -> None:
        request = step.request
        assert request.raw is not None
        opcode = request.opcode or Opcode.TEXT
        if step.kind is StepKind.RAW:  # malformed or unpaired: byte-exact, nothing to await
            await self._send(request.raw, opcode)
            self._done(step.action, Outcome.SAME)
            return
        message_id = next(self._ids)
        data = self._rewrite(rs.with_message_id(request.raw, message_id), request.ts)
        self.report.id_map.append((step.index, step.action, request.message_id or "", message_id))
        if step.kind is StepKind.SEND:
            await self._send(data, opcode)
            self._done(step.action, Outcome.SAME)
            return
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = _Pending(step, future)
        started = time.perf_counter()
        await self._send(data, opcode)
        if self._receiver_done and not future.done():
            future.set_result(None)  # closed while we sent: nothing will answer
        try:
            async with asyncio.timeout(self.options.timeout):
                answer = await future
        except TimeoutError:
            answer = None
        self._pending.pop(message_id, None)
        if answer is None:
            self._no_answer(step, message_id, data)
            return
        self.report.latencies_ms.append((time.perf_counter() - started) * 1000.0)
        self._judge(step, data, answer)

    def _rewrite(self, data: bytes, recorded_ts: float) -> bytes:
        data = rs.map_values(data, self._values)
        if self.options.shift_time:
            # Keep each timestamp's distance from when its frame was sent.
            data = rs.shift_timestamps(data, wall_clock() - recorded_ts)
        return data

    async def _send(self, data: bytes, opcode: Opcode) -> None:
        self._record(self.sends, data, opcode)
        if self.report.first_sent is None:
            self.report.first_sent = time.perf_counter()
        try:
            await self.leg.send_message(data, opcode)
        except ConnectionClosed:
            return  # the receiver sees the close and names the exchange it cut short

    def _judge(self, step: Step, sent: bytes, answer: bytes) -> None:
        recorded = None if step.response is None else step.response.raw
        judgement = judge_answer(recorded, answer, self.options.rules, step.action)
        old, new = judgement.recorded, judgement.replayed
        if isinstance(old, CallResult) and isinstance(new, CallResult):
            rs.learn_values(old.payload, new.payload, self._values)
        if not judgement.differences:
            self._done(step.action, Outcome.SAME)
            return
        self._result(step, judgement.differences, sent, answer)

    def _no_answer(self, step: Step, message_id: str, sent: bytes) -> None:
        if self.report.interrupted:
            self._done(step.action, Outcome.NOT_REPLAYED)
            return
        if self._receiver_done:
            detail = self._close_detail()
            self.report.failure = (
                f"exchange #{step.index} {step.action}: {detail} before its answer"
            )
            difference = Difference(DiffKind.CLOSED, "", None, detail)
        elif step.response is None:
            self._done(step.action, Outcome.SAME)  # unanswered then, unanswered now
            return
        else:
            waited = f"no answer in {self.options.timeout:g} s"
            difference = Difference(DiffKind.TIMEOUT, "", None, waited)
        self._late[message_id] = self._result(step, [difference], sent, None)

    def _result(
        self, step: Step, differences: list[Difference], sent: bytes, answer: bytes | None
    ) -> ExchangeResult:
        frames = (step.request.raw, sent, None if step.response is None else step.response.raw)
        kind = str(step.kind)
        result = ExchangeResult(
            step.index, step.action, kind, Outcome.DIFFERENT, differences, *frames, answer
        )
        self.report.add(result)
        self._tick()
        return result

    def _done(self, action: str, outcome: Outcome) -> None:
        self.report.count(action, outcome)
        self._tick()

    def _tick(self) -> None:
        self.report.last_done = time.perf_counter()
        self.ctx.progress()

    # -- receiving ---------------------------------------------------------------------

    async def _receive(self) -> None:
        leg, direction = self.leg, self.sends.reverse
        while True:
            try:
                data, opcode = await leg.recv_message()
            except ConnectionClosed:
                break
            self._record(direction, data, opcode)
            head = _ANSWER_HEAD.match(data)
            if head is None or not self._resolve(head.group(1).decode(), data):
                await self._dispatch(data)
        self._receiver_done = True
        self._wake_all()
        if not self._closing and self._next_step < len(self.script.steps):
            step = self.script.steps[self._next_step]
            self.report.failure = self.report.failure or (
                f"{self._close_detail()} before exchange #{step.index} {step.action}"
            )

    def _resolve(self, message_id: str, data: bytes) -> bool:
        pending = self._pending.pop(message_id, None)
        if pending is not None:
            if not pending.future.done():
                pending.future.set_result(data)
            return True
        late = self._late.pop(message_id, None)
        if late is not None:
            late.differences.append(Difference(DiffKind.LATE, "", None, show_bytes(data)))
            late.replay_response = data
            return True
        return False

    async def _dispatch(self, data: bytes) -> None:
        frame = parse_frame(data)
        if isinstance(frame, Call | Send):
            await self._answer(frame, data)
        elif not (
            isinstance(frame, CallResult | CallError) and self._resolve(frame.message_id, data)
        ):
            self.report.unsolicited_replayed += 1

    async def _answer(self, frame: Call | Send, data: bytes) -> None:
        expected = self._match(frame)
        if expected is None:
            await self._unexpected_request(frame, data)
            return
        answer, response = None, expected.response
        if isinstance(frame, Call) and response is not None and response.raw is not None:
            answer = self._rewrite(rs.with_message_id(response.raw, frame.message_id), response.ts)
            await self._send(answer, response.opcode or Opcode.TEXT)
        request = expected.request
        self.report.id_map.append(
            (expected.index, expected.action, request.message_id or "", frame.message_id)
        )
        self._settled[expected.ordinal] = True
        self._changed.set()
        late = expected.ordinal in self._gave_up
        rules = self.options.rules
        differences = judge_request(expected.payload, request.message_type, frame, rules, late=late)
        if not differences:
            self._done(expected.action, Outcome.SAME)
            return
        recorded = None if response is None else response.raw
        self._peer_result(
            expected.index, expected.action, differences, request.raw, data, recorded, answer
        )
        self._tick()

    def _peer_result(
        self,
        index: int,
        action: str,
        differences: list[Difference],
        recorded_request: bytes | None,
        replay_request: bytes | None = None,
        recorded_answer: bytes | None = None,
        replay_answer: bytes | None = None,
    ) -> None:
        """A CALL the peer sent (or should have sent) that came out different."""
        frames = (recorded_request, replay_request, recorded_answer, replay_answer)
        kind = "call from peer"
        self.report.add(
            ExchangeResult(index, action, kind, Outcome.DIFFERENT, differences, *frames)
        )

    def _match(self, frame: Call | Send) -> Expected | None:
        candidates = self._unused.get(frame.action)
        if not candidates:
            return None
        if self.options.match == "payload":
            rules = self.options.rules
            for position, expected in enumerate(itertools.islice(candidates, _MATCH_SCAN)):
                if not diff_payloads(expected.payload, frame.payload, rules, frame.action):
                    del candidates[position]
                    return expected
        return candidates.popleft()  # by action, in recorded order

    async def _unexpected_request(self, frame: Call | Send, data: bytes) -> None:
        answer = None
        if isinstance(frame, Call):
            text = f"ocproxy replay: the recording has no {frame.action} to answer with"
            answer = rs.json_frame([4, frame.message_id, "GenericError", text, {}])
            await self._send(answer, Opcode.TEXT)
        self._unexpected += 1
        difference = Difference(DiffKind.UNEXPECTED, "", None, show(frame.payload), "request")
        index = self.script.total + self._unexpected
        self._peer_result(index, frame.action, [difference], None, data, None, answer)

    # -- the end ---------------------------------------------------------------------------

    async def _watch(self) -> None:
        await self.ctx.stop.wait()
        self.report.interrupted = True
        self._wake_all()

    def _wake_all(self) -> None:
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_result(None)
        self._changed.set()

    def _finish(self) -> None:
        report = self.report
        for step in self.script.steps[self._next_step :]:
            self._done(step.action, Outcome.NOT_REPLAYED)
        cut_short = report.interrupted or report.failure is not None
        for candidates in self._unused.values():
            for expected in candidates:
                if cut_short:
                    self._done(expected.action, Outcome.NOT_REPLAYED)
                    continue
                missing = Difference(DiffKind.MISSING, "", show(expected.payload), None, "request")
                self._peer_result(expected.index, expected.action, [missing], expected.request.raw)
        if not self._closing and not cut_short:
            self._closed_by_peer()
        if report.unsolicited_replayed != report.unsolicited_recorded and not cut_short:
            counts = (str(report.unsolicited_recorded), str(report.unsolicited_replayed))
            report.connection.append(Difference(DiffKind.UNSOLICITED, "", *counts, "connection"))
        report.results.sort(key=lambda r: r.index)

    def _closed_by_peer(self) -> None:
        """The peer hung up first, after the last exchange: a difference unless recorded so."""
        peer = "csms" if self.script.role is Role.CHARGER else "charger"
        recorded = self.script.source.closed_by
        if recorded != peer:
            difference = Difference(
                DiffKind.CLOSED, "closed by", recorded, self._close_detail(), "connection"
            )
            self.report.connection.append(difference)

    def _close_detail(self) -> str:
        code, reason = self.leg.close_code, self.leg.close_reason
        said = f" {reason!r}" if reason else ""
        return f"the peer closed the connection ({code}{said})"

    def _record(self, direction: Direction, data: bytes, opcode: Opcode) -> None:
        seq, self._seq = self._seq, self._seq + 1
        event = FrameReceived(
            self.connection_id,
            seq,
            wall_clock(),
            direction,
            opcode,
            data,
            len(data),
            identity=self.report.identity,
        )
        self.ctx.recorder.submit(event)


def _fresh_ids() -> Iterator[str]:
    """Message ids no peer has seen: a random 80-bit prefix per session and a counter.

    As unique as UUIDs (2.x wants ids unique per identity across connections) at a
    tenth of the cost: uuid4() reads the OS's random source on every call.
    """
    prefix = uuid.uuid4().hex[:20]
    for n in itertools.count(1):
        yield f"{prefix}-{n:x}"
