"""Named queries over real recordings: real ``ocpp`` peers through the proxy, and
literal recordings (events submitted to a real Recorder) for what the simulator cannot
produce: schema-violating payloads, unanswered CALLs, Faulted, reconnects, midnight.

Every expected value is known in advance (the Wh the simulated meter reported, the
number of CALLs per action, the seconds between literal timestamps).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest
from ocpp.exceptions import InternalError

from ocproxy.analytics import bind, get_query, load_queries, open_sources, run
from ocproxy.analytics.queries import parse_params, parse_query, query_dir
from ocproxy.core.events import ClosedBy, ConnectionClosed, ConnectionOpened, FrameReceived
from ocproxy.core.frames import Direction, Opcode
from ocproxy.errors import ConfigError, OcproxyError
from ocproxy.recorder import Recorder
from ocproxy.recorder.migrations import MIGRATIONS
from ocproxy.sim.charger import ChargerSpec, run_charger
from ocproxy.sim.csms import SimCsms

REQUIRED_QUERIES = {
    "sessions",
    "transactions",
    "meter_values",
    "status_timeline",
    "inventory",
    "latency",
    "errors",
    "availability",
    "heartbeats",
}

# -- running queries ----------------------------------------------------------------------


@dataclass
class Result:
    rows: list[dict[str, Any]]
    lenient_rows: int
    notes: list[str]

    def by(self, *keys: str) -> dict[Any, dict[str, Any]]:
        """Rows keyed by one column, or by a tuple of columns."""
        if len(keys) == 1:
            return {row[keys[0]]: row for row in self.rows}
        return {tuple(row[k] for k in keys): row for row in self.rows}

    def where(self, **match: Any) -> list[dict[str, Any]]:
        return [r for r in self.rows if all(r[k] == v for k, v in match.items())]


def query(sources: list[Path] | Path, name: str, **params: str) -> Result:
    paths = sources if isinstance(sources, list) else [sources]
    named = get_query(name)
    with open_sources([str(p) for p in paths]) as opened:
        result = run(opened.db, named.sql, bind(named, params), what=f"query {name}")
        notes = list(opened.notes)
    found = result.table.to_pylist()
    if name == "meter_values":  # unordered by design (millions of rows): sort here
        found.sort(key=_reading_order)
    return Result(found, result.lenient_rows, notes)


def _reading_order(row: dict[str, Any]) -> tuple[Any, ...]:
    sampled = row["sampled_at"] or row["recorded_at"]
    return (row["identity"], row["recorded_at"], sampled, row["measurand"])


def rows(path: Path, sql: str) -> list[dict[str, Any]]:
    with duckdb.connect(str(path), read_only=True) as db:
        db.execute("SET TimeZone = 'UTC'")
        cursor = db.execute(sql)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


# -- literal recordings ----------------------------------------------------------------------

# One hour before midnight UTC, so that a connection can cross into the next day.
T0 = datetime(2026, 3, 1, 23, 0, tzinfo=UTC).timestamp()
DAY1, DAY2 = datetime(2026, 3, 1).date(), datetime(2026, 3, 2).date()


def at(offset: float) -> datetime:
    return datetime.fromtimestamp(T0 + offset, UTC)


def stamp(offset: float) -> str:
    return at(offset).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Script:
    """The events of one literal connection, with seq and message ids kept for you."""

    connection_id: str
    identity: str
    subprotocol: str
    opened: float
    events: list[Any] = dataclasses.field(default_factory=list)
    _seq: int = 0
    _ids: int = 0

    def __post_init__(self) -> None:
        self.events.append(
            ConnectionOpened(
                connection_id=self.connection_id,
                ts=T0 + self.opened,
                identity=self.identity,
                path=f"/ocpp/{self.identity}",
                remote_addr="127.0.0.1:40000",
                offered_subprotocols=(self.subprotocol,),
                subprotocol=self.subprotocol,
                upstream_url=f"ws://csms/ocpp/{self.identity}",
                handshake_status=101,
            )
        )

    def send(self, offset: float, message: Any, to: Direction = Direction.TO_CSMS) -> None:
        text = message if isinstance(message, str) else json.dumps(message)
        self.events.append(
            FrameReceived(
                self.connection_id, self._seq, T0 + offset, to, Opcode.TEXT, text, len(text)
            )
        )
        self._seq += 1

    def call(
        self,
        offset: float,
        action: str,
        payload: Any,
        answer: Any = None,
        *,
        to: Direction = Direction.TO_CSMS,
        unanswered: bool = False,
    ) -> None:
        """A CALL and, 0.25 s later, its CALLRESULT (``answer``, default ``{}``)."""
        self._ids += 1
        message_id = f"{self.connection_id}-{self._ids}"
        self.send(offset, [2, message_id, action, payload], to)
        if not unanswered:
            reply = {} if answer is None else answer
            self.send(offset + 0.25, [3, message_id, reply], Direction(to).reverse)

    def call_error(self, offset: float, action: str, payload: Any, code: str) -> None:
        self._ids += 1
        message_id = f"{self.connection_id}-{self._ids}"
        self.send(offset, [2, message_id, action, payload])
        self.send(offset + 0.5, [4, message_id, code, "boom", {}], Direction.TO_CHARGER)

    def close(self, offset: float, code: int, by: ClosedBy) -> None:
        self.events.append(ConnectionClosed(self.connection_id, T0 + offset, code, "", by))


def record(path: Path, scripts: list[Script]) -> Path:
    with Recorder(path) as recorder:
        for script in scripts:
            for event in script.events:
                recorder.submit(event)
    return path


def status16(offset: float, status: str, error: str = "NoError", connector: Any = 1) -> Any:
    return {
        "connectorId": connector,
        "errorCode": error,
        "status": status,
        "timestamp": stamp(offset),
    }


def status2x(offset: float, status: str) -> Any:
    return {"timestamp": stamp(offset), "connectorStatus": status, "evseId": 1, "connectorId": 1}


def field_16() -> list[Script]:
    """A 1.6 charger: Faulted, a transaction across midnight, bad numbers, a reconnect."""
    a = Script("f1-a", "FIELD-1", "ocpp1.6", opened=0)
    boot = {"chargePointVendor": "ACME", "chargePointModel": "X1", "firmwareVersion": "9.9"}
    # The interval as a string: a schema violation the heartbeats query reports.
    a.call(1, "BootNotification", {**boot, "chargePointSerialNumber": "SN1"}, _boot_ok("300"))
    a.call(10, "StatusNotification", status16(10, "Available"))
    # connectorId as a string: read anyway, and reported.
    a.call(600, "StatusNotification", status16(600, "Faulted", "GroundFailure", connector="1"))
    a.call(1200, "StatusNotification", status16(1200, "Unavailable"))
    start = {"connectorId": 1, "idTag": "TAG1", "meterStart": "1000", "timestamp": stamp(1800)}
    a.call(1800, "StartTransaction", start, {"transactionId": 42, "idTagInfo": _accepted()})
    a.call(1801, "StatusNotification", status16(1801, "Charging"))
    samples = [
        {"value": "1500.5", "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
        {"value": "abc", "measurand": "Voltage"},
        {"value": "16", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
    ]
    meter = {"timestamp": stamp(2400), "sampledValue": samples}
    a.call(2400, "MeterValues", {"connectorId": 1, "transactionId": 42, "meterValue": [meter]})
    a.call(3000, "Heartbeat", {}, {"currentTime": stamp(3000)})
    a.call(3300, "Heartbeat", {}, {"currentTime": stamp(3300)})
    # meterStop is not a number: energy comes from the register samples instead.
    a.call(4000, "StopTransaction", _stop_42())
    a.call(4001, "StatusNotification", status16(4001, "Available"))
    # The CSMS asks; the charger never answers before the connection drops.
    ask = {"key": ["HeartbeatInterval"]}
    a.call(5000, "GetConfiguration", ask, to=Direction.TO_CHARGER, unanswered=True)
    a.close(5400, 1006, ClosedBy.CHARGER)
    b = Script("f1-b", "FIELD-1", "ocpp1.6", opened=6000)
    b.call(6001, "BootNotification", {**boot, "firmwareVersion": "10.0"}, _boot_ok(300))
    b.call_error(6100, "StatusNotification", status16(6100, "Available"), "InternalError")
    b.call(6500, "Heartbeat", {}, unanswered=True)
    b.close(7000, 1000, ClosedBy.CSMS)
    return [a, b]


def _boot_ok(interval: Any) -> Any:
    return {"status": "Accepted", "interval": interval, "currentTime": stamp(0)}


def _accepted() -> Any:
    return {"status": "Accepted"}


def _stop_42() -> Any:
    begin = {"value": "1000", "context": "Transaction.Begin"}
    end = {"value": "2.5", "unit": "kWh", "context": "Transaction.End"}
    return {
        "transactionId": 42,
        "meterStop": "kaputt",
        "timestamp": stamp(4000),
        "transactionData": [
            {"timestamp": stamp(1800), "sampledValue": [begin]},
            {"timestamp": stamp(4000), "sampledValue": [end]},
        ],
    }


def field_201() -> list[Script]:
    """A 2.0.1 charger: a transaction with kWh and multipliers, broken frames."""
    c = Script("f2-c", "FIELD-2", "ocpp2.0.1", opened=100)
    station = {"chargingStation": {"vendorName": "Beta", "model": "B2"}, "reason": "PowerUp"}
    c.call(101, "BootNotification", station, _boot_ok(60))
    c.call(110, "StatusNotification", status2x(110, "Available"))
    c.call(200, "TransactionEvent", _event(200, "Started", "Charging", _begin_500()))
    c.call(210, "StatusNotification", status2x(210, "Occupied"))
    register = {"value": 1200}
    power = {"value": 7.4, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "kW"}}
    c.call(500, "TransactionEvent", _event(500, "Updated", "SuspendedEV", [register, power]))
    c.call(800, "TransactionEvent", _event(800, "Ended", "Idle", [{"value": 2000}]))
    c.call(801, "StatusNotification", status2x(801, "Available"))
    c.send(900, '[2,"x","MeterValues",')  # not JSON: recorded, never parsed by a query
    c.call(901, "MeterValues", {"evseId": 1, "meterValue": "oops"})
    c.close(1000, 1000, ClosedBy.CHARGER)
    return [c]


def _begin_500() -> list[Any]:
    # A number as a string (2.x wants a number), in kWh with multiplier -3: 500 Wh.
    unit = {"unit": "kWh", "multiplier": -3}
    return [{"value": "500", "context": "Transaction.Begin", "unitOfMeasure": unit}]


def _event(offset: float, kind: str, state: str, samples: list[Any]) -> Any:
    event: dict[str, Any] = {
        "eventType": kind,
        "timestamp": stamp(offset),
        "triggerReason": "Authorized",
        "seqNo": {"Started": 0, "Updated": 1, "Ended": 2}[kind],
        "transactionInfo": {"transactionId": "TX-9", "chargingState": state},
        "meterValue": [{"timestamp": stamp(offset), "sampledValue": samples}],
    }
    if kind == "Started":
        event["evse"] = {"id": 1, "connectorId": 1}
        event["idToken"] = {"idToken": "TOK", "type": "ISO14443"}
    return event


@pytest.fixture
def field(tmp_path: Path) -> Path:
    return record(tmp_path / "field.duckdb", [*field_16(), *field_201()])


# -- recordings made by real peers -------------------------------------------------------------

SPECS = [
    ChargerSpec(
        identity="SIM-16",
        version="1.6",
        vendor="Alfa",
        model="A16",
        serial="S16-001",
        firmware="1.6.3",
        id_tag="TAG16",
        meter_samples=4,
        wh_per_sample=1250,
        heartbeats=3,
    ),
    ChargerSpec(
        identity="SIM-201",
        version="2.0.1",
        vendor="Bravo",
        model="B201",
        serial="S201-9",
        firmware="2.0.7",
        id_tag="TAG201",
        meter_samples=3,
        wh_per_sample=700,
        heartbeats=2,
    ),
    ChargerSpec(identity="SIM-21", version="2.1", meter_samples=2, wh_per_sample=333),
]
SPEC = {spec.identity: spec for spec in SPECS}
HEARTBEAT_INTERVAL = 120


@pytest.fixture
async def sim(proxy_factory: Any) -> Path:
    """Three chargers (1.6, 2.0.1, 2.1) each running one session through the proxy."""
    csms = SimCsms(initiate=True, heartbeat_interval=HEARTBEAT_INTERVAL)
    async with csms, proxy_factory(upstream=csms.url) as (proxy, box), asyncio.timeout(30):
        await asyncio.gather(*(run_charger(proxy.url + "/ocpp", s) for s in SPECS))
    recording = box[0]
    assert recording.stats.frames_lost == 0
    return Path(recording.path)


def test_every_required_query_ships_with_a_header() -> None:
    queries = load_queries()
    assert set(queries) >= REQUIRED_QUERIES
    for query in queries.values():
        assert query.title
        assert len(query.description) > 40
        assert all(p.description for p in query.params)


async def test_sessions_of_real_peers(sim: Path) -> None:
    result = query(sim, "sessions").by("identity")
    recorded = {r["identity"]: r for r in rows(sim, _PER_CONNECTION)}
    assert set(result) == set(SPEC)
    for identity, row in result.items():
        expected = recorded[identity]
        assert row["ocpp_version"] == SPEC[identity].version
        assert (row["frames"], row["frames_to_csms"]) == (expected["n"], expected["up"])
        assert row["frames_to_charger"] == expected["n"] - expected["up"]
        assert row["duration_s"] == round(expected["duration"], 3)
        assert (row["handshake_status"], row["close_code"], row["closed_by"]) == (
            101,
            1000,
            "charger",
        )
        assert row["malformed_frames"] == row["injected_frames"] == 0


_PER_CONNECTION = """
    SELECT identity, count(*) AS n, count(*) FILTER (WHERE direction = 'to_csms') AS up,
        epoch(any_value(closed_at) - any_value(opened_at)) AS duration
    FROM frames JOIN connections USING (connection_id) GROUP BY identity
"""


async def test_transactions_of_real_peers(sim: Path) -> None:
    result = query(sim, "transactions").by("identity")
    assert set(result) == set(SPEC)
    ids = {r["identity"]: r["id"] for r in rows(sim, _TRANSACTION_IDS)}
    for identity, row in result.items():
        spec = SPEC[identity]
        assert row["transaction_id"] == ids[identity]
        assert row["energy_wh"] == spec.meter_samples * spec.wh_per_sample
        assert (row["meter_start_wh"], row["meter_stop_wh"]) == (0, row["energy_wh"])
        assert row["id_token"] == spec.id_tag
        assert row["connector_id"] == 1
        assert row["evse_id"] == (None if spec.version == "1.6" else 1)
        assert row["id_token_type"] == (None if spec.version == "1.6" else "ISO14443")
        assert row["stop_reason"] == "Local"
        assert row["started_at"] < row["stopped_at"]
        assert row["issues"] == []


# The transaction id as recorded: 1.6 from the StartTransaction answer, 2.x the event's.
_TRANSACTION_IDS = """
    SELECT identity, coalesce(payload ->> '$.transactionId',
        payload ->> '$.transactionInfo.transactionId') AS id
    FROM frames JOIN connections USING (connection_id)
    WHERE (action = 'StartTransaction' AND message_type = 3)
        OR (action = 'TransactionEvent' AND message_type = 2)
    GROUP BY ALL
"""


async def test_meter_values_of_real_peers(sim: Path) -> None:
    result = query(sim, "meter_values")
    assert result.lenient_rows == 0
    for identity, spec in SPEC.items():
        mine = result.where(identity=identity)
        periodic = [r["value"] for r in mine if r["context"] == "Sample.Periodic"]
        steps = range(1, spec.meter_samples + 1)
        assert periodic == [float(n * spec.wh_per_sample) for n in steps]
        assert {(r["measurand"], r["unit"], r["phase"]) for r in mine} == {
            ("Energy.Active.Import.Register", "Wh", None)
        }
        assert {r["connector_id"] for r in mine} == {1}
        ends = [(r["context"], r["value"]) for r in mine if r["context"] != "Sample.Periodic"]
        if spec.version == "1.6":
            assert ends == []  # the simulated 1.6 StopTransaction carries no samples
        else:
            total = float(spec.meter_samples * spec.wh_per_sample)
            assert ends == [("Transaction.Begin", 0.0), ("Transaction.End", total)]
            assert {r["source"] for r in mine} == {"TransactionEvent"}


async def test_status_timeline_of_real_peers(sim: Path) -> None:
    result = query(sim, "status_timeline")
    for identity, spec in SPEC.items():
        mine = result.where(identity=identity)
        busy = "Charging" if spec.version == "1.6" else "Occupied"
        assert [r["status"] for r in mine] == ["Available", busy, "Available"]
        assert [r["ended_at"] for r in mine] == [mine[1]["started_at"], mine[2]["started_at"], None]
        seconds = (mine[1]["ended_at"] - mine[1]["started_at"]).total_seconds()
        assert mine[1]["duration_s"] == round(seconds, 3)
        assert {(r["evse_id"], r["connector_id"]) for r in mine} == {
            (None if spec.version == "1.6" else 1, 1)
        }


async def test_inventory_of_real_peers(sim: Path) -> None:
    result = query(sim, "inventory").by("identity")
    for identity, spec in SPEC.items():
        row = result[identity]
        assert (row["vendor"], row["model"], row["serial"], row["firmware"]) == (
            spec.vendor,
            spec.model,
            spec.serial,
            spec.firmware,
        )
        assert (row["boot_status"], row["boots"], row["connections"]) == ("Accepted", 1, 1)
        assert row["ocpp_versions"] == [spec.version]
        assert row["first_seen"] < row["last_boot_at"] < row["last_seen"]


async def test_latency_counts_every_call_once(sim: Path) -> None:
    result = query(sim, "latency").by("action", "direction")
    sql = "SELECT action, direction, count(*) AS n FROM frames WHERE message_type = 2 GROUP BY ALL"
    calls = {(r["action"], r["direction"]): r["n"] for r in rows(sim, sql)}
    assert {key: row["calls"] for key, row in result.items()} == calls
    assert calls[("GetConfiguration", "to_charger")] == 1  # the CSMS asked the 1.6 charger
    assert calls[("Heartbeat", "to_csms")] == sum(s.heartbeats for s in SPECS)
    for row in result.values():
        assert row["errors"] == 0
        assert 0 <= row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"]


async def test_heartbeats_of_real_peers(sim: Path) -> None:
    result = query(sim, "heartbeats").by("identity")
    for identity, spec in SPEC.items():
        row = result[identity]
        assert (row["heartbeats"], row["intervals"]) == (spec.heartbeats, spec.heartbeats - 1)
        assert row["expected_s"] == HEARTBEAT_INTERVAL
        if spec.heartbeats > 1:
            assert 0 <= row["min_s"] <= row["p50_s"] <= row["max_s"]


async def test_availability_of_real_peers(sim: Path) -> None:
    result = query(sim, "availability").by("identity")
    sessions = query(sim, "sessions").by("identity")
    timeline = query(sim, "status_timeline")
    for identity in SPEC:
        row, session = result[identity], sessions[identity]
        available, busy, again = timeline.where(identity=identity)
        assert row["connected_s"] == pytest.approx(session["duration_s"], abs=0.002)
        assert (row["connections"], row["reconnects"]) == (1, 0)
        closed = session["closed_at"]
        expected_available = _seconds(available["started_at"], available["ended_at"]) + _seconds(
            again["started_at"], closed
        )
        assert row["available_s"] == pytest.approx(expected_available, abs=0.002)
        assert row["occupied_s"] == pytest.approx(busy["duration_s"], abs=0.002)
        assert row["faulted_s"] == row["unavailable_s"] == row["reserved_s"] == 0
    charging = {r["identity"]: r for r in rows(sim, _CHARGING_SPANS)}
    assert result["SIM-16"]["charging_s"] == result["SIM-16"]["occupied_s"]
    for identity in ("SIM-201", "SIM-21"):
        expected = charging[identity]["seconds"]
        assert result[identity]["charging_s"] == pytest.approx(expected, abs=0.002)


def _seconds(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds()


# 2.x: charging from the first event saying chargingState Charging to the Ended event.
_CHARGING_SPANS = """
    SELECT identity, epoch(
        max((payload ->> '$.timestamp')::TIMESTAMPTZ)
            FILTER (WHERE payload ->> '$.eventType' = 'Ended')
        - min((payload ->> '$.timestamp')::TIMESTAMPTZ)
            FILTER (WHERE payload ->> '$.transactionInfo.chargingState' = 'Charging')
    ) AS seconds
    FROM frames JOIN connections USING (connection_id)
    WHERE action = 'TransactionEvent' AND message_type = 2 GROUP BY identity
"""


async def test_errors_from_a_csms_that_answers_callerror(proxy_factory: Any) -> None:
    def refuse(**_: Any) -> Any:
        raise InternalError(description="CSMS database down")

    specs = [ChargerSpec(identity=f"ERR-{v}", version=v) for v in ("1.6", "2.0.1")]
    csms = SimCsms(overrides={"Heartbeat": refuse})
    async with csms, proxy_factory(upstream=csms.url) as (proxy, box):
        for spec in specs:
            with pytest.raises(InternalError):
                await run_charger(proxy.url, spec)
    path = Path(box[0].path)
    errors = query(path, "errors")
    assert [_error_key(r) for r in errors.rows] == [
        ("callerror", "ERR-1.6", "Heartbeat", "to_csms", "InternalError", 1),
        ("callerror", "ERR-2.0.1", "Heartbeat", "to_csms", "InternalError", 1),
    ]
    assert {r["example_description"] for r in errors.rows} == {"CSMS database down"}
    heartbeat = query(path, "latency").by("action", "direction")["Heartbeat", "to_csms"]
    assert (heartbeat["calls"], heartbeat["errors"]) == (2, 2)
    only = query(path, "errors", identity="ERR-1.6")
    assert [r["identity"] for r in only.rows] == ["ERR-1.6"]


def _error_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row[k] for k in ("kind", "identity", "action", "direction", "error_code", "count"))


# -- literal recordings: what the simulator cannot produce --------------------------------------


def test_transactions_read_leniently_and_report_issues(field: Path) -> None:
    result = query(field, "transactions")
    tx = result.by("identity")
    one = tx["FIELD-1"]
    assert (one["transaction_id"], one["connector_id"], one["id_token"]) == ("42", 1, "TAG1")
    # meterStop is not a number: both ends come from the register samples (kWh too).
    assert (one["meter_start_wh"], one["meter_stop_wh"], one["energy_wh"]) == (1000, 2500, 1500)
    assert (one["started_at"], one["stopped_at"], one["duration_s"]) == (at(1800), at(4000), 2200)
    assert one["stop_reason"] == "Local"  # omitted: Local, as the spec says
    assert set(one["issues"]) == {
        "meterStart missing or not an integer",
        "meterStop missing or not an integer",
    }
    two = tx["FIELD-2"]
    assert (two["transaction_id"], two["evse_id"], two["connector_id"]) == ("TX-9", 1, 1)
    assert (two["meter_start_wh"], two["meter_stop_wh"], two["energy_wh"]) == (500, 2000, 1500)
    assert (two["started_at"], two["stopped_at"]) == (at(200), at(800))
    assert (two["id_token"], two["id_token_type"]) == ("TOK", "ISO14443")
    assert two["stop_reason"] == "Local"
    assert two["issues"] == []
    assert result.lenient_rows == 1


def test_meter_values_read_leniently_and_report_issues(field: Path) -> None:
    result = query(field, "meter_values")
    one = result.where(identity="FIELD-1")
    assert [(r["measurand"], r["phase"], r["unit"], r["value"]) for r in one] == [
        ("Current.Import", "L1", "A", 16.0),
        ("Energy.Active.Import.Register", None, "Wh", 1500.5),
        ("Voltage", None, "Wh", None),
        ("Energy.Active.Import.Register", None, "Wh", 1000.0),  # StopTransaction's Begin
        ("Energy.Active.Import.Register", None, "kWh", 2.5),
    ]
    assert [r["source"] for r in one] == ["MeterValues"] * 3 + ["StopTransaction"] * 2
    assert [r["issues"] for r in one] == [[], [], ["value is not a number"], [], []]
    assert {r["transaction_id"] for r in one} == {"42"}
    two = result.where(identity="FIELD-2")
    assert [(r["source"], r["measurand"], r["unit"], r["multiplier"], r["value"]) for r in two] == [
        ("TransactionEvent", "Energy.Active.Import.Register", "kWh", -3, 500.0),
        ("TransactionEvent", "Energy.Active.Import.Register", "Wh", 0, 1200.0),
        ("TransactionEvent", "Power.Active.Import", "kW", 0, 7.4),
        ("TransactionEvent", "Energy.Active.Import.Register", "Wh", 0, 2000.0),
        ("MeterValues", "Energy.Active.Import.Register", "Wh", 0, None),
    ]
    assert two[0]["issues"] == ["value is a string, not a number"]
    assert two[-1]["issues"] == ["no sampled value"]
    assert {r["evse_id"] for r in two} == {1}  # filled in from the transaction's first event
    assert result.lenient_rows == 3


def test_status_timeline_merges_repeats_and_reports_issues(field: Path) -> None:
    result = query(field, "status_timeline", identity="FIELD-1")
    assert [
        (r["status"], r["error_code"], r["started_at"], r["duration_s"], r["notifications"])
        for r in result.rows
    ] == [
        ("Available", "NoError", at(10), 590, 1),
        ("Faulted", "GroundFailure", at(600), 600, 1),
        ("Unavailable", "NoError", at(1200), 601, 1),
        ("Charging", "NoError", at(1801), 2200, 1),
        ("Available", "NoError", at(4001), None, 2),  # repeated after the reconnect
    ]
    assert result.rows[1]["issues"] == ["connectorId missing or not an integer"]
    assert result.lenient_rows == 1


def test_availability_splits_days_and_counts_reconnects(field: Path) -> None:
    result = query(field, "availability").by("identity", "day")
    assert set(result) == {("FIELD-1", DAY1), ("FIELD-1", DAY2), ("FIELD-2", DAY1)}
    day1, day2, other = result["FIELD-1", DAY1], result["FIELD-1", DAY2], result["FIELD-2", DAY1]
    assert _states(day1) == (3600, 1, 0, 590, 1799, 1799, 600, 601)
    # Day 2: 1800 s of the first connection, 1000 s of the reconnect; the status from
    # before the reconnect holds on the new connection until the next one arrives.
    assert _states(day2) == (2800, 1, 1, 1399 + 100 + 900, 401, 401, 0, 0)
    assert _states(other) == (900, 1, 0, 100 + 199, 591, 300, 0, 0)


def _states(row: dict[str, Any]) -> tuple[Any, ...]:
    keys = ("connected_s", "connections", "reconnects", "available_s", "occupied_s")
    return (*(row[k] for k in keys), row["charging_s"], row["faulted_s"], row["unavailable_s"])


def test_errors_and_unanswered_calls(field: Path) -> None:
    result = query(field, "errors")
    assert [_error_key(r) for r in result.rows] == [
        ("callerror", "FIELD-1", "StatusNotification", "to_csms", "InternalError", 1),
        ("unanswered", "FIELD-1", "GetConfiguration", "to_charger", None, 1),
        ("unanswered", "FIELD-1", "Heartbeat", "to_csms", None, 1),
    ]
    assert result.rows[0]["example_description"] == "boom"
    assert result.rows[1]["first_at"] == at(5000)


def test_heartbeats_per_connection_and_expected_interval(field: Path) -> None:
    result = query(field, "heartbeats").by("identity")
    one = result["FIELD-1"]
    assert (one["heartbeats"], one["intervals"], one["min_s"], one["max_s"]) == (3, 1, 300, 300)
    assert one["expected_s"] == 300
    assert one["issues"] == ["BootNotification answer: interval missing or not an integer"]
    two = result["FIELD-2"]
    assert (two["heartbeats"], two["intervals"], two["expected_s"]) == (0, 0, 60)


def test_inventory_keeps_the_latest_boot(field: Path) -> None:
    result = query(field, "inventory").by("identity")
    one = result["FIELD-1"]
    assert (one["vendor"], one["model"], one["serial"], one["firmware"]) == (
        "ACME",
        "X1",
        "SN1",  # the reconnect's boot has no serial: the latest one recorded
        "10.0",
    )
    assert (one["boots"], one["connections"], one["ocpp_versions"]) == (2, 2, ["1.6"])
    assert (one["first_seen"], one["last_seen"], one["last_boot_at"]) == (at(0), at(7000), at(6001))
    two = result["FIELD-2"]
    assert (two["vendor"], two["model"]) == ("Beta", "B2")
    assert two["serial"] is two["firmware"] is None


def test_sessions_of_a_literal_recording(field: Path) -> None:
    result = query(field, "sessions")
    assert [
        (r["identity"], r["duration_s"], r["close_code"], r["closed_by"], r["malformed_frames"])
        for r in result.rows
    ] == [
        ("FIELD-1", 5400, 1006, "charger", 0),
        ("FIELD-2", 900, 1000, "charger", 1),
        ("FIELD-1", 1000, 1000, "csms", 0),
    ]
    assert query(field, "sessions", identity="FIELD-2").by("identity").keys() == {"FIELD-2"}


def test_trace_needs_an_identity_and_filters_by_time(field: Path) -> None:
    with pytest.raises(ConfigError, match="needs --param identity=VALUE"):
        query(field, "trace")
    since = stamp(6000)
    result = query(field, "trace", identity="FIELD-1", since=since)
    assert [(r["type"], r["action"]) for r in result.rows] == [
        ("CALL", "BootNotification"),
        ("CALLRESULT", "BootNotification"),
        ("CALL", "StatusNotification"),
        ("CALLERROR", "StatusNotification"),
        ("CALL", "Heartbeat"),
    ]
    with pytest.raises(ConfigError, match="query trace failed: Conversion Error"):
        query(field, "trace", identity="FIELD-1", since="yesterday")


def test_every_query_runs_on_an_empty_recording(tmp_path: Path) -> None:
    empty = record(tmp_path / "empty.duckdb", [])
    for name in REQUIRED_QUERIES:
        result = query(empty, name)
        assert result.rows == []
        assert result.notes == [f"{empty} holds no connections or frames"]


def test_every_query_runs_on_a_recording_older_than_the_schema(tmp_path: Path) -> None:
    # A file made by the first migration only lacks later columns (frames.injected,
    # connections.replay_of, ...): the views supply them as NULL.
    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as db:
        db.execute("CREATE TABLE _ocproxy_migrations (name VARCHAR, applied_at TIMESTAMPTZ)")
        name, first = MIGRATIONS[0]
        first(db)
        db.execute("INSERT INTO _ocproxy_migrations VALUES (?, now())", [name])
        db.execute(
            "INSERT INTO connection_opens (connection_id, identity, ocpp_version, opened_at, "
            "handshake_status) VALUES ('c', 'OLD', '1.6', '2026-01-01 00:00:00+00', 101)"
        )
    for name in REQUIRED_QUERIES:
        query(path, name)
    assert query(path, "sessions").rows[0]["identity"] == "OLD"


# -- sources -------------------------------------------------------------------------------------


def test_globs_and_several_recordings_are_one(tmp_path: Path) -> None:
    record(tmp_path / "a.duckdb", field_16())
    record(tmp_path / "b.duckdb", field_201())
    both = query([tmp_path / "*.duckdb"], "transactions")
    assert [r["identity"] for r in both.rows] == ["FIELD-1", "FIELD-2"]
    assert both.notes == []
    # The same file twice (by glob and by name) is read once.
    again = query([tmp_path / "a.duckdb", tmp_path / "*.duckdb"], "sessions")
    assert len(again.rows) == 3


def test_a_copy_given_twice_is_pointed_out(tmp_path: Path, field: Path) -> None:
    copy = tmp_path / "copy.duckdb"
    copy.write_bytes(field.read_bytes())
    [note] = query([field, copy], "sessions").notes
    count, said = note.split(" ", 1)
    assert int(count) > 0
    assert said == "frames are in more than one source: a recording given twice?"


def test_a_parquet_export_queries_like_its_recording(tmp_path: Path, field: Path) -> None:
    export = _export_parquet(field, tmp_path / "export")
    for name in ("transactions", "availability", "errors", "inventory", "heartbeats"):
        assert query(export, name).rows == query(field, name).rows, name
    # A recording and an export of another, together.
    other = record(tmp_path / "other.duckdb", [Script("z", "ZED", "ocpp1.6", opened=0)])
    mixed = query([export, other], "sessions")
    assert sorted(r["identity"] for r in mixed.rows) == ["FIELD-1", "FIELD-1", "FIELD-2", "ZED"]


def _export_parquet(recording: Path, export: Path) -> Path:
    """The hive layout the issue names: frames/date=.../identity=.../*.parquet."""
    export.mkdir()
    with duckdb.connect(str(recording), read_only=True) as db:
        db.execute("SET TimeZone = 'UTC'")
        db.execute(
            f"""COPY (SELECT f.*, c.identity, CAST(f.ts AS DATE) AS date
                FROM frames f JOIN connections c USING (connection_id))
            TO '{export / "frames"}' (FORMAT parquet, PARTITION_BY (date, identity))"""
        )
        db.execute(
            f"""COPY (SELECT *, CAST(opened_at AS DATE) AS date FROM connections)
            TO '{export / "connections"}' (FORMAT parquet, PARTITION_BY (date))"""
        )
        for table in ("runs", "run_stats"):
            db.execute(f"COPY {table} TO '{export / table}' (FORMAT parquet, PER_THREAD_OUTPUT)")
    return export


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_text("hello"), "is not an ocproxy recording (not a DuckDB file)"),
        (lambda p: _plain_duckdb(p), "is not an ocproxy recording (no _ocproxy_migrations table)"),
        (lambda p: p.mkdir(), "is not an ocproxy recording (a directory must be a Parquet export"),
    ],
)
def test_what_is_not_a_recording_is_named(tmp_path: Path, make: Any, message: str) -> None:
    path = tmp_path / "thing.duckdb"
    make(path)
    with pytest.raises(ConfigError) as error:
        open_sources([str(path)])
    assert str(error.value).startswith(f"{path} {message}")


def _plain_duckdb(path: Path) -> None:
    with duckdb.connect(str(path)) as db:
        db.execute("CREATE TABLE t AS SELECT 1 AS x")


def test_missing_files_and_empty_globs_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.duckdb: no such file or directory"):
        open_sources([str(tmp_path / "nope.duckdb")])
    with pytest.raises(ConfigError, match=r"\*\.duckdb: no file matches"):
        open_sources([str(tmp_path / "*.duckdb")])


def test_a_recording_being_written_is_refused_cleanly(db_path: Path) -> None:
    with Recorder(db_path), pytest.raises(ConfigError, match="written by another process"):
        _open_in_another_process(db_path)


def _open_in_another_process(path: Path) -> None:
    # DuckDB's lock is per process: only another process sees the file as locked.
    script = (
        "import sys\nfrom ocproxy.analytics import open_sources\nfrom ocproxy.errors import "
        f"ConfigError\ntry:\n    open_sources([{str(path)!r}])\nexcept ConfigError as e:\n"
        "    print(e)\n    sys.exit(2)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    if done.returncode == 2:
        raise ConfigError(done.stdout.strip())
    raise AssertionError(done.stdout + done.stderr)


# -- headers and parameters ---------------------------------------------------------------------


def test_header_parameters_are_parsed() -> None:
    query_ = parse_query(
        "demo",
        "-- title: Demo\n-- description: Shows\n--   two lines.\n"
        "-- param who (required): a name\n-- param since = 2026-01-01: start\n"
        "-- param only: optional\nSELECT $who, $since, $only",
    )
    assert query_.description == "Shows two lines."
    assert [(p.name, p.required, p.default) for p in query_.params] == [
        ("who", True, None),
        ("since", False, "2026-01-01"),
        ("only", False, None),
    ]
    assert bind(query_, {"who": "x"}) == {"who": "x", "since": "2026-01-01", "only": None}
    with pytest.raises(ConfigError, match="needs --param who=VALUE"):
        bind(query_, {})
    with pytest.raises(ConfigError, match="has no parameter 'nope'"):
        bind(query_, {"who": "x", "nope": "1"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-- title: T\nSELECT 1", "needs a title and a description"),
        ("-- title: T\n-- description: D\n-- colour: red\nSELECT 1", "cannot read header line"),
        ("-- title: T\n-- description: D\nSELECT $x", r"parameters used \['x'\]"),
        ("-- title: T\n-- description: D\n-- param x: y\nSELECT 1", r"declared \['x'\]"),
    ],
)
def test_broken_headers_are_refused(text: str, message: str) -> None:
    with pytest.raises(OcproxyError, match=message):
        parse_query("broken", text)


def test_params_are_name_equals_value() -> None:
    assert parse_params(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    with pytest.raises(ConfigError, match="expected NAME=VALUE"):
        parse_params(["novalue"])
    with pytest.raises(ConfigError, match="given twice"):
        parse_params(["a=1", "a=2"])


def test_queries_come_from_the_checkout_when_editable() -> None:
    assert (Path(str(query_dir())) / "transactions.sql").is_file()


# -- packaging ------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_built_wheel_runs_the_named_queries(tmp_path: Path, field: Path) -> None:
    """``pip install .`` (not editable): the queries travel inside the package."""
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(wheels), str(REPO)])
    (wheel,) = wheels.glob("ocproxy-*.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)])
    python = str(venv / "bin" / "python")
    _share_dependencies(python)
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)])
    # Run from an empty directory so that the checkout cannot be imported instead.
    where = _run([python, "-c", "import ocproxy; print(ocproxy.__file__)"], cwd=tmp_path)
    assert where.startswith(str(venv))
    listing = _run([python, "-m", "ocproxy", "query", "--list"], cwd=tmp_path)
    for name in REQUIRED_QUERIES:
        assert name in listing
    csv = _run(
        [python, "-m", "ocproxy", "query", str(field), "transactions", "--format", "csv"],
        cwd=tmp_path,
    )
    assert csv.splitlines()[0].startswith("identity,ocpp_version,transaction_id")
    assert "FIELD-2,2.0.1,TX-9" in csv


def _share_dependencies(python: str) -> None:
    # --system-site-packages reaches the base interpreter's packages, not this venv's:
    # a .pth line adds this venv's site-packages (duckdb, rich, ...) without running the
    # editable install's own .pth, so the checkout stays out of the new environment.
    purelib = sysconfig.get_paths()["purelib"]
    target = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    Path(target.strip(), "ocproxy-test-deps.pth").write_text(purelib + "\n")


def _run(argv: list[str], cwd: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    assert done.returncode == 0, f"{argv}: {done.stdout}\n{done.stderr}"
    return done.stdout
