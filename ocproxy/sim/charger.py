"""A simulated charging station that runs one realistic charging session.

Built on the ``ocpp`` package's ChargePoint so that what goes over the wire is what a
real, schema-validated OCPP implementation produces, not something shaped to suit the
proxy. Nothing here assumes the server is :class:`~ocproxy.sim.csms.SimCsms`: the URL
may just as well point at the proxy.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, cast
from urllib.parse import quote

from ocpp import routing
from ocpp.charge_point import ChargePoint
from ocpp.exceptions import NotImplementedError as OcppNotImplementedError
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v21 import call as call21
from ocpp.v21 import call_result as result21
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from ocproxy.sim.transcript import RecordingConnection, Transcript

SUBPROTOCOL_BY_VERSION: dict[str, str] = {
    "1.6": "ocpp1.6",
    "2.0.1": "ocpp2.0.1",
    "2.1": "ocpp2.1",
}
VERSION_BY_SUBPROTOCOL: dict[str, str] = {p: v for v, p in SUBPROTOCOL_BY_VERSION.items()}

ENERGY = "Energy.Active.Import.Register"
CONNECTOR = 1  # 1.6 connectorId and 2.x evseId/connectorId of the single outlet

F = TypeVar("F", bound=Callable[..., Any])


def on(action: str) -> Callable[[F], F]:
    """ocpp's ``@on``, typed so mypy --strict keeps checking the decorated handler."""
    return cast(Callable[[F], F], routing.on(action))


def after(action: str) -> Callable[[F], F]:
    """ocpp's ``@after``: runs once the CALLRESULT has been sent."""
    return cast(Callable[[F], F], routing.after(action))


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RejectUnrouted:
    """Mixin for 2.1 peers: send the CALLERROR ocpp 2.1.0 forgets for an unhandled action.

    For "2.1" ocpp's ``_raise_key_error`` falls through without raising, so an
    unhandled CALL gets no answer at all and the caller waits for its timeout.
    """

    route_map: dict[str, Any]

    async def _handle_call(self, msg: Any) -> Any:
        if msg.action not in self.route_map:
            raise OcppNotImplementedError(
                details={"cause": f"No handler for {msg.action} registered."}
            )
        return await super()._handle_call(msg)  # type: ignore[misc]


@dataclass(frozen=True)
class ChargerSpec:
    identity: str
    version: str  # "1.6" | "2.0.1" | "2.1"
    vendor: str = "ocproxy-sim"
    model: str = "SimCharger"
    serial: str | None = None
    firmware: str = "1.0.0"
    id_tag: str = "04A1B2C3D4"
    meter_samples: int = 3
    wh_per_sample: int = 1500
    pace: float = 0.0  # seconds between steps
    heartbeats: int = 1


class NoSubprotocolError(ConnectionError):
    """The server completed the handshake without agreeing on an OCPP version."""


class _Charger(ChargePoint):  # type: ignore[misc]
    """State every version shares: the spec and a small configuration store."""

    DEFAULT_CONFIG: dict[str, str] = {}
    HEARTBEAT_KEY = ""

    def __init__(self, spec: ChargerSpec, connection: RecordingConnection) -> None:
        super().__init__(spec.identity, connection)
        self.spec = spec
        self.config = dict(self.DEFAULT_CONFIG)
        self._asked = False

    async def ask(self, payload: Any) -> Any:
        """Send one CALL; a CALLERROR raises instead of silently returning None."""
        await self._pause()
        return await self.call(payload, suppress=False)

    async def _pause(self) -> None:
        # Between steps only: the BootNotification goes out as soon as connected.
        if self._asked and self.spec.pace > 0:
            await asyncio.sleep(self.spec.pace)
        self._asked = True


class _ChargerV16(_Charger):
    _call = call16
    _call_result = result16
    _ocpp_version = "1.6"
    DEFAULT_CONFIG = {"HeartbeatInterval": "300", "MeterValueSampleInterval": "60"}
    HEARTBEAT_KEY = "HeartbeatInterval"

    @on("GetConfiguration")
    def on_get_configuration(self, key: list[str] | None = None, **_: Any) -> Any:
        wanted = key or list(self.config)
        known = [k for k in wanted if k in self.config]
        unknown = [k for k in wanted if k not in self.config]
        return result16.GetConfiguration(
            configuration_key=[
                {"key": k, "readonly": False, "value": self.config[k]} for k in known
            ],
            unknown_key=unknown or None,
        )

    @on("ChangeConfiguration")
    def on_change_configuration(self, key: str, value: str, **_: Any) -> Any:
        self.config[key] = value
        return result16.ChangeConfiguration(status="Accepted")

    @on("TriggerMessage")
    def on_trigger_message(self, **_: Any) -> Any:
        return result16.TriggerMessage(status="Accepted")

    @on("Reset")
    def on_reset(self, **_: Any) -> Any:
        return result16.Reset(status="Accepted")

    @on("ChangeAvailability")
    def on_change_availability(self, **_: Any) -> Any:
        return result16.ChangeAvailability(status="Accepted")

    @on("RemoteStartTransaction")
    def on_remote_start_transaction(self, **_: Any) -> Any:
        return result16.RemoteStartTransaction(status="Accepted")

    @on("RemoteStopTransaction")
    def on_remote_stop_transaction(self, **_: Any) -> Any:
        return result16.RemoteStopTransaction(status="Accepted")

    @on("DataTransfer")
    def on_data_transfer(self, **_: Any) -> Any:
        return result16.DataTransfer(status="Accepted")


class _Charger2x(_Charger):
    """Handlers shared by 2.0.1 and 2.1; subclasses pick the call_result module."""

    _call_result: Any
    # Keyed "Component.Variable".
    DEFAULT_CONFIG = {
        "OCPPCommCtrlr.HeartbeatInterval": "300",
        "SampledDataCtrlr.TxUpdatedInterval": "60",
    }
    HEARTBEAT_KEY = "OCPPCommCtrlr.HeartbeatInterval"

    @on("GetVariables")
    def on_get_variables(self, get_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        return self._call_result.GetVariables(
            get_variable_result=[self._variable_result(item) for item in get_variable_data]
        )

    def _variable_result(self, item: dict[str, Any]) -> dict[str, Any]:
        key = f"{item['component']['name']}.{item['variable']['name']}"
        result = {"component": item["component"], "variable": item["variable"]}
        if key not in self.config:
            return {"attribute_status": "UnknownVariable", **result}
        return {"attribute_status": "Accepted", "attribute_value": self.config[key], **result}

    @on("SetVariables")
    def on_set_variables(self, set_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        results = []
        for item in set_variable_data:
            key = f"{item['component']['name']}.{item['variable']['name']}"
            self.config[key] = item["attribute_value"]
            results.append(
                {
                    "attribute_status": "Accepted",
                    "component": item["component"],
                    "variable": item["variable"],
                }
            )
        return self._call_result.SetVariables(set_variable_result=results)

    @on("TriggerMessage")
    def on_trigger_message(self, **_: Any) -> Any:
        return self._call_result.TriggerMessage(status="Accepted")

    @on("Reset")
    def on_reset(self, **_: Any) -> Any:
        return self._call_result.Reset(status="Accepted")

    @on("ChangeAvailability")
    def on_change_availability(self, **_: Any) -> Any:
        return self._call_result.ChangeAvailability(status="Accepted")

    @on("RequestStartTransaction")
    def on_request_start_transaction(self, **_: Any) -> Any:
        return self._call_result.RequestStartTransaction(status="Accepted")

    @on("RequestStopTransaction")
    def on_request_stop_transaction(self, **_: Any) -> Any:
        return self._call_result.RequestStopTransaction(status="Accepted")

    @on("DataTransfer")
    def on_data_transfer(self, **_: Any) -> Any:
        return self._call_result.DataTransfer(status="Accepted")


class _ChargerV201(_Charger2x):
    _call = call201
    _call_result = result201
    _ocpp_version = "2.0.1"


class _ChargerV21(RejectUnrouted, _Charger2x):
    _call = call21
    _call_result = result21
    _ocpp_version = "2.1"


_CHARGER_CLASSES: dict[str, type[_Charger]] = {
    "1.6": _ChargerV16,
    "2.0.1": _ChargerV201,
    "2.1": _ChargerV21,
}


def _sample16(wh: int, context: str) -> dict[str, Any]:
    return {
        "timestamp": utc_now(),
        "sampled_value": [
            {"value": str(wh), "context": context, "measurand": ENERGY, "unit": "Wh"}
        ],
    }


async def _session_v16(cp: _Charger) -> None:
    spec = cp.spec
    boot = await cp.ask(
        call16.BootNotification(
            charge_point_model=spec.model,
            charge_point_vendor=spec.vendor,
            charge_point_serial_number=spec.serial,
            firmware_version=spec.firmware,
        )
    )
    if boot.status != "Accepted":
        return  # a real station would retry later; one attempt is enough here
    cp.config[cp.HEARTBEAT_KEY] = str(boot.interval)
    for _ in range(spec.heartbeats):
        await cp.ask(call16.Heartbeat())
    await cp.ask(_status16("Available"))
    auth = await cp.ask(call16.Authorize(id_tag=spec.id_tag))
    if auth.id_tag_info["status"] != "Accepted":
        return  # no transaction for a rejected card, as on a real station
    start = await cp.ask(
        call16.StartTransaction(
            connector_id=CONNECTOR, id_tag=spec.id_tag, meter_start=0, timestamp=utc_now()
        )
    )
    transaction_id = start.transaction_id
    await cp.ask(_status16("Charging"))
    for n in range(1, spec.meter_samples + 1):
        await cp.ask(
            call16.MeterValues(
                connector_id=CONNECTOR,
                transaction_id=transaction_id,
                meter_value=[_sample16(n * spec.wh_per_sample, "Sample.Periodic")],
            )
        )
    await cp.ask(
        call16.StopTransaction(
            meter_stop=spec.meter_samples * spec.wh_per_sample,
            timestamp=utc_now(),
            transaction_id=transaction_id,
            reason="Local",
            id_tag=spec.id_tag,
        )
    )
    await cp.ask(_status16("Available"))


def _status16(status: str) -> Any:
    return call16.StatusNotification(
        connector_id=CONNECTOR, error_code="NoError", status=status, timestamp=utc_now()
    )


def _sample2x(wh: int, context: str) -> dict[str, Any]:
    return {
        "timestamp": utc_now(),
        "sampled_value": [
            {
                "value": wh,
                "context": context,
                "measurand": ENERGY,
                "unit_of_measure": {"unit": "Wh"},
            }
        ],
    }


class _Transaction2x:
    """Builds the TransactionEvents of one 2.x transaction (seqNo, id, evse)."""

    def __init__(self, call: Any, id_token: dict[str, str]) -> None:
        self._call = call
        self._id_token = id_token
        self._seq_no = 0
        self.transaction_id = str(uuid.uuid4())

    def event(self, event_type: str, trigger: str, info: dict[str, Any], **extra: Any) -> Any:
        seq_no, self._seq_no = self._seq_no, self._seq_no + 1
        return self._call.TransactionEvent(
            event_type=event_type,
            timestamp=utc_now(),
            trigger_reason=trigger,
            seq_no=seq_no,
            transaction_info={"transaction_id": self.transaction_id, **info},
            **extra,
        )

    def started(self) -> Any:
        return self.event(
            "Started",
            "Authorized",
            {"charging_state": "EVConnected"},
            id_token=self._id_token,
            evse={"id": CONNECTOR, "connector_id": CONNECTOR},
            meter_value=[_sample2x(0, "Transaction.Begin")],
        )

    def updated(self, wh: int) -> Any:
        return self.event(
            "Updated",
            "MeterValuePeriodic",
            {"charging_state": "Charging"},
            meter_value=[_sample2x(wh, "Sample.Periodic")],
        )

    def ended(self, wh: int) -> Any:
        return self.event(
            "Ended",
            "StopAuthorized",
            {"charging_state": "EVConnected", "stopped_reason": "Local"},
            id_token=self._id_token,
            meter_value=[_sample2x(wh, "Transaction.End")],
        )


async def _session_2x(cp: _Charger) -> None:
    spec, call = cp.spec, cp._call
    boot = await cp.ask(call.BootNotification(charging_station=_station(spec), reason="PowerUp"))
    if boot.status != "Accepted":
        return  # a real station would retry later; one attempt is enough here
    cp.config[cp.HEARTBEAT_KEY] = str(boot.interval)
    for _ in range(spec.heartbeats):
        await cp.ask(call.Heartbeat())
    await cp.ask(_status2x(call, "Available"))
    id_token = {"id_token": spec.id_tag, "type": "ISO14443"}
    auth = await cp.ask(call.Authorize(id_token=id_token))
    if auth.id_token_info["status"] != "Accepted":
        return  # no transaction for a rejected card, as on a real station
    transaction = _Transaction2x(call, id_token)
    await cp.ask(transaction.started())
    await cp.ask(_status2x(call, "Occupied"))
    for n in range(1, spec.meter_samples + 1):
        await cp.ask(transaction.updated(n * spec.wh_per_sample))
    await cp.ask(transaction.ended(spec.meter_samples * spec.wh_per_sample))
    await cp.ask(_status2x(call, "Available"))


def _station(spec: ChargerSpec) -> dict[str, str]:
    station = {"model": spec.model, "vendor_name": spec.vendor, "firmware_version": spec.firmware}
    if spec.serial is not None:
        station["serial_number"] = spec.serial
    return station


def _status2x(call: Any, status: str) -> Any:
    return call.StatusNotification(
        timestamp=utc_now(), connector_status=status, evse_id=CONNECTOR, connector_id=CONNECTOR
    )


def charger_url(url: str, identity: str) -> str:
    """The OCPP-J endpoint of one station: the identity is the last path segment."""
    return f"{url.rstrip('/')}/{quote(identity, safe='')}"


async def run_charger(
    url: str,
    spec: ChargerSpec,
    *,
    subprotocols: Sequence[str] | None = None,
    extra_headers: dict[str, str] | None = None,
) -> Transcript:
    """Connect, run one session, close with 1000 and return what went over the wire.

    ``url`` is the server URL without the identity. The session follows the version
    the server picked (``spec.version`` only chooses what is offered by default). Raises
    :class:`NoSubprotocolError` when the server picks no OCPP version, and the
    websockets exception when the server rejects the handshake or hangs up.
    """
    offered = list(subprotocols or [SUBPROTOCOL_BY_VERSION[spec.version]])
    transcript = Transcript()
    async with connect(
        charger_url(url, spec.identity),
        subprotocols=[Subprotocol(p) for p in offered],
        additional_headers=extra_headers,
        compression=None,  # stations rarely negotiate permessage-deflate
    ) as ws:
        version = VERSION_BY_SUBPROTOCOL.get(ws.subprotocol or "")
        if version is None:
            raise NoSubprotocolError(f"server accepted none of {offered}")
        cp = _CHARGER_CLASSES[version](spec, RecordingConnection(ws, transcript, side="charger"))
        await _run_session(cp, _session_v16 if version == "1.6" else _session_2x)
    return transcript


async def _run_session(cp: _Charger, session: Callable[[_Charger], Awaitable[None]]) -> None:
    # The listener must run alongside the session so CSMS-initiated CALLs are
    # answered while the station waits for its own CALLRESULTs; if the listener dies
    # (the server hung up) the TaskGroup cancels the session instead of letting it
    # wait out ocpp's 30 s response timeout.
    try:
        async with asyncio.TaskGroup() as group:
            listener = group.create_task(cp.start())
            await session(cp)
            listener.cancel()
    except BaseExceptionGroup as failure:
        if len(failure.exceptions) == 1:
            raise failure.exceptions[0] from failure
        raise
