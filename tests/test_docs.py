"""The README and docs/ are tested against the CLI (after sqlite-utils' test_docs.py).

- Every ```sh block runs as printed, page by page, in order, in one bash (so a later
  block can stop what an earlier one started with ``&``), in a fresh directory per page
  with the venv's bin on PATH, a HOME of its own and, where the machine allows it, a
  network namespace of its own (so pages can use the default ports, and run at once).
  A command annotated ``# exit N`` must exit N; every other command must exit 0.
- Every option in ``ocproxy CMD --help`` is in the table of docs/commands/CMD.md, and
  every option in that table is in ``--help``; every command has its page.
- The MkDocs site builds with ``--strict``: a broken link, a missing page or a page left
  out of the nav fails it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from ocproxy.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
VENV_BIN = Path(sys.executable).parent
PAGE_TIMEOUT = 180.0
_FENCE = re.compile(r"^```(?P<lang>\S*)\s*$")


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


# -- running the examples ----------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    code: str


def blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown page (fences at the start of a line)."""
    found: list[Block] = []
    opened: tuple[int, str] | None = None
    body: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fence = _FENCE.match(line)
        if opened is None and fence is not None:
            opened, body = (number, fence["lang"]), []
        elif opened is not None and line.rstrip() == "```":
            found.append(Block(opened[0], opened[1], "\n".join(body)))
            opened = None
        elif opened is not None:
            body.append(line)
    assert opened is None, f"a fence opened at line {opened[0]} is never closed"
    return found


_EXPECTED_EXIT = re.compile(r"^(?P<command>.*?\S)\s+# exit (?P<code>\d+)\b.*$", re.DOTALL)


def _logical_lines(code: str) -> list[str]:
    """Lines with their backslash continuations joined (kept as typed)."""
    lines: list[str] = []
    pending = ""
    for line in code.splitlines():
        pending += line
        if line.endswith("\\"):
            pending += "\n"
            continue
        lines.append(pending)
        pending = ""
    if pending:
        lines.append(pending)
    return lines


def _with_exit_checks(code: str) -> str:
    """``cmd  # exit 2`` runs ``cmd`` and checks that it exits 2 (set -e would stop)."""
    out = []
    for line in _logical_lines(code):
        expected = _EXPECTED_EXIT.match(line)
        if expected is None:
            out.append(line)
            continue
        command, want = expected["command"], expected["code"]
        quoted = command.replace("'", "'\\''")
        out.append(
            f'__rc=0; {command} || __rc=$?; [ "$__rc" -eq {want} ] || '
            f"{{ echo \"docs: $__where: exit $__rc, the page says {want}: '{quoted}'\" >&2; "
            "exit 1; }"
        )
    return "\n".join(out)


_PROLOGUE = """\
set -eo pipefail
trap 'echo "docs: $__where: \\`$BASH_COMMAND\\` failed (exit $?)" >&2' ERR
"""
# What a page started in the background, it must stop: a process still running at the
# end (after a few seconds of grace, for one that is shutting down) fails the page.
_EPILOGUE = """\
__where="the end of the page"
for __i in $(seq 100); do [ -z "$(jobs -rp)" ] && break; sleep 0.1; done
if [ -n "$(jobs -rp)" ]; then
    echo "docs: still running at the end of the page (stop it in a later block):" >&2
    jobs -r >&2
    exit 97
fi
"""


def page_script(page: Path) -> str:
    parts = [_PROLOGUE]
    for block in blocks(page.read_text()):
        if block.lang == "sh":
            parts.append(f'__where="{_name(page)}:{block.line}"')
            parts.append(_with_exit_checks(block.code))
    parts.append(_EPILOGUE)
    return "\n".join(parts)


def _runs(page: Path) -> bool:
    return any(b.lang == "sh" for b in blocks(page.read_text()))


# Brings loopback up in a new network namespace, then runs the page's bash in it.
_LOOPBACK_UP = """\
import fcntl, os, socket, struct, sys
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, struct.pack("16sH", b"lo", 0)))[1]
    fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 1))
os.execvp(sys.argv[1], sys.argv[1:])
"""


def _namespace_prefix() -> list[str] | None:
    """``unshare`` into a network namespace of its own, where the machine allows it."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    prefix = [unshare, "--net", "--map-root-user", sys.executable, "-c", _LOOPBACK_UP]
    probe = subprocess.run(
        [*prefix, sys.executable, "-c", "import socket; socket.create_server(('127.0.0.1', 9))"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return prefix if probe.returncode == 0 else None


@dataclass(frozen=True)
class PageRun:
    returncode: int
    output: str


def run_page(page: Path, directory: Path, prefix: list[str] | None) -> PageRun:
    work, home = directory / "work", directory / "home"
    work.mkdir(parents=True)
    home.mkdir()
    # The README's walk-through starts with `. .venv/bin/activate`, as in a fresh clone.
    (work / ".venv").symlink_to(VENV_BIN.parent)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OCPROXY_", "PYTEST", "COLUMNS", "XDG_", "VIRTUAL_ENV"))
    }
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", HOME=str(home))
    command = ["bash", "-c", page_script(page)]
    process = subprocess.Popen(
        [*(prefix or []), *command],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=PAGE_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return PageRun(-1, f"{output}\ndocs: the page did not finish in {PAGE_TIMEOUT:.0f} s")
    finally:
        # Whatever the page left behind (it failed half-way): its whole process group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    return PageRun(process.returncode, output)


RUNNABLE = [page for page in _pages() if _runs(page)]


@pytest.fixture(scope="module")
def page_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[Path, Future[PageRun]]]:
    """The examples of every page this session runs, started at once (each page in a
    network namespace of its own: most of their time is spent waiting on peers), or one
    page after another where namespaces are not available (they share the ports)."""
    selected = {
        item.callspec.params["page"]
        for item in request.session.items
        if item.originalname == "test_the_examples_run_as_printed"
    }
    prefix = _namespace_prefix()
    with ThreadPoolExecutor(max_workers=4 if prefix else 1) as pool:
        yield {
            page: pool.submit(run_page, page, tmp_path_factory.mktemp("page"), prefix)
            for page in RUNNABLE
            if page in selected
        }


@pytest.mark.parametrize("page", RUNNABLE, ids=_name)
def test_the_examples_run_as_printed(page: Path, page_runs: dict[Path, Future[PageRun]]) -> None:
    run = page_runs[page].result()
    assert run.returncode == 0, f"{_name(page)}: exit {run.returncode}\n{run.output[-6000:]}"


def test_every_sh_block_is_at_the_start_of_a_line() -> None:
    """An indented ```sh block (in a list, say) would not be run: there are none."""
    for page in _pages():
        indented = re.findall(r"^[ \t]+```sh\b", page.read_text(), flags=re.MULTILINE)
        assert not indented, f"{_name(page)} has an indented ```sh block"


def test_no_page_waits_on_a_log_an_earlier_background_job_wrote() -> None:
    """``cmd > x.log &`` then ``until grep -qs ... x.log``: when a later block of the
    same page starts another job into the same file, the grep can read the earlier job's
    line before the new job has truncated the file, and go on too soon (it made the
    replay page fail once, under load). Each background job gets a log of its own."""
    for page in _pages():
        logs = re.findall(r"> ([\w.-]+\.log)(?: 2>&1)? &", page.read_text())
        reused = sorted({log for log in logs if logs.count(log) > 1})
        assert not reused, f"{_name(page)} reuses {reused} for background jobs"


def test_exit_annotations_are_checked() -> None:
    script = _with_exit_checks("ocproxy audit x.duckdb  # exit 2: no such file\necho ok")
    done = subprocess.run(
        ["bash", "-c", f"__where=t; ocproxy() {{ return 2; }}\n{script}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "ok\n")
    wrong = subprocess.run(
        ["bash", "-c", f"__where=t; ocproxy() {{ return 0; }}\n{script}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert wrong.returncode == 1
    assert "exit 0, the page says 2" in wrong.stderr


# -- every option of every command, documented -------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


COMMANDS = _subparsers(build_parser())


def _options(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of a command and of its own subcommands (``sim csms``)."""
    found = {
        option
        for action in parser._actions
        for option in action.option_strings
        if option not in ("-h", "--help")
    }
    for sub in _subparsers(parser).values():
        found |= _options(sub)
    return found


def _documented_options(page: Path) -> set[str]:
    """The options named in the first column of the page's tables."""
    found: set[str] = set()
    for line in page.read_text().splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            first = line.split("|")[1]
            found |= set(re.findall(r"`(--?[a-z][\w-]*)", first))
    return found


def command_page(name: str) -> Path:
    return DOCS / "commands" / f"{name}.md"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_a_page(name: str) -> None:
    assert command_page(name).is_file(), f"docs/commands/{name}.md is missing"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_is_documented_and_every_documented_option_exists(name: str) -> None:
    page = command_page(name)
    if not page.is_file():
        pytest.fail(f"docs/commands/{name}.md is missing")
    options, documented = _options(COMMANDS[name]), _documented_options(page)
    assert options - documented == set(), f"in ocproxy {name} --help, not in {page.name}'s table"
    assert documented - options == set(), f"in {page.name}'s table, not in ocproxy {name} --help"


# -- the site ----------------------------------------------------------------------------


def _nav_pages() -> set[str]:
    text = (ROOT / "mkdocs.yml").read_text()
    nav = text.split("\nnav:\n", 1)[1]
    return set(re.findall(r"^\s+- (?:[^:\n]+: )?(\S+\.md)\s*$", nav, flags=re.MULTILINE))


def test_every_page_is_in_the_nav() -> None:
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert pages == _nav_pages()


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """No broken link, no missing page, no page outside the nav (mkdocs --strict)."""
    done = subprocess.run(
        [str(VENV_BIN / "mkdocs"), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "site" / "commands" / "proxy" / "index.html").is_file()


# -- the README --------------------------------------------------------------------------

README_TEXT = README.read_text()


def test_the_readme_is_short() -> None:
    assert len(README_TEXT.splitlines()) <= 250


def test_the_readme_starts_with_exactly_two_commands() -> None:
    first = blocks(README_TEXT)[0]
    commands = [line.split("#")[0].strip() for line in first.code.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]


def test_the_readme_says_what_make_test_installs_and_how_to_skip_the_browser() -> None:
    top = README_TEXT[: README_TEXT.index("## ")]
    assert "apt-get" in top
    assert "chromium" in top
    assert "make test-nobrowser" in top


def test_the_readme_links_point_to_files() -> None:
    for target in re.findall(r"\]\((?!https?://|#)([^)#\s]+)", README_TEXT):
        assert (ROOT / target).exists(), target


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.strip().splitlines()[-1] == "exec make test"


# -- what else the reference must list ----------------------------------------------------


def test_every_column_of_the_recording_is_documented(tmp_path: Path) -> None:
    """docs/recording.md lists every column of the five public tables, as a new
    recording has them (so a migration that adds one shows up here)."""
    import duckdb

    from ocproxy.recorder import Recorder

    Recorder(tmp_path / "r.duckdb").start().close()
    db = duckdb.connect(str(tmp_path / "r.duckdb"), read_only=True)
    documented = _documented_names(DOCS / "recording.md")
    for table in ("connections", "frames", "findings", "runs", "run_stats"):
        columns = {row[0] for row in db.execute(f"DESCRIBE {table}").fetchall()}
        assert columns - documented == set(), f"{table} columns missing from recording.md"


def test_every_config_key_is_documented() -> None:
    from ocproxy.proxy import config

    keys = {"[[route]]" if key == "route" else key for key in config._FILE_KEYS}
    assert keys - _documented_names(DOCS / "config.md") == set()


def test_every_audit_rule_is_documented() -> None:
    from ocproxy.audit.rules import RULES

    text = (DOCS / "commands" / "audit.md").read_text()
    assert [rule for rule in RULES if f"`{rule}`" not in text] == []


def _documented_names(page: Path) -> set[str]:
    """The `names` in the first column of the page's tables."""
    found: set[str] = set()
    for line in page.read_text().splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            found |= set(re.findall(r"`([\w\[\]]+)`", line.split("|")[1]))
    return found
