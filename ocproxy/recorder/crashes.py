"""Runs that ended without their ``run_stats`` row: a crash, accounted for in the file.

A run writes ``run_stats`` when it stops. One that has none ended abruptly (``kill -9``,
power loss, the relaying process dying under its recorder): what it had recorded is in
the file (DuckDB replays its WAL on open), what it had not is unknown. The next writer
closes the connections it left open (reason ``proxy-crash``) and writes its
``run_stats`` with ``frames_lost`` NULL: unknown, never 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb

CRASH_REASON = "proxy-crash"


@dataclass(frozen=True)
class CrashedRun:
    run_id: str
    source: str
    started_at: datetime
    last_activity: datetime | None
    open_connections: int

    def line(self) -> str:
        last = "no frame" if self.last_activity is None else f"last frame {self.last_activity}"
        return (
            f"run {self.run_id} ({self.source}, started {self.started_at}) ended without its "
            f"stats, a crash: {last}, {self.open_connections} connections were open"
        )


_CRASHED = """
    SELECT r.run_id, r.source, r.started_at
    FROM runs r ANTI JOIN run_stats s USING (run_id)
    WHERE r.run_id <> ?
    ORDER BY r.started_at
"""

_OPEN = """
    SELECT o.connection_id, coalesce(max(f.ts), max(o.opened_at)) AS last
    FROM connection_opens o
    ANTI JOIN connection_closes c USING (connection_id)
    LEFT JOIN frames f USING (connection_id)
    WHERE o.run_id = ?
    GROUP BY o.connection_id
"""


def crashed_runs(db: duckdb.DuckDBPyConnection, current: str) -> list[CrashedRun]:
    """Runs other than ``current`` that have no ``run_stats`` row, oldest first."""
    found = []
    for run_id, source, started_at in db.execute(_CRASHED, [current]).fetchall():
        open_rows = db.execute(_OPEN, [run_id]).fetchall()
        last = db.execute(
            "SELECT max(f.ts) FROM frames f JOIN connection_opens o USING (connection_id) "
            "WHERE o.run_id = ?",
            [run_id],
        ).fetchone()
        found.append(
            CrashedRun(
                run_id, source, started_at, None if last is None else last[0], len(open_rows)
            )
        )
    return found


def close_crashed_run(db: duckdb.DuckDBPyConnection, run_id: str) -> None:
    """Close what ``run_id`` left open and write its stats, ``frames_lost`` unknown."""
    db.execute("BEGIN TRANSACTION")
    try:
        db.execute(
            "INSERT INTO connection_closes "
            f"SELECT connection_id, last, NULL, '{CRASH_REASON}', 'proxy' FROM ({_OPEN})",
            [run_id],
        )
        db.execute(
            """
            INSERT INTO run_stats
            SELECT ?, coalesce(
                    (SELECT max(f.ts) FROM frames f JOIN connection_opens o
                     USING (connection_id) WHERE o.run_id = ?),
                    (SELECT started_at FROM runs WHERE run_id = ?)),
                (SELECT count(*) FROM connection_opens WHERE run_id = ?),
                (SELECT count(*) FROM frames f JOIN connection_opens o USING (connection_id)
                 WHERE o.run_id = ?),
                NULL, NULL, NULL, NULL
            """,
            [run_id] * 5,
        )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
