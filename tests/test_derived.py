"""``frame_fields``: payload fields parsed when frames are recorded (m008), back-filled
for older files when they are opened for writing, and computed on the fly by readers
of a file that lacks them, with the same query results either way."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import duckdb
import pytest
from helpers_cli import run_ocproxy
from test_analytics import T0, Script, field_16, field_201, query, record, rows, stamp

from ocproxy.recorder import Recorder, derived
from ocproxy.recorder.migrations import MIGRATIONS

_FIELDS_OF = """
    SELECT action, message_type, count(*) AS n FROM {table} GROUP BY ALL ORDER BY ALL
"""
_EXPECTED_FRAMES = """
    SELECT action, message_type, count(*) AS n FROM frames
    WHERE (message_type = 2 AND action IN ('StartTransaction', 'StopTransaction',
            'MeterValues', 'TransactionEvent', 'StatusNotification'))
        OR (message_type = 3 AND action IN ('StartTransaction', 'BootNotification'))
    GROUP BY ALL ORDER BY ALL
"""
QUERIES = ("transactions", "meter_values", "availability", "heartbeats", "status_timeline")


@pytest.fixture
def field(tmp_path: Path) -> Path:
    return record(tmp_path / "field.duckdb", [*field_16(), *field_201()])


def _as_older_version(path: Path) -> None:
    """What a version before m008 left: no frame_fields, m008 not applied."""
    with duckdb.connect(str(path)) as db:
        db.execute(f"DROP TABLE {derived.TABLE}")
        db.execute("DELETE FROM _ocproxy_migrations WHERE name = 'm008_frame_fields'")


def _results(path: Path | list[Path]) -> dict[str, Any]:
    return {name: query(path, name).rows for name in QUERIES}


def test_the_recorder_stores_the_fields_of_the_frames_they_are_for(field: Path) -> None:
    assert rows(field, _FIELDS_OF.format(table=derived.TABLE)) == rows(field, _EXPECTED_FRAMES)
    (start,) = rows(
        field,
        "SELECT transactionId FROM frame_fields "
        "WHERE action = 'StartTransaction' AND message_type = 3",
    )
    assert json.loads(start["transactionId"]) == 42
    (meter,) = rows(
        field,
        "SELECT transactionId, connectorId, registers FROM frame_fields "
        "WHERE action = 'MeterValues' AND transactionId IS NOT NULL",
    )
    # Only the energy register sample of the outlet; the voltage and the phase are not.
    assert (json.loads(meter["transactionId"]), json.loads(meter["connectorId"])) == (42, 1)
    assert meter["registers"] == [{"timestamp": stamp(2400), "wh": 1500.5}]
    (stop,) = rows(field, "SELECT registers FROM frame_fields WHERE action = 'StopTransaction'")
    assert stop["registers"] == [
        {"timestamp": stamp(1800), "wh": 1000.0},
        {"timestamp": stamp(4000), "wh": 2500.0},
    ]
    events = rows(
        field,
        "SELECT eventType, transactionInfo.transactionId AS tx, evse.id AS evse, registers "
        "FROM frame_fields WHERE action = 'TransactionEvent' ORDER BY seq",
    )
    assert [(e["eventType"], e["tx"]) for e in events] == [
        ("Started", "TX-9"), ("Updated", "TX-9"), ("Ended", "TX-9"),
    ]  # fmt: skip
    assert json.loads(events[0]["evse"]) == 1
    # kWh with multiplier -3, the power sample left out, a number as a string read.
    assert [e["registers"] for e in events] == [
        [{"timestamp": stamp(200), "wh": 500.0}],
        [{"timestamp": stamp(500), "wh": 1200.0}],
        [{"timestamp": stamp(800), "wh": 2000.0}],
    ]


def test_an_older_recording_reads_the_same_and_is_back_filled_when_opened_for_writing(
    field: Path,
) -> None:
    expected = _results(field)
    _as_older_version(field)
    before = field.read_bytes()
    # Read-only: the fields are computed from the frames, nothing is written.
    assert _results(field) == expected
    assert field.read_bytes() == before
    # Opened for writing (a proxy, an import, mitmproxy): m008 runs and back-fills.
    with Recorder(field):
        pass
    applied = rows(field, "SELECT name FROM _ocproxy_migrations")
    assert {r["name"] for r in applied} == {name for name, _ in MIGRATIONS}
    assert rows(field, _FIELDS_OF.format(table=derived.TABLE)) == rows(field, _EXPECTED_FRAMES)
    assert _results(field) == expected


def test_fields_missing_for_some_frames_are_computed_by_readers(field: Path) -> None:
    # A file whose frames were appended around the recorder (a bench generator, a
    # hand-made copy): its frame_fields lack rows, which must not go unnoticed.
    expected = _results(field)
    with duckdb.connect(str(field)) as db:
        db.execute("DELETE FROM frame_fields WHERE action = 'MeterValues'")
    assert _results(field) == expected


def _charger(name: str, connection: str, opened: float, *, stop_reading: bool) -> Script:
    """A 1.6 charger whose CSMS answers transaction id 7, as it did before a reset."""
    s = Script(connection, name, "ocpp1.6", opened=opened)
    begin = opened + 100
    start = {"connectorId": 1, "idTag": "TAG", "meterStart": 1000, "timestamp": stamp(begin)}
    s.call(
        begin, "StartTransaction", start, {"transactionId": 7, "idTagInfo": {"status": "Accepted"}}
    )
    for n in (1, 2):
        sample = {"value": str(1000 + opened + n), "unit": "Wh"}
        meter = {"timestamp": stamp(begin + n * 60), "sampledValue": [sample]}
        s.call(
            begin + n * 60,
            "MeterValues",
            {"connectorId": 1, "transactionId": 7, "meterValue": [meter]},
        )
    stop: dict[str, Any] = {
        "transactionId": 7,
        "timestamp": stamp(begin + 300),
        "reason": "EVDisconnected",
    }
    if stop_reading:
        stop["meterStop"] = 1500
    s.call(begin + 300, "StopTransaction", stop)
    return s


def test_transactions_of_two_recordings_are_not_paired_across_them(tmp_path: Path) -> None:
    # The same charger in two recordings, its transaction ids restarted in between: each
    # StartTransaction pairs with its own StopTransaction and its own meter values.
    first = record(tmp_path / "a.duckdb", [_charger("CP-R", "r-1", 0, stop_reading=True)])
    later = record(tmp_path / "b.duckdb", [_charger("CP-R", "r-2", 5000, stop_reading=False)])
    rows_ = query([first, later], "transactions").rows
    assert [(r["transaction_id"], r["duration_s"]) for r in rows_] == [("7", 300.0), ("7", 300.0)]
    assert [r["started_at"].timestamp() - T0 for r in rows_] == [100.0, 5100.0]
    # The first: meterStart/meterStop; the later one (no meterStop): its own samples only.
    assert [(r["meter_start_wh"], r["meter_stop_wh"]) for r in rows_] == [
        (1000, 1500), (6001.0, 6002.0),
    ]  # fmt: skip
    assert [r["stop_reason"] for r in rows_] == ["EVDisconnected", "EVDisconnected"]
    # A glob of both gives the same as naming them.
    assert query([tmp_path / "a.duckdb", tmp_path / "b.duckdb"], "transactions").rows == rows_


def test_an_import_stores_the_fields_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "log.csv"
    start = {"connectorId": 1, "idTag": "T", "meterStart": 10, "timestamp": "2026-01-01T10:00:00Z"}
    stop = {"transactionId": 5, "meterStop": 60, "timestamp": "2026-01-01T10:30:00Z"}
    with open(log, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["when", "cp", "frame"])
        writer.writerow(
            ["2026-01-01T10:00:00Z", "CP-I", json.dumps([2, "s", "StartTransaction", start])]
        )
        writer.writerow(
            [
                "2026-01-01T10:00:01Z",
                "CP-I",
                json.dumps([3, "s", {"transactionId": 5, "idTagInfo": {"status": "Accepted"}}]),
            ]
        )
        writer.writerow(
            ["2026-01-01T10:30:00Z", "CP-I", json.dumps([2, "p", "StopTransaction", stop])]
        )
    db = tmp_path / "site.duckdb"
    argv = ["import", log, "--db", db, "--map", "time=when,identity=cp,message=frame", "--keep-ids"]
    code, _, err = run_ocproxy(capsys, *argv, "--quiet")
    assert (code, err) == (0, "")
    assert rows(db, _FIELDS_OF.format(table=derived.TABLE)) == rows(db, _EXPECTED_FRAMES)
    assert len(rows(db, "SELECT * FROM frame_fields")) == 3
    (tx,) = query(db, "transactions").rows
    assert (tx["transaction_id"], tx["energy_wh"], tx["duration_s"]) == ("5", 50, 1800.0)


def _station(connection: str, opened: float) -> Script:
    """A 2.0.1 station whose transaction ids restart: always "T-1"."""
    s = Script(connection, "CS-R", "ocpp2.0.1", opened=opened)
    for n, kind in enumerate(("Started", "Updated", "Ended")):
        at = opened + 100 + n * 100
        event: dict[str, Any] = {
            "eventType": kind,
            "timestamp": stamp(at),
            "triggerReason": "MeterValuePeriodic",
            "seqNo": n,
            "transactionInfo": {"transactionId": "T-1", "chargingState": "Charging"},
            "meterValue": [{"timestamp": stamp(at), "sampledValue": [{"value": opened + n}]}],
        }
        if kind == "Started":
            event["evse"] = {"id": 1, "connectorId": 1}
        s.call(at, "TransactionEvent", event)
    return s


def test_repeated_2x_transaction_ids_in_two_recordings_stay_apart(tmp_path: Path) -> None:
    first = record(tmp_path / "a.duckdb", [_station("s-1", 0)])
    later = record(tmp_path / "b.duckdb", [_station("s-2", 5000)])
    rows_ = query([first, later], "transactions").rows
    assert [(r["transaction_id"], r["duration_s"]) for r in rows_] == [("T-1", 200.0)] * 2
    assert [(r["meter_start_wh"], r["meter_stop_wh"]) for r in rows_] == [
        (0, 2), (5000, 5002),
    ]  # fmt: skip


def test_a_retried_stop_transaction_still_stops_its_transaction_once(tmp_path: Path) -> None:
    s = _charger("CP-T", "t-1", 0, stop_reading=True)
    retry = {"transactionId": 7, "meterStop": 1500, "timestamp": stamp(430), "reason": "Local"}
    s.call(430, "StopTransaction", retry)
    (tx,) = query(record(tmp_path / "r.duckdb", [s]), "transactions").rows
    assert (tx["duration_s"], tx["stop_reason"], tx["energy_wh"]) == (300.0, "EVDisconnected", 500)


def _complete(path: Path) -> bool:
    return rows(path, _FIELDS_OF.format(table=derived.TABLE)) == rows(path, _EXPECTED_FRAMES)


def test_fields_are_gathered_and_stored_at_the_latest_when_the_file_closes(
    tmp_path: Path,
) -> None:
    """Written every few seconds (derived.Pending), not with each flush of frames: before
    that, readers compute the missing ones; once the file is closed, all are there."""
    path = tmp_path / "deferred.duckdb"
    before = _results(record(tmp_path / "reference.duckdb", [*field_16(), *field_201()]))
    recorder = Recorder(path).open_here()
    for script in [*field_16(), *field_201()]:
        for event in script.events:
            recorder.process(event)
    here = recorder._here
    assert here is not None
    here.deadline = 0.0
    recorder.flush_due()  # the frames are written; their fields wait (5 s, 20,000 rows)
    (n,) = here.db.execute(f"SELECT count(*) FROM {derived.TABLE}").fetchone() or (None,)
    assert n == 0
    assert here.db.execute("SELECT count(*) FROM frames").fetchone() != (0,)
    recorder.finish()
    assert _complete(path)
    assert _results(path) == before


def test_fields_a_crash_lost_are_added_when_the_file_is_next_opened_for_writing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "crashed.duckdb"
    recorder = Recorder(path).open_here()
    for script in field_16():
        for event in script.events:
            recorder.process(event)
    here = recorder._here
    assert here is not None
    here.deadline = 0.0
    recorder.flush_due()
    here.db.close()  # as kill -9 leaves it: frames stored, fields and run_stats not
    assert not _complete(path)
    reference = _results(record(tmp_path / "reference.duckdb", field_16()))
    with Recorder(path) as again:
        assert len(again.recovered) == 1  # the crashed run, said in one line
    assert _complete(path)
    assert _results(path) == reference
