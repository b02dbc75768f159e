"""How a log's columns map onto a message: ``--map``, times, directions, OCPP versions.

Pure functions over literal values, tested with literal values; the readers in
:mod:`ocproxy.importer.logs` apply them line by line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from ocproxy.core.frames import Direction
from ocproxy.core.handshake import OcppVersion
from ocproxy.errors import ConfigError

FIELDS = ("time", "identity", "message", "direction")
REQUIRED = ("time", "message")


@dataclass(frozen=True)
class ColumnMap:
    """Which column (CSV header name, or JSON key; ``a.b`` for a nested one) holds what."""

    time: str
    message: str
    identity: str | None = None
    direction: str | None = None

    @classmethod
    def parse(cls, text: str) -> ColumnMap:
        """``time=ts,identity=cp,message=frame[,direction=dir]``; ConfigError if malformed."""
        found: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, equals, column = item.partition("=")
            name, column = name.strip(), column.strip()
            if not equals or not column:
                raise ConfigError(f"--map {item!r}: expected FIELD=COLUMN")
            if name not in FIELDS:
                raise ConfigError(f"--map {name}=...: the fields are {', '.join(FIELDS)}")
            if name in found:
                raise ConfigError(f"--map names {name} twice")
            found[name] = column
        missing = [f for f in REQUIRED if f not in found]
        if missing:
            raise ConfigError(f"--map needs {' and '.join(f'{m}=COLUMN' for m in missing)}")
        return cls(**found)


# -- times ------------------------------------------------------------------------------

_NUMBER = re.compile(r"[+-]?\d+(\.\d*)?([eE][+-]?\d+)?")


def parse_time(value: object) -> float:
    """Seconds since the epoch from ISO 8601 (no zone: UTC) or a number of seconds,
    milliseconds or microseconds since the epoch (told apart by size). ValueError if not."""
    if type(value) is str and value[4:5] == "-":
        # The common spelling, straight to the C parser (what follows would give the
        # same for it, at three times the cost); any other, as below.
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return moment.timestamp()
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{value!r} is not a time")
    if isinstance(value, int | float):
        return _epoch(float(value))
    text = str(value).strip()
    if _NUMBER.fullmatch(text):
        return _epoch(float(text))
    moment = datetime.fromisoformat(text.replace(" UTC", "Z"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _epoch(number: float) -> float:
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{number!r} is not a time")
    for scale in (1.0, 1e3, 1e6, 1e9):  # s, ms, us, ns: the first that lands before 2200
        if number / scale < 7_258_118_400:
            return number / scale
    raise ValueError(f"{number!r} is not a time")


# -- directions -------------------------------------------------------------------------

_DIRECTION_WORDS = {
    Direction.TO_CSMS: ("to_csms", "to_cs", "tocsms", "csms", "cs", "from_charger", "from_cp",
                        "cp2cs", "cp->cs", "cp->csms", "charger->csms", "up", "upstream"),
    Direction.TO_CHARGER: ("to_charger", "to_cp", "tocharger", "charger", "cp", "from_csms",
                           "from_cs", "cs2cp", "cs->cp", "csms->cp", "csms->charger", "down",
                           "downstream"),
}  # fmt: skip
DIRECTION_WORDS = {w: d for d, words in _DIRECTION_WORDS.items() for w in words}


def parse_direction(value: object) -> Direction:
    word = str(value).strip().lower().replace(" ", "")
    if word not in DIRECTION_WORDS:
        raise ValueError(
            f"{value!r} is not a direction (to_csms or to_charger; also cp->cs, from_charger, ...)"
        )
    return DIRECTION_WORDS[word]


# CALLs a charger sends; every other action is the CSMS's. DataTransfer goes both ways:
# it counts as the charger's, which is what most logs hold.
_CHARGER_ACTIONS = frozenset(
    [
        "Authorize",
        "BootNotification",
        "DataTransfer",
        "DiagnosticsStatusNotification",
        "FirmwareStatusNotification",
        "Heartbeat",
        "MeterValues",
        "StartTransaction",
        "StatusNotification",
        "StopTransaction",
        "SecurityEventNotification",
        "SignCertificate",
        "LogStatusNotification",
        "SignedFirmwareStatusNotification",
        "ClearedChargingLimit",
        "Get15118EVCertificate",
        "GetCertificateStatus",
        "NotifyChargingLimit",
        "NotifyCustomerInformation",
        "NotifyDisplayMessages",
        "NotifyEVChargingNeeds",
        "NotifyEVChargingSchedule",
        "NotifyEvent",
        "NotifyMonitoringReport",
        "NotifyReport",
        "PublishFirmwareStatusNotification",
        "ReportChargingProfiles",
        "ReservationStatusUpdate",
        "TransactionEvent",
        "BatterySwap",
        "GetCertificateChainStatus",
        "NotifyAllowedEnergyTransfer",
        "NotifyDERAlarm",
        "NotifyDERStartStop",
        "NotifyPeriodicEventStream",
        "NotifyPriorityCharging",
        "NotifySettlement",
        "NotifyWebPaymentStarted",
        "PullDynamicScheduleUpdate",
        "ReportDERControl",
        "ClosePeriodicEventStream",
        "OpenPeriodicEventStream",
        "NotifyQRCodeScanned",
        "VatNumberValidation",
    ]
)


def call_direction(action: str) -> Direction:
    """Who sends a CALL of ``action``: the charger for the actions it initiates."""
    return Direction.TO_CSMS if action in _CHARGER_ACTIONS else Direction.TO_CHARGER


# -- OCPP versions ----------------------------------------------------------------------

_ONLY_16 = frozenset(
    [
        "StartTransaction",
        "StopTransaction",
        "DiagnosticsStatusNotification",
        "GetDiagnostics",
        "ChangeConfiguration",
        "GetConfiguration",
        "RemoteStartTransaction",
        "RemoteStopTransaction",
        "UnlockConnector",
        "ChangeAvailability",
    ]
)
_ONLY_2X = frozenset(
    [
        "TransactionEvent",
        "NotifyReport",
        "NotifyEvent",
        "GetVariables",
        "SetVariables",
        "GetBaseReport",
        "RequestStartTransaction",
        "RequestStopTransaction",
        "NotifyMonitoringReport",
    ]
)
SUBPROTOCOLS = {
    OcppVersion.V16: "ocpp1.6",
    OcppVersion.V201: "ocpp2.0.1",
    OcppVersion.V21: "ocpp2.1",
}
VERSIONS = {"1.6": OcppVersion.V16, "2.0.1": OcppVersion.V201, "2.1": OcppVersion.V21}


def version_hint(action: str | None, payload: object) -> OcppVersion | None:
    """The version a CALL betrays, if any: a version-only action, or the shape of a
    BootNotification (1.6: chargePointVendor; 2.x: chargingStation)."""
    if action in _ONLY_16:
        return OcppVersion.V16
    if action in _ONLY_2X:
        return OcppVersion.V201
    if action == "BootNotification" and isinstance(payload, dict):
        if "chargePointVendor" in payload:
            return OcppVersion.V16
        if "chargingStation" in payload:
            return OcppVersion.V201
    return None
