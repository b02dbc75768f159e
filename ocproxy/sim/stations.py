"""The simulated charging station's OCPP end: one ChargePoint class per version.

Built on the ``ocpp`` package's ChargePoint so that what goes over the wire is what a
real, schema-validated OCPP implementation produces, not something shaped to suit the
proxy. The station answers the CSMS's usual CALLs (configuration, trigger, reset,
availability, remote start/stop, data transfer) with Accepted; what it sends on its
own is scripted in :mod:`ocproxy.sim.charger`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from ocpp import routing
from ocpp.charge_point import ChargePoint
from ocpp.exceptions import NotImplementedError as OcppNotImplementedError
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v21 import call as call21
from ocpp.v21 import call_result as result21
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201

from ocproxy.sim.transcript import RecordingConnection

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
    transactions: int = 1  # charging sessions after an accepted boot


class NoSubprotocolError(ConnectionError):
    """The server completed the handshake without agreeing on an OCPP version."""


class Station(ChargePoint):  # type: ignore[misc]
    """State every version shares: the spec and a small configuration store."""

    DEFAULT_CONFIG: dict[str, str] = {}
    HEARTBEAT_KEY = ""

    def __init__(self, spec: ChargerSpec, connection: RecordingConnection) -> None:
        super().__init__(spec.identity, connection)
        self.spec = spec
        self.config = dict(self.DEFAULT_CONFIG)
        self.meter_wh = 0  # the energy register: it only grows, across transactions
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


class _ChargerV16(Station):
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


class _Charger2x(Station):
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


STATION_CLASSES: dict[str, type[Station]] = {
    "1.6": _ChargerV16,
    "2.0.1": _ChargerV201,
    "2.1": _ChargerV21,
}
