"""The recorder's short cut records the same rows as its general path.

Each sequence of frames goes through two Intakes: one that may take the short cut (no
audit, no sink that needs rows) and one held to the general path by a sink that wants
every row. Their Arrow tables, and the console summaries they feed, must be equal.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ocproxy.audit.auditor import Auditor, AuditSettings
from ocproxy.console import Summary
from ocproxy.core.correlation import Correlator
from ocproxy.core.events import ConnectionOpened, FrameReceived
from ocproxy.core.frames import Direction, Opcode
from ocproxy.core.observe import ObservedFrame
from ocproxy.core.redaction import MARKER, Redactor
from ocproxy.recorder.intake import Intake
from ocproxy.recorder.packed import pack
from ocproxy.recorder.rows import FrameRows
from ocproxy.recorder.sink import Sink

UP, DOWN = Direction.TO_CSMS, Direction.TO_CHARGER


OPENED = ConnectionOpened("c1", 0.0, "CP1", "/CP1", "127.0.0.1:1", (), "ocpp1.6", "ws://x", 101)


class Counting(Sink):
    """The console's summary, fed like the console sink feeds it; ``wants_rows`` like
    the console without ``--quiet``."""

    def __init__(self, wants_rows: bool) -> None:
        self.wants_rows = wants_rows
        self.summary = Summary()
        self.summary.opened(OPENED)
        self.findings: list[Any] = []

    def on_frame(self, frame: ObservedFrame, findings: Any = ()) -> None:
        self.summary.frame(frame)
        self.findings.extend(findings)

    def on_plain_frame(self, connection_id: str, direction: str, size: int) -> None:
        self.summary.plain_frame(connection_id, direction, size)


# The ways through the intake: the general path alone, the lean short cut (no audit,
# quiet), the short cut building rows for a sink, and for the audit.
GENERAL, LEAN, ROWS, AUDITED, AUDITED_GENERAL = range(5)


def record(
    frames: list[tuple[Direction, bytes]], way: int, redactor: Redactor | None
) -> tuple[list[dict[str, Any]], Summary, list[Any]]:
    sink = Counting(wants_rows=way != LEAN)
    auditor = Auditor(AuditSettings()) if way in (AUDITED, AUDITED_GENERAL) else None
    if auditor is not None:
        auditor.opened(OPENED)
    intake = Intake(redactor, auditor, [sink], short_cut=way not in (GENERAL, AUDITED_GENERAL))
    assert intake.lean is (way == LEAN)
    rows = FrameRows()
    findings: list[Any] = []
    correlators: dict[str, Correlator] = {}
    for seq, (direction, data) in enumerate(frames):
        event = FrameReceived(
            "c1", seq, 1000.0 + seq / 8, direction, Opcode.TEXT, data, len(data), identity="CP1"
        )
        # Both entries: the relay's tuples, and events (the importer's, the addon's).
        if seq % 2:
            intake.event(event, rows, findings, correlators)
        else:
            intake.packed(pack(event), rows, findings, correlators)
    assert len(rows) == len(frames)
    assert sink.findings == findings
    return rows.table().to_pylist(), sink.summary, findings


def assert_same(
    frames: list[tuple[Direction, bytes]], redactor: Redactor | None
) -> tuple[list[Any], list[Any]]:
    general, general_summary, _ = record(frames, GENERAL, redactor)
    for way in (LEAN, ROWS):
        rows, summary, _ = record(frames, way, redactor)
        assert rows == general
        assert summary.connections == general_summary.connections
    audited, _, findings = record(frames, AUDITED, redactor)
    audited_general, _, general_findings = record(frames, AUDITED_GENERAL, redactor)
    assert audited == audited_general == general
    assert findings == general_findings
    return general, findings


def test_a_session_with_secrets_and_errors() -> None:
    frames = [
        (UP, b'[2,"1","BootNotification",{"chargePointVendor":"V","chargePointModel":"M"}]'),
        (DOWN, b'[3,"1",{"status":"Accepted","currentTime":"2025-01-01T00:00:00Z","interval":60}]'),
        (DOWN, b'[2,"s1","ChangeConfiguration",{"key":"AuthorizationKey","value":"0011"}]'),
        (UP, b'[3,"s1",{"status":"Accepted"}]'),
        (DOWN, b'[2,"g1","GetConfiguration",{}]'),
        (UP, b'[3,"g1",{"configurationKey":[{"key":"AuthorizationKey","readonly":false,'
         b'"value":"0011"}]}]'),
        (UP, b'[2,"2","Authorize",{"idTag":"TAG1"}]'),
        (DOWN, b'[3,"2",{"idTagInfo":{"status":"Accepted"}}]'),
        (DOWN, b'[3,"2",{"idTagInfo":{"status":"Accepted"}}]'),  # a duplicate answer
        (DOWN, b'[3,"nobody",{}]'),  # answers no CALL
        (UP, b'[4,"x","GenericError","",{}]'),
        (UP, b'[2, "3", "Heartbeat", {}]'),  # spaced: the general path
        (DOWN, b'[3,"3",{"currentTime":"2025-01-01T00:00:00Z"}]'),
        (UP, b"not json"),
        (UP, b'[2,"\\u0034","Heartbeat",{}]'),
    ]  # fmt: skip
    rows, findings = assert_same(frames, Redactor(b"key"))
    assert {f.rule for f in findings} == {
        "callerror-without-call",
        "duplicate-response",
        "heartbeat-drift",
        "malformed-frame",
        "unknown-response-id",
    }
    # The secrets are out of the short cut's rows too, the driver id pseudonymised.
    assert MARKER in rows[2]["payload"]
    assert b"0011" not in rows[2]["raw"]
    assert b"0011" not in rows[5]["raw"]
    assert b"TAG1" not in rows[6]["raw"]
    assert rows[6]["redacted"]
    assert [r["pairing"] for r in rows[7:10]] == ["matched", "duplicate", "unknown_id"]
    assert_same(frames, None)


# Few ids, so that answers find their CALLs (and duplicates, and the wrong direction).
_IDS = st.sampled_from(["1", "a{", 'q"', "\\", "\u00e9", "x" * 37])
_ACTIONS = st.sampled_from(
    ["Heartbeat", "MeterValues", "Authorize", "ChangeConfiguration", "GetConfiguration"]
)
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='ab"\\{}\u00e9', max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["idTag", "key", "value", "a"]), inner, max_size=3)
    ),
    max_leaves=6,
)
_PAYLOADS = st.dictionaries(st.sampled_from(["idTag", "key", "value", "status"]), _VALUES)


@st.composite
def _frame(draw: st.DrawFn) -> tuple[Direction, bytes]:
    direction = draw(st.sampled_from([UP, DOWN]))
    message_id, payload = draw(_IDS), draw(_PAYLOADS)
    kind = draw(st.sampled_from(["call", "result", "error", "spaced", "junk"]))
    value: Any
    if kind == "call":
        value = [2, message_id, draw(_ACTIONS), payload]
    elif kind == "result":
        value = [3, message_id, payload]
    elif kind == "error":
        value = [4, message_id, "GenericError", "", payload]
    elif kind == "spaced":
        return direction, json.dumps([2, message_id, draw(_ACTIONS), payload]).encode()
    else:
        return direction, draw(st.binary(max_size=12))
    ascii_only = draw(st.booleans())  # \u escapes, or the characters themselves
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=ascii_only)
    return direction, text.encode("utf-8", "surrogatepass")


@settings(max_examples=200, deadline=None)
@given(st.lists(_frame(), min_size=1, max_size=12), st.booleans())
def test_generated_sessions(frames: list[tuple[Direction, bytes]], keyed: bool) -> None:
    assert_same(frames, Redactor(b"key" if keyed else None))
