"""Turn ``SOURCE`` arguments into one queryable DuckDB connection.

Every source is opened read-only behind an in-memory DuckDB: recordings (``.duckdb``
files, possibly from a glob) are ATTACHed, Parquet exports (a directory holding
``frames/date=.../identity=.../*.parquet``, ``connections/...``) are read with
``read_parquet``. A temp view per table of the schema (``frames``, ``runs``,
``run_stats``, ``connection_opens``, ... whatever the migrations create) is the
UNION ALL BY NAME of that table in every source, so a query never knows how many
sources there are.

Each view starts from an empty copy of the current schema (the migrations, run in a
scratch catalog): every column exists with its type even when a source is an older
recording or an export that lacks it.

Views of the schema (``connections``) are re-created over those temp views rather
than read from each recording: DuckDB binds the table names inside an attached view
through the search path, where the temp views come first, so reading
``src0.connections`` would silently read every source's ``connection_opens``.
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import duckdb

from ocproxy.errors import ConfigError, no_such_file, open_failure
from ocproxy.recorder.migrations import migrate

# The public interface of a recording (README, "The recording"); views are made for
# every table and view the migrations create, these included.
PUBLIC_TABLES = ("frames", "connections", "runs", "run_stats")
_SCHEMA = "_ocproxy_schema"
_MIGRATIONS_TABLE = "_ocproxy_migrations"
# Bytes 8-11 of every DuckDB database file.
_DUCKDB_MAGIC = b"DUCK"
_GLOB_MAGIC = frozenset("*?[")
_VIEW_SQL = re.compile(r"CREATE VIEW \S+ AS (?P<select>.*?);?\s*", re.DOTALL | re.IGNORECASE)


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


@dataclass(frozen=True)
class _Schema:
    tables: list[str]
    views: dict[str, str]  # name -> its SELECT

    def view_parts(self) -> set[str]:
        """Tables the views are built from (an export holds the view instead)."""
        return {
            t for t in self.tables for sql in self.views.values() if re.search(rf"\b{t}\b", sql)
        }


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
        # A lake has thousands of small files: read each footer once, not per view use.
        db.execute("SET parquet_metadata_cache = true")
        schema = _create_schema_copy(db)
        parts: dict[str, list[str]] = {name: [] for name in [*schema.tables, *schema.views]}
        notes = []
        for index, path in enumerate(paths):
            source = _open_one(db, path, f"src{index}", schema)
            for name, select in source.items():
                parts[name].append(select)
            if _is_empty(db, source):
                notes.append(f"{path} holds no connections or frames")
        _create_views(db, schema, parts)
        if len(paths) > 1:
            notes.extend(_overlap_note(db))
        notes.extend(_crash_notes(db))
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
        if not _exists(Path(pattern)):
            raise ConfigError(no_such_file(arg))
        return [Path(pattern)]
    # A recording being written leaves a .wal beside it: a glob like rec/* must not
    # then fail on a file that is part of a recording, not one of its own.
    matches = [Path(m) for m in sorted(glob.glob(pattern, recursive=True))]
    matches = [m for m in matches if m.suffix != ".wal"]
    if not matches:
        raise ConfigError(f"{arg}: no file matches")
    return matches


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long for the OS, a NUL byte
        return False


def _create_schema_copy(db: duckdb.DuckDBPyConnection) -> _Schema:
    """An empty recording in a scratch catalog: the current tables and views."""
    db.execute(f"ATTACH ':memory:' AS {_SCHEMA}")
    db.execute(f"USE {_SCHEMA}")
    migrate(db)
    db.execute("USE memory")
    tables = sorted(_names(db, _SCHEMA, "tables") - {_MIGRATIONS_TABLE})
    rows = db.execute(
        "SELECT view_name, sql FROM duckdb_views() WHERE database_name = $c", {"c": _SCHEMA}
    ).fetchall()
    views = {}
    for name, sql in rows:
        match = _VIEW_SQL.fullmatch(sql.strip())
        if match is None:  # a migration wrote a view this module cannot re-create
            raise ConfigError(f"cannot read the definition of view {name}")
        views[name] = match["select"]
    return _Schema(tables, views)


def _open_one(
    db: duckdb.DuckDBPyConnection, path: Path, alias: str, schema: _Schema
) -> dict[str, str]:
    """SELECTs reading each table of one source (what it lacks is left out)."""
    if path.is_dir():
        return _parquet_selects(db, path, schema)
    return _attach(db, path, alias, schema)


def _attach(
    db: duckdb.DuckDBPyConnection, path: Path, alias: str, schema: _Schema
) -> dict[str, str]:
    if not _is_duckdb_file(path):
        raise ConfigError(f"{path} is not an ocproxy recording (not a DuckDB file)")
    try:
        db.execute(f"ATTACH {_literal(str(path))} AS {alias} (READ_ONLY)")
    except duckdb.Error as exc:
        raise ConfigError(open_failure(path, exc)) from exc
    present = _names(db, alias, "tables")
    if _MIGRATIONS_TABLE not in present:
        db.execute(f"DETACH {alias}")
        raise ConfigError(f"{path} is not an ocproxy recording (no {_MIGRATIONS_TABLE} table)")
    return {t: f"SELECT * FROM {alias}.main.{t}" for t in schema.tables if t in present}


def _is_duckdb_file(path: Path) -> bool:
    # Checked before ATTACH: DuckDB's own errors for a foreign file vary (a Parquet file
    # gives "Cannot launch in-memory database in read-only mode").
    try:
        with path.open("rb") as stream:
            return stream.read(12)[8:12] == _DUCKDB_MAGIC
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _names(db: duckdb.DuckDBPyConnection, catalog: str, kind: str) -> set[str]:
    rows = db.execute(
        f"SELECT {kind[:-1]}_name FROM duckdb_{kind}() WHERE database_name = $c", {"c": catalog}
    ).fetchall()
    return {row[0] for row in rows}


def _parquet_selects(db: duckdb.DuckDBPyConnection, path: Path, schema: _Schema) -> dict[str, str]:
    # An export holds the public tables and views; the tables a view is made of would
    # count its rows twice, so they are not read from an export.
    names = [t for t in schema.tables if t not in schema.view_parts()] + list(schema.views)
    selects = {}
    for name in names:
        files = sorted((path / name).glob("**/*.parquet"))
        if files:
            selects[name] = _parquet_select(db, name, path / name, files[0])
    if not selects:
        raise ConfigError(
            f"{path} is not an ocproxy recording (a directory must be a Parquet export "
            "holding frames/ or connections/ *.parquet files)"
        )
    return selects


def _parquet_select(db: duckdb.DuckDBPyConnection, name: str, directory: Path, sample: Path) -> str:
    # Partition keys are strings here (no autocast): an identity like "0042" must not
    # turn into the number 42. Keys that are not columns of the table (``date``, and
    # ``identity`` in frames) are dropped, so that every source has the same columns
    # and ``frames JOIN connections USING (connection_id)`` has one ``identity``.
    pattern = _literal(str(directory / "**" / "*.parquet"))
    read = (
        f"read_parquet({pattern}, hive_partitioning = true, union_by_name = true, "
        "hive_types_autocast = false)"
    )
    columns = set(_columns(db, name))
    keys = [p.split("=", 1)[0] for p in sample.relative_to(directory).parts[:-1] if "=" in p]
    extra = [k for k in keys if k not in columns]
    exclude = f" EXCLUDE ({', '.join(_identifier(k) for k in extra)})" if extra else ""
    return f"SELECT *{exclude} FROM {read}"


def _columns(db: duckdb.DuckDBPyConnection, name: str) -> list[str]:
    rows = db.execute(
        "SELECT column_name FROM duckdb_columns() WHERE database_name = $c AND table_name = $t",
        {"c": _SCHEMA, "t": name},
    ).fetchall()
    return [row[0] for row in rows]


def _create_views(
    db: duckdb.DuckDBPyConnection, schema: _Schema, parts: dict[str, list[str]]
) -> None:
    # Tables first: the views' own SELECTs then bind to these temp views.
    for table in schema.tables:
        base = f"SELECT * FROM {_SCHEMA}.main.{table}"
        db.execute(f"CREATE TEMP VIEW {table} AS {_once(table, _union([base, *parts[table]]))}")
    for view, select in schema.views.items():
        db.execute(f"CREATE TEMP VIEW {view} AS {_once(view, _union([select, *parts[view]]))}")


# A rotated recording (--rotate) repeats a connection's open row in each file it spans,
# and the run's row in each file of the run: one row each when the files are read as one.
_ONE_PER = {
    "connection_opens": ("connection_id", "opened_at"),
    "connections": ("connection_id", "closed_at DESC NULLS LAST, opened_at"),
    "runs": ("run_id", "started_at"),
}


def _once(name: str, select: str) -> str:
    if name not in _ONE_PER:
        return select
    key, order = _ONE_PER[name]
    return (
        f"SELECT * FROM ({select}) "
        f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY {order}) = 1"
    )


def _union(selects: list[str]) -> str:
    return " UNION ALL BY NAME ".join(f"({select})" for select in selects)


def _is_empty(db: duckdb.DuckDBPyConnection, source: dict[str, str]) -> bool:
    for name in ("frames", "connection_opens", "connections"):
        if name in source and db.execute(f"SELECT 1 FROM ({source[name]}) LIMIT 1").fetchall():
            return False
    return True


def _overlap_note(db: duckdb.DuckDBPyConnection) -> list[str]:
    # A frame is one (connection, seq): seen in two sources, it is one recording given
    # twice (a copy), and every count and join over it would double. (A connection's
    # open row may be in several: the files of a rotation.)
    # fetchall, not fetchone: DuckDB 2 refuses new work while a result is unfinished.
    ((repeated,),) = db.execute(
        "SELECT count(*) - count(DISTINCT (connection_id, seq)) FROM frames"
    ).fetchall()
    if not repeated:
        return []
    return [f"{repeated} frames are in more than one source: a recording given twice?"]


def _crash_notes(db: duckdb.DuckDBPyConnection) -> list[str]:
    """A run without its run_stats row ended in a crash (kill -9, power loss): say so."""
    try:
        rows = db.execute(
            "SELECT r.run_id, r.source, r.started_at, "
            "(SELECT max(f.ts) FROM frames f JOIN connection_opens o USING (connection_id) "
            " WHERE o.run_id = r.run_id), "
            "(SELECT count(*) FROM connections c WHERE c.run_id = r.run_id "
            " AND c.closed_at IS NULL AND c.handshake_status = 101) "
            "FROM runs r ANTI JOIN run_stats s USING (run_id) ORDER BY r.started_at"
        ).fetchall()
    except duckdb.Error:  # an export without those tables: nothing to say
        return []
    return [
        f"run {run_id} ({source}, started {started:%Y-%m-%d %H:%M:%S}) ended without its "
        f"stats, a crash: last frame {last or 'none'}, {left} connections left open "
        "(the next ocproxy proxy on the file closes them as proxy-crash)"
        for run_id, source, started, last, left in rows
    ]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
