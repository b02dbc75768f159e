"""Running the ``ocproxy`` command line in-process, as a user would type it."""

from __future__ import annotations

from pathlib import Path

import pytest

from ocproxy.cli import main


def run_ocproxy(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    """``ocproxy ARGV...``: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err
