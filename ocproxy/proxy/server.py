"""The listening side: accept chargers, open their CSMS legs, relay, shut down cleanly.

websockets calls ``_process_request`` during the charger's handshake; that is where
the CSMS leg is opened, so the charger's handshake answer can mirror the CSMS's.
A CSMS leg opened for a charger whose handshake then fails is closed at once (no
upstream connection outlives its charger's handshake).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import ssl
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import HeaderLineTooLong, RequestLineTooLong, TooManyHeaders
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from ocproxy.core.events import ClosedBy, ConfigReloaded, ConnectionClosed, ConnectionOpened
from ocproxy.core.handshake import (
    headers_for_record,
    identity_from_path,
    offered_subprotocols,
    redact_url,
)
from ocproxy.core.handshake import upstream_url as build_upstream_url
from ocproxy.errors import ConfigError, ProxyError
from ocproxy.memory import release_free_memory
from ocproxy.proxy.config import ProxyConfig
from ocproxy.proxy.deflate import accepted, charger_answer, deflate_of
from ocproxy.proxy.legs import RelayedChargerLeg, RelayedCsmsLeg, tls_charger_leg
from ocproxy.proxy.mirror import Mirror
from ocproxy.proxy.relay import Session, Timeouts
from ocproxy.proxy.tls import (
    PeerCertificate,
    check_upstream_tls,
    peer_certificate,
    server_context,
)
from ocproxy.proxy.upstream import (
    Refusal,
    copy_response_headers,
    forbidden,
    not_found,
    open_csms_leg,
)
from ocproxy.recorder.process import EventSink

# Recorded as the handshake status of a charger that hung up before it got an answer
# (the CSMS leg was open by then and is closed at once); nginx's convention.
CLIENT_CLOSED_REQUEST = 499
_COLLECT_AT_LEAST_S = 900.0  # see _keep_alive
# Recorded as the handshake status of a charger whose TLS handshake failed (nginx's 495,
# "SSL certificate error"); close_reason says what OpenSSL objected to.
TLS_HANDSHAKE_FAILED = 495
log = logging.getLogger("ocproxy.proxy")


@dataclass
class _Handshake:
    """What the charger's handshake learnt, carried from process_request to the handler."""

    connection_id: str
    identity: str
    offered: list[str]
    upstream_url: str | None
    opened_at: float
    peer: PeerCertificate | None = None
    csms: RelayedCsmsLeg | None = None


def wall_clock() -> float:
    """Seconds since the epoch, in whole microseconds: exactly what a TIMESTAMPTZ keeps,
    so timings computed live and from the recording agree to the last digit."""
    return time.time_ns() // 1000 / 1e6


class ProxyServer:
    """A running proxy. ``async with ProxyServer(config, recorder) as proxy: ...``"""

    def __init__(
        self, config: ProxyConfig, recorder: EventSink, clock: Callable[[], float] = wall_clock
    ) -> None:
        self.config = config
        self.recorder = recorder
        self.clock = clock
        self.sessions: set[Session] = set()
        self.opened = 0  # connections relayed since the start
        self._handshakes: dict[ServerConnection, _Handshake] = {}
        self._cleanups: set[asyncio.Task[None]] = set()
        self._server: Server | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._tls: ssl.SSLContext | None = None
        self.notes: list[str] = []  # start-up facts worth a line on the console
        self._dials = (
            asyncio.Semaphore(config.max_pending_dials) if config.max_pending_dials else None
        )

    @property
    def recorder_recovered(self) -> list[str]:
        """Earlier runs the recorder found crashed when it opened the file."""
        return list(getattr(self.recorder, "recovered", []))

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> ProxyServer:
        config = self.config
        self._tls = self._tls_context(config)
        self._check_upstream_tls(config)
        leg: type[RelayedChargerLeg] = RelayedChargerLeg
        if self._tls is not None:
            # The leg terminates TLS itself (asyncio would drop failed handshakes unseen);
            # it asks for the context at each handshake, so a reload takes effect.
            leg = tls_charger_leg(self._current_tls, config.connect_timeout, self._tls_failed)
        raise_open_files_limit(self.notes)

        def new_leg(*args: Any, **kwargs: Any) -> RelayedChargerLeg:
            charger = leg(*args, **kwargs)
            charger.abandoned = self._abandoned
            charger.request_timeout = config.connect_timeout + 5.0
            return charger

        try:
            self._server = await serve(
                self._handle,
                config.listen_host,
                config.listen_port,
                process_request=self._process_request,
                process_response=self._process_response,
                select_subprotocol=self._select_subprotocol,
                server_header=None,
                create_connection=new_leg,  # type: ignore[arg-type]  # a factory will do
                # The request has its own deadline (RelayedChargerLeg.request_timeout);
                # after it, opening the CSMS leg is bounded by --connect-timeout, and a
                # charger waiting for its turn to dial (--max-pending-dials) must not be
                # cut meanwhile.
                open_timeout=None,
                backlog=config.backlog,
                reuse_port=config.reuse_port or None,
                # After the handshake the relay reads and writes both legs itself (its
                # keepalive, close and size limit); compression is the CSMS's answer.
                ping_interval=None,
                close_timeout=config.close_timeout,
                compression=None,
            )
        except OSError as exc:
            raise ProxyError(
                f"cannot listen on {config.listen_host}:{config.listen_port}: {exc.strerror}"
            ) from exc
        if config.ping_interval:
            self._keepalive = asyncio.get_running_loop().create_task(self._keep_alive())
        return self

    async def _keep_alive(self) -> None:
        """One sweep over every connection per ping interval, not a task per leg."""
        interval = self.config.ping_interval or 20.0
        timeout = self.config.ping_timeout or float("inf")
        loop = asyncio.get_running_loop()
        opened, churned, collected = self.opened, False, loop.time()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for session in list(self.sessions):
                session.keepalive(now, timeout)
            # Handshakes leave reference cycles (websockets' connection objects) that the
            # rarely-run collector (collect_rarely) would keep for long: collect them in
            # the first sweep without new connections (not during a storm), or every 15
            # minutes while chargers keep coming.
            if self.opened != opened:
                opened, churned = self.opened, True
                if now - collected < _COLLECT_AT_LEAST_S:
                    continue
            if churned:
                gc.collect()
                release_free_memory()  # what the handshakes left in the allocator's arenas
                churned, collected = False, now

    @staticmethod
    def _tls_context(config: ProxyConfig) -> ssl.SSLContext | None:
        if not config.tls_cert:
            return None
        pairs = list(zip(config.tls_cert, config.tls_key, strict=True))
        return server_context(pairs, config.client_ca)

    @staticmethod
    def _check_upstream_tls(config: ProxyConfig) -> None:
        client_certs = {(config.upstream_client_cert, config.upstream_client_key)} | {
            (route.client_cert, route.client_key) for route in config.routes
        }
        check_upstream_tls(config.upstream_ca, config.insecure_upstream, client_certs)

    def _current_tls(self) -> ssl.SSLContext:
        assert self._tls is not None
        return self._tls

    def reload(self, config: ProxyConfig) -> tuple[str, ...]:
        """Use ``config`` for the connections from now on; live ones keep their CSMS leg.

        Routes, mirrors, timeouts and TLS files (certificates, keys, CAs, upstream client
        certificates, all loaded now) may change; the listen address, the recording and
        the charger-side TLS being on or off may not. Returns the settings that changed;
        raises ConfigError (and changes nothing) for a config that cannot be used. Each
        attempt is recorded in ``config_reloads``."""
        try:
            changes = self._reloadable(config)
            tls = self._tls_context(config)
            self._check_upstream_tls(config)
        except ConfigError as exc:
            self.reload_refused(str(exc))
            raise
        self.config = config
        self._tls = tls
        self.recorder.submit(ConfigReloaded(self.clock(), True, changes))
        return changes

    def reload_refused(self, why: str) -> None:
        """Record a reload that changed nothing (e.g. a config file that did not parse)."""
        self.recorder.submit(ConfigReloaded(self.clock(), False, (), why))

    def _reloadable(self, config: ProxyConfig) -> tuple[str, ...]:
        config.validate()
        old = self.config
        changes = tuple(
            f.name for f in fields(ProxyConfig) if getattr(old, f.name) != getattr(config, f.name)
        )
        fixed = {"listen_host", "listen_port", "db", "control", "control_token", "backlog"}
        fixed |= {"rotate", "recorder_memory"}  # the recording is opened once
        if bool(config.tls_cert) != bool(old.tls_cert):
            fixed.add("tls_cert")
        refused = sorted(fixed.intersection(changes))
        if refused:
            raise ConfigError(f"{', '.join(refused)} cannot change without a restart")
        return changes

    async def stop(
        self, code: int = 1001, reason: str = "proxy shutting down", *, drain: float = 0.0
    ) -> None:
        """Stop listening, then close every connection with ``code`` on both legs.

        With ``drain`` seconds, the connections are closed one by one, evenly spread over
        that time, so that the fleet reconnects to the CSMS at a pace instead of at once."""
        if self._server is None:
            return
        self._server.close(close_connections=False)
        sessions = sorted(self.sessions, key=lambda session: session.opened_at)
        step = drain / len(sessions) if sessions and drain > 0 else 0.0
        await asyncio.gather(
            *(self._close_later(s, i * step, code, reason) for i, s in enumerate(sessions))
        )
        if self._keepalive is not None:
            self._keepalive.cancel()
        await self._server.wait_closed()
        if self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)

    @staticmethod
    async def _close_later(session: Session, delay: float, code: int, reason: str) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        await session.shutdown(code, reason)

    async def __aenter__(self) -> ProxyServer:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- the charger's handshake ---------------------------------------------------

    async def _process_request(
        self, charger: ServerConnection, request: Request
    ) -> Response | None:
        assert isinstance(charger, RelayedChargerLeg)
        identity = identity_from_path(request.path)
        offered = offered_subprotocols(request.headers.get_all("Sec-WebSocket-Protocol"))
        base = self.config.upstream_for(identity)
        url = None if base is None else build_upstream_url(base, request.path)
        shake = _Handshake(str(uuid.uuid4()), identity, offered, url, self.clock())
        shake.peer = peer_certificate(charger.transport.get_extra_info("ssl_object"))
        refusal = self._client_cert_refusal(shake)
        if refusal is not None:
            self._record_open(charger, request, shake, refusal)
            self._record_refusal(shake, ClosedBy.PROXY, "client certificate does not match")
            return refusal
        if url is None:
            response = not_found(f"no upstream configured for identity {identity!r}")
            self._record_open(charger, request, shake, response)
            self._record_refusal(shake, ClosedBy.PROXY, "no upstream for this identity")
            return response
        # From here this request records its own row, whatever the dial's outcome: a
        # charger hanging up meanwhile must not leave a second one (499 and then 502).
        charger.settled = True
        try:
            outcome = await self._dial(url, request, shake)
        except asyncio.CancelledError:
            self._abandoned(charger)  # the proxy stopping mid-dial: recorded all the same
            raise
        if isinstance(outcome, Refusal):
            self._record_open(charger, request, shake, outcome.response)
            self._record_refusal(shake, outcome.refused_by, outcome.detail)
            return outcome.response
        shake.csms = outcome
        self._handshakes[charger] = shake
        charger.connection_lost_waiter.add_done_callback(lambda _: self._abandon(charger))
        return None

    async def _dial(
        self, url: str, request: Request, shake: _Handshake
    ) -> RelayedCsmsLeg | Refusal:
        """Open the CSMS leg, in turn when --max-pending-dials bounds how many at once."""
        dial = open_csms_leg(
            url, request, shake.offered, self.config, identity=shake.identity, peer=shake.peer
        )
        if self._dials is None:
            return await dial
        async with self._dials:
            return await dial

    def _abandoned(self, charger: RelayedChargerLeg) -> None:
        """An accepted connection ended before its handshake was answered: record why."""
        status, reason = _abandon_reason(charger, self.config.connect_timeout + 5.0)
        remote = charger.remote_address
        now = self.clock()
        connection_id = str(uuid.uuid4())
        request = charger.request
        self.recorder.submit(
            ConnectionOpened(
                connection_id=connection_id,
                ts=now,
                identity="" if request is None else identity_from_path(request.path),
                path="" if request is None else request.path,
                remote_addr=None if remote is None else f"{remote[0]}:{remote[1]}",
                offered_subprotocols=(),
                subprotocol=None,
                upstream_url=None,
                handshake_status=status,
                run_id=self.recorder.run_id,
            )
        )
        by = ClosedBy.PROXY if status in (400, 408, 414, 431) else ClosedBy.CHARGER
        self.recorder.submit(ConnectionClosed(connection_id, now, None, reason, by))

    def _client_cert_refusal(self, shake: _Handshake) -> Response | None:
        """With --strict-client-cert, a certificate issued to another identity is refused."""
        peer = shake.peer
        if not self.config.strict_client_cert or peer is None:
            return None
        if peer.common_name == shake.identity:
            return None
        return forbidden(
            f"client certificate is issued to {peer.common_name!r}, "
            f"not to identity {shake.identity!r}"
        )

    def _select_subprotocol(
        self, charger: ServerConnection, offered: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        shake = self._handshakes.get(charger)
        if shake is None or shake.csms is None:
            return None
        return shake.csms.subprotocol

    async def _process_response(
        self, charger: ServerConnection, request: Request, response: Response
    ) -> Response | None:
        shake = self._handshakes.get(charger)
        if shake is None or shake.csms is None:
            return None
        if response.status_code == 101:
            assert shake.csms.response is not None
            copy_response_headers(shake.csms.response, response)
            negotiated = accepted(shake.csms.protocol.extensions)
            if negotiated is not None:
                response.headers["Sec-WebSocket-Extensions"] = charger_answer(negotiated)
            return None
        # websockets refused the charger's request itself (e.g. a malformed header).
        del self._handshakes[charger]
        self._record_open(charger, request, shake, response)
        self._record_refusal(shake, ClosedBy.PROXY, "charger handshake refused")
        await shake.csms.close(1001, "charger handshake failed")
        return None

    def _abandon(self, charger: ServerConnection) -> None:
        """The charger's TCP connection is gone; close its CSMS leg if no handler took it."""
        shake = self._handshakes.pop(charger, None)
        if shake is None or shake.csms is None:
            return
        if charger.request is not None:
            gone = Response(CLIENT_CLOSED_REQUEST, "Client Closed Request", Headers())
            self._record_open(charger, charger.request, shake, gone)
            self._record_refusal(shake, ClosedBy.CHARGER, "charger disconnected during handshake")
        task = asyncio.get_running_loop().create_task(shake.csms.close(1001, "charger gone"))
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    # -- relaying -----------------------------------------------------------------

    async def _handle(self, charger: ServerConnection) -> None:
        assert isinstance(charger, RelayedChargerLeg)
        shake = self._handshakes.pop(charger, None)
        if shake is None or shake.csms is None:  # pragma: no cover - websockets guarantees
            await charger.close(1011, "proxy lost the CSMS leg")
            return
        assert charger.request is not None
        assert charger.response is not None
        self._record_open(charger, charger.request, shake, charger.response)
        route = self.config.mirror_for(shake.identity)
        mirror = (
            None
            if route is None
            else Mirror(route, charger.request, self.config, self.recorder, self.clock)
        )
        session = Session(
            shake.connection_id,
            shake.identity,
            charger,
            shake.csms,
            self.recorder,
            self.clock,
            mirror,
            deflate=deflate_of(accepted(shake.csms.protocol.extensions)),
            timeouts=Timeouts(self.config.close_timeout, self.config.max_message_size),
        )
        self.sessions.add(session)
        self.opened += 1
        # Callbacks drive the session from here; websockets' handler (this) ends now and
        # its connection objects are freed: a live charger costs a few small objects.
        session.start(self.sessions.discard)

    def _record_open(
        self, charger: ServerConnection, request: Request, shake: _Handshake, response: Response
    ) -> None:
        if isinstance(charger, RelayedChargerLeg):
            charger.settled = True
        remote = charger.remote_address
        peer = shake.peer
        self.recorder.submit(
            ConnectionOpened(
                connection_id=shake.connection_id,
                ts=shake.opened_at,
                identity=shake.identity,
                path=request.path,
                remote_addr=None if remote is None else f"{remote[0]}:{remote[1]}",
                offered_subprotocols=tuple(shake.offered),
                subprotocol=charger.subprotocol if response.status_code == 101 else None,
                upstream_url=None if shake.upstream_url is None else redact_url(shake.upstream_url),
                handshake_status=response.status_code,
                request_headers=tuple(headers_for_record(request.headers.raw_items())),
                response_headers=tuple(response.headers.raw_items()),
                run_id=self.recorder.run_id,
                tls_version=_tls_version(charger),
                client_cert_subject=peer.subject if peer else None,
                client_cert_common_name=peer.common_name if peer else None,
                client_cert_serial=peer.serial if peer else None,
                client_cert_fingerprint=peer.fingerprint_sha256 if peer else None,
                insecure_upstream=bool(
                    self.config.insecure_upstream
                    and shake.upstream_url
                    and shake.upstream_url.startswith("wss:")
                ),
            )
        )

    def _tls_failed(self, remote: str | None, reason: str) -> None:
        """A charger's TLS handshake failed: log it and record a refused connection."""
        log.warning("charger %s: %s", remote or "?", reason)
        now = self.clock()
        connection_id = str(uuid.uuid4())
        self.recorder.submit(
            ConnectionOpened(
                connection_id=connection_id,
                ts=now,
                identity="",
                path="",
                remote_addr=remote,
                offered_subprotocols=(),
                subprotocol=None,
                upstream_url=None,
                handshake_status=TLS_HANDSHAKE_FAILED,
                run_id=self.recorder.run_id,
            )
        )
        self.recorder.submit(ConnectionClosed(connection_id, now, None, reason, ClosedBy.PROXY))

    def _record_refusal(self, shake: _Handshake, by: ClosedBy, detail: str) -> None:
        self.recorder.submit(ConnectionClosed(shake.connection_id, self.clock(), None, detail, by))


def _abandon_reason(charger: RelayedChargerLeg, timeout: float) -> tuple[int, str]:
    """The HTTP status recorded for an attempt given up before its handshake, and why."""
    if charger.timed_out:
        return 408, f"no complete HTTP request within {timeout:g} s"
    exc = charger.protocol.handshake_exc
    if isinstance(exc, RequestLineTooLong):
        return 414, f"request line too long: {exc}"
    if isinstance(exc, HeaderLineTooLong | TooManyHeaders):
        return 431, f"request headers too large: {exc}"
    if exc is not None and not isinstance(exc.__cause__, EOFError):
        cause = exc.__cause__
        detail = f"{exc}: {cause}" if cause is not None else str(exc)
        return 400, f"malformed HTTP request: {detail}"
    if charger.request is None:
        return (
            CLIENT_CLOSED_REQUEST,
            "charger closed the connection before its request was complete",
        )
    return CLIENT_CLOSED_REQUEST, "charger disconnected during handshake"


def collect_rarely() -> None:
    """Tune the cyclic garbage collector for a long-running relay, once it is started.

    A charger's connection allocates a few hundred long-lived objects, so a reconnect
    storm trips the collector's thresholds again and again, and each full collection
    walks every object of every live connection: in a storm of 1,500 chargers, half the
    relay's CPU (0.73 s of 1.48) went to the collector. What start-up built is frozen
    out of its sight; young objects are collected every 50,000 allocations, not 700.
    Relaying a frame allocates nothing that outlives it (measured: not one collection in
    3 s of 100 chargers' round trips, default thresholds), so this costs nothing there."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


def raise_open_files_limit(notes: list[str]) -> None:
    """Raise the soft open-files limit to the hard one: each charger takes two."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    except (ValueError, OSError):  # not allowed here: say what we have
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    room = max(soft - 64, 0) // 2
    if room < _FLEET:
        notes.append(
            f"open-files limit {soft} leaves room for about {room} chargers "
            "(two files each); raise the hard limit (ulimit -Hn, systemd LimitNOFILE=)"
        )


_FLEET = 10_000  # chargers a proxy should be able to hold without a word


def _tls_version(charger: ServerConnection) -> str | None:
    ssl_object = charger.transport.get_extra_info("ssl_object")
    return None if ssl_object is None else str(ssl_object.version())
