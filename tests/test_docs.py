"""The README is tested against the CLI, after sqlite-utils' test_docs.py."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ocproxy.cli import build_parser

README = (Path(__file__).parent.parent / "README.md").read_text()


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_every_command_has_a_readme_section(name: str) -> None:
    assert f"### `ocproxy {name}`" in README


@pytest.mark.parametrize(
    ("name", "option"),
    [
        (name, option)
        for name, sub in sorted(_subcommands().items())
        for action in sub._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    ],
)
def test_every_option_is_documented(name: str, option: str) -> None:
    section = README.split(f"### `ocproxy {name}`", 1)[1].split("\n### ", 1)[0]
    assert re.search(rf"`{re.escape(option)}[ `]", section), f"{option} of {name} not in README"


def test_readme_starts_with_exactly_two_commands() -> None:
    first_block = README.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line for line in first_block.splitlines() if line.strip()]
    assert [c.split("#")[0].strip() for c in commands] == ["make demo", "make test"]


def test_ci_runs_the_readme_test_command() -> None:
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert "make test" in ci.splitlines()[-1]


_SNIPPETS = re.findall(r'^python -c "(import duckdb;.*?)"$', README, flags=re.MULTILINE | re.DOTALL)


@pytest.fixture(scope="module")
def site_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``site.duckdb``, the file the README's examples query: a demo recording."""
    directory = tmp_path_factory.mktemp("readme")
    subprocess.run(
        [sys.executable, "-m", "ocproxy", "demo", "--db", "site.duckdb", "--pace", "0", "--quiet"],
        cwd=directory,
        capture_output=True,
        timeout=120,
        check=True,
    )
    return directory


def test_the_readme_has_sql_snippets() -> None:
    assert len(_SNIPPETS) >= 2


@pytest.mark.parametrize("snippet", _SNIPPETS, ids=lambda s: s.split("SELECT", 1)[0][-40:])
def test_every_sql_snippet_runs(snippet: str, site_recording: Path) -> None:
    """Each ``python -c "import duckdb; ..."`` example runs as printed against a recording."""
    result = subprocess.run(
        [sys.executable, "-c", snippet],
        cwd=site_recording,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "┌" in result.stdout  # DuckDB printed a result table
