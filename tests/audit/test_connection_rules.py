"""Findings about a connection itself: subprotocol, identity, Basic-auth user name.

They carry no frame (``seq`` is None) and are produced when the connection opens.
"""

from __future__ import annotations

from typing import Any

import pytest

from ocproxy.audit.auditor import Finding
from ocproxy.audit.rules import RULES, Severity

from .helpers import CP, CS, Feed, heartbeat_response, only, rules

ALLOWED_48 = "C" * 48


def _open(**kwargs: Any) -> list[Finding]:
    _, found = Feed().open(**kwargs)
    return found


@pytest.mark.parametrize("subprotocol", ["ocpp1.6", "ocpp2.0", "ocpp2.0.1", "ocpp2.1"])
def test_clean_connection_has_no_finding(subprotocol: str) -> None:
    assert _open(subprotocol=subprotocol, identity="CP-1") == []


@pytest.mark.parametrize(
    ("kwargs", "rule", "message"),
    [
        ({"subprotocol": None, "offered": ()}, "no-subprotocol", "offered no subprotocol"),
        (
            {"subprotocol": None, "offered": ("ocpp1.6",)},
            "no-subprotocol",
            "CSMS chose none",
        ),
        (
            {"subprotocol": "ocpp1.6", "offered": ("ocpp1.6", "OCPP1.6J")},
            "unknown-subprotocol",
            "OCPP1.6J",
        ),
        (
            {"subprotocol": "ocpp2.0.1", "offered": ("ocpp2.0.1", "ocpp2.0.1 ")},
            "unknown-subprotocol",
            "ocpp2.0.1 ",
        ),
        (
            {"subprotocol": "ocpp2.0.1", "identity": ALLOWED_48 + "X"},
            "identity-invalid",
            "49 characters",
        ),
        ({"subprotocol": "ocpp2.1", "identity": "CP:1"}, "identity-invalid", "':'"),
        ({"subprotocol": "ocpp2.0", "identity": "CP:1"}, "identity-invalid", "':'"),
        (
            {
                "subprotocol": "ocpp2.0.1",
                "identity": "CP-1",
                "headers": [("Authorization", "Basic other:[redacted]")],
            },
            "basic-auth-username-mismatch",
            "'other' differs from identity 'CP-1'",
        ),
        (
            {
                "subprotocol": "ocpp1.6",
                "identity": "CP-1",
                "headers": [("authorization", "basic cp-1:[redacted]")],
            },
            "basic-auth-username-mismatch",  # identities are case-sensitive
            "'cp-1'",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_connection_finding(kwargs: dict[str, Any], rule: str, message: str) -> None:
    finding = only(_open(**kwargs))
    assert finding.rule == rule
    assert finding.severity == RULES[rule].severity
    assert message in finding.message
    assert finding.seq is None
    assert finding.path is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"subprotocol": "ocpp2.0.1", "identity": ALLOWED_48},
        {"subprotocol": "ocpp1.6", "identity": ALLOWED_48 + "X" * 100},
        {"subprotocol": "ocpp1.6", "identity": "CP:1"},
        {"subprotocol": "ocpp2.0.1", "headers": [("Authorization", "Basic CP-1:[redacted]")]},
        # not Basic, or no password recorded: nothing to compare
        {"subprotocol": "ocpp2.0.1", "headers": [("Authorization", "Bearer abc")]},
        {"subprotocol": "ocpp2.0.1", "headers": [("X-Other", "Basic x:[redacted]")]},
        # a refused handshake: no subprotocol chosen is no finding (the CSMS said no)
        {"subprotocol": None, "offered": ("ocpp1.6",), "status": 401},
    ],
)
def test_no_connection_finding(kwargs: dict[str, Any]) -> None:
    assert _open(**kwargs) == []


def test_tls_refusal_has_no_handshake_findings() -> None:
    """Refused at the TLS handshake (recorded as 495, as the proxy does): no HTTP request
    was read, so there is no offer, identity or header for a rule to judge."""
    from ocproxy.audit.auditor import TLS_HANDSHAKE_FAILED
    from ocproxy.proxy.server import TLS_HANDSHAKE_FAILED as RECORDED

    assert TLS_HANDSHAKE_FAILED == RECORDED == 495
    assert _open(subprotocol=None, identity="", offered=(), status=495) == []
    # whatever else the row holds, nothing about the handshake is judged
    assert (
        _open(
            subprotocol=None,
            identity="A:B",
            offered=("ocpp9",),
            headers=[("Authorization", "Basic other:[redacted]")],
            status=495,
        )
        == []
    )


@pytest.mark.parametrize("status", [401, 404, 502])
def test_handshake_refused_by_the_csms_is_still_audited(status: int) -> None:
    """The CSMS refused it, but the charger's request was read: its offer counts."""
    assert rules(_open(subprotocol=None, offered=(), status=status)) == ["no-subprotocol"]
    found = _open(subprotocol=None, offered=("ocpp1.6", "OCPP1.6J"), status=status)
    assert rules(found) == ["unknown-subprotocol"]


def test_several_connection_findings_at_once() -> None:
    found = _open(
        subprotocol="ocpp2.0.1",
        offered=("ocpp2.0.1", "ocpp9"),
        identity="A:B",
        headers=[("Authorization", "Basic other:[redacted]")],
    )
    assert rules(found) == [
        "unknown-subprotocol",
        "identity-invalid",
        "basic-auth-username-mismatch",
    ]
    assert {f.severity for f in found} == {Severity.WARNING, Severity.ERROR}


def test_no_subprotocol_connection_skips_schema_checks() -> None:
    """Without a version the schemas are unknown: only the RPC rules apply."""
    feed = Feed()
    connection_id, found = feed.open(subprotocol=None, offered=())
    assert rules(found) == ["no-subprotocol"]
    steps = [
        (CP, [2, "1", "BootNotification", {"nonsense": True}], 0.0),
        (CS, [3, "1", heartbeat_response()], 0.1),
        (CP, [2, "2", "Heartbeat", {}], 1.0),
        (CP, [2, "3", "Heartbeat", {}], 1.5),
    ]
    assert rules(feed.steps(connection_id, steps)) == ["outstanding-call"]
