"""``ocproxy replay``: play a recorded connection back against a live peer and compare.

Exit codes: 0 no difference, 1 a difference (or the replay could not run to the end:
handshake refused, peer closed, recording unwritable), 2 a bad command line or
recording (one line naming the problem), 130 interrupted with no difference so far.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.text import Text

from ocproxy.argtypes import positive_float
from ocproxy.errors import ConfigError, OcproxyError
from ocproxy.proxy.config import check_ws_url
from ocproxy.recorder import DEFAULT_DB
from ocproxy.replay.compare import IgnoreRules
from ocproxy.replay.script import Role, Script, Selection
from ocproxy.terminal import make_console

if TYPE_CHECKING:
    from ocproxy.replay.output import ReplayReport
    from ocproxy.replay.runner import ReplayOptions

EPILOG = """\
examples:
  ocproxy replay site.duckdb --connection 6f1c... --as charger --target ws://staging:9000/ocpp
      replays the charger's side against a staging CSMS, as paced in the recording
  ocproxy replay site.duckdb --identity CP-17 --from 2026-11-02T08:00 --to 2026-11-02T09:00 \\
      --as charger --target wss://csms.example.net --speed max --ignore idTagInfo.parentIdTag
      as fast as the CSMS answers; exit code 1 if any answer differs (for CI)
  ocproxy replay site.duckdb --connection 6f1c... --as csms --listen 0.0.0.0:9000
      serves the recorded CSMS side to a charger that dials ws://HOST:9000/<path>

The replay is recorded too (--db), as connections with replay_of = the source connection.
"""


def add_replay_command(commands: Any) -> None:
    cmd = commands.add_parser(
        "replay",
        help="replay a recorded connection against a live CSMS or charger and compare",
        description="Play one recorded connection back: as the charger against a CSMS "
        "(--as charger --target URL), or as the CSMS to a charger (--as csms --listen). "
        "Each answer is compared with the recorded one, ignoring volatile fields; the "
        "differences are listed side by side and summed up in a table.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmd.add_argument("source", metavar="SOURCE", help="the DuckDB recording to replay from")
    which = cmd.add_mutually_exclusive_group(required=True)
    which.add_argument("--connection", metavar="ID", help="the recorded connection to replay")
    which.add_argument("--identity", metavar="ID", help="the charger whose connection to replay")
    cmd.add_argument(
        "--from",
        dest="since",
        type=_time,
        metavar="TIME",
        help="only frames at or after this time (ISO 8601; UTC if no zone)",
    )
    cmd.add_argument(
        "--to", dest="until", type=_time, metavar="TIME", help="only frames at or before this time"
    )
    cmd.add_argument(
        "--as",
        dest="role",
        choices=("charger", "csms"),
        required=True,
        help="which side the replay plays",
    )
    cmd.add_argument(
        "--target", metavar="URL", help="--as charger: CSMS base URL; the recorded path is appended"
    )
    cmd.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="--as csms: address the charger connects to (default 127.0.0.1:9000)",
    )
    cmd.add_argument(
        "--target-identity",
        metavar="ID",
        help="--as charger: connect as this identity instead of the recorded one",
    )
    cmd.add_argument(
        "--header",
        action="append",
        default=[],
        type=_header,
        metavar="'NAME: VALUE'",
        help="--as charger: add a handshake header, e.g. Authorization (repeatable)",
    )
    cmd.add_argument(
        "--speed",
        type=_speed,
        default=1.0,
        metavar="FACTOR|max",
        help="2 = twice as fast as recorded; max = only wait for answers (default 1)",
    )
    cmd.add_argument(
        "--timeout",
        type=positive_float,
        default=30.0,
        metavar="SECONDS",
        help="wait this long for each answer and each expected CALL (default 30)",
    )
    cmd.add_argument(
        "--match",
        choices=("payload", "action"),
        default="payload",
        help="match the peer's CALLs to recorded ones by action and payload "
        "(default) or by action in recorded order",
    )
    cmd.add_argument(
        "--shift-time", action="store_true", help="move timestamps in sent payloads to the present"
    )
    cmd.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="[ACTION:]PATH",
        help="also compare this field for presence only (repeatable)",
    )
    cmd.add_argument(
        "--no-default-ignore",
        action="store_true",
        help="compare currentTime, timestamps, transactionId, ... by value too",
    )
    cmd.add_argument(
        "--skip-malformed",
        action="store_true",
        help="skip recorded malformed frames instead of sending them byte-exact",
    )
    cmd.add_argument(
        "--db",
        metavar="FILE",
        default=DEFAULT_DB,
        help=f"record the replay into this DuckDB file (default ./{DEFAULT_DB})",
    )
    cmd.add_argument(
        "--keep-ids",
        action="store_true",
        help="record driver ids (idTag, idToken) in clear in --db; by default they are "
        "pseudonymised with the proxy's key ($OCPROXY_ID_KEY or the per-user key file), as "
        "ocproxy proxy records them. The replay sends what SOURCE holds: replay a recording "
        "made with --keep-ids to send real ids",
    )
    cmd.add_argument("--json", metavar="FILE", help="also write the summary as JSON")
    cmd.add_argument("--id-map", metavar="FILE", help="write recorded -> replay message ids as CSV")
    cmd.add_argument(
        "--max-shown",
        type=int,
        default=20,
        metavar="N",
        help="show at most N differing exchanges in full (default 20)",
    )
    cmd.add_argument("--quiet", action="store_true", help="no progress bar")
    cmd.set_defaults(func=run_replay)


def run_replay(args: argparse.Namespace) -> int:
    from ocproxy.audit.offline import open_recording
    from ocproxy.replay.output import print_report
    from ocproxy.replay.script import load_script

    options = replay_options(args)
    selection = Selection(args.connection, args.identity, args.since, args.until)
    # Read the whole script and close the file first: --db may be the same file, and
    # DuckDB will not open it for writing while a read-only connection is open.
    with open_recording(args.source) as db:
        script = load_script(db, selection, options.role, skip_malformed=args.skip_malformed)
    console = make_console()
    report = asyncio.run(_replay(script, options, args, console))
    print_report(report, console, max_shown=max(args.max_shown, 0))
    _write_outputs(report, args)
    return report.exit_code


def replay_options(args: argparse.Namespace) -> ReplayOptions:
    from ocproxy.proxy.config import parse_listen
    from ocproxy.replay.runner import ReplayOptions

    role = Role(args.role)
    if role is Role.CHARGER:
        if args.target is None:
            raise ConfigError("--as charger needs --target URL (the CSMS to replay against)")
        check_ws_url(args.target)
        if args.listen is not None:
            raise ConfigError("--listen is for --as csms; --as charger dials --target")
    elif args.target is not None or args.target_identity is not None or args.header:
        raise ConfigError("--target, --target-identity and --header are for --as charger")
    try:
        rules = IgnoreRules.parse(args.ignore, defaults=not args.no_default_ignore)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return ReplayOptions(
        role=role,
        target=args.target,
        listen=parse_listen(args.listen or "127.0.0.1:9000"),
        identity=args.target_identity,
        headers=tuple(args.header),
        speed=args.speed,
        timeout=args.timeout,
        match=args.match,
        shift_time=args.shift_time,
        rules=rules,
    )


async def _replay(
    script: Script, options: ReplayOptions, args: argparse.Namespace, console: Console
) -> ReplayReport:
    from ocproxy.core.redaction import Redactor
    from ocproxy.idkey import resolve_id_key
    from ocproxy.recorder.process import ChildOptions, RecordingProcess
    from ocproxy.replay.output import ProgressBar
    from ocproxy.replay.runner import replay

    settings = {
        "replay_of": script.source.connection_id,
        **{k: v for k, v in vars(args).items() if k not in ("func", "header")},
    }
    # At nice 19 the recording only takes the CPU the replay and its peer leave idle (at
    # nice 0 it preempted the ping-pong and cost --speed max ~20 % of its rate).
    # Driver ids pseudonymised with the proxy's key (as the proxy records them), unless
    # --keep-ids: a replay recording compares with the proxy's own.
    redactor = Redactor(None if args.keep_ids else resolve_id_key(None))
    recorder = RecordingProcess(
        args.db,
        ChildOptions(source="replay", settings=settings, niceness=19, redactor=redactor),
    )
    await asyncio.to_thread(recorder.start)  # RecorderError: exit 1, said in one line
    console.print(_banner(script, options), highlight=False)
    stop = asyncio.Event()
    installed = _on_signals(stop.set)
    try:
        with ProgressBar(console, script.total, enabled=not args.quiet) as bar:
            report = await replay(
                script,
                options,
                recorder,
                stop=stop,
                progress=bar.advance,
                on_listening=lambda port: console.print(
                    f"waiting for a charger on ws://{options.listen[0]}:{port}; Ctrl-C to stop"
                ),
            )
    finally:
        for sig in installed:
            asyncio.get_running_loop().remove_signal_handler(sig)
        stats = await asyncio.to_thread(recorder.close)
    for error in stats.errors:
        console.print(Text(error, "bold red"))
        report.failure = report.failure or error
    return report


def _on_signals(callback: Any) -> list[signal.Signals]:
    # Ctrl-C sets the stop event: the session closes with 1001 and the summary is printed.
    if threading.current_thread() is not threading.main_thread():
        return []  # only the main thread may install handlers (tests run us in a thread)
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, callback)
        installed.append(sig)
    return installed


def _banner(script: Script, options: ReplayOptions) -> str:
    source = script.source
    speed = "max" if options.speed is None else f"{options.speed:g}x"
    peer = options.target if options.role is Role.CHARGER else "a charger"
    return (
        f"[bold]ocproxy replay[/] of connection {source.connection_id} ({source.identity}, "
        f"{source.subprotocol or 'no subprotocol'}): {script.total} exchanges as the "
        f"{options.role} against {peer}, speed {speed}"
    )


def _write_outputs(report: ReplayReport, args: argparse.Namespace) -> None:
    try:
        if args.json:
            Path(args.json).write_text(json.dumps(report.as_json(), indent=2) + "\n")
        if args.id_map:
            with open(args.id_map, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["exchange", "action", "recorded_id", "replay_id"])
                writer.writerows(sorted(report.id_map))
    except OSError as exc:
        raise OcproxyError(f"cannot write {exc.filename}: {exc.strerror}") from exc


# -- argument types ------------------------------------------------------------------------


def _time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _speed(text: str) -> float | None:
    if text.strip().lower() == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a factor or 'max'") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the speed must be positive")
    return value


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not 'NAME: VALUE'")
    return name.strip(), value.strip()
