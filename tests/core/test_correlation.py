"""Correlator on literal frames and literal timestamps."""

from __future__ import annotations

import pytest

from ocproxy.core.correlation import Correlation, Correlator, Pairing, PendingCall
from ocproxy.core.frames import Direction, parse_frame

UP = Direction.TO_CSMS
DOWN = Direction.TO_CHARGER

_MEMORY = 8  # answered, sent and timed-out ids remembered; checked through behaviour below
_PENDING_MAX = 4096  # unanswered CALLs kept


class Connection:
    """Feeds literal frames to one Correlator, numbering them like the proxy does."""

    def __init__(self) -> None:
        self.correlator = Correlator()
        self.seq = 0

    def feed(self, text: str, direction: Direction, ts: float) -> Correlation:
        self.seq += 1
        return self.correlator.observe(parse_frame(text), direction, self.seq, ts)


def test_call_reports_its_action_and_no_pairing() -> None:
    c = Connection()
    assert c.feed('[2,"1","BootNotification",{}]', UP, 100.0) == Correlation(
        action="BootNotification", outstanding=0
    )


def test_matched_callresult_with_latency() -> None:
    c = Connection()
    c.feed('[2,"1","BootNotification",{}]', UP, 100.0)
    result = c.feed('[3,"1",{"status":"Accepted"}]', DOWN, 100.25)
    assert result == Correlation(
        action="BootNotification", request_seq=1, latency_ms=250.0, pairing=Pairing.MATCHED
    )
    assert c.correlator.outstanding(UP) == []


def test_latency_rounded_to_microseconds() -> None:
    c = Connection()
    c.feed('[2,"1","Heartbeat",{}]', DOWN, 10.0)
    result = c.feed('[3,"1",{}]', UP, 10.0123456)
    assert result.latency_ms == 12.346


def test_zero_and_negative_latency_reported_as_given() -> None:
    # The correlator reads no clock: it trusts the timestamps it is handed.
    c = Connection()
    c.feed('[2,"1","Heartbeat",{}]', UP, 50.0)
    c.feed('[2,"2","Heartbeat",{}]', DOWN, 50.0)
    assert c.feed('[3,"1",{}]', DOWN, 50.0).latency_ms == 0.0
    assert c.feed('[3,"2",{}]', UP, 49.5).latency_ms == -500.0


def test_callerror_pairs_with_its_call() -> None:
    c = Connection()
    c.feed('[2,"a","RemoteStartTransaction",{}]', DOWN, 1.0)
    result = c.feed('[4,"a","NotSupported","no",{}]', UP, 1.5)
    assert result == Correlation(
        action="RemoteStartTransaction", request_seq=1, latency_ms=500.0, pairing=Pairing.MATCHED
    )


def test_response_in_same_direction_as_call_does_not_pair() -> None:
    c = Connection()
    c.feed('[2,"1","Heartbeat",{}]', UP, 1.0)
    assert c.feed('[3,"1",{}]', UP, 2.0) == Correlation(pairing=Pairing.UNKNOWN_ID)
    assert [p.message_id for p in c.correlator.outstanding(UP)] == ["1"]


@pytest.mark.parametrize("text", ['[3,"nope",{}]', '[4,"nope","GenericError","",{}]'])
def test_response_with_unknown_id(text: str) -> None:
    c = Connection()
    c.feed('[2,"1","Heartbeat",{}]', UP, 1.0)
    assert c.feed(text, DOWN, 2.0) == Correlation(pairing=Pairing.UNKNOWN_ID)
    assert len(c.correlator.outstanding(UP)) == 1


def test_duplicate_response_refers_to_the_same_call() -> None:
    c = Connection()
    c.feed('[2,"1","Authorize",{}]', UP, 10.0)
    assert c.feed('[3,"1",{}]', DOWN, 10.1).pairing is Pairing.MATCHED
    duplicate = c.feed('[3,"1",{}]', DOWN, 11.0)
    assert duplicate == Correlation(
        action="Authorize", request_seq=1, latency_ms=1000.0, pairing=Pairing.DUPLICATE
    )
    # a CALLERROR after the CALLRESULT is a duplicate too
    assert c.feed('[4,"1","GenericError","",{}]', DOWN, 12.0).pairing is Pairing.DUPLICATE


def test_crossing_calls_with_the_same_id_are_independent() -> None:
    c = Connection()
    up_call = c.feed('[2,"42","StatusNotification",{}]', UP, 1.0)
    down_call = c.feed('[2,"42","GetConfiguration",{}]', DOWN, 1.1)
    assert up_call.outstanding == 0
    assert down_call.outstanding == 0  # crossing CALLs are legal
    # the charger answers the CSMS's CALL first
    to_down = c.feed('[3,"42",{"configurationKey":[]}]', UP, 1.3)
    assert to_down == Correlation(
        action="GetConfiguration", request_seq=2, latency_ms=200.0, pairing=Pairing.MATCHED
    )
    to_up = c.feed('[3,"42",{}]', DOWN, 1.5)
    assert to_up == Correlation(
        action="StatusNotification", request_seq=1, latency_ms=500.0, pairing=Pairing.MATCHED
    )


def test_second_call_in_same_direction_counts_outstanding() -> None:
    c = Connection()
    assert c.feed('[2,"1","Heartbeat",{}]', UP, 1.0).outstanding == 0
    assert c.feed('[2,"x","Reset",{}]', DOWN, 1.1).outstanding == 0  # other direction
    assert c.feed('[2,"2","StatusNotification",{}]', UP, 1.2).outstanding == 1
    assert c.feed('[2,"3","MeterValues",{}]', UP, 1.3).outstanding == 2
    c.feed('[3,"1",{}]', DOWN, 1.4)
    assert c.feed('[2,"4","Heartbeat",{}]', UP, 1.5).outstanding == 2
    assert c.feed('[2,"y","Reset",{}]', DOWN, 1.6).outstanding == 1


def test_send_is_not_outstanding_and_does_not_count() -> None:
    c = Connection()
    assert c.feed('[6,"s1","NotifyPeriodicEventStream",{}]', UP, 1.0) == Correlation(
        action="NotifyPeriodicEventStream"
    )
    assert c.correlator.outstanding(UP) == []
    assert c.feed('[2,"1","Heartbeat",{}]', UP, 1.1).outstanding == 0


def test_outstanding_lists_per_direction_oldest_first() -> None:
    c = Connection()
    c.feed('[2,"b","Heartbeat",{}]', UP, 1.0)
    c.feed('[2,"z","Reset",{}]', DOWN, 1.1)
    c.feed('[2,"a","MeterValues",{}]', UP, 1.2)
    c.feed('[3,"b",{}]', DOWN, 1.3)
    c.feed('[2,"c","Authorize",{}]', UP, 1.4)
    assert c.correlator.outstanding(UP) == [
        PendingCall(3, "a", "MeterValues", 1.2, UP),
        PendingCall(5, "c", "Authorize", 1.4, UP),
    ]
    assert c.correlator.outstanding(DOWN) == [PendingCall(2, "z", "Reset", 1.1, DOWN)]


def test_reused_id_replaces_the_older_call() -> None:
    c = Connection()
    c.feed('[2,"1","Heartbeat",{}]', UP, 1.0)
    retry = c.feed('[2,"1","Heartbeat",{}]', UP, 31.0)
    assert retry.outstanding == 1
    assert c.correlator.outstanding(UP) == [PendingCall(2, "1", "Heartbeat", 31.0, UP)]
    result = c.feed('[3,"1",{}]', DOWN, 31.5)
    assert (result.request_seq, result.latency_ms, result.pairing) == (2, 500.0, Pairing.MATCHED)


def test_expire_returns_only_the_old_calls() -> None:
    c = Connection()
    c.feed('[2,"old-up","Heartbeat",{}]', UP, 100.0)
    c.feed('[2,"old-down","Reset",{}]', DOWN, 105.0)
    c.feed('[2,"edge","Authorize",{}]', UP, 110.0)
    c.feed('[2,"new","MeterValues",{}]', UP, 125.0)
    expired = c.correlator.expire(now=140.0, timeout_s=30.0)
    # strictly older than the timeout; "edge" is exactly 30 s old and stays
    assert expired == [
        PendingCall(1, "old-up", "Heartbeat", 100.0, UP),
        PendingCall(2, "old-down", "Reset", 105.0, DOWN),
    ]
    assert [p.message_id for p in c.correlator.outstanding(UP)] == ["edge", "new"]
    assert c.correlator.outstanding(DOWN) == []
    # a second expire at the same time finds nothing new
    assert c.correlator.expire(now=140.0, timeout_s=30.0) == []


def test_expire_with_nothing_pending() -> None:
    assert Correlator().expire(now=1e9, timeout_s=0.0) == []


def test_expired_calls_do_not_count_as_outstanding() -> None:
    c = Connection()
    c.feed('[2,"1","Heartbeat",{}]', UP, 0.0)
    c.correlator.expire(now=100.0, timeout_s=30.0)
    assert c.feed('[2,"2","Heartbeat",{}]', UP, 100.0).outstanding == 0


def test_response_after_expiry_is_late() -> None:
    c = Connection()
    c.feed('[2,"1","BootNotification",{}]', UP, 100.0)
    c.correlator.expire(now=200.0, timeout_s=30.0)
    late = c.feed('[3,"1",{"status":"Accepted"}]', DOWN, 240.0)
    assert late == Correlation(
        action="BootNotification", request_seq=1, latency_ms=140000.0, pairing=Pairing.LATE
    )
    # a second copy after the late one is a duplicate of the same CALL
    again = c.feed('[3,"1",{}]', DOWN, 241.0)
    assert (again.pairing, again.request_seq) == (Pairing.DUPLICATE, 1)


def test_late_callerror() -> None:
    c = Connection()
    c.feed('[2,"1","Reset",{}]', DOWN, 0.0)
    c.correlator.expire(now=60.0, timeout_s=30.0)
    late = c.feed('[4,"1","InternalError","",{}]', UP, 61.0)
    assert (late.action, late.pairing) == ("Reset", Pairing.LATE)


def test_retry_after_timeout_with_reused_id() -> None:
    # 2.1 allows a retry after a timeout to reuse the id: the answer goes to the retry.
    c = Connection()
    c.feed('[2,"1","TransactionEvent",{}]', UP, 0.0)
    c.correlator.expire(now=31.0, timeout_s=30.0)
    c.feed('[2,"1","TransactionEvent",{}]', UP, 31.0)
    first = c.feed('[3,"1",{}]', DOWN, 31.2)
    assert (first.pairing, first.request_seq) == (Pairing.MATCHED, 2)
    second = c.feed('[3,"1",{}]', DOWN, 31.4)
    assert (second.pairing, second.request_seq) == (Pairing.LATE, 1)


def test_response_to_a_send() -> None:
    c = Connection()
    c.feed('[6,"s1","NotifyPeriodicEventStream",{}]', UP, 5.0)
    result = c.feed('[3,"s1",{}]', DOWN, 5.5)
    assert result == Correlation(
        action="NotifyPeriodicEventStream",
        request_seq=1,
        latency_ms=500.0,
        pairing=Pairing.ANSWERS_SEND,
    )
    error = c.feed('[4,"s1","MessageTypeNotSupported","",{}]', DOWN, 6.0)
    assert error.pairing is Pairing.ANSWERS_SEND


def test_answer_to_send_must_travel_back() -> None:
    c = Connection()
    c.feed('[6,"s1","NotifyPeriodicEventStream",{}]', UP, 5.0)
    assert c.feed('[3,"s1",{}]', UP, 5.5).pairing is Pairing.UNKNOWN_ID


def test_callresulterror_pairs_with_the_callresult_it_answers() -> None:
    c = Connection()
    c.feed('[2,"7","GetVariables",{}]', DOWN, 1.0)  # seq 1
    c.feed('[3,"7",{"getVariableResult":"oops"}]', UP, 1.2)  # seq 2
    result = c.feed('[5,"7","FormatViolation","bad result",{}]', DOWN, 1.3)  # seq 3
    assert result == Correlation(action="GetVariables", request_seq=2, pairing=Pairing.MATCHED)


def test_callresulterror_for_a_late_callresult() -> None:
    c = Connection()
    c.feed('[2,"7","GetVariables",{}]', DOWN, 1.0)
    c.correlator.expire(now=100.0, timeout_s=30.0)
    c.feed('[3,"7",{}]', UP, 101.0)  # seq 2, late
    assert c.feed('[5,"7","GenericError","",{}]', DOWN, 101.1).request_seq == 2


def test_callresulterror_keeps_pointing_at_the_first_callresult() -> None:
    c = Connection()
    c.feed('[2,"7","Heartbeat",{}]', UP, 1.0)
    c.feed('[3,"7",{}]', DOWN, 1.1)  # seq 2
    c.feed('[3,"7",{}]', DOWN, 1.2)  # seq 3, duplicate
    assert c.feed('[5,"7","GenericError","",{}]', UP, 1.3).request_seq == 2


@pytest.mark.parametrize(
    ("setup", "direction"),
    [
        ([], DOWN),  # nothing at all
        ([('[2,"7","Heartbeat",{}]', UP)], UP),  # CALL not yet answered
        ([('[2,"7","Heartbeat",{}]', UP), ('[3,"7",{}]', DOWN)], DOWN),  # wrong direction
        ([('[6,"7","NotifyPeriodicEventStream",{}]', UP)], UP),  # a SEND has no result
    ],
)
def test_callresulterror_unknown(setup: list[tuple[str, Direction]], direction: Direction) -> None:
    c = Connection()
    for text, d in setup:
        c.feed(text, d, 1.0)
    result = c.feed('[5,"7","GenericError","",{}]', direction, 2.0)
    assert result == Correlation(pairing=Pairing.UNKNOWN_ID)


def test_callresulterror_does_not_close_anything() -> None:
    c = Connection()
    c.feed('[2,"1","Heartbeat",{}]', UP, 1.0)
    c.feed('[5,"1","GenericError","",{}]', UP, 1.1)
    assert [p.message_id for p in c.correlator.outstanding(UP)] == ["1"]
    assert c.feed('[3,"1",{}]', DOWN, 1.2).pairing is Pairing.MATCHED


@pytest.mark.parametrize(
    "text",
    [
        '[3,"1",null]',  # payload not object
        '[3,"1"]',  # wrong arity
        '[3,"1",{},{}]',
        '[4,"1","GenericError"]',  # CALLERROR without details
        '[4,"1",42,"",{}]',  # error code not a string
        '[4,"1","GenericError","",null]',
    ],
)
def test_malformed_response_with_readable_id_still_pairs(text: str) -> None:
    c = Connection()
    c.feed('[2,"1","BootNotification",{}]', UP, 10.0)
    result = c.feed(text, DOWN, 10.5)
    assert result == Correlation(
        action="BootNotification", request_seq=1, latency_ms=500.0, pairing=Pairing.MATCHED
    )
    assert c.correlator.outstanding(UP) == []
    # and the well-formed answer that follows is a duplicate
    assert c.feed('[3,"1",{}]', DOWN, 11.0).pairing is Pairing.DUPLICATE


@pytest.mark.parametrize(
    "text",
    [
        "[3,1,{}]",  # id not readable
        '[3,null,{"a":1}]',
        "not json",
        "{}",
        "[]",
        '["3","1",{}]',
        '[7,"1",{}]',  # unknown type with readable id
        '[5,"1","GenericError"]',  # malformed CALLRESULTERROR
    ],
)
def test_malformed_without_pairable_id_changes_nothing(text: str) -> None:
    c = Connection()
    c.feed('[2,"1","Heartbeat",{}]', UP, 1.0)
    assert c.feed(text, DOWN, 2.0) == Correlation()
    assert [p.message_id for p in c.correlator.outstanding(UP)] == ["1"]


def test_malformed_call_reports_its_readable_action() -> None:
    c = Connection()
    assert c.feed('[2,"1","Heartbeat",null]', UP, 1.0) == Correlation(action="Heartbeat")
    assert c.feed('[6,"2","NotifyPeriodicEventStream"]', UP, 1.0) == Correlation(
        action="NotifyPeriodicEventStream"
    )
    assert c.feed('[2,"3",5,{}]', UP, 1.0) == Correlation()
    # the action is reported even when the id is unreadable
    assert c.feed('[2,4,"Heartbeat",{}]', UP, 1.0) == Correlation(action="Heartbeat")
    assert c.feed('[2,"5","Heartbeat",{}]', UP, 1.0).outstanding == 0  # none were tracked


def test_answered_memory_is_bounded() -> None:
    c = Connection()
    total = _MEMORY + 10
    for i in range(total):
        c.feed(f'[2,"{i}","Heartbeat",{{}}]', UP, float(i))
        assert c.feed(f'[3,"{i}",{{}}]', DOWN, float(i) + 0.1).pairing is Pairing.MATCHED
    # the newest answers are remembered ...
    assert c.feed(f'[3,"{total - 1}",{{}}]', DOWN, 1e6).pairing is Pairing.DUPLICATE
    assert c.feed(f'[3,"{total - _MEMORY}",{{}}]', DOWN, 1e6).pairing is Pairing.DUPLICATE
    # ... the oldest are forgotten, so their duplicates look unknown
    assert c.feed('[3,"0",{}]', DOWN, 1e6).pairing is Pairing.UNKNOWN_ID
    assert c.feed(f'[3,"{total - _MEMORY - 1}",{{}}]', DOWN, 1e6).pairing is Pairing.UNKNOWN_ID
    # and a CALLRESULTERROR for a forgotten CALLRESULT is unknown as well
    assert c.feed('[5,"0","GenericError","",{}]', UP, 1e6).pairing is Pairing.UNKNOWN_ID


def test_sent_memory_is_bounded() -> None:
    c = Connection()
    for i in range(_MEMORY + 1):
        c.feed(f'[6,"{i}","NotifyPeriodicEventStream",{{}}]', UP, 0.0)
    assert c.feed(f'[3,"{_MEMORY}",{{}}]', DOWN, 1.0).pairing is Pairing.ANSWERS_SEND
    assert c.feed('[3,"0",{}]', DOWN, 1.0).pairing is Pairing.UNKNOWN_ID


def test_pending_calls_are_bounded_oldest_becomes_late() -> None:
    # A peer that never answers must not grow memory without bound.
    c = Connection()
    for i in range(_PENDING_MAX + 1):
        c.feed(f'[2,"{i}","Heartbeat",{{}}]', UP, float(i))
    pending = c.correlator.outstanding(UP)
    assert len(pending) == _PENDING_MAX
    assert pending[0].message_id == "1"
    assert pending[-1].message_id == str(_PENDING_MAX)
    assert c.feed('[3,"0",{}]', DOWN, 1e4).pairing is Pairing.LATE
    assert c.feed(f'[3,"{_PENDING_MAX}",{{}}]', DOWN, 1e4).pairing is Pairing.MATCHED


def test_timed_out_memory_is_bounded() -> None:
    c = Connection()
    for i in range(_PENDING_MAX):
        c.feed(f'[2,"{i}","Heartbeat",{{}}]', UP, 0.0)
    assert len(c.correlator.expire(now=100.0, timeout_s=1.0)) == _PENDING_MAX
    c.feed('[2,"last","Heartbeat",{}]', UP, 100.0)
    assert [p.message_id for p in c.correlator.expire(now=200.0, timeout_s=1.0)] == ["last"]
    assert c.correlator.outstanding(UP) == []
    assert c.feed('[3,"last",{}]', DOWN, 201.0).pairing is Pairing.LATE
    assert c.feed(f'[3,"{_PENDING_MAX - 1}",{{}}]', DOWN, 201.0).pairing is Pairing.LATE
    # the oldest timed-out CALL was forgotten
    assert c.feed('[3,"0",{}]', DOWN, 201.0).pairing is Pairing.UNKNOWN_ID


def test_outstanding_count_survives_many_answers() -> None:
    c = Connection()
    c.feed('[2,"open","Heartbeat",{}]', UP, 0.0)
    for i in range(100):
        assert c.feed(f'[2,"{i}","Reset",{{}}]', DOWN, 0.0).outstanding == 0
        c.feed(f'[3,"{i}",{{}}]', UP, 0.1)
    assert c.feed('[2,"next","Heartbeat",{}]', UP, 1.0).outstanding == 1


def test_correlators_are_independent() -> None:
    a, b = Connection(), Connection()
    a.feed('[2,"1","Heartbeat",{}]', UP, 1.0)
    assert b.feed('[3,"1",{}]', DOWN, 2.0).pairing is Pairing.UNKNOWN_ID
    assert a.feed('[3,"1",{}]', DOWN, 2.0).pairing is Pairing.MATCHED


def test_pairing_values_are_the_stored_strings() -> None:
    assert {str(p) for p in Pairing} == {
        "matched",
        "late",
        "duplicate",
        "unknown_id",
        "answers_send",
    }
