"""``ocproxy query``: run SQL or a named query over one or more recordings.

A thin layer: :mod:`sources` opens the recordings, :mod:`queries` finds and binds the
query, :mod:`output` writes the result. Every failure is an :class:`OcproxyError`
(``ConfigError``, exit code 2, for bad input), reported by ``ocproxy.cli.main`` as one
line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any, TextIO

import pyarrow as pa
from rich.table import Table
from rich.text import Text

from ocproxy.analytics.output import FORMATS, choose_format, write_result
from ocproxy.analytics.queries import (
    NamedQuery,
    Param,
    QueryResult,
    bind,
    get_query,
    lenient_rows,
    load_queries,
    looks_like_name,
    parse_params,
    run,
)
from ocproxy.analytics.sources import open_sources
from ocproxy.audit.offline import require_identities
from ocproxy.control.cli import add_control_option
from ocproxy.control.client import ControlClient, RequestRefused
from ocproxy.errors import ConfigError, no_such_file
from ocproxy.proxy.config import parse_control
from ocproxy.terminal import make_console

# What the control endpoint answers when its recorder is not in-process (not a SQL error).
_NOT_LIVE = "recording is not reachable live"

_USAGE = """\
ocproxy query [--param NAME=VALUE] [--format FORMAT] [--output FILE] SOURCE... (SQL | NAME)
       ocproxy query --live [--control HOST:PORT] (SQL | NAME)
       ocproxy query --list"""

_EPILOG = """\
SOURCE is a recording (.duckdb file), a glob of them ('site-*.duckdb', quoted so the
shell leaves it alone) or a Parquet export directory; several are queried as one.
The views frames, connections, findings, runs and run_stats span all of them. The
last argument is the query: SQL, a .sql file, or the NAME of a named query. A table
shows at most 1000 rows; csv, json and parquet have them all.

examples:
  ocproxy query --list
  ocproxy query site.duckdb transactions
  ocproxy query site.duckdb transactions --param identity=CP-17 --format csv -o tx.csv
  ocproxy query 'rec/*.duckdb' "SELECT action, count(*) FROM frames GROUP BY ALL"
  ocproxy query site.duckdb trace --param identity=CP-17 --param since=2026-01-31T12:00Z

Rows read leniently from payloads that violate the OCPP schemas (numbers as strings,
missing fields) are kept, marked in the issues column, and counted on stderr.
"""


def add_query_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``query`` on the ``ocproxy`` sub-command parser."""
    cmd = commands.add_parser(
        "query",
        help="run SQL or a named query over recordings",
        description="Query one or more recordings with SQL or a named query "
        "(`--list` shows them) and print a table, CSV, JSON or Parquet.",
        usage=_USAGE,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmd.add_argument("words", nargs="*", metavar="SOURCE... (SQL | NAME)", help=argparse.SUPPRESS)
    cmd.add_argument("--list", action="store_true", help="list the named queries and exit")
    cmd.add_argument(
        "--param",
        action="append",
        metavar="NAME=VALUE",
        help="a query parameter ($NAME in the SQL); repeat for several",
    )
    cmd.add_argument(
        "--format",
        choices=FORMATS,
        help="output format (default: from --output's suffix, else table)",
    )
    cmd.add_argument(
        "-o", "--output", metavar="FILE", help="write to FILE instead of standard output"
    )
    cmd.add_argument(
        "--live",
        action="store_true",
        help="query a running proxy's recording through its control endpoint (no SOURCE)",
    )
    add_control_option(cmd)
    cmd.set_defaults(func=run_query_command)


def run_query_command(
    args: argparse.Namespace, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    if args.list:
        print_query_list(out)
        return 0
    fmt = choose_format(args.format, args.output)
    if args.live:
        if len(args.words) != 1:
            raise ConfigError("query --live takes no SOURCE: just SQL or a query NAME")
        result, title = _live_query(args, args.words[0], parse_params(args.param))
    else:
        if len(args.words) < 2:
            raise ConfigError(
                "query needs one or more SOURCEs, then SQL or a query NAME (or --list)"
            )
        *sources, text = args.words
        result, title = _query(sources, text, parse_params(args.param), err)
    try:
        written = write_result(result.table, fmt, args.output, title=title, stdout=out)
    except BrokenPipeError:
        # `ocproxy query ... | head`: the reader has gone, which is not an error; point
        # stdout at /dev/null so the interpreter's final flush does not fail either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    _report(err, result, written, args.output)
    return 0


def _query(
    sources: list[str], text: str, given: dict[str, str], err: TextIO
) -> tuple[QueryResult, str | None]:
    """Run the query over the sources; the notes about the sources go to ``err``."""
    sql, params, what, title = _resolve(text, given)
    with open_sources(sources) as opened:
        for note in opened.notes:
            _note(err, note)
        identity = params.get("identity")
        if identity is not None:  # a misspelt charger: exit 2, not an empty table
            require_identities(opened.db, [identity], " ".join(sources))
        return run(opened.db, sql, params, what=what), title


def _live_query(
    args: argparse.Namespace, text: str, given: dict[str, str]
) -> tuple[QueryResult, str | None]:
    """The query run by a live proxy's writer thread (only it may open the file)."""
    sql, params, what, title = _resolve(text, given)
    host, port = parse_control(args.control)

    async def ask() -> dict[str, Any]:
        async with ControlClient(host, port, args.token) as control:
            answer: dict[str, Any] = await control.request("sql", query=sql, params=params)
            return answer

    try:
        answer = asyncio.run(ask())
    except RequestRefused as exc:
        # The proxy ran the query and DuckDB refused it (bad SQL, not a SELECT): a bad
        # argument, exit 2 as offline. Not reaching the proxy stays a ControlError (exit 1),
        # and so does a proxy that cannot run live SQL at all.
        if _NOT_LIVE in exc.reason:
            raise
        raise ConfigError(f"{what} failed: {exc.reason}") from exc
    if answer.get("rotating"):
        # Only the writer may open the current file; the earlier ones are readable as
        # they are: say so, or a count looks like the whole recording's.
        print(
            f"ocproxy: live, on {answer.get('file')} only (the current file of --rotate; "
            "query the earlier files, or all of them with a glob, without --live)",
            file=sys.stderr,
        )
    columns = [str(c) for c in answer["columns"]]
    rows = answer["rows"]
    table = pa.table({c: [row[i] for row in rows] for i, c in enumerate(columns)})
    return QueryResult(table, lenient_rows(table)), title


def _resolve(
    text: str, given: dict[str, str]
) -> tuple[str, dict[str, str | None], str, str | None]:
    """(sql, parameters, what to call it in errors, title) for the last argument."""
    path = _existing(text)
    if path is not None and path.suffix == ".sql" and path.is_file():
        return _read_sql(path), dict(given), f"query in {text}", None
    if path is not None:
        raise ConfigError(
            f"{text} is a file, not SQL or a query name: the last argument is the query"
        )
    if text.endswith(".sql") and "\n" not in text:
        raise ConfigError(no_such_file(text))
    if looks_like_name(text):
        query = get_query(text)
        return query.sql, bind(query, given), f"query {query.name}", query.title
    return text, dict(given), "SQL", None


def _existing(text: str) -> Path | None:
    # SQL is rarely a file name, and a long statement is not a name the OS will stat.
    try:
        path = Path(text)
        return path if path.exists() else None
    except (OSError, ValueError):
        return None


def _read_sql(path: Path) -> str:
    try:
        return path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def _report(err: TextIO, result: QueryResult, written: int, output: str | None) -> None:
    total = result.table.num_rows
    if written < total:
        _note(
            err,
            f"the table shows the first {written} of {total} rows: --format csv, json or "
            "parquet, or --output FILE, give all of them",
        )
    if result.lenient_rows:
        rows = result.lenient_rows
        _note(
            err,
            f"{rows} row{'s' if rows != 1 else ''} read leniently from payloads that "
            "violate the OCPP schemas (see the issues column)",
        )
    if output is not None:
        _note(err, f"wrote {total} row{'s' if total != 1 else ''} to {output}")


def _note(err: TextIO, message: str) -> None:
    print(f"ocproxy: note: {message}", file=err)


def print_query_list(stream: TextIO) -> None:
    """The named queries: name, what each returns, and its parameters."""
    is_terminal = stream.isatty() if hasattr(stream, "isatty") else False
    # Prose in cells: in a log, wrapped at a readable width rather than at its natural one.
    console = make_console(file=stream, width=None if is_terminal else 160)
    table = Table(title="Named queries (ocproxy query SOURCE... NAME)", show_lines=True)
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("returns")
    table.add_column("parameters (--param NAME=VALUE)")
    for query in load_queries().values():
        table.add_row(query.name, _describe(query), Text("\n".join(map(_param_text, query.params))))
    console.print(table)


def _describe(query: NamedQuery) -> Text:
    text = Text(query.title, style="bold")
    text.append(f"\n{query.description}")
    return text


def _param_text(param: Param) -> str:
    if param.required:
        return f"{param.name} (required): {param.description}"
    if param.default is not None:
        return f"{param.name} = {param.default}: {param.description}"
    return f"{param.name}: {param.description}"
