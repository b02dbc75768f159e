"""Opening the CSMS leg on the charger's behalf, and mirroring the outcome back.

The CSMS leg is opened *during* the charger's handshake, so the charger can be given
exactly what the CSMS answered: its subprotocol choice, or its refusal (status,
``WWW-Authenticate``, body), or a 502 when it cannot be reached.
"""

from __future__ import annotations

import http
from dataclasses import dataclass

from websockets.asyncio.client import connect
from websockets.datastructures import Headers
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from ocproxy.core.events import ClosedBy
from ocproxy.core.handshake import end_to_end_headers
from ocproxy.proxy.config import ProxyConfig
from ocproxy.proxy.deflate import offers
from ocproxy.proxy.legs import RelayedCsmsLeg
from ocproxy.proxy.tls import PeerCertificate, forwarded_client_cert, upstream_context

_CLIENT_CERT_HEADERS = frozenset({"x-forwarded-client-cert", "client-cert", "client-cert-chain"})

# Response headers websockets writes itself on the charger leg.
_OWN_RESPONSE_HEADERS = frozenset({"date", "content-type"})


@dataclass(frozen=True)
class Refusal:
    """The CSMS leg could not be opened: what the charger gets instead."""

    response: Response
    detail: str
    refused_by: ClosedBy


def csms_request_headers(
    request: Request, peer: PeerCertificate | None, forward_client_cert: bool
) -> list[tuple[str, str]]:
    """The charger's end-to-end headers, without any client-certificate header it sent
    (only the proxy vouches for a certificate), plus the verified one if asked to."""
    headers = [
        (name, value)
        for name, value in end_to_end_headers(request.headers.raw_items())
        if name.lower() not in _CLIENT_CERT_HEADERS
    ]
    if forward_client_cert and peer is not None:
        headers.append(("X-Forwarded-Client-Cert", forwarded_client_cert(peer)))
    return headers


async def open_csms_leg(
    url: str,
    request: Request,
    offered: list[str],
    config: ProxyConfig,
    *,
    identity: str = "",
    peer: PeerCertificate | None = None,
) -> RelayedCsmsLeg | Refusal:
    """Connect to the CSMS offering the charger's subprotocols and end-to-end headers."""
    tls = None
    if url.startswith("wss:"):
        cert, key = config.client_cert_for(identity)
        tls = upstream_context(config.upstream_ca, cert, key, config.insecure_upstream)
    try:
        leg = await connect(
            url,
            ssl=tls,
            subprotocols=[Subprotocol(p) for p in offered] or None,
            additional_headers=csms_request_headers(request, peer, config.forward_client_cert),
            user_agent_header=None,  # the charger's own User-Agent, if any, is forwarded
            open_timeout=config.connect_timeout,
            # After the handshake the relay reads and writes this leg itself: its own
            # keepalive, close and size limit; compression is the charger's offer.
            ping_interval=None,
            close_timeout=config.close_timeout,
            compression=None,
            extensions=offers(request.headers.get_all("Sec-WebSocket-Extensions")) or None,
            create_connection=RelayedCsmsLeg,
            proxy=None,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        return Refusal(mirror_refusal(exc.response), f"CSMS refused: HTTP {status}", ClosedBy.CSMS)
    except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
        detail = f"CSMS unreachable: {type(exc).__name__}: {exc}".strip()
        return Refusal(bad_gateway(detail), detail, ClosedBy.PROXY)
    assert isinstance(leg, RelayedCsmsLeg)
    return leg


def mirror_refusal(upstream: Response) -> Response:
    """The CSMS's refusal as the charger should see it: same status, headers and body."""
    headers = Headers(
        (name, value)
        for name, value in end_to_end_headers(upstream.headers.raw_items())
        if name.lower() not in ("content-length",)
    )
    body = upstream.body or b""
    headers["Content-Length"] = str(len(body))
    headers["Connection"] = "close"
    return Response(upstream.status_code, upstream.reason_phrase, headers, body)


def bad_gateway(detail: str) -> Response:
    return _plain(http.HTTPStatus.BAD_GATEWAY, f"{detail}\n")


def forbidden(detail: str) -> Response:
    return _plain(http.HTTPStatus.FORBIDDEN, f"{detail}\n")


def not_found(detail: str) -> Response:
    return _plain(http.HTTPStatus.NOT_FOUND, f"{detail}\n")


def _plain(status: http.HTTPStatus, text: str) -> Response:
    body = text.encode()
    headers = Headers(
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)


def copy_response_headers(upstream: Response, response: Response) -> None:
    """Give the charger the CSMS's end-to-end response headers (Server, Set-Cookie, ...)."""
    for name, value in end_to_end_headers(upstream.headers.raw_items()):
        if name.lower() not in _OWN_RESPONSE_HEADERS:
            response.headers[name] = value
