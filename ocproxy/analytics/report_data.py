"""What a report holds, and how its numbers are written: no DuckDB, no gathering.

The frozen dataclasses :func:`ocproxy.analytics.report.build_report` fills, and the
formats both renderers share (the HTML page in :mod:`ocproxy.analytics.html` and the
terminal summary of ``ocproxy report``), so a number reads the same in both. The
page's modules (:mod:`~ocproxy.analytics.html`, :mod:`~ocproxy.analytics.svg`) import
only this one, not DuckDB and the queries behind the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ocproxy.analytics.report_findings import Findings

# Bucket widths in seconds: the report takes the smallest giving at most
# report.MAX_BUCKETS buckets, and the charts' time axes tick at one of them.
BUCKET_STEPS = (
    *(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30),
    *(60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200),
    *(86400, 2 * 86400, 7 * 86400, 14 * 86400, 28 * 86400, 91 * 86400, 365 * 86400),
)
# Latency histogram bins: a quarter of a decade each, bin k covers [10^(k/4), 10^((k+1)/4)).
BINS_PER_DECADE = 4
# How a direction reads on the page and in the terminal.
DIRECTION_NAMES = {"to_csms": "charger → CSMS", "to_charger": "CSMS → charger"}


@dataclass(frozen=True)
class Overview:
    first_at: datetime | None
    last_at: datetime | None
    frames: int
    bytes: int
    malformed: int
    connections: int
    refused: int
    chargers: int
    transactions: int
    energy_wh: float
    callerrors: int
    unanswered: int


@dataclass(frozen=True)
class Volume:
    bucket_s: float
    starts: tuple[datetime, ...]
    by_type: dict[str, tuple[int, ...]]
    by_direction: dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class Transaction:
    identity: str
    transaction_id: str
    energy_wh: float
    started_at: datetime | None
    stopped_at: datetime | None


@dataclass(frozen=True)
class Energy:
    shown: tuple[Transaction, ...]  # chronological, or the largest when there are many
    transactions: int
    metered: int  # transactions with an energy figure
    total_wh: float


@dataclass(frozen=True)
class Span:
    status: str
    error_code: str | None
    start: datetime
    end: datetime
    current: bool  # the charger's status still, when the recording ends
    periods: int  # status periods folded into this span (1 = exact)


@dataclass(frozen=True)
class Lane:
    identity: str
    connector: str
    spans: tuple[Span, ...]


@dataclass(frozen=True)
class Timeline:
    lanes: tuple[Lane, ...]
    chargers: int  # chargers with any status notification
    start: datetime | None = None
    end: datetime | None = None

    @property
    def chargers_shown(self) -> int:
        return len({lane.identity for lane in self.lanes})


@dataclass(frozen=True)
class LatencyRow:
    action: str
    direction: str
    calls: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    source: str  # the connections': 'proxy', 'mirror' (with --legs), 'import', ...
    bins: tuple[tuple[int, int], ...]  # (bin k, answers); see BINS_PER_DECADE


@dataclass(frozen=True)
class ErrorCode:
    code: str
    kind: str  # callerror, callresulterror or unanswered
    count: int
    top_action: str | None
    actions: int


@dataclass(frozen=True)
class ChargerRow:
    identity: str
    connections: int
    frames: int
    transactions: int
    energy_wh: float
    errors: int
    unanswered: int


@dataclass(frozen=True)
class Report:
    sources: tuple[str, ...]
    identity: str | None
    overview: Overview
    volume: Volume
    energy: Energy
    timeline: Timeline
    latency: tuple[LatencyRow, ...]
    latency_pairs: int  # (action, direction) pairs in the recording
    errors: tuple[ErrorCode, ...]
    chargers: tuple[ChargerRow, ...]
    notes: tuple[str, ...] = ()
    findings: Findings = field(default_factory=Findings)
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    elapsed_s: float = 0.0

    @property
    def empty(self) -> bool:
        return self.overview.frames == 0 and self.overview.connections + self.overview.refused == 0


# -- formats, shared by the HTML page and the terminal summary --------------------------------


def fmt_count(n: int | float) -> str:
    return f"{n:,.0f}"


def fmt_wh(wh: float) -> str:
    """Exactly what the meter said: 5,000 Wh, 1,500.5 Wh."""
    text = f"{wh:,.3f}".rstrip("0").rstrip(".")
    return f"{text} Wh"


def fmt_kwh(wh: float) -> str:
    return f"{wh / 1000:,.3f}".rstrip("0").rstrip(".") + " kWh"


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms >= 1000:
        return f"{ms / 1000:.3g} s"
    return f"{ms:.3g} ms"


def fmt_time(ts: datetime | None, span_s: float = 86400.0) -> str:
    if ts is None:
        return "-"
    ts = ts.astimezone(UTC)
    if span_s < 10:
        return ts.strftime("%H:%M:%S.%f")[:-3]
    if span_s < 3600:
        return ts.strftime("%H:%M:%S")
    return ts.strftime("%Y-%m-%d %H:%M" if span_s >= 2 * 86400 else "%H:%M")


def fmt_stamp(ts: datetime | None) -> str:
    return "-" if ts is None else ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def fmt_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.3g} s"
    return str(timedelta(seconds=round(seconds)))


def fmt_step(seconds: float) -> str:
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= size:
            return f"{seconds / size:g} {unit}"
    return f"{seconds * 1000:g} ms"
