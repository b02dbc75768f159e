"""``ocproxy report --mirror`` in the terminal: the verdict, then one table per question.

Pure rendering of a :class:`~ocproxy.analytics.report_mirror.MirrorReport` with rich;
the numbers are written with the same formats as the rest of the report.
"""

from __future__ import annotations

from typing import TextIO

from rich.table import Table
from rich.text import Text

from ocproxy.analytics.report_data import fmt_count, fmt_ms, fmt_stamp
from ocproxy.analytics.report_mirror import (
    CALLERROR,
    CUT_OFF,
    DIFFERENT,
    NOT_SENT,
    SAME,
    UNANSWERED,
    MirrorReport,
)
from ocproxy.terminal import make_console

OUTCOME_NAMES = {
    SAME: "same",
    DIFFERENT: "differently",
    CALLERROR: "CALLERROR",
    UNANSWERED: "not at all",
    CUT_OFF: "cut off",
    NOT_SENT: "not sent",
}


def print_mirror_report(report: MirrorReport, stream: TextIO) -> None:
    console = make_console(file=stream, highlight=False)
    console.print(_overview(report))
    console.print(Text(report.verdict(), style="bold"), soft_wrap=True)
    for table in (
        _outcomes(report),
        _differences(report),
        _rejected(report),
        _never_accepted(report),
        _latency(report),
        _own_calls(report),
        _ignored(report),
    ):
        if table is not None:
            console.print(table)


def _table(title: str, columns: list[str], text_columns: int = 1) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i < text_columns else "right")
    return table


def _add(table: Table, cells: list[str]) -> None:
    table.add_row(*(Text(cell) for cell in cells))


def _overview(report: MirrorReport) -> Table:
    table = Table(title="ocproxy report --mirror", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    refused = f" ({fmt_count(report.legs_refused)} refused the handshake)"
    rows = [
        ("sources", ", ".join(report.sources)),
        ("secondary", ", ".join(report.secondaries)),
        ("from", fmt_stamp(report.first_at)),
        ("to", fmt_stamp(report.last_at)),
        ("chargers mirrored", fmt_count(report.chargers)),
        ("mirror legs", fmt_count(report.legs) + (refused if report.legs_refused else "")),
        ("CALLs compared", fmt_count(report.exchanges)),
    ]
    if report.identity:
        rows.insert(1, ("charger", report.identity))
    for name, value in rows:
        table.add_row(name, Text(value))
    return table


def shown_outcomes(report: MirrorReport) -> list[str]:
    """The outcomes worth a column: always the first four, the others when they happened."""
    return [k for k in OUTCOME_NAMES if k not in (CUT_OFF, NOT_SENT) or report.total(k)]


def _outcomes(report: MirrorReport) -> Table | None:
    if not report.outcomes:
        return None
    kinds = shown_outcomes(report)
    table = _table(
        "Would the secondary have answered as the primary did? (charger CALLs, per action)",
        ["action", "CALLs", *(OUTCOME_NAMES[k] for k in kinds)],
    )
    for o in report.outcomes:
        _add(table, [o.action, fmt_count(o.exchanges), *(fmt_count(o.counts[k]) for k in kinds)])
    return table


def _differences(report: MirrorReport) -> Table | None:
    if not report.differences:
        return None
    table = _table("How its answers differed", ["action", "difference", "CALLs", "e.g."], 2)
    for d in report.differences:
        _add(table, [d.action, d.what, fmt_count(d.exchanges), d.example_identity])
    return table


def _rejected(report: MirrorReport) -> Table | None:
    if not report.rejected:
        return None
    columns = ["charger", "boots not Accepted", "tokens not Accepted", "RemoteStart refused"]
    table = _table("What the secondary rejected, per charger", [*columns, "what it said"])
    for r in report.rejected:
        cells = [
            r.identity,
            f"{r.boots_rejected} of {r.boots}",
            f"{r.tokens_rejected} of {r.tokens}",
        ]
        cells += [f"{r.remote_starts_refused} of {r.remote_starts}", ", ".join(r.statuses)]
        _add(table, cells)
    table.columns[-1].justify = "left"
    return table


def _never_accepted(report: MirrorReport) -> Table | None:
    if not report.never_accepted:
        return None
    title = "Chargers the secondary never accepted"
    if report.never_accepted_total > len(report.never_accepted):
        title += f" (the first {len(report.never_accepted)} of {report.never_accepted_total:,})"
    table = _table(title, ["charger", "legs", "why"])
    for n in report.never_accepted:
        _add(table, [n.identity, fmt_count(n.legs), n.reason])
    table.columns[-1].justify = "left"
    return table


def _latency(report: MirrorReport) -> Table | None:
    if not report.latency:
        return None
    columns = ["action", "primary answers", "p50", "p99", "secondary answers", "p50", "p99"]
    table = _table("Latency of the charger's CALLs, primary and secondary side by side", columns)
    for r in report.latency:
        cells = [r.action, fmt_count(r.primary_answers), fmt_ms(r.primary_p50_ms)]
        cells += [fmt_ms(r.primary_p99_ms), fmt_count(r.secondary_answers)]
        cells += [fmt_ms(r.secondary_p50_ms), fmt_ms(r.secondary_p99_ms)]
        _add(table, cells)
    return table


def _own_calls(report: MirrorReport) -> Table | None:
    if not report.own_calls:
        return None
    columns = ["action", "CALLs", "allowed", "refused by the proxy", "charger accepted"]
    table = _table("The secondary's own CALLs", [*columns, "charger rejected", "unanswered"])
    for c in report.own_calls:
        cells = [c.action, fmt_count(c.calls), fmt_count(c.allowed), fmt_count(c.refused)]
        cells += [fmt_count(c.accepted), fmt_count(c.rejected), fmt_count(c.unanswered)]
        _add(table, cells)
    return table


def _ignored(report: MirrorReport) -> Table:
    rules = ", ".join(report.ignore_rules) or "nothing (--no-default-ignore)"
    table = _table(f"Left out of the comparison: {rules}", ["field", "CALLs", "actions"])
    for i in report.ignored:
        _add(table, [i.path, fmt_count(i.exchanges), ", ".join(i.actions)])
    table.columns[-1].justify = "left"
    if not report.ignored:
        _add(table, ["(no answer differed only there)", "", ""])
    return table
