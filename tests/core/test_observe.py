"""observe(): literal FrameReceived events in, rows of the frames table out."""

from __future__ import annotations

import dataclasses
import json

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocproxy.core.correlation import Correlator
from ocproxy.core.events import FrameReceived
from ocproxy.core.frames import Direction, Opcode
from ocproxy.core.observe import ObservedFrame, observe
from ocproxy.core.redaction import MARKER, Redactor

UP = Direction.TO_CSMS
DOWN = Direction.TO_CHARGER


def event(
    data: str | bytes | None,
    *,
    seq: int = 1,
    ts: float = 1_700_000_000.0,
    direction: Direction = UP,
    opcode: Opcode | None = None,
    size: int | None = None,
    too_large: bool = False,
    identity: str = "CP001",
) -> FrameReceived:
    if opcode is None:
        opcode = Opcode.BINARY if isinstance(data, bytes) else Opcode.TEXT
    if size is None:
        size = len(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data or b"")
    return FrameReceived("conn-1", seq, ts, direction, opcode, data, size, too_large, identity)


def assert_storable(row: ObservedFrame) -> None:
    """Every text column must encode as UTF-8 (DuckDB VARCHAR), the payload cast to JSON."""
    for field in dataclasses.fields(row):
        value = getattr(row, field.name)
        if isinstance(value, str):
            value.encode("utf-8")
    if row.payload is not None:
        json.loads(row.payload)
        # DuckDB's JSON type is stricter than Python's json (lone surrogate escapes):
        # a payload it refuses would fail the whole batch of frames.
        assert duckdb.execute("SELECT ?::JSON", [row.payload]).fetchall()


def test_text_call_row() -> None:
    text = '[2, "19223201", "BootNotification", {"chargePointVendor": "VendorX", "n": 1}]'
    row = observe(event(text, seq=7, ts=12.5), Correlator())
    assert row == ObservedFrame(
        connection_id="conn-1",
        seq=7,
        ts=12.5,
        direction="to_csms",
        opcode="text",
        raw=text.encode(),
        size=len(text),
        message_type=2,
        message_id="19223201",
        action="BootNotification",
        parse_status="ok",
        parse_detail=None,
        payload='{"chargePointVendor": "VendorX", "n": 1}',  # as written
        error_code=None,
        error_description=None,
        request_seq=None,
        latency_ms=None,
        pairing=None,
        identity="CP001",
    )
    assert_storable(row)


def test_text_raw_is_the_exact_utf8_bytes() -> None:
    text = '[2,"1","DataTransfer",{"data":"\u00e9t\u00e9 \u2603 \U0001f600","e":"\\u00e9"}]'
    row = observe(event(text), Correlator())
    assert row.raw == text.encode("utf-8")
    assert row.size == len(text.encode("utf-8"))
    # compact JSON keeps non-ASCII as is; an escape in the source is decoded
    assert row.payload == '{"data":"\u00e9t\u00e9 \u2603 \U0001f600","e":"\u00e9"}'
    assert_storable(row)


def test_binary_frame_row() -> None:
    data = b'[3,"1",{ "currentTime" : "2024-01-01T00:00:00Z" }]\n'
    row = observe(event(data, direction=DOWN), Correlator())
    assert row.raw == data
    assert type(row.raw) is bytes
    assert row.opcode == "binary"
    assert row.direction == "to_charger"
    assert (row.message_type, row.message_id, row.parse_status) == (3, "1", "ok")
    assert row.payload == '{ "currentTime" : "2024-01-01T00:00:00Z" }'  # as written
    assert row.pairing == "unknown_id"


def test_invalid_utf8_binary_frame_kept_byte_exact() -> None:
    data = b'[2,"1","Heartbeat",{"a":"\xff"}]'
    row = observe(event(data), Correlator())
    assert row.raw == data
    assert row.parse_status == "invalid_utf8"
    assert row.parse_detail
    assert (row.message_type, row.message_id, row.action, row.payload) == (None, None, None, None)
    assert_storable(row)


@pytest.mark.parametrize(
    ("text", "status", "message_type", "message_id", "action"),
    [
        ('[2,,"1"]', "invalid_json", None, None, None),
        ('[2,"1","Heartbeat",{"a":NaN}]', "invalid_json", None, None, None),
        ("{}", "not_an_array", None, None, None),
        ("[]", "empty_array", None, None, None),
        ('["2","1","Heartbeat",{}]', "message_type_not_integer", None, None, None),
        ('[7,"1",{}]', "unknown_message_type", 7, "1", None),
        ('[2,"1","Heartbeat"]', "wrong_arity", 2, "1", "Heartbeat"),
        ('[2,1,"Heartbeat",{}]', "message_id_not_string", 2, None, "Heartbeat"),
        ('[2,"1","Heartbeat",null]', "payload_not_object", 2, "1", "Heartbeat"),
        ('[4,"1",1,"",{}]', "error_code_not_string", 4, "1", None),
    ],
)
def test_malformed_rows(
    text: str, status: str, message_type: int | None, message_id: str | None, action: str | None
) -> None:
    row = observe(event(text), Correlator())
    assert row.raw == text.encode()
    assert row.parse_status == status
    assert row.parse_detail
    assert (row.message_type, row.message_id, row.action) == (message_type, message_id, action)
    assert row.payload is None
    assert_storable(row)


@pytest.mark.parametrize("message_type", [32768, -32769, 99999, 10**30])
def test_unknown_message_type_outside_smallint_is_not_stored_as_type(message_type: int) -> None:
    # frames.message_type is SMALLINT: storing 99999 would fail the whole batch.
    row = observe(event(f'[{message_type},"1"]'), Correlator())
    assert row.parse_status == "unknown_message_type"
    assert row.message_type is None
    assert row.parse_detail == f"message type {message_type}"
    assert row.message_id == "1"


@pytest.mark.parametrize("message_type", [32767, -32768, 0, -1, 1, 7])
def test_unknown_message_type_inside_smallint_is_kept(message_type: int) -> None:
    row = observe(event(f"[{message_type}]"), Correlator())
    assert row.message_type == message_type


def test_response_gets_action_seq_latency_from_its_call() -> None:
    correlator = Correlator()
    call = observe(
        event('[2,"42","Authorize",{"idTag":"ABC"}]', seq=1, ts=100.0, direction=UP), correlator
    )
    assert (call.action, call.pairing) == ("Authorize", None)
    result = observe(
        event('[3,"42",{"idTagInfo":{"status":"Accepted"}}]', seq=2, ts=100.05, direction=DOWN),
        correlator,
    )
    assert result.action == "Authorize"
    assert result.request_seq == 1
    assert result.latency_ms == 50.0
    assert result.pairing == "matched"
    assert result.payload == '{"idTagInfo":{"status":"Accepted"}}'


def test_callerror_row() -> None:
    correlator = Correlator()
    observe(event('[2,"9","Reset",{"type":"Hard"}]', seq=1, ts=5.0, direction=DOWN), correlator)
    text = '[4,"9","NotSupported","Reset is not supported",{"reason": "x"}]'
    row = observe(event(text, seq=2, ts=5.2, direction=UP), correlator)
    assert row.message_type == 4
    assert row.error_code == "NotSupported"
    assert row.error_description == "Reset is not supported"
    assert row.payload == '{"reason":"x"}'
    assert (row.action, row.request_seq, row.pairing) == ("Reset", 1, "matched")
    assert row.latency_ms == pytest.approx(200.0)


def test_callresulterror_row() -> None:
    correlator = Correlator()
    observe(event('[2,"9","GetVariables",{}]', seq=1, ts=1.0, direction=DOWN), correlator)
    observe(event('[3,"9",{"bad":true}]', seq=2, ts=1.1, direction=UP), correlator)
    row = observe(
        event('[5,"9","FormatViolation","bad",{}]', seq=3, ts=1.2, direction=DOWN), correlator
    )
    assert (row.message_type, row.error_code, row.error_description) == (
        5,
        "FormatViolation",
        "bad",
    )
    assert (row.action, row.request_seq, row.pairing) == ("GetVariables", 2, "matched")
    assert row.payload == "{}"


def test_send_row() -> None:
    row = observe(event('[6,"s","NotifyPeriodicEventStream",{"data":[]}]'), Correlator())
    assert (row.message_type, row.action, row.payload, row.pairing) == (
        6,
        "NotifyPeriodicEventStream",
        '{"data":[]}',
        None,
    )


def test_malformed_response_still_gets_its_calls_action() -> None:
    correlator = Correlator()
    observe(event('[2,"1","BootNotification",{}]', seq=1, ts=0.0), correlator)
    row = observe(event('[3,"1",null]', seq=2, ts=1.0, direction=DOWN), correlator)
    assert row.parse_status == "payload_not_object"
    assert (row.action, row.request_seq, row.pairing, row.latency_ms) == (
        "BootNotification",
        1,
        "matched",
        1000.0,
    )
    assert row.payload is None


def test_too_large_row() -> None:
    correlator = Correlator()
    observe(event('[2,"1","DataTransfer",{}]', seq=1, ts=0.0), correlator)
    big = FrameReceived(
        "conn-1", 2, 3.0, DOWN, Opcode.TEXT, None, 2_000_000, too_large=True, identity="CP001"
    )
    row = observe(big, correlator)
    assert row == ObservedFrame(
        connection_id="conn-1",
        seq=2,
        ts=3.0,
        direction="to_charger",
        opcode="text",
        raw=None,
        size=2_000_000,
        message_type=None,
        message_id=None,
        action=None,
        parse_status="too_large",
        parse_detail="message of at least 2000000 bytes exceeds the size limit",
        payload=None,
        error_code=None,
        error_description=None,
        request_seq=None,
        latency_ms=None,
        pairing=None,
        identity="CP001",
    )
    # the correlator was not fed: the CALL is still outstanding
    assert [p.message_id for p in correlator.outstanding(UP)] == ["1"]


def test_data_none_is_too_large_even_without_flag() -> None:
    row = observe(FrameReceived("c", 1, 0.0, UP, None, None, 10), Correlator())
    assert (row.parse_status, row.raw, row.size, row.opcode) == ("too_large", None, 10, None)


def test_opcode_none_passes_through() -> None:
    row = observe(FrameReceived("c", 1, 0.0, UP, None, '[3,"1",{}]', 10), Correlator())
    assert row.opcode is None
    assert row.identity == ""


def test_lone_surrogate_escapes_give_encodable_strings() -> None:
    correlator = Correlator()
    text = '[2,"\\ud800","Act\\udfff",{"k\\ud800":"v\\udc00","ok":"\u00e9"}]'
    call = observe(event(text, seq=1, ts=0.0), correlator)
    assert call.parse_status == "ok"
    assert call.raw == text.encode()
    assert call.message_id == "\\ud800"
    assert call.action == "Act\\udfff"
    # DuckDB's JSON type refuses lone surrogate escapes: the payload is in raw only.
    assert call.payload is None
    assert_storable(call)

    result = observe(event('[3,"\\ud800",{}]', seq=2, ts=1.0, direction=DOWN), correlator)
    assert (result.message_id, result.action, result.pairing) == (
        "\\ud800",
        "Act\\udfff",
        "matched",
    )
    assert_storable(result)


def test_lone_surrogate_in_error_fields() -> None:
    row = observe(event('[4,"x","Generic\\ud800","desc\\udc00",{"d":"\\ud800"}]'), Correlator())
    assert row.error_code == "Generic\\ud800"
    assert row.error_description == "desc\\udc00"
    assert row.payload is None
    assert_storable(row)


def test_lone_surrogate_in_malformed_frame() -> None:
    row = observe(event('[9,"\\udbff"]'), Correlator())
    assert (row.parse_status, row.message_type, row.message_id) == (
        "unknown_message_type",
        9,
        "\\udbff",
    )
    assert_storable(row)


def test_literal_lone_surrogate_in_str_data_does_not_raise() -> None:
    # websockets never hands over such a str, but observe() must not crash on one.
    text = '[2,"1","Heartbeat",{"a":"\ud800"}]'
    row = observe(event(text), Correlator())
    assert row.raw == text.encode("utf-8", "surrogatepass")
    assert row.payload is None
    assert_storable(row)


def test_surrogate_pair_escape_is_stored_as_the_character() -> None:
    row = observe(event('[3,"\\ud83d\\ude00",{"e":"\\ud83d\\ude00"}]'), Correlator())
    assert row.message_id == "\U0001f600"
    assert row.payload == '{"e":"\U0001f600"}'


def test_big_integers_survive_in_payload() -> None:
    row = observe(
        event('[2,"1","StartTransaction",{"transactionId":99999999999999999999}]'), Correlator()
    )
    assert row.payload == '{"transactionId":99999999999999999999}'


def test_identity_is_copied_from_the_event() -> None:
    row = observe(event('[2,"1","Heartbeat",{}]', identity="RDAM 123"), Correlator())
    assert row.identity == "RDAM 123"


def test_callresulterror_echoing_a_secret_answer_loses_the_secret() -> None:
    correlator = Correlator()
    redactor = Redactor(None)
    answer = '{"configurationKey":[{"key":"AuthorizationKey","readonly":false,"value":"pw1"}]}'
    observe(event('[2,"9","GetConfiguration",{}]', seq=1, direction=DOWN), correlator, redactor)
    observe(event(f'[3,"9",{answer}]', seq=2, direction=UP), correlator, redactor)
    # The CALLRESULT echoed as an object and as an embedded frame: both answer
    # GetConfiguration, whose rules for an answer the CALLRESULTERROR inherits.
    text = (
        '[5,"9","FormatViolation","bad",{"echo":{"configurationKey":[{"key":"AuthorizationKey",'
        '"value":"pw1"}]},"frame":"[3,\\"9\\",{\\"configurationKey\\":[{\\"key\\":'
        '\\"AuthorizationKey\\",\\"value\\":\\"pw1\\"}]}]"}]'
    )
    row = observe(event(text, seq=3, direction=DOWN), correlator, redactor)
    assert row.action == "GetConfiguration"
    assert row.redacted == (
        "$.echo.configurationKey[0].value (AuthorizationKey)",
        "$.frame[2].configurationKey[0].value (AuthorizationKey)",
    )
    assert row.raw == text.replace("pw1", MARKER).encode()
    assert "pw1" not in (row.payload or "")
    assert_storable(row)


@pytest.mark.parametrize(
    "text",
    [
        # A "\ud800" escape is valid JSON a peer can send over the wire as a driver id.
        '[2,"1","Authorize",{"idTag":"QZ\\ud800QZQZQ"}]',
        '[4,"1","X","",{"m":"[2,\\"1\\",\\"Authorize\\",{\\"idTag\\":\\"QZ\\\\ud800Q\\"}]"}]',
        # websockets never hands over such a str, but observe() must not crash on one.
        '[2,"1","Authorize",{"idTag":"QZ\ud800QZQZQ"}]',
        '[4,"1","X","",{"m":"[2,\\"1\\",\\"Authorize\\",{\\"idTag\\":\\"QZ\ud800Q\\"}]"}]',
    ],
)
def test_lone_surrogate_driver_id_is_pseudonymised(text: str) -> None:
    row = observe(event(text), Correlator(), Redactor(b"k"))
    assert row.redacted is not None
    assert len(row.redacted) == 1
    assert row.redacted[0].endswith("idTag (pseudonymised)")
    assert b"QZ" not in (row.raw or b"")  # not a hex digit
    assert_storable(row)


_SPACE = st.sampled_from(["", " ", "\n", "\t ", "\r\n  "])
_PAYLOADS = st.dictionaries(
    st.text(max_size=8),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
        max_leaves=6,
    ),
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(
    message_id=st.text(st.characters(codec="utf-8"), max_size=36),
    action=st.text(st.characters(codec="utf-8"), max_size=12),
    payload=_PAYLOADS,
    call=st.booleans(),
    spaces=st.lists(_SPACE, min_size=9, max_size=9),
)
def test_payload_column_is_the_peers_own_text(
    message_id: str, action: str, payload: dict[str, object], call: bool, spaces: list[str]
) -> None:
    """Whatever the spacing, and braces or quotes in the id or action, the payload column
    is the payload exactly as the peer wrote it (the slice), and parses to the payload."""
    s = spaces
    body = json.dumps(payload, ensure_ascii=False, indent=1 if s[8] else None)
    head = [json.dumps(2 if call else 3), json.dumps(message_id, ensure_ascii=False)]
    if call:
        head.append(json.dumps(action, ensure_ascii=False))
    parts = [f"{s[2 * i]}{item}{s[2 * i + 1]}" for i, item in enumerate([*head, body])]
    text = f"{s[7]}[{','.join(parts)}]{s[6]}"
    row = observe(event(text.encode(), opcode=Opcode.TEXT), Correlator())
    assert row.parse_status == "ok"
    if "\\u" in text:  # escapes: stored compact, re-encoded (see test_lone_surrogate_*)
        assert row.payload is not None
        assert json.loads(row.payload) == payload
        return
    assert row.payload == body
