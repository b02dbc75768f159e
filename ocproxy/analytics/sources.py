"""Turn ``SOURCE`` arguments into one queryable DuckDB connection.

Every source is opened read-only behind an in-memory DuckDB: recordings (``.duckdb``
files, possibly from a glob) are ATTACHed, Parquet exports (a directory holding
``frames/date=.../identity=.../*.parquet``, ``connections/...``) are read with
``read_parquet``. Temp views ``frames``, ``connections``, ``runs`` and ``run_stats``
then UNION ALL BY NAME across all of them, so a query never knows how many sources
there are.

Each view starts from an empty copy of the current schema (the migrations, run in a
scratch catalog): every public column exists with its type even when a source is an
older recording or an export that lacks it.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import duckdb

from ocproxy.errors import ConfigError
from ocproxy.recorder.migrations import migrate

# The public interface of a recording (README, "The recording").
PUBLIC_TABLES = ("frames", "connections", "runs", "run_stats")
_SCHEMA = "_ocproxy_schema"
_GLOB_MAGIC = frozenset("*?[")


@dataclass
class Sources:
    """An in-memory DuckDB over every source, and what the caller should be told."""

    db: duckdb.DuckDBPyConnection
    paths: list[Path]
    notes: list[str] = field(default_factory=list)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_sources(args: list[str]) -> Sources:
    """Open every SOURCE read-only and expose them as one set of views.

    Raises :class:`ConfigError` naming the argument for a missing file, a glob that
    matches nothing, a file that is not an ocproxy recording or a directory that is
    not a Parquet export.
    """
    paths = expand(args)
    db = duckdb.connect(":memory:")
    try:
        # Days and timestamps in query results must not depend on the machine's zone.
        db.execute("SET TimeZone = 'UTC'")
        _create_schema_copy(db)
        selects: dict[str, list[str]] = {table: [] for table in PUBLIC_TABLES}
        notes = []
        for index, path in enumerate(paths):
            source = _open_one(db, path, f"src{index}")
            for table, select in source.items():
                selects[table].append(select)
            if _is_empty(db, source):
                notes.append(f"{path} holds no connections or frames")
        _create_views(db, selects)
    except BaseException:
        db.close()
        raise
    return Sources(db, paths, notes)


def expand(args: list[str]) -> list[Path]:
    """Expand globs, check that every path exists, drop duplicates (first one wins)."""
    if not args:
        raise ConfigError("no SOURCE given: name one or more recordings")
    paths: list[Path] = []
    seen: set[Path] = set()
    for arg in args:
        for path in _expand_one(arg):
            if path.resolve() not in seen:
                seen.add(path.resolve())
                paths.append(path)
    return paths


def _expand_one(arg: str) -> list[Path]:
    pattern = str(Path(arg).expanduser())
    if not _GLOB_MAGIC & set(pattern):
        if not Path(pattern).exists():
            raise ConfigError(f"{arg}: no such file or directory")
        return [Path(pattern)]
    # A recording being written leaves a .wal beside it: a glob like rec/* must not
    # then fail on a file that is part of a recording, not one of its own.
    matches = [Path(m) for m in sorted(glob.glob(pattern, recursive=True))]
    matches = [m for m in matches if m.suffix != ".wal"]
    if not matches:
        raise ConfigError(f"{arg}: no file matches")
    return matches


def _create_schema_copy(db: duckdb.DuckDBPyConnection) -> None:
    db.execute(f"ATTACH ':memory:' AS {_SCHEMA}")
    db.execute(f"USE {_SCHEMA}")
    migrate(db)
    db.execute("USE memory")


def _open_one(db: duckdb.DuckDBPyConnection, path: Path, alias: str) -> dict[str, str]:
    """SELECTs reading each public table of one source (absent tables are left out)."""
    if path.is_dir():
        return _parquet_selects(db, path)
    return _attach(db, path, alias)


def _attach(db: duckdb.DuckDBPyConnection, path: Path, alias: str) -> dict[str, str]:
    try:
        db.execute(f"ATTACH {_literal(str(path))} AS {alias} (READ_ONLY)")
    except duckdb.Error as exc:
        raise ConfigError(_attach_failure(path, exc)) from exc
    present = _names(db, alias)
    if "_ocproxy_migrations" not in present:
        db.execute(f"DETACH {alias}")
        raise ConfigError(f"{path} is not an ocproxy recording (no _ocproxy_migrations table)")
    return {t: f"SELECT * FROM {alias}.main.{t}" for t in PUBLIC_TABLES if t in present}


def _attach_failure(path: Path, exc: duckdb.Error) -> str:
    text = _first_line(exc)
    if "not a valid DuckDB database file" in text:
        return f"{path} is not an ocproxy recording (not a DuckDB file)"
    if "lock" in text.lower():
        return f"{path} is being written by another process; stop it or query a copy"
    return f"cannot open {path}: {text}"


def _names(db: duckdb.DuckDBPyConnection, catalog: str) -> set[str]:
    rows = db.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = $c "
        "UNION ALL SELECT view_name FROM duckdb_views() WHERE database_name = $c",
        {"c": catalog},
    ).fetchall()
    return {row[0] for row in rows}


def _parquet_selects(db: duckdb.DuckDBPyConnection, path: Path) -> dict[str, str]:
    selects = {}
    for table in PUBLIC_TABLES:
        files = sorted((path / table).glob("**/*.parquet"))
        if files:
            selects[table] = _parquet_select(db, table, path / table, files[0])
    if not selects:
        raise ConfigError(
            f"{path} is not an ocproxy recording (a directory must be a Parquet export "
            "holding frames/ or connections/ *.parquet files)"
        )
    return selects


def _parquet_select(
    db: duckdb.DuckDBPyConnection, table: str, directory: Path, sample: Path
) -> str:
    # Partition keys are strings here (no autocast): an identity like "0042" must not
    # turn into the number 42. Keys that are not columns of the table (``date``, and
    # ``identity`` in frames) are dropped, so that every source has the same columns
    # and ``frames JOIN connections USING (connection_id)`` has one ``identity``.
    pattern = _literal(str(directory / "**" / "*.parquet"))
    read = (
        f"read_parquet({pattern}, hive_partitioning = true, union_by_name = true, "
        "hive_types_autocast = false)"
    )
    columns = set(_columns(db, table))
    keys = [p.split("=", 1)[0] for p in sample.relative_to(directory).parts[:-1] if "=" in p]
    extra = [k for k in keys if k not in columns]
    exclude = f" EXCLUDE ({', '.join(_identifier(k) for k in extra)})" if extra else ""
    return f"SELECT *{exclude} FROM {read}"


def _columns(db: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    rows = db.execute(
        "SELECT column_name FROM duckdb_columns() WHERE database_name = $c AND table_name = $t "
        "ORDER BY column_index",
        {"c": _SCHEMA, "t": table},
    ).fetchall()
    return [row[0] for row in rows]


def _create_views(db: duckdb.DuckDBPyConnection, selects: dict[str, list[str]]) -> None:
    for table, parts in selects.items():
        union = " UNION ALL BY NAME ".join([f"SELECT * FROM {_SCHEMA}.main.{table}", *parts])
        db.execute(f"CREATE TEMP VIEW {table} AS {union}")


def _is_empty(db: duckdb.DuckDBPyConnection, source: dict[str, str]) -> bool:
    for table in ("frames", "connections"):
        if table in source:
            row = db.execute(f"SELECT count(*) FROM ({source[table]})").fetchone()
            if row is not None and row[0]:
                return False
    return True


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
