"""Audit precision: every schema violation of a frame, one unanswered-call per CALL that
got no answer (and no outstanding-call flood after it), suspicious identities."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ocproxy.audit.auditor import AuditSettings
from ocproxy.audit.offline import audit_recording, open_recording
from ocproxy.audit.parallel import audit_file
from ocproxy.audit.rules import Severity
from ocproxy.cli import main
from ocproxy.core.events import ConnectionOpened, FrameReceived
from ocproxy.core.frames import Opcode
from ocproxy.core.handshake import OcppVersion
from ocproxy.recorder import Recorder

from .helpers import (
    CP,
    CS,
    NOW,
    SUBPROTOCOL,
    T0,
    Feed,
    Step,
    audit_frames,
    heartbeat_response,
    status_request,
    summary,
)

V16, V201 = OcppVersion.V16, OcppVersion.V201
E, W = Severity.ERROR, Severity.WARNING


# -- every schema violation ------------------------------------------------------------


def test_every_violation_of_a_frame_is_reported_with_its_path() -> None:
    """The issue's example: a type error and an enum error in one StatusNotification."""
    payload = {**status_request(V16), "connectorId": "1", "errorCode": "noerror"}
    found = audit_frames([(CP, [2, "1", "StatusNotification", payload], 0.0)], version=V16)
    assert summary(found) == [
        ("schema-type", E, "$.connectorId"),
        ("schema-enum", E, "$.errorCode"),
    ]
    assert "is the string '1'" in found[0].message
    assert "differs only in case from 'NoError'" in found[1].message


def test_each_missing_and_each_extra_property_is_one_finding() -> None:
    payload = {"chargePointModel": "X", "colour": "red", "size": 3}
    found = audit_frames([(CP, [2, "1", "BootNotification", payload], 0.0)], version=V16)
    assert sorted((f.rule, f.message.split(": ", 1)[1]) for f in found) == [
        ("schema-additional-property", "$ has 'colour', which the schema does not define"),
        ("schema-additional-property", "$ has 'size', which the schema does not define"),
        ("schema-required", "$ lacks the required property 'chargePointVendor'"),
    ]


def test_violations_deep_in_arrays_each_have_their_path() -> None:
    payload = {
        "evseId": 1,
        "meterValue": [
            {"timestamp": NOW, "sampledValue": [{"value": "1.5"}, {"value": 2, "unit": 1}]},
            {"timestamp": "yesterday", "sampledValue": []},
        ],
    }
    found = audit_frames([(CP, [2, "1", "MeterValues", payload], 0.0)], version=V201)
    assert [(f.rule, f.path) for f in found] == [
        ("schema-type", "$.meterValue[0].sampledValue[0].value"),
        ("schema-additional-property", "$.meterValue[0].sampledValue[1]"),
        ("schema-violation", "$.meterValue[1].sampledValue"),  # minItems
        ("schema-format", "$.meterValue[1].timestamp"),
    ]


def test_a_naive_timestamp_is_one_finding_among_the_others() -> None:
    payload = {**status_request(V16), "timestamp": "2026-01-01T10:00:00", "status": "free"}
    found = audit_frames([(CP, [2, "1", "StatusNotification", payload], 0.0)], version=V16)
    assert summary(found) == [
        ("timestamp-without-zone", E, "$.timestamp"),
        ("schema-enum", E, "$.status"),
    ]


# -- unanswered CALLs --------------------------------------------------------------------


def heartbeat(mid: str, at: float, answer: bool = True) -> list[Step]:
    steps: list[Step] = [(CP, [2, mid, "Heartbeat", {}], at)]
    if answer:
        steps.append((CS, [3, mid, heartbeat_response()], at + 0.1))
    return steps


def _heartbeats(first: float, every: float, count: int, prefix: str = "h") -> list[Step]:
    steps: list[Step] = []
    for n in range(count):
        steps += heartbeat(f"{prefix}{n}", first + n * every)
    return steps


def test_one_unanswered_call_and_no_flood_after_it() -> None:
    """The issue's false flood: one CALL never answered made every later CALL of the
    connection an outstanding-call. Now: one unanswered-call, at the deadline."""
    steps = [(CP, [2, "s", "StatusNotification", status_request(V16)], 0.0)]
    steps += _heartbeats(40.0, 60.0, 50)
    found = audit_frames(steps, version=V16)
    assert [(f.rule, f.seq, f.ts) for f in found] == [("unanswered-call", 0, T0 + 30.0)]
    assert found[0].message == ("StatusNotification 's' from the charger got no answer within 30 s")


def test_calls_before_the_deadline_are_still_outstanding() -> None:
    steps = [(CP, [2, "s", "StatusNotification", status_request(V16)], 0.0)]
    steps += _heartbeats(10.0, 10.0, 4)  # up to 30 s the first CALL is still pending
    found = audit_frames(steps, version=V16)
    assert [(f.rule, f.seq) for f in found] == [
        ("outstanding-call", 1),
        ("outstanding-call", 3),
        ("outstanding-call", 5),
        ("unanswered-call", 0),
    ]


@pytest.mark.parametrize("timeout", [5.0, 60.0])
def test_the_timeout_is_the_option_on_the_recording_timeline(timeout: float) -> None:
    steps = [(CS, [2, "r", "Reset", {"type": "Soft"}], 0.0), *_heartbeats(10.0, 10.0, 3)]
    found = audit_frames(steps, version=V16, settings=AuditSettings(response_timeout_s=timeout))
    if timeout == 5.0:
        assert [(f.rule, f.ts) for f in found] == [("unanswered-call", T0 + 5.0)]
        assert "Reset 'r' from the CSMS" in found[0].message
    else:
        assert found == []


def test_a_late_answer_first_after_the_deadline_is_one_late_response() -> None:
    steps = [*heartbeat("1", 0.0, answer=False), (CS, [3, "1", heartbeat_response()], 45.0)]
    assert [(f.rule, f.seq) for f in audit_frames(steps)] == [("late-response", 1)]


def test_an_answer_after_the_call_was_reported_unanswered_is_not_reported_again() -> None:
    steps = [
        *heartbeat("1", 0.0, answer=False),
        (CS, [2, "c", "ClearCache", {}], 35.0),  # time passes on the connection
        (CP, [3, "c", {"status": "Accepted"}], 35.1),
        (CS, [3, "1", heartbeat_response()], 50.0),
    ]
    assert [(f.rule, f.seq) for f in audit_frames(steps)] == [("unanswered-call", 0)]


def test_a_retry_after_the_timeout_is_no_second_outstanding_call() -> None:
    steps = [*heartbeat("1", 0.0, answer=False), *heartbeat("2", 31.0)]
    assert [(f.rule, f.seq) for f in audit_frames(steps)] == [("unanswered-call", 0)]


def test_close_after_the_deadline_reports_it_and_close_before_does_not() -> None:
    feed = Feed()
    early, _ = feed.open()
    late, _ = feed.open()
    for connection_id in (early, late):
        feed.steps(connection_id, heartbeat("1", 0.0, answer=False))
    assert feed.close(early, 20.0) == []
    found = feed.close(late, 31.0)
    assert [(f.rule, f.connection_id, f.seq, f.ts) for f in found] == [
        ("unanswered-call", late, 0, T0 + 30.0)
    ]


def test_finish_reports_calls_of_connections_left_open() -> None:
    feed = Feed()
    connection_id, _ = feed.open()
    feed.steps(connection_id, heartbeat("1", 0.0, answer=False))
    assert feed.auditor.finish(T0 + 29.0) == []
    assert [f.rule for f in feed.auditor.finish(T0 + 31.0)] == ["unanswered-call"]
    assert feed.auditor.finish(T0 + 99.0) == []  # once


def _recorded(path: Path, sessions: dict[str, list[Step]], *, close: bool = False) -> Path:
    """A real recording, by the real recorder, of one 1.6 connection per identity."""
    with Recorder(path, flush_interval=0.01) as recorder:
        for index, (identity, steps) in enumerate(sessions.items()):
            connection_id = f"c{index}"
            recorder.submit(
                ConnectionOpened(
                    connection_id, T0, identity, f"/{identity}", None, ("ocpp1.6",), "ocpp1.6",
                    None, 101,
                )
            )  # fmt: skip
            for seq, (direction, message, at) in enumerate(steps):
                data = json.dumps(message)
                recorder.submit(
                    FrameReceived(
                        connection_id, seq, T0 + at, direction, Opcode.TEXT, data, len(data),
                        identity=identity,
                    )
                )  # fmt: skip
    return path


def test_offline_audit_ends_on_the_recording_timeline_for_any_jobs(tmp_path: Path) -> None:
    """A CALL left unanswered on a connection still open: reported when the recording
    (any connection of it) goes on past the deadline, the same for one or two jobs."""
    quiet: list[Step] = [(CP, [2, "q", "Heartbeat", {}], 0.0)]
    busy: list[Step] = [(CP, [2, "b", "Heartbeat", {}], 0.0), *_heartbeats(40.0, 60.0, 3)]
    path = _recorded(tmp_path / "r.duckdb", {"CP-QUIET": quiet, "CP-BUSY": busy})
    with open_recording(path) as db:
        one = audit_recording(db)[0]
    two = audit_file(path, jobs=2, min_frames_per_job=1)[0]
    assert one == two
    assert sorted((f.rule, f.connection_id, f.seq) for f in one) == [
        ("unanswered-call", "c0", 0),
        ("unanswered-call", "c1", 0),
    ]


def test_audit_cli_response_timeout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    steps: list[Step] = [(CP, [2, "s", "StatusNotification", status_request(V16)], 0.0)]
    path = _recorded(tmp_path / "r.duckdb", {"CP-1": [*steps, *_heartbeats(40.0, 60.0, 20)]})
    counts = {}
    for timeout in ("30", "3600"):
        argv = ["audit", str(path), "--format", "json", "--response-timeout", timeout]
        assert main(argv) == (1 if timeout == "30" else 0)
        document: dict[str, Any] = json.loads(capsys.readouterr().out)
        counts[timeout] = [(g["rule"], g["count"]) for g in document["summary"]]
    # Within an hour the first CALL is still pending: each Heartbeat is a second one.
    assert counts == {"30": [("unanswered-call", 1)], "3600": [("outstanding-call", 20)]}


# -- suspicious identities -------------------------------------------------------------


@pytest.mark.parametrize(
    ("identity", "why"),
    [
        ("CP/1", "contains '/'"),
        ("../etc", "contains '/'"),
        ("..", "a dot segment"),
        (".", "a dot segment"),
        ("", "empty"),
        ("CP\x001", "U+0000"),
        ("CP\n1", "U+000A"),
        ("CP\x7f", "U+007F"),
    ],
)
def test_suspicious_identity(identity: str, why: str) -> None:
    _, found = Feed().open(SUBPROTOCOL[V16], identity=identity)
    assert [f.rule for f in found] == ["suspicious-identity"]
    assert why in found[0].message
    assert found[0].seq is None


@pytest.mark.parametrize("identity", ["CP-1", "CP 1", "Ladestation-Größe", "CP%2F1", "a..b"])
def test_plain_identities_are_not_suspicious(identity: str) -> None:
    assert Feed().open(SUBPROTOCOL[V16], identity=identity)[1] == []


def test_explain_suspicious_identity(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "--explain", "suspicious-identity"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "suspicious-identity" in out
    assert "path traversal" in out
