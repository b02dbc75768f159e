"""Stateless checks: error-code spelling, naive timestamps, identity, handshake.

Pure functions over literal values; the :mod:`auditor` strings them together.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from ocproxy.audit.rules import Severity
from ocproxy.audit.schemas import is_naive_timestamp
from ocproxy.core.handshake import REDACTED, SUBPROTOCOL_VERSIONS, OcppVersion

_COMMON_CODES = frozenset(
    {
        "NotImplemented",
        "NotSupported",
        "InternalError",
        "ProtocolError",
        "SecurityError",
        "PropertyConstraintViolation",
        "TypeConstraintViolation",
        "GenericError",
    }
)
ERROR_CODES: dict[OcppVersion, frozenset[str]] = {
    OcppVersion.V16: _COMMON_CODES | {"FormationViolation", "OccurenceConstraintViolation"},
    OcppVersion.V20: _COMMON_CODES
    | {
        "FormatViolation",
        "OccurrenceConstraintViolation",
        "RpcFrameworkError",
        "MessageTypeNotSupported",
    },
}
ERROR_CODES[OcppVersion.V201] = ERROR_CODES[OcppVersion.V20]
ERROR_CODES[OcppVersion.V21] = ERROR_CODES[OcppVersion.V20]

# 2.0.1 implementations disagree on this spelling: accepted, but worth a note.
_TOLERATED = {OcppVersion.V201: {"OccurenceConstraintViolation"}}


def error_code_problem(version: OcppVersion, code: str) -> tuple[Severity, str] | None:
    """Severity and message when ``code`` is not the version's spelling, else None."""
    if code in ERROR_CODES[version]:
        return None
    if code in _TOLERATED.get(version, set()):
        return Severity.INFO, (
            f"error code {code!r} is the 1.6 spelling; OCPP {version} spells "
            "OccurrenceConstraintViolation (both are seen in the field)"
        )
    hint = _closest(code, ERROR_CODES[version])
    suffix = f" (did you mean {hint!r}?)" if hint else ""
    return Severity.ERROR, f"error code {code!r} is not defined in OCPP {version}{suffix}"


def _closest(code: str, known: frozenset[str]) -> str | None:
    lowered = code.lower().replace("occurrence", "occurence").replace("formation", "format")
    for candidate in sorted(known):
        normal = candidate.lower().replace("occurrence", "occurence").replace("formation", "format")
        if normal == lowered:
            return candidate
    return None


# A quoted date-time without zone anywhere in the frame's bytes. Scanning the raw text
# in C first spares the walk over every string of every payload.
_NAIVE_IN_RAW = re.compile(rb'"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d(?::\d\d(?:\.\d+)?)?"')


def may_hold_naive_timestamp(raw: bytes | None) -> bool:
    return raw is None or _NAIVE_IN_RAW.search(raw) is not None


def naive_timestamps(
    payload: Any, path: str = "$", keys: frozenset[str] | None = None, key: str | None = None
) -> Iterator[tuple[str, str]]:
    """(JSON path, value) of every timestamp without zone in ``payload``.

    With ``keys``, only strings under those property names count (the version's
    date-time fields): a free-form string that merely looks like a time is not one.
    """
    if isinstance(payload, dict):
        for name, value in payload.items():
            yield from naive_timestamps(value, f"{path}.{name}", keys, name)
    elif isinstance(payload, list):
        for index, value in enumerate(payload):
            yield from naive_timestamps(value, f"{path}[{index}]", keys, key)
    elif isinstance(payload, str) and (keys is None or key in keys) and is_naive_timestamp(payload):
        yield path, payload


def identity_problem(version: OcppVersion | None, identity: str) -> str | None:
    if version not in (OcppVersion.V20, OcppVersion.V201, OcppVersion.V21):
        return None
    if len(identity) > 48:
        return f"identity has {len(identity)} characters; OCPP {version} allows at most 48"
    if ":" in identity:
        return f"identity {identity!r} contains ':', which OCPP {version} forbids"
    return None


def suspicious_identity(identity: str) -> str | None:
    """Why ``identity`` (already percent-decoded) is not a plain path segment, or None."""
    if identity in ("", ".", ".."):
        return f"identity {identity!r} is {'empty' if not identity else 'a dot segment'}"
    if "/" in identity:
        return f"identity {identity!r} contains '/' (%2F in the URL)"
    controls = sorted({c for c in identity if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0})
    if controls:
        shown = ", ".join(f"U+{ord(c):04X}" for c in controls)
        return f"identity {identity!r} contains control character(s) {shown}"
    return None


def unknown_subprotocols(offered: tuple[str, ...]) -> list[str]:
    """Offered subprotocols that are not exactly an OCPP one (case and spelling matter)."""
    return [p for p in offered if p not in SUBPROTOCOL_VERSIONS]


def recorded_basic_username(headers: tuple[tuple[str, str], ...]) -> str | None:
    """The Basic-auth user name kept in recorded headers (``Basic user:[redacted]``)."""
    for name, value in headers:
        if name.lower() != "authorization":
            continue
        scheme, _, rest = value.partition(" ")
        if scheme.lower() == "basic" and rest.endswith(f":{REDACTED}"):
            return rest[: -len(REDACTED) - 1]
    return None
