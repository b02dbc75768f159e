"""Findings about a connection itself: its handshake, identity and credentials."""

from __future__ import annotations

from ocproxy.audit import checks
from ocproxy.audit.finding import Finding
from ocproxy.audit.rules import RULES
from ocproxy.core.events import ConnectionOpened
from ocproxy.core.handshake import OcppVersion

# The handshake status the proxy records for a charger whose TLS handshake failed
# (``ocproxy.proxy.server.TLS_HANDSHAKE_FAILED``, nginx's 495): no HTTP request was read.
TLS_HANDSHAKE_FAILED = 495


def connection_findings(event: ConnectionOpened, version: OcppVersion | None) -> list[Finding]:
    if event.handshake_status == TLS_HANDSHAKE_FAILED or not event.path:
        # Given up before any HTTP request was read (a failed TLS handshake, a request
        # never completed: no path): no path, identity, subprotocol offer,
        # Authorization header or verified certificate to check. (A handshake the CSMS
        # refused, 401 or 404, did carry the charger's request: its rules still apply.)
        return []
    findings: list[Finding] = []

    def add(rule: str, message: str) -> None:
        findings.append(
            Finding(event.connection_id, None, event.ts, rule, RULES[rule].severity, message)
        )

    unknown = checks.unknown_subprotocols(event.offered_subprotocols)
    if unknown:
        add("unknown-subprotocol", f"charger offered unknown subprotocol(s) {', '.join(unknown)}")
    if not event.offered_subprotocols:
        add("no-subprotocol", "charger offered no subprotocol")
    elif event.handshake_status == 101 and event.subprotocol is None:
        add("no-subprotocol", "CSMS chose none of the offered subprotocols")
    suspicious = checks.suspicious_identity(event.identity)
    if suspicious is not None:
        add("suspicious-identity", suspicious)
    problem = checks.identity_problem(version, event.identity)
    if problem is not None:
        add("identity-invalid", problem)
    common_name = event.client_cert_common_name
    if event.client_cert_subject is not None and common_name != event.identity:
        add(
            "client-cert-identity-mismatch",
            f"client certificate is issued to {common_name!r}, identity is {event.identity!r}",
        )
    username = checks.recorded_basic_username(event.request_headers)
    if username is not None and username != event.identity:
        add(
            "basic-auth-username-mismatch",
            f"Basic-auth user name {username!r} differs from identity {event.identity!r}",
        )
    return findings
