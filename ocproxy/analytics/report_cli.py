"""``ocproxy report``: a terminal summary of recordings and, with ``--html``, a report page.

:mod:`report` gathers the figures (named queries plus two cheap aggregates), :mod:`html`
renders the page; this module prints the summary with rich and writes the page. Bad input
is a :class:`ConfigError` (one line, exit code 2): a SOURCE that is not a recording,
recordings with nothing in them, an ``--html`` path that cannot be written.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from rich.table import Table
from rich.text import Text

from ocproxy.analytics.html import DIRECTION_NAMES, render_html
from ocproxy.analytics.report import (
    DEFAULT_TOP,
    Report,
    build_report,
    fmt_count,
    fmt_kwh,
    fmt_ms,
    fmt_stamp,
)
from ocproxy.argtypes import positive_int
from ocproxy.errors import ConfigError, OcproxyError
from ocproxy.terminal import make_console

_EPILOG = """\
SOURCE is a recording (.duckdb file), a glob of them ('site-*.duckdb', quoted) or a
Parquet export directory; several are reported on as one.

examples:
  ocproxy report site.duckdb
  ocproxy report site.duckdb --html site-report.html
  ocproxy report 'rec/*.duckdb' export/ --html fleet.html --top 40
  ocproxy report site.duckdb --identity CP-17 --html cp17.html
  ocproxy report site.duckdb --mirror --html mirror.html --ignore interval

The page is one self-contained file (inline SVG charts, no network access): message
volume over time, energy per transaction, status timeline per charger, latency by
action, errors by code, and tables per charger and action.

With --mirror (a recording of `ocproxy proxy --mirror URL`): per action, did the
secondary answer the same, differently, with a CALLERROR or not at all; what it
rejected per charger; latency of both side by side; its own CALLs; the chargers it
never accepted. Timestamps and ids (currentTime, transactionId, ...) are not compared.
"""


def add_report_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``report`` on the ``ocproxy`` sub-command parser."""
    cmd = commands.add_parser(
        "report",
        help="summarise recordings in the terminal and as an HTML page with charts",
        description="Summarise one or more recordings: a terminal summary, and with --html "
        "a self-contained HTML report with charts that opens offline.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmd.add_argument("sources", nargs="+", metavar="SOURCE", help="recordings to report on")
    cmd.add_argument("--html", metavar="FILE", help="also write the HTML report to FILE")
    cmd.add_argument("--identity", metavar="ID", help="only this charger (default: every one)")
    cmd.add_argument(
        "--legs",
        choices=("charger", "mirror", "all"),
        default="charger",
        help="whose connections: the chargers' own (default), mirror (the legs ocproxy "
        "opened to a secondary CSMS, see --mirror in ocproxy proxy) or all (the latency "
        "of the mirror legs is then shown apart)",
    )
    cmd.add_argument(
        "--mirror",
        action="store_true",
        help="instead: would the secondary CSMS (proxy --mirror) have served these "
        "chargers? its answers against the primary's, per action and charger",
    )
    cmd.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="[ACTION:]PATH",
        help="with --mirror: also leave this JSON path out of the comparison, as in "
        "ocproxy replay (e.g. interval, Authorize:idTagInfo.expiryDate); repeatable",
    )
    cmd.add_argument(
        "--no-default-ignore",
        action="store_true",
        help="with --mirror: compare timestamps and ids (currentTime, transactionId, ...) too",
    )
    cmd.add_argument(
        "--top",
        type=positive_int,
        default=DEFAULT_TOP,
        metavar="N",
        help="chargers in the status timeline and tables, transactions in the energy "
        f"chart, actions in the latency chart, error codes (default {DEFAULT_TOP})",
    )
    cmd.set_defaults(func=run_report_command)


def run_report_command(
    args: argparse.Namespace, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    if args.mirror or args.ignore or args.no_default_ignore:
        return run_mirror_report(args, out, err)
    target = _HtmlTarget(args.html) if args.html else None
    try:
        report = build_report(args.sources, identity=args.identity, top=args.top, legs=args.legs)
        if target is not None:
            target.write(render_html(report))
    finally:
        if target is not None:
            target.discard()
    if report.empty:
        raise ConfigError(_nothing_to_report(report, args.html))
    _print_or_ignore_broken_pipe(report, out)
    for note in report.notes:
        print(f"ocproxy: note: {note}", file=err)
    if args.html:
        size = Path(args.html).stat().st_size
        print(f"ocproxy: wrote {args.html} ({size / 1024:,.0f} KiB)", file=err)
    return 0


def run_mirror_report(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``--mirror``: the secondary's answers against the primary's (report_mirror)."""
    from ocproxy.analytics.html_mirror import render_mirror_html
    from ocproxy.analytics.mirror_terminal import print_mirror_report
    from ocproxy.analytics.report_mirror import build_mirror_report

    if not args.mirror:
        given = "--ignore" if args.ignore else "--no-default-ignore"
        raise ConfigError(f"{given} goes with --mirror")
    if args.legs != "charger":
        raise ConfigError("--legs does not go with --mirror (it compares both legs)")
    target = _HtmlTarget(args.html) if args.html else None
    try:
        report = build_mirror_report(
            args.sources,
            identity=args.identity,
            ignore=args.ignore,
            default_ignores=not args.no_default_ignore,
            top=args.top,
        )
        if target is not None:
            target.write(render_mirror_html(report))
    finally:
        if target is not None:
            target.discard()
    try:
        print_mirror_report(report, out)
        out.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    for note in report.notes:
        print(f"ocproxy: note: {note}", file=err)
    if args.html:
        size = Path(args.html).stat().st_size
        print(f"ocproxy: wrote {args.html} ({size / 1024:,.0f} KiB)", file=err)
    return 0


def _nothing_to_report(report: Report, html: str | None) -> str:
    where = ", ".join(report.sources)
    if report.identity:
        who = f"charger {report.identity!r} has"
    else:
        who = "it holds" if len(report.sources) == 1 else "they hold"
    wrote = f" (wrote an empty report to {html})" if html else ""
    return f"{where}: {who} no connections or frames, nothing to report{wrote}"


class _HtmlTarget:
    """The --html file: checked before the queries run, replaced whole when written."""

    def __init__(self, name: str) -> None:
        self.path = Path(name)
        if self.path.is_dir():
            raise ConfigError(f"--html {name}: is a directory")
        try:
            handle, temp = tempfile.mkstemp(
                prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
            )
        except OSError as exc:
            raise ConfigError(f"cannot write --html {name}: {exc.strerror or exc}") from exc
        os.close(handle)
        self.temp: Path | None = Path(temp)

    def write(self, text: str) -> None:
        assert self.temp is not None
        try:
            self.temp.write_text(text, encoding="utf-8")
            self.temp.chmod(0o644)
            os.replace(self.temp, self.path)
        except OSError as exc:
            raise OcproxyError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        self.temp = None

    def discard(self) -> None:
        if self.temp is not None:
            self.temp.unlink(missing_ok=True)
            self.temp = None


def _print_or_ignore_broken_pipe(report: Report, out: TextIO) -> None:
    try:
        print_summary(report, out)
        out.flush()
    except BrokenPipeError:
        # `ocproxy report ... | head`: the reader has gone, which is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def print_summary(report: Report, stream: TextIO) -> None:
    """The terminal summary: overview, chargers, latency of the busiest actions, errors."""
    console = make_console(file=stream, highlight=False)
    for table in (_overview(report), _chargers(report), _latency(report), _errors(report)):
        if table is not None:
            console.print(table)


def _overview(report: Report) -> Table:
    o = report.overview
    table = Table(title="ocproxy report", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("sources", ", ".join(report.sources)),
        ("from", fmt_stamp(o.first_at)),
        ("to", fmt_stamp(o.last_at)),
        ("connections", f"{fmt_count(o.connections)} ({fmt_count(o.refused)} refused)"),
        ("chargers", fmt_count(o.chargers)),
        ("frames", f"{fmt_count(o.frames)} ({fmt_count(o.malformed)} malformed)"),
        ("bytes", fmt_count(o.bytes)),
        ("transactions", fmt_count(o.transactions)),
        ("energy", fmt_kwh(o.energy_wh)),
        ("CALLERRORs", fmt_count(o.callerrors)),
        ("unanswered CALLs", fmt_count(o.unanswered)),
        ("audit findings", _findings_line(report)),
    ]
    if report.identity:
        rows.insert(1, ("charger", report.identity))
    for name, value in rows:
        table.add_row(name, Text(value))
    return table


def _findings_line(report: Report) -> str:
    f = report.findings
    if not f.total:
        return "none recorded"
    parts = ", ".join(f"{fmt_count(n)} {severity}" for severity, n in f.by_severity)
    return f"{fmt_count(f.total)} ({parts}) in the HTML report; ocproxy audit lists them"


def _numeric_table(title: str, columns: list[str], text_columns: int = 2) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i < text_columns else "right")
    return table


def _chargers(report: Report) -> Table | None:
    if not report.chargers:
        return None
    columns = ["charger", "connections", "frames", "transactions", "energy", "errors"]
    table = _numeric_table(f"Chargers (the {len(report.chargers)} busiest)", columns, 1)
    for c in report.chargers:
        errors = f"{fmt_count(c.errors)} + {fmt_count(c.unanswered)} unanswered"
        cells = [c.identity, fmt_count(c.connections), fmt_count(c.frames)]
        cells += [fmt_count(c.transactions), fmt_kwh(c.energy_wh), errors]
        table.add_row(*(Text(cell) for cell in cells))
    return table


def _latency(report: Report) -> Table | None:
    if not report.latency:
        return None
    columns = ["action", "direction", "answers", "CALLERRORs", "p50", "p99", "max"]
    table = _numeric_table("Latency of the busiest actions", columns)
    for r in report.latency:
        cells = [r.action, DIRECTION_NAMES.get(r.direction, r.direction), fmt_count(r.calls)]
        cells += [fmt_count(r.errors), fmt_ms(r.p50_ms), fmt_ms(r.p99_ms), fmt_ms(r.max_ms)]
        table.add_row(*(Text(cell) for cell in cells))
    return table


def _errors(report: Report) -> Table | None:
    if not report.errors:
        return None
    table = _numeric_table("Errors by code", ["code", "kind", "count", "mostly"])
    for e in report.errors:
        cells = [e.code, e.kind, fmt_count(e.count), e.top_action or ""]
        table.add_row(*(Text(cell) for cell in cells))
    return table
