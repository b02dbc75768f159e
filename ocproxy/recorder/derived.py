"""Payload fields the analytics read, parsed once when the frames are stored.

The slow named queries (``transactions``, ``meter_values``, ``availability``) used to
parse the JSON payloads of millions of frames every time they ran. The table
``frame_fields`` holds, for the few actions they are about, one row per frame: its
place (``connection_id``, ``seq``), the frame columns the queries filter on, then one
column per payload field of both OCPP 1.6 and 2.0.1/2.1 shapes, named as in the
payload (transaction id, EVSE/connector, status, event type, id token, meter values,
...), parsed leniently with ``from_json`` exactly as the queries did (a field of the
wrong shape is NULL, its raw JSON kept where a query checks its type), and
``registers``: the energy register samples of its meter values.

Filled in DuckDB, vectorised, by one ``INSERT ... SELECT`` over the Arrow batch the
recorder has just appended (only the rows of these actions are parsed), and for a
file written before it existed by the migration that creates it. Readers check that
it covers every frame it should (a file written by a tool that bypassed the recorder
has no rows) and otherwise compute the same rows from ``frames`` on the fly:
:func:`ensure_readable`.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

TABLE = "frame_fields"
# CALLs whose payload fields are stored.
CALL_ACTIONS = (
    "StartTransaction",
    "StopTransaction",
    "MeterValues",
    "TransactionEvent",
    "StatusNotification",
)

# Fields whose JSON type a query checks (1 or "1") are kept as JSON text; the rest are
# read as VARCHAR and cast by the queries (TRY_CAST), as before.
# 1.6 has no unitOfMeasure: a StopTransaction's transactionData never reads one.
_SAMPLES_16 = """[{"timestamp": "VARCHAR", "sampledValue": [{"value": "JSON",
    "measurand": "VARCHAR", "phase": "VARCHAR", "location": "VARCHAR", "context": "VARCHAR",
    "format": "VARCHAR", "unit": "VARCHAR"}]}]"""
_SAMPLES = _SAMPLES_16.replace(
    '"unit": "VARCHAR"}',
    '"unit": "VARCHAR", "unitOfMeasure": {"unit": "VARCHAR", "multiplier": "VARCHAR"}}',
)
SPEC = f"""{{"transactionId": "JSON", "connectorId": "JSON", "evseId": "VARCHAR",
    "idTag": "VARCHAR", "meterStart": "JSON", "meterStop": "JSON", "timestamp": "VARCHAR",
    "reason": "VARCHAR", "eventType": "VARCHAR", "status": "VARCHAR",
    "connectorStatus": "VARCHAR", "interval": "JSON",
    "transactionInfo": {{"transactionId": "VARCHAR", "stoppedReason": "VARCHAR",
        "chargingState": "VARCHAR"}},
    "evse": {{"id": "JSON", "connectorId": "VARCHAR"}},
    "idToken": {{"idToken": "VARCHAR", "type": "VARCHAR"}},
    "meterValue": {_SAMPLES}, "transactionData": {_SAMPLES_16}}}"""

# Answers whose payload fields are stored: 1.6 gives the transaction id in the
# StartTransaction answer, the heartbeat interval in the BootNotification answer.
ANSWER_ACTIONS = ("StartTransaction", "BootNotification")
_CALL_SET = pa.array(CALL_ACTIONS, pa.string())
_ANSWER_SET = pa.array(ANSWER_ACTIONS, pa.string())

# The frames that get a row: one predicate for the insert, the back-fill and the check.
_WHERE = (
    "((message_type = 2 AND action IN ({calls})) OR (message_type = 3 AND action IN ({answers})))"
).format(
    calls=", ".join(f"'{a}'" for a in CALL_ACTIONS),
    answers=", ".join(f"'{a}'" for a in ANSWER_ACTIONS),
)
_COLUMNS = "connection_id, seq, ts, action, message_type, request_seq"
_SPEC_SQL = " ".join(SPEC.split()).replace("'", "''")


# The energy register samples of a frame's meter values (the default measurand, of the
# whole outlet, in Wh: kWh x 1000, 2.x multiplier applied) as (timestamp text, wh):
# what `transactions` needs from them. The timestamp stays text: casting it depends
# on the session's time zone when it has no offset, and readers cast it in UTC.
_REGISTER = """coalesce(sv.measurand, 'Energy.Active.Import.Register')
        = 'Energy.Active.Import.Register'
    AND sv.phase IS NULL AND coalesce(sv.location, 'Outlet') = 'Outlet'
    AND lower(coalesce(sv.unit, sv.unitOfMeasure.unit, 'Wh')) IN ('wh', 'kwh')"""
_WH = """TRY_CAST(sv.value ->> '$' AS DOUBLE)
    * CASE lower(coalesce(sv.unit, sv.unitOfMeasure.unit, 'Wh')) WHEN 'kwh' THEN 1000 ELSE 1 END
    * pow(10, coalesce(TRY_CAST(sv.unitOfMeasure.multiplier AS INTEGER), 0))"""
_REGISTERS = f"""list_filter(flatten(list_transform(
        CASE action WHEN 'StopTransaction' THEN transactionData ELSE meterValue END,
        lambda mv: list_transform(list_filter(mv.sampledValue, lambda sv: {_REGISTER}),
            lambda sv: {{'timestamp': mv.timestamp, 'wh': {_WH}}}))),
    lambda r: r.wh IS NOT NULL)"""


def select_from(relation: str, also: str = "TRUE", *, where: str = _WHERE) -> str:
    """The rows of ``frame_fields`` for the frames of ``relation`` (a table or view) that
    also meet the condition ``also``."""
    # One column per payload field (named as in the payload), not one struct: a query
    # reading a few small fields must not read every frame's meter values.
    registers = " ".join(_REGISTERS.split())
    return (
        f"SELECT *, CASE WHEN action IN ('MeterValues', 'StopTransaction', 'TransactionEvent') "
        f"THEN {registers} END AS registers FROM ("
        # No TRY (it costs ~10 %): frames.payload is JSON, so the frames INSERT before
        # this one has already refused text that is not; and from_json into VARCHAR and
        # JSON fields reads any JSON (an array, a string) leniently, as NULL fields.
        f"SELECT {_COLUMNS}, unnest(from_json(payload, '{_SPEC_SQL}')) "
        f"FROM {relation} WHERE {where} AND ({also}))"
    )


def create(db: duckdb.DuckDBPyConnection) -> None:
    """The table (empty), typed by the SELECT that fills it."""
    db.execute(f"CREATE TABLE {TABLE} AS {select_from('frames')} LIMIT 0")


def backfill(db: duckdb.DuckDBPyConnection) -> int:
    """Add the rows of every frame that lacks its own; how many were added.

    DuckDB's own progress bar is off meanwhile: it prints to stdout, which may be the
    proxy's (a file of 10 million frames takes half a minute)."""
    ((shown,),) = db.execute("SELECT current_setting('enable_progress_bar')").fetchall()
    db.execute("SET enable_progress_bar = false")
    try:
        row = db.execute(
            f"INSERT INTO {TABLE} "
            + select_from(
                "frames",
                f"(connection_id, seq) NOT IN (SELECT (connection_id, seq) FROM {TABLE})",
            )
            if _has_rows(db)
            else f"INSERT INTO {TABLE} {select_from('frames')}"
        ).fetchone()
    finally:
        db.execute(f"SET enable_progress_bar = {'true' if shown else 'false'}")
    return int(row[0]) if row else 0


def append(db: duckdb.DuckDBPyConnection, frames: pa.Table) -> None:
    """The rows of a batch of frames just appended to ``frames`` (in the same transaction).

    A batch without any of these frames (heartbeats) costs only the check in Arrow."""
    wanted = _wanted(frames)
    if wanted is not None:
        _insert_rows(db, wanted)


class Pending:
    """The rows of frames already appended whose fields are stored a little later.

    Storing them costs DuckDB ~3.4 ms per statement whatever the rows (binding the JSON
    schema and the register lambdas) plus ~0.8 us a row: per flush of the recorder (every
    0.25 s) that was up to 7.5 us a frame. Gathered for up to :attr:`ROWS` rows or
    :attr:`AGE_S` seconds, they cost the per-row part. Until then a reader finds the
    table short of rows and computes them (:func:`ensure_readable`); rows a crash lost
    are added when the file is next opened for writing (:func:`backfill`).
    """

    ROWS = 20_000
    AGE_S = 5.0

    def __init__(self) -> None:
        self._tables: list[pa.Table] = []
        self._rows = 0
        self._since: float | None = None

    def add(self, frames: pa.Table, now: float) -> None:
        """Keep the rows of ``frames`` (just appended) that get fields; ``now`` monotonic."""
        wanted = _wanted(frames)
        if wanted is None:
            return
        self._tables.append(wanted)
        self._rows += len(wanted)
        if self._since is None:
            self._since = now

    def due(self, now: float) -> bool:
        return self._rows >= self.ROWS or (
            self._since is not None and now - self._since >= self.AGE_S
        )

    def flush(self, db: duckdb.DuckDBPyConnection) -> None:
        """Store what was gathered, in the caller's transaction."""
        tables, self._tables, self._rows, self._since = self._tables, [], 0, None
        if tables:
            _insert_rows(db, pa.concat_tables(tables))


def _wanted(frames: pa.Table) -> pa.Table | None:
    """The frames of a batch that get a row, picked in Arrow (the same rule as ``_WHERE``):
    DuckDB then plans no filter (planning one costs more than running it on a batch)."""
    action, message_type = frames.column("action"), frames.column("message_type")
    wanted = pc.or_kleene(
        pc.and_kleene(pc.equal(message_type, 2), pc.is_in(action, value_set=_CALL_SET)),
        pc.and_kleene(pc.equal(message_type, 3), pc.is_in(action, value_set=_ANSWER_SET)),
    )
    if not pc.any(wanted).as_py():
        return None
    return frames.filter(wanted)


def _insert_rows(db: duckdb.DuckDBPyConnection, rows: pa.Table) -> None:
    db.register(_BATCH, rows)
    try:
        db.execute(_INSERT)
    finally:
        db.unregister(_BATCH)


def ensure_readable(db: duckdb.DuckDBPyConnection) -> bool:
    """Make ``frame_fields`` hold a row for every frame it should; True if it did already.

    For a reader: a source written before the table existed (and never opened for
    writing since), a Parquet export, or a file written around the recorder lacks
    rows. Then a temp table of the same name (in memory, for this connection) is
    computed from ``frames``, once: the same results, after one pass over the payloads
    (about the old speed of one query). Nothing is written to any source."""
    complete = is_complete(db)
    if not complete:
        # A temp view would parse every payload again at each use (a query uses it
        # several times, a report runs several queries).
        db.execute(f"DROP VIEW IF EXISTS temp.main.{TABLE}")
        db.execute(f"CREATE TEMP TABLE {TABLE} AS {select_from('frames')}")
    return complete


def is_complete(db: duckdb.DuckDBPyConnection) -> bool:
    """Whether ``frame_fields`` has as many rows as the frames it is for (it is written
    in the frames' own transaction, so a count tells a file that lacks them)."""
    try:
        ((complete,),) = db.execute(
            f"SELECT (SELECT count(*) FROM frames WHERE {_WHERE}) = (SELECT count(*) FROM {TABLE})"
        ).fetchall()
    except duckdb.CatalogException:
        return False
    return bool(complete)


def _has_rows(db: duckdb.DuckDBPyConnection) -> bool:
    return bool(db.execute(f"SELECT 1 FROM {TABLE} LIMIT 1").fetchall())


_BATCH = "_ocproxy_fields_batch"
# The batch holds only the frames that get a row: no WHERE to plan.
_INSERT = f"INSERT INTO {TABLE} {select_from(_BATCH, where='TRUE')}"
