"""The pure parts of ``ocproxy replay``: comparison, script building, byte rewrites, output.

Literal frames only; pairing columns come from the same observe()/Correlator the
recorder uses, so the scripts are built from exactly what a recording would hold.
"""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from ocproxy.core.correlation import Correlator
from ocproxy.core.events import FrameReceived
from ocproxy.core.frames import CallError, CallResult, Direction, Malformed, Opcode, ParseStatus
from ocproxy.core.observe import observe
from ocproxy.replay.compare import (
    DiffKind,
    IgnoreRules,
    compare_responses,
    diff_payloads,
    judge_answer,
    judge_request,
)
from ocproxy.replay.output import ExchangeResult, Outcome, ReplayReport, print_report
from ocproxy.replay.script import (
    RecordedFrame,
    Role,
    SourceConnection,
    StepKind,
    after_message_id,
    build_script,
    learn_values,
    map_values,
    shift_timestamps,
    with_message_id,
)

RULES = IgnoreRules.parse()
UP, DOWN = Direction.TO_CSMS, Direction.TO_CHARGER


def recorded(*frames: tuple[Direction, str | bytes]) -> list[RecordedFrame]:
    """Frames as a recording holds them: parsed and paired by the recorder's own code."""
    correlator, out = Correlator(), []
    for seq, (direction, data) in enumerate(frames):
        raw = data.encode() if isinstance(data, str) else data
        event = FrameReceived("c1", seq, 1000.0 + seq, direction, Opcode.TEXT, raw, len(raw))
        row = observe(event, correlator)
        out.append(
            RecordedFrame(
                row.seq,
                row.ts,
                direction,
                Opcode.TEXT,
                raw,
                row.message_type,
                row.message_id,
                row.action,
                row.parse_status,
                row.request_seq,
                row.pairing,
            )
        )
    return out


SOURCE = SourceConnection("c1", "CP-1", "/ocpp/CP-1", ("ocpp1.6",), "ocpp1.6", 999.0, "charger")


# -- payload diffs ------------------------------------------------------------------------


def test_status_change_is_named_with_its_path() -> None:
    (diff,) = diff_payloads(
        {"idTagInfo": {"status": "Accepted"}}, {"idTagInfo": {"status": "Invalid"}}, RULES
    )
    assert (diff.kind, diff.path, diff.recorded, diff.replayed) == (
        DiffKind.STATUS_CHANGED,
        "idTagInfo.status",
        '"Accepted"',
        '"Invalid"',
    )


def test_fields_added_missing_and_list_items() -> None:
    diffs = diff_payloads(
        {"a": 1, "gone": True, "list": [1, 2, 3]}, {"a": 1, "list": [1, 2], "new": "x"}, RULES
    )
    assert [(d.kind, d.path) for d in diffs] == [
        (DiffKind.FIELD_MISSING, "gone"),
        (DiffKind.FIELD_MISSING, "list[2]"),
        (DiffKind.FIELD_ADDED, "new"),
    ]


def test_types_matter_even_when_python_says_equal() -> None:
    assert [d.kind for d in diff_payloads({"v": 1}, {"v": True}, RULES)] == [DiffKind.VALUE_CHANGED]
    assert diff_payloads({"v": 1}, {"v": 1.0}, RULES)[0].replayed == "1.0"


def test_volatile_fields_compare_by_presence_only() -> None:
    old = {"currentTime": "2024-01-01T00:00:00Z", "transactionId": 1, "interval": 300}
    new = {"currentTime": "2026-11-25T06:00:00.123Z", "transactionId": 42, "interval": 300}
    assert diff_payloads(old, new, RULES) == []
    missing = diff_payloads(old, {"interval": 300}, RULES)
    assert [(d.kind, d.path) for d in missing] == [
        (DiffKind.FIELD_MISSING, "currentTime"),
        (DiffKind.FIELD_MISSING, "transactionId"),
    ]


def test_any_two_timestamps_are_equal_by_default_but_not_without_defaults() -> None:
    old, new = {"expiryDate": "2025-12-31T23:59:59Z"}, {"expiryDate": "2026-01-31T00:00:00+01:00"}
    assert diff_payloads(old, new, RULES) == []
    strict = IgnoreRules.parse(defaults=False)
    assert [d.path for d in diff_payloads(old, new, strict)] == ["expiryDate"]
    assert diff_payloads({"interval": 1}, {"interval": 2}, RULES)[0].path == "interval"


@pytest.mark.parametrize(
    ("pattern", "path_ignored"),
    [
        ("idTagInfo.parentIdTag", True),
        ("$.idTagInfo.parentIdTag", True),
        ("parentIdTag", True),  # a bare name: that key at any depth
        ("Authorize:idTagInfo.parentIdTag", True),
        ("StartTransaction:idTagInfo.parentIdTag", False),
        ("*.parentIdTag", True),
        ("idTagInfo", True),  # a whole subtree
        ("other", False),
    ],
)
def test_ignore_patterns(pattern: str, path_ignored: bool) -> None:
    rules = IgnoreRules.parse([pattern], defaults=False)
    old = {"idTagInfo": {"status": "Accepted", "parentIdTag": "A"}}
    new = {"idTagInfo": {"status": "Accepted", "parentIdTag": "B"}}
    assert (diff_payloads(old, new, rules, "Authorize") == []) is path_ignored


def test_ignore_patterns_with_list_indices() -> None:
    rules = IgnoreRules.parse(["meterValue[*].sampledValue[0].value"], defaults=False)
    old = {"meterValue": [{"sampledValue": [{"value": "1"}, {"value": "2"}]}]}
    new = {"meterValue": [{"sampledValue": [{"value": "9"}, {"value": "8"}]}]}
    assert [d.path for d in diff_payloads(old, new, rules)] == [
        "meterValue[0].sampledValue[1].value"
    ]


@pytest.mark.parametrize("bad", [":x", "Action:", "a..b", "a[x]", ""])
def test_unreadable_ignore_pattern_is_a_value_error(bad: str) -> None:
    with pytest.raises(ValueError, match="--ignore"):
        IgnoreRules.parse([bad])


# -- frames ------------------------------------------------------------------------------


def test_callerror_instead_of_callresult_and_back() -> None:
    result = CallResult("1", {"status": "Accepted"})
    error = CallError("1", "NotImplemented", "no handler", {})
    (diff,) = compare_responses(result, error, RULES, "Reset")
    assert diff.kind is DiffKind.CALLERROR_INSTEAD
    assert diff.replayed == "NotImplemented: no handler"
    assert compare_responses(error, result, RULES, "Reset")[0].kind is DiffKind.CALLRESULT_INSTEAD


def test_error_code_compared_description_not() -> None:
    old = CallError("1", "NotImplemented", "a", {})
    assert (
        compare_responses(old, CallError("1", "NotImplemented", "b", {"x": 1}), RULES, None) == []
    )
    (diff,) = compare_responses(old, CallError("1", "NotSupported", "a", {}), RULES, None)
    assert (diff.kind, diff.recorded, diff.replayed) == (
        DiffKind.ERROR_CODE_CHANGED,
        "NotImplemented",
        "NotSupported",
    )


def test_malformed_answers() -> None:
    good = CallResult("1", {})
    bad = Malformed(ParseStatus.INVALID_JSON, "x")
    assert compare_responses(good, bad, RULES, None)[0].kind is DiffKind.MALFORMED
    assert compare_responses(bad, Malformed(ParseStatus.INVALID_JSON, "y"), RULES, None) == []


def test_judge_answer_fast_path_ignores_only_the_message_id() -> None:
    assert judge_answer(b'[3,"old",{"a":1}]', b'[3,"new-id",{"a":1}]', RULES, "X").differences == []
    judged = judge_answer(b'[3,"old",{"a":1}]', b'[3,"new",{"a":2}]', RULES, "X")
    assert [d.path for d in judged.differences] == ["a"]
    assert isinstance(judged.recorded, CallResult)
    (absent,) = judge_answer(None, b'[3,"n",{}]', RULES, "X").differences
    assert absent.kind is DiffKind.NOT_IN_RECORDING


def test_judge_request_type_change_and_lateness() -> None:
    from ocproxy.core.frames import Send

    diffs = judge_request({"a": 1}, 2, Send("id", "Notify", {"a": 1}), RULES, late=True)
    assert [(d.kind, d.path, d.where) for d in diffs] == [
        (DiffKind.VALUE_CHANGED, "message type", "request"),
        (DiffKind.LATE, "", "request"),
    ]


# -- byte rewrites -------------------------------------------------------------------------


def test_with_message_id_keeps_every_other_byte() -> None:
    raw = b' [ 2 , "a\\"b" ,"Heartbeat",  {} ]'
    assert with_message_id(raw, "new") == b' [ 2 , "new" ,"Heartbeat",  {} ]'
    assert with_message_id(b"not json", "x") == b"not json"
    assert after_message_id(b'[3,"one",{"x":1}]') == after_message_id(b'[3,"two",{"x":1}]')
    assert after_message_id(b'[3,"one",{"x":1}]') != after_message_id(b'[4,"one",{"x":1}]')


def test_shift_timestamps_keeps_each_format() -> None:
    raw = (
        b'{"a":"2024-01-01T00:00:00.123Z","b":"2024-01-01T00:00:00+02:00",'
        b'"c":"2024-01-01T23:59:59.5","d":"2024-13-01T00:00:00Z","e":"x"}'
    )
    shifted = json.loads(shift_timestamps(raw, 1.25))
    assert shifted == {
        "a": "2024-01-01T00:00:01.373Z",
        "b": "2024-01-01T00:00:01+02:00",
        "c": "2024-01-02T00:00:00.7",
        "d": "2024-13-01T00:00:00Z",  # not a date: untouched
        "e": "x",
    }
    assert shift_timestamps(raw, 0) is raw


def test_transaction_ids_learnt_from_answers_are_carried_over() -> None:
    mapping: dict[bytes, bytes] = {}
    learn_values({"transactionId": 1, "idTagInfo": {}}, {"transactionId": 7}, mapping)
    learn_values({"transactionId": "a"}, {"transactionId": "a"}, mapping)
    assert mapping == {b"1": b"7"}
    raw = b'[2,"x","MeterValues",{"connectorId":1,"transactionId": 1,"v":"transactionId"}]'
    assert map_values(raw, mapping) == raw.replace(b'"transactionId": 1', b'"transactionId": 7')
    assert map_values(raw, {}) is raw


# -- scripts ------------------------------------------------------------------------------


def test_script_pairs_answers_and_orders_exchanges() -> None:
    frames = recorded(
        (UP, '[2,"b1","BootNotification",{"chargePointVendor":"v","chargePointModel":"m"}]'),
        (DOWN, '[3,"b1",{"status":"Accepted","currentTime":"2024-01-01T00:00:00Z","interval":5}]'),
        (DOWN, '[2,"g1","GetConfiguration",{"key":["HeartbeatInterval"]}]'),
        (UP, '[2,"h1","Heartbeat",{}]'),
        (UP, '[3,"g1",{"configurationKey":[]}]'),
        (DOWN, '[3,"h1",{"currentTime":"2024-01-01T00:00:01Z"}]'),
    )
    script = build_script(SOURCE, frames, Role.CHARGER)
    assert [(s.index, s.kind, s.action, s.barrier) for s in script.steps] == [
        (1, StepKind.CALL, "BootNotification", 0),
        (3, StepKind.CALL, "Heartbeat", 1),  # recorded after the CSMS's GetConfiguration
    ]
    assert [s.response.seq if s.response else None for s in script.steps] == [1, 5]
    (expected,) = script.expected
    assert (expected.index, expected.action, expected.payload) == (
        2,
        "GetConfiguration",
        {"key": ["HeartbeatInterval"]},
    )
    assert expected.response is not None
    assert expected.response.seq == 4
    assert script.total == 3
    assert not script.warnings
    assert not script.skipped

    as_csms = build_script(SOURCE, frames, Role.CSMS)
    assert [s.action for s in as_csms.steps] == ["GetConfiguration"]
    assert as_csms.steps[0].barrier == 1  # only after the charger's BootNotification
    assert [e.action for e in as_csms.expected] == ["BootNotification", "Heartbeat"]


def test_script_keeps_malformed_frames_byte_exact_or_skips_them() -> None:
    frames = recorded(
        (UP, '[2,"h1","Heartbeat",{}]'),
        (DOWN, '[3,"h1",{"currentTime":"2024-01-01T00:00:00Z"}]'),
        (UP, b'[2,"x","Heartbeat",{}'),
        (UP, b"\xff\xfe"),
        (DOWN, b"garbage"),
        (UP, '[3,"nobody",{}]'),
    )
    script = build_script(SOURCE, frames, Role.CHARGER)
    raw_steps = [(s.kind, s.request.raw) for s in script.steps[1:]]
    assert raw_steps == [
        (StepKind.RAW, b'[2,"x","Heartbeat",{}'),
        (StepKind.RAW, b"\xff\xfe"),
        (StepKind.RAW, b'[3,"nobody",{}]'),
    ]
    assert script.unsolicited == 1  # the CSMS's garbage
    skipping = build_script(SOURCE, frames, Role.CHARGER, skip_malformed=True)
    assert [s.kind for s in skipping.steps] == [StepKind.CALL, StepKind.RAW]
    assert [(k.index, k.reason) for k in skipping.skipped] == [
        (2, "malformed (invalid_json), --skip-malformed"),
        (3, "malformed (invalid_utf8), --skip-malformed"),
    ]


def test_script_warns_about_missing_answers() -> None:
    frames = recorded(
        (UP, '[2,"a1","Authorize",{"idTag":"X"}]'),
        (DOWN, '[2,"r1","Reset",{"type":"Soft"}]'),
    )
    script = build_script(SOURCE, frames, Role.CHARGER)
    assert len(script.warnings) == 2
    assert script.warnings[0].startswith("exchange #1 Authorize: the recording holds no answer")
    assert "#2 Reset" in script.warnings[1]
    assert "will not answer" in script.warnings[1]


def test_script_skips_answers_to_calls_outside_the_window() -> None:
    frames = recorded(
        (DOWN, '[2,"r1","Reset",{"type":"Soft"}]'),
        (UP, '[3,"r1",{"status":"Accepted"}]'),
    )[1:]  # as if --from cut the CALL off
    script = build_script(SOURCE, frames, Role.CHARGER)
    assert not script.steps
    assert [k.reason for k in script.skipped] == ["answers a CALL outside the replayed window"]


# -- output --------------------------------------------------------------------------------


def render(report: ReplayReport) -> str:
    console = Console(width=160, record=True, force_terminal=False)
    print_report(report, console)
    return console.export_text()


def test_report_shows_differences_side_by_side_and_sums_up() -> None:
    report = ReplayReport("src", "charger", "ws://x/ocpp/CP-1", total=3)
    report.count("Heartbeat", Outcome.SAME)
    diff = diff_payloads(
        {"idTagInfo": {"status": "Accepted"}}, {"idTagInfo": {"status": "Blocked"}}, RULES
    )
    report.add(
        ExchangeResult(
            2,
            "Authorize",
            "call",
            Outcome.DIFFERENT,
            diff,
            b'[2,"1","Authorize",{}]',
            b'[2,"2","Authorize",{}]',
            b'[3,"1",{"idTagInfo":{"status":"Accepted"}}]',
            b'[3,"2",{"idTagInfo":{"status":"Blocked"}}]',
        )
    )
    report.add(
        ExchangeResult(
            3,
            "(malformed: invalid_json)",
            "raw",
            Outcome.SKIPPED,
            note="malformed (invalid_json), --skip-malformed",
        )
    )
    text = render(report)
    assert "#2 Authorize (call): 1 difference" in text
    assert "status changed" in text
    assert "idTagInfo.status" in text
    assert '"Accepted"' in text
    assert '"Blocked"' in text
    assert (
        "skipped #3 (malformed: invalid_json): malformed (invalid_json), --skip-malformed" in text
    )
    assert "1 difference(s) from the recording" in text
    assert report.exit_code == 1
    summary = report.as_json()
    assert summary["totals"]["different"] == 1
    assert summary["totals"]["skipped"] == 1
    assert summary["differences"][0]["differences"] == [
        'response: status changed at idTagInfo.status: "Accepted" → "Blocked"'
    ]


def test_report_exit_codes() -> None:
    report = ReplayReport("src", "csms", "ws://127.0.0.1:1", total=1)
    report.count("Heartbeat", Outcome.SAME)
    assert report.exit_code == 0
    assert "no difference" in render(report)
    report.interrupted = True
    assert report.exit_code == 130
    report.failure = (
        "exchange #1 Heartbeat: the peer closed the connection (1011) before its answer"
    )
    assert report.exit_code == 1
    assert "replay stopped: exchange #1 Heartbeat" in render(report)
