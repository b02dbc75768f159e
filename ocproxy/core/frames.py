"""OCPP-J frames: parse one WebSocket message into a typed value.

Sans-I/O in the style of websockets' ``protocol.py``: bytes in, a value out, and
``parse_frame`` never raises on peer data. Anything that is not a well-formed
OCPP-J RPC frame becomes :class:`Malformed` with a :class:`ParseStatus` saying why,
so the proxy can forward it untouched and the recorder can store the reason.

Parsing is version-agnostic on purpose: a CALLRESULTERROR on a 1.6 connection is
still *parsed* as one; whether it is allowed there is the auditor's judgement.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

import msgspec

MAX_MESSAGE_ID_LENGTH = 36


class MessageType(IntEnum):
    CALL = 2
    CALLRESULT = 3
    CALLERROR = 4
    CALLRESULTERROR = 5
    SEND = 6


class Direction(StrEnum):
    TO_CSMS = "to_csms"
    TO_CHARGER = "to_charger"

    @property
    def reverse(self) -> Direction:
        return Direction.TO_CHARGER if self is Direction.TO_CSMS else Direction.TO_CSMS


class Opcode(StrEnum):
    TEXT = "text"
    BINARY = "binary"


class ParseStatus(StrEnum):
    """Why a frame is malformed; ``OK`` for a well-formed one. Stored in ``frames.parse_status``."""

    OK = "ok"
    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    NOT_AN_ARRAY = "not_an_array"
    EMPTY_ARRAY = "empty_array"
    MESSAGE_TYPE_NOT_INTEGER = "message_type_not_integer"
    UNKNOWN_MESSAGE_TYPE = "unknown_message_type"
    WRONG_ARITY = "wrong_arity"
    MESSAGE_ID_NOT_STRING = "message_id_not_string"
    MESSAGE_ID_TOO_LONG = "message_id_too_long"
    ACTION_NOT_STRING = "action_not_string"
    PAYLOAD_NOT_OBJECT = "payload_not_object"
    ERROR_CODE_NOT_STRING = "error_code_not_string"
    ERROR_DESCRIPTION_NOT_STRING = "error_description_not_string"
    ERROR_DETAILS_NOT_OBJECT = "error_details_not_object"
    # Set by the proxy, not by parse_frame: the message exceeded --max-message-size
    # and only its length is known.
    TOO_LARGE = "too_large"


@dataclass(frozen=True, slots=True)
class Call:
    message_id: str
    action: str
    payload: dict[str, Any]

    @property
    def message_type(self) -> MessageType:
        return MessageType.CALL


@dataclass(frozen=True, slots=True)
class Send:
    """OCPP 2.1 SEND: like a CALL, but never answered."""

    message_id: str
    action: str
    payload: dict[str, Any]

    @property
    def message_type(self) -> MessageType:
        return MessageType.SEND


@dataclass(frozen=True, slots=True)
class CallResult:
    message_id: str
    payload: dict[str, Any]

    @property
    def message_type(self) -> MessageType:
        return MessageType.CALLRESULT


@dataclass(frozen=True, slots=True)
class CallError:
    """CALLERROR, or (``result_error=True``) the 2.1 CALLRESULTERROR of the same shape."""

    message_id: str
    error_code: str
    error_description: str
    error_details: dict[str, Any]
    result_error: bool = False

    @property
    def message_type(self) -> MessageType:
        return MessageType.CALLRESULTERROR if self.result_error else MessageType.CALLERROR


@dataclass(frozen=True, slots=True)
class Malformed:
    """A message that is not a valid OCPP-J frame; what could be read is kept."""

    status: ParseStatus
    detail: str
    message_type: int | None = None
    message_id: str | None = None
    action: str | None = None


Frame = Call | Send | CallResult | CallError | Malformed

_ARITY = {
    MessageType.CALL: 4,
    MessageType.CALLRESULT: 3,
    MessageType.CALLERROR: 5,
    MessageType.CALLRESULTERROR: 5,
    MessageType.SEND: 4,
}


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON (RFC 8259) does not.
    raise ValueError(f"{name} is not valid JSON")


_FAST = msgspec.json.Decoder()
# One decoder for every frame: json.loads(..., parse_constant=...) builds a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def decode_json(data: str | bytes) -> tuple[Any, Malformed | None]:
    """Decode a message as strict JSON; never raises."""
    # msgspec takes valid strict JSON in a third of json's time, big integers included;
    # whatever it refuses (broken JSON, NaN, 1e999, lone surrogates) is decoded again by
    # the standard library, which says what is wrong or, for the last two, takes it.
    try:
        return _FAST.decode(data), None
    except (msgspec.DecodeError, RecursionError, ValueError, TypeError):
        pass
    if isinstance(data, bytes | bytearray | memoryview):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            return None, Malformed(ParseStatus.INVALID_UTF8, str(exc))
    else:
        text = data
    try:
        return _DECODER.decode(text), None
    except (ValueError, RecursionError) as exc:
        return None, Malformed(ParseStatus.INVALID_JSON, str(exc)[:200])


def parse_frame(data: str | bytes) -> Frame:
    """Parse one WebSocket message (text as ``str``, binary as ``bytes``)."""
    value, failure = decode_json(data)
    if failure is not None:
        return failure
    return parse_value(value)


def parse_value(value: Any) -> Frame:
    """Classify an already decoded JSON value as an OCPP-J frame."""
    # Nearly every frame is a well-formed CALL or CALLRESULT: checked here with exact
    # types (the decoders build plain list, dict, str and int; ``type(x) is int`` keeps
    # out booleans and ``2.0``), which costs a third of the general path below.
    if type(value) is list:
        size = len(value)
        if size == 4:
            kind, message_id, action, payload = value
            if (
                kind == 2
                and type(kind) is int
                and type(message_id) is str
                and len(message_id) <= MAX_MESSAGE_ID_LENGTH
                and type(action) is str
                and type(payload) is dict
            ):
                return Call(message_id, action, payload)
        elif size == 3:
            kind, message_id, payload = value
            if (
                kind == 3
                and type(kind) is int
                and type(message_id) is str
                and len(message_id) <= MAX_MESSAGE_ID_LENGTH
                and type(payload) is dict
            ):
                return CallResult(message_id, payload)
    return _parse_any(value)


def _parse_any(value: Any) -> Frame:
    if not isinstance(value, list):
        return Malformed(ParseStatus.NOT_AN_ARRAY, f"top level is {_json_type(value)}")
    if not value:
        return Malformed(ParseStatus.EMPTY_ARRAY, "empty array")
    raw_type = value[0]
    if not isinstance(raw_type, int) or isinstance(raw_type, bool):
        return Malformed(
            ParseStatus.MESSAGE_TYPE_NOT_INTEGER, f"message type is {_json_type(raw_type)}"
        )
    message_type = _MESSAGE_TYPES.get(raw_type)
    if message_type is None:
        return Malformed(
            ParseStatus.UNKNOWN_MESSAGE_TYPE,
            f"message type {raw_type}",
            message_type=raw_type,
            message_id=_str_or_none(value, 1),
        )
    return _parse_typed(message_type, value)


_MESSAGE_TYPES = {int(t): t for t in MessageType}  # a dict: ~5x faster than MessageType(n)
_Bad = Callable[[ParseStatus, str], Malformed]


def _parse_typed(message_type: MessageType, value: list[Any]) -> Frame:
    message_id = _str_or_none(value, 1)
    action = (
        _str_or_none(value, 2) if message_type in (MessageType.CALL, MessageType.SEND) else None
    )

    def bad(status: ParseStatus, detail: str) -> Malformed:
        return Malformed(status, detail, int(message_type), message_id, action)

    if len(value) != _ARITY[message_type]:
        return bad(
            ParseStatus.WRONG_ARITY,
            f"{message_type.name} has {len(value)} elements, expected {_ARITY[message_type]}",
        )
    if message_id is None:
        return bad(ParseStatus.MESSAGE_ID_NOT_STRING, f"message id is {_json_type(value[1])}")
    if len(message_id) > MAX_MESSAGE_ID_LENGTH:
        return bad(
            ParseStatus.MESSAGE_ID_TOO_LONG,
            f"message id has {len(message_id)} characters, at most {MAX_MESSAGE_ID_LENGTH}",
        )
    if message_type in (MessageType.CALL, MessageType.SEND):
        return _parse_request(message_type, message_id, value, bad)
    if message_type is MessageType.CALLRESULT:
        if not isinstance(value[2], dict):
            return bad(ParseStatus.PAYLOAD_NOT_OBJECT, f"payload is {_json_type(value[2])}")
        return CallResult(message_id, value[2])
    return _parse_error(message_type, message_id, value, bad)


def _parse_request(
    message_type: MessageType, message_id: str, value: list[Any], bad: _Bad
) -> Frame:
    action, payload = value[2], value[3]
    if not isinstance(action, str):
        return bad(ParseStatus.ACTION_NOT_STRING, f"action is {_json_type(action)}")
    if not isinstance(payload, dict):
        return bad(ParseStatus.PAYLOAD_NOT_OBJECT, f"payload is {_json_type(payload)}")
    if message_type is MessageType.SEND:
        return Send(message_id, action, payload)
    return Call(message_id, action, payload)


def _parse_error(message_type: MessageType, message_id: str, value: list[Any], bad: _Bad) -> Frame:
    code, description, details = value[2], value[3], value[4]
    if not isinstance(code, str):
        return bad(ParseStatus.ERROR_CODE_NOT_STRING, f"error code is {_json_type(code)}")
    if not isinstance(description, str):
        return bad(
            ParseStatus.ERROR_DESCRIPTION_NOT_STRING,
            f"error description is {_json_type(description)}",
        )
    if not isinstance(details, dict):
        return bad(ParseStatus.ERROR_DETAILS_NOT_OBJECT, f"error details is {_json_type(details)}")
    return CallError(
        message_id, code, description, details, message_type is MessageType.CALLRESULTERROR
    )


def _str_or_none(value: list[Any], index: int) -> str | None:
    if len(value) > index and isinstance(value[index], str):
        return str(value[index])
    return None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
