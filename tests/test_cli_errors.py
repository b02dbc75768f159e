"""Bad command lines and bad files: one line, one wording per problem, whichever command.

A mistyped command, option or choice names the help of the command that was mistyped and
suggests the nearest spelling; a missing recording, a recording another process is
writing and an unknown charger are said the same way by every command that meets them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers_cli import run_ocproxy

from ocproxy.recorder import Recorder

OCPROXY = [sys.executable, "-m", "ocproxy"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["prxy"],
            "ocproxy: error: argument COMMAND: invalid choice: 'prxy'; did you mean 'proxy'? "
            "(choose from ",
        ),
        (
            ["audit", "x.duckdb", "--jbs", "2"],
            "ocproxy audit: error: unrecognized arguments: --jbs 2; did you mean --jobs? "
            "(see ocproxy audit --help)",
        ),
        (
            ["proxy", "--upstrem=ws://127.0.0.1:1"],
            "ocproxy proxy: error: unrecognized arguments: --upstrem=ws://127.0.0.1:1; "
            "did you mean --upstream? (see ocproxy proxy --help)",
        ),
        (
            ["audit", "x.duckdb", "--format", "tabel"],
            "ocproxy audit: error: argument --format: invalid choice: 'tabel'; did you mean "
            "'table'? (choose from 'table', 'json', 'junit') (see ocproxy audit --help)",
        ),
        (
            ["query", "x.duckdb", "sessions", "--bogus"],
            "ocproxy query: error: unrecognized arguments: --bogus (see ocproxy query --help)",
        ),
        (
            ["tail", "a.duckdb", "b.duckdb"],
            "ocproxy tail: error: unrecognized arguments: b.duckdb (see ocproxy tail --help)",
        ),
        (["--verbose"], "ocproxy: error: "),
    ],
)
def test_a_bad_command_line_is_one_line_naming_the_commands_help(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_ocproxy(capsys, *argv)
    assert (code, out) == (2, "")
    assert err.startswith(expected), err
    assert err.count("\n") == 1, err
    assert err.endswith(" --help)\n"), err


def test_a_nested_subcommand_names_its_own_help(capsys: pytest.CaptureFixture[str]) -> None:
    """`ocproxy sim chargers` is two levels down: its errors name its own help."""
    code, _, err = run_ocproxy(capsys, "sim", "chargrs")
    assert code == 2
    assert "invalid choice: 'chargrs'; did you mean 'chargers'?" in err
    assert err.endswith("(see ocproxy sim --help)\n")
    code, _, err = run_ocproxy(capsys, "sim", "chargers", "--to", "ws://127.0.0.1:1", "--pase", "0")
    assert code == 2
    assert err == (
        "ocproxy sim chargers: error: unrecognized arguments: --pase 0; did you mean --pace? "
        "(see ocproxy sim chargers --help)\n"
    )


# -- one wording per problem ---------------------------------------------------------------

# Every command that reads a recording named on its command line.
_READERS = [
    ["audit", "{db}"],
    ["tail", "{db}"],
    ["query", "{db}", "sessions"],
    ["report", "{db}"],
    ["export", "{db}", "--parquet", "{dir}/lake"],
    ["replay", "{db}", "--identity", "CP-1", "--as", "charger", "--target", "ws://127.0.0.1:1"],
]


def _argv(template: list[str], db: Path, directory: Path) -> list[str]:
    return [part.format(db=db, dir=directory) for part in template]


@pytest.mark.parametrize("template", _READERS, ids=lambda t: t[0])
def test_a_missing_recording_is_said_one_way(
    template: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "gone.duckdb"
    code, out, err = run_ocproxy(capsys, *_argv(template, missing, tmp_path))
    assert (code, out) == (2, "")
    assert err == f"ocproxy: error: {missing}: no such file or directory\n"


@pytest.fixture
def locked_recording(tmp_path: Path) -> Iterator[Path]:
    """A recording held open for writing by another process, as a running proxy holds it."""
    path = tmp_path / "site.duckdb"
    Recorder(path).start().close()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys; db = duckdb.connect(sys.argv[1]); "
         "print('open', flush=True); sys.stdin.read()", str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert holder.stdout is not None
    assert holder.stdout.readline() == "open\n"
    try:
        yield path
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_recording_being_written_is_said_one_way_by_every_command(
    locked_recording: Path, tmp_path: Path
) -> None:
    """Readers suggest a copy; the proxy (a writer) another file: never DuckDB's own
    message with the holder's interpreter path, PID and a URL."""
    writer = [
        "proxy", "--listen", f"127.0.0.1:{_free_port()}", "--upstream", "ws://127.0.0.1:1",
        "--db", "{db}", "--quiet",
    ]  # fmt: skip
    said = {}
    for template in [*_READERS, writer]:
        done = subprocess.run(
            [*OCPROXY, *_argv(template, locked_recording, tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "COLUMNS": "60"},
        )
        said[template[0]] = (done.returncode, done.stderr.splitlines()[-1:])
    expected = f"ocproxy: error: {locked_recording} is being written by another process; "
    for command, (code, lines) in said.items():
        hint = (
            "stop it or record to another file" if command == "proxy" else "stop it or query a copy"
        )
        assert lines == [expected + hint], (command, lines)
        assert code == (1 if command == "proxy" else 2), command


def test_an_unknown_charger_is_said_one_way(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "site.duckdb"
    assert run_ocproxy(capsys, "demo", "--db", db, "--pace", "0", "--quiet")[0] == 0
    code, _, err = run_ocproxy(
        capsys, "replay", db, "--identity", "CP-9", "--as", "charger", "--target", "ws://h:1"
    )
    assert (code, err) == (2, "ocproxy: error: no charger 'CP-9' in the recording\n")
