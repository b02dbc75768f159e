"""What the benchmarks here share on their command line and in their output: argparse
types and options, the environment a run's figures belong to, and table cells."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console

# -- the environment ------------------------------------------------------------------------


def ocproxy_source() -> dict[str, Any]:
    """Which ocproxy the benchmark runs (``PYTHONPATH`` may point at another copy), and,
    in a git checkout, its commit and how many of its files differ from it."""
    spec = importlib.util.find_spec("ocproxy")
    if spec is None or spec.origin is None:
        return {"ocproxy_path": None}
    path = Path(spec.origin).parent
    out: dict[str, Any] = {"ocproxy_path": str(path)}
    git = ["git", "-C", str(path)]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], **_QUIET)
        if head.returncode == 0:
            changed = subprocess.run([*git, "status", "--porcelain", "--", "."], **_QUIET)
            out["ocproxy_commit"] = head.stdout.strip()
            out["ocproxy_uncommitted_files"] = len(changed.stdout.splitlines())
    return out


def source_line(meta: dict[str, Any]) -> str:
    """Which ocproxy was measured, for the report."""
    line = f"ocproxy measured: {meta.get('ocproxy_path')}"
    if "ocproxy_commit" in meta:
        line += f" at {meta['ocproxy_commit']}"
        if meta["ocproxy_uncommitted_files"]:
            line += f" with {meta['ocproxy_uncommitted_files']} uncommitted file(s)"
    return line


_QUIET: dict[str, Any] = {"capture_output": True, "text": True, "timeout": 20, "check": False}


def environment(**settings: Any) -> dict[str, Any]:
    """The machine and versions a run's figures belong to, with the run's own settings."""
    import duckdb

    return {
        **ocproxy_source(),
        "python": platform.python_version(),
        "websockets": metadata.version("websockets"),
        "duckdb": duckdb.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        **settings,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# -- command line ----------------------------------------------------------------------------


def add_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--markdown", action="store_true", help="also print Markdown tables")
    p.add_argument("--keep", action="store_true", help="keep the recordings and nginx's files")


def positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def charger_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list like 1,100") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: charger counts must be >= 1")
    return counts


def name_list(choices: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse type: comma-separated names, each one of ``choices``, in the order given."""

    def parse(text: str) -> list[str]:
        names = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [name for name in names if name not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"{text!r}: choose from {','.join(choices)} (comma-separated)"
            )
        return list(dict.fromkeys(names))

    return parse


# -- tables ---------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def fmt(value: Any, spec: str = "", suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:{spec}}{suffix}"


@dataclass(frozen=True)
class Column:
    title: str  # Markdown header
    header: str  # rich header, on up to three short lines so the table fits 80 columns
    key: str
    spec: str = ""
    suffix: str = ""


def print_table(console: Console, table: Any) -> None:
    """A table on a terminal as wide as it is; into a file or a pipe at its natural width."""
    if console.is_terminal:
        console.print(table)
    else:
        Console(width=max(console.width, 240)).print(table)


def cells(row: dict[str, Any], columns: Sequence[Column]) -> list[str]:
    return [fmt(row[c.key], c.spec, c.suffix) for c in columns]


def markdown_table(
    table_rows: Sequence[dict[str, Any]], columns: Sequence[Column], left: str = "path"
) -> str:
    lines = ["| " + " | ".join(c.title for c in columns) + " |"]
    lines.append("|" + "|".join(":---" if c.key == left else "---:" for c in columns) + "|")
    lines += ["| " + " | ".join(cells(row, columns)) + " |" for row in table_rows]
    return "\n".join(lines)
