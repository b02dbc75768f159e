"""Each targeted defect yields exactly its finding; broken frames never raise.

Every case starts from traffic the auditor accepts and changes one thing. The whole
connection's findings are compared, so a mutation that also tripped another rule
(a naive timestamp reported twice, a retry counted as a second CALL) fails here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from ocproxy.audit.auditor import AuditSettings, Finding
from ocproxy.audit.ids import WINDOW
from ocproxy.audit.rules import RULES, Severity
from ocproxy.core.frames import ParseStatus
from ocproxy.core.handshake import OcppVersion

from .helpers import (
    CP,
    CS,
    NOW,
    SUBPROTOCOL,
    V2X,
    VERSIONS,
    Feed,
    Step,
    audit_frames,
    boot_request,
    boot_response,
    heartbeat_response,
    meter_values_request,
    only,
    rules,
    status_request,
    summary,
)

V16, V201, V21 = OcppVersion.V16, OcppVersion.V201, OcppVersion.V21
E, W, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO
NAIVE = "2026-01-01T10:00:00"
# A response timeout longer than the retries in these cases, which are about ids.
PATIENT = AuditSettings(response_timeout_s=60.0)


@dataclass(frozen=True)
class Case:
    id: str
    version: OcppVersion
    steps: list[Step]
    rule: str | None  # None: no finding at all
    severity: Severity | None = None  # None: the rule's default
    path: str | None = None
    message: str = ""  # a substring the message must contain
    seq: int | None = None  # the frame the finding cites (default: the last one)
    settings: AuditSettings = field(default_factory=AuditSettings)


def _with(payload: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**payload, **changes}


def _without(payload: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k != key}


def boot(version: OcppVersion, request: dict[str, Any] | None = None) -> list[Step]:
    """A charger's BootNotification, answered; the mutation goes into ``request``."""
    return [
        (CP, [2, "b1", "BootNotification", request or boot_request(version)], 0.0),
        (CS, [3, "b1", boot_response()], 0.2),
    ]


def answered(action: str, request: dict[str, Any], response: Any, mid: str = "m1") -> list[Step]:
    return [(CP, [2, mid, action, request], 0.0), (CS, [3, mid, response], 0.2)]


def heartbeat(mid: str, at: float, answer: bool = True) -> list[Step]:
    steps: list[Step] = [(CP, [2, mid, "Heartbeat", {}], at)]
    if answer:
        steps.append((CS, [3, mid, heartbeat_response()], at + 0.1))
    return steps


def _schema_cases() -> list[Case]:
    cases = []
    for v in VERSIONS:
        vendor = "chargePointVendor" if v is V16 else "chargingStation"
        cases += [
            Case(f"{v}-valid-boot", v, boot(v), None),
            Case(
                f"{v}-missing-required",
                v,
                boot(v, _without(boot_request(v), vendor)),
                "schema-required",
                path="$",
                message=vendor,
                seq=0,
            ),
            Case(
                f"{v}-extra-field",
                v,
                boot(v, _with(boot_request(v), colour="red")),
                "schema-additional-property",
                path="$",
                message="colour",
                seq=0,
            ),
            Case(
                f"{v}-wrong-case-enum",
                v,
                answered(
                    "BootNotification", boot_request(v), _with(boot_response(), status="accepted")
                ),
                "schema-enum",
                path="$.status",
                message="differs only in case from 'Accepted'",
            ),
            Case(
                f"{v}-naive-timestamp-in-response",
                v,
                answered(
                    "BootNotification", boot_request(v), _with(boot_response(), currentTime=NAIVE)
                ),
                "timestamp-without-zone",
                path="$.currentTime",
                message=NAIVE,
            ),
            Case(
                f"{v}-naive-timestamp-in-array",
                v,
                answered("MeterValues", _naive_meter_values(v), {}),
                "timestamp-without-zone",
                path="$.meterValue[0].timestamp",
                seq=0,
            ),
            Case(
                f"{v}-status-without-zone",
                v,
                answered("StatusNotification", _with(status_request(v), timestamp=NAIVE), {}),
                "timestamp-without-zone",
                path="$.timestamp",
                seq=0,
            ),
        ]
    # Naive timestamps in every spelling the field has produced: one finding each.
    for naive in ("2026-01-01T10:00", "2026-01-01 10:00:00", "2026-01-01t10:00:00.250"):
        cases.append(
            Case(
                f"2.0.1-naive-{naive}",
                V201,
                answered("StatusNotification", _with(status_request(V201), timestamp=naive), {}),
                "timestamp-without-zone",
                path="$.timestamp",
                seq=0,
            )
        )
    cases += [
        # A free-form string that looks like a time is not a date-time field: no finding.
        *(
            Case(
                f"{v}-naive-looking-free-text",
                v,
                answered(
                    "DataTransfer", {"vendorId": "ACME", "data": NAIVE}, {"status": "Accepted"}
                ),
                None,
            )
            for v in (V16, V201)
        ),
        # customData is allowed on every 2.x object, with whatever vendor fields in it
        *(
            Case(
                f"{v}-customData-allowed",
                v,
                boot(v, _with(boot_request(v), customData={"vendorId": "ACME", "x": [1]})),
                None,
            )
            for v in V2X
        ),
        Case(
            "1.6-customData-is-extra",
            V16,
            boot(V16, _with(boot_request(V16), customData={"vendorId": "ACME"})),
            "schema-additional-property",
            path="$",
            seq=0,
        ),
        Case(
            "1.6-number-as-string",
            V16,
            answered("StatusNotification", _with(status_request(V16), connectorId="1"), {}),
            "schema-type",
            path="$.connectorId",
            message="is the string '1'",
            seq=0,
        ),
        *(
            Case(
                f"{v}-number-as-string",
                v,
                answered("MeterValues", meter_values_request(v, "12.5"), {}),
                "schema-type",
                path="$.meterValue[0].sampledValue[0].value",
                message="is the string '12.5'",
                seq=0,
            )
            for v in V2X
        ),
        Case(
            "1.6-meter-value-is-a-string-there",
            V16,
            answered("MeterValues", meter_values_request(V16, "12.5"), {}),
            None,
        ),
        Case(
            "1.6-over-long-string",
            V16,
            boot(V16, _with(boot_request(V16), chargePointVendor="V" * 21)),
            "schema-max-length",
            path="$.chargePointVendor",
            seq=0,
        ),
        Case(
            "1.6-longest-string-allowed",
            V16,
            boot(V16, _with(boot_request(V16), chargePointVendor="V" * 20)),
            None,
        ),
        *(
            Case(
                f"{v}-over-long-string",
                v,
                boot(
                    v,
                    {
                        "chargingStation": {"model": "M", "vendorName": "V" * 51},
                        "reason": "PowerUp",
                    },
                ),
                "schema-max-length",
                path="$.chargingStation.vendorName",
                seq=0,
            )
            for v in V2X
        ),
        Case(
            "1.6-wrong-type-nested",
            V16,
            answered("MeterValues", meter_values_request(V16, 12), {}),
            "schema-type",
            path="$.meterValue[0].sampledValue[0].value",
            seq=0,
        ),
    ]
    return cases


def _naive_meter_values(version: OcppVersion) -> dict[str, Any]:
    payload = meter_values_request(version, "12" if version is V16 else 12.5)
    payload["meterValue"][0]["timestamp"] = NAIVE
    return payload


def _rpc_cases() -> list[Case]:
    cases = []
    for v in VERSIONS:
        cases += [
            Case(f"{v}-empty-id", v, [(CP, [2, "", "Heartbeat", {}], 0.0)], "message-id-empty"),
            Case(
                f"{v}-reused-answered-id",
                v,
                [*heartbeat("1", 0.0), *heartbeat("1", 10.0, answer=False)],
                "message-id-reused",
                seq=2,
            ),
            Case(
                f"{v}-each-sender-its-own-ids",
                v,
                [
                    *heartbeat("1", 0.0),
                    (CS, [2, "1", "ClearCache", {}], 5.0),
                    (CP, [3, "1", {"status": "Accepted"}], 5.1),
                ],
                None,
            ),
            Case(
                f"{v}-unknown-response-id",
                v,
                [(CS, [3, "nope", heartbeat_response()], 0.0)],
                "unknown-response-id",
            ),
            Case(
                f"{v}-duplicate-response",
                v,
                [*heartbeat("1", 0.0), (CS, [3, "1", heartbeat_response()], 0.5)],
                "duplicate-response",
            ),
            Case(
                f"{v}-callerror-without-call",
                v,
                [(CS, [4, "nope", "InternalError", "", {}], 0.0)],
                "callerror-without-call",
                W,
            ),
            Case(
                f"{v}-crossing-calls",
                v,
                [
                    (CP, [2, "c1", "Heartbeat", {}], 0.0),
                    (CS, [2, "s1", "ClearCache", {}], 0.1),
                    (CS, [3, "c1", heartbeat_response()], 0.2),
                    (CP, [3, "s1", {"status": "Accepted"}], 0.3),
                ],
                None,
            ),
            Case(
                f"{v}-two-outstanding-calls",
                v,
                [(CP, [2, "1", "Heartbeat", {}], 0.0), (CP, [2, "2", "Heartbeat", {}], 1.0)],
                "outstanding-call",
                W if v is V16 else E,
            ),
            Case(
                f"{v}-two-outstanding-calls-from-csms",
                v,
                [(CS, [2, "1", "ClearCache", {}], 0.0), (CS, [2, "2", "ClearCache", {}], 1.0)],
                "outstanding-call",
                W if v is V16 else E,
            ),
            Case(
                f"{v}-late-response",
                v,
                [*heartbeat("1", 0.0, answer=False), (CS, [3, "1", heartbeat_response()], 6.0)],
                "late-response",
                W,
                message="after 6.0 s (timeout 5 s)",
                settings=AuditSettings(response_timeout_s=5.0),
            ),
            Case(
                f"{v}-response-just-in-time",
                v,
                [*heartbeat("1", 0.0, answer=False), (CS, [3, "1", heartbeat_response()], 4.9)],
                None,
                settings=AuditSettings(response_timeout_s=5.0),
            ),
            Case(
                f"{v}-unknown-action",
                v,
                [(CP, [2, "1", "BootNotificationRequest", boot_request(v)], 0.0)],
                "unknown-action",
                message="BootNotificationRequest",
            ),
            Case(
                f"{v}-action-case-matters",
                v,
                [(CP, [2, "1", "heartbeat", {}], 0.0)],
                "unknown-action",
            ),
            Case(
                f"{v}-callerror-answers-call",
                v,
                [
                    (CP, [2, "1", "Heartbeat", {}], 0.0),
                    (CS, [4, "1", "InternalError", "", {}], 0.1),
                ],
                None,
            ),
        ]
    for v in V2X:
        cases += [
            # the receiver of a broken frame answers with id "-1" when it cannot read one
            Case(
                f"{v}-callerror-minus-one-after-malformed",
                v,
                [(CP, "[2, 'not json']", 0.0), (CS, [4, "-1", "RpcFrameworkError", "", {}], 0.1)],
                "malformed-frame",
                seq=0,
            ),
            Case(
                f"{v}-callerror-minus-one-without-malformed",
                v,
                [(CS, [4, "-1", "RpcFrameworkError", "", {}], 0.1)],
                "callerror-without-call",
                W,
            ),
        ]
    cases += [
        # a retry of an unanswered CALL with the same id: allowed in 2.1, a reuse before;
        # either way it replaces the CALL it repeats, so it is no second outstanding CALL
        Case(
            "2.1-retry-of-unanswered-call",
            V21,
            [*heartbeat("1", 0.0, answer=False), *heartbeat("1", 31.0)],
            None,
            settings=PATIENT,
        ),
        Case(
            "2.1-reuse-of-answered-id",
            V21,
            [*heartbeat("1", 0.0), *heartbeat("1", 60.0)],
            "message-id-reused",
            seq=2,
        ),
        Case(
            "2.0.1-retry-reuses-id",
            V201,
            [*heartbeat("1", 0.0, answer=False), *heartbeat("1", 31.0)],
            "message-id-reused",
            seq=1,
            settings=PATIENT,
        ),
        Case(
            "1.6-retry-reuses-id",
            V16,
            [*heartbeat("1", 0.0, answer=False), *heartbeat("1", 31.0)],
            "message-id-reused",
            seq=1,
            settings=PATIENT,
        ),
        # SEND (2.1) is exempt from the one-outstanding-CALL rule, and never answered
        Case(
            "2.1-send-while-call-outstanding",
            V21,
            [
                (CP, [2, "1", "Heartbeat", {}], 0.0),
                (CP, [6, "2", "NotifyPeriodicEventStream", _stream()], 0.1),
            ],
            None,
        ),
        Case(
            "2.1-call-after-sends",
            V21,
            [
                (CP, [6, "1", "NotifyPeriodicEventStream", _stream()], 0.0),
                (CP, [6, "2", "NotifyPeriodicEventStream", _stream()], 0.1),
                (CP, [2, "3", "Heartbeat", {}], 0.2),
            ],
            None,
        ),
        Case(
            "2.1-result-to-send",
            V21,
            [(CP, [6, "1", "NotifyPeriodicEventStream", _stream()], 0.0), (CS, [3, "1", {}], 0.1)],
            "response-to-send",
        ),
        Case(
            "2.1-error-to-send",
            V21,
            [
                (CP, [6, "1", "NotifyPeriodicEventStream", _stream()], 0.0),
                (CS, [4, "1", "InternalError", "", {}], 0.1),
            ],
            "response-to-send",
        ),
        Case(
            "2.1-call-of-send-only-action-answered",  # no response schema: no crash either
            V21,
            [(CP, [2, "1", "NotifyPeriodicEventStream", _stream()], 0.0), (CS, [3, "1", {}], 0.1)],
            None,
        ),
        Case(
            "2.1-callresulterror-answers-result",
            V21,
            [*heartbeat("1", 0.0), (CP, [5, "1", "InternalError", "", {}], 0.5)],
            None,
        ),
        Case(
            "2.1-callresulterror-answers-nothing",
            V21,
            [(CP, [5, "1", "InternalError", "", {}], 0.5)],
            "callerror-without-call",
            W,
        ),
        Case(
            "2.1-signed-variant", V21, [(CP, [2, "1", "Heartbeat-Signed", {"jws": "x"}], 0.0)], None
        ),
    ]
    for v in (V16, V201):
        cases += [
            Case(
                f"{v}-callresulterror-not-in-version",
                v,
                [*heartbeat("1", 0.0), (CP, [5, "1", "InternalError", "", {}], 0.5)],
                "message-type-not-in-version",
                message="CALLRESULTERROR",
            ),
            Case(
                f"{v}-send-not-in-version",
                v,
                [(CP, [6, "1", "Heartbeat", {}], 0.0)],
                "message-type-not-in-version",
                message="SEND",
            ),
        ]
    return cases


def _stream() -> dict[str, Any]:
    return {"id": 1, "pending": 0, "basetime": NOW, "data": [{"t": 0.0, "v": "230.1"}]}


_ERROR_CODES = [
    (V16, "FormationViolation", None, None),
    (V16, "OccurenceConstraintViolation", None, None),
    (V16, "FormatViolation", E, "did you mean 'FormationViolation'?"),
    (V16, "OccurrenceConstraintViolation", E, "did you mean 'OccurenceConstraintViolation'?"),
    (V16, "RpcFrameworkError", E, "not defined in OCPP 1.6"),
    (V201, "FormatViolation", None, None),
    (V201, "OccurrenceConstraintViolation", None, None),
    (V201, "MessageTypeNotSupported", None, None),
    (V201, "FormationViolation", E, "did you mean 'FormatViolation'?"),
    (V201, "OccurenceConstraintViolation", INFO, "1.6 spelling"),
    (V201, "formatviolation", E, "did you mean 'FormatViolation'?"),
    (V21, "FormatViolation", None, None),
    (V21, "RpcFrameworkError", None, None),
    (V21, "FormationViolation", E, "did you mean 'FormatViolation'?"),
    (V21, "OccurenceConstraintViolation", E, "not defined in OCPP 2.1"),
    (V21, "Timeout", E, "not defined in OCPP 2.1"),
]


def _error_code_cases() -> list[Case]:
    return [
        Case(
            f"{v}-error-code-{code}",
            v,
            [(CP, [2, "1", "Heartbeat", {}], 0.0), (CS, [4, "1", code, "", {}], 0.1)],
            None if severity is None else "error-code-spelling",
            severity,
            message=message or "",
        )
        for v, code, severity, message in _ERROR_CODES
    ]


def _heartbeat_cases() -> list[Case]:
    def session(*beats: float, extra: Sequence[Step] = ()) -> list[Step]:
        steps = [
            (CP, [2, "b1", "BootNotification", boot_request(V16)], 0.0),
            (CS, [3, "b1", boot_response(interval=60)], 0.1),
        ]
        for n, at in enumerate(beats):
            steps += heartbeat(f"h{n}", at)
        return sorted([*steps, *extra], key=lambda s: s[2])

    return [
        Case("heartbeat-on-time", V16, session(60, 120, 180, 240), None),
        Case("heartbeat-within-slack", V16, session(60, 130, 185, 240), None),
        Case(
            "heartbeat-drift",
            V16,
            session(200, 400),
            "heartbeat-drift",
            message="200 s after the previous one; the CSMS set 60 s",
            seq=4,
        ),
        # the charger may restart its timer after any message it sends
        Case(
            "heartbeat-timer-restarted-by-traffic",
            V16,
            session(
                60, 200, extra=answered_at("StatusNotification", status_request(V16), {}, 140.0)
            ),
            None,
        ),
    ]


def answered_at(action: str, request: dict[str, Any], response: Any, at: float) -> list[Step]:
    return [(CP, [2, f"x{at}", action, request], at), (CS, [3, f"x{at}", response], at + 0.1)]


CASES = [*_schema_cases(), *_rpc_cases(), *_error_code_cases(), *_heartbeat_cases()]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_mutation_yields_exactly_its_finding(case: Case) -> None:
    feed = Feed(case.settings)
    connection_id, opened = feed.open(SUBPROTOCOL[case.version])
    assert opened == []
    found = feed.steps(connection_id, case.steps)
    if case.rule is None:
        assert summary(found) == []
        return
    finding = only(found)
    assert finding.rule == case.rule
    assert finding.severity == (case.severity or RULES[case.rule].severity)
    assert finding.path == case.path
    assert case.message in finding.message
    assert finding.seq == (len(case.steps) - 1 if case.seq is None else case.seq)
    assert finding.connection_id == connection_id


def test_case_ids_are_unique() -> None:
    assert len({c.id for c in CASES}) == len(CASES)


# -- more than one finding, on purpose -------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_naive_timestamp_does_not_hide_other_violations(version: OcppVersion) -> None:
    """The schema validator stops at its first violation, which a naive timestamp would
    be; the violations after it are still reported (once each)."""
    enum_field = "status" if version is V16 else "connectorStatus"
    payload = _with(status_request(version), timestamp=NAIVE, **{enum_field: "available"})
    found = audit_frames([(CP, [2, "1", "StatusNotification", payload], 0.0)], version=version)
    assert summary(found) == [
        ("timestamp-without-zone", E, "$.timestamp"),
        ("schema-enum", E, f"$.{enum_field}"),
    ]


def test_several_naive_timestamps_one_finding_each() -> None:
    payload = meter_values_request(V201, 1.0)
    payload["meterValue"] = [
        {"timestamp": NAIVE, "sampledValue": [{"value": 1.0}]},
        {"timestamp": NOW, "sampledValue": [{"value": 2.0}]},
        {"timestamp": "2026-01-01T10:00:30", "sampledValue": [{"value": 3.0}]},
    ]
    found = audit_frames([(CP, [2, "1", "MeterValues", payload], 0.0)], version=V201)
    assert summary(found) == [
        ("timestamp-without-zone", E, "$.meterValue[0].timestamp"),
        ("timestamp-without-zone", E, "$.meterValue[2].timestamp"),
    ]


def test_1_6_retry_while_another_call_is_outstanding_counts_that_one() -> None:
    steps: list[Step] = [
        (CP, [2, "1", "Heartbeat", {}], 0.0),
        (CP, [2, "2", "StatusNotification", status_request(V16)], 1.0),
        (CP, [2, "2", "StatusNotification", status_request(V16)], 31.0),
    ]
    found = audit_frames(steps, version=V16, settings=PATIENT)
    assert [(f.rule, f.seq) for f in found] == [
        ("outstanding-call", 1),
        ("message-id-reused", 2),
        ("outstanding-call", 2),
    ]
    assert "while 1 CALL(s)" in found[2].message


def test_broken_answer_still_answers_its_call() -> None:
    """A CALLRESULT with a broken payload is malformed, but the CALL is answered: the
    next CALL is not a second outstanding one."""
    steps: list[Step] = [
        (CP, [2, "1", "Heartbeat", {}], 0.0),
        (CS, [3, "1", "not an object"], 0.1),
        (CP, [2, "2", "Heartbeat", {}], 1.0),
    ]
    assert rules(audit_frames(steps, version=V201)) == ["malformed-frame"]


@pytest.mark.parametrize(
    ("version", "broken_by", "expected"),
    [
        (V201, CP, ["malformed-frame"]),
        (V21, CP, ["malformed-frame"]),
        # the "-1" answers the other side's broken frame, not one's own
        (V201, CS, ["malformed-frame", "callerror-without-call"]),
        # 1.6 has no "-1" convention: the CALLERROR answers nothing
        (V16, CP, ["malformed-frame", "callerror-without-call"]),
    ],
)
def test_callerror_minus_one_after_a_broken_frame(
    version: OcppVersion, broken_by: Any, expected: list[str]
) -> None:
    code = "FormationViolation" if version is V16 else "RpcFrameworkError"
    steps: list[Step] = [(broken_by, "[2, 'not json']", 0.0), (CS, [4, "-1", code, "", {}], 0.1)]
    found = audit_frames(steps, version=version)
    assert rules(found) == expected
    assert [f.seq for f in found] == [0, 1][: len(expected)]


# -- duplicate ids across connections ----------------------------------------------------


def _two_connections(version: OcppVersion, second_identity: str) -> tuple[list[Finding], str]:
    feed = Feed()
    first, _ = feed.open(SUBPROTOCOL[version], identity="CP-1")
    assert feed.steps(first, heartbeat("1", 0.0)) == []
    feed.close(first, 1.0)
    second, _ = feed.open(SUBPROTOCOL[version], identity=second_identity, at=2.0)
    return feed.steps(second, heartbeat("1", 3.0)), second


@pytest.mark.parametrize("version", V2X)
def test_2x_id_unique_across_connections_of_an_identity(version: OcppVersion) -> None:
    found, second = _two_connections(version, "CP-1")
    finding = only(found)
    assert (finding.rule, finding.connection_id, finding.seq) == ("message-id-reused", second, 0)
    assert "this identity" in finding.message
    assert _two_connections(version, "CP-2")[0] == []


def test_1_6_ids_are_unique_per_connection_only() -> None:
    assert _two_connections(V16, "CP-1")[0] == []


def test_2_1_retry_on_a_new_connection_is_allowed() -> None:
    feed = Feed()
    first, _ = feed.open("ocpp2.1")
    assert feed.steps(first, heartbeat("1", 0.0, answer=False)) == []
    feed.close(first, 1.0)
    second, _ = feed.open("ocpp2.1", at=2.0)
    assert feed.steps(second, heartbeat("1", 3.0)) == []


def test_2x_counter_restarting_after_a_long_connection_is_found() -> None:
    """Ids are remembered in bounded memory (ocproxy.audit.ids): a counter is kept as a
    range, so starting again from 1 is found after far more ids than are kept exactly."""
    feed = Feed()
    first, _ = feed.open("ocpp2.0.1", identity="CP-1")
    steps = [step for i in range(1, 3 * WINDOW) for step in heartbeat(str(i), i * 60.0)]
    assert feed.steps(first, steps) == []
    feed.close(first, 3 * WINDOW * 60.0)
    second, _ = feed.open("ocpp2.0.1", identity="CP-1", at=3 * WINDOW * 60.0 + 1)
    found = feed.steps(second, heartbeat("1", 3 * WINDOW * 60.0 + 2))
    assert rules(found) == ["message-id-reused"]


def test_two_live_connections_of_one_identity_share_2x_ids() -> None:
    feed = Feed()
    a, _ = feed.open("ocpp2.0.1")
    b, _ = feed.open("ocpp2.0.1")
    assert feed.steps(a, heartbeat("1", 0.0)) == []
    assert rules(feed.steps(b, heartbeat("1", 1.0))) == ["message-id-reused"]


# -- malformed frames --------------------------------------------------------------------

MALFORMED: dict[ParseStatus, tuple[Any, str]] = {
    ParseStatus.INVALID_UTF8: (b"\xff\xfe[2]", "malformed-frame"),
    ParseStatus.INVALID_JSON: ('[2, "1", "Heartbeat", {},]', "malformed-frame"),
    ParseStatus.NOT_AN_ARRAY: ('{"action": "Heartbeat"}', "malformed-frame"),
    ParseStatus.EMPTY_ARRAY: ("[]", "malformed-frame"),
    ParseStatus.MESSAGE_TYPE_NOT_INTEGER: ('["2", "1", "Heartbeat", {}]', "malformed-frame"),
    ParseStatus.UNKNOWN_MESSAGE_TYPE: ('[7, "1", "Heartbeat", {}]', "malformed-frame"),
    ParseStatus.WRONG_ARITY: ('[2, "1", "Heartbeat"]', "malformed-frame"),
    ParseStatus.MESSAGE_ID_NOT_STRING: ('[2, 1, "Heartbeat", {}]', "message-id-type"),
    ParseStatus.MESSAGE_ID_TOO_LONG: (
        json.dumps([2, "x" * 37, "Heartbeat", {}]),
        "message-id-too-long",
    ),
    ParseStatus.ACTION_NOT_STRING: ('[2, "1", 7, {}]', "malformed-frame"),
    ParseStatus.PAYLOAD_NOT_OBJECT: ('[2, "1", "Heartbeat", []]', "malformed-frame"),
    ParseStatus.ERROR_CODE_NOT_STRING: ('[4, "1", 1, "", {}]', "malformed-frame"),
    ParseStatus.ERROR_DESCRIPTION_NOT_STRING: (
        '[4, "1", "InternalError", null, {}]',
        "malformed-frame",
    ),
    ParseStatus.ERROR_DETAILS_NOT_OBJECT: ('[4, "1", "InternalError", "", "x"]', "malformed-frame"),
    ParseStatus.TOO_LARGE: (None, "message-too-large"),
}


def test_every_parse_status_is_covered() -> None:
    assert set(MALFORMED) == set(ParseStatus) - {ParseStatus.OK}


@pytest.mark.parametrize("version", [*VERSIONS, None], ids=str)
@pytest.mark.parametrize("status", list(MALFORMED), ids=str)
def test_malformed_frame_yields_its_rule(status: ParseStatus, version: OcppVersion | None) -> None:
    message, rule = MALFORMED[status]
    finding = only(audit_frames([(CP, message, 0.0)], version=version))
    assert finding.rule == rule
    assert finding.severity == E
    assert finding.seq == 0
    assert finding.message.startswith(str(status))


# -- nothing breaks it -------------------------------------------------------------------

NASTY: list[Any] = [
    b"",
    b"\x00\x01\x02\x03",
    b"\xc3\x28",
    bytes(range(256)),
    "",
    " ",
    "null",
    "true",
    "42",
    '"text"',
    "{}",
    "[",
    "]",
    "[[[[[[[[",
    "[" * 100_000 + "]" * 100_000,
    "[2" + ",[" * 5_000,
    '[2, "1", "Heartbeat", {}] trailing',
    "[NaN]",
    '[2, "1", "Heartbeat", {"x": Infinity}]',
    "[1e999]",
    '[2, "1", "DataTransfer", {"vendorId": "x", "data": 1e999}]',
    "[9999999999999999999999999999999999]",
    "[-1]",
    "[0]",
    '[3.0, "1", {}]',
    '[true, "1", {}]',
    '[2.5, "1", "Heartbeat", {}]',
    '[2, "\\ud800", "Heartbeat", {}]',
    '[2, "1", "\\ud800", {}]',
    '[2, "1", "Heartbeat", {"\\ud800": "\\udfff"}]',
    '[2, "1", "BootNotification", {"chargePointVendor": "\\u0000", "chargePointModel": []}]',
    '[2, "1", "BootNotification", {"chargePointVendor": {"a": {"b": {"c": null}}}}]',
    '[2, "1", "MeterValues", {"connectorId": 1e308, "meterValue": [null, 1, "x", []]}]',
    '[2, "1", "StartTransaction", {"connectorId": 99999999999999999999999, "idTag": 5, '
    '"meterStart": "0", "timestamp": 0}]',
    '[2, "1", "StatusNotification", {"connectorId": -1, "errorCode": "noerror", '
    '"status": null, "timestamp": "2026-13-45T99:99:99"}]',
    '[2, "1", "DataTransfer", {"vendorId": "x", "data": ' + "[" * 900 + "]" * 900 + "}]",
    '[2, "1", "DataTransfer", {"vendorId": "x", "messageId": '
    + '{"a":' * 900
    + "1"
    + "}" * 900
    + "}]",
    '[2, "1", "TransactionEvent", {"eventType": "Started", "timestamp": "2026-01-01T10:00:00", '
    '"triggerReason": "Authorized", "seqNo": -1, "transactionInfo": {"transactionId": 1}}]',
    '[2, "1", "Heartbeat", {"a": "' + "x" * 1_000_000 + '"}]',
    '[2, "' + "x" * 10_000 + '", "Heartbeat", {}]',
    '[2, "1", "' + "A" * 10_000 + '", {}]',
    '[3, "1", {"interval": true, "status": "Accepted", "currentTime": 5}]',
    "[3, null, {}]",
    '[4, "1", "", "", {}]',
    '[4, "-1", "FormatViolation", "' + "x" * 10_000 + '", {"deep": [[[[{}]]]]}]',
    '[5, "1", "InternalError", "", {}]',
    '[6, "1", "Heartbeat", {}]',
    '[6, "1", "NotifyPeriodicEventStream", {"data": "x"}]',
    '[2, "1", "Heartbeat", {}, "extra"]',
    '[2, "1", "Heartbeat", {"a": 1, "a": 2}]',
    '[99999, "1"]',
    "[-99999]",
    '\ufeff[2, "1", "Heartbeat", {}]',
    None,  # over the size limit
]


# The frames above that are valid OCPP 2.0.1 frames after all: DataTransfer.data is of
# any type (deeply nested, or 1e999, which is JSON syntax even if no double holds it),
# and "\ud800" is a legal JSON escape, so a one-character message id.
STILL_VALID_ON_201 = [
    m
    for m in NASTY
    if isinstance(m, str) and ('"data": [[[[' in m or '"data": 1e999' in m or '"\\ud800", "H' in m)
]
SUBPROTOCOLS = [*SUBPROTOCOL.values(), "ocpp2.0", "ocpp1.5", None]


@pytest.mark.parametrize("subprotocol", SUBPROTOCOLS, ids=str)
def test_nasty_frames_never_raise(subprotocol: str | None) -> None:
    feed = Feed(AuditSettings(response_timeout_s=0.001))
    connection_id, _ = feed.open(subprotocol)
    # A CALL each way, so that nasty answers have something to pair with.
    feed.send(connection_id, CP, [2, "1", "BootNotification", {}], 0.0)
    feed.send(connection_id, CS, [2, "1", "Reset", {}], 0.0)
    for n, message in enumerate(NASTY):
        for direction in (CP, CS):
            found = feed.send(connection_id, direction, message, 1.0 + n)
            assert all(isinstance(f, Finding) and f.rule in RULES for f in found)
    assert len(feed.findings) > len(NASTY)
    feed.close(connection_id, 100.0)


@pytest.mark.parametrize("index", range(len(NASTY)))
def test_broken_frame_alone_yields_a_finding(index: int) -> None:
    message = NASTY[index]
    found = audit_frames([(CP, message, 0.0)], version=V201)
    assert (found == []) == (message in STILL_VALID_ON_201), summary(found)


def test_still_valid_frames_are_the_expected_three() -> None:
    assert len(STILL_VALID_ON_201) == 3
