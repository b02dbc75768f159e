"""Simulated OCPP peers (a CSMS and charging stations) built on the ``ocpp`` package.

Used by ``ocproxy demo``, by the tests that run real peers through the proxy, and by
the benchmark. Each peer keeps a :class:`Transcript` of exactly what it sent and
received, so what the proxy recorded can be checked against both ends.
"""

from ocproxy.sim.charger import (
    SUBPROTOCOL_BY_VERSION,
    ChargerSpec,
    NoSubprotocolError,
    charger_url,
    run_charger,
)
from ocproxy.sim.csms import ALL_SUBPROTOCOLS, SimCsms, identity_from_path
from ocproxy.sim.transcript import (
    TO_CHARGER,
    TO_CSMS,
    RecordingConnection,
    Transcript,
    WireMessage,
)

__all__ = [
    "ALL_SUBPROTOCOLS",
    "SUBPROTOCOL_BY_VERSION",
    "TO_CHARGER",
    "TO_CSMS",
    "ChargerSpec",
    "NoSubprotocolError",
    "RecordingConnection",
    "SimCsms",
    "Transcript",
    "WireMessage",
    "charger_url",
    "identity_from_path",
    "run_charger",
]
