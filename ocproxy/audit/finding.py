"""What the audit finds: one rule broken by one frame (or by a connection)."""

from __future__ import annotations

from dataclasses import dataclass

from ocproxy.audit.rules import Severity


@dataclass(frozen=True, slots=True)
class Finding:
    connection_id: str
    seq: int | None  # None for a finding about the connection itself
    ts: float
    rule: str
    severity: Severity
    message: str
    path: str | None = None
