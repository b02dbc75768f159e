"""parse_frame on literal messages: every frame type, every ParseStatus, never raising."""

from __future__ import annotations

import pytest

from ocproxy.core.frames import (
    MAX_MESSAGE_ID_LENGTH,
    Call,
    CallError,
    CallResult,
    Direction,
    Malformed,
    MessageType,
    ParseStatus,
    Send,
    parse_frame,
    parse_value,
)

FRAME_TYPES = (Call, Send, CallResult, CallError, Malformed)


def both(text: str) -> list[str | bytes]:
    """The same message as a text frame (str) and as a binary frame (UTF-8 bytes)."""
    return [text, text.encode("utf-8")]


# --- well-formed frames -------------------------------------------------------------


@pytest.mark.parametrize("data", both('[2,"19223201","BootNotification",{"a":1}]'))
def test_call(data: str | bytes) -> None:
    frame = parse_frame(data)
    assert frame == Call("19223201", "BootNotification", {"a": 1})
    assert frame.message_type is MessageType.CALL


@pytest.mark.parametrize("data", both('[6,"s-1","NotifyPeriodicEventStream",{"data":[1,2]}]'))
def test_send(data: str | bytes) -> None:
    frame = parse_frame(data)
    assert frame == Send("s-1", "NotifyPeriodicEventStream", {"data": [1, 2]})
    assert frame.message_type is MessageType.SEND


@pytest.mark.parametrize("data", both('[3,"19223201",{"status":"Accepted","interval":300}]'))
def test_callresult(data: str | bytes) -> None:
    frame = parse_frame(data)
    assert frame == CallResult("19223201", {"status": "Accepted", "interval": 300})
    assert frame.message_type is MessageType.CALLRESULT


@pytest.mark.parametrize(
    "data", both('[4,"19223201","NotImplemented","Unknown action",{"hint":"x"}]')
)
def test_callerror(data: str | bytes) -> None:
    frame = parse_frame(data)
    assert frame == CallError("19223201", "NotImplemented", "Unknown action", {"hint": "x"})
    assert isinstance(frame, CallError)
    assert frame.result_error is False
    assert frame.message_type is MessageType.CALLERROR


@pytest.mark.parametrize("data", both('[5,"19223201","FormatViolation","bad result",{}]'))
def test_callresulterror(data: str | bytes) -> None:
    frame = parse_frame(data)
    assert frame == CallError("19223201", "FormatViolation", "bad result", {}, result_error=True)
    assert frame.message_type is MessageType.CALLRESULTERROR


def test_empty_payload_and_empty_description_are_fine() -> None:
    assert parse_frame('[2,"1","Heartbeat",{}]') == Call("1", "Heartbeat", {})
    assert parse_frame('[3,"1",{}]') == CallResult("1", {})
    assert parse_frame('[4,"1","GenericError","",{}]') == CallError("1", "GenericError", "", {})


def test_surrounding_whitespace_is_json() -> None:
    assert parse_frame(' \t\r\n[2 , "1" , "Heartbeat" , { } ]\n ') == Call("1", "Heartbeat", {})


def test_non_ascii_and_escapes_decoded() -> None:
    frame = parse_frame('[2,"\\u00e9t\u00e9","DataTransfer",{"data":"\\u2603 \u2603"}]')
    assert frame == Call("\u00e9t\u00e9", "DataTransfer", {"data": "\u2603 \u2603"})


def test_bytearray_and_memoryview_accepted() -> None:
    raw = b'[3,"1",{}]'
    assert parse_frame(bytearray(raw)) == CallResult("1", {})  # type: ignore[arg-type]
    assert parse_frame(memoryview(raw)) == CallResult("1", {})  # type: ignore[arg-type]


def test_empty_string_id_parses_ok() -> None:
    # An empty id is a finding for the auditor, not a parse failure.
    assert parse_frame('[2,"","Heartbeat",{}]') == Call("", "Heartbeat", {})
    assert parse_frame('[3,"",{}]') == CallResult("", {})


def test_id_of_36_characters_ok() -> None:
    message_id = "a" * MAX_MESSAGE_ID_LENGTH
    assert MAX_MESSAGE_ID_LENGTH == 36
    assert parse_frame(f'[2,"{message_id}","Heartbeat",{{}}]') == Call(message_id, "Heartbeat", {})


def test_uuid_id_ok() -> None:
    uuid = "0b6e1a9c-5f0e-4b8e-9a0e-2f3c1d4e5f60"
    assert len(uuid) == 36
    assert parse_frame(f'[3,"{uuid}",{{}}]') == CallResult(uuid, {})


def test_id_length_counts_characters_not_bytes() -> None:
    message_id = "\u00e9" * 36  # 72 UTF-8 bytes, 36 characters
    assert parse_frame(f'[3,"{message_id}",{{}}]'.encode()) == CallResult(message_id, {})


def test_extra_payload_fields_and_nested_values_kept() -> None:
    frame = parse_frame('[3,"1",{"a":{"b":[1,2.5,null,true]},"c":"d"}]')
    assert frame == CallResult("1", {"a": {"b": [1, 2.5, None, True]}, "c": "d"})


def test_direction_reverse() -> None:
    assert Direction.TO_CSMS.reverse is Direction.TO_CHARGER
    assert Direction.TO_CHARGER.reverse is Direction.TO_CSMS


# --- malformed: decoding ------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xfe[\x002\x00]\x00",  # UTF-16 LE with BOM
        b'[2,"1","Heartbeat",{"a":"\xc3"}]',  # truncated multi-byte sequence
        b'[2,"1","Heartbeat",{"a":"\xed\xa0\x80"}]',  # UTF-8-encoded surrogate (CESU)
        b'[2,"1","Heartbeat",{"a":"\xc0\xaf"}]',  # overlong encoding
        b"\x80",
    ],
)
def test_invalid_utf8(data: bytes) -> None:
    frame = parse_frame(data)
    assert isinstance(frame, Malformed)
    assert frame.status is ParseStatus.INVALID_UTF8
    assert frame.detail
    assert (frame.message_type, frame.message_id, frame.action) == (None, None, None)


@pytest.mark.parametrize(
    "text",
    [
        '[2,,"1"]',  # leading/double comma
        '[,2,"1","Heartbeat",{}]',
        '[2,"1","Heartbeat",{},]',  # trailing comma
        '[2,"1","Heartbeat",{"a":NaN}]',
        '[2,"1","Heartbeat",{"a":Infinity}]',
        '[2,"1","Heartbeat",{"a":-Infinity}]',
        "NaN",
        '[2,"1","Heartbeat",{}]x',  # trailing garbage
        '[2,"1","Heartbeat",{}][3,"1",{}]',  # two frames in one message
        '[2,"1","Heartbeat",{}',  # truncated
        "[2,'1','Heartbeat',{}]",  # single quotes
        '[2,"1","Heartbeat",{a:1}]',  # unquoted key
        '[2,"1","Heartbeat",{"a":01}]',  # leading zero
        '[2,"1","Heartbeat",{"a":"tab\there"}]',  # raw control character in string
        '[2,"1","Heartbeat",{"a":"\\x41"}]',  # invalid escape
        '[2,"1","Heartbeat",{"a":"\\ud80"}]',  # short \u escape
        "",
        "   ",
        '\ufeff[3,"1",{}]',  # BOM is not JSON text
        '// comment\n[3,"1",{}]',
    ],
)
def test_invalid_json(text: str) -> None:
    for data in both(text):
        frame = parse_frame(data)
        assert isinstance(frame, Malformed), data
        assert frame.status is ParseStatus.INVALID_JSON, data
        assert frame.detail
        assert len(frame.detail) <= 200
        assert frame.message_type is None


def test_utf8_bom_bytes_are_invalid_json_not_invalid_utf8() -> None:
    frame = parse_frame(b'\xef\xbb\xbf[3,"1",{}]')
    assert isinstance(frame, Malformed)
    assert frame.status is ParseStatus.INVALID_JSON


# --- malformed: structure -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ('{"messageTypeId":2}', "top level is an object"),
        ('"[2,\\"1\\",\\"Heartbeat\\",{}]"', "top level is a string"),
        ("2", "top level is a number"),
        ("2.5", "top level is a number"),
        ("null", "top level is null"),
        ("true", "top level is a boolean"),
    ],
)
def test_not_an_array(text: str, detail: str) -> None:
    for data in both(text):
        frame = parse_frame(data)
        assert frame == Malformed(ParseStatus.NOT_AN_ARRAY, detail)


@pytest.mark.parametrize("text", ["[]", " [ ] "])
def test_empty_array(text: str) -> None:
    assert parse_frame(text) == Malformed(ParseStatus.EMPTY_ARRAY, "empty array")


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ('["2","1","Heartbeat",{}]', "a string"),
        ('[2.0,"1","Heartbeat",{}]', "a number"),
        ('[3e0,"1",{}]', "a number"),
        ('[true,"1","Heartbeat",{}]', "a boolean"),
        ('[false,"1",{}]', "a boolean"),
        ('[null,"1",{}]', "null"),
        ('[[2],"1",{}]', "an array"),
        ('[{},"1",{}]', "an object"),
    ],
)
def test_message_type_not_integer(text: str, kind: str) -> None:
    frame = parse_frame(text)
    assert frame == Malformed(ParseStatus.MESSAGE_TYPE_NOT_INTEGER, f"message type is {kind}")


@pytest.mark.parametrize("message_type", [7, 1, 0, -1, 8, 99999, 10**30])
def test_unknown_message_type_keeps_type_and_id(message_type: int) -> None:
    frame = parse_frame(f'[{message_type},"abc",{{}}]')
    assert frame == Malformed(
        ParseStatus.UNKNOWN_MESSAGE_TYPE,
        f"message type {message_type}",
        message_type=message_type,
        message_id="abc",
    )


def test_unknown_message_type_without_readable_id() -> None:
    assert parse_frame("[7]") == Malformed(
        ParseStatus.UNKNOWN_MESSAGE_TYPE, "message type 7", message_type=7
    )
    assert parse_frame("[7,42]") == Malformed(
        ParseStatus.UNKNOWN_MESSAGE_TYPE, "message type 7", message_type=7
    )


@pytest.mark.parametrize(
    ("text", "message_type", "message_id", "action", "count"),
    [
        ("[2]", 2, None, None, 1),
        ('[2,"1"]', 2, "1", None, 2),
        ('[2,"1","Heartbeat"]', 2, "1", "Heartbeat", 3),
        ('[2,"1","Heartbeat",{},{}]', 2, "1", "Heartbeat", 5),
        ('[6,"1","NotifyPeriodicEventStream"]', 6, "1", "NotifyPeriodicEventStream", 3),
        ('[6,"1","NotifyPeriodicEventStream",{},null]', 6, "1", "NotifyPeriodicEventStream", 5),
        ('[3,"1"]', 3, "1", None, 2),
        ('[3,"1",{},{}]', 3, "1", None, 4),
        ("[3]", 3, None, None, 1),
        ('[4,"1","GenericError","no details"]', 4, "1", None, 4),
        ('[4,"1","GenericError"]', 4, "1", None, 3),
        ('[4,"1","GenericError","x",{},{}]', 4, "1", None, 6),
        ('[5,"1","FormatViolation","no details"]', 5, "1", None, 4),
        ('[5,"1","FormatViolation","x",{},"extra"]', 5, "1", None, 6),
    ],
)
def test_wrong_arity(
    text: str, message_type: int, message_id: str | None, action: str | None, count: int
) -> None:
    frame = parse_frame(text)
    assert isinstance(frame, Malformed)
    assert frame.status is ParseStatus.WRONG_ARITY
    assert frame.message_type == message_type
    assert frame.message_id == message_id
    assert frame.action == action
    name = MessageType(message_type).name
    assert frame.detail.startswith(f"{name} has {count} elements, expected ")


def test_wrong_arity_reported_before_bad_id() -> None:
    frame = parse_frame("[2,1]")
    assert isinstance(frame, Malformed)
    assert frame.status is ParseStatus.WRONG_ARITY


@pytest.mark.parametrize(
    ("text", "kind", "message_type", "action"),
    [
        ('[2,19223201,"Heartbeat",{}]', "a number", 2, "Heartbeat"),
        ('[2,null,"Heartbeat",{}]', "null", 2, "Heartbeat"),
        ('[6,true,"NotifyPeriodicEventStream",{}]', "a boolean", 6, "NotifyPeriodicEventStream"),
        ("[3,1,{}]", "a number", 3, None),
        ("[3,null,{}]", "null", 3, None),
        ('[3,["1"],{}]', "an array", 3, None),
        ('[4,{},"GenericError","",{}]', "an object", 4, None),
        ('[5,1.5,"GenericError","",{}]', "a number", 5, None),
    ],
)
def test_message_id_not_string(text: str, kind: str, message_type: int, action: str | None) -> None:
    frame = parse_frame(text)
    assert frame == Malformed(
        ParseStatus.MESSAGE_ID_NOT_STRING, f"message id is {kind}", message_type, None, action
    )


@pytest.mark.parametrize("message_type", [2, 3, 4, 5, 6])
def test_message_id_37_characters_too_long(message_type: int) -> None:
    message_id = "b" * (MAX_MESSAGE_ID_LENGTH + 1)
    tail = {
        2: '"Heartbeat",{}',
        6: '"Heartbeat",{}',
        3: "{}",
        4: '"GenericError","",{}',
        5: '"GenericError","",{}',
    }[message_type]
    frame = parse_frame(f'[{message_type},"{message_id}",{tail}]')
    assert isinstance(frame, Malformed)
    assert frame.status is ParseStatus.MESSAGE_ID_TOO_LONG
    assert frame.detail == "message id has 37 characters, at most 36"
    # the id is still readable, so the correlator can pair it
    assert frame.message_id == message_id
    assert frame.message_type == message_type
    assert frame.action == ("Heartbeat" if message_type in (2, 6) else None)


@pytest.mark.parametrize(
    ("text", "kind", "message_type"),
    [
        ('[2,"1",null,{}]', "null", 2),
        ('[2,"1",42,{}]', "a number", 2),
        ('[2,"1",["Heartbeat"],{}]', "an array", 2),
        ('[6,"1",{},{}]', "an object", 6),
    ],
)
def test_action_not_string(text: str, kind: str, message_type: int) -> None:
    frame = parse_frame(text)
    assert frame == Malformed(
        ParseStatus.ACTION_NOT_STRING, f"action is {kind}", message_type, "1", None
    )


@pytest.mark.parametrize(
    ("text", "kind", "message_type", "action"),
    [
        ('[2,"1","Heartbeat",null]', "null", 2, "Heartbeat"),
        ('[2,"1","Heartbeat",[]]', "an array", 2, "Heartbeat"),
        ('[2,"1","Heartbeat","{}"]', "a string", 2, "Heartbeat"),
        ('[6,"1","NotifyPeriodicEventStream",[1]]', "an array", 6, "NotifyPeriodicEventStream"),
        ('[3,"1",null]', "null", 3, None),
        ('[3,"1",[]]', "an array", 3, None),
        ('[3,"1",0]', "a number", 3, None),
        ('[3,"1",false]', "a boolean", 3, None),
    ],
)
def test_payload_not_object(text: str, kind: str, message_type: int, action: str | None) -> None:
    frame = parse_frame(text)
    assert frame == Malformed(
        ParseStatus.PAYLOAD_NOT_OBJECT, f"payload is {kind}", message_type, "1", action
    )


@pytest.mark.parametrize("message_type", [4, 5])
@pytest.mark.parametrize(
    ("fields", "status", "detail"),
    [
        ('null,"",{}', ParseStatus.ERROR_CODE_NOT_STRING, "error code is null"),
        ('404,"",{}', ParseStatus.ERROR_CODE_NOT_STRING, "error code is a number"),
        ('{},"",{}', ParseStatus.ERROR_CODE_NOT_STRING, "error code is an object"),
        (
            '"GenericError",null,{}',
            ParseStatus.ERROR_DESCRIPTION_NOT_STRING,
            "error description is null",
        ),
        (
            '"GenericError",["x"],{}',
            ParseStatus.ERROR_DESCRIPTION_NOT_STRING,
            "error description is an array",
        ),
        ('"GenericError","",null', ParseStatus.ERROR_DETAILS_NOT_OBJECT, "error details is null"),
        (
            '"GenericError","",[]',
            ParseStatus.ERROR_DETAILS_NOT_OBJECT,
            "error details is an array",
        ),
        (
            '"GenericError","","details"',
            ParseStatus.ERROR_DETAILS_NOT_OBJECT,
            "error details is a string",
        ),
    ],
)
def test_error_fields(message_type: int, fields: str, status: ParseStatus, detail: str) -> None:
    frame = parse_frame(f'[{message_type},"e1",{fields}]')
    assert frame == Malformed(status, detail, message_type, "e1", None)


def test_error_code_checked_before_description_and_details() -> None:
    frame = parse_frame('[4,"1",1,2,3]')
    assert isinstance(frame, Malformed)
    assert frame.status is ParseStatus.ERROR_CODE_NOT_STRING


def test_malformed_message_type_is_a_plain_int() -> None:
    frame = parse_frame('[3,"1",null]')
    assert isinstance(frame, Malformed)
    assert frame.message_type == 3
    assert type(frame.message_type) is int


def test_parse_value_on_decoded_values() -> None:
    assert parse_value([2, "1", "Heartbeat", {}]) == Call("1", "Heartbeat", {})
    assert parse_value({"a": 1}) == Malformed(ParseStatus.NOT_AN_ARRAY, "top level is an object")
    assert isinstance(parse_value([True]), Malformed)


# --- never raises -------------------------------------------------------------------

NASTY: list[str | bytes] = [
    "[" * 100_000,
    "[" * 100_000 + "]" * 100_000,
    '[2,"1","A",' + '{"a":' * 50_000 + "1" + "}" * 50_000 + "]",
    '[2,"1","A",{"a":' + "[" * 100_000 + "]" * 100_000 + "}]",
    b"[" * 100_000,
    "[" + "9" * 5000 + "]",  # beyond Python's int string-conversion limit
    "[" + "9" * 4000 + ',"1"]',
    '[2,"1","A",{"x":' + "9" * 5000 + "}]",
    '[2,"1","A",{"x":1e999}]',
    '[2,"1","A",{"x":-1e999,"y":1e-999}]',
    "[1e999]",
    "[-0]",
    "[2.000000000000000000000001]",
    '["\\ud800","1"]',
    '[2,"\\ud800","\\udfff",{"\\ud800":"\\udc00"}]',
    '[4,"1","\\ud800","\\udfff",{}]',
    '[3,"\\ud83d\\ude00",{}]',
    '[2,"\ud800","A",{}]',  # literal lone surrogate in a str
    "\ufeff",
    b"\xef\xbb\xbf",
    '\ufeff[2,"1","A",{}]',
    b"\xff\xfe" + '[2,"1","A",{}]'.encode("utf-16-le"),
    '[2,"1","A",{}]'.encode("utf-16-be"),
    '[2,"1","A",{}]'.encode("utf-32"),
    " ",
    "\x00",
    b"\x00" * 10,
    b"",
    "",
    "\n\t\r ",
    "[\u00a0]",  # non-breaking space is not JSON whitespace
    '[2,"1","A",{"a":"' + "x" * 1_000_000 + '"}]',
    "[" + ",".join(["2"] * 100_000) + "]",
    '{"__proto__":[]}',
    '[2,"1","A",{"a":1,"a":2}]',
    '[2, "1", "A", {}, ' + "null," * 1000 + "null]",
    "[5]",
    "[6]",
    "[-9223372036854775809]",
    '[18446744073709551616,"1",{}]',
    "\\",
    '"',
    "}{",
    "[[[[[[]]]]]]",
    '[2,"1","A",{"a":"\\u0000"}]',
]


@pytest.mark.parametrize("data", NASTY, ids=range(len(NASTY)))
def test_never_raises(data: str | bytes) -> None:
    frame = parse_frame(data)
    assert isinstance(frame, FRAME_TYPES)
    if isinstance(frame, Malformed):
        assert isinstance(frame.status, ParseStatus)
        assert frame.status is not ParseStatus.OK
        assert isinstance(frame.detail, str)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        ("[" * 100_000, ParseStatus.INVALID_JSON),
        ("[" * 100_000 + "]" * 100_000, ParseStatus.INVALID_JSON),
        ("[" + "9" * 5000 + "]", ParseStatus.INVALID_JSON),
        ("[1e999]", ParseStatus.MESSAGE_TYPE_NOT_INTEGER),
        ("\ufeff", ParseStatus.INVALID_JSON),
        (b"\xff\xfe" + '[2,"1","A",{}]'.encode("utf-16-le"), ParseStatus.INVALID_UTF8),
        ('[2,"1","A",{}]'.encode("utf-16-be"), ParseStatus.INVALID_JSON),
        ("[\u00a0]", ParseStatus.INVALID_JSON),
        ("[[[[[[]]]]]]", ParseStatus.MESSAGE_TYPE_NOT_INTEGER),
        ("[-0]", ParseStatus.UNKNOWN_MESSAGE_TYPE),
    ],
)
def test_nasty_inputs_classified(data: str | bytes, status: ParseStatus) -> None:
    frame = parse_frame(data)
    assert isinstance(frame, Malformed)
    assert frame.status is status


def test_lone_surrogate_escapes_parse_as_strings() -> None:
    frame = parse_frame('[2,"\\ud800","\\udfff",{"\\ud800":"\\udc00"}]')
    assert frame == Call("\ud800", "\udfff", {"\ud800": "\udc00"})


def test_surrogate_pair_escape_is_one_character() -> None:
    assert parse_frame('[3,"\\ud83d\\ude00",{}]') == CallResult("\U0001f600", {})


def test_huge_float_payload_value_still_parses() -> None:
    frame = parse_frame('[2,"1","A",{"x":1e999}]')
    assert isinstance(frame, Call)
    assert frame.payload["x"] == float("inf")


def test_duplicate_keys_last_wins() -> None:
    assert parse_frame('[2,"1","A",{"a":1,"a":2}]') == Call("1", "A", {"a": 2})
