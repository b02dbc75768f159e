"""The benchmarks' traffic is valid OCPP: a live audit of it finds nothing.

``bench/proxy_bench.py`` measures the proxy with the live audit on. If its CSMS answered
with a payload its CALL's schema refuses, every answer would be a finding, and the
benchmark would measure the cost of recording findings instead of the audit of clean
traffic (it did, until this test).
"""

from __future__ import annotations

from types import ModuleType

from helpers_bench import bench_module

from .helpers import CP, CS, Feed


def _round_trips(workload: ModuleType, feed: Feed, charger: int, count: int) -> None:
    connection_id, found = feed.open("ocpp1.6", identity=f"CP-{charger}")
    assert found == []
    for n in range(count):
        call, _message_id = workload.meter_values_call(charger, n)
        answer = workload._answer(call)
        assert answer is not None
        feed.send(connection_id, CP, call, at=n * 0.01)
        feed.send(connection_id, CS, answer, at=n * 0.01 + 0.001)


def test_the_load_and_the_csms_speak_valid_ocpp_16() -> None:
    workload = bench_module("_workload")
    feed = Feed()
    for charger in range(3):
        _round_trips(workload, feed, charger, 200)
    assert feed.findings == []
    call, _ = workload.meter_values_call(7, 41)
    assert 250 <= len(call.encode()) <= 350  # the ~300-byte CALL the README describes


def test_an_answer_the_schema_refuses_would_be_found() -> None:
    """The check above has teeth: the CSMS's old answer is a finding every time."""
    workload = bench_module("_workload")
    feed = Feed()
    connection_id, _ = feed.open("ocpp1.6")
    for n in range(5):
        call, message_id = workload.meter_values_call(1, n)
        feed.send(connection_id, CP, call, at=n)
        feed.send(connection_id, CS, f'[3,"{message_id}",{{"status":"Accepted"}}]', at=n + 0.5)
    assert [f.rule for f in feed.findings] == ["schema-additional-property"] * 5


def test_the_fleet_chargers_heartbeats_are_valid_ocpp_16() -> None:
    """fleet_bench.py's idle chargers send Heartbeats; the CSMS answers with currentTime."""
    workload = bench_module("_workload")
    feed = Feed()
    connection_id, _ = feed.open("ocpp1.6")
    for n in range(3):
        call = workload.heartbeat_call(f"hb-{n}")
        answer = workload._answer(call)
        assert answer is not None
        feed.send(connection_id, CP, call, at=n * 60)
        feed.send(connection_id, CS, answer, at=n * 60 + 0.001)
    assert feed.findings == []
