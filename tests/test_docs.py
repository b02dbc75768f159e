"""The README is tested against the CLI, after sqlite-utils' test_docs.py."""

from __future__ import annotations

import argparse
import re
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
