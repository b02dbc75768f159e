"""The report's audit findings: per charger, rule and severity, over time, with examples.

Read from the recording's ``findings`` table: what the proxy's audit (``--audit``, on
by default) and ``ocproxy import`` recorded with the frames, so the report costs one
aggregate over that table whatever the recording's size (``ocproxy audit`` checks a
recording again, with other options). Like the rest of the report, what reaches
Python is bounded: ``top`` groups and chargers, at most ``MAX_BUCKETS`` time buckets,
one example frame per group cut at :data:`EXAMPLE_CHARS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import duckdb

SEVERITIES = ("error", "warning", "info")
EXAMPLE_CHARS = 2_000
_RANK = "CASE severity WHEN 'error' THEN 3 WHEN 'warning' THEN 2 ELSE 1 END"
_UNRANK = "CASE {} WHEN 3 THEN 'error' WHEN 2 THEN 'warning' ELSE 'info' END"

Rows = Callable[[duckdb.DuckDBPyConnection, str, dict[str, Any]], list[dict[str, Any]]]


@dataclass(frozen=True)
class FindingGroup:
    """The findings of one rule for one charger, and the first frame that broke it."""

    identity: str
    rule: str
    severity: str  # the worst of the group's findings
    count: int
    first_at: datetime
    last_at: datetime
    message: str  # the example's
    path: str | None
    connection_id: str
    seq: int | None  # None: the example is about the connection, not a frame
    frame: str | None = None  # the example frame as recorded (redacted), maybe cut


@dataclass(frozen=True)
class ChargerFindings:
    identity: str
    error: int
    warning: int
    info: int

    @property
    def total(self) -> int:
        return self.error + self.warning + self.info


@dataclass(frozen=True)
class Findings:
    total: int = 0
    by_severity: tuple[tuple[str, int], ...] = ()
    chargers: tuple[ChargerFindings, ...] = ()
    charger_count: int = 0  # chargers with findings, shown or not
    groups: tuple[FindingGroup, ...] = ()
    group_count: int = 0  # (charger, rule) groups, shown or not
    bucket_s: float = 60.0
    starts: tuple[datetime, ...] = ()
    series: dict[str, tuple[int, ...]] = field(default_factory=dict)  # severity -> counts


# The findings of the charger asked for (every one's when $identity is NULL), with the
# identity of their connection.
_MINE = """
SELECT f.connection_id, f.seq, f.ts, f.rule, f.severity, f.message, f.path, c.identity
FROM findings f JOIN connections c USING (connection_id)
WHERE ($identity IS NULL OR c.identity = $identity)
    AND ($legs = 'all' OR (c.mirror_of IS NULL) = ($legs = 'charger'))
"""


def gather_findings(
    db: duckdb.DuckDBPyConnection,
    rows: Rows,
    *,
    identity: str | None,
    legs: str = "charger",
    top: int,
    bucket_width: Callable[[datetime | None, datetime | None], float],
) -> Findings:
    """The findings section's data; ``rows`` runs SQL as the report does (one-line errors)."""
    param: dict[str, Any] = {"identity": identity, "legs": legs}
    totals = rows(
        db,
        f"WITH f AS ({_MINE}) SELECT severity, count(*) AS n, min(ts) AS first_at, "
        "max(ts) AS last_at FROM f GROUP BY severity",
        param,
    )
    if not totals:
        return Findings()
    counts = {r["severity"]: r["n"] for r in totals}
    first = min(r["first_at"] for r in totals)
    last = max(r["last_at"] for r in totals)
    chargers, charger_count = _chargers(db, rows, param, top)
    groups, group_count = _groups(db, rows, param, top)
    width = bucket_width(first, last)
    starts, series = _timeline(db, rows, param, width)
    return Findings(
        total=sum(counts.values()),
        by_severity=tuple((s, counts[s]) for s in SEVERITIES if s in counts),
        chargers=chargers,
        charger_count=charger_count,
        groups=_with_frames(db, groups),
        group_count=group_count,
        bucket_s=width,
        starts=starts,
        series=series,
    )


def _chargers(
    db: duckdb.DuckDBPyConnection, rows: Rows, param: dict[str, Any], top: int
) -> tuple[tuple[ChargerFindings, ...], int]:
    found = rows(
        db,
        f"""WITH f AS ({_MINE})
        SELECT identity, count(*) FILTER (WHERE severity = 'error') AS error,
            count(*) FILTER (WHERE severity = 'warning') AS warning,
            count(*) FILTER (WHERE severity NOT IN ('error', 'warning')) AS info,
            count(*) OVER () AS chargers
        FROM f GROUP BY identity
        ORDER BY error DESC, warning DESC, info DESC, identity LIMIT $top""",
        {**param, "top": top},
    )
    shown = tuple(
        ChargerFindings(r["identity"], r["error"], r["warning"], r["info"]) for r in found
    )
    return shown, found[0]["chargers"] if found else 0


def _groups(
    db: duckdb.DuckDBPyConnection, rows: Rows, param: dict[str, Any], top: int
) -> tuple[list[FindingGroup], int]:
    found = rows(
        db,
        f"""WITH f AS ({_MINE})
        SELECT identity, rule, max({_RANK}) AS rank, count(*) AS count,
            min(ts) AS first_at, max(ts) AS last_at,
            -- the example: the first finding about a frame, else the first one
            arg_min(struct_pack(connection_id, seq, message, path), (seq IS NULL, ts, seq))
                AS example,
            count(*) OVER () AS groups
        FROM f GROUP BY identity, rule
        ORDER BY rank DESC, identity, count DESC, rule LIMIT $top""",
        {**param, "top": top},
    )
    groups = [
        FindingGroup(
            identity=r["identity"],
            rule=r["rule"],
            severity=SEVERITIES[3 - r["rank"]],
            count=r["count"],
            first_at=r["first_at"],
            last_at=r["last_at"],
            message=r["example"]["message"],
            path=r["example"]["path"],
            connection_id=r["example"]["connection_id"],
            seq=r["example"]["seq"],
        )
        for r in found
    ]
    return groups, found[0]["groups"] if found else 0


def _with_frames(
    db: duckdb.DuckDBPyConnection, groups: list[FindingGroup]
) -> tuple[FindingGroup, ...]:
    """The groups with their example frame's text: one query for all of them."""
    cited = [(g.connection_id, g.seq) for g in groups if g.seq is not None]
    if not cited:
        return tuple(groups)
    found = db.execute(
        "SELECT connection_id, seq, raw FROM frames WHERE (connection_id, seq) IN "
        "(SELECT (unnest($ids::VARCHAR[]), unnest($seqs::BIGINT[])))",
        {"ids": [c for c, _ in cited], "seqs": [s for _, s in cited]},
    ).fetchall()
    raws = {(c, s): bytes(raw) for c, s, raw in found if raw is not None}
    out = []
    for g in groups:
        raw = raws.get((g.connection_id, g.seq)) if g.seq is not None else None
        if raw is None:
            out.append(g)
            continue
        text = raw[: EXAMPLE_CHARS * 4].decode("utf-8", "backslashreplace")
        if len(text) > EXAMPLE_CHARS or len(raw) > EXAMPLE_CHARS * 4:
            text = text[:EXAMPLE_CHARS] + f" ... ({len(raw):,} bytes in all)"
        out.append(replace(g, frame=text))
    return tuple(out)


def _timeline(
    db: duckdb.DuckDBPyConnection, rows: Rows, param: dict[str, Any], width: float
) -> tuple[tuple[datetime, ...], dict[str, tuple[int, ...]]]:
    found = rows(
        db,
        f"""WITH f AS ({_MINE})
        SELECT floor(epoch(ts) / $width)::BIGINT AS bucket, {_UNRANK.format(_RANK)} AS severity,
            count(*) AS n
        FROM f GROUP BY ALL""",
        {**param, "width": width},
    )
    first = min(r["bucket"] for r in found)
    count = max(r["bucket"] for r in found) - first + 1
    starts = tuple(datetime.fromtimestamp((first + i) * width, UTC) for i in range(count))
    series: dict[str, list[int]] = {}
    for r in found:
        series.setdefault(r["severity"], [0] * count)[r["bucket"] - first] += r["n"]
    return starts, {s: tuple(series[s]) for s in SEVERITIES if s in series}
