"""How fast is the audit? Frames/s validated, in process and offline, and its cost in the proxy.

1. Builds in memory a mixed OCPP 1.6 / 2.0.1 recording (literal ``FrameReceived``
   events): chargers booting, reporting status, sending heartbeats, authorising and
   charging (1.6 Start/StopTransaction + MeterValues, 2.0.1 TransactionEvent
   Started/Updated/Ended), the CSMS asking GetConfiguration / GetVariables, and a few
   percent of flawed frames (wrong-case enums, numbers sent as strings, timestamps
   without zone, unknown actions).
2. Times the recorder's per-frame pipeline in this process (``observe()`` with the
   proxy's default redaction, then ``Auditor.frame()``, a ``Correlator`` per
   connection), and separately observe alone, the auditor alone and schema validation
   alone: best of 3 runs after a warm-up pass that compiles the schemas.
3. Writes the same events to a DuckDB file with ``Recorder`` and times
   ``audit_recording(open_recording(db))``, i.e. ``ocproxy audit --jobs 1`` without the
   report, and ``audit_file(db, jobs=CPUs)``, i.e. ``ocproxy audit`` with its default.
4. Runs ``proxy_bench.py`` twice (``--no-audit``, then ``--audit``) and compares the
   proxy's throughput with the direct case's.

    .venv/bin/python bench/audit_bench.py [--frames 200000] [--duration 5]
        [--skip-proxy] [--markdown] [--json results.json]

Targets: >= 30,000 frames/s validated; proxy throughput with audit on >= 0.45x direct.
Exit status: 0 when everything ran (missing a target is reported, not an error), 1 otherwise.
"""

from __future__ import annotations

import argparse
import copy
import gc
import heapq
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import duckdb
from _cli import fmt, positive, positive_int
from rich import box
from rich.console import Console
from rich.table import Table

from ocproxy.audit import schemas
from ocproxy.audit.auditor import Auditor, Finding
from ocproxy.audit.offline import audit_recording, open_recording
from ocproxy.audit.parallel import audit_file
from ocproxy.core.correlation import Correlator
from ocproxy.core.events import ClosedBy, ConnectionClosed, ConnectionOpened, FrameReceived
from ocproxy.core.frames import Call, CallResult, Direction, Opcode
from ocproxy.core.handshake import SUBPROTOCOL_VERSIONS, OcppVersion
from ocproxy.core.observe import ObservedFrame, observe
from ocproxy.core.redaction import Redactor
from ocproxy.recorder import Recorder

PROXY_BENCH = Path(__file__).with_name("proxy_bench.py")
TARGET_FRAMES_PER_S = 30_000.0
TARGET_RATIO = 0.45
TARGET_RATE_TEXT = f"target: >= {TARGET_FRAMES_PER_S:,.0f} frames/s validated"
TARGET_RATIO_TEXT = f"target: proxy throughput with audit on >= {TARGET_RATIO}x direct"
RUNS = 3
SEED = 20_260_101
T0 = 1_767_254_400.0  # 2026-01-01T08:00:00Z
SESSION_S = 2 * 3600.0  # simulated length of one charger's connection
HEARTBEAT_S = 300
FLAW_RATE = 0.05  # share of the chargers' CALLs that get a flaw
FLAWS = ("wrong-case enum", "number as string", "naive timestamp", "unknown action")
# The proxy's default: secrets out, driver identifiers pseudonymised with a key.
REDACTOR = Redactor(b"audit-bench-id-key")

Event = ConnectionOpened | FrameReceived | ConnectionClosed
Payload = dict[str, Any]
CP = Direction.TO_CSMS  # the charger sends
CS = Direction.TO_CHARGER  # the CSMS sends


# -- the recording ------------------------------------------------------------------------


@dataclass
class Recording:
    events: list[Event]
    frames: int
    connections: dict[str, int]  # per OCPP version
    frames_by_version: Counter[str]
    actions: Counter[str]  # CALLs per action
    flaws: Counter[str]  # flawed CALLs per kind


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# Enum values the chargers send: the "wrong-case enum" flaw lower-cases one of them.
_ENUMS = frozenset(
    {
        "Available", "Preparing", "Charging", "Finishing", "NoError", "Local", "PowerUp",
        "Sample.Periodic", "Transaction.Begin", "Transaction.End", "Raw", "Outlet", "EV",
        "Energy.Active.Import.Register", "Power.Active.Import", "Current.Import",
        "Voltage", "SoC", "Wh", "W", "A", "V", "Percent", "L1", "L2", "L3", "L1-N",
        "Started", "Updated", "Ended", "Authorized", "MeterValuePeriodic", "StopAuthorized",
        "EVConnected", "ISO14443", "Occupied", "Sample.Clock",
    }
)  # fmt: skip


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, (*path, index))
    else:
        yield path, value


def _flawed(rng: random.Random, payload: Payload, kind: str) -> bool:
    """Give ``payload`` one flaw of ``kind`` in place; False if it has nothing to flaw."""
    candidates: list[tuple[tuple[Any, ...], Any]] = []
    for path, value in _leaves(payload):
        if kind == "wrong-case enum" and value in _ENUMS and "unitOfMeasure" not in path:
            # (2.0.1's unitOfMeasure.unit is free text: a lower-case unit is fine there)
            candidates.append((path, value.lower()))
        elif kind == "number as string" and type(value) in (int, float):
            candidates.append((path, str(value)))
        elif kind == "naive timestamp" and isinstance(value, str) and value.endswith("Z"):
            candidates.append((path, value[:-1]))
    if not candidates:
        return False
    path, new = rng.choice(candidates)
    holder: Any = payload
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = new
    return True


@dataclass
class _Job:
    at: float
    order: int
    run: Callable[[float], object]


class _Session:
    """One charger's connection: jobs scheduled in time, then played as frames.

    Each side has at most one CALL outstanding (a new CALL waits for the previous
    answer in its direction), as OCPP-J requires; the two directions may cross.
    """

    def __init__(self, rng: random.Random, index: int, version: OcppVersion, start: float) -> None:
        self.rng = rng
        self.version = version
        self.connection_id = f"bench-{index:05d}"
        self.identity = f"CP-{index:05d}"
        self.start = start
        self.end = start + SESSION_S
        self.frames: list[tuple[float, Direction, str]] = []
        self.busy = {CP: start, CS: start}
        self.jobs: list[_Job] = []
        self.actions: Counter[str] = Counter()
        self.flaws: Counter[str] = Counter()

    def at(self, when: float, run: Callable[[float], object]) -> None:
        self.jobs.append(_Job(when, len(self.jobs), run))

    def message_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def call(
        self,
        when: float,
        direction: Direction,
        action: str,
        payload: Payload,
        answer: Payload | None,
        *,
        may_flaw: bool = True,
    ) -> float:
        """A CALL and its CALLRESULT (or a NotImplemented CALLERROR if ``answer`` is None)."""
        sent = max(when, self.busy[direction])
        if direction is CP and may_flaw and self.rng.random() < FLAW_RATE:
            kind = self.rng.choice(FLAWS[:3])
            payload = copy.deepcopy(payload)  # parts may be shared with later CALLs
            if _flawed(self.rng, payload, kind):
                self.flaws[kind] += 1
        message_id = self.message_id()
        self.actions[action] += 1
        self.frames.append((sent, direction, json.dumps([2, message_id, action, payload])))
        low, high = (0.02, 0.15) if direction is CP else (0.1, 0.6)
        answered = sent + self.rng.uniform(low, high)
        if answer is None:
            reply = [4, message_id, "NotImplemented", f"{action} is not supported", {}]
        else:
            reply = [3, message_id, answer]
        self.frames.append((answered, direction.reverse, json.dumps(reply)))
        self.busy[direction] = answered + 0.001
        return answered

    def play(self) -> None:
        """Run the jobs in time order; a job that is a generator resumes at each time it yields."""
        heap = [(job.at, job.order, job.run) for job in self.jobs]
        heapq.heapify(heap)
        order = len(heap)
        while heap:
            at, _order, run = heapq.heappop(heap)
            steps = run(at)
            if isinstance(steps, Iterator):
                resume = next(steps, None)
                if resume is not None:
                    order += 1
                    heapq.heappush(heap, (resume, order, _resumed(steps)))

    def common(self) -> None:
        """Heartbeats, unknown actions: the same on every version."""
        for n in range(1, int(SESSION_S // HEARTBEAT_S)):
            self.at(self.start + 2 + n * HEARTBEAT_S, self.heartbeat)
        calls = int(SESSION_S / 60 * 1.2)  # ~ the CALLs a session sends
        for _ in range(sum(self.rng.random() < FLAW_RATE / 4 for _ in range(calls))):
            self.at(self.rng.uniform(self.start + 60, self.end - 60), self.unknown_action)

    def heartbeat(self, when: float) -> None:
        self.call(when, CP, "Heartbeat", {}, {"currentTime": _iso(when)}, may_flaw=False)

    def unknown_action(self, when: float) -> None:
        self.flaws["unknown action"] += 1
        if self.version is OcppVersion.V16:  # a wrong case is a different action
            self.call(when, CP, "HeartBeat", {}, None, may_flaw=False)
        else:  # a 1.6 action on a 2.0.1 connection
            payload = {"connectorId": 1, "idTag": "04A2B3C4D5", "meterStart": 0}
            payload |= {"timestamp": _iso(when)}
            self.call(when, CP, "StartTransaction", payload, None, may_flaw=False)

    def charge(self, when: float, length: float, connector: int) -> Iterator[float]:
        """A charging session's CALLs; yields the time of the next one before sending it."""
        raise NotImplementedError

    def transactions(self) -> None:
        """2-4 charging sessions, one after the other, alternating connectors."""
        when = self.start + self.rng.uniform(120, 900)
        for n in range(self.rng.randint(2, 4)):
            length = self.rng.uniform(15, 35) * 60
            if when + length > self.end - 120:
                break
            self.at(when, partial(self.charge, length=length, connector=n % 2 + 1))
            when += length + self.rng.uniform(300, 1200)


def _resumed(steps: Iterator[float]) -> Callable[[float], Iterator[float]]:
    return lambda _at: steps


def _sampled_16(rng: random.Random, energy: float, soc: int) -> list[Payload]:
    def sv(value: float, measurand: str, unit: str, **extra: str) -> Payload:
        return {
            "value": f"{value:.1f}",
            "context": "Sample.Periodic",
            "format": "Raw",
            "measurand": measurand,
            "location": "Outlet",
            "unit": unit,
        } | extra

    amps = [rng.uniform(15.5, 16.0) for _ in range(3)]
    return [
        sv(energy, "Energy.Active.Import.Register", "Wh"),
        sv(sum(amps) * 230.0, "Power.Active.Import", "W"),
        *(sv(a, "Current.Import", "A", phase=f"L{i}") for i, a in enumerate(amps, 1)),
        sv(rng.uniform(228, 234), "Voltage", "V", phase="L1-N"),
        sv(soc, "SoC", "Percent", location="EV"),
    ]


def _sampled_201(rng: random.Random, energy: float, soc: int, context: str) -> list[Payload]:
    def sv(value: float, measurand: str, unit: str, **extra: Any) -> Payload:
        return {
            "value": round(value, 1),
            "context": context,
            "measurand": measurand,
            "location": "Outlet",
            "unitOfMeasure": {"unit": unit},
        } | extra

    amps = [rng.uniform(15.5, 16.0) for _ in range(3)]
    return [
        sv(energy, "Energy.Active.Import.Register", "Wh"),
        sv(sum(amps) * 230.0, "Power.Active.Import", "W"),
        *(sv(a, "Current.Import", "A", phase=f"L{i}") for i, a in enumerate(amps, 1)),
        sv(rng.uniform(228, 234), "Voltage", "V", phase="L1-N"),
        sv(soc, "SoC", "Percent", location="EV"),
    ]


class _Session16(_Session):
    def plan(self, index: int) -> None:
        self.at(self.start, lambda t: self.boot(t, index))
        for connector in (1, 2):
            self.at(self.start + 1, partial(self.status, connector=connector, status="Available"))
        self.at(self.start + self.rng.uniform(5, 60), self.get_configuration)
        self.common()
        self.transactions()

    def boot(self, when: float, index: int) -> None:
        payload = {
            "chargePointVendor": "Alfen BV",
            "chargePointModel": "NG920-60503",
            "chargePointSerialNumber": f"ACE{index:07d}",
            "chargeBoxSerialNumber": f"ACE{index:07d}",
            "firmwareVersion": "5.8.1-4123",
            "iccid": f"8931{index:015d}",
            "imsi": f"20404{index:010d}",
            "meterType": "Eastron SDM630",
            "meterSerialNumber": f"SDM{index:09d}",
        }
        answer = {"status": "Accepted", "currentTime": _iso(when), "interval": HEARTBEAT_S}
        self.call(when, CP, "BootNotification", payload, answer)

    def status(self, when: float, connector: int, status: str) -> float:
        payload = {
            "connectorId": connector,
            "errorCode": "NoError",
            "status": status,
            "timestamp": _iso(when),
        }
        return self.call(when, CP, "StatusNotification", payload, {})

    def get_configuration(self, when: float) -> None:
        keys = {
            "HeartbeatInterval": str(HEARTBEAT_S),
            "MeterValueSampleInterval": "60",
            "MeterValuesSampledData": "Energy.Active.Import.Register,Power.Active.Import,"
            "Current.Import,Voltage,SoC",
            "ConnectionTimeOut": "90",
            "LocalAuthorizeOffline": "true",
            "NumberOfConnectors": "2",
        }
        answer = {
            "configurationKey": [{"key": k, "readonly": False, "value": v} for k, v in keys.items()]
        }
        self.call(when, CS, "GetConfiguration", {"key": list(keys)}, answer)

    def charge(self, when: float, length: float, connector: int) -> Iterator[float]:
        rng = self.rng
        tag = f"04{rng.getrandbits(48):012X}"
        tag_info = {"status": "Accepted", "expiryDate": _iso(T0 + 86400 * 365)}
        when = self.call(when, CP, "Authorize", {"idTag": tag}, {"idTagInfo": tag_info})
        yield when + 1
        when = self.status(when + 1, connector, "Preparing")
        energy = float(rng.randint(100_000, 9_000_000))
        transaction = rng.randint(1, 2**31 - 1)
        start = {
            "connectorId": connector,
            "idTag": tag,
            "meterStart": int(energy),
            "timestamp": _iso(when + 2),
        }
        answer = {"idTagInfo": {"status": "Accepted"}, "transactionId": transaction}
        yield when + 2
        when = self.call(when + 2, CP, "StartTransaction", start, answer)
        yield when + 1
        when = self.status(when + 1, connector, "Charging")
        soc = rng.randint(10, 60)
        for minute in range(1, int(length // 60)):
            energy += rng.uniform(150, 190)
            soc = min(100, soc + rng.randint(0, 2))
            at = when + minute * 60
            meter = [{"timestamp": _iso(at), "sampledValue": _sampled_16(rng, energy, soc)}]
            payload = {"connectorId": connector, "transactionId": transaction, "meterValue": meter}
            yield at
            self.call(at, CP, "MeterValues", payload, {})
        when += length
        yield when
        stop = {
            "idTag": tag,
            "meterStop": int(energy),
            "timestamp": _iso(when),
            "transactionId": transaction,
            "reason": "Local",
        }
        when = self.call(when, CP, "StopTransaction", stop, {"idTagInfo": {"status": "Accepted"}})
        yield when + 1
        when = self.status(when + 1, connector, "Finishing")
        yield (when := when + rng.uniform(30, 120))
        self.status(when, connector, "Available")


class _Session201(_Session):
    def plan(self, index: int) -> None:
        self.at(self.start, lambda t: self.boot(t, index))
        for evse in (1, 2):
            self.at(self.start + 1, partial(self.status, connector=evse, status="Available"))
        self.at(self.start + self.rng.uniform(5, 60), self.get_variables)
        for n in range(1, int(SESSION_S // 900)):  # the main meter, every 15 minutes
            self.at(self.start + 30 + n * 900, self.main_meter)
        self.common()
        self.transactions()

    def boot(self, when: float, index: int) -> None:
        payload = {
            "reason": "PowerUp",
            "chargingStation": {
                "model": "Terra AC W22",
                "vendorName": "ABB",
                "serialNumber": f"TACW{index:08d}",
                "firmwareVersion": "1.8.21",
                "modem": {"iccid": f"8931{index:015d}", "imsi": f"20404{index:010d}"},
            },
        }
        answer = {"currentTime": _iso(when), "interval": HEARTBEAT_S, "status": "Accepted"}
        self.call(when, CP, "BootNotification", payload, answer)

    def status(self, when: float, connector: int, status: str) -> float:
        payload = {
            "timestamp": _iso(when),
            "connectorStatus": status,
            "evseId": connector,
            "connectorId": 1,
        }
        return self.call(when, CP, "StatusNotification", payload, {})

    def get_variables(self, when: float) -> None:
        variables = [
            ("OCPPCommCtrlr", "HeartbeatInterval", str(HEARTBEAT_S)),
            ("SampledDataCtrlr", "TxUpdatedInterval", "60"),
            ("SampledDataCtrlr", "TxUpdatedMeasurands", "Energy.Active.Import.Register,SoC"),
            ("AuthCtrlr", "LocalAuthorizeOffline", "true"),
            ("SecurityCtrlr", "SecurityProfile", "2"),
        ]
        request = [{"component": {"name": c}, "variable": {"name": v}} for c, v, _ in variables]
        results = [
            {"attributeStatus": "Accepted", "attributeValue": value} | item
            for item, (_, _, value) in zip(request, variables, strict=True)
        ]
        self.call(
            when, CS, "GetVariables", {"getVariableData": request}, {"getVariableResult": results}
        )

    def main_meter(self, when: float) -> None:
        energy = self.rng.uniform(1e6, 9e7)
        sampled = _sampled_201(self.rng, energy, 0, "Sample.Clock")[:2]
        value = {"timestamp": _iso(when), "sampledValue": sampled}
        self.call(when, CP, "MeterValues", {"evseId": 0, "meterValue": [value]}, {})

    def charge(self, when: float, length: float, connector: int) -> Iterator[float]:
        rng = self.rng
        evse = {"id": connector, "connectorId": 1}
        token = {"idToken": f"04{rng.getrandbits(48):012X}", "type": "ISO14443"}
        accepted = {"idTokenInfo": {"status": "Accepted"}}
        when = self.call(when, CP, "Authorize", {"idToken": token}, accepted)
        yield when + 1
        when = self.status(when + 1, connector, "Occupied")
        transaction = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        energy = float(rng.randint(100_000, 9_000_000))
        soc = rng.randint(10, 60)
        seq = 0

        def event(at: float, kind: str, trigger: str, info: Payload, **extra: Any) -> float:
            nonlocal seq
            payload = {
                "eventType": kind,
                "timestamp": _iso(at),
                "triggerReason": trigger,
                "seqNo": seq,
                "transactionInfo": {"transactionId": transaction} | info,
            } | extra
            seq += 1
            # The CSMS answers with idTokenInfo when the event carries an idToken.
            answer = accepted if "idToken" in extra else {}
            return self.call(at, CP, "TransactionEvent", payload, answer)

        def meter(at: float, context: str, count: int = 7) -> list[Payload]:
            sampled = _sampled_201(rng, energy, soc, context)[:count]
            return [{"timestamp": _iso(at), "sampledValue": sampled}]

        charging = {"chargingState": "Charging"}
        yield when + 2
        when = event(
            when + 2,
            "Started",
            "Authorized",
            charging,
            idToken=token,
            evse=evse,
            meterValue=meter(when + 2, "Transaction.Begin", 1),
        )
        for minute in range(1, int(length // 60)):
            energy += rng.uniform(150, 190)
            soc = min(100, soc + rng.randint(0, 2))
            at = when + minute * 60
            yield at
            event(
                at,
                "Updated",
                "MeterValuePeriodic",
                charging,
                meterValue=meter(at, "Sample.Periodic"),
            )
        when += length
        yield when
        ended = {"chargingState": "EVConnected", "stoppedReason": "Local"}
        when = event(
            when,
            "Ended",
            "StopAuthorized",
            ended,
            idToken=token,
            meterValue=meter(when, "Transaction.End", 1),
        )
        yield (when := when + rng.uniform(30, 120))
        self.status(when, connector, "Available")


def build_recording(frames: int, seed: int = SEED) -> Recording:
    """Connections of 1.6 (55 %) and 2.0.1 chargers until there are ``frames`` frames.

    Events are in the order the live recorder would see them, which is also the order
    ``ocproxy audit`` reads them back from the file: by time, a connection's open
    before its first frame, its close after its last.
    """
    rng = random.Random(seed)
    keyed: list[tuple[float, int, str, int, Event]] = []
    total = 0
    connections: Counter[str] = Counter()
    by_version: Counter[str] = Counter()
    actions: Counter[str] = Counter()
    flaws: Counter[str] = Counter()
    index = 0
    while total < frames:
        version = OcppVersion.V16 if rng.random() < 0.55 else OcppVersion.V201
        start = T0 + rng.uniform(0, 600)
        kind = _Session16 if version is OcppVersion.V16 else _Session201
        session = kind(random.Random(rng.getrandbits(64)), index, version, start)
        session.plan(index)
        session.play()
        index += 1
        connections[version] += 1
        by_version[version] += len(session.frames)
        actions.update(session.actions)
        flaws.update(session.flaws)
        total += len(session.frames)
        keyed.extend(_session_events(session))
    keyed.sort(key=lambda k: k[:4])
    return Recording([k[4] for k in keyed], total, dict(connections), by_version, actions, flaws)


def _session_events(session: _Session) -> Iterator[tuple[float, int, str, int, Event]]:
    cid, identity = session.connection_id, session.identity
    subprotocol = next(p for p, v in SUBPROTOCOL_VERSIONS.items() if v is session.version)
    # Whole microseconds, as DuckDB stores them: the file gives back the same floats.
    frames = sorted((round(ts * 1e6) / 1e6, d, text) for ts, d, text in session.frames)
    opened_at = round((session.start - 0.5) * 1e6) / 1e6
    opened = ConnectionOpened(
        connection_id=cid,
        ts=opened_at,
        identity=identity,
        path=f"/ocpp/{identity}",
        remote_addr=f"10.{session.rng.randint(0, 255)}.{session.rng.randint(0, 255)}.7:51234",
        offered_subprotocols=(subprotocol,),
        subprotocol=subprotocol,
        upstream_url=f"wss://csms.example.net/ocpp/{identity}",
        handshake_status=101,
        request_headers=(("User-Agent", "bench-charger/1.0"),),
    )
    yield opened_at, 0, cid, 0, opened
    for seq, (ts, direction, text) in enumerate(frames, 1):
        size = len(text.encode())
        event = FrameReceived(cid, seq, ts, direction, Opcode.TEXT, text, size, identity=identity)
        yield ts, 1, cid, seq, event
    closed_at = round((max(session.end, frames[-1][0]) + 1.0) * 1e6) / 1e6
    yield closed_at, 2, cid, 0, ConnectionClosed(cid, closed_at, 1000, "", ClosedBy.CHARGER)


# -- in-process measurements ----------------------------------------------------------------


AuditFeed = list[ConnectionOpened | ObservedFrame | ConnectionClosed]
SchemaCheck = tuple[OcppVersion, str, Payload, bool]


def pipeline(events: list[Event], redactor: Redactor | None) -> Counter[str]:
    """What the recorder's writer thread does per event (``Recorder._handle``), minus storage."""
    auditor = Auditor()
    correlators: dict[str, Correlator] = {}
    found: list[Finding] = []
    for event in events:
        if isinstance(event, FrameReceived):
            correlator = correlators.setdefault(event.connection_id, Correlator())
            found.extend(auditor.frame(observe(event, correlator, redactor)))
        elif isinstance(event, ConnectionOpened):
            correlators[event.connection_id] = Correlator()
            found.extend(auditor.opened(event))
        else:
            correlators.pop(event.connection_id, None)
            found.extend(auditor.closed(event))
    return Counter(f.rule for f in found)


def observe_only(events: list[Event], redactor: Redactor | None, keep: AuditFeed | None) -> None:
    """Parse, correlate and redact every frame; with ``keep``, collect the auditor's input."""
    correlators: dict[str, Correlator] = {}
    for event in events:
        if isinstance(event, FrameReceived):
            correlator = correlators.setdefault(event.connection_id, Correlator())
            observed = observe(event, correlator, redactor)
            if keep is not None:
                keep.append(observed)
        else:
            if isinstance(event, ConnectionOpened):
                correlators[event.connection_id] = Correlator()
            else:
                correlators.pop(event.connection_id, None)
            if keep is not None:
                keep.append(event)


def audit_only(feed: AuditFeed) -> None:
    auditor = Auditor()
    for item in feed:
        if isinstance(item, ObservedFrame):
            auditor.frame(item)
        elif isinstance(item, ConnectionOpened):
            auditor.opened(item)
        else:
            auditor.closed(item)


def clean_feed(feed: AuditFeed) -> AuditFeed:
    """``feed`` without the frames that have a finding (and their connections' events)."""
    auditor = Auditor()
    flawed: set[tuple[str, int | None]] = set()
    for item in feed:
        if isinstance(item, ObservedFrame):
            found = auditor.frame(item)
        elif isinstance(item, ConnectionOpened):
            found = auditor.opened(item)
        else:
            found = auditor.closed(item)
        flawed.update((f.connection_id, f.seq) for f in found)
    return [
        item
        for item in feed
        if not isinstance(item, ObservedFrame) or (item.connection_id, item.seq) not in flawed
    ]


def schema_checks(feed: AuditFeed) -> list[SchemaCheck]:
    """The (version, action, payload, response?) the auditor validates, in order."""
    versions: dict[str, OcppVersion] = {}
    out: list[SchemaCheck] = []
    for item in feed:
        if isinstance(item, ConnectionOpened):
            versions[item.connection_id] = SUBPROTOCOL_VERSIONS[item.subprotocol or ""]
        elif isinstance(item, ObservedFrame):
            version, frame, action = versions[item.connection_id], item.frame, item.action
            if isinstance(frame, Call) and frame.action in schemas.actions(version):
                out.append((version, frame.action, frame.payload, False))
            elif (
                isinstance(frame, CallResult)
                and action in schemas.actions(version)
                and item.pairing in ("matched", "late")
            ):
                out.append((version, str(action), frame.payload, True))
    return out


def validate_only(checks: list[SchemaCheck]) -> None:
    validate = schemas.validate
    for version, action, payload, response in checks:
        validate(version, action, payload, response=response)


def best_of(runs: int, work: Callable[[], object]) -> tuple[float, float]:
    """The shortest wall time and the shortest CPU time (this process) of ``runs`` runs."""
    wall, cpu = [], []
    for _ in range(runs):
        gc.collect()
        started, started_cpu = time.perf_counter(), time.process_time()
        work()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return min(wall), min(cpu)


@dataclass
class Measure:
    key: str
    name: str
    frames: int  # frames of the recording the measure covers
    seconds: float  # wall time, best of RUNS
    cpu_seconds: float  # CPU time of this process, best of RUNS
    target: bool = False  # the frames/s target applies
    note: str = ""

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds

    @property
    def cpu_frames_per_s(self) -> float | None:
        return self.frames / self.cpu_seconds if self.cpu_seconds > 0 else None

    @property
    def us_per_frame(self) -> float:
        return self.seconds / self.frames * 1e6

    def met(self) -> bool | None:
        return self.frames_per_s >= TARGET_FRAMES_PER_S if self.target else None


def measure_in_process(
    recording: Recording, console: Console
) -> tuple[list[Measure], Counter[str]]:
    events, frames = recording.events, recording.frames
    console.print("warm-up pass (compiles the schemas) ...")
    started = time.perf_counter()
    rules = pipeline(events, REDACTOR)
    console.print(f"  {time.perf_counter() - started:.1f} s")
    feed: AuditFeed = []
    observe_only(events, REDACTOR, feed)
    checks = schema_checks(feed)
    validate_only(checks)
    measures = []

    def timed(key: str, name: str, work: Callable[[], object], **extra: Any) -> None:
        console.print(f"{name}: best of {RUNS} ...")
        measures.append(Measure(key, name, frames, *best_of(RUNS, work), **extra))
        console.print(f"  {measures[-1].frames_per_s:,.0f} frames/s")

    timed(
        "pipeline",
        "observe + audit",
        lambda: pipeline(events, REDACTOR),
        target=True,
        note="the recorder's per-frame work: parse, correlate, redact (as the proxy does "
        "by default), audit",
    )
    timed(
        "observe",
        "observe alone",
        lambda: observe_only(events, REDACTOR, None),
        note="parse, correlate, redact",
    )
    timed(
        "auditor",
        "Auditor.frame alone",
        lambda: audit_only(feed),
        note="the audit of frames observed beforehand (schema validation included)",
    )
    clean = clean_feed(feed)
    clean_frames = sum(isinstance(item, ObservedFrame) for item in clean)
    console.print(f"Auditor.frame on clean frames only: best of {RUNS} ...")
    measures.append(
        Measure(
            "auditor_clean",
            "Auditor.frame, clean frames only",
            clean_frames,
            *best_of(RUNS, lambda: audit_only(clean)),
            note=f"the audit's cost per frame without findings ({clean_frames:,} frames): "
            "what most live traffic costs",
        )
    )
    console.print(f"  {measures[-1].us_per_frame:.2f} us a frame")
    timed(
        "schemas",
        "schema validation alone",
        lambda: validate_only(checks),
        note=f"fastjsonschema over the {len(checks):,} payloads the auditor validates",
    )
    timed(
        "pipeline_no_redaction",
        "observe + audit, no redaction",
        lambda: pipeline(events, None),
        note="the per-frame work of `ocproxy audit`, which reads the already redacted frames",
    )
    return measures, rules


# -- offline: ocproxy audit on a DuckDB recording ----------------------------------------


def measure_offline(
    recording: Recording, workdir: Path, console: Console
) -> tuple[list[Measure], Counter[str], str | None]:
    db = workdir / "recording.duckdb"
    console.print(f"writing {recording.frames:,} frames to {db.name} with Recorder ...")
    started = time.perf_counter()
    with Recorder(db, source="bench", redactor=REDACTOR) as recorder:
        for event in recording.events:
            recorder.submit(event)
    stats = recorder.stats
    console.print(f"  {time.perf_counter() - started:.1f} s")
    problem = None
    if stats.frames_recorded != recording.frames or stats.errors:
        problem = (
            f"recorded {stats.frames_recorded:,} of {recording.frames:,} frames {stats.errors}"
        )
    rules: Counter[str] = Counter()

    def audit() -> None:
        connection = open_recording(db)
        try:
            findings, _evidence, _identities = audit_recording(connection)
        finally:
            connection.close()
        rules.clear()
        rules.update(f.rule for f in findings)

    console.print(f"ocproxy audit (open_recording + audit_recording): best of {RUNS} ...")
    seconds, cpu_seconds = best_of(RUNS, audit)
    single = Measure(
        "offline",
        "ocproxy audit --jobs 1",
        recording.frames,
        seconds,
        cpu_seconds,
        note="open_recording + audit_recording on the file Recorder wrote, one process: "
        "read the rows, observe, audit, fetch the evidence frames",
    )
    console.print(f"  {single.frames_per_s:,.0f} frames/s")
    jobs = os.cpu_count() or 1
    split: Counter[str] = Counter()

    def audit_in_parallel() -> None:
        findings, _evidence, _identities = audit_file(db, jobs=jobs)
        split.clear()
        split.update(f.rule for f in findings)

    console.print(f"ocproxy audit --jobs {jobs} (audit_file): best of {RUNS} ...")
    seconds, _cpu = best_of(RUNS, audit_in_parallel)
    parallel = Measure(
        "offline",
        f"ocproxy audit --jobs {jobs} (default)",
        recording.frames,
        seconds,
        0.0,  # the workers' CPU is not this process's: not shown
        target=True,
        note=f"audit_file: the same, split by charger identity over {jobs} processes "
        "(one per CPU, the command's default), including their start-up",
    )
    console.print(f"  {parallel.frames_per_s:,.0f} frames/s")
    if split != rules:
        problem = f"--jobs {jobs} findings {dict(split)} differ from one process's {dict(rules)}"
    return [single, parallel], rules, problem


# -- the proxy with live audit ------------------------------------------------------------


@dataclass
class ProxyRun:
    label: str  # "audit off" / "audit on"
    bench_args: str
    exit_code: int | None = None
    document: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    output_tail: str = ""

    def row(self, chargers: int, path: str) -> dict[str, Any]:
        for row in self.document.get("rows", []):
            if row["chargers"] == chargers and row["path"] == path:
                return dict(row)
        return {}

    def proxy_cpu(self, chargers: int) -> float | None:
        for case in self.document.get("cases", []):
            if case["chargers"] == chargers and case["path"] == "ocproxy":
                value = case["cpu_us_per_round_trip"].get("proxy")
                return None if value is None else float(value)
        return None

    def chargers(self) -> list[int]:
        return sorted({int(row["chargers"]) for row in self.document.get("rows", [])})


def run_proxy_bench(label: str, bench_args: str, duration: float, console: Console) -> ProxyRun:
    run = ProxyRun(label, bench_args)
    with tempfile.TemporaryDirectory(prefix="ocproxy-audit-bench-") as tmp:
        out = Path(tmp) / "proxy.json"
        command = [sys.executable, str(PROXY_BENCH), "--duration", f"{duration:g}"]
        command += ["--json", str(out)]
        # As proxy_bench.py ran before it measured nginx & co. in rounds with compression off.
        command += ["--targets", "direct,ocproxy", "--rounds", "1", "--compression", "deflate"]
        env = {**os.environ, "OCPROXY_BENCH_ARGS": bench_args, "COLUMNS": "120"}
        console.print(
            f"proxy_bench.py with OCPROXY_BENCH_ARGS={bench_args} "
            f"(about {4 * (duration + 3):.0f} s) ...",
            highlight=False,
        )
        try:
            done = subprocess.run(
                command,
                env=env,
                capture_output=True,
                text=True,
                timeout=300 + 8 * duration,
                check=False,
            )
        except subprocess.TimeoutExpired:
            run.error = "proxy_bench.py timed out"
            return run
        run.exit_code = done.returncode
        run.output_tail = (done.stdout + done.stderr)[-3000:]
        if out.is_file():
            run.document = json.loads(out.read_text())
        if done.returncode != 0 or not run.document:
            run.error = f"proxy_bench.py exited {done.returncode}"
            console.print(f"[red]{run.error}[/]; its output (tail):\n{run.output_tail}")
    return run


def proxy_rows(off: ProxyRun, on: ProxyRun) -> list[dict[str, Any]]:
    rows = []
    for chargers in sorted(set(off.chargers()) | set(on.chargers())):
        direct_off, proxy_off = off.row(chargers, "direct"), off.row(chargers, "ocproxy")
        direct_on, proxy_on = on.row(chargers, "direct"), on.row(chargers, "ocproxy")
        rate_off, rate_on = proxy_off.get("round_trips_per_s"), proxy_on.get("round_trips_per_s")
        cpu_off, cpu_on = off.proxy_cpu(chargers), on.proxy_cpu(chargers)
        ratio_on = proxy_on.get("throughput_ratio")
        rows.append(
            {
                "chargers": chargers,
                "direct_off": direct_off.get("round_trips_per_s"),
                "proxy_off": rate_off,
                "ratio_off": proxy_off.get("throughput_ratio"),
                "direct_on": direct_on.get("round_trips_per_s"),
                "proxy_on": rate_on,
                "ratio_on": ratio_on,
                # Throughput lost by turning the audit on, proxy vs proxy.
                "audit_cost": None if not rate_off or rate_on is None else 1 - rate_on / rate_off,
                "cpu_off": cpu_off,
                "cpu_on": cpu_on,
                "audit_cpu_per_frame": (
                    None if cpu_off is None or cpu_on is None else (cpu_on - cpu_off) / 2
                ),
                "recorded": bool(proxy_off.get("every_frame_recorded"))
                and bool(proxy_on.get("every_frame_recorded")),
                "met": None if ratio_on is None else ratio_on >= TARGET_RATIO,
            }
        )
    return rows


# -- report ---------------------------------------------------------------------------------


def verdict(met: bool | None) -> str:
    return {True: "met", False: "NOT met", None: "-"}[met]


@dataclass(frozen=True)
class Column:
    title: str  # Markdown header
    get: Callable[[Any], str]
    left: bool = False
    header: str = ""  # rich header, on short lines so that the table fits 80 columns
    rich: bool = True  # in the rich table
    markdown: bool = True  # in the Markdown table


SHARE_NOTE = "share = time / the time of observe + audit"
PROXY_NOTE = (
    "rt = round trip (2 frames); ratio = proxy / direct in the same run; audit cost = "
    "1 - proxy rt/s with audit / without; CPU = the proxy process's CPU per round trip"
)


def validation_columns(pipeline_s: float) -> list[Column]:
    def share(m: Measure) -> str:
        return "-" if m.key == "offline" else fmt(m.seconds / pipeline_s * 100, ".0f", " %")

    return [
        Column("Measure", lambda m: m.name, left=True),
        Column("Frames/s", lambda m: fmt(m.frames_per_s, ",.0f")),
        Column("Frames/CPU-s", lambda m: fmt(m.cpu_frames_per_s, ",.0f"), header="Frames/\nCPU-s"),
        Column("µs/frame", lambda m: fmt(m.us_per_frame, ".1f"), header="µs/\nframe"),
        Column("Share", share),
        Column(
            "Target", lambda m: f">= {TARGET_FRAMES_PER_S:,.0f}" if m.target else "", rich=False
        ),
        Column("Met", lambda m: verdict(m.met()), header="Target\nmet"),
        Column("What", lambda m: str(m.note), left=True, rich=False),
    ]


def _get(key: str, spec: str, suffix: str = "") -> Callable[[dict[str, Any]], str]:
    return lambda r: fmt(r[key], spec, suffix)


PROXY_COLUMNS = [
    Column("Chargers", _get("chargers", "d"), header="Char-\ngers"),
    Column("Direct rt/s, audit-off run", _get("direct_off", ",.0f"), rich=False),
    Column(
        "Direct rt/s, off / on run",
        lambda r: f"{fmt(r['direct_off'], ',.0f')}/{fmt(r['direct_on'], ',.0f')}",
        header="direct rt/s\noff/on run",
        markdown=False,
    ),
    Column("Proxy rt/s, audit off", _get("proxy_off", ",.0f"), header="proxy\nrt/s\noff"),
    Column("Ratio, audit off", _get("ratio_off", ".2f", "x"), header="ratio\noff"),
    Column("Direct rt/s, audit-on run", _get("direct_on", ",.0f"), rich=False),
    Column("Proxy rt/s, audit on", _get("proxy_on", ",.0f"), header="proxy\nrt/s\non"),
    Column("Ratio, audit on", _get("ratio_on", ".2f", "x"), header="ratio\non"),
    Column(
        "Audit cost (proxy rt/s)",
        lambda r: fmt(None if r["audit_cost"] is None else r["audit_cost"] * 100, ".0f", " %"),
        header="audit\ncost",
    ),
    Column(
        "Proxy CPU µs/rt, off / on",
        lambda r: f"{fmt(r['cpu_off'], '.0f')}/{fmt(r['cpu_on'], '.0f')}",
        header="CPU\nµs/rt\noff/on",
    ),
    Column("Target", lambda r: f">= {TARGET_RATIO}x", rich=False),
    Column("Met", lambda r: verdict(r["met"]), header=f"target\n{TARGET_RATIO}x\nmet"),
    Column("Every frame recorded", _get("recorded", ""), rich=False),
]


def rich_table(title: str, columns: list[Column], rows: list[Any], caption: str = "") -> Table:
    table = Table(title=title, caption=caption or None, box=box.SIMPLE_HEAD, pad_edge=False)
    shown = [c for c in columns if c.rich]
    cells = [[c.get(row) for c in shown] for row in rows]
    for i, column in enumerate(shown):
        justify: Literal["left", "right"] = "left" if column.left else "right"
        # Headers may wrap; figures never do.
        widest = max((len(line[i]) for line in cells), default=1)
        table.add_column(column.header or column.title, justify=justify, min_width=widest)
    for line in cells:
        table.add_row(*line)
    return table


def markdown_table(columns: list[Column], rows: list[Any]) -> str:
    columns = [c for c in columns if c.markdown]
    lines = ["| " + " | ".join(c.title for c in columns) + " |"]
    lines.append("|" + "|".join(":---" if c.left else "---:" for c in columns) + "|")
    lines += ["| " + " | ".join(c.get(row) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def describe(recording: Recording) -> str:
    flawed = sum(recording.flaws.values())
    versions = ", ".join(
        f"{v}: {recording.connections[v]:,} connections / {n:,} frames"
        for v, n in sorted(recording.frames_by_version.items())
    )
    top = ", ".join(f"{a} {n:,}" for a, n in recording.actions.most_common(6))
    flaws = ", ".join(f"{k} {n:,}" for k, n in sorted(recording.flaws.items()))
    return (
        f"{recording.frames:,} frames ({versions}); CALLs by action: {top}, ...; "
        f"{flawed:,} flawed CALLs ({flawed / recording.frames:.1%} of frames: {flaws})"
    )


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        "fastjsonschema": metadata.version("fastjsonschema"),
        "ocpp": metadata.version("ocpp"),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# -- command line ---------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Frames/s the audit validates (in process and offline), and its cost "
        "in the proxy.",
        epilog=f"{TARGET_RATE_TEXT}; {TARGET_RATIO_TEXT}",
    )
    p.add_argument(
        "--frames",
        type=positive_int,
        default=200_000,
        help="frames in the generated recording (default 200000)",
    )
    p.add_argument(
        "--duration",
        type=positive,
        default=5.0,
        help="measured seconds per proxy_bench.py case (default 5)",
    )
    p.add_argument("--skip-proxy", action="store_true", help="do not run proxy_bench.py")
    p.add_argument("--markdown", action="store_true", help="also print Markdown tables")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    console = Console()
    meta = environment()
    console.print(f"{TARGET_RATE_TEXT}; {TARGET_RATIO_TEXT}", highlight=False)
    console.print(f"building a recording of at least {args.frames:,} frames ...")
    started = time.perf_counter()
    recording = build_recording(args.frames)
    console.print(
        f"  {time.perf_counter() - started:.1f} s: {describe(recording)}", highlight=False
    )

    measures, live_rules = measure_in_process(recording, console)
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ocproxy-audit-bench-") as tmp:
        offline, offline_rules, problem = measure_offline(recording, Path(tmp), console)
    measures.extend(offline)
    if problem:
        problems.append(problem)
    if offline_rules != live_rules:
        problems.append(f"offline findings {dict(offline_rules)} differ from {dict(live_rules)}")

    runs: list[ProxyRun] = []
    if not args.skip_proxy:
        runs = [
            run_proxy_bench("audit off", "--no-audit", args.duration, console),
            run_proxy_bench("audit on", "--audit", args.duration, console),
        ]
        problems += [f"{r.label}: {r.error}" for r in runs if r.error]
    meta["load_average_at_end"] = os.getloadavg()

    pipeline_s = measures[0].seconds
    columns = validation_columns(pipeline_s)
    findings_text = ", ".join(f"{rule} {n:,}" for rule, n in live_rules.most_common())
    title = (
        f"Audit: frames/s over {recording.frames:,} frames, best of {RUNS} "
        f"({meta['cpus']} CPUs)\n{TARGET_RATE_TEXT}"
    )
    console.print(rich_table(title, columns, measures, SHARE_NOTE))
    for m in measures:
        console.print(f"  {m.name}: {m.note}", highlight=False)
    console.print(f"findings: {findings_text}", highlight=False)
    prows = proxy_rows(*runs) if runs else []
    if prows:
        title = f"Proxy with live audit, {args.duration:g} s per case\n{TARGET_RATIO_TEXT}"
        console.print(rich_table(title, PROXY_COLUMNS, prows))
        console.print(PROXY_NOTE, highlight=False)
        recorded = ", ".join(f"{r['chargers']}: {fmt(r['recorded'])}" for r in prows)
        console.print(f"every frame recorded (both runs), by chargers: {recorded}")
    for problem in problems:
        console.print(f"[bold red]problem:[/] {problem}", highlight=False)

    if args.markdown:
        print("\n" + markdown_table(columns, measures) + "\n")
        print(f"{SHARE_NOTE}; Frames/CPU-s: the same over this process's CPU time.  ")
        print(f"Recording: {describe(recording)}.  ")
        print(f"Findings: {findings_text}.\n")
        if prows:
            print(markdown_table(PROXY_COLUMNS, prows) + "\n")
            print(f"{PROXY_NOTE}.\n")
    if args.json:
        document = {
            "environment": meta,
            "targets": {"frames_per_s": TARGET_FRAMES_PER_S, "proxy_ratio": TARGET_RATIO},
            "recording": {
                "frames": recording.frames,
                "connections": recording.connections,
                "frames_by_version": dict(recording.frames_by_version),
                "calls_by_action": dict(recording.actions),
                "flaws": dict(recording.flaws),
            },
            "validation": [
                {
                    "key": m.key,
                    "name": m.name,
                    "frames": m.frames,
                    "seconds": m.seconds,
                    "cpu_seconds": m.cpu_seconds,
                    "frames_per_cpu_s": m.cpu_frames_per_s,
                    "frames_per_s": m.frames_per_s,
                    "us_per_frame": m.us_per_frame,
                    "target_met": m.met(),
                    "note": m.note,
                }
                for m in measures
            ],
            "findings": dict(live_rules),
            "proxy": prows,
            "proxy_runs": [
                {"label": r.label, "args": r.bench_args, "exit": r.exit_code, "error": r.error}
                | {"document": r.document}
                for r in runs
            ],
            "problems": problems,
        }
        Path(args.json).write_text(json.dumps(document, indent=2, default=str) + "\n")
        console.print(f"results written to {args.json}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
