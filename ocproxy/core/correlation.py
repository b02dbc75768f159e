"""Per-connection pairing of responses with the CALLs they answer.

A CALLRESULT carries no action: it is only typed by its CALL. The correlator keeps
the outstanding CALLs of one connection, per direction, and for every observed frame
says which CALL it answers, how long that took, and what was odd about it (unknown
id, duplicate, late, answer to a SEND). Time is whatever the caller passes in: the
correlator reads no clock, so it is tested with literal timestamps.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from ocproxy.core.frames import (
    Call,
    CallError,
    CallResult,
    Direction,
    Frame,
    Malformed,
    MessageType,
    Send,
)

# How many answered, sent (SEND) and timed-out ids to remember, to tell a duplicate, a
# late answer or an answer to a SEND from an unknown id. A duplicate comes within a few
# messages of the first answer; what is remembered is held for every live connection
# (~300 bytes an id), which a fleet of 10,000 chargers multiplies.
_REMEMBERED = 8
# CALLs a peer never answers: bounded, because chargers stay connected for days.
_PENDING_MAX = 4096


class Pairing(StrEnum):
    """How a response relates to the CALL it claims to answer."""

    MATCHED = "matched"
    LATE = "late"  # answers a CALL that expire() had already declared timed out
    DUPLICATE = "duplicate"  # that CALL was already answered
    UNKNOWN_ID = "unknown_id"  # no CALL (or CALLRESULT, for CALLRESULTERROR) with this id
    ANSWERS_SEND = "answers_send"  # SEND must never be answered


# Not frozen (nothing changes them once made): frozen dataclasses are ~4x slower to
# build, and one of these is built for every frame recorded.
@dataclass(slots=True)
class PendingCall:
    seq: int
    message_id: str
    action: str
    ts: float
    direction: Direction


@dataclass(slots=True)
class Correlation:
    """What the correlator learnt from one frame.

    ``action`` is the frame's own action for a CALL/SEND and its CALL's action for a
    response. ``outstanding`` counts CALLs already open in the same direction when a
    CALL was seen (more than zero breaks the one-outstanding-CALL rule).
    """

    action: str | None = None
    request_seq: int | None = None
    latency_ms: float | None = None
    pairing: Pairing | None = None
    outstanding: int = 0


_NOTHING = Correlation()
_SLOT = {Direction.TO_CSMS: 0, Direction.TO_CHARGER: 1}


class Correlator:
    """Pairs the frames of one connection. Feed every frame in ``seq`` order."""

    # One per live connection: slots and plain (insertion-ordered) dicts keep it small.
    __slots__ = ("_answered", "_open", "_pending", "_sent", "_timed_out")

    def __init__(self) -> None:
        self._pending: dict[tuple[Direction, str], PendingCall] = {}
        # Open CALLs per direction, by _SLOT: a list of two is 160 bytes less than a dict,
        # per connection.
        self._open = [0, 0]
        self._timed_out: dict[tuple[Direction, str], PendingCall] = {}
        # (call direction, id) -> (call, seq of its first response)
        self._answered: dict[tuple[Direction, str], tuple[PendingCall, int]] = {}
        self._sent: dict[tuple[Direction, str], PendingCall] = {}

    def observe(self, frame: Frame, direction: Direction, seq: int, ts: float) -> Correlation:
        """Account for one frame; ``ts`` is when the proxy received it, in seconds."""
        # Call and CallResult first, one class per isinstance: nearly every frame is one,
        # and a check against a union of classes costs 4x more.
        if isinstance(frame, Call):
            return self.call(frame.message_id, frame.action, direction, seq, ts)
        if isinstance(frame, CallResult):
            return self.response(frame.message_id, direction, seq, ts)
        if isinstance(frame, Send):
            _remember(
                self._sent,
                (direction, frame.message_id),
                PendingCall(seq, frame.message_id, frame.action, ts, direction),
            )
            return Correlation(action=frame.action)
        if isinstance(frame, CallError) and not frame.result_error:
            return self.response(frame.message_id, direction, seq, ts)
        if isinstance(frame, CallError):
            return self._result_error(frame.message_id, direction)
        return self._malformed(frame, direction, seq, ts)

    def outstanding(self, direction: Direction) -> list[PendingCall]:
        """CALLs sent in ``direction`` that are neither answered nor timed out, oldest first."""
        return sorted(
            (call for call in self._pending.values() if call.direction is direction),
            key=lambda call: call.seq,
        )

    def expire(self, now: float, timeout_s: float) -> list[PendingCall]:
        """Declare CALLs older than ``timeout_s`` at ``now`` timed out; return them."""
        expired = [call for call in self._pending.values() if now - call.ts > timeout_s]
        for call in sorted(expired, key=lambda c: c.seq):
            self._take((call.direction, call.message_id))
            _remember(self._timed_out, (call.direction, call.message_id), call)
        return sorted(expired, key=lambda c: c.seq)

    def call(
        self, message_id: str, action: str, direction: Direction, seq: int, ts: float
    ) -> Correlation:
        """:meth:`observe` for a CALL already read (the recorder's short cut)."""
        slot = _SLOT[direction]
        outstanding = self._open[slot]
        key = (direction, message_id)
        # A reused id replaces the older CALL: a retry is answered by the newest copy.
        self._take(key)
        pending = self._pending
        pending[key] = PendingCall(seq, message_id, action, ts, direction)
        self._open[slot] += 1
        if len(pending) > _PENDING_MAX:
            # A peer that never answers must not grow memory without bound: the oldest
            # CALL counts as timed out (its answer, if it ever comes, pairs as late).
            oldest = self._take(next(iter(self._pending)))
            assert oldest is not None
            _remember(self._timed_out, (oldest.direction, oldest.message_id), oldest)
        # Positional, like _paired's: keywords cost ~0.3 us more a frame.
        return Correlation(action, None, None, None, outstanding)

    def _take(self, key: tuple[Direction, str]) -> PendingCall | None:
        call = self._pending.pop(key, None)
        if call is not None:
            self._open[_SLOT[call.direction]] -= 1
        return call

    def response(self, message_id: str, direction: Direction, seq: int, ts: float) -> Correlation:
        """:meth:`observe` for a CALLRESULT (or CALLERROR) already read."""
        key = (direction.reverse, message_id)
        call = self._take(key)
        if call is not None:
            _remember(self._answered, key, (call, seq))
            return _paired(call, ts, Pairing.MATCHED)
        call = self._timed_out.pop(key, None)
        if call is not None:
            _remember(self._answered, key, (call, seq))
            return _paired(call, ts, Pairing.LATE)
        answered = self._answered.get(key)
        if answered is not None:
            return _paired(answered[0], ts, Pairing.DUPLICATE)
        sent = self._sent.get(key)
        if sent is not None:
            return _paired(sent, ts, Pairing.ANSWERS_SEND)
        return Correlation(pairing=Pairing.UNKNOWN_ID)

    def _result_error(self, message_id: str, direction: Direction) -> Correlation:
        # A CALLRESULTERROR answers a CALLRESULT that travelled the other way, i.e. the
        # answer to a CALL that went in the CALLRESULTERROR's own direction.
        answered = self._answered.get((direction, message_id))
        if answered is None:
            return Correlation(pairing=Pairing.UNKNOWN_ID)
        call, response_seq = answered
        return Correlation(action=call.action, request_seq=response_seq, pairing=Pairing.MATCHED)

    def _malformed(
        self, frame: Malformed, direction: Direction, seq: int, ts: float
    ) -> Correlation:
        # A broken answer still answers its CALL: pair it when type and id are readable,
        # so the CALL is not reported as unanswered and the row still gets its action.
        if frame.message_type in (MessageType.CALL, MessageType.SEND):
            return Correlation(action=frame.action)
        if frame.message_id is None:
            return _NOTHING
        if frame.message_type in (MessageType.CALLRESULT, MessageType.CALLERROR):
            return self.response(frame.message_id, direction, seq, ts)
        return _NOTHING


def _paired(call: PendingCall, ts: float, pairing: Pairing) -> Correlation:
    # action, request_seq, latency_ms, pairing: positional, on every answer's path.
    return Correlation(call.action, call.seq, round((ts - call.ts) * 1000.0, 3), pairing)


def _remember[K, V](memory: dict[K, V], key: K, value: V) -> None:
    memory.pop(key, None)  # a dict keeps insertion order: the key goes last
    memory[key] = value
    while len(memory) > _REMEMBERED:
        del memory[next(iter(memory))]
