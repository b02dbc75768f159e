"""The report's "Audit findings" section: a timeline by severity, counts per charger,
and one row per charger and rule with its example frame.

Pure functions of :class:`~ocproxy.analytics.report_findings.Findings`, drawn with the
primitives of :mod:`ocproxy.analytics.svg`; every value from the recording goes
through :func:`~ocproxy.analytics.svg.esc`.
"""

from __future__ import annotations

from ocproxy.analytics.report_data import fmt_count, fmt_stamp, fmt_step
from ocproxy.analytics.report_findings import FindingGroup, Findings
from ocproxy.analytics.svg import (
    W,
    _axis_label,
    _legend,
    _line,
    _no_data,
    _rect,
    _svg,
    _text,
    _time_axis,
    color,
    esc,
    nice_ticks,
)
from ocproxy.audit.rules import RULES

_PLURAL = {"error": "errors", "warning": "warnings", "info": "info"}


def findings_note(findings: Findings) -> str:
    if not findings.total:
        return ""
    parts = ", ".join(
        f"{fmt_count(n)} {_PLURAL[s] if n != 1 else s}" for s, n in findings.by_severity
    )
    text = (
        f"{fmt_count(findings.total)} findings ({parts}), as the audit recorded them with the "
        "frames; `ocproxy audit SOURCE` checks again, with other options."
    )
    return f'<p class="note">{esc(text)}</p>'


def findings_html(findings: Findings) -> str:
    """The chart, the per-charger counts and the per-rule table with examples."""
    if not findings.total:
        return findings_chart(findings)
    return (
        findings_chart(findings)
        + _chargers_table(findings)
        + "<h3>By charger and rule</h3>"
        + _groups_table(findings)
    )


def findings_chart(findings: Findings) -> str:
    title = "Audit findings over time"
    if not findings.starts:
        return _no_data("findings", title, "No findings recorded.")
    left, right, top, bottom = 70.0, W - 20.0, 40.0, 200.0
    n = len(findings.starts)
    totals = [sum(c[i] for c in findings.series.values()) for i in range(n)]
    ticks = nice_ticks(max(totals))
    width, gap = (right - left) / n, (1.0 if (right - left) / n > 4 else 0.0)
    body = [_line(left, bottom - t / ticks[-1] * (bottom - top), right, bottom - t / ticks[-1]
                  * (bottom - top), "grid") for t in ticks]  # fmt: skip
    body += [
        _text(left - 6, bottom - t / ticks[-1] * (bottom - top) + 4, fmt_count(t), "tick", "end")
        for t in ticks
    ]
    body.append(_legend(list(findings.series), left, 20))
    for i, start in enumerate(findings.starts):
        y = bottom
        when = f"{fmt_stamp(start)} (+{fmt_step(findings.bucket_s)})"
        for severity, counts in findings.series.items():
            h = counts[i] / ticks[-1] * (bottom - top)
            if counts[i]:
                tip = f"{when}: {fmt_count(counts[i])} {severity}"
                attrs = f' data-series="{severity}" data-count="{counts[i]}"'
                body.append(
                    _rect(left + i * width, y - h, width - gap, h, color(severity), tip, attrs)
                )
            y -= h
    t0 = findings.starts[0].timestamp()
    body += _time_axis(t0, t0 + n * findings.bucket_s, left, right, bottom)
    body.append(_axis_label(18, (top + bottom) / 2, f"per {fmt_step(findings.bucket_s)}", True))
    body.append(_axis_label((left + right) / 2, bottom + 38, "time (UTC)"))
    return _svg("findings", bottom + 48, title, body)


def _chargers_table(findings: Findings) -> str:
    rows = "".join(
        f'<tr data-charger="{esc(c.identity)}"><td>{esc(c.identity)}</td>'
        f"<td>{fmt_count(c.error)}</td><td>{fmt_count(c.warning)}</td>"
        f"<td>{fmt_count(c.info)}</td><td>{fmt_count(c.total)}</td></tr>"
        for c in findings.chargers
    )
    more = ""
    if findings.charger_count > len(findings.chargers):
        more = (
            f'<p class="note">The {len(findings.chargers)} of {findings.charger_count} chargers '
            "with the most errors.</p>"
        )
    return (
        '<table class="findings-chargers"><thead><tr><th>charger</th><th>errors</th>'
        f"<th>warnings</th><th>info</th><th>findings</th></tr></thead><tbody>{rows}</tbody>"
        f"</table>{more}"
    )


def _groups_table(findings: Findings) -> str:
    rows = "".join(_group_row(g) for g in findings.groups)
    more = ""
    if findings.group_count > len(findings.groups):
        more = (
            f'<p class="note">{len(findings.groups)} of {findings.group_count} (charger, rule) '
            "groups, worst severity first.</p>"
        )
    return (
        '<table class="findings"><thead><tr><th>charger</th><th>rule</th><th>severity</th>'
        "<th>count</th><th>first seen</th><th>last seen</th><th>example</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>{more}"
    )


def _group_row(g: FindingGroup) -> str:
    rule = RULES.get(g.rule)
    title = f' title="{esc(rule.title)}"' if rule is not None else ""
    where = f" at {g.path}" if g.path else ""
    cited = f"connection {g.connection_id}" + (f", frame {g.seq}" if g.seq is not None else "")
    example = f'<div class="message">{esc(g.message)}</div>'
    if g.frame is not None:
        example += (
            f"<details><summary>{esc(cited)}{esc(where)}</summary>"
            f"<pre>{esc(g.frame)}</pre></details>"
        )
    else:
        example += f'<div class="cited">{esc(cited)}</div>'
    return (
        f'<tr data-rule="{esc(g.rule)}" data-severity="{g.severity}">'
        f"<td>{esc(g.identity)}</td><td><abbr{title}>{esc(g.rule)}</abbr></td>"
        f'<td class="sev-{g.severity}">{g.severity}</td><td>{fmt_count(g.count)}</td>'
        f"<td>{esc(fmt_stamp(g.first_at))}</td><td>{esc(fmt_stamp(g.last_at))}</td>"
        f'<td class="example">{example}</td></tr>'
    )


CSS = """
table.findings td.example{text-align:left;max-width:460px}
table.findings pre{white-space:pre-wrap;word-break:break-all;font-size:12px;background:#f6f8fa;
padding:6px;margin:4px 0;max-height:240px;overflow:auto}
table.findings summary{cursor:pointer;color:#555}
.sev-error{color:#c0392b;font-weight:600}.sev-warning{color:#b35900}.sev-info{color:#555}
h3{font-size:15px;margin:16px 0 4px}
"""
