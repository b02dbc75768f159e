"""The report as one self-contained HTML page: inline CSS, inline SVG charts, a little JS.

Pure functions of a :class:`~ocproxy.analytics.report_data.Report`; nothing is
fetched when the page opens (no CDN, no font, no image), so it works offline and as a
mail attachment. The charts come from :mod:`ocproxy.analytics.svg`; this module puts
them in sections with the cards, notes and tables around them. Every value from the
recording goes through :func:`~ocproxy.analytics.svg.esc`.

``DIRECTION_NAMES`` and ``nice_ticks`` are re-exported here (``import X as X``), where
they were defined before the split, so imports from this module keep working.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ocproxy import __version__
from ocproxy.analytics.html_findings import CSS as FINDINGS_CSS
from ocproxy.analytics.html_findings import findings_html, findings_note
from ocproxy.analytics.report_data import DIRECTION_NAMES as DIRECTION_NAMES
from ocproxy.analytics.report_data import (
    Report,
    fmt_count,
    fmt_kwh,
    fmt_ms,
    fmt_stamp,
)
from ocproxy.analytics.svg import (
    energy_chart,
    errors_chart,
    esc,
    latency_chart,
    status_chart,
    volume_chart,
)
from ocproxy.analytics.svg import nice_ticks as nice_ticks


def render_html(report: Report) -> str:
    """The whole report as one HTML document."""
    title = "ocproxy report" + (f": {report.identity}" if report.identity else "")
    sections = [
        _section("volume", "Message volume", volume_chart(report), _volume_controls(report)),
        _section("energy", "Energy per transaction", energy_chart(report), _energy_note(report)),
        _section("status", "Status timeline", status_chart(report), _status_note(report)),
        _section("latency", "Latency by action", latency_chart(report), _latency_note(report)),
        _section("errors", "Errors by code", errors_chart(report), ""),
        _section(
            "findings",
            "Audit findings",
            findings_html(report.findings),
            findings_note(report.findings),
        ),
        _section("chargers", "Chargers", _chargers_table(report), ""),
        _section("latency-table", "Latency percentiles", _latency_table(report), ""),
    ]
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}{FINDINGS_CSS}</style></head><body><main>"
        f'<header><h1>{esc(title)}</h1><p class="sub">{_subtitle(report)}</p></header>'
        f"{_cards(report)}{_notes(report)}{''.join(sections)}"
        f"<footer>generated {esc(fmt_stamp(report.generated_at))} by ocproxy {esc(__version__)}"
        f" in {report.elapsed_s:.2f} s</footer></main><script>{JS}</script></body></html>\n"
    )


def _subtitle(report: Report) -> str:
    o = report.overview
    span = f"{fmt_stamp(o.first_at)} to {fmt_stamp(o.last_at)}" if o.first_at else "no frames"
    return f"{esc(', '.join(report.sources))} · {esc(span)}"


def _cards(report: Report) -> str:
    o = report.overview
    cards = [
        ("connections", fmt_count(o.connections), f"{fmt_count(o.refused)} refused"),
        ("chargers", fmt_count(o.chargers), ""),
        (
            "frames",
            fmt_count(o.frames),
            f"{fmt_count(o.bytes)} bytes, {fmt_count(o.malformed)} malformed",
        ),
        ("transactions", fmt_count(o.transactions), ""),
        ("energy", fmt_kwh(o.energy_wh), ""),
        ("CALLERRORs", fmt_count(o.callerrors), f"{fmt_count(o.unanswered)} CALLs unanswered"),
    ]
    items = "".join(
        f'<div class="card" data-card="{esc(k)}"><div class="num">{esc(v)}</div>'
        f'<div class="what">{esc(k)}</div><div class="more">{esc(m)}</div></div>'
        for k, v, m in cards
    )
    return f'<section class="cards">{items}</section>'


def _notes(report: Report) -> str:
    notes = list(report.notes)
    if report.empty:
        notes.insert(
            0, "These recordings hold no connections or frames: there is nothing to chart."
        )
    if not notes:
        return ""
    return '<ul class="notes">' + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>"


def _section(key: str, heading: str, content: str, extra: str) -> str:
    return f'<section id="{key}"><h2>{esc(heading)}</h2>{extra}{content}</section>'


def _volume_controls(report: Report) -> str:
    if not report.volume.starts:
        return ""
    return (
        '<div class="controls" role="group" aria-label="stack by">stack by '
        '<button type="button" data-chart="volume" data-show="type" aria-pressed="true">'
        'message type</button><button type="button" data-chart="volume" data-show="direction" '
        'aria-pressed="false">direction</button> · click a legend entry to hide it</div>'
    )


def _energy_note(report: Report) -> str:
    e = report.energy
    if not e.transactions:
        return ""
    parts = [f"{fmt_count(e.transactions)} transactions, {fmt_kwh(e.total_wh)} in all."]
    if len(e.shown) < e.metered:
        parts.append(f"The {len(e.shown)} largest are shown, in order of start.")
    if e.metered < e.transactions:
        parts.append(f"{fmt_count(e.transactions - e.metered)} without an energy reading.")
    return f'<p class="note">{esc(" ".join(parts))}</p>'


def _status_note(report: Report) -> str:
    t = report.timeline
    if not t.lanes:
        return ""
    text = f"{t.chargers_shown} of {t.chargers} chargers (the most eventful)."
    return (
        f'<p class="note">{esc(text)} <label>highlight <input id="lane-filter" type="search" '
        'placeholder="charger identity"></label></p>'
    )


def _latency_note(report: Report) -> str:
    shown = len(report.latency)
    if shown >= report.latency_pairs:
        return ""
    return f'<p class="note">The {shown} busiest of {report.latency_pairs} actions.</p>'


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]], empty: str) -> str:
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="no-data">{esc(empty)}</p>'
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _chargers_table(report: Report) -> str:
    rows = (
        (
            c.identity,
            fmt_count(c.connections),
            fmt_count(c.frames),
            fmt_count(c.transactions),
            fmt_kwh(c.energy_wh),
            fmt_count(c.errors),
            fmt_count(c.unanswered),
        )
        for c in report.chargers
    )
    headers = ("charger", "connections", "frames", "transactions", "energy", "errors", "unanswered")
    return _table(headers, rows, "No charger connected.")


def _latency_table(report: Report) -> str:
    rows = (
        (
            r.action,
            DIRECTION_NAMES.get(r.direction, r.direction),
            fmt_count(r.calls),
            fmt_count(r.errors),
            fmt_ms(r.p50_ms),
            fmt_ms(r.p95_ms),
            fmt_ms(r.p99_ms),
            fmt_ms(r.max_ms),
        )
        for r in report.latency
    )
    headers = ("action", "direction", "answers", "CALLERRORs", "p50", "p95", "p99", "max")
    return _table(headers, rows, "No answered CALL.")


CSS = """
body{margin:0;font:14px/1.4 system-ui,sans-serif;color:#222;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:16px 24px}
h1{margin:8px 0 0;font-size:24px}h2{font-size:18px;margin:0 0 8px}
.sub,.note,footer{color:#555}footer{margin:24px 0;font-size:12px}
section{background:#fff;border:1px solid #e1e4e8;border-radius:6px;padding:12px 16px;margin:16px 0}
.cards{display:flex;flex-wrap:wrap;gap:12px;background:none;border:0;padding:0}
.card{flex:1 1 120px;background:#fff;border:1px solid #e1e4e8;border-radius:6px;padding:10px 14px}
.num{font-size:20px;font-weight:600;white-space:nowrap}.what{color:#555}.more{color:#888;font-size:12px}
.notes{background:#fff8e1;border:1px solid #f0d58c;border-radius:6px;padding:8px 28px}
svg{width:100%;height:auto;display:block}
svg text{font:12px system-ui,sans-serif;fill:#333}svg .tick{fill:#666;font-size:11px}
svg .axis-label{fill:#555}svg .value{font-weight:600}svg .no-data{font-size:16px;fill:#777}
svg .axis{stroke:#888}svg .grid{stroke:#e8e8e8}
svg .p50{stroke:#111;stroke-width:2}svg .p99{stroke:#e15759;stroke-width:2;stroke-dasharray:3 2}
svg rect:hover{opacity:.75}.hidden,.off{display:none}.dim{opacity:.15}
.key{cursor:pointer}.key.off{display:inline;opacity:.35}
.controls button{font:inherit;border:1px solid #bbb;background:#fff;border-radius:4px;margin:0 2px}
.controls button[aria-pressed=true]{background:#4e79a7;color:#fff;border-color:#4e79a7}
table{border-collapse:collapse;width:100%}th,td{padding:4px 8px;border-bottom:1px solid #eee}
th{text-align:left;font-weight:600}td:not(:first-child),th:not(:first-child){text-align:right}
p.no-data{color:#777}
"""

JS = """
(function () {
  document.querySelectorAll("button[data-show]").forEach(function (button) {
    button.addEventListener("click", function () {
      var svg = document.querySelector('svg[data-chart="' + button.dataset.chart + '"]');
      svg.querySelectorAll("[data-set]").forEach(function (g) {
        g.classList.toggle("hidden", g.dataset.set !== button.dataset.show);
      });
      button.parentNode.querySelectorAll("button").forEach(function (b) {
        b.setAttribute("aria-pressed", String(b === button));
      });
    });
  });
  document.querySelectorAll(".key").forEach(function (key) {
    function toggle() {
      var off = key.classList.toggle("off");
      var scope = key.closest("[data-set]") || key.closest("svg");
      scope.querySelectorAll("rect[data-series]").forEach(function (r) {
        if (r.dataset.series === key.dataset.key) r.classList.toggle("off", off);
      });
    }
    key.addEventListener("click", toggle);
    key.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); toggle(); }
    });
  });
  var filter = document.getElementById("lane-filter");
  if (filter) filter.addEventListener("input", function () {
    var text = filter.value.toLowerCase();
    document.querySelectorAll("[data-lane]").forEach(function (g) {
      g.classList.toggle("dim", text !== "" && g.dataset.identity.toLowerCase().indexOf(text) < 0);
    });
  });
  document.documentElement.dataset.ready = "1";
})();
"""
