"""A simulated charging station's script: boot, then realistic charging sessions.

The OCPP end itself (one ``ocpp`` ChargePoint class per version) is in
:mod:`ocproxy.sim.stations`. Nothing here assumes the server is
:class:`~ocproxy.sim.csms.SimCsms`: the URL may just as well point at the proxy.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from ocpp.v16 import call as call16
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from ocproxy.sim.stations import (
    CONNECTOR,
    ENERGY,
    STATION_CLASSES,
    SUBPROTOCOL_BY_VERSION,
    VERSION_BY_SUBPROTOCOL,
    ChargerSpec,
    NoSubprotocolError,
    RejectUnrouted,
    Station,
    after,
    on,
    utc_now,
)
from ocproxy.sim.transcript import RecordingConnection, Transcript

__all__ = [
    "SUBPROTOCOL_BY_VERSION",
    "VERSION_BY_SUBPROTOCOL",
    "BootOutcome",
    "ChargerSpec",
    "NoSubprotocolError",
    "RejectUnrouted",
    "Script",
    "Station",
    "after",
    "boot",
    "charge",
    "charger_url",
    "full_session",
    "on",
    "run_charger",
    "utc_now",
]

Script = Callable[[Station], Awaitable[None]]


@dataclass(frozen=True)
class BootOutcome:
    status: str  # the CSMS's answer: Accepted, Pending or Rejected
    interval: int  # seconds between heartbeats it asked for


# -- OCPP 1.6 ------------------------------------------------------------------------------


def _sample16(wh: int, context: str) -> dict[str, Any]:
    return {
        "timestamp": utc_now(),
        "sampled_value": [
            {"value": str(wh), "context": context, "measurand": ENERGY, "unit": "Wh"}
        ],
    }


async def _boot_v16(cp: Station) -> BootOutcome:
    spec = cp.spec
    answer = await cp.ask(
        call16.BootNotification(
            charge_point_model=spec.model,
            charge_point_vendor=spec.vendor,
            charge_point_serial_number=spec.serial,
            firmware_version=spec.firmware,
        )
    )
    if answer.status == "Accepted":
        cp.config[cp.HEARTBEAT_KEY] = str(answer.interval)
        for _ in range(spec.heartbeats):
            await cp.ask(call16.Heartbeat())
        await cp.ask(_status16("Available"))
    return BootOutcome(answer.status, int(answer.interval))


async def _charge_v16(cp: Station) -> int:
    spec = cp.spec
    auth = await cp.ask(call16.Authorize(id_tag=spec.id_tag))
    if auth.id_tag_info["status"] != "Accepted":
        return 0  # no transaction for a rejected card, as on a real station
    meter_start = cp.meter_wh
    start = await cp.ask(
        call16.StartTransaction(
            connector_id=CONNECTOR, id_tag=spec.id_tag, meter_start=meter_start, timestamp=utc_now()
        )
    )
    transaction_id = start.transaction_id
    await cp.ask(_status16("Charging"))
    for _ in range(spec.meter_samples):
        cp.meter_wh += spec.wh_per_sample
        await cp.ask(
            call16.MeterValues(
                connector_id=CONNECTOR,
                transaction_id=transaction_id,
                meter_value=[_sample16(cp.meter_wh, "Sample.Periodic")],
            )
        )
    await cp.ask(
        call16.StopTransaction(
            meter_stop=cp.meter_wh,
            timestamp=utc_now(),
            transaction_id=transaction_id,
            reason="Local",
            id_tag=spec.id_tag,
        )
    )
    await cp.ask(_status16("Available"))
    return cp.meter_wh - meter_start


def _status16(status: str) -> Any:
    return call16.StatusNotification(
        connector_id=CONNECTOR, error_code="NoError", status=status, timestamp=utc_now()
    )


# -- OCPP 2.0.1 and 2.1 --------------------------------------------------------------------


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

    def started(self, wh: int) -> Any:
        return self.event(
            "Started",
            "Authorized",
            {"charging_state": "EVConnected"},
            id_token=self._id_token,
            evse={"id": CONNECTOR, "connector_id": CONNECTOR},
            meter_value=[_sample2x(wh, "Transaction.Begin")],
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


async def _boot_2x(cp: Station) -> BootOutcome:
    spec, call = cp.spec, cp._call
    answer = await cp.ask(call.BootNotification(charging_station=_station(spec), reason="PowerUp"))
    if answer.status == "Accepted":
        cp.config[cp.HEARTBEAT_KEY] = str(answer.interval)
        for _ in range(spec.heartbeats):
            await cp.ask(call.Heartbeat())
        await cp.ask(_status2x(call, "Available"))
    return BootOutcome(answer.status, int(answer.interval))


async def _charge_2x(cp: Station) -> int:
    spec, call = cp.spec, cp._call
    id_token = {"id_token": spec.id_tag, "type": "ISO14443"}
    auth = await cp.ask(call.Authorize(id_token=id_token))
    if auth.id_token_info["status"] != "Accepted":
        return 0  # no transaction for a rejected card, as on a real station
    meter_start = cp.meter_wh
    transaction = _Transaction2x(call, id_token)
    await cp.ask(transaction.started(meter_start))
    await cp.ask(_status2x(call, "Occupied"))
    for _ in range(spec.meter_samples):
        cp.meter_wh += spec.wh_per_sample
        await cp.ask(transaction.updated(cp.meter_wh))
    await cp.ask(transaction.ended(cp.meter_wh))
    await cp.ask(_status2x(call, "Available"))
    return cp.meter_wh - meter_start


def _station(spec: ChargerSpec) -> dict[str, str]:
    station = {"model": spec.model, "vendor_name": spec.vendor, "firmware_version": spec.firmware}
    if spec.serial is not None:
        station["serial_number"] = spec.serial
    return station


def _status2x(call: Any, status: str) -> Any:
    return call.StatusNotification(
        timestamp=utc_now(), connector_status=status, evse_id=CONNECTOR, connector_id=CONNECTOR
    )


# -- scripts -------------------------------------------------------------------------------


async def boot(cp: Station) -> BootOutcome:
    """BootNotification; once Accepted, the spec's heartbeats and an Available status."""
    return await (_boot_v16 if cp._ocpp_version == "1.6" else _boot_2x)(cp)


async def charge(cp: Station) -> int:
    """Authorize, then one metered transaction; the Wh delivered (0 if refused)."""
    return await (_charge_v16 if cp._ocpp_version == "1.6" else _charge_2x)(cp)


async def full_session(cp: Station) -> None:
    """Boot, then (if accepted) ``spec.transactions`` charging sessions."""
    outcome = await boot(cp)
    if outcome.status != "Accepted":
        return  # a real station would retry later; one attempt is enough here
    for _ in range(cp.spec.transactions):
        await charge(cp)


def charger_url(url: str, identity: str) -> str:
    """The OCPP-J endpoint of one station: the identity is the last path segment."""
    return f"{url.rstrip('/')}/{quote(identity, safe='')}"


async def run_charger(
    url: str,
    spec: ChargerSpec,
    *,
    subprotocols: Sequence[str] | None = None,
    extra_headers: dict[str, str] | None = None,
    script: Script = full_session,
    on_connected: Callable[[Station], None] | None = None,
) -> Transcript:
    """Connect, run ``script`` (one session by default), close with 1000 and return
    what went over the wire.

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
        proxy=None,  # loopback and lab URLs: never through an HTTP proxy from the environment
    ) as ws:
        version = VERSION_BY_SUBPROTOCOL.get(ws.subprotocol or "")
        if version is None:
            raise NoSubprotocolError(f"server accepted none of {offered}")
        cp = STATION_CLASSES[version](spec, RecordingConnection(ws, transcript, side="charger"))
        if on_connected is not None:
            on_connected(cp)
        try:
            await _run_session(cp, script)
        except asyncio.CancelledError:
            # Stopped from outside (Ctrl-C on `ocproxy sim chargers`): a station going
            # away says so, rather than leaving websockets to close with 1011.
            await ws.close(1001, "station stopping")
            raise
    return transcript


async def _run_session(cp: Station, script: Script) -> None:
    # The listener must run alongside the script so CSMS-initiated CALLs are
    # answered while the station waits for its own CALLRESULTs; if the listener dies
    # (the server hung up) the TaskGroup cancels the script instead of letting it
    # wait out ocpp's 30 s response timeout.
    try:
        async with asyncio.TaskGroup() as group:
            listener = group.create_task(cp.start())
            await script(cp)
            listener.cancel()
    except BaseExceptionGroup as failure:
        if len(failure.exceptions) == 1:
            raise failure.exceptions[0] from failure
        raise
