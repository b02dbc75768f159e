"""The opening handshake, as pure functions: identity, subprotocols, headers, upstream URL.

The proxy decides here what crosses from one leg to the other; keeping it pure makes
"transparent" testable with literal header lists.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from enum import StrEnum
from urllib.parse import unquote, urlsplit


class OcppVersion(StrEnum):
    V16 = "1.6"
    V20 = "2.0"
    V201 = "2.0.1"
    V21 = "2.1"


SUBPROTOCOL_VERSIONS: dict[str, OcppVersion] = {
    "ocpp1.6": OcppVersion.V16,
    "ocpp2.0": OcppVersion.V20,
    "ocpp2.0.1": OcppVersion.V201,
    "ocpp2.1": OcppVersion.V21,
}

# RFC 9110 §7.6.1 hop-by-hop headers, plus the ones each WebSocket leg negotiates
# for itself. Sec-WebSocket-Protocol is carried separately (as the offered list).
_LEG_LOCAL_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
    }
)

REDACTED = "[redacted]"
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization"})


def ocpp_version(subprotocol: str | None) -> OcppVersion | None:
    """The OCPP version a negotiated subprotocol stands for, or None if unknown."""
    if subprotocol is None:
        return None
    return SUBPROTOCOL_VERSIONS.get(subprotocol.strip().lower())


def identity_from_path(path: str) -> str:
    """The charge point identity: the last path segment, percent-decoded.

    ``/ocpp/RDAM%20123?x=1`` is ``RDAM 123``. An empty last segment gives ``""``;
    whether that is acceptable is the auditor's call, not the parser's.
    """
    raw_path = urlsplit(path).path if "?" in path or "#" in path else path
    return unquote(raw_path.rsplit("/", 1)[-1])


def offered_subprotocols(header_values: Iterable[str]) -> list[str]:
    """Every subprotocol the charger offered, in order, across repeated headers."""
    offered: list[str] = []
    for value in header_values:
        offered.extend(item.strip() for item in value.split(",") if item.strip())
    return offered


def end_to_end_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers that cross to the other leg: all but hop-by-hop and per-leg WebSocket ones.

    Headers named in ``Connection`` are hop-by-hop too (RFC 9110 §7.6.1).
    """
    items = list(headers)
    named = {
        token.strip().lower()
        for name, value in items
        if name.lower() == "connection"
        for token in value.split(",")
    }
    return [
        (name, value)
        for name, value in items
        if name.lower() not in _LEG_LOCAL_HEADERS and name.lower() not in named
    ]


def upstream_url(base: str, request_path: str) -> str:
    """``base`` with any trailing ``/`` stripped, plus the charger's path and query unchanged."""
    return base.rstrip("/") + request_path


def redact_url(url: str) -> str:
    """A URL as stored: any ``user:password@`` becomes ``user:[redacted]@``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username}:{REDACTED}@{host}").geturl()


def basic_auth_username(authorization: str | None) -> str | None:
    """The user name of an HTTP Basic ``Authorization`` value, None if not Basic or unreadable."""
    if not authorization:
        return None
    scheme, token = _split_credentials(authorization)
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token, validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return None
    if ":" not in decoded:
        # Not user-id ":" password (RFC 7617): the whole value may be the secret.
        return None
    return decoded.partition(":")[0]


def redact_authorization(authorization: str) -> str:
    """Keep the scheme (and a Basic user name); never the password or token."""
    scheme, credentials = _split_credentials(authorization)
    if not credentials:
        # A bare value (a token with no scheme) may itself be the secret.
        return REDACTED
    username = basic_auth_username(authorization)
    if username is not None:
        return f"{scheme} {username}:{REDACTED}"
    return f"{scheme} {REDACTED}"


def _split_credentials(authorization: str) -> tuple[str, str]:
    """``(scheme, credentials)``, split at the first run of any whitespace."""
    parts = authorization.split(None, 1)
    if not parts:
        return "", ""
    return parts[0], parts[1].strip() if len(parts) > 1 else ""


def headers_for_record(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Handshake headers as stored: the Authorization secret is never kept."""
    return [
        (name, redact_authorization(value) if name.lower() in _SECRET_HEADERS else value)
        for name, value in headers
    ]
