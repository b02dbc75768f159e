"""``ocproxy audit``: check a recording against the OCPP schemas and RPC rules."""

from __future__ import annotations

import argparse
import errno
import io
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markdown import Markdown

from ocproxy.argtypes import number
from ocproxy.audit import report
from ocproxy.audit.auditor import AuditSettings
from ocproxy.audit.offline import AuditScope
from ocproxy.audit.parallel import audit_file
from ocproxy.audit.rules import RULES, Severity
from ocproxy.errors import ConfigError
from ocproxy.terminal import make_console

DEFAULT_JOBS = os.cpu_count() or 1

EPILOG = """\
examples:
  ocproxy audit site.duckdb
      a table per charger and rule: counts, first and last seen, one example frame each
  ocproxy audit site.duckdb --identity CP-17 --since 2026-11-01 --format json
  ocproxy audit site.duckdb --format junit --output audit.xml --fail-on warning
      for CI: exit code 1 when a finding of that severity or worse exists
  ocproxy audit fleet.duckdb --jobs 1
      one process (by default one per CPU on recordings of 40,000 frames or more)
  ocproxy audit --explain outstanding-call
  ocproxy audit --list-rules
"""


def add_audit_command(commands: Any) -> None:
    cmd = commands.add_parser(
        "audit",
        help="check a recording against the OCPP schemas and RPC rules",
        description="Check every frame of a recording against the OCPP 1.6 / 2.0.1 / 2.1 "
        "JSON schemas (from the installed ocpp package) and the OCPP-J RPC and connection "
        "rules, and report the findings. The live proxy records the same findings in "
        "table `findings` (--audit, on by default).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmd.add_argument("db", nargs="?", metavar="DB", help="the DuckDB recording")
    cmd.add_argument(
        "--identity",
        action="append",
        default=[],
        metavar="ID",
        help="only this charger (repeatable)",
    )
    cmd.add_argument(
        "--since",
        type=_timestamp,
        metavar="TIME",
        help="only connections open at or after this time (ISO 8601; UTC if no zone)",
    )
    cmd.add_argument(
        "--legs",
        choices=("charger", "mirror", "all"),
        default="charger",
        help="whose connections: the chargers' own (default), mirror (the legs ocproxy "
        "opened to a secondary CSMS with --mirror) or all",
    )
    cmd.add_argument(
        "--format",
        choices=("table", "json", "junit"),
        default="table",
        help="table (default), json for tools, junit XML for CI",
    )
    cmd.add_argument("--output", metavar="FILE", help="write the report here instead of stdout")
    cmd.add_argument(
        "--fail-on",
        choices=("info", "warning", "error"),
        default="error",
        help="exit 1 when a finding at or above this severity exists (default error)",
    )
    cmd.add_argument(
        "--response-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="answers later than this are late-response findings (default 30)",
    )
    cmd.add_argument(
        "--jobs",
        type=number(int, lambda v: v >= 1, "a number of processes (1 or more)"),
        default=DEFAULT_JOBS,
        metavar="N",
        help="audit in up to N processes, split by charger identity; the findings are the "
        f"same for any N (default: the number of CPUs, here {DEFAULT_JOBS}; 1 for one process)",
    )
    cmd.add_argument("--explain", metavar="RULE", help="explain one rule and exit")
    cmd.add_argument("--list-rules", action="store_true", help="list every rule and exit")
    cmd.set_defaults(func=run_audit)


def run_audit(args: argparse.Namespace) -> int:
    console = make_console()
    if args.explain:
        return _explain(args.explain, console)
    if args.list_rules:
        return _list_rules(console)
    if not args.db:
        raise ConfigError("audit needs a recording: ocproxy audit DB (or --explain RULE)")
    _check_output(args.output)
    settings = AuditSettings(response_timeout_s=args.response_timeout)
    scope = AuditScope(tuple(args.identity), args.since, args.legs)
    findings, evidence, identities = audit_file(args.db, scope, settings, args.jobs)
    groups = report.group(findings, evidence, identities)
    fail_on = Severity.parse(args.fail_on)
    if args.format == "table":
        _emit_table(groups, len(identities), args.output, console)
    elif args.format == "json":
        _write(report.to_json(groups, findings, identities), args.output)
    else:
        _write(report.to_junit(groups, sorted(set(identities.values())), fail_on), args.output)
    return 1 if any(f.severity >= fail_on for f in findings) else 0


def _emit_table(
    groups: list[report.Group], connections: int, output: str | None, console: Console
) -> None:
    if output is None:
        console.print(report.table(groups, connections))
        return
    buffer = io.StringIO()
    make_console(file=buffer).print(report.table(groups, connections))
    _write(buffer.getvalue(), output)


def _write(text: str, output: str | None) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise _cannot_write(output, exc) from exc


def _check_output(output: str | None) -> None:
    """Refuse an --output that cannot be written before the audit, not after it."""
    if output is None:
        return
    path = Path(output)
    if path.is_dir():
        raise _cannot_write(output, IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR)))
    if not path.parent.is_dir():
        code = errno.ENOTDIR if path.parent.exists() else errno.ENOENT
        raise _cannot_write(output, OSError(code, os.strerror(code)))


def _cannot_write(output: str, exc: OSError) -> ConfigError:
    # Worded as `ocproxy query -o` words it; a ConfigError (exit 2), since exit 1 is
    # what --fail-on gives CI for "there is a finding".
    return ConfigError(f"cannot write {output}: {exc.strerror or exc}")


def _explain(rule_id: str, console: Console) -> int:
    rule = RULES.get(rule_id)
    if rule is None:
        raise ConfigError(f"unknown rule {rule_id!r}; see ocproxy audit --list-rules")
    console.print(Markdown(f"**{rule.id}** ({rule.severity}): {rule.title}\n\n{rule.explanation}"))
    return 0


def _list_rules(console: Console) -> int:
    from rich.table import Table

    table = Table(title="ocproxy audit rules", title_justify="left")
    for name in ("rule", "severity", "title"):
        table.add_column(name)
    for rule in RULES.values():
        table.add_row(rule.id, str(rule.severity), rule.title)
    console.print(table)
    return 0


def _timestamp(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)
