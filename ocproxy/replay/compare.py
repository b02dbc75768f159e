"""Compare what the recording says with what the replay got, ignoring volatile fields.

Pure: frames and payloads in, a list of :class:`Difference` out. A replay talks to a
live peer, so some values can never be equal (the CSMS's ``currentTime``, a freshly
assigned ``transactionId``, timestamps, message ids): those are compared for presence
only, never for value. :class:`IgnoreRules` holds those defaults plus ``--ignore``.

:func:`judge_answer` and :func:`judge_request` are what the replay calls per exchange:
an answer to one of its CALLs, or a CALL the peer sent, against the recorded one.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ocproxy.core.frames import Call, CallError, CallResult, Frame, Malformed, Send, parse_frame
from ocproxy.replay.script import after_message_id

PathPart = str | int
_ANY_INDEX = -1  # "[*]" in a pattern

# Fields whose value a live peer chooses afresh: compared for presence, not value.
DEFAULT_IGNORES: tuple[str, ...] = (
    "currentTime",
    "timestamp",
    "transactionId",
    "requestId",
    "remoteStartId",
)
_TIMESTAMP = re.compile(r"\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?\Z")
_SHOWN_CHARS = 80


class DiffKind(StrEnum):
    STATUS_CHANGED = "status changed"
    VALUE_CHANGED = "value changed"
    FIELD_ADDED = "field added"
    FIELD_MISSING = "field missing"
    CALLERROR_INSTEAD = "CALLERROR instead of CALLRESULT"
    CALLRESULT_INSTEAD = "CALLRESULT instead of CALLERROR"
    ERROR_CODE_CHANGED = "error code changed"
    MALFORMED = "malformed frame"
    TIMEOUT = "timeout"
    LATE = "late"
    CLOSED = "connection closed"
    NOT_IN_RECORDING = "not in the recording"
    MISSING = "never sent"
    UNEXPECTED = "unexpected CALL"
    HANDSHAKE = "handshake"
    UNSOLICITED = "unsolicited frames"


@dataclass(frozen=True, slots=True)
class Difference:
    kind: DiffKind
    path: str = ""  # JSON path into the payload; "" for the frame or connection as a whole
    recorded: str | None = None  # shown value, already shortened
    replayed: str | None = None
    where: str = "response"  # "response", "request" or "connection"

    def describe(self) -> str:
        at = f" at {self.path}" if self.path else ""
        if self.recorded is None and self.replayed is None:
            return f"{self.where}: {self.kind}{at}"
        return f"{self.where}: {self.kind}{at}: {self.recorded or '-'} → {self.replayed or '-'}"


@dataclass(frozen=True, slots=True)
class _Pattern:
    action: str | None
    anywhere: bool  # a bare name matches that key at any depth
    parts: tuple[PathPart, ...]


@dataclass(frozen=True)
class IgnoreRules:
    """Which fields are volatile. ``timestamps``: any two ISO 8601 date-times are equal."""

    patterns: tuple[_Pattern, ...] = ()
    timestamps: bool = True

    @classmethod
    def parse(cls, extra: Sequence[str] = (), *, defaults: bool = True) -> IgnoreRules:
        """``[Action:]path`` patterns, e.g. ``idTagInfo.expiryDate``,
        ``Authorize:idTagInfo.status``, ``meterValue[*].sampledValue[*].value`` or a bare
        ``currentTime`` (that key anywhere). ValueError names a pattern that cannot parse."""
        texts = [*(DEFAULT_IGNORES if defaults else ()), *extra]
        return cls(tuple(_parse_pattern(t) for t in texts), timestamps=defaults)

    def ignored(self, action: str | None, path: tuple[PathPart, ...]) -> bool:
        return any(_matches(p, action, path) for p in self.patterns)


_SEGMENT = re.compile(r"\A([^\[\]]*)((?:\[(?:\*|\d+)\])*)\Z")


def _parse_pattern(text: str) -> _Pattern:
    action, sep, path = text.partition(":")
    if not sep:
        action, path = "", text
    path = path.removeprefix("$.").strip()
    if not path or (sep and not action):
        raise ValueError(f"--ignore {text!r}: expected [ACTION:]PATH, e.g. idTagInfo.expiryDate")
    parts: list[PathPart] = []
    for segment in path.split("."):
        match = _SEGMENT.match(segment)
        if match is None or (not match.group(1) and not match.group(2)):
            raise ValueError(f"--ignore {text!r}: cannot read segment {segment!r}")
        if match.group(1):
            parts.append(match.group(1))
        for index in re.findall(r"\[(\*|\d+)\]", match.group(2)):
            parts.append(_ANY_INDEX if index == "*" else int(index))
    anywhere = len(parts) == 1 and isinstance(parts[0], str) and not text.startswith("$.")
    return _Pattern(action or None, anywhere, tuple(parts))


def _matches(pattern: _Pattern, action: str | None, path: tuple[PathPart, ...]) -> bool:
    if pattern.action is not None and pattern.action != action:
        return False
    if pattern.anywhere:
        last = path[-1] if path else None
        return isinstance(last, str) and fnmatch.fnmatchcase(last, str(pattern.parts[0]))
    if len(pattern.parts) != len(path):
        return False
    return all(_part_matches(p, q) for p, q in zip(pattern.parts, path, strict=True))


def _part_matches(pattern: PathPart, part: PathPart) -> bool:
    if isinstance(pattern, str):
        return isinstance(part, str) and fnmatch.fnmatchcase(part, pattern)
    return isinstance(part, int) and pattern in (_ANY_INDEX, part)


# -- payloads ----------------------------------------------------------------------------


def diff_payloads(
    recorded: Any,
    replayed: Any,
    rules: IgnoreRules,
    action: str | None = None,
    *,
    where: str = "response",
) -> list[Difference]:
    """Every difference between two JSON values, volatile fields compared for presence only."""
    out: list[Difference] = []
    _diff(recorded, replayed, (), rules, action, where, out)
    return out


def _diff(
    old: Any,
    new: Any,
    path: tuple[PathPart, ...],
    rules: IgnoreRules,
    action: str | None,
    where: str,
    out: list[Difference],
) -> None:
    if path and rules.ignored(action, path):
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key, value in old.items():
            if key in new:
                _diff(value, new[key], (*path, key), rules, action, where, out)
            else:
                out.append(_presence(DiffKind.FIELD_MISSING, (*path, key), value, where))
        for key in [k for k in new if k not in old]:  # in the replay's order
            out.append(_presence(DiffKind.FIELD_ADDED, (*path, key), new[key], where))
        return
    if isinstance(old, list) and isinstance(new, list):
        for index, (a, b) in enumerate(zip(old, new, strict=False)):
            _diff(a, b, (*path, index), rules, action, where, out)
        for index in range(len(new), len(old)):
            out.append(_presence(DiffKind.FIELD_MISSING, (*path, index), old[index], where))
        for index in range(len(old), len(new)):
            out.append(_presence(DiffKind.FIELD_ADDED, (*path, index), new[index], where))
        return
    if _same_scalar(old, new, rules):
        return
    last = path[-1] if path else ""
    kind = (
        DiffKind.STATUS_CHANGED
        if isinstance(last, str) and last.lower().endswith("status")
        else DiffKind.VALUE_CHANGED
    )
    out.append(Difference(kind, _show_path(path), show(old), show(new), where))


def _presence(kind: DiffKind, path: tuple[PathPart, ...], value: Any, where: str) -> Difference:
    shown = show(value)
    if kind is DiffKind.FIELD_MISSING:
        return Difference(kind, _show_path(path), shown, None, where)
    return Difference(kind, _show_path(path), None, shown, where)


def _same_scalar(old: Any, new: Any, rules: IgnoreRules) -> bool:
    # type() as well as ==: True == 1 and 1 == 1.0 in Python, not on the wire.
    if type(old) is type(new) and old == new:
        return True
    return (
        rules.timestamps
        and isinstance(old, str)
        and isinstance(new, str)
        and bool(_TIMESTAMP.match(old))
        and bool(_TIMESTAMP.match(new))
    )


# -- frames ----------------------------------------------------------------------------


def compare_responses(
    recorded: Frame, replayed: Frame, rules: IgnoreRules, action: str | None
) -> list[Difference]:
    """Two answers to the same CALL: result vs error, error code, then the payload."""
    if isinstance(recorded, Malformed) or isinstance(replayed, Malformed):
        return _compare_malformed(recorded, replayed)
    if isinstance(recorded, CallResult) and isinstance(replayed, CallError):
        return [
            Difference(
                DiffKind.CALLERROR_INSTEAD,
                recorded=show(recorded.payload),
                replayed=f"{replayed.error_code}: {replayed.error_description}"[:_SHOWN_CHARS],
            )
        ]
    if isinstance(recorded, CallError) and isinstance(replayed, CallResult):
        return [
            Difference(
                DiffKind.CALLRESULT_INSTEAD,
                recorded=recorded.error_code,
                replayed=show(replayed.payload),
            )
        ]
    if isinstance(recorded, CallError) and isinstance(replayed, CallError):
        if recorded.error_code != replayed.error_code:
            return [
                Difference(
                    DiffKind.ERROR_CODE_CHANGED,
                    recorded=recorded.error_code,
                    replayed=replayed.error_code,
                )
            ]
        # The description is free text and the details often carry a trace: not compared.
        return []
    if isinstance(recorded, CallResult) and isinstance(replayed, CallResult):
        return diff_payloads(recorded.payload, replayed.payload, rules, action)
    # A CALL or SEND where an answer belongs: say what came instead.
    return [
        Difference(
            DiffKind.VALUE_CHANGED,
            "message type",
            _type_name(recorded),
            _type_name(replayed),
        )
    ]


def _compare_malformed(recorded: Frame, replayed: Frame) -> list[Difference]:
    if isinstance(recorded, Malformed) and isinstance(replayed, Malformed):
        if recorded.status == replayed.status:
            return []
        return [Difference(DiffKind.MALFORMED, "", str(recorded.status), str(replayed.status))]
    if isinstance(replayed, Malformed):
        return [Difference(DiffKind.MALFORMED, "", "well-formed", str(replayed.status))]
    assert isinstance(recorded, Malformed)
    return [Difference(DiffKind.MALFORMED, "", str(recorded.status), "well-formed")]


def _type_name(frame: Frame) -> str:
    return type(frame).__name__.upper()


def show(value: Any) -> str:
    """A value as compact JSON, shortened for a one-line display."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 1] + "…"


def _show_path(path: tuple[PathPart, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


# -- one exchange ------------------------------------------------------------------------


@dataclass(frozen=True)
class Judgement:
    differences: list[Difference]
    recorded: Frame | None = None  # both parsed, when the bytes differed
    replayed: Frame | None = None


def judge_answer(
    recorded: bytes | None, answer: bytes, rules: IgnoreRules, action: str | None
) -> Judgement:
    """The replay's answer to a CALL against the recorded answer (``None``: there was none)."""
    if recorded is None:
        return Judgement([Difference(DiffKind.NOT_IN_RECORDING, replayed=show_bytes(answer))])
    # Fast path, and the common case: the same bytes but for the message id.
    if after_message_id(recorded) == after_message_id(answer):
        return Judgement([])
    old, new = parse_frame(recorded), parse_frame(answer)
    return Judgement(compare_responses(old, new, rules, action), old, new)


def judge_request(
    recorded_payload: Any,
    recorded_type: int | None,
    frame: Call | Send,
    rules: IgnoreRules,
    *,
    late: bool = False,
) -> list[Difference]:
    """A CALL or SEND the peer sent against the recorded one it was matched with."""
    differences = diff_payloads(
        recorded_payload, frame.payload, rules, frame.action, where="request"
    )
    if recorded_type != int(frame.message_type):
        kind = DiffKind.VALUE_CHANGED
        shown = (show(recorded_type), show(int(frame.message_type)))
        differences.append(Difference(kind, "message type", *shown, where="request"))
    if late:
        detail = "after the replay stopped waiting for it (--timeout)"
        differences.append(Difference(DiffKind.LATE, "", None, detail, "request"))
    return differences


def show_bytes(data: bytes) -> str:
    return show(data.decode("utf-8", "replace"))
