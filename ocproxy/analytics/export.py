"""Copy recordings into a Parquet lake, hive-partitioned by UTC date and charger identity.

The lake holds one directory per table of the public interface::

    DIR/frames/date=2026-03-01/identity=CP-17/part-<run>-0.parquet
    DIR/connections/date=2026-03-01/identity=CP-17/part-<run>-0.parquet
    DIR/findings/date=2026-03-01/identity=CP-17/part-<run>-0.parquet
    DIR/runs/date=2026-03-01/part-<run>-0.parquet
    DIR/run_stats/date=2026-03-01/part-<run>-0.parquet

``date`` is the UTC date of ``frames.ts``, ``connections.opened_at``, ``findings.ts``,
``runs.started_at`` and ``run_stats.stopped_at``; ``identity`` is the connection's
(for frames and findings, through ``connection_id``). Partition values are written by
DuckDB, percent-encoded where a character is not ``A-Z a-z 0-9 - . _ ~`` (``CP/1`` is
``identity=CP%2F1``; NULL is ``__HIVE_DEFAULT_PARTITION__``) and decoded back to the
same string by DuckDB, Spark and Hive readers. Partition columns are not repeated
inside the files.

Appendable: every file is named after the proxy run (``runs.run_id``) its rows were
recorded in, ``part-<run_id>-<n>.parquet``. Exporting a recording replaces the files
of its runs and leaves every other file alone, so exporting the same recording twice
gives the same lake, and exporting another recording adds its runs. The new files are
written into a staging directory inside ``DIR`` (``.ocproxy-staging-*``, removed at
the end) and moved into place once every table is written: an export that fails
while writing leaves the lake as it was. Rows whose connection is missing from the
recording (ocproxy never writes those) go to
``part-orphans-<first run of the recording>-<n>.parquet``.

Every source is read through :func:`ocproxy.analytics.sources.open_sources`, so every
file has every column of the current schema, even when exported from an older
recording.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import duckdb

from ocproxy.analytics.sources import expand, open_sources
from ocproxy.errors import ConfigError, OcproxyError, first_line

COMPRESSIONS = ("zstd", "snappy", "gzip", "uncompressed")
DEFAULT_COMPRESSION = "zstd"
STAGING_PREFIX = ".ocproxy-staging-"
_PART = re.compile(r"part-(?P<run>.+)-(?P<n>\d+)\.parquet")
_SAFE_RUN = r"[0-9A-Za-z-]{1,64}"
_NAME_MAX = 255
_POLL_S = 0.1


@dataclass(frozen=True)
class LakeTable:
    """One table of the lake: the SELECT that feeds it and how it is partitioned."""

    name: str
    # SQL over the source's views; {run_key} is replaced by the run key of a run_id
    # expression. Every SELECT yields the table's columns, "date" and run_key, and
    # "identity" when partitioned by it.
    select: str
    by_identity: bool

    @property
    def partitions(self) -> tuple[str, ...]:
        return ("date", "identity") if self.by_identity else ("date",)


TABLES = (
    LakeTable(
        "frames",
        """SELECT f.*, CAST(f.ts AS DATE) AS "date", c.identity AS identity,
                  {run_key:c.run_id} AS run_key
           FROM frames AS f LEFT JOIN connections AS c USING (connection_id)""",
        by_identity=True,
    ),
    LakeTable(
        "connections",
        """SELECT *, CAST(opened_at AS DATE) AS "date", {run_key:run_id} AS run_key
           FROM connections""",
        by_identity=True,
    ),
    LakeTable(
        "findings",
        """SELECT x.*, CAST(x.ts AS DATE) AS "date", c.identity AS identity,
                  {run_key:c.run_id} AS run_key
           FROM findings AS x LEFT JOIN connections AS c USING (connection_id)""",
        by_identity=True,
    ),
    LakeTable(
        "runs",
        """SELECT *, CAST(started_at AS DATE) AS "date", {run_key:run_id} AS run_key
           FROM runs""",
        by_identity=False,
    ),
    LakeTable(
        "run_stats",
        """SELECT *, CAST(stopped_at AS DATE) AS "date", {run_key:run_id} AS run_key
           FROM run_stats""",
        by_identity=False,
    ),
)
TABLE_NAMES = tuple(t.name for t in TABLES)

# (table, percent done) while a table is written; ("commit", files moved so far).
Progress = Callable[[str, float], None]


@dataclass
class ExportResult:
    """What one recording added to the lake."""

    recording: Path
    lake: Path
    runs: list[str]
    rows: dict[str, int] = field(default_factory=dict)
    files_written: int = 0
    files_replaced: int = 0
    seconds: float = 0.0


def export_recordings(
    sources: list[str],
    lake: str | Path,
    *,
    compression: str = DEFAULT_COMPRESSION,
    progress: Callable[[Path], Progress | None] | None = None,
) -> list[ExportResult]:
    """Export every recording named by ``sources`` (files or globs), one after another."""
    paths = expand(sources)
    for path in paths:  # every one is a recording before any is exported
        _check_recording_path(path)
        open_sources([str(path)]).close()
    directory = prepare_lake(lake)
    return [
        export_recording(
            path,
            directory,
            compression=compression,
            progress=None if progress is None else progress(path),
        )
        for path in paths
    ]


def prepare_lake(lake: str | Path) -> Path:
    """The lake directory, created if missing; a ConfigError if it cannot be one."""
    directory = Path(lake).expanduser()
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{lake} is a file: --parquet needs a directory")
    if directory.is_dir():
        entries = [e for e in directory.iterdir() if not e.name.startswith(".")]
        if entries and not any(e.name in TABLE_NAMES and e.is_dir() for e in entries):
            raise ConfigError(
                f"{lake} is not empty and is not an ocproxy Parquet export (no "
                f"{'/, '.join(TABLE_NAMES)}/ directories): give a new or empty directory"
            )
        for name in TABLE_NAMES:
            if (directory / name).exists() and not (directory / name).is_dir():
                raise ConfigError(f"{directory / name} is a file, not a table directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {lake}: {exc.strerror or exc}") from exc
    return directory


def export_recording(
    recording: str | Path,
    lake: str | Path,
    *,
    compression: str = DEFAULT_COMPRESSION,
    progress: Progress | None = None,
) -> ExportResult:
    """Export one recording (a DuckDB file) into the lake at ``lake``.

    Raises :class:`ConfigError` for bad input (not a recording, a compression DuckDB
    does not know, an identity too long for a directory name) and
    :class:`OcproxyError` when writing fails.
    """
    started = time.perf_counter()
    path = Path(recording)
    _check_recording_path(path)
    if compression not in COMPRESSIONS:
        raise ConfigError(
            f"unknown compression {compression!r} (choose from {', '.join(COMPRESSIONS)})"
        )
    directory = prepare_lake(lake)
    with open_sources([str(path)]) as opened:
        db = opened.db
        db.execute("SET enable_progress_bar = true")
        db.execute("SET enable_progress_bar_print = false")
        _check_identities(db, directory)
        runs = [row[0] for row in db.execute(_RUNS_SQL).fetchall()]
        orphans = f"orphans-{_safe_key(runs[0]) if runs else _path_key(path)}"
        keys = {_safe_key(r) for r in _run_ids(db)} | {orphans}
        result = ExportResult(path, directory, runs)
        staging = directory / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
        try:
            staging.mkdir()
            for table in TABLES:
                result.rows[table.name] = _copy(
                    db, table, staging / table.name, orphans, compression, progress
                )
            result.files_replaced, result.files_written = _commit(
                staging, directory, keys, progress
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    result.seconds = time.perf_counter() - started
    return result


def _check_recording_path(path: Path) -> None:
    if path.is_dir():
        raise ConfigError(f"{path} is a directory: ocproxy export reads recordings (.duckdb files)")


_RUNS_SQL = "SELECT run_id FROM runs WHERE run_id IS NOT NULL ORDER BY started_at, run_id"


def _run_ids(db: duckdb.DuckDBPyConnection) -> set[str]:
    rows = db.execute(
        """SELECT run_id FROM runs UNION SELECT run_id FROM run_stats
           UNION SELECT run_id FROM connections"""
    ).fetchall()
    return {row[0] for row in rows if row[0] is not None}


def _safe_key(run_id: str) -> str:
    """The run's name in file names: itself when it is a plain token (a UUID)."""
    if re.fullmatch(_SAFE_RUN, run_id):
        return run_id
    return "h" + hashlib.md5(run_id.encode("utf-8")).hexdigest()


def _run_key_sql(column: str, orphans: str) -> str:
    # The SQL twin of _safe_key (DuckDB's md5 is the hex digest of the UTF-8 bytes).
    return (
        f"CASE WHEN {column} IS NULL THEN '{orphans}' "
        f"WHEN regexp_full_match({column}, '{_SAFE_RUN}') THEN {column} "
        f"ELSE 'h' || md5({column}) END"
    )


def _path_key(path: Path) -> str:
    return "p" + hashlib.sha1(str(path.resolve()).encode("utf-8")).hexdigest()[:20]


def _check_identities(db: duckdb.DuckDBPyConnection, directory: Path) -> None:
    """Every identity must fit in a directory name once percent-encoded."""
    try:
        limit = os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        limit = _NAME_MAX
    rows = db.execute("SELECT DISTINCT identity FROM connections").fetchall()
    for (identity,) in rows:
        if identity is None:
            continue
        name = f"identity={quote(identity, safe='')}"
        if len(name.encode("utf-8")) > limit:
            raise ConfigError(
                f"identity {identity[:40]!r}... is too long for a partition directory "
                f"({len(name)} bytes percent-encoded, at most {limit}): it cannot be exported"
            )


def _copy(
    db: duckdb.DuckDBPyConnection,
    table: LakeTable,
    target: Path,
    orphans: str,
    compression: str,
    progress: Progress | None,
) -> int:
    """COPY one table into ``target``, partitioned by run_key first; return its rows."""
    select = re.sub(r"\{run_key:([a-z_.]+)\}", lambda m: _run_key_sql(m[1], orphans), table.select)
    partitions = ", ".join(f'"{p}"' for p in ("run_key", *table.partitions))
    sql = (
        f"COPY ({select}) TO {_literal(str(target))} (FORMAT parquet, "
        f"COMPRESSION {compression}, PARTITION_BY ({partitions}), "
        "FILENAME_PATTERN 'data_{i}', OVERWRITE_OR_IGNORE)"
    )
    if progress is not None:
        progress(table.name, 0.0)
    rows = _run_watched(db, sql, table.name, progress)
    if progress is not None:
        progress(table.name, 100.0)
    return rows


def _run_watched(
    db: duckdb.DuckDBPyConnection, sql: str, name: str, progress: Progress | None
) -> int:
    """Run ``sql`` on a worker thread, reporting DuckDB's progress; Ctrl-C interrupts it."""
    outcome: list[int | BaseException] = []
    finished = threading.Event()

    def work() -> None:
        try:
            ((rows,),) = db.execute(sql).fetchall()
            outcome.append(int(rows))
        except BaseException as exc:  # handed to the caller's thread below
            outcome.append(exc)
        finally:
            finished.set()

    threading.Thread(target=work, name=f"ocproxy-export-{name}", daemon=True).start()
    try:
        # An Event, not Thread.join: a join interrupted by Ctrl-C may return at once
        # afterwards while the thread still runs, and the connection is still busy.
        while not finished.wait(_POLL_S):
            if progress is not None:
                done = db.query_progress()
                if done >= 0:
                    progress(name, min(float(done), 99.0))
    except BaseException:
        db.interrupt()
        while not finished.wait(_POLL_S):
            db.interrupt()
        raise
    result = outcome[0]
    if isinstance(result, duckdb.Error):
        raise OcproxyError(f"export of {name} failed: {first_line(result)}") from result
    if isinstance(result, BaseException):
        raise result
    return result


def _commit(
    staging: Path, directory: Path, keys: set[str], progress: Progress | None
) -> tuple[int, int]:
    """Move the staged files into place, then remove what is left of an earlier export
    of the same runs. Returns (files of an earlier export replaced or removed, files
    moved in).

    A file of the same name is replaced in one step (``os.replace``), so a reader never
    sees a run's partition missing while it is re-exported.
    """
    moves: list[tuple[Path, Path]] = []
    for table in TABLES:
        root = staging / table.name
        if not root.is_dir():
            continue
        for run_dir in sorted(root.iterdir()):
            run = run_dir.name.partition("=")[2]
            for folder, _dirs, files in os.walk(run_dir):
                names = sorted((f for f in files if f.endswith(".parquet")), key=_file_number)
                relative = Path(folder).relative_to(run_dir)
                for n, name in enumerate(names):
                    target = directory / table.name / relative / f"part-{run}-{n}.parquet"
                    moves.append((Path(folder) / name, target))
    replaced = 0
    try:
        for done, (source, target) in enumerate(moves, 1):
            replaced += target.exists()
            _move(source, target)
            if progress is not None and (done % 500 == 0 or done == len(moves)):
                progress("commit", 100.0 * done / len(moves))
    except OSError as exc:
        raise OcproxyError(f"cannot write {directory}: {exc.strerror or exc}") from exc
    removed = _remove_runs(directory, keys, keep={target for _source, target in moves})
    return replaced + removed, len(moves)


def _move(source: Path, target: Path) -> None:
    # Another export into the same lake may remove a partition directory it emptied
    # between our mkdir and our rename: make it again, once.
    for attempt in (1, 2):
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(source, target)
            return
        except FileNotFoundError:
            if attempt == 2 or not source.exists():
                raise


def _file_number(name: str) -> int:
    digits = re.findall(r"\d+", name)
    return int(digits[-1]) if digits else 0


def _remove_runs(directory: Path, keys: set[str], keep: set[Path]) -> int:
    """Delete the lake's files of these runs that this export did not write again, and
    the partition directories that leaves empty."""
    removed = 0
    emptied: set[Path] = set()
    for table in TABLE_NAMES:
        root = directory / table
        if not root.is_dir():
            continue
        for folder, _dirs, files in os.walk(root):
            for name in files:
                match = _PART.fullmatch(name)
                path = Path(folder) / name
                if match is None or match["run"] not in keys or path in keep:
                    continue
                try:
                    path.unlink()
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise OcproxyError(f"cannot remove {path}: {exc.strerror or exc}") from exc
                removed += 1
                emptied.update(p for p in path.parents if p != root and p.is_relative_to(root))
    for empty in sorted(emptied, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty: other runs' files are there
            empty.rmdir()
    return removed


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
