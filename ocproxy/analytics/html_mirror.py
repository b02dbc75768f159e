"""``ocproxy report --mirror --html FILE``: the mirror evaluation as one self-contained page.

Pure functions of a :class:`~ocproxy.analytics.report_mirror.MirrorReport`: the verdict,
cards, two inline SVG charts (outcome per action, stacked; p50 latency of both CSMSs per
action, side by side) and the tables the terminal prints. The page shares the report's
CSS and script (:mod:`ocproxy.analytics.html`) and drawing pieces
(:mod:`ocproxy.analytics.svg`); nothing is fetched when it opens.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ocproxy import __version__
from ocproxy.analytics.html import CSS, JS
from ocproxy.analytics.mirror_terminal import OUTCOME_NAMES, shown_outcomes
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
from ocproxy.analytics.svg import (
    ROW,
    W,
    _no_data,
    _rect,
    _svg,
    _text,
    _value_axis,
    esc,
    nice_ticks,
)

OUTCOME_COLORS = {
    SAME: "#59a14f",
    DIFFERENT: "#f28e2b",
    CALLERROR: "#e15759",
    UNANSWERED: "#9d9d9d",
    CUT_OFF: "#c9c9c9",
    NOT_SENT: "#b07aa1",
}
SIDES = ("primary", "secondary")
SIDE_COLORS = {"primary": "#4e79a7", "secondary": "#f28e2b"}
_MIRROR_CSS = ".verdict{font-size:16px;font-weight:600}td.text,th.text{text-align:left}"


def render_mirror_html(report: MirrorReport) -> str:
    title = "ocproxy mirror report" + (f": {report.identity}" if report.identity else "")
    sections = [
        _section("outcomes", "Answered as the primary did?", outcomes_chart(report)),
        _section("differences", "How its answers differed", _differences(report)),
        _section("rejected", "What the secondary rejected, per charger", _rejected(report)),
        _section("never-accepted", "Chargers it never accepted", _never_accepted(report)),
        _section("latency", "Latency, primary and secondary", latency_chart(report)),
        _section("latency-table", "Latency percentiles", _latency_table(report)),
        _section("own-calls", "The secondary's own CALLs", _own_calls(report)),
        _section("ignored", "Left out of the comparison", _ignored(report)),
    ]
    span = f"{fmt_stamp(report.first_at)} to {fmt_stamp(report.last_at)}"
    notes = "".join(f"<li>{esc(n)}</li>" for n in report.notes)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}{_MIRROR_CSS}</style></head><body><main>"
        f'<header><h1>{esc(title)}</h1><p class="sub">{esc(", ".join(report.sources))} · '
        f"secondary {esc(', '.join(report.secondaries))} · {esc(span)}</p></header>"
        f'<p class="verdict" id="verdict">{esc(report.verdict())}</p>{_cards(report)}'
        + (f'<ul class="notes">{notes}</ul>' if notes else "")
        + "".join(sections)
        + f"<footer>generated {esc(fmt_stamp(report.generated_at))} by ocproxy "
        f"{esc(__version__)} in {report.elapsed_s:.2f} s</footer></main>"
        f"<script>{JS}</script></body></html>\n"
    )


def _section(key: str, heading: str, content: str) -> str:
    return f'<section id="{key}"><h2>{esc(heading)}</h2>{content}</section>'


def _cards(report: MirrorReport) -> str:
    cards = [
        ("chargers mirrored", fmt_count(report.chargers), f"{fmt_count(report.legs)} legs"),
        ("CALLs compared", fmt_count(report.exchanges), ""),
        *(
            (f"answered {OUTCOME_NAMES[k]}", fmt_count(report.total(k)), "")
            for k in shown_outcomes(report)
        ),
        ("never accepted", fmt_count(report.never_accepted_total), "chargers"),
    ]
    items = "".join(
        f'<div class="card" data-card="{esc(k)}"><div class="num">{esc(v)}</div>'
        f'<div class="what">{esc(k)}</div><div class="more">{esc(m)}</div></div>'
        for k, v, m in cards
    )
    return f'<section class="cards">{items}</section>'


def outcomes_chart(report: MirrorReport) -> str:
    """One stacked bar per action: its CALLs by outcome."""
    title = "Charger CALLs per action, by how the secondary answered"
    if not report.outcomes:
        return _no_data("mirror-outcomes", title, "No charger CALL was mirrored.")
    kinds = shown_outcomes(report)
    left, right, top = 250.0, W - 60.0, 30.0
    ticks = nice_ticks(max(o.exchanges for o in report.outcomes))
    names = {k: OUTCOME_NAMES[k] for k in kinds}
    body = [_legend_in(kinds, left, 18, OUTCOME_NAMES, OUTCOME_COLORS)]
    for i, o in enumerate(report.outcomes):
        y, x = top + i * ROW, left
        body.append(_text(left - 8, y + 16, o.action, "label", "end"))
        for kind in kinds:
            n = o.counts[kind]
            if not n:
                continue
            w = n / ticks[-1] * (right - left)
            tip = f"{o.action}: {fmt_count(n)} of {fmt_count(o.exchanges)} {names[kind]}"
            attrs = f' data-series="{esc(kind)}" data-count="{n}"'
            body.append(_rect(x, y + 3, w, ROW - 6, OUTCOME_COLORS[kind], tip, attrs))
            x += w
    bottom = top + len(report.outcomes) * ROW + 4
    body += _value_axis(ticks, left, right, bottom, "CALLs")
    return _svg("mirror-outcomes", bottom + 46, title, body)


def _legend_in(
    keys: Sequence[str], x: float, y: float, names: dict[str, str], colors: dict[str, str]
) -> str:
    """As svg's legend (a click hides the series), in colours of this page's own."""
    parts = []
    for key in keys:
        name = names.get(key, key)
        parts.append(
            f'<g class="key" data-key="{esc(key)}" tabindex="0" role="button">'
            f'<rect x="{x:.1f}" y="{y - 10:.1f}" width="12" height="12" fill="{colors[key]}"/>'
            f"{_text(x + 16, y, name)}</g>"
        )
        x += 28 + 7.2 * len(name)
    return f'<g class="legend">{"".join(parts)}</g>'


def latency_chart(report: MirrorReport) -> str:
    """Per action, the p50 of the primary's and of the secondary's answers, side by side."""
    title = "p50 latency per action: primary and secondary"
    rows = [r for r in report.latency if r.primary_p50_ms is not None or r.secondary_p50_ms]
    if not rows:
        return _no_data("mirror-latency", title, "No answered CALL.")
    left, right, top, half = 250.0, W - 120.0, 30.0, ROW / 2
    biggest = max(max(r.primary_p50_ms or 0, r.secondary_p50_ms or 0) for r in rows)
    ticks = nice_ticks(biggest)
    body = [_legend_in(SIDES, left, 18, {}, SIDE_COLORS)]
    for i, r in enumerate(rows):
        y = top + i * (ROW + 4)
        body.append(_text(left - 8, y + 16, r.action, "label", "end"))
        for j, (side, p50, p99, n) in enumerate(
            [
                ("primary", r.primary_p50_ms, r.primary_p99_ms, r.primary_answers),
                ("secondary", r.secondary_p50_ms, r.secondary_p99_ms, r.secondary_answers),
            ]
        ):
            if p50 is None:
                continue
            w = p50 / ticks[-1] * (right - left)
            tip = f"{r.action}, {side}: p50 {fmt_ms(p50)}, p99 {fmt_ms(p99)} ({fmt_count(n)})"
            attrs = f' data-series="{side}"'
            body.append(_rect(left, y + 2 + j * half, w, half - 2, SIDE_COLORS[side], tip, attrs))
            body.append(_text(left + w + 6, y + j * half + half - 1, fmt_ms(p50), "tick"))
    bottom = top + len(rows) * (ROW + 4) + 4
    body += _value_axis(ticks, left, right, bottom, "ms")
    return _svg("mirror-latency", bottom + 46, title, body)


def _table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    empty: str,
    text: Sequence[int] = (0,),
) -> str:
    """A table whose ``text`` columns are left-aligned, the numbers right-aligned."""

    def cell(tag: str, i: int, value: object) -> str:
        return (
            f'<{tag} class="text">{esc(value)}</{tag}>'
            if i in text
            else f"<{tag}>{esc(value)}</{tag}>"
        )

    body = "".join(
        "<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>" for row in rows
    )
    if not body:
        return f'<p class="no-data">{esc(empty)}</p>'
    head = "".join(cell("th", i, h) for i, h in enumerate(headers))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _differences(report: MirrorReport) -> str:
    rows = (
        (d.action, d.what, fmt_count(d.exchanges), d.example_identity) for d in report.differences
    )
    headers = ("action", "difference", "CALLs", "e.g. charger")
    return _table(headers, rows, "Every answer was the same, or not given.", (0, 1))


def _rejected(report: MirrorReport) -> str:
    rows = (
        (
            r.identity,
            f"{r.boots_rejected} of {r.boots}",
            f"{r.tokens_rejected} of {r.tokens}",
            f"{r.remote_starts_refused} of {r.remote_starts}",
            ", ".join(r.statuses),
        )
        for r in report.rejected
    )
    headers = ("charger", "boots not Accepted", "tokens not Accepted", "RemoteStart refused")
    return _table((*headers, "what it said"), rows, "It rejected nothing.", (0, 4))


def _never_accepted(report: MirrorReport) -> str:
    rows = ((n.identity, fmt_count(n.legs), n.reason) for n in report.never_accepted)
    shown, total = len(report.never_accepted), report.never_accepted_total
    more = f'<p class="note">The first {shown} of {total:,}.</p>' if total > shown else ""
    return more + _table(("charger", "legs", "why"), rows, "It accepted every charger.", (0, 2))


def _latency_table(report: MirrorReport) -> str:
    rows = (
        (
            r.action,
            fmt_count(r.primary_answers),
            fmt_ms(r.primary_p50_ms),
            fmt_ms(r.primary_p99_ms),
            fmt_count(r.secondary_answers),
            fmt_ms(r.secondary_p50_ms),
            fmt_ms(r.secondary_p99_ms),
        )
        for r in report.latency
    )
    headers = ("action", "primary answers", "p50", "p99", "secondary answers", "p50", "p99")
    return _table(headers, rows, "No answered CALL.")


def _own_calls(report: MirrorReport) -> str:
    rows = (
        (
            c.action,
            fmt_count(c.calls),
            fmt_count(c.allowed),
            fmt_count(c.refused),
            fmt_count(c.accepted),
            fmt_count(c.rejected),
            fmt_count(c.unanswered),
        )
        for c in report.own_calls
    )
    headers = ("action", "CALLs", "allowed", "refused by the proxy", "charger accepted")
    return _table((*headers, "charger rejected", "unanswered"), rows, "It sent no CALL of its own.")


def _ignored(report: MirrorReport) -> str:
    rules = ", ".join(report.ignore_rules) or "nothing (--no-default-ignore)"
    note = f'<p class="note">Not compared: {esc(rules)}.</p>'
    rows = ((i.path, fmt_count(i.exchanges), ", ".join(i.actions)) for i in report.ignored)
    return note + _table(
        ("field", "CALLs", "actions"), rows, "No answer differed only there.", (0, 2)
    )
