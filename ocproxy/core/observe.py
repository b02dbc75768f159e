"""Turn a received message into the facts the recording stores: parse, then correlate.

Pure: the same function runs in the proxy's recorder thread, in the mitmproxy addon
and in tests, so every source records the same columns for the same bytes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ocproxy.core.correlation import Correlation, Correlator, Pairing
from ocproxy.core.events import FrameReceived
from ocproxy.core.frames import (
    Call,
    CallError,
    CallResult,
    Direction,
    Frame,
    Malformed,
    Opcode,
    ParseStatus,
    Send,
    parse_frame,
)
from ocproxy.core.redaction import Redactor, redacted_raw

# frames.message_type is a SMALLINT: an unknown type read from the peer (``[99999]``)
# must not make the whole batch fail to store; parse_detail still names it.
_SMALLINT_MIN, _SMALLINT_MAX = -(2**15), 2**15 - 1


@dataclass(slots=True)
class ObservedFrame:
    """One row of the ``frames`` table, before storage. Never changed once made.

    Not ``frozen``: a frozen dataclass sets each of these fields through
    ``object.__setattr__``, which made building one cost 2.4 us instead of 0.6 (measured),
    on the recorder's path for every frame.
    """

    connection_id: str
    seq: int
    ts: float
    direction: str
    opcode: str | None
    raw: bytes | None
    size: int
    parse_status: str
    parse_detail: str | None = None
    message_type: int | None = None
    message_id: str | None = None
    action: str | None = None
    payload: str | None = None
    error_code: str | None = None
    error_description: str | None = None
    request_seq: int | None = None
    latency_ms: float | None = None
    pairing: str | None = None
    identity: str = ""
    injected: bool = False
    redacted: tuple[str, ...] | None = None  # what was removed from raw and payload
    # Not stored: what the auditor needs without parsing again.
    frame: Frame | None = field(default=None, compare=False, repr=False)
    outstanding: int = field(default=0, compare=False)


def observe(
    event: FrameReceived, correlator: Correlator, redactor: Redactor | None = None
) -> ObservedFrame:
    """Parse and correlate one message of a connection; feed messages in ``seq`` order.

    With a ``redactor``, secrets and driver identifiers are replaced in ``raw`` and
    ``payload`` (``size`` stays the size received); ``frame`` keeps the original for
    the auditor.
    """
    data = event.data
    if event.too_large or data is None:
        return _too_large(event, _raw_bytes(data))
    frame = parse_frame(data)
    correlation = correlator.observe(frame, event.direction, event.seq, event.ts)
    return observed(event, frame, correlation, redactor)


def observed(
    event: FrameReceived,
    frame: Frame,
    correlation: Correlation,
    redactor: Redactor | None = None,
) -> ObservedFrame:
    """:func:`observe`'s row for a message already parsed (``frame``) and correlated."""
    data = event.data
    assert data is not None
    raw = _raw_bytes(data)
    text = _utf8(data)
    # Without a \u escape the text holds no lone surrogate (it is valid UTF-8), so the
    # strings taken from it need no check and the payload can be sliced from it.
    plain = (
        text is not None
        and (text.find("\\") == -1 or "\\u" not in text)  # find(): memchr, ~4x cheaper
        and (type(data) is bytes or _encodable(text))  # a str may hold anything
    )
    payload: str | None = None
    redacted: tuple[str, ...] | None = None
    error_code = error_description = None
    # One class per isinstance: a check against a union of classes costs 4x more.
    if isinstance(frame, Call) or isinstance(frame, CallResult) or isinstance(frame, Send):  # noqa: SIM101
        value = frame.payload
        if redactor is not None and raw is not None:
            value, raw, redacted = _redact(redactor, frame, correlation.action, raw)
        if redacted is None and plain:
            assert text is not None
            own_action = None if isinstance(frame, CallResult) else frame.action
            payload = _payload_text(text, frame.message_id, own_action)
        else:
            payload = _compact_json(value)
    elif isinstance(frame, CallError):
        details: Any = frame.error_details
        if redactor is not None and raw is not None:
            details, raw, redacted = _redact_error(redactor, frame, correlation.action, raw)
        payload = _compact_json(details)
        error_code, error_description = frame.error_code, frame.error_description
    malformed = frame if isinstance(frame, Malformed) else None
    message_id, action = frame.message_id, correlation.action
    if not plain:
        message_id, action = _text(message_id), _text(action)
        error_code, error_description = _text(error_code), _text(error_description)
    pairing = correlation.pairing
    # Positional: with keywords, building the row cost 1.0 us instead of 0.3 (measured),
    # on the recorder's path for every frame. The order is ObservedFrame's fields'.
    return ObservedFrame(
        event.connection_id,
        event.seq,
        event.ts,
        _DIRECTIONS[event.direction],
        None if event.opcode is None else _OPCODES[event.opcode],
        raw,
        event.size,
        _OK if malformed is None else malformed.status.value,
        None if malformed is None else malformed.detail,
        _smallint(frame.message_type),
        message_id,
        action,
        payload,
        error_code,
        error_description,
        correlation.request_seq,
        correlation.latency_ms,
        None if pairing is None else PAIRING_VALUES[pairing],
        event.identity,
        event.injected,
        redacted,
        frame,
        correlation.outstanding,
    )


# Enum members' ``.value`` is a property: a dict lookup is 3x cheaper, per frame.
_DIRECTIONS = {d: d.value for d in Direction}
_OPCODES = {o: o.value for o in Opcode}
PAIRING_VALUES = {p: p.value for p in Pairing}


_OK = ParseStatus.OK.value
# What comes before the payload of a valid CALL, SEND or CALLRESULT: '[', the type, the
# id and, for a request, the action. Only applied to text already parsed as JSON, where
# whitespace is JSON's and every string is well formed.
_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"'  # unrolled: no alternation per character
_BEFORE_PAYLOAD = re.compile(rf"\s*\[\s*\d+\s*,\s*{_STRING}\s*,\s*(?:{_STRING}\s*,\s*)?")
_JSON_SPACE = " \t\n\r"


def _payload_text(text: str, message_id: str, action: str | None) -> str | None:
    """The payload exactly as the peer wrote it: the last element of the frame's array.

    Slicing is ~10x cheaper than encoding the parsed payload again, and keeps the
    peer's own spelling (number formats, spacing). ``text`` parsed as a CALL, SEND or
    CALLRESULT without ``\\u`` escapes: so the payload, an object, starts at the first
    ``{`` unless the id or action holds one, and ends at the last ``}``.
    """
    if "{" not in message_id and (action is None or "{" not in action):
        return text[text.index("{") : text.rindex("}") + 1]
    match = _BEFORE_PAYLOAD.match(text)
    if match is None:  # pragma: no cover - the frame parsed, so the prefix is there
        return None
    return text[match.end() :].rstrip(_JSON_SPACE)[:-1].rstrip(_JSON_SPACE)


def _utf8(data: str | bytes) -> str | None:
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _same(value: str | None) -> str | None:
    return value


def _redact(
    redactor: Redactor, frame: Call | Send | CallResult, action: str | None, raw: bytes
) -> tuple[Any, bytes, tuple[str, ...] | None]:
    """The payload and raw with secrets replaced, and what was (``None``: nothing)."""
    response = isinstance(frame, CallResult)
    if not redactor.may_redact(action, raw, response=response):
        return frame.payload, raw, None
    result = redactor.redact(action, frame.payload, response=response)
    if not result.removed:
        return frame.payload, raw, None
    head: list[Any] = [int(frame.message_type), frame.message_id]
    if isinstance(frame, Call | Send):
        head.append(frame.action)
    return result.payload, redacted_raw(raw, [*head, frame.payload], result.payload), result.removed


def _redact_error(
    redactor: Redactor, frame: CallError, action: str | None, raw: bytes
) -> tuple[Any, bytes, tuple[str, ...] | None]:
    """:func:`_redact` for error details, which may echo the message answered."""
    response = frame.result_error  # a CALLRESULTERROR answers a CALLRESULT
    if not redactor.may_redact_details(action, raw, response=response):
        return frame.error_details, raw, None
    result = redactor.redact_details(action, frame.error_details, response=response)
    if not result.removed:
        return frame.error_details, raw, None
    head = [int(frame.message_type), frame.message_id, frame.error_code, frame.error_description]
    new_raw = redacted_raw(raw, [*head, frame.error_details], result.payload)
    return result.payload, new_raw, result.removed


def _too_large(event: FrameReceived, raw: bytes | None) -> ObservedFrame:
    return ObservedFrame(
        connection_id=event.connection_id,
        seq=event.seq,
        ts=event.ts,
        direction=str(event.direction),
        opcode=None if event.opcode is None else str(event.opcode),
        raw=raw,
        size=event.size,
        parse_status=str(ParseStatus.TOO_LARGE),
        parse_detail=f"message of at least {event.size} bytes exceeds the size limit",
        identity=event.identity,
        injected=event.injected,
    )


def _smallint(value: int | None) -> int | None:
    return value if value is not None and _SMALLINT_MIN <= value <= _SMALLINT_MAX else None


def _raw_bytes(data: str | bytes | None) -> bytes | None:
    if data is None:
        return None
    if isinstance(data, str):
        # websockets decoded a valid UTF-8 text frame; encoding it again gives back the
        # exact bytes on the wire (strict UTF-8 round-trips losslessly).
        return data.encode("utf-8", "surrogatepass")
    return bytes(data)


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _compact_json(value: Any) -> str | None:
    try:
        text = _ENCODER.encode(value)
    except ValueError:
        # 1e999 parses as infinity, which JSON cannot hold: keep only ``raw`` for it.
        return None
    # A "\ud800" escape decodes to a lone surrogate, which no UTF-8 column can hold,
    # and DuckDB's JSON type refuses the escape too (failing the whole batch): such a
    # payload is kept in ``raw`` only.
    return text if _encodable(text) else None


def _text(value: str | None) -> str | None:
    """The string itself, or a printable stand-in when it holds lone surrogates."""
    if value is None or _encodable(value):
        return value
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
