"""Write imported events as the proxy records them, then into the recording at once.

Every share of an import feeds the same :class:`~ocproxy.recorder.Recorder` the proxy
uses (parse, correlate, redact or pseudonymise, audit, batch) into a staging file of
its own. The Recorder commits batch by batch; so that an import is all or nothing,
the staged rows are copied into the recording afterwards in one transaction, as one
run (``runs.source`` = the import's source, its settings name the file).
"""

from __future__ import annotations

import gc
import json
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import batched
from pathlib import Path
from typing import Any

import duckdb

from ocproxy import __version__
from ocproxy.audit.auditor import Auditor, AuditSettings
from ocproxy.core.events import RecorderEvent
from ocproxy.core.redaction import Redactor
from ocproxy.errors import RecorderError, first_line
from ocproxy.recorder import Recorder, RecorderStats
from ocproxy.recorder.migrations import migrate

_RUN_TABLES = ("runs", "run_stats")  # rewritten as the import's own run
_NOT_COPIED = ("_ocproxy_migrations", *_RUN_TABLES)


@dataclass(frozen=True)
class StagingOptions:
    source: str
    audit: AuditSettings | None  # None: no audit
    id_key: bytes | None  # None: driver ids kept (--keep-ids)


def stage(
    path: Path,
    events: Iterable[RecorderEvent],
    options: StagingOptions,
    progress: Callable[[int], None] | None = None,
) -> RecorderStats:
    """Record ``events`` into a new staging file at ``path`` with the proxy's Recorder.

    In this thread (``open_here``): an import has no event loop to keep responsive, and
    a writer thread would only take turns with this one for the GIL (measured on 300,000
    log lines: 34 us a message with the thread and its polling, 31 without)."""
    recorder = Recorder(
        path,
        source=options.source,
        batch_rows=10_000,
        auditor=None if options.audit is None else Auditor(options.audit),
        redactor=Redactor(options.id_key),
        yield_every=0,
    ).open_here()
    submitted = 0
    try:
        with few_collections():
            for chunk in batched(events, 8192):
                recorder.process_many(chunk)
                submitted += len(chunk)
                if progress is not None:
                    progress(submitted)
    finally:
        stats = recorder.finish()
    if stats.errors:
        raise RecorderError(stats.errors[0])
    return stats


@contextmanager
def few_collections() -> Iterator[None]:
    """Python's cyclic garbage collector, run less often while a file is imported.

    Every frame allocates a few containers (the parsed payload, the row, its findings),
    none of them in a cycle; at the default threshold (700) the collector walks the
    young generation every few frames and the whole heap every few thousand: ~15% of an
    import's CPU (measured). What was alive before is frozen out of its walks."""
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def merge(
    target: Path, staged: list[Path], settings: dict[str, Any], source: str, started: float
) -> str:
    """Copy the staged rows into ``target`` in one transaction, as one run; its id."""
    run_id = str(uuid.uuid4())
    try:
        # DuckDB draws its own progress bar on stdout for a statement over 2 s: the
        # copy of a big import is one, under the command's own bar.
        db = duckdb.connect(str(target))
        db.execute("SET enable_progress_bar = false")
    except duckdb.Error as exc:
        raise RecorderError(f"cannot open recording {target}: {first_line(exc)}") from exc
    try:
        migrate(db)
        names = [f"s{i}" for i in range(len(staged))]
        for name, path in zip(names, staged, strict=True):
            db.execute(f"ATTACH '{_quoted(path)}' AS {name} (READ_ONLY)")
        db.execute("BEGIN TRANSACTION")
        try:
            _copy(db, names, run_id)
            _run_rows(db, names, run_id, settings, source, started)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    except duckdb.Error as exc:
        raise RecorderError(f"cannot write {target}: {first_line(exc)}") from exc
    finally:
        db.close()
    return run_id


def _copy(db: duckdb.DuckDBPyConnection, names: list[str], run_id: str) -> None:
    main = _catalog(db)
    for table, columns in _columns(db, main).items():
        if table in _NOT_COPIED:
            continue
        for name in names:
            staged = _columns(db, name).get(table)
            if not staged:
                continue
            shared = [c for c in columns if c in staged]
            select = ", ".join("$run AS run_id" if c == "run_id" else f'"{c}"' for c in shared)
            listed = ", ".join(f'"{c}"' for c in shared)
            db.execute(
                f'INSERT INTO "{main}".main."{table}" ({listed}) '
                f'SELECT {select} FROM {name}.main."{table}"',
                {"run": run_id} if "run_id" in shared else None,
            )


def _run_rows(
    db: duckdb.DuckDBPyConnection,
    names: list[str],
    run_id: str,
    settings: dict[str, Any],
    source: str,
    started: float,
) -> None:
    main = _catalog(db)
    db.execute(
        f'INSERT INTO "{main}".main.runs (run_id, started_at, ocproxy_version, source, settings) '
        "VALUES (?, ?, ?, ?, ?)",
        [run_id, datetime.fromtimestamp(started, UTC), __version__, source, json.dumps(settings)],
    )
    stats = " UNION ALL ".join(f"SELECT * FROM {name}.main.run_stats" for name in names)
    db.execute(
        f'INSERT INTO "{main}".main.run_stats (run_id, stopped_at, connections, '
        "frames_recorded, frames_lost, backpressure_waits, backpressure_wait_ms, max_queue_depth) "
        "SELECT $run, now(), sum(connections), sum(frames_recorded), sum(frames_lost), 0, 0, "
        f"max(max_queue_depth) FROM ({stats})",
        {"run": run_id},
    )


def _columns(db: duckdb.DuckDBPyConnection, catalog: str) -> dict[str, list[str]]:
    """Base tables of ``catalog`` (not views) and their columns, in order."""
    tables = {
        row[0]
        for row in db.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_catalog = ? AND table_schema = 'main' AND table_type = 'BASE TABLE'",
            [catalog],
        ).fetchall()
    }
    rows = db.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_catalog = ? AND table_schema = 'main' "
        "ORDER BY table_name, ordinal_position",
        [catalog],
    ).fetchall()
    out: dict[str, list[str]] = {}
    for table, column in rows:
        if table in tables:
            out.setdefault(table, []).append(column)
    return out


def _catalog(db: duckdb.DuckDBPyConnection) -> str:
    row = db.execute("SELECT current_database()").fetchone()
    assert row is not None
    return str(row[0])


def _quoted(path: Path) -> str:
    return str(path).replace("'", "''")
