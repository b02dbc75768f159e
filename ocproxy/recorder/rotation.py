"""Rotating recordings: a new file every hour, day or so many bytes.

``--db site.duckdb --rotate hourly`` records into ``site-2026-12-05T07-23-11.duckdb``,
then ``site-2026-12-05T08-00-00.duckdb``, ... (the first file is named after the moment
it was opened, the next ones after their boundary; by size, to the millisecond), so
that the names sort in time order. Every reader takes globs, so
``'site-*.duckdb'`` reads the set as one recording; a connection that spans files has
its rows in each, with the same ``connection_id``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ocproxy.errors import ConfigError

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_PERIODS = {"hourly": timedelta(hours=1), "daily": timedelta(days=1)}
# The recorder's DuckDB memory (``--recorder-memory``). Without a bound DuckDB keeps
# what it wrote cached, up to 80% of the machine's memory: measured, the recorder's RSS
# grew from 124 to 429 MB over 1.2 million frames and kept growing. With a bound it
# levels off (see docs/operations.md for the figures).
DEFAULT_RECORDER_MEMORY = "256MB"
_MIN_RECORDER_MEMORY = 32 << 20


def parse_size(text: str) -> int | None:
    """``500MB``, ``2G``, ``1.5GiB``, ``1048576`` -> bytes; None if it is not a size > 0."""
    match = _SIZE.match(text.strip())
    if match is None or float(match.group(1)) <= 0:
        return None
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def recorder_memory(text: str) -> int:
    """``--recorder-memory``'s bytes; ConfigError for a malformed or too small value."""
    size = parse_size(text)
    if size is None:
        raise ConfigError(f"--recorder-memory {text!r}: give a size such as 256MB or 1GB")
    if size < _MIN_RECORDER_MEMORY:
        raise ConfigError(f"--recorder-memory {text!r}: at least 32MB, please")
    return size


@dataclass(frozen=True)
class Rotation:
    """When to start a new file: a period (hourly, daily) or a size in bytes."""

    period: timedelta | None = None
    size: int | None = None

    @classmethod
    def parse(cls, text: str) -> Rotation:
        """``hourly``, ``daily`` or a size such as ``500MB`` or ``2G``; ConfigError if not."""
        period = _PERIODS.get(text.strip().lower())
        if period is not None:
            return cls(period=period)
        size = parse_size(text)
        if size is None:
            raise ConfigError(
                f"--rotate {text!r}: give hourly, daily or a size such as 500MB or 2GB"
            )
        if size < 1 << 20:
            raise ConfigError(f"--rotate {text!r}: a file of at least 1MB, please")
        return cls(size=size)

    def path(self, base: Path, start: datetime) -> Path:
        """The file that starts at ``start``: the base name plus the UTC start time."""
        stamp = start.astimezone(UTC).strftime("%Y-%m-%dT%H-%M-%S")
        if self.size is not None:  # files may follow each other within a second
            stamp += f".{start.microsecond // 1000:03d}"
        return base.with_name(f"{base.stem}-{stamp}{base.suffix or '.duckdb'}")

    def next_boundary(self, start: datetime) -> datetime | None:
        """When a file opened at ``start`` ends by time (None: by size only)."""
        if self.period is None:
            return None
        start = start.astimezone(UTC)
        if self.period == _PERIODS["daily"]:
            floor = start.replace(hour=0, minute=0, second=0, microsecond=0)
        else:
            floor = start.replace(minute=0, second=0, microsecond=0)
        return floor + self.period

    def full(self, path: Path, empty: int) -> bool:
        """Has the file (with its write-ahead log) grown by the size bound since it was
        ``empty`` bytes (a new file holds its schema already)?"""
        return self.size is not None and file_size(path) - empty >= self.size


def file_size(path: Path) -> int:
    """Bytes of a recording and its write-ahead log."""
    wal = path.with_name(path.name + ".wal")
    return sum(p.stat().st_size for p in (path, wal) if p.exists())
