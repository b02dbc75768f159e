"""Audit reports: findings grouped per charger and rule, as a rich table, JSON or JUnit."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from xml.etree import ElementTree as ET

from rich.console import Group as RichGroup
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from ocproxy.audit.auditor import Finding
from ocproxy.audit.offline import FrameRef
from ocproxy.audit.rules import RULES, Severity

_SEVERITY_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "dim"}


@dataclass(frozen=True)
class Group:
    identity: str
    rule: str
    severity: Severity  # the highest among the group's findings
    count: int
    first_seen: float
    last_seen: float
    example: Finding
    example_raw: bytes | None


def group(
    findings: list[Finding], evidence: dict[tuple[str, int], FrameRef], identities: dict[str, str]
) -> list[Group]:
    """One group per (identity, rule), worst severity first, then by count."""
    buckets: dict[tuple[str, str], list[Finding]] = {}
    for finding in findings:
        key = (identities.get(finding.connection_id, "?"), finding.rule)
        buckets.setdefault(key, []).append(finding)
    groups = []
    for (identity, rule), items in buckets.items():
        cited = next((f for f in items if f.seq is not None), items[0])
        ref = evidence.get((cited.connection_id, cited.seq)) if cited.seq is not None else None
        groups.append(
            Group(
                identity,
                rule,
                max(f.severity for f in items),
                len(items),
                min(f.ts for f in items),
                max(f.ts for f in items),
                cited,
                None if ref is None else ref.raw,
            )
        )
    return sorted(groups, key=lambda g: (-g.severity, g.identity, -g.count, g.rule))


def table(groups: list[Group], connections: int) -> RenderableType:
    """A title line, then a row per charger and rule."""
    title = f"ocproxy audit: {sum(g.count for g in groups)} findings over {connections} connections"
    # The title is a line of its own: a table's title wraps at the table's width.
    out = Table(show_lines=False)
    for name in ("charger", "rule", "severity", "count", "first seen", "last seen"):
        out.add_column(name, justify="right" if name == "count" else "left", no_wrap=True)
    out.add_column("example", overflow="fold", min_width=30)
    for g in groups:
        out.add_row(
            g.identity,
            g.rule,
            Text(str(g.severity), _SEVERITY_STYLE[g.severity]),
            str(g.count),
            _time(g.first_seen),
            _time(g.last_seen),
            _example(g),
        )
    return RichGroup(Text(title, style="italic"), out)


def to_json(groups: list[Group], findings: list[Finding], identities: dict[str, str]) -> str:
    document = {
        "summary": [
            {
                "identity": g.identity,
                "rule": g.rule,
                "severity": str(g.severity),
                "count": g.count,
                "first_seen": _iso(g.first_seen),
                "last_seen": _iso(g.last_seen),
                "example": {
                    "connection_id": g.example.connection_id,
                    "seq": g.example.seq,
                    "message": g.example.message,
                    "path": g.example.path,
                    "frame": _text(g.example_raw),
                },
            }
            for g in groups
        ],
        "findings": [_finding_json(f, identities) for f in findings],
    }
    return json.dumps(document, indent=2, ensure_ascii=False)


def _finding_json(finding: Finding, identities: dict[str, str]) -> dict[str, Any]:
    return {
        "identity": identities.get(finding.connection_id, "?"),
        "connection_id": finding.connection_id,
        "seq": finding.seq,
        "ts": _iso(finding.ts),
        "rule": finding.rule,
        "severity": str(finding.severity),
        "message": finding.message,
        "path": finding.path,
    }


def to_junit(groups: list[Group], identities: list[str], fail_on: Severity) -> str:
    """One test suite per charger, one test case per rule; findings >= fail_on fail it."""
    suites = ET.Element("testsuites", name="ocproxy audit")
    for identity in sorted(identities):
        mine = {g.rule: g for g in groups if g.identity == identity}
        failures = sum(1 for g in mine.values() if g.severity >= fail_on)
        suite = ET.SubElement(
            suites, "testsuite", name=identity, tests=str(len(RULES)), failures=str(failures)
        )
        for rule in sorted(RULES):
            case = ET.SubElement(suite, "testcase", classname=identity, name=rule)
            g = mine.get(rule)
            if g is None:
                continue
            text = f"{g.count} finding(s); example: {g.example.message}\n{_text(g.example_raw)}"
            if g.severity >= fail_on:
                failure = ET.SubElement(
                    case, "failure", type=str(g.severity), message=g.example.message
                )
                failure.text = text
            else:
                ET.SubElement(case, "system-out").text = text
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def _example(g: Group) -> Text:
    text = Text(g.example.message)
    if g.example_raw is not None:
        raw = _text(g.example_raw) or ""
        text.append("\n" + (raw if len(raw) <= 160 else raw[:157] + "..."), "dim")
    return text


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", "backslashreplace")


def _time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%m-%d %H:%M:%S")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
