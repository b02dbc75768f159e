"""Numbered, append-only schema migrations (after simonw/llm's ``migrations.py``).

Never edit a migration that has shipped: add a new one. Each runs once, in order, in
its own transaction, and is remembered by name in ``_ocproxy_migrations``.

The tables are a public interface for analysts (see README, "The recording"). Writes
are plain appends only (DuckDB's safe pattern): a connection's open and close are two
rows in two tables, joined by the ``connections`` view.
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb

from ocproxy.recorder import derived

Migration = Callable[[duckdb.DuckDBPyConnection], None]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append((fn.__name__, fn))
    return fn


@migration
def m001_initial(db: duckdb.DuckDBPyConnection) -> None:
    db.execute(
        """
        CREATE TABLE runs (
            run_id VARCHAR,
            started_at TIMESTAMPTZ,
            ocproxy_version VARCHAR,
            source VARCHAR,          -- 'proxy', 'demo', 'mitmproxy', ...
            settings JSON            -- the options the run was started with
        );
        CREATE TABLE run_stats (
            run_id VARCHAR,
            stopped_at TIMESTAMPTZ,
            connections BIGINT,
            frames_recorded BIGINT,
            frames_lost BIGINT,       -- rows that could not be written (counted, never silent)
            backpressure_waits BIGINT,
            backpressure_wait_ms DOUBLE,
            max_queue_depth BIGINT
        );
        CREATE TABLE connection_opens (
            connection_id VARCHAR,
            run_id VARCHAR,
            source VARCHAR,
            identity VARCHAR,        -- percent-decoded last path segment
            path VARCHAR,            -- raw request path and query, as the charger sent it
            remote_addr VARCHAR,
            offered_subprotocols VARCHAR[],
            subprotocol VARCHAR,     -- chosen by the CSMS; NULL if none
            ocpp_version VARCHAR,
            upstream_url VARCHAR,
            opened_at TIMESTAMPTZ,
            handshake_status INTEGER, -- 101, or the HTTP status the charger got
            request_headers JSON,     -- [[name, value], ...]; Authorization secret removed
            response_headers JSON
        );
        CREATE TABLE connection_closes (
            connection_id VARCHAR,
            closed_at TIMESTAMPTZ,
            close_code INTEGER,
            close_reason VARCHAR,
            closed_by VARCHAR         -- 'charger', 'csms' or 'proxy'
        );
        CREATE VIEW connections AS
            SELECT o.*, c.closed_at, c.close_code, c.close_reason, c.closed_by
            FROM connection_opens o LEFT JOIN connection_closes c USING (connection_id);
        CREATE TABLE frames (
            connection_id VARCHAR,
            seq BIGINT,               -- per connection, both directions, order received
            ts TIMESTAMPTZ,
            direction VARCHAR,        -- 'to_csms' or 'to_charger'
            opcode VARCHAR,           -- 'text' or 'binary'
            raw BLOB,                 -- the exact bytes received
            size BIGINT,
            message_type SMALLINT,    -- 2 CALL 3 CALLRESULT 4 CALLERROR 5 CALLRESULTERROR 6 SEND
            message_id VARCHAR,
            action VARCHAR,           -- for a response: the action of its CALL
            parse_status VARCHAR,     -- 'ok' or why the frame is malformed
            parse_detail VARCHAR,
            payload JSON,
            error_code VARCHAR,
            error_description VARCHAR,
            request_seq BIGINT,       -- for a response: seq of the CALL it answers
            latency_ms DOUBLE,
            pairing VARCHAR           -- 'matched', 'late', 'duplicate', 'unknown_id', ...
        );
        """
    )


@migration
def m002_findings(db: duckdb.DuckDBPyConnection) -> None:
    db.execute(
        """
        CREATE TABLE findings (
            connection_id VARCHAR,
            seq BIGINT,               -- the frame's seq; NULL for a finding about the connection
            ts TIMESTAMPTZ,
            rule VARCHAR,             -- stable rule id, see `ocproxy audit --explain RULE`
            severity VARCHAR,         -- 'info', 'warning' or 'error'
            message VARCHAR,
            path VARCHAR              -- JSON path into the payload, where it applies
        )
        """
    )


@migration
def m003_replay_and_injection(db: duckdb.DuckDBPyConnection) -> None:
    db.execute(
        """
        -- A replayed session names the recorded connection it replays.
        ALTER TABLE connection_opens ADD COLUMN replay_of VARCHAR;
        -- A CALL the proxy (or mitmproxy) injected itself, or the answer to one: never
        -- forwarded to the other side.
        ALTER TABLE frames ADD COLUMN injected BOOLEAN DEFAULT false;
        CREATE OR REPLACE VIEW connections AS
            SELECT o.*, c.closed_at, c.close_code, c.close_reason, c.closed_by
            FROM connection_opens o LEFT JOIN connection_closes c USING (connection_id);
        """
    )


@migration
def m004_redaction(db: duckdb.DuckDBPyConnection) -> None:
    # What was removed from raw and payload (secrets, pseudonymised driver ids), as
    # "$.json.path (why)"; NULL when nothing was.
    db.execute("ALTER TABLE frames ADD COLUMN redacted VARCHAR[]")


@migration
def m005_tls(db: duckdb.DuckDBPyConnection) -> None:
    db.execute(
        """
        ALTER TABLE connection_opens ADD COLUMN tls_version VARCHAR;
        ALTER TABLE connection_opens ADD COLUMN client_cert_subject VARCHAR;
        ALTER TABLE connection_opens ADD COLUMN client_cert_common_name VARCHAR;
        ALTER TABLE connection_opens ADD COLUMN client_cert_serial VARCHAR;
        ALTER TABLE connection_opens ADD COLUMN client_cert_fingerprint VARCHAR;
        ALTER TABLE connection_opens ADD COLUMN insecure_upstream BOOLEAN DEFAULT false;
        CREATE OR REPLACE VIEW connections AS
            SELECT o.*, c.closed_at, c.close_code, c.close_reason, c.closed_by
            FROM connection_opens o LEFT JOIN connection_closes c USING (connection_id);
        """
    )


@migration
def m006_mirror(db: duckdb.DuckDBPyConnection) -> None:
    db.execute(
        """
        -- A connection to a secondary CSMS names the charger connection it mirrors.
        ALTER TABLE connection_opens ADD COLUMN mirror_of VARCHAR;
        CREATE OR REPLACE VIEW connections AS
            SELECT o.*, c.closed_at, c.close_code, c.close_reason, c.closed_by
            FROM connection_opens o LEFT JOIN connection_closes c USING (connection_id);
        """
    )


@migration
def m007_config_reloads(db: duckdb.DuckDBPyConnection) -> None:
    db.execute(
        """
        -- Each SIGHUP: the settings that changed, or why the new config was refused.
        CREATE TABLE config_reloads (
            run_id VARCHAR,
            reloaded_at TIMESTAMPTZ,
            ok BOOLEAN,
            changes VARCHAR[],
            error VARCHAR
        );
        """
    )


@migration
def m008_frame_fields(db: duckdb.DuckDBPyConnection) -> None:
    # The payload fields the analytics read (transaction id, EVSE/connector, meter
    # values, status ...), parsed once: see ocproxy.recorder.derived. A file written
    # before gets them for its frames now, when it is first opened for writing.
    derived.create(db)
    derived.backfill(db)


def migrate(db: duckdb.DuckDBPyConnection) -> list[str]:
    """Apply the migrations this database lacks; return their names."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS _ocproxy_migrations (name VARCHAR, applied_at TIMESTAMPTZ)"
    )
    done = {row[0] for row in db.execute("SELECT name FROM _ocproxy_migrations").fetchall()}
    applied = []
    for name, fn in MIGRATIONS:
        if name in done:
            continue
        db.execute("BEGIN TRANSACTION")
        try:
            fn(db)
            db.execute("INSERT INTO _ocproxy_migrations VALUES (?, now())", [name])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        applied.append(name)
    return applied
