"""Write a realistic ocproxy recording of N frames (default 10 million), fast.

A fleet of chargers (default 300: about 60 % OCPP 1.6, 40 % 2.0.1) behind one proxy for
about three weeks, restarted once a week (one ``runs`` row per start). Each charger:

- connects (a few handshakes are refused first: HTTP 502), boots (on its first
  connection and on some reconnects), reports the status of its connectors, and sends a
  Heartbeat every 300 s (the interval its BootNotification answer gives);
- charges: 1.6 Preparing, Authorize, StartTransaction (the CSMS answers the
  transactionId), Charging, MeterValues every 60 s (energy register and power),
  Finishing, StopTransaction, Available; 2.0.1 Occupied, TransactionEvent Started,
  Authorize, Updated (Authorized, then every 60 s with meter values), Ended, Available;
- is asked by the CSMS about once a day (1.6 GetConfiguration, 2.0.1 GetVariables);
- drops its connection now and then (1006, 1000) and reconnects a little later; every
  connection open at a proxy restart is closed by the proxy (1001).

Some CALLs get a CALLERROR (about 0.3 %: InternalError, NotImplemented for
DataTransfer), about 1 in 10,000 frames is malformed (truncated JSON, a CALL with three
elements, a payload that is not an object; the CSMS answers the readable ones with a
FormatViolation CALLERROR that pairs with nothing), and about 1 in 5,000 Heartbeats
is never answered.

Speed: the rows are built as Python tuples, one day of the whole fleet at a time,
sorted by time (a real recording is in arrival order), turned into Arrow tables in the
recording's schema and appended with DuckDB (the schema comes from
``ocproxy.recorder.migrations.migrate``). The derived columns are filled exactly as
the recorder fills them (``message_type``, ``action`` of a response = its CALL's,
``request_seq``, ``latency_ms``, ``pairing``, ``parse_status`` / ``parse_detail``);
the malformed frames and their answers go through the recorder's own ``observe()``.
``findings`` holds what the audit says about the malformed frames (the well-formed
traffic is schema-valid and is not audited here).

    .venv/bin/python bench/make_recording.py OUT.duckdb [--frames 10000000]
        [--chargers 300] [--days 21] [--seed 1] [--force]

The frame count is exact: each charger gets a share of ``--frames`` in proportion to
how busy it is, and its timeline stops when the share is used up (the proxy then
closes its connection, as a proxy stopping would), so the fleet ends after about
``--days`` days.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any
from urllib.parse import quote

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from ocproxy import __version__
from ocproxy.core.correlation import Correlator
from ocproxy.core.events import FrameReceived
from ocproxy.core.frames import Direction, Opcode
from ocproxy.core.observe import observe
from ocproxy.recorder.migrations import migrate

US = 1_000_000
DAY_US = 86_400 * US
HEARTBEAT_S = 300
METER_S = 60
WEEK_US = 7 * DAY_US
START = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday
TO_CSMS, TO_CHARGER = "to_csms", "to_charger"
# Expected frames of one charger, used to size each charger's share of --frames:
# heartbeats (2 frames per 300 s), the daily CSMS request, status and boot traffic.
_BASE_FRAMES_PER_DAY = 2 * 86_400 / HEARTBEAT_S + 2 + 6
_MEDIAN_SESSION_S = 45 * 60

_TS = pa.timestamp("us", tz="UTC")
# The columns a generated frame row carries, in this order (see Charger._row).
_ROW = (
    "connection_id",
    "seq",
    "ts",
    "direction",
    "raw",
    "message_type",
    "message_id",
    "action",
    "parse_status",
    "parse_detail",
    "payload",
    "error_code",
    "error_description",
    "request_seq",
    "latency_ms",
    "pairing",
)
_ROW_TYPES = {
    "connection_id": pa.string(),
    "seq": pa.int64(),
    "direction": pa.string(),
    "message_type": pa.int16(),
    "message_id": pa.string(),
    "action": pa.string(),
    "parse_status": pa.string(),
    "parse_detail": pa.string(),
    "payload": pa.string(),
    "error_code": pa.string(),
    "error_description": pa.string(),
    "request_seq": pa.int64(),
    "latency_ms": pa.float64(),
    "pairing": pa.string(),
}
Row = tuple[Any, ...]

# Identities: mostly CP-0001 ..., plus a few that exercise escaping in paths and
# types (a space and a slash, '=' and '#', digits only, non-ASCII).
_ODD_IDENTITIES = ("Depot A/CP 7", "lot=3#1", "0042", "Zürich-Süd-1")
_VENDORS_16 = (("Alfa", "AC22-T2", "4.1.7"), ("Kilo", "K-Wall 11", "2.3.0"))
_VENDORS_201 = (("Bravo", "B-DC50", "2.0.7"), ("Delta", "D-AC22", "1.9.12"))


def _iso(us: int) -> str:
    """RFC 3339 in UTC with milliseconds, as chargers write it (cached per second)."""
    second = us // US
    text = _SECONDS.get(second)
    if text is None:
        text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        if len(_SECONDS) > 100_000:
            _SECONDS.clear()
        _SECONDS[second] = text
    return f"{text}.{us % US // 1000:03d}Z"


_SECONDS: dict[int, str] = {}


@dataclass
class Output:
    """Rows produced so far (the driver takes them a day at a time)."""

    opens: list[Row] = field(default_factory=list)
    closes: list[Row] = field(default_factory=list)
    findings: list[Row] = field(default_factory=list)
    frames: int = 0


@dataclass
class Fleet:
    start_us: int
    restarts: list[int]  # proxy restarts (the end of each run but the last)
    run_ids: list[str]

    def run_at(self, us: int) -> str:
        index = sum(1 for r in self.restarts if r <= us)
        return self.run_ids[min(index, len(self.run_ids) - 1)]

    def next_restart(self, us: int) -> int:
        return next((r for r in self.restarts if r > us), 1 << 62)


@dataclass
class Plan:
    """The exchanges of one charging session, at the times the charger means them."""

    steps: list[tuple[int, str, str, str]]  # (us, action, payload, answer)
    index: int = 0

    @property
    def next_us(self) -> int:
        return self.steps[self.index][0] if self.index < len(self.steps) else 1 << 62

    @property
    def done(self) -> bool:
        return self.index >= len(self.steps)


class Charger:
    """One charger's frames, in time order, until its share of frames is used up."""

    def __init__(self, index: int, identity: str, v16: bool, busy: float, seed: int) -> None:
        self.index = index
        self.identity = identity
        self.v16 = v16
        self.busy = busy  # sessions per day
        self.rng = random.Random(seed * 1_000_003 + index)
        self.left = 0
        vendors = _VENDORS_16 if v16 else _VENDORS_201
        self.vendor, self.model, self.firmware = vendors[index % len(vendors)]
        self.serial = f"SN{index:06d}"
        self.connectors = 2 if index % 3 else 1
        self.power_w = self.rng.choice((7_400, 11_000, 22_000))
        self.energy_wh = self.rng.randrange(100_000, 5_000_000)
        self.tags = [f"TAG{index:04d}{n:02d}" for n in range(6)]
        self.next_mid = 1
        self.next_tx = index * 100_000
        self.conn_id = ""
        self.seq = 0
        self.busy_until = 0
        self.plan_connector = 1
        self.out = Output()

    # -- identifiers ------------------------------------------------------------------

    def _uuid(self) -> str:
        h = f"{self.rng.getrandbits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"

    def _charger_mid(self) -> str:
        if self.v16:  # many 1.6 chargers count
            self.next_mid += 1
            return str(self.next_mid)
        return self._uuid()

    def expected_frames_per_day(self) -> float:
        per_session = _session_frames(_MEDIAN_SESSION_S, self.v16)
        return _BASE_FRAMES_PER_DAY + self.busy * per_session

    # -- rows --------------------------------------------------------------------------

    def _row(
        self,
        us: int,
        direction: str,
        raw: str,
        message_type: int,
        message_id: str,
        action: str,
        payload: str,
        *,
        error: tuple[str, str] | None = None,
        request_seq: int | None = None,
        latency_ms: float | None = None,
    ) -> Row:
        seq = self.seq
        self.seq += 1
        self.left -= 1
        return (
            self.conn_id,
            seq,
            us,
            direction,
            raw,
            message_type,
            message_id,
            action,
            "ok",
            None,
            payload,
            None if error is None else error[0],
            None if error is None else error[1],
            request_seq,
            latency_ms,
            None if request_seq is None else "matched",
        )

    def _exchange(
        self,
        us: int,
        direction: str,
        action: str,
        payload: str,
        answer: str | None,
        latency_ms: float,
        *,
        error: tuple[str, str] | None = None,
    ) -> Iterator[Row]:
        """A CALL at ``us`` and its CALLRESULT (or CALLERROR, or nothing) ``latency_ms`` later.

        When the charger's share of frames ends after the CALL, the CALL stays
        unanswered, as it would in a recording stopped at that moment.
        """
        if self.left <= 0:
            return
        us = max(us, self.busy_until + 1000)
        self.busy_until = us
        mid = self._charger_mid() if direction == TO_CSMS else self._uuid()
        call_seq = self.seq
        yield self._row(us, direction, f'[2,"{mid}","{action}",{payload}]', 2, mid, action, payload)
        if self.left <= 0 or (answer is None and error is None):
            return
        back = TO_CHARGER if direction == TO_CSMS else TO_CSMS
        latency_us = max(1000, int(latency_ms * 1000))
        answered = us + latency_us
        self.busy_until = answered
        # As the correlator computes it, from the times in seconds.
        lat = round((answered / US - us / US) * 1000.0, 3)
        if error is not None:
            code, text = error
            raw = f'[4,"{mid}","{code}","{text}",{{}}]'
            yield self._row(
                answered,
                back,
                raw,
                4,
                mid,
                action,
                "{}",
                error=error,
                request_seq=call_seq,
                latency_ms=lat,
            )
        else:
            assert answer is not None
            raw = f'[3,"{mid}",{answer}]'
            yield self._row(
                answered, back, raw, 3, mid, action, answer, request_seq=call_seq, latency_ms=lat
            )

    def _csms_latency(self) -> float:
        return self.rng.lognormvariate(math.log(35), 0.6)

    def _charger_latency(self) -> float:
        return self.rng.lognormvariate(math.log(250), 0.5)

    def _call(self, us: int, action: str, payload: str, answer: str) -> Iterator[Row]:
        """A charger's CALL; now and then the CSMS answers with a CALLERROR."""
        if self.rng.random() < 0.003:
            error = ("InternalError", "Internal error while processing the request")
            return self._exchange(us, TO_CSMS, action, payload, None, 80.0, error=error)
        return self._exchange(us, TO_CSMS, action, payload, answer, self._csms_latency())

    # -- the timeline -------------------------------------------------------------------

    def frames(self, fleet: Fleet, out: Output, start_us: int) -> Iterator[Row]:
        """Every frame of this charger in time order; opens and closes go to ``out``."""
        rng = self.rng
        self.out = out
        t = start_us + rng.randrange(0, 600 * US)
        first = True
        plan: Plan | None = None
        session_at = t + self._session_gap()
        while self.left > 0:
            refused = not first and rng.random() < 0.03
            self._open(fleet, out, t, refused)
            if refused:  # the CSMS was unreachable: 502, the charger retries
                t += rng.randrange(30, 120) * US
                continue
            self.busy_until = t
            if first or rng.random() < 0.4:
                yield from self._boot(t + 200_000)
            for connector in range(0 if self.v16 else 1, self.connectors + 1):
                status = "Available"
                if plan is not None and connector == self.plan_connector:
                    status = "Charging" if self.v16 else "Occupied"
                yield from self._status(self.busy_until + 300_000, connector, status)
            first = False
            restart = fleet.next_restart(t)
            drop = t + int(rng.expovariate(1 / (3.5 * DAY_US)))
            hb = self.busy_until + HEARTBEAT_S * US
            csms = t + rng.randrange(3600, 86_400) * US
            while self.left > 0:
                plan_next = plan.next_us if plan is not None else session_at
                now = min(hb, csms, plan_next, drop, restart)
                if now == restart or (now == drop and plan is None):
                    break
                if now == drop:  # not while charging: after this session
                    assert plan is not None
                    drop = plan.steps[-1][0] + 60 * US
                    continue
                if now == hb:
                    yield from self._heartbeat(hb)
                    hb = self.busy_until + HEARTBEAT_S * US
                elif now == csms:
                    yield from self._csms_request(csms)
                    csms += rng.randrange(20 * 3600, 28 * 3600) * US
                elif plan is None:
                    plan = self._session(session_at)
                else:
                    at, action, payload, answer = plan.steps[plan.index]
                    plan.index += 1
                    yield from self._call(at, action, payload, answer)
                    if plan.done:
                        plan = None
                        session_at = self.busy_until + self._session_gap()
            if self.left <= 0:  # the share is used up: the proxy stops
                self._close(out, self.busy_until + US, 1001, "proxy shutting down", "proxy")
                return
            end = max(self.busy_until + 1000, min(restart, drop))
            if restart <= drop:
                self._close(out, end, 1001, "proxy shutting down", "proxy")
                t = end + rng.randrange(20, 90) * US
            else:
                code, by = (1006, "charger") if rng.random() < 0.7 else (1000, "csms")
                self._close(out, end, code, "", by)
                t = end + rng.randrange(10, 600) * US
            if plan is not None:  # a session going on: its next messages wait for us
                plan.steps[plan.index :] = [
                    (max(s[0], t + US), *s[1:]) for s in plan.steps[plan.index :]
                ]
            if session_at < t:
                session_at = t + self._session_gap()

    def _session_gap(self) -> int:
        """Idle time before the next session: ``busy`` sessions a day on average."""
        mean_session_us = _MEDIAN_SESSION_S * math.exp(0.125) * US
        mean_gap_us = max(60 * US, DAY_US / self.busy - mean_session_us)
        return int(self.rng.expovariate(1 / mean_gap_us)) + 60 * US

    def _open(self, fleet: Fleet, out: Output, us: int, refused: bool) -> None:
        self.conn_id = str(uuid.uuid4())
        self.seq = 0
        quoted = quote(self.identity, safe="")
        offered = ["ocpp1.6"] if self.v16 else ["ocpp2.0.1", "ocpp1.6"]
        chosen = None if refused else offered[0]
        headers = [
            ["Host", "proxy.example.net:9000"],
            ["Upgrade", "websocket"],
            ["Connection", "Upgrade"],
            ["Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="],
            ["Sec-WebSocket-Version", "13"],
            ["Sec-WebSocket-Protocol", ", ".join(offered)],
            ["Authorization", f"Basic {self.identity}"],
        ]
        response = [] if refused else [["Sec-WebSocket-Protocol", chosen]]
        out.opens.append(
            (
                self.conn_id,
                fleet.run_at(us),
                "proxy",
                self.identity,
                f"/ocpp/{quoted}",
                f"10.{self.index // 250}.{self.index % 250}.{self.rng.randrange(2, 250)}:"
                f"{self.rng.randrange(30000, 60000)}",
                offered,
                chosen,
                None if chosen is None else chosen.removeprefix("ocpp"),
                f"wss://csms.example.net/ocpp/{quoted}",
                us,
                502 if refused else 101,
                json.dumps(headers),
                json.dumps(response),
            )
        )
        if refused:
            out.closes.append((self.conn_id, us + 10 * US, None, "upstream refused", "proxy"))

    def _close(self, out: Output, us: int, code: int, reason: str, by: str) -> None:
        out.closes.append((self.conn_id, us, code, reason, by))

    # -- messages ------------------------------------------------------------------------

    def _boot(self, us: int) -> Iterator[Row]:
        if self.v16:
            payload = (
                f'{{"chargePointVendor":"{self.vendor}","chargePointModel":"{self.model}",'
                f'"chargePointSerialNumber":"{self.serial}","firmwareVersion":"{self.firmware}"}}'
            )
        else:
            payload = (
                f'{{"chargingStation":{{"model":"{self.model}","vendorName":"{self.vendor}",'
                f'"serialNumber":"{self.serial}","firmwareVersion":"{self.firmware}"}},'
                '"reason":"PowerUp"}'
            )
        answer = f'{{"currentTime":"{_iso(us)}","interval":{HEARTBEAT_S},"status":"Accepted"}}'
        return self._exchange(us, TO_CSMS, "BootNotification", payload, answer, 60.0)

    def _status(self, us: int, connector: int, status: str) -> Iterator[Row]:
        if self.v16:
            payload = (
                f'{{"connectorId":{connector},"errorCode":"NoError","status":"{status}",'
                f'"timestamp":"{_iso(us)}"}}'
            )
        else:
            payload = (
                f'{{"timestamp":"{_iso(us)}","connectorStatus":"{status}",'
                f'"evseId":{connector},"connectorId":1}}'
            )
        return self._call(us, "StatusNotification", payload, "{}")

    def _heartbeat(self, us: int) -> Iterator[Row]:
        rng = self.rng
        roll = rng.random()
        if roll < 0.0002:  # never answered
            us = max(us, self.busy_until + 1000)
            mid = self._charger_mid()
            yield self._row(us, TO_CSMS, f'[2,"{mid}","Heartbeat",{{}}]', 2, mid, "Heartbeat", "{}")
            self.busy_until = us + 30 * US  # the charger waits for its timeout
            return
        if roll < 0.0005:
            yield from self._malformed(us)
            return
        answer = f'{{"currentTime":"{_iso(us)}"}}'
        yield from self._call(us, "Heartbeat", "{}", answer)

    def _malformed(self, us: int) -> Iterator[Row]:
        """A broken CALL (and the CSMS's FormatViolation when it can read the id), as the
        recorder's own observe() records them."""
        us = max(us, self.busy_until + 1000)
        mid = self._charger_mid()
        kind = self.rng.randrange(3)
        if kind == 0:
            text = f'[2,"{mid}","MeterValues",{{"connectorId":1,"meterValue":[{{"timestamp":'
        elif kind == 1:
            text = f'[2,"{mid}","Heartbeat"]'
        else:
            text = f'[2,"{mid}","DataTransfer","vendor-blob"]'
        correlator = Correlator()
        frames = [(us, Direction.TO_CSMS, text)]
        if kind:
            answer = f'[4,"{mid}","FormatViolation","Malformed CALL",{{}}]'
            frames.append((us + 20_000, Direction.TO_CHARGER, answer))
        for when, direction, data in frames:
            event = FrameReceived(
                self.conn_id, self.seq, when / US, direction, Opcode.TEXT, data, len(data)
            )
            seen = observe(event, correlator)
            if seen.parse_status != "ok":
                self._finding(seen.seq, when, f"{seen.parse_status}: {seen.parse_detail}")
            self.busy_until = when
            yield self._observed_row(when, seen)

    def _observed_row(self, us: int, seen: Any) -> Row:
        self.seq += 1
        self.left -= 1
        return (
            seen.connection_id,
            seen.seq,
            us,
            seen.direction,
            seen.raw.decode(),
            None if seen.message_type is None else int(seen.message_type),
            seen.message_id,
            seen.action,
            seen.parse_status,
            seen.parse_detail,
            seen.payload,
            seen.error_code,
            seen.error_description,
            seen.request_seq,
            seen.latency_ms,
            seen.pairing,
        )

    def _finding(self, seq: int, us: int, message: str) -> None:
        self.out.findings.append((self.conn_id, seq, us, "malformed-frame", "error", message, None))

    def _csms_request(self, us: int) -> Iterator[Row]:
        if self.v16:
            action = "GetConfiguration"
            payload = '{"key":["HeartbeatInterval","MeterValueSampleInterval"]}'
            answer = (
                '{"configurationKey":[{"key":"HeartbeatInterval","readonly":false,'
                f'"value":"{HEARTBEAT_S}"}},{{"key":"MeterValueSampleInterval",'
                f'"readonly":false,"value":"{METER_S}"}}]}}'
            )
        else:
            action = "GetVariables"
            payload = (
                '{"getVariableData":[{"component":{"name":"OCPPCommCtrlr"},'
                '"variable":{"name":"HeartbeatInterval"}}]}'
            )
            answer = (
                '{"getVariableResult":[{"attributeStatus":"Accepted",'
                '"component":{"name":"OCPPCommCtrlr"},"variable":{"name":"HeartbeatInterval"},'
                f'"attributeValue":"{HEARTBEAT_S}"}}]}}'
            )
        yield from self._exchange(us, TO_CHARGER, action, payload, answer, self._charger_latency())
        if self.v16 and self.rng.random() < 0.1:  # a vendor extension the CSMS lacks
            yield from self._exchange(
                self.busy_until + 5 * US,
                TO_CSMS,
                "DataTransfer",
                f'{{"vendorId":"{self.vendor}","messageId":"Diagnostics","data":"ok"}}',
                None,
                40.0,
                error=("NotImplemented", "DataTransfer is not supported"),
            )

    def _session(self, us: int) -> Plan:
        """Every exchange of a charging session, planned at the charger's own times."""
        rng = self.rng
        connector = rng.randrange(1, self.connectors + 1)
        self.plan_connector = connector
        length = max(
            5 * 60, min(6 * 3600, int(rng.lognormvariate(math.log(_MEDIAN_SESSION_S), 0.5)))
        )
        tag = rng.choice(self.tags)
        steps: list[tuple[int, str, str, str]] = []

        def add(at: int, action: str, payload: str, answer: str = "{}") -> None:
            steps.append((at, action, payload, answer))

        def status(at: int, state: str) -> None:
            if self.v16:
                add(
                    at,
                    "StatusNotification",
                    f'{{"connectorId":{connector},"errorCode":"NoError","status":"{state}",'
                    f'"timestamp":"{_iso(at)}"}}',
                )
            else:
                add(
                    at,
                    "StatusNotification",
                    f'{{"timestamp":"{_iso(at)}","connectorStatus":"{state}",'
                    f'"evseId":{connector},"connectorId":1}}',
                )

        start = us
        meter = self.energy_wh
        power = self.power_w * rng.uniform(0.6, 1.0)
        end = start + length * US
        if self.v16:
            status(start, "Preparing")
            at = start + rng.randrange(5, 30) * US
            accepted = rng.random() > 0.03
            state = "Accepted" if accepted else "Invalid"
            add(at, "Authorize", f'{{"idTag":"{tag}"}}', f'{{"idTagInfo":{{"status":"{state}"}}}}')
            if not accepted:
                status(at + 20 * US, "Available")
                return Plan(steps)
            self.next_tx += 1
            tx = self.next_tx
            at += 2 * US
            add(
                at,
                "StartTransaction",
                f'{{"connectorId":{connector},"idTag":"{tag}","meterStart":{meter},'
                f'"timestamp":"{_iso(at)}"}}',
                f'{{"idTagInfo":{{"status":"Accepted"}},"transactionId":{tx}}}',
            )
            status(at + US, "Charging")
            sample = at + METER_S * US
            while sample < end:
                meter += int(power * METER_S / 3600)
                add(
                    sample,
                    "MeterValues",
                    f'{{"connectorId":{connector},"transactionId":{tx},"meterValue":[{{'
                    f'"timestamp":"{_iso(sample)}","sampledValue":[{{"value":"{meter}",'
                    '"context":"Sample.Periodic","measurand":"Energy.Active.Import.Register",'
                    '"location":"Outlet","unit":"Wh"},{"value":"'
                    f'{power:.1f}","context":"Sample.Periodic","measurand":"Power.Active.Import",'
                    '"location":"Outlet","unit":"W"}]}]}',
                )
                sample += METER_S * US
            status(end, "Finishing")
            reason = rng.choice(('"reason":"EVDisconnected",', '"reason":"Local",', ""))
            add(
                end + 3 * US,
                "StopTransaction",
                f'{{"transactionId":{tx},"idTag":"{tag}","meterStop":{meter},'
                f'"timestamp":"{_iso(end + 3 * US)}",{reason}"transactionData":[{{'
                f'"timestamp":"{_iso(end)}","sampledValue":[{{"value":"{meter}",'
                '"context":"Transaction.End","measurand":"Energy.Active.Import.Register",'
                '"unit":"Wh"}]}]}',
                '{"idTagInfo":{"status":"Accepted"}}',
            )
            status(end + rng.randrange(10, 120) * US, "Available")
        else:
            tx_id = self._uuid()
            seq_no = 0

            def event(at: int, kind: str, trigger: str, state: str, extra: str = "") -> None:
                nonlocal seq_no
                context = {"Started": "Transaction.Begin", "Ended": "Transaction.End"}.get(
                    kind, "Sample.Periodic"
                )
                values = (
                    f'{{"value":{meter},"context":"{context}",'
                    '"measurand":"Energy.Active.Import.Register","unitOfMeasure":{"unit":"Wh"}}'
                )
                if kind == "Updated":
                    values += (
                        f',{{"value":{power:.1f},"context":"{context}",'
                        '"measurand":"Power.Active.Import","unitOfMeasure":{"unit":"W"}}'
                    )
                info = f'"transactionId":"{tx_id}","chargingState":"{state}"{extra}'
                payload = (
                    f'{{"eventType":"{kind}","timestamp":"{_iso(at)}","triggerReason":"{trigger}",'
                    f'"seqNo":{seq_no},"transactionInfo":{{{info}}},'
                    f'"evse":{{"id":{connector},"connectorId":1}},'
                    f'"meterValue":[{{"timestamp":"{_iso(at)}","sampledValue":[{values}]}}]'
                )
                if trigger == "Authorized":
                    payload += f',"idToken":{{"idToken":"{tag}","type":"ISO14443"}}'
                    answer = '{"idTokenInfo":{"status":"Accepted"}}'
                else:
                    answer = "{}"
                add(at, "TransactionEvent", payload + "}", answer)
                seq_no += 1

            status(start, "Occupied")
            event(start + US, "Started", "CablePluggedIn", "EVConnected")
            at = start + rng.randrange(5, 30) * US
            add(
                at,
                "Authorize",
                f'{{"idToken":{{"idToken":"{tag}","type":"ISO14443"}}}}',
                '{"idTokenInfo":{"status":"Accepted"}}',
            )
            event(at + US, "Updated", "Authorized", "Charging")
            sample = at + METER_S * US
            while sample < end:
                meter += int(power * METER_S / 3600)
                event(sample, "Updated", "MeterValuePeriodic", "Charging")
                sample += METER_S * US
            reason = rng.choice(("EVDisconnected", "Local", "StoppedByEV"))
            event(end, "Ended", "EVCommunicationLost", "Idle", f',"stoppedReason":"{reason}"')
            status(end + rng.randrange(10, 120) * US, "Available")
        self.energy_wh = meter
        return Plan(steps)


def _session_frames(median_s: float, v16: bool) -> float:
    """Frames one session takes on average (both directions); lengths are lognormal
    around ``median_s`` (sigma 0.5), so their mean is ``median_s * e**(0.5**2 / 2)``."""
    samples = median_s * math.exp(0.125) / METER_S
    return 2 * (samples + (7 if v16 else 6))


# -- the driver ---------------------------------------------------------------------------


def make_recording(
    path: Path,
    frames: int,
    *,
    chargers: int = 300,
    days: float = 21.0,
    seed: int = 1,
    log: Any = None,
) -> dict[str, Any]:
    """Write the recording; return what it holds (frames, connections, ...)."""
    started = time.perf_counter()
    rng = random.Random(seed)
    start_us = int(START.timestamp()) * US
    weeks = max(1, math.ceil(days / 7))
    fleet = Fleet(
        start_us,
        restarts=[start_us + w * WEEK_US for w in range(1, weeks)],
        # Random, not from the seed: two recordings never share a run or a connection.
        run_ids=[str(uuid.uuid4()) for _ in range(weeks)],
    )
    fleet_chargers = _fleet(chargers, seed, rng)
    _share(fleet_chargers, frames, days)
    out = Output()
    streams = [_Stream(charger.frames(fleet, out, start_us)) for charger in fleet_chargers]
    db = duckdb.connect(str(path))
    try:
        db.execute("SET TimeZone = 'UTC'")
        migrate(db)
        _write_runs(db, fleet, frames, seed, chargers)
        window = start_us + DAY_US
        written = 0
        while any(s.head is not None for s in streams):
            rows: list[Row] = []
            for stream in streams:
                stream.take_until(window, rows)
            rows.sort(key=itemgetter(2))
            _append(db, rows, out)
            written += len(rows)
            if log is not None:
                day = (window - start_us) // DAY_US
                log(
                    f"day {day:3d}: {written:,} frames written "
                    f"({time.perf_counter() - started:.0f} s)"
                )
            window += DAY_US
        _append(db, [], out)
        _write_run_stats(db, fleet, out)
        db.execute("CHECKPOINT")
        ((count,),) = db.execute("SELECT count(*) FROM frames").fetchall()
        ((connections,),) = db.execute("SELECT count(*) FROM connection_opens").fetchall()
        ((first, last),) = db.execute("SELECT min(ts), max(ts) FROM frames").fetchall()
    finally:
        db.close()
    return {
        "path": str(path),
        "frames": count,
        "connections": connections,
        "chargers": chargers,
        "first": first,
        "last": last,
        "seconds": round(time.perf_counter() - started, 1),
        "bytes": path.stat().st_size,
    }


class _Stream:
    """A charger's frames, with the next one looked at."""

    def __init__(self, frames: Iterator[Row]) -> None:
        self.frames = frames
        self.head: Row | None = next(frames, None)

    def take_until(self, window_us: int, rows: list[Row]) -> None:
        """Move the frames before ``window_us`` to ``rows``."""
        head, frames, append = self.head, self.frames, rows.append
        while head is not None and head[2] < window_us:
            append(head)
            head = next(frames, None)
        self.head = head


def _fleet(count: int, seed: int, rng: random.Random) -> list[Charger]:
    chargers = []
    for index in range(count):
        if index < len(_ODD_IDENTITIES) and count > 20:
            identity = _ODD_IDENTITIES[index]
        else:
            identity = f"CP-{index + 1:04d}"
        v16 = rng.random() < 0.6
        busy = rng.uniform(3.0, 14.0)  # sessions per day
        chargers.append(Charger(index, identity, v16, busy, seed))
    return chargers


def _share(chargers: list[Charger], frames: int, days: float) -> None:
    """Each charger's frames, in proportion to how busy it is; they sum to ``frames``."""
    weights = [c.expected_frames_per_day() for c in chargers]
    total = sum(weights)
    # Spread over the days asked for: scale the session rate so the fleet's expected
    # frames over ``days`` match ``frames``.
    scale = (frames / days - len(chargers) * _BASE_FRAMES_PER_DAY) / (
        total - len(chargers) * _BASE_FRAMES_PER_DAY
    )
    for charger in chargers:
        charger.busy = max(0.2, charger.busy * scale)
    weights = [c.expected_frames_per_day() for c in chargers]
    total = sum(weights)
    shares = [int(frames * w / total) for w in weights]
    for i in range(frames - sum(shares)):
        shares[i % len(shares)] += 1
    for charger, share in zip(chargers, shares, strict=True):
        charger.left = share


def _append(db: duckdb.DuckDBPyConnection, rows: list[Row], out: Output) -> None:
    db.execute("BEGIN TRANSACTION")
    if out.opens:
        db.register("_opens", _opens_table(out.opens))
        db.execute("INSERT INTO connection_opens BY NAME SELECT * FROM _opens")
        db.unregister("_opens")
        out.opens.clear()
    if rows:
        db.register("_frames", _frames_table(rows))
        db.execute("INSERT INTO frames BY NAME SELECT * FROM _frames")
        db.unregister("_frames")
    if out.closes:
        db.register("_closes", _closes_table(out.closes))
        db.execute("INSERT INTO connection_closes BY NAME SELECT * FROM _closes")
        db.unregister("_closes")
        out.closes.clear()
    if out.findings:
        db.register("_findings", _findings_table(out.findings))
        db.execute("INSERT INTO findings BY NAME SELECT * FROM _findings")
        db.unregister("_findings")
        out.findings.clear()
    db.execute("COMMIT")
    out.frames += len(rows)


def _frames_table(rows: list[Row]) -> pa.Table:
    columns = dict(zip(_ROW, zip(*rows, strict=True), strict=True))
    arrays: dict[str, pa.Array] = {}
    for name in _ROW:
        values = columns[name]
        if name == "ts":
            arrays[name] = pa.array(values, pa.int64()).cast(_TS)
        elif name == "raw":
            arrays[name] = pa.array(values, pa.string()).cast(pa.binary())
        else:
            arrays[name] = pa.array(values, _ROW_TYPES[name])
    arrays["opcode"] = pa.array(["text"] * len(rows), pa.string())
    arrays["size"] = pc.binary_length(arrays["raw"]).cast(pa.int64())
    arrays["injected"] = pa.array([False] * len(rows), pa.bool_())
    arrays["redacted"] = pa.nulls(len(rows), pa.list_(pa.string()))
    return pa.table(arrays)


def _opens_table(rows: list[Row]) -> pa.Table:
    names = (
        "connection_id",
        "run_id",
        "source",
        "identity",
        "path",
        "remote_addr",
        "offered_subprotocols",
        "subprotocol",
        "ocpp_version",
        "upstream_url",
        "opened_at",
        "handshake_status",
        "request_headers",
        "response_headers",
    )
    columns = dict(zip(names, zip(*rows, strict=True), strict=True))
    arrays = {name: pa.array(columns[name]) for name in names}
    arrays["opened_at"] = pa.array(columns["opened_at"], pa.int64()).cast(_TS)
    arrays["offered_subprotocols"] = pa.array(
        columns["offered_subprotocols"], pa.list_(pa.string())
    )
    arrays["subprotocol"] = pa.array(columns["subprotocol"], pa.string())
    arrays["ocpp_version"] = pa.array(columns["ocpp_version"], pa.string())
    arrays["handshake_status"] = pa.array(columns["handshake_status"], pa.int32())
    return pa.table(arrays)


def _closes_table(rows: list[Row]) -> pa.Table:
    ids, ts, codes, reasons, by = zip(*rows, strict=True)
    return pa.table(
        {
            "connection_id": pa.array(ids, pa.string()),
            "closed_at": pa.array(ts, pa.int64()).cast(_TS),
            "close_code": pa.array(codes, pa.int32()),
            "close_reason": pa.array(reasons, pa.string()),
            "closed_by": pa.array(by, pa.string()),
        }
    )


def _findings_table(rows: list[Row]) -> pa.Table:
    ids, seqs, ts, rules, severities, messages, paths = zip(*rows, strict=True)
    return pa.table(
        {
            "connection_id": pa.array(ids, pa.string()),
            "seq": pa.array(seqs, pa.int64()),
            "ts": pa.array(ts, pa.int64()).cast(_TS),
            "rule": pa.array(rules, pa.string()),
            "severity": pa.array(severities, pa.string()),
            "message": pa.array(messages, pa.string()),
            "path": pa.array(paths, pa.string()),
        }
    )


def _write_runs(
    db: duckdb.DuckDBPyConnection, fleet: Fleet, frames: int, seed: int, chargers: int
) -> None:
    starts = [fleet.start_us - 60 * US, *fleet.restarts]
    settings = {"generator": "bench/make_recording.py", "frames": frames, "seed": seed}
    settings["chargers"] = chargers
    for run_id, us in zip(fleet.run_ids, starts, strict=True):
        db.execute(
            "INSERT INTO runs VALUES (?, ?, ?, 'proxy', ?)",
            [run_id, datetime.fromtimestamp(us / US, UTC), __version__, json.dumps(settings)],
        )


def _write_run_stats(db: duckdb.DuckDBPyConnection, fleet: Fleet, out: Output) -> None:
    rows = db.execute(
        """
        SELECT o.run_id, count(DISTINCT o.connection_id), count(f.connection_id),
               max(f.ts)
        FROM connection_opens o LEFT JOIN frames f USING (connection_id)
        GROUP BY o.run_id
        """
    ).fetchall()
    by_run = {row[0]: row[1:] for row in rows}
    ends = [*fleet.restarts, None]
    for run_id, end in zip(fleet.run_ids, ends, strict=True):
        connections, recorded, last = by_run.get(run_id, (0, 0, None))
        stopped = (
            datetime.fromtimestamp(end / US, UTC) if end is not None else last or datetime.now(UTC)
        )
        db.execute(
            "INSERT INTO run_stats VALUES (?, ?, ?, ?, 0, 0, 0.0, ?)",
            [run_id, stopped, connections, recorded, 1 + (recorded % 97)],
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write a realistic ocproxy recording of a charger fleet (see the module doc)."
    )
    parser.add_argument("output", type=Path, help="the DuckDB file to write")
    parser.add_argument("--frames", type=int, default=10_000_000, help="frames (default 10M)")
    parser.add_argument("--chargers", type=int, default=300, help="fleet size (default 300)")
    parser.add_argument("--days", type=float, default=21.0, help="about how long (default 21)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.chargers < 1 or args.days <= 0:
        parser.error("--frames, --chargers and --days must be positive")
    if args.output.exists():
        if not args.force:
            parser.error(f"{args.output} exists (--force replaces it)")
        args.output.unlink()
        Path(f"{args.output}.wal").unlink(missing_ok=True)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    summary = make_recording(
        args.output,
        args.frames,
        chargers=args.chargers,
        days=args.days,
        seed=args.seed,
        log=None if args.quiet else log,
    )
    print(
        f"{summary['path']}: {summary['frames']:,} frames, {summary['connections']:,} "
        f"connections, {summary['chargers']} chargers, {summary['first']} .. {summary['last']}, "
        f"{summary['bytes'] / 1e9:.2f} GB, written in {summary['seconds']} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
