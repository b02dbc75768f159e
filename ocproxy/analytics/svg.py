"""The report's charts as inline SVG: drawing primitives, axes and the five charts.

Each chart is a pure function of a :class:`~ocproxy.analytics.report_data.Report`
returning one ``<svg data-chart="NAME">`` whose marks carry a ``<title>`` (the
tooltip, read out by screen readers too); a chart without data says so in words.
Every value from the recording goes through :func:`esc`. The page around them is
:mod:`ocproxy.analytics.html`; the ``data-*`` attributes here are what its script
and the browser tests look for.
"""

from __future__ import annotations

import html
import math
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from ocproxy.analytics.report_data import (
    BINS_PER_DECADE,
    BUCKET_STEPS,
    DIRECTION_NAMES,
    Lane,
    LatencyRow,
    Report,
    Span,
    fmt_count,
    fmt_duration,
    fmt_ms,
    fmt_stamp,
    fmt_step,
    fmt_time,
    fmt_wh,
)

W = 960  # every chart's viewBox width
ROW = 24  # height of one bar or lane
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2", "#edc948")
# Message types, directions, connector statuses (1.6 and 2.x), error kinds, severities.
_COLOR_TABLE = """CALL=#4e79a7 CALLRESULT=#59a14f CALLERROR=#e15759 CALLRESULTERROR=#f28e2b
    SEND=#b07aa1 malformed=#333333 to_csms=#4e79a7 to_charger=#f28e2b Available=#59a14f
    Preparing=#9ecae9 Charging=#4e79a7 Occupied=#2f6db5 SuspendedEV=#edc948
    SuspendedEVSE=#f28e2b Finishing=#76b7b2 Reserved=#b07aa1 Unavailable=#9d9d9d
    Faulted=#e15759 callerror=#e15759 callresulterror=#f28e2b unanswered=#9d9d9d
    error=#e15759 warning=#f28e2b info=#76b7b2"""
# Key -> colour; any other key gets a stable one from PALETTE (see color()).
COLORS = {k: v for k, _, v in (pair.partition("=") for pair in _COLOR_TABLE.split())}


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def color(key: str) -> str:
    return COLORS.get(key) or PALETTE[zlib.crc32(key.encode()) % len(PALETTE)]


# -- SVG pieces ------------------------------------------------------------------------------------


def _svg(chart: str, height: float, title: str, body: Iterable[str], empty: bool = False) -> str:
    flag = ' data-empty="true"' if empty else ""
    return (
        f'<svg data-chart="{chart}" viewBox="0 0 {W} {height:.0f}" role="img"{flag} '
        f'aria-labelledby="{chart}-title" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="{chart}-title">{esc(title)}</title>{"".join(body)}</svg>'
    )


def _no_data(chart: str, title: str, message: str) -> str:
    text = _text(W / 2, 44, message, "no-data", "middle")
    return _svg(chart, 80, title, [text], empty=True)


def _rect(x: float, y: float, w: float, h: float, fill: str, tip: str, attrs: str = "") -> str:
    return (
        f'<rect x="{x:.2f}" y="{y:.2f}" width="{max(w, 0):.2f}" height="{max(h, 0):.2f}" '
        f'fill="{fill}"{attrs}><title>{esc(tip)}</title></rect>'
    )


def _text(x: float, y: float, text: str, cls: str = "", anchor: str = "start") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" class="{cls}" text-anchor="{anchor}">{esc(text)}</text>'


def _line(x1: float, y1: float, x2: float, y2: float, cls: str) -> str:
    return f'<path d="M{x1:.2f} {y1:.2f}L{x2:.2f} {y2:.2f}" class="{cls}"/>'


def _axis_label(x: float, y: float, text: str, vertical: bool = False) -> str:
    turn = f' transform="rotate(-90 {x:.1f} {y:.1f})"' if vertical else ""
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" class="axis-label" text-anchor="middle"{turn}>'
        f"{esc(text)}</text>"
    )


def _legend(keys: Sequence[str], x: float, y: float, names: dict[str, str] | None = None) -> str:
    parts = []
    for key in keys:
        name = (names or {}).get(key, key)
        parts.append(
            f'<g class="key" data-key="{esc(key)}" tabindex="0" role="button">'
            f'<rect x="{x:.1f}" y="{y - 10:.1f}" width="12" height="12" fill="{color(key)}"/>'
            f"{_text(x + 16, y, name)}</g>"
        )
        x += 28 + 7.2 * len(name)
    return f'<g class="legend">{"".join(parts)}</g>'


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """0, step, 2 step, ... up to at least ``top``; the step is 1, 2 or 5 x 10^n, at least 1."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = max(next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw), 1)
    return [float(i * step) for i in range(math.ceil(top / step - 1e-9) + 1)]


def _time_axis(t0: float, t1: float, x0: float, x1: float, y: float) -> list[str]:
    """Ticks at round times (epoch seconds t0..t1 drawn from x0 to x1), labels below y."""
    span = max(t1 - t0, 1e-9)
    step = next((s for s in BUCKET_STEPS if span / s <= 6), BUCKET_STEPS[-1])
    out = [_line(x0, y, x1, y, "axis")]
    tick = math.ceil(t0 / step) * step
    while tick <= t1 + 1e-9:
        x = x0 + (tick - t0) / span * (x1 - x0)
        label = fmt_time(datetime.fromtimestamp(tick, UTC), span)
        out += [_line(x, y, x, y + 5, "axis"), _text(x, y + 18, label, "tick", "middle")]
        tick += step
    return out


def _value_axis(ticks: list[float], x0: float, x1: float, y: float, unit: str) -> list[str]:
    """A horizontal value axis under bars, from 0 at x0 to ticks[-1] at x1."""
    out = [_line(x0, y, x1, y, "axis")]
    for tick in ticks:
        x = x0 + tick / ticks[-1] * (x1 - x0)
        out += [_line(x, y, x, y + 5, "axis"), _text(x, y + 18, fmt_count(tick), "tick", "middle")]
    return [*out, _axis_label((x0 + x1) / 2, y + 36, unit)]


# -- the charts ------------------------------------------------------------------------------------


def volume_chart(report: Report) -> str:
    volume, title = report.volume, "Message volume over time"
    if not volume.starts:
        return _no_data("volume", title, "No frames recorded.")
    left, right, top, bottom = 70.0, W - 20.0, 40.0, 260.0
    n = len(volume.starts)
    totals = [sum(c[i] for c in volume.by_type.values()) for i in range(n)]
    ticks = nice_ticks(max(totals))
    width = (right - left) / n
    body = [_line(left, y, right, y, "grid") for y in _scale(ticks, top, bottom)]
    body += [
        _text(left - 6, y + 4, fmt_count(t), "tick", "end") for t, y in _ticked(ticks, top, bottom)
    ]
    for name, series in (("type", volume.by_type), ("direction", volume.by_direction)):
        body.append(_stacks(name, series, report, left, width, top, bottom, ticks[-1]))
    t0 = volume.starts[0].timestamp()
    body += _time_axis(t0, t0 + n * volume.bucket_s, left, right, bottom)
    body.append(
        _axis_label(18, (top + bottom) / 2, f"frames per {fmt_step(volume.bucket_s)}", True)
    )
    body.append(_axis_label((left + right) / 2, bottom + 38, "time (UTC)"))
    return _svg("volume", bottom + 48, title, body)


def _scale(ticks: list[float], top: float, bottom: float) -> list[float]:
    return [y for _, y in _ticked(ticks, top, bottom)]


def _ticked(ticks: list[float], top: float, bottom: float) -> list[tuple[float, float]]:
    return [(t, bottom - t / ticks[-1] * (bottom - top)) for t in ticks]


def _stacks(
    name: str,
    series: dict[str, tuple[int, ...]],
    report: Report,
    left: float,
    width: float,
    top: float,
    bottom: float,
    peak: float,
) -> str:
    volume, gap = report.volume, 1.0 if width > 4 else 0.0
    names = DIRECTION_NAMES if name == "direction" else None
    parts = [_legend(list(series), left, 20, names)]
    for i, start in enumerate(volume.starts):
        y = bottom
        when = f"{fmt_stamp(start)} (+{fmt_step(volume.bucket_s)})"
        for key, counts in series.items():
            h = counts[i] / peak * (bottom - top)
            if counts[i]:
                tip = f"{when}: {fmt_count(counts[i])} {(names or {}).get(key, key)}"
                attrs = f' data-series="{esc(key)}" data-count="{counts[i]}"'
                parts.append(_rect(left + i * width, y - h, width - gap, h, color(key), tip, attrs))
            y -= h
    hidden = ' class="hidden"' if name != "type" else ""
    return f'<g data-set="{name}"{hidden}>{"".join(parts)}</g>'


def energy_chart(report: Report) -> str:
    energy, title = report.energy, "Energy per transaction (Wh)"
    if not energy.shown:
        return _no_data("energy", title, "No transaction with an energy reading.")
    bars = [
        Bar(
            label=f"{tx.identity} · {_short(tx.transaction_id)}",
            value=tx.energy_wh,
            text=fmt_wh(tx.energy_wh),
            key="Charging",
            tip=f"{tx.identity}, transaction {tx.transaction_id}: {fmt_wh(tx.energy_wh)}, "
            f"{fmt_stamp(tx.started_at)} to {fmt_stamp(tx.stopped_at)}",
            attrs=f' data-wh="{tx.energy_wh:g}" data-identity="{esc(tx.identity)}"',
        )
        for tx in energy.shown
    ]
    return _hbars("energy", title, bars, "energy delivered (Wh)", legend=False)


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    text: str  # written at the end of the bar
    key: str  # its colour and legend entry
    tip: str
    attrs: str = ""


def _hbars(chart: str, title: str, bars: list[Bar], unit: str, legend: bool) -> str:
    """Horizontal bars from 0, one per row, labelled on the left and at their end."""
    left, right, top = 250.0, W - 120.0, 30.0 if legend else 10.0
    ticks = nice_ticks(max(max(b.value for b in bars), 0))
    body = [_legend(list(dict.fromkeys(b.key for b in bars)), left, 18)] if legend else []
    for i, bar in enumerate(bars):
        y, w = top + i * ROW, max(bar.value, 0) / ticks[-1] * (right - left)
        attrs = f' data-series="{esc(bar.key)}"{bar.attrs}'
        body += [
            _text(left - 8, y + 16, bar.label, "label", "end"),
            _rect(left, y + 3, w, ROW - 6, color(bar.key), bar.tip, attrs),
            _text(left + w + 6, y + 16, bar.text, "value"),
        ]
    bottom = top + len(bars) * ROW + 4
    body += _value_axis(ticks, left, right, bottom, unit)
    return _svg(chart, bottom + 46, title, body)


def _short(text: str, size: int = 14) -> str:
    return text if len(text) <= size else text[: size - 1] + "…"


def status_chart(report: Report) -> str:
    timeline, title = report.timeline, "Status timeline per charger and connector"
    if not timeline.lanes or timeline.start is None or timeline.end is None:
        return _no_data("status", title, "No StatusNotification recorded.")
    left, right, top = 260.0, W - 20.0, 40.0
    t0, t1 = timeline.start.timestamp(), timeline.end.timestamp()
    statuses = list(dict.fromkeys(s.status for lane in timeline.lanes for s in lane.spans))
    body = [_legend(statuses, left, 20)]
    for i, lane in enumerate(timeline.lanes):
        body.append(_lane(lane, top + i * ROW, left, right, t0, t1))
    bottom = top + len(timeline.lanes) * ROW + 4
    body += _time_axis(t0, t1, left, right, bottom)
    body.append(_axis_label((left + right) / 2, bottom + 38, "time (UTC)"))
    return _svg("status", bottom + 48, title, body)


def _lane(lane: Lane, y: float, left: float, right: float, t0: float, t1: float) -> str:
    scale = (right - left) / max(t1 - t0, 1e-9)
    parts = [_text(left - 8, y + 16, f"{lane.identity} · {lane.connector}", "label", "end")]
    for span in lane.spans:
        x = left + (span.start.timestamp() - t0) * scale
        w = max((span.end.timestamp() - span.start.timestamp()) * scale, 1.0)
        attrs = f' data-series="{esc(span.status)}"'
        parts.append(_rect(x, y + 3, w, ROW - 6, color(span.status), _span_tip(lane, span), attrs))
    return f'<g data-lane="" data-identity="{esc(lane.identity)}">{"".join(parts)}</g>'


def _span_tip(lane: Lane, span: Span) -> str:
    seconds = (span.end - span.start).total_seconds()
    tip = f"{lane.identity} {lane.connector}: {span.status}"
    if span.error_code and span.error_code != "NoError":
        tip += f" ({span.error_code})"
    tip += f", {fmt_stamp(span.start)} to {fmt_stamp(span.end)} ({fmt_duration(seconds)})"
    if span.current:
        tip += ", still so when last seen"
    if span.periods > 1:
        tip += f"; {span.periods - 1} shorter period(s) folded in"
    return tip


def latency_chart(report: Report) -> str:
    rows, title = [r for r in report.latency if r.bins], "Response latency by action"
    if not rows:
        return _no_data("latency", title, "No answered CALL recorded.")
    left, right, top, height = 250.0, W - 230.0, 10.0, 34.0
    low = min(b for r in rows for b, _ in r.bins)
    high = max(b for r in rows for b, _ in r.bins) + 1
    decades = range(math.floor(low / BINS_PER_DECADE), math.ceil(high / BINS_PER_DECADE) + 1)
    k0, k1 = decades[0] * BINS_PER_DECADE, decades[-1] * BINS_PER_DECADE

    def x_of(k: float) -> float:
        return left + (k - k0) / max(k1 - k0, 1) * (right - left)

    body = [_latency_row(r, top + i * height, height, x_of) for i, r in enumerate(rows)]
    bottom = top + len(rows) * height + 4
    body.append(_line(left, bottom, right, bottom, "axis"))
    for d in decades:
        x = x_of(d * BINS_PER_DECADE)
        body += [
            _line(x, top, x, bottom, "grid"),
            _text(x, bottom + 18, fmt_ms(10.0**d), "tick", "middle"),
        ]
    body.append(_axis_label((left + right) / 2, bottom + 36, "latency (log scale); | p50, ¦ p99"))
    return _svg("latency", bottom + 46, title, body)


def _latency_row(row: LatencyRow, y: float, height: float, x_of: Callable[[float], float]) -> str:
    leg = " (mirror)" if row.source == "mirror" else ""
    name = f"{row.action} ({DIRECTION_NAMES.get(row.direction, row.direction)}){leg}"
    label = f"{row.action} → {_to(row.direction)}{leg}"
    peak = max(n for _, n in row.bins)
    parts = [_text(250 - 8, y + height / 2 + 4, label, "label", "end")]
    for k, n in row.bins:
        lo, hi = 10 ** (k / BINS_PER_DECADE), 10 ** ((k + 1) / BINS_PER_DECADE)
        h = max(n / peak * (height - 8), 1.5)
        tip = f"{name}: {fmt_count(n)} answer(s) in {fmt_ms(lo)} to {fmt_ms(hi)}"
        attrs = f' data-series="{esc(row.action)}" data-count="{n}"'
        parts.append(
            _rect(
                x_of(k), y + height - 4 - h, x_of(k + 1) - x_of(k) - 1, h, color("CALL"), tip, attrs
            )
        )
    for q, value, cls in (("p50", row.p50_ms, "p50"), ("p99", row.p99_ms, "p99")):
        if value is not None and value > 0:
            x = x_of(math.log10(max(value, 0.01)) * BINS_PER_DECADE)
            parts.append(
                f'<path d="M{x:.2f} {y + 2:.2f}V{y + height - 2:.2f}" class="{cls}">'
                f"<title>{esc(f'{name}: {q} {fmt_ms(value)}')}</title></path>"
            )
    summary = f"p50 {fmt_ms(row.p50_ms)} · p99 {fmt_ms(row.p99_ms)}"
    parts.append(_text(W - 222, y + height / 2 + 4, summary, "value"))
    return f"<g>{''.join(parts)}</g>"


def _to(direction: str) -> str:
    return "CSMS" if direction == "to_csms" else "charger"


def errors_chart(report: Report) -> str:
    errors, title = report.errors, "Errors by code"
    if not errors:
        return _no_data("errors", title, "No CALLERROR and no unanswered CALL.")
    bars = [
        Bar(
            label=e.code,
            value=e.count,
            text=fmt_count(e.count),
            key=e.kind,
            tip=f"{e.code} ({e.kind}): {fmt_count(e.count)}"
            + (f", mostly {e.top_action}" if e.top_action else "")
            + f" ({e.actions} action(s))",
            attrs=f' data-count="{e.count}"',
        )
        for e in errors
    ]
    return _hbars("errors", title, bars, "count", legend=True)
