"""Drive the auditor without I/O, exactly as the recorder does, and build small payloads.

``Feed`` is the recorder's writer loop in miniature: a ``ConnectionOpened`` goes to
``Auditor.opened``; each literal frame becomes a ``FrameReceived``, is parsed and
correlated by ``core.observe`` with the connection's own ``Correlator``, and is
handed to ``Auditor.frame``. Time is whatever the test says.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from ocproxy.audit.auditor import Auditor, AuditSettings, Finding
from ocproxy.audit.rules import Severity
from ocproxy.core.correlation import Correlator
from ocproxy.core.events import ClosedBy, ConnectionClosed, ConnectionOpened, FrameReceived
from ocproxy.core.frames import Direction, Opcode
from ocproxy.core.handshake import OcppVersion
from ocproxy.core.observe import observe

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
CP = Direction.TO_CSMS  # the charger sends
CS = Direction.TO_CHARGER  # the CSMS sends

SUBPROTOCOL = {
    OcppVersion.V16: "ocpp1.6",
    OcppVersion.V201: "ocpp2.0.1",
    OcppVersion.V21: "ocpp2.1",
}
VERSIONS = [OcppVersion.V16, OcppVersion.V201, OcppVersion.V21]
V2X = [OcppVersion.V201, OcppVersion.V21]
NOW = "2026-01-01T10:00:00Z"

Message = str | bytes | list[Any] | None  # None: over the size limit, only the length known
# (direction, message, seconds after T0)
Step = tuple[Direction, Message, float]


def encode(message: Message) -> str | bytes | None:
    if message is None or isinstance(message, str | bytes):
        return message
    return json.dumps(message)


@dataclass
class Feed:
    """An auditor and per-connection correlators, fed literal events."""

    settings: AuditSettings | None = None
    auditor: Auditor = field(init=False)
    correlators: dict[str, Correlator] = field(default_factory=dict)
    seqs: dict[str, itertools.count[int]] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.auditor = Auditor(self.settings)

    def open(
        self,
        subprotocol: str | None = "ocpp2.0.1",
        *,
        identity: str = "CP-1",
        offered: Sequence[str] | None = None,
        status: int = 101,
        headers: Iterable[tuple[str, str]] = (),
        at: float = 0.0,
    ) -> tuple[str, list[Finding]]:
        """Open a connection; return its id and the findings about the connection."""
        connection_id = f"conn-{next(self._ids)}"
        if offered is None:
            offered = () if subprotocol is None else (subprotocol,)
        event = ConnectionOpened(
            connection_id=connection_id,
            ts=T0 + at,
            identity=identity,
            path=f"/ocpp/{identity}",
            remote_addr="127.0.0.1:5000",
            offered_subprotocols=tuple(offered),
            subprotocol=subprotocol,
            upstream_url=f"ws://csms.invalid/ocpp/{identity}",
            handshake_status=status,
            request_headers=tuple(headers),
        )
        self.correlators[connection_id] = Correlator()
        self.seqs[connection_id] = itertools.count()
        found = self.auditor.opened(event)
        self.findings.extend(found)
        return connection_id, found

    def send(
        self, connection_id: str, direction: Direction, message: Message, at: float
    ) -> list[Finding]:
        """One message of ``connection_id``; ``at`` is seconds after T0."""
        data = encode(message)
        if data is None:
            event = FrameReceived(
                connection_id, next(self.seqs[connection_id]), T0 + at, direction, None, None,
                20_000_000, too_large=True,
            )  # fmt: skip
        else:
            opcode = Opcode.TEXT if isinstance(data, str) else Opcode.BINARY
            size = (
                len(data.encode("utf-8", "surrogatepass")) if isinstance(data, str) else len(data)
            )
            event = FrameReceived(
                connection_id, next(self.seqs[connection_id]), T0 + at, direction, opcode, data,
                size,
            )  # fmt: skip
        found = self.auditor.frame(observe(event, self.correlators[connection_id]))
        self.findings.extend(found)
        return found

    def steps(self, connection_id: str, steps: Iterable[Step]) -> list[Finding]:
        found: list[Finding] = []
        for direction, message, at in steps:
            found.extend(self.send(connection_id, direction, message, at))
        return found

    def close(self, connection_id: str, at: float) -> list[Finding]:
        event = ConnectionClosed(connection_id, T0 + at, 1000, "", ClosedBy.CHARGER)
        found = self.auditor.closed(event)
        self.findings.extend(found)
        return found


def audit_frames(
    steps: Iterable[Step],
    *,
    version: OcppVersion | None = OcppVersion.V201,
    settings: AuditSettings | None = None,
    identity: str = "CP-1",
) -> list[Finding]:
    """The findings about the frames of one connection (not about the connection)."""
    feed = Feed(settings)
    connection_id, _ = feed.open(
        None if version is None else SUBPROTOCOL[version], identity=identity
    )
    return feed.steps(connection_id, steps)


def rules(findings: Iterable[Finding]) -> list[str]:
    return [f.rule for f in findings]


def only(findings: list[Finding]) -> Finding:
    """The single finding; fails with all of them listed otherwise."""
    assert len(findings) == 1, [(f.rule, str(f.severity), f.message) for f in findings]
    return findings[0]


def summary(findings: Iterable[Finding]) -> list[tuple[str, Severity, str | None]]:
    return [(f.rule, f.severity, f.path) for f in findings]


# -- schemas, read where the ocpp package installed them (like ocproxy.audit.schemas) --

_DIRS = {OcppVersion.V16: "v16", OcppVersion.V201: "v201", OcppVersion.V21: "v21"}


def schema_names(version: OcppVersion, action: str, *, response: bool) -> list[str]:
    if response:
        return [f"{action}Response.json"]
    if version is OcppVersion.V16:
        return [f"{action}.json"]
    # 2.1's SEND-only NotifyPeriodicEventStream ships as "<Action>.json".
    return [f"{action}Request.json", f"{action}.json"]


def load_schema(version: OcppVersion, action: str, *, response: bool) -> dict[str, Any] | None:
    """The action's request or response schema, without its unfetchable ``$id``."""
    directory = resources.files("ocpp") / _DIRS[version] / "schemas"
    for name in schema_names(version, action, response=response):
        path = directory / name
        if path.is_file():
            schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8-sig"))
            schema.pop("$id", None)
            return schema
    return None


# -- known-valid payloads to mutate ---------------------------------------------------


def boot_request(version: OcppVersion) -> dict[str, Any]:
    if version is OcppVersion.V16:
        return {"chargePointVendor": "ACME", "chargePointModel": "Wallbox"}
    return {"chargingStation": {"model": "Wallbox", "vendorName": "ACME"}, "reason": "PowerUp"}


def boot_response(interval: int = 300) -> dict[str, Any]:
    return {"currentTime": NOW, "interval": interval, "status": "Accepted"}


def heartbeat_response() -> dict[str, Any]:
    return {"currentTime": NOW}


def status_request(version: OcppVersion) -> dict[str, Any]:
    if version is OcppVersion.V16:
        return {"connectorId": 1, "errorCode": "NoError", "status": "Available", "timestamp": NOW}
    return {"timestamp": NOW, "connectorStatus": "Available", "evseId": 1, "connectorId": 1}


def meter_values_request(version: OcppVersion, value: Any) -> dict[str, Any]:
    if version is OcppVersion.V16:
        return {
            "connectorId": 1,
            "meterValue": [{"timestamp": NOW, "sampledValue": [{"value": value}]}],
        }
    return {"evseId": 1, "meterValue": [{"timestamp": NOW, "sampledValue": [{"value": value}]}]}
