"""``ocproxy import``: bring captures and logs into a recording with their own times."""

from __future__ import annotations

import argparse
import glob
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from ocproxy.argtypes import number, positive_float
from ocproxy.audit.auditor import AuditSettings
from ocproxy.errors import ConfigError
from ocproxy.idkey import resolve_id_key
from ocproxy.importer.logs import LogOptions
from ocproxy.importer.mapping import VERSIONS, ColumnMap
from ocproxy.importer.pcap import SOURCE as CAPTURE_SOURCE
from ocproxy.importer.pcap import CaptureOptions
from ocproxy.importer.run import ImportResult, file_kind, import_capture, import_log
from ocproxy.importer.staging import StagingOptions
from ocproxy.recorder import DEFAULT_DB
from ocproxy.terminal import make_console

EPILOG = """\
examples:
  ocproxy import capture.pcapng --db site.duckdb
      a tcpdump / Wireshark capture of ws:// traffic: connections, handshakes, frames
  ocproxy import tls.pcapng --tls-keylog keys.log --db site.duckdb
      wss:// too, with the TLS keys the client wrote (SSLKEYLOGFILE)
  ocproxy import export.csv --map time=timestamp,identity=charger,message=frame --db site.duckdb
  ocproxy import cp17.jsonl --map time=ts,message=msg,direction=dir --charger CP-17
      a charger's own log, one JSON object a line

Each file is imported in one transaction: whole, or (on an error) not at all.
"""


def add_import_command(commands: Any) -> None:
    cmd = commands.add_parser(
        "import",
        help="import pcap/pcapng captures and CSV / JSON-lines logs into a recording",
        description="Record OCPP-J traffic that did not go through ocproxy, with each "
        "message's own time: packet captures (read with tshark, Wireshark's dissectors) and "
        "logs exported by a CSMS or a charger. Frames are parsed, paired, redacted, "
        "pseudonymised and audited as ocproxy proxy records them; connections carry "
        "source = 'import:pcap', 'import:csv' or 'import:jsonl'. A capture that began "
        "mid-connection (no upgrade seen) is read from the first whole frame, its "
        "connection marked 'import:pcap:mid-connection'.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmd.add_argument("files", nargs="+", metavar="FILE", help="captures or logs (globs too)")
    cmd.add_argument(
        "--db", default=DEFAULT_DB, metavar="FILE", help=f"the recording (default ./{DEFAULT_DB})"
    )
    cmd.add_argument(
        "--format",
        choices=("pcap", "csv", "jsonl"),
        help="the files' format (default: from the name: .pcap/.pcapng, .csv, .jsonl/.ndjson)",
    )
    cmd.add_argument(
        "--map",
        type=_column_map,
        metavar="FIELD=COLUMN,...",
        help="logs: which column holds time, identity, message (the OCPP-J frame) and, "
        "optionally, direction; e.g. time=ts,identity=cp,message=frame (a.b: nested JSON key)",
    )
    cmd.add_argument(
        "--charger", metavar="ID", help="logs: the identity of every line (a log of one charger)"
    )
    cmd.add_argument(
        "--ocpp",
        choices=tuple(VERSIONS),
        help="logs: the chargers' OCPP version (default: read from each charger's messages, "
        "else 1.6)",
    )
    cmd.add_argument(
        "--tls-keylog", metavar="FILE", help="captures: TLS key log file, to read wss:// traffic"
    )
    cmd.add_argument(
        "--port",
        type=number(int, lambda v: 0 < v < 65536, "a TCP port"),
        action="append",
        default=[],
        metavar="PORT",
        help="captures: also decode this TCP port as HTTP (TLS with --tls-keylog); repeatable",
    )
    cmd.add_argument(
        "--keep-ids",
        action="store_true",
        help="keep driver ids (idTag, idToken) in clear; by default they are pseudonymised "
        "with the proxy's key, as ocproxy proxy records them",
    )
    cmd.add_argument("--no-audit", action="store_true", help="do not audit the imported frames")
    cmd.add_argument(
        "--response-timeout",
        type=positive_float,
        default=30.0,
        metavar="SECONDS",
        help="the audit's response timeout (default 30)",
    )
    cmd.add_argument(
        "--jobs",
        type=number(int, lambda v: v >= 1, "a number of processes (1 or more)"),
        default=os.cpu_count() or 1,
        metavar="N",
        help="logs: read in up to N processes, split by charger (default: the number of CPUs)",
    )
    cmd.add_argument("--quiet", action="store_true", help="no progress bar")
    cmd.set_defaults(func=run_import)


def run_import(args: argparse.Namespace) -> int:
    console = make_console()
    files = _expand(args.files)
    kinds = {path: file_kind(path, args.format) for path in files}
    if any(k != "pcap" for k in kinds.values()):
        if args.map is None:
            raise ConfigError("a CSV or JSON-lines log needs --map time=COLUMN,message=COLUMN")
        if args.map.identity is None and args.charger is None:
            raise ConfigError("--map has no identity=COLUMN: give --charger ID for the log")
    target = Path(args.db)
    if not target.parent.is_dir():
        raise ConfigError(f"{target.parent}: no such directory for --db")
    id_key = None if args.keep_ids else resolve_id_key(None)
    audit = None if args.no_audit else AuditSettings(response_timeout_s=args.response_timeout)
    for path in files:
        result = _import_one(path, kinds[path], args, target, id_key, audit, console)
        _say(console, result, target)
    return 0


def _import_one(
    path: str,
    kind: str,
    args: argparse.Namespace,
    target: Path,
    id_key: bytes | None,
    audit: AuditSettings | None,
    console: Console,
) -> ImportResult:
    source = CAPTURE_SOURCE if kind == "pcap" else f"import:{kind}"
    staging = StagingOptions(source=source, audit=audit, id_key=id_key)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=args.quiet or not console.is_terminal,
        transient=True,
    ) as bar:
        task = bar.add_task(f"importing {path}", total=1.0 if kind != "pcap" else None)

        def progress(done: float | None) -> None:
            bar.update(task, completed=done or 0.0)

        if kind == "pcap":
            options = CaptureOptions(path, args.tls_keylog, tuple(args.port))
            return import_capture(target, options, staging, progress)
        version = VERSIONS[args.ocpp] if args.ocpp else None
        log = LogOptions(path, kind, args.map, args.charger, version)
        return import_log(target, log, staging, args.jobs, progress)


def _say(console: Console, result: ImportResult, target: Path) -> None:
    console.print(
        f"{result.path}: {result.messages:,} messages, {result.connections:,} connections "
        f"into {target} in {result.seconds:.1f} s ({result.rate:,.0f} messages/s)",
        highlight=False,
    )
    for note in result.notes:
        console.print(Text(f"  {note}", "yellow"))


def _expand(patterns: list[str]) -> list[str]:
    files: list[str] = []
    for pattern in patterns:
        found = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        if not found:
            raise ConfigError(f"{pattern}: no file matches")
        for path in found:
            if not Path(path).is_file():
                raise ConfigError(f"{path}: no such file or directory")
            files.append(path)
    return files


def _column_map(text: str) -> ColumnMap:
    try:
        return ColumnMap.parse(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
