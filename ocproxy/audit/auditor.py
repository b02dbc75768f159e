"""The auditor: turns the recorder's events into findings, with per-connection state.

The same :class:`Auditor` runs live (in the recorder's writer thread, off the event
loop) and over a finished recording (``ocproxy audit DB``); fed the same events in
the same order it yields the same findings. It never raises on peer data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ocproxy.audit import checks, schemas
from ocproxy.audit.connection import TLS_HANDSHAKE_FAILED, connection_findings
from ocproxy.audit.finding import Finding
from ocproxy.audit.ids import IdMemory
from ocproxy.audit.rules import RULES, Severity
from ocproxy.audit.violations import every_violation
from ocproxy.core.events import ConnectionClosed, ConnectionOpened
from ocproxy.core.frames import (
    Call,
    CallError,
    CallResult,
    Direction,
    Malformed,
    MessageType,
    ParseStatus,
    Send,
)
from ocproxy.core.handshake import SUBPROTOCOL_VERSIONS, OcppVersion
from ocproxy.core.observe import ObservedFrame

# CALLs waiting for an answer (a peer that never answers, with no timeout), and CALLs
# timed out whose late answer is still told apart, per connection: bounded, because
# chargers stay connected for weeks (message ids: see ocproxy.audit.ids).
_PENDING_MAX = 4096
_EXPIRED_MEMORY = 256
__all__ = ["TLS_HANDSHAKE_FAILED", "AuditSettings", "Auditor", "Finding"]
_PARSE_RULES = {
    ParseStatus.MESSAGE_ID_NOT_STRING: "message-id-type",
    ParseStatus.MESSAGE_ID_TOO_LONG: "message-id-too-long",
    ParseStatus.TOO_LARGE: "message-too-large",
}


@dataclass(frozen=True)
class AuditSettings:
    response_timeout_s: float = 30.0
    heartbeat_tolerance: float = 0.25  # fraction of the interval ...
    heartbeat_slack_s: float = 5.0  # ... and at least this many seconds


@dataclass(slots=True)  # one per live connection: no __dict__ (~0.3 KB each)
class _Connection:
    connection_id: str
    identity: str
    version: OcppVersion | None
    # Per direction, by _SLOT (a pair is ~180 bytes less than a dict of two, and there
    # is one of each per live connection):
    ids: tuple[IdMemory, IdMemory]  # the ids each sender used (see ocproxy.audit.ids)
    heartbeat_interval: float | None = None
    last_heartbeat: float | None = None
    last_to_csms: float | None = None
    # Directions that sent a malformed frame; None until one does (per connection).
    sent_malformed: set[Direction] | None = None
    # This connection's CALLs still waiting for an answer and not yet timed out, per
    # direction: message id -> (seq, ts, action) of the CALL.
    pending: tuple[dict[str, tuple[int, float, str]], dict[str, tuple[int, float, str]]] = field(
        default_factory=lambda: ({}, {})
    )
    # No pending CALL times out before this; it may be that of a CALL answered since
    # (looked at again only when time passes it: one comparison per frame otherwise).
    next_deadline: float = math.inf
    # CALLs already reported as unanswered-call, so that a late answer is not a second
    # finding about the same CALL.
    expired: dict[tuple[Direction, str], None] = field(default_factory=dict)


_REQUESTS = (Call, Send)


class Auditor:
    """Feed it ``opened``, then ``frame`` for each frame in seq order, then ``closed``."""

    def __init__(self, settings: AuditSettings | None = None) -> None:
        self.settings = settings or AuditSettings()
        self._connections: dict[str, _Connection] = {}
        # 2.x: ids are unique per sender across every connection of an identity.
        self._identity_ids: dict[tuple[str, Direction], IdMemory] = {}

    def opened(self, event: ConnectionOpened) -> list[Finding]:
        version = (
            SUBPROTOCOL_VERSIONS.get(event.subprotocol) if event.subprotocol is not None else None
        )
        self._connections[event.connection_id] = _Connection(
            event.connection_id, event.identity, version, self._id_scopes(event, version)
        )
        return connection_findings(event, version)

    def closed(self, event: ConnectionClosed) -> list[Finding]:
        state = self._connections.pop(event.connection_id, None)
        if state is None:
            return []
        return self._expire(state, event.ts)

    def finish(self, now: float) -> list[Finding]:
        """The end of the recording's timeline at ``now``: CALLs of connections still open
        whose timeout has passed by then are unanswered. The auditor can go on after it."""
        findings: list[Finding] = []
        for state in self._connections.values():
            findings.extend(self._expire(state, now))
        return findings

    def frame(self, observed: ObservedFrame) -> list[Finding]:
        state = self._connections.get(observed.connection_id)
        if state is None:  # frames of a connection opened before the audit started
            return []
        found = _Found(observed)
        frame = observed.frame
        if isinstance(frame, _REQUESTS):
            # Time passes before the CALL is counted: one whose predecessor timed out is
            # no second outstanding CALL.
            if observed.ts > state.next_deadline:
                found.findings.extend(self._expire(state, observed.ts))
            self._well_formed(state, observed, frame, found)
            return found.findings
        # An answer is taken before time passes: an answer that is the first thing
        # seen after its CALL's deadline is one late-response, not also unanswered.
        if frame is None or isinstance(frame, Malformed):
            self._malformed(state, observed, found)
        else:
            self._well_formed(state, observed, frame, found)
        if observed.ts > state.next_deadline:
            found.findings.extend(self._expire(state, observed.ts))
        return found.findings

    def _expire(self, state: _Connection, now: float) -> list[Finding]:
        """unanswered-call for each pending CALL of ``state`` older than the timeout."""
        timeout = self.settings.response_timeout_s
        expired: list[tuple[int, float, str, Direction, str]] = []
        next_deadline = math.inf
        for direction, pending in zip(_ORDER, state.pending, strict=True):
            for message_id, (seq, ts, action) in list(pending.items()):
                if now - ts > timeout:
                    del pending[message_id]
                    _remember(state.expired, (direction, message_id))
                    expired.append((seq, ts, action, direction, message_id))
                else:
                    next_deadline = min(next_deadline, ts + timeout)
        state.next_deadline = next_deadline
        findings = []
        for seq, ts, action, direction, message_id in sorted(expired):
            sender = "charger" if direction is Direction.TO_CSMS else "CSMS"
            findings.append(
                Finding(
                    state.connection_id,
                    seq,
                    ts + timeout,
                    "unanswered-call",
                    RULES["unanswered-call"].severity,
                    f"{action} {message_id!r} from the {sender} got no answer within {timeout:g} s",
                )
            )
        return findings

    # -- per frame ----------------------------------------------------------------

    def _malformed(self, state: _Connection, observed: ObservedFrame, found: _Found) -> None:
        direction = _DIRECTIONS[observed.direction]
        if state.sent_malformed is None:
            state.sent_malformed = set()
        state.sent_malformed.add(direction)
        if observed.latency_ms is not None and observed.message_id is not None:
            # a broken answer
            state.pending[_SLOT[direction.reverse]].pop(observed.message_id, None)
        status = ParseStatus(observed.parse_status)
        rule = _PARSE_RULES.get(status, "malformed-frame")
        found.add(rule, f"{status}: {observed.parse_detail or ''}".rstrip(": "))

    def _well_formed(
        self,
        state: _Connection,
        observed: ObservedFrame,
        frame: Call | Send | CallResult | CallError,
        found: _Found,
    ) -> None:
        version = state.version
        kind = frame.message_type
        if kind in (MessageType.CALLRESULTERROR, MessageType.SEND) and version not in (
            None,
            OcppVersion.V21,
        ):
            found.add(
                "message-type-not-in-version", f"{kind.name} is not defined in OCPP {version}"
            )
        if frame.message_id == "":
            found.add("message-id-empty", f"{kind.name} with an empty message id")
        if isinstance(frame, Call | Send):
            self._request(state, observed, frame, found)
        elif isinstance(frame, CallResult):
            self._result(state, observed, frame, found)
        elif isinstance(frame, CallError):
            self._error(state, observed, frame, found)

    def _request(
        self, state: _Connection, observed: ObservedFrame, frame: Call | Send, found: _Found
    ) -> None:
        version = state.version
        direction = _DIRECTIONS[observed.direction]
        self._unique_id(state, direction, frame, found)
        outstanding = 0
        if isinstance(frame, Call):
            # A CALL repeating the id of an unanswered one replaces it (as it does in the
            # correlator): a retry is no second CALL.
            pending = state.pending[_SLOT[direction]]
            outstanding = len(pending) - (frame.message_id in pending)
            pending[frame.message_id] = (observed.seq, observed.ts, frame.action)
            deadline = observed.ts + self.settings.response_timeout_s
            if deadline < state.next_deadline:
                state.next_deadline = deadline
            if len(pending) > _PENDING_MAX:  # a peer that never answers, with no timeout
                del pending[next(iter(pending))]
        if isinstance(frame, Call) and outstanding > 0:
            severity = Severity.WARNING if version is OcppVersion.V16 else Severity.ERROR
            found.add(
                "outstanding-call",
                f"{frame.action} sent while {outstanding} CALL(s) in the same "
                "direction were still unanswered",
                severity=severity,
            )
        if version is not None:
            action = frame.action.removesuffix("-Signed")
            if action not in schemas.actions(version):
                found.add("unknown-action", f"{frame.action!r} is not an OCPP {version} action")
            elif action == frame.action:
                _payload_checks(version, action, frame.payload, found, response=False)
        if frame.action == "Heartbeat" and direction is Direction.TO_CSMS:
            self._heartbeat(state, observed.ts, found)
        if direction is Direction.TO_CSMS:
            state.last_to_csms = observed.ts

    def _result(
        self, state: _Connection, observed: ObservedFrame, frame: CallResult, found: _Found
    ) -> None:
        self._pairing(state, observed, found, error=False)
        action = observed.action
        if state.version is not None and action and observed.pairing in ("matched", "late"):
            if action in schemas.actions(state.version):
                _payload_checks(state.version, action, frame.payload, found, response=True)
            if action == "BootNotification":
                interval = frame.payload.get("interval")
                if isinstance(interval, int | float) and interval > 0:
                    state.heartbeat_interval = float(interval)

    def _error(
        self, state: _Connection, observed: ObservedFrame, frame: CallError, found: _Found
    ) -> None:
        self._pairing(state, observed, found, error=True)
        if state.version is not None:
            problem = checks.error_code_problem(state.version, frame.error_code)
            if problem is not None:
                found.add("error-code-spelling", problem[1], severity=problem[0])

    def _pairing(
        self, state: _Connection, observed: ObservedFrame, found: _Found, *, error: bool
    ) -> None:
        pairing = observed.pairing
        direction = _DIRECTIONS[observed.direction]
        message_id = observed.message_id or ""
        if pairing == "unknown_id":
            if not error:
                found.add("unknown-response-id", f"no CALL with id {message_id!r} to answer")
            elif not (
                message_id == "-1"
                and state.version is not OcppVersion.V16  # 2.x's rule
                and state.sent_malformed is not None
                and direction.reverse in state.sent_malformed
            ):
                found.add("callerror-without-call", f"no CALL with id {message_id!r} to answer")
        elif pairing == "duplicate":
            found.add("duplicate-response", f"{observed.action} {message_id!r} already answered")
        elif pairing == "answers_send":
            found.add("response-to-send", f"answers the SEND {observed.action} {message_id!r}")
        elif observed.latency_ms is not None:
            pending = state.pending
            pending[_SLOT[direction.reverse]].pop(message_id, None)
            if not pending[0] and not pending[1]:
                state.next_deadline = math.inf  # nothing left to time out
            state.ids[_SLOT[direction.reverse]].answered(message_id)
            timeout_ms = self.settings.response_timeout_s * 1000.0
            if observed.latency_ms > timeout_ms and (
                state.expired.pop((direction.reverse, message_id), False) is not None
            ):
                found.add(
                    "late-response",
                    f"{observed.action} answered after {observed.latency_ms / 1000:.1f} s "
                    f"(timeout {self.settings.response_timeout_s:g} s)",
                )

    def _unique_id(
        self, state: _Connection, direction: Direction, frame: Call | Send, found: _Found
    ) -> None:
        memory = state.ids[_SLOT[direction]]
        message_id = frame.message_id
        if message_id != "" and memory.seen(message_id):
            # 2.1 lets a retry of a CALL that got no answer reuse its id: one still
            # waiting, or timed out.
            retry = state.version is OcppVersion.V21 and memory.unanswered(message_id)
            if not retry:
                found.add("message-id-reused", _reuse_message(state, message_id))
        memory.add(message_id, call=isinstance(frame, Call))

    def _heartbeat(self, state: _Connection, ts: float, found: _Found) -> None:
        interval, last = state.heartbeat_interval, state.last_heartbeat
        state.last_heartbeat = ts
        if interval is None or last is None:
            return
        slack = max(self.settings.heartbeat_slack_s, interval * self.settings.heartbeat_tolerance)
        since_heartbeat = ts - last
        # Chargers may restart the timer after any message they send (2.x recommends it).
        since_message = ts - (state.last_to_csms or last)
        if min(abs(since_heartbeat - interval), abs(since_message - interval)) > slack:
            found.add(
                "heartbeat-drift",
                f"Heartbeat {since_heartbeat:.0f} s after the previous one; the CSMS set "
                f"{interval:g} s",
            )

    def _id_scopes(
        self, event: ConnectionOpened, version: OcppVersion | None
    ) -> tuple[IdMemory, IdMemory]:
        if version in (None, OcppVersion.V16):
            return IdMemory(), IdMemory()
        scope = self._identity_ids
        up, down = ((event.identity, d) for d in _ORDER)
        return scope.setdefault(up, IdMemory()), scope.setdefault(down, IdMemory())


_DIRECTIONS = {d.value: d for d in Direction}  # ~5x faster than Direction(value)
_ORDER = (Direction.TO_CSMS, Direction.TO_CHARGER)
_SLOT = {direction: slot for slot, direction in enumerate(_ORDER)}


def _remember(memory: dict[tuple[Direction, str], None], key: tuple[Direction, str]) -> None:
    memory.pop(key, None)  # a dict keeps insertion order: the key goes last
    memory[key] = None
    while len(memory) > _EXPIRED_MEMORY:
        del memory[next(iter(memory))]


def _reuse_message(state: _Connection, message_id: str) -> str:
    scope = "this connection" if state.version in (None, OcppVersion.V16) else "this identity"
    return f"message id {message_id!r} was already used by this sender on {scope}"


class _Found:
    """Collects the findings of one frame; rules' default severities apply."""

    def __init__(self, observed: ObservedFrame) -> None:
        self.observed = observed
        self.findings: list[Finding] = []

    def add(
        self, rule: str, message: str, *, path: str | None = None, severity: Severity | None = None
    ) -> None:
        self.findings.append(
            Finding(
                self.observed.connection_id,
                self.observed.seq,
                self.observed.ts,
                rule,
                severity if severity is not None else RULES[rule].severity,
                message,
                path,
            )
        )


def _payload_checks(
    version: OcppVersion, action: str, payload: dict[str, Any], found: _Found, *, response: bool
) -> None:
    naive: dict[str, str] = {}
    if checks.may_hold_naive_timestamp(found.observed.raw):
        naive = dict(checks.naive_timestamps(payload, keys=schemas.date_time_keys(version)))
    for path, value in naive.items():
        found.add("timestamp-without-zone", f"{path} is {value!r}, without a zone", path=path)
    kind = "response" if response else "request"
    first = schemas.validate(version, action, payload, response=response)
    if first is None:  # the common case, without another call
        return
    for violation in every_violation(version, action, payload, first, response=response):
        # A naive timestamp also fails the schema's date-time format: reported once, above.
        if violation.rule == "schema-format" and violation.path in naive:
            continue
        found.add(violation.rule, f"{action} {kind}: {violation.message}", path=violation.path)
