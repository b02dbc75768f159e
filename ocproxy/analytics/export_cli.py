"""``ocproxy export``: copy recordings into a Parquet lake (see :mod:`export`).

Bad input (no such recording, not a recording, a directory that is not a lake, an
unknown compression) is a :class:`ConfigError`: one line, exit code 2, reported by
``ocproxy.cli.main``. A write that fails is an :class:`OcproxyError` (exit code 1).
"""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from ocproxy.analytics import export
from ocproxy.analytics.export import COMPRESSIONS, DEFAULT_COMPRESSION, ExportResult
from ocproxy.terminal import make_console

_USAGE = "ocproxy export [--compression CODEC] [--quiet] DB... --parquet DIR"

_EPILOG = """\
DIR holds one directory per table, hive-partitioned:
  frames/date=YYYY-MM-DD/identity=ID/part-RUN-N.parquet  (and connections/, findings/)
  runs/date=YYYY-MM-DD/part-RUN-N.parquet                (and run_stats/)
date is the UTC date; identity is percent-encoded where it is not A-Z a-z 0-9 - . _ ~.
Files are named after the proxy run that recorded them: exporting a recording again
replaces its files (no duplicates), exporting another one adds its runs.

examples:
  ocproxy export site.duckdb --parquet lake/
  ocproxy export 'recordings/*.duckdb' --parquet /data/ocpp-lake --compression snappy
  ocproxy query lake/ transactions
  ocproxy query lake/ "SELECT action, count(*) FROM frames GROUP BY ALL"
      the lake is a SOURCE like a recording; other tools read its files directly
      (docs/commands/export.md: DuckDB, Spark, Trino)
"""


def add_export_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``export`` on the ``ocproxy`` sub-command parser."""
    cmd = commands.add_parser(
        "export",
        help="copy recordings into a Parquet lake, partitioned by date and identity",
        description="Copy one or more recordings into a directory of Parquet files, "
        "hive-partitioned by UTC date and charger identity, that DuckDB, Spark or Trino "
        "can read and `ocproxy query DIR ...` queries like a recording. Appendable: "
        "recordings from many proxies can land in one directory.",
        usage=_USAGE,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmd.add_argument(
        "recordings",
        nargs="+",
        metavar="DB",
        help="recordings (.duckdb files, or globs of them, quoted)",
    )
    cmd.add_argument(
        "--parquet",
        required=True,
        metavar="DIR",
        help="the lake directory (created if missing)",
    )
    cmd.add_argument(
        "--compression",
        choices=COMPRESSIONS,
        default=DEFAULT_COMPRESSION,
        help=f"Parquet compression codec (default {DEFAULT_COMPRESSION})",
    )
    cmd.add_argument(
        "--quiet", action="store_true", help="no progress bar and no summary, only errors"
    )
    cmd.set_defaults(func=run_export_command)


def run_export_command(args: argparse.Namespace, stderr: TextIO | None = None) -> int:
    err = stderr if stderr is not None else sys.stderr
    console = make_console(file=err, highlight=False)
    with ExitStack() as stack:
        bar: _Bar | None = None
        if not args.quiet and console.is_terminal:
            bar = stack.enter_context(_Bar(console))
        results = export.export_recordings(
            args.recordings,
            args.parquet,
            compression=args.compression,
            progress=None if bar is None else bar.start,
        )
    if not args.quiet:
        for result in results:
            console.print(summary(result), soft_wrap=True)
    return 0


def summary(result: ExportResult) -> str:
    """One line: what a recording added to the lake."""
    rows = ", ".join(f"{table} {count:,}" for table, count in result.rows.items())
    line = (
        f"ocproxy: exported {result.recording} to {result.lake}/, rows: {rows} "
        f"({result.files_written:,} files"
    )
    if result.files_replaced:
        line += f", {result.files_replaced:,} from an earlier export of these runs replaced"
    return f"{line}) in {result.seconds:.1f} s"


class _Bar:
    """One progress bar per table of the recording being exported (on a terminal)."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.tasks: dict[str, TaskID] = {}
        self.recording = ""

    def __enter__(self) -> _Bar:
        self.progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.stop()

    def start(self, recording: Path) -> export.Progress:
        """The progress callback for one recording."""
        for task in self.tasks.values():
            self.progress.remove_task(task)
        self.tasks = {}
        self.recording = str(recording)
        return self.update

    def update(self, step: str, percent: float) -> None:
        task = self.tasks.get(step)
        if task is None:
            task = self.progress.add_task(f"{self.recording}: {step}", total=100.0)
            self.tasks[step] = task
        self.progress.update(task, completed=percent)
