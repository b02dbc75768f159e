"""A simulated CSMS: accepts any station on any path and answers like a lenient backend.

Built on the ``ocpp`` package's ChargePoint (which, despite its name, is just "one end
of an OCPP-J connection") so its answers are schema-validated. Every connection is
recorded into a :class:`~ocproxy.sim.transcript.Transcript` keyed by identity.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
from collections.abc import Callable, Coroutine, Sequence
from http import HTTPStatus
from types import TracebackType
from typing import Any, Self
from urllib.parse import unquote, urlsplit

from ocpp.charge_point import ChargePoint
from ocpp.exceptions import OCPPError
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v21 import call as call21
from ocpp.v21 import call_result as result21
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidHeader
from websockets.frames import CloseCode
from websockets.headers import parse_authorization_basic
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from ocproxy.sim.stations import (
    SUBPROTOCOL_BY_VERSION,
    RejectUnrouted,
    after,
    on,
    utc_now,
)
from ocproxy.sim.transcript import RecordingConnection, Transcript

ALL_SUBPROTOCOLS: tuple[str, ...] = tuple(SUBPROTOCOL_BY_VERSION.values())

log = logging.getLogger(__name__)


def identity_from_path(path: str) -> str:
    """Last path segment, percent-decoded, as OCPP-J puts the station identity there."""
    return unquote(urlsplit(path).path.rstrip("/").rsplit("/", 1)[-1])


class _Peer(ChargePoint):  # type: ignore[misc]
    """The CSMS end of one station's connection; state shared by every version."""

    def __init__(self, identity: str, connection: RecordingConnection, owner: SimCsms) -> None:
        super().__init__(identity, connection)
        self.owner = owner
        self.boot_accepted = False
        # CSMS-initiated work for this station; cancelled when the connection ends.
        self.tasks: set[asyncio.Task[None]] = set()
        for action, factory in owner.overrides.items():
            route = self.route_map.setdefault(action, {"_skip_schema_validation": False})
            route["_on_action"] = factory

    def first_question(self) -> Any:
        """The CALL sent after an accepted boot when the CSMS is told to initiate."""
        raise NotImplementedError

    def accept_boot(self) -> None:
        self.boot_accepted = True

    @after("BootNotification")
    def after_boot_notification(self, **_: Any) -> None:
        # Here and not in the @on handler: only after the CALLRESULT is on the wire
        # may the CSMS talk to the station, or its CALL could overtake the answer.
        if self.boot_accepted:
            self.owner._booted(self)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


class _PeerV16(_Peer):
    _call = call16
    _call_result = result16
    _ocpp_version = "1.6"

    def first_question(self) -> Any:
        return call16.GetConfiguration(key=["HeartbeatInterval"])

    @on("BootNotification")
    def on_boot_notification(self, **_: Any) -> Any:
        self.accept_boot()
        return result16.BootNotification(
            current_time=utc_now(), interval=self.owner.heartbeat_interval, status="Accepted"
        )

    @on("Heartbeat")
    def on_heartbeat(self, **_: Any) -> Any:
        return result16.Heartbeat(current_time=utc_now())

    @on("StatusNotification")
    def on_status_notification(self, **_: Any) -> Any:
        return result16.StatusNotification()

    @on("Authorize")
    def on_authorize(self, **_: Any) -> Any:
        return result16.Authorize(id_tag_info={"status": "Accepted"})

    @on("StartTransaction")
    def on_start_transaction(self, **_: Any) -> Any:
        return result16.StartTransaction(
            transaction_id=self.owner.next_transaction_id(), id_tag_info={"status": "Accepted"}
        )

    @on("StopTransaction")
    def on_stop_transaction(self, id_tag: str | None = None, **_: Any) -> Any:
        if id_tag is None:
            return result16.StopTransaction()
        return result16.StopTransaction(id_tag_info={"status": "Accepted"})

    @on("MeterValues")
    def on_meter_values(self, **_: Any) -> Any:
        return result16.MeterValues()

    @on("DataTransfer")
    def on_data_transfer(self, **_: Any) -> Any:
        return result16.DataTransfer(status="Accepted")

    @on("FirmwareStatusNotification")
    def on_firmware_status_notification(self, **_: Any) -> Any:
        return result16.FirmwareStatusNotification()


class _Peer2x(_Peer):
    """Handlers shared by 2.0.1 and 2.1; subclasses pick the call/call_result modules."""

    _call: Any
    _call_result: Any

    def first_question(self) -> Any:
        return self._call.GetVariables(
            get_variable_data=[
                {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}
            ]
        )

    @on("BootNotification")
    def on_boot_notification(self, **_: Any) -> Any:
        self.accept_boot()
        return self._call_result.BootNotification(
            current_time=utc_now(), interval=self.owner.heartbeat_interval, status="Accepted"
        )

    @on("Heartbeat")
    def on_heartbeat(self, **_: Any) -> Any:
        return self._call_result.Heartbeat(current_time=utc_now())

    @on("StatusNotification")
    def on_status_notification(self, **_: Any) -> Any:
        return self._call_result.StatusNotification()

    @on("Authorize")
    def on_authorize(self, **_: Any) -> Any:
        return self._call_result.Authorize(id_token_info={"status": "Accepted"})

    @on("TransactionEvent")
    def on_transaction_event(self, id_token: dict[str, Any] | None = None, **_: Any) -> Any:
        if id_token is None:
            return self._call_result.TransactionEvent()
        return self._call_result.TransactionEvent(id_token_info={"status": "Accepted"})

    @on("MeterValues")
    def on_meter_values(self, **_: Any) -> Any:
        return self._call_result.MeterValues()

    @on("DataTransfer")
    def on_data_transfer(self, **_: Any) -> Any:
        return self._call_result.DataTransfer(status="Accepted")

    @on("NotifyReport")
    def on_notify_report(self, **_: Any) -> Any:
        return self._call_result.NotifyReport()

    @on("FirmwareStatusNotification")
    def on_firmware_status_notification(self, **_: Any) -> Any:
        return self._call_result.FirmwareStatusNotification()


class _PeerV201(_Peer2x):
    _call = call201
    _call_result = result201
    _ocpp_version = "2.0.1"


class _PeerV21(RejectUnrouted, _Peer2x):
    _call = call21
    _call_result = result21
    _ocpp_version = "2.1"


_PEER_CLASSES: dict[str, type[_Peer]] = {
    "ocpp1.6": _PeerV16,
    "ocpp2.0.1": _PeerV201,
    "ocpp2.1": _PeerV21,
}


class SimCsms:
    """A CSMS that accepts every station and answers Accepted to everything.

    ``overrides`` maps an action name to a replacement handler: it is called with the
    request payload as snake_case keyword arguments and returns the ocpp
    ``call_result`` dataclass to answer with, e.g.
    ``{"Authorize": lambda **_: call_result.Authorize(id_tag_info={"status": "Invalid"})}``.
    The answer is still schema-validated, so it must suit the station's version.
    """

    def __init__(
        self,
        *,
        subprotocols: Sequence[str] = ALL_SUBPROTOCOLS,
        heartbeat_interval: int = 300,
        basic_auth: dict[str, str] | None = None,
        initiate: bool = False,
        overrides: dict[str, Callable[..., Any]] | None = None,
        on_event: Callable[[str, str], None] | None = None,
    ) -> None:
        unknown = set(subprotocols) - set(ALL_SUBPROTOCOLS)
        if unknown:
            raise ValueError(f"unsupported subprotocols: {sorted(unknown)}")
        self.subprotocols = tuple(subprotocols)
        self.heartbeat_interval = heartbeat_interval
        self.basic_auth = basic_auth
        self.initiate = initiate
        self.overrides: dict[str, Callable[..., Any]] = dict(overrides or {})
        # Told (identity, what happened) as stations come, boot and go: the CLI prints it.
        self.on_event = on_event
        self.transcripts: dict[str, Transcript] = {}
        self.connected: set[str] = set()
        self._peers: dict[str, _Peer] = {}
        self._boots: dict[str, asyncio.Event] = {}
        self._transaction_ids = itertools.count(1)
        self._server: Server | None = None
        self._host = "127.0.0.1"
        self._port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await serve(
            self._handle,
            host,
            port,
            select_subprotocol=self._select_subprotocol,
            process_request=self._check_auth if self.basic_auth is not None else None,
            compression=None,  # stations rarely negotiate permessage-deflate
        )
        self._host = host
        self._port = self._server.sockets[0].getsockname()[1]

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"ws://{host}:{self._port}"

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()  # closes every connection, which ends its handler
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> Self:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def call(self, identity: str, payload: Any) -> Any:
        """Send a CSMS-initiated CALL to a connected station and return its answer.

        ``payload`` is an ocpp ``call`` dataclass of the station's version. A
        CALLERROR raises the matching ocpp exception; KeyError if not connected.
        """
        return await self._peers[identity].call(payload, suppress=False)

    async def wait_booted(self, identity: str) -> None:
        """Return once ``identity`` has had a BootNotification accepted."""
        await self._boot_event(identity).wait()

    def next_transaction_id(self) -> int:
        return next(self._transaction_ids)

    def _boot_event(self, identity: str) -> asyncio.Event:
        return self._boots.setdefault(identity, asyncio.Event())

    def _tell(self, identity: str, what: str) -> None:
        if self.on_event is not None:
            self.on_event(identity, what)

    def _booted(self, peer: _Peer) -> None:
        self._tell(peer.id, "booted (Accepted)")
        self._boot_event(peer.id).set()
        if self.initiate:
            peer.spawn(self._ask_first_question(peer))

    async def _ask_first_question(self, peer: _Peer) -> None:
        try:
            await peer.call(peer.first_question(), suppress=False)
        except (OCPPError, ConnectionClosed, TimeoutError) as error:
            # A simulator must not crash on a station that says no or hangs up.
            log.warning("%s: CSMS-initiated call failed: %r", peer.id, error)

    def _select_subprotocol(
        self, connection: ServerConnection, offered: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        # The station's preference wins (websockets would use the server's order), and
        # no match returns None so the handshake completes without the header and the
        # handler can close with 1002 instead of websockets answering HTTP 400.
        return next((p for p in offered if p in self.subprotocols), None)

    def _check_auth(self, connection: ServerConnection, request: Request) -> Response | None:
        # OCPP security profile 1: the Basic username is the station identity.
        identity = identity_from_path(request.path)
        expected = (self.basic_auth or {}).get(identity)
        try:
            username, password = parse_authorization_basic(request.headers["Authorization"])
        except (KeyError, InvalidHeader):
            return _unauthorized(connection)
        if (
            expected is None
            or username != identity
            or not hmac.compare_digest(password.encode(), expected.encode())
        ):
            return _unauthorized(connection)
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None  # set once the handshake has succeeded
        identity = identity_from_path(ws.request.path)
        if ws.subprotocol is None:
            self._tell(identity, "refused: no supported OCPP subprotocol offered (closed 1002)")
            await ws.close(CloseCode.PROTOCOL_ERROR, "unsupported subprotocol")
            return
        self._tell(identity, f"connected ({ws.subprotocol})")
        transcript = Transcript()
        self.transcripts[identity] = transcript  # a reconnect starts a fresh one
        connection = RecordingConnection(ws, transcript, side="csms")
        peer = _PEER_CLASSES[ws.subprotocol](identity, connection, self)
        self._peers[identity] = peer
        self.connected.add(identity)
        try:
            await peer.start()
        except ConnectionClosed:
            pass  # the station hanging up is how every session ends
        finally:
            await self._forget(peer)
            code = ws.close_code
            self._tell(identity, f"disconnected ({'-' if code is None else code})")

    async def _forget(self, peer: _Peer) -> None:
        if self._peers.get(peer.id) is peer:
            del self._peers[peer.id]
            self.connected.discard(peer.id)
        for task in list(peer.tasks):
            task.cancel()
        await asyncio.gather(*peer.tasks, return_exceptions=True)


def _unauthorized(connection: ServerConnection) -> Response:
    response = connection.respond(HTTPStatus.UNAUTHORIZED, "Unauthorized\n")
    response.headers["WWW-Authenticate"] = 'Basic realm="ocpp"'
    return response
