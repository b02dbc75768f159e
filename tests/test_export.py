"""``ocproxy export DB --parquet DIR``: a hive-partitioned Parquet lake that queries like
its recordings.

Recordings are real: chargers from ``ocproxy.sim`` through the proxy, literal events
submitted to a real ``Recorder`` (for identities no charger would pick, midnight, a
malformed frame), and the benchmark's generator at a small size. Every check compares
the lake with the recording it came from: ``ocproxy query DIR NAME`` against
``ocproxy query DB NAME`` for every named query, row counts, and the files on disk.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest
from helpers_bench import bench_module
from helpers_cli import run_ocproxy

from ocproxy.analytics import load_queries
from ocproxy.analytics.export import TABLE_NAMES, export_recording
from ocproxy.analytics.export_cli import add_export_command
from ocproxy.analytics.queries import bind, get_query, run
from ocproxy.analytics.sources import open_sources
from ocproxy.audit.auditor import Auditor
from ocproxy.core.correlation import Correlator
from ocproxy.core.events import ClosedBy, ConnectionClosed, ConnectionOpened, FrameReceived
from ocproxy.core.frames import Direction, Opcode
from ocproxy.core.observe import observe
from ocproxy.recorder import Recorder
from ocproxy.sim.charger import ChargerSpec, run_charger
from ocproxy.sim.csms import SimCsms

REPO = Path(__file__).resolve().parent.parent
TABLES = ("frames", "connections", "findings", "runs", "run_stats")

# -- the command line -----------------------------------------------------------------------


def ocproxy(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    """Run the command line in-process; (exit code, stdout, stderr)."""
    return run_ocproxy(capsys, *argv)


def export(capsys: pytest.CaptureFixture[str], lake: Path, *recordings: Path) -> str:
    code, _out, err = ocproxy(capsys, "export", *recordings, "--parquet", lake)
    assert code == 0, err
    return err


def query_rows(capsys: pytest.CaptureFixture[str], tmp_path: Path, *argv: str | Path) -> Any:
    """``ocproxy query ... --format json`` as a user runs it, parsed."""
    out = tmp_path / f"result-{abs(hash(argv))}.json"
    code, _stdout, err = ocproxy(capsys, "query", *argv, "--format", "json", "-o", out)
    assert code == 0, err
    return json.loads(out.read_text("utf-8"))


def same_rows(left: list[Any], right: list[Any]) -> bool:
    """Equal as multisets (meter_values has no order; ties elsewhere may differ)."""

    def key(row: Any) -> str:
        return json.dumps(row, sort_keys=True, default=str)

    return sorted(left, key=key) == sorted(right, key=key)


def counts(source: Path) -> dict[str, int]:
    with open_sources([str(source)]) as opened:
        return {t: opened.db.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in TABLES}


def parquet_files(lake: Path) -> dict[str, int]:
    """Every file of the lake (staging excluded) and its size."""
    return {
        str(p.relative_to(lake)): p.stat().st_size
        for p in lake.rglob("*.parquet")
        if not p.relative_to(lake).parts[0].startswith(".")
    }


def assert_queries_equal(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, db: Path, lake: Path, identity: str
) -> None:
    """Every named query gives the same rows from the lake as from the recording."""
    for name, query in load_queries().items():
        params = [f"identity={identity}"] if any(p.required for p in query.params) else []
        options = [x for p in params for x in ("--param", p)]
        from_db = query_rows(capsys, tmp_path, db, name, *options)
        from_lake = query_rows(capsys, tmp_path, lake, name, *options)
        assert same_rows(from_db, from_lake), name


# -- literal recordings -------------------------------------------------------------------

T0 = datetime(2026, 3, 1, 23, 30, tzinfo=UTC).timestamp()  # 30 min before midnight UTC
ODD_IDENTITIES = [
    "Depot A/CP 7",
    "lot=3#1",
    "0042",
    "Zürich-Süd",
    "50% off",
    "NULL",
    "__HIVE_DEFAULT_PARTITION__",
    "..",
    'it\'s "quoted"',
    "",
]


class Script:
    """One literal connection's events, with seq and message ids kept."""

    def __init__(
        self, connection_id: str, identity: str, version: str = "ocpp1.6", opened: float = 0
    ) -> None:
        self.connection_id = connection_id
        self.identity = identity
        self.seq = 0
        self.ids = 0
        self.events: list[Any] = [
            ConnectionOpened(
                connection_id=connection_id,
                ts=T0 + opened,
                identity=identity,
                path="/ocpp/x",
                remote_addr="127.0.0.1:40000",
                offered_subprotocols=(version,),
                subprotocol=version,
                upstream_url="ws://csms/ocpp/x",
                handshake_status=101,
            )
        ]

    def send(self, offset: float, message: Any, to: Direction = Direction.TO_CSMS) -> None:
        text = message if isinstance(message, str) else json.dumps(message)
        self.events.append(
            FrameReceived(
                self.connection_id, self.seq, T0 + offset, to, Opcode.TEXT, text, len(text)
            )
        )
        self.seq += 1

    def call(self, offset: float, action: str, payload: Any, answer: Any = None) -> None:
        self.ids += 1
        message_id = f"{self.connection_id}-{self.ids}"
        self.send(offset, [2, message_id, action, payload])
        self.send(offset + 0.2, [3, message_id, answer or {}], Direction.TO_CHARGER)

    def close(self, offset: float) -> None:
        self.events.append(
            ConnectionClosed(self.connection_id, T0 + offset, 1000, "", ClosedBy.CHARGER)
        )


def _stamp(offset: float) -> str:
    return datetime.fromtimestamp(T0 + offset, UTC).isoformat().replace("+00:00", "Z")


def odd_scripts(prefix: str, identities: list[str]) -> list[Script]:
    """Per identity: a 1.6 session across midnight UTC, with a CALLERROR and a malformed
    frame (a finding), so every table of the lake gets rows on two dates."""
    scripts = []
    for n, identity in enumerate(identities):
        s = Script(f"{prefix}-{n}", identity, opened=n)
        boot = {"chargePointVendor": "ACME", "chargePointModel": "X", "firmwareVersion": "1"}
        booted = {"status": "Accepted", "interval": 300, "currentTime": _stamp(n + 1)}
        s.call(n + 1, "BootNotification", boot, booted)
        status = {"connectorId": 1, "errorCode": "NoError", "status": "Charging"}
        s.call(n + 2, "StatusNotification", {**status, "timestamp": _stamp(n + 2)})
        start = {"connectorId": 1, "idTag": "T", "meterStart": 100, "timestamp": _stamp(n + 3)}
        started = {"transactionId": 7 + n, "idTagInfo": {"status": "Accepted"}}
        s.call(n + 3, "StartTransaction", start, started)
        s.call(n + 600, "Heartbeat", {}, {"currentTime": _stamp(n + 600)})
        s.send(n + 700, '[2,"broken","Heartbeat"')  # malformed: a finding
        s.ids += 1
        s.send(n + 1900, [2, f"{s.connection_id}-err", "DataTransfer", {"vendorId": "V"}])
        s.send(
            n + 1900.5,
            [4, f"{s.connection_id}-err", "NotImplemented", "no", {}],
            Direction.TO_CHARGER,
        )
        stop = {"transactionId": 7 + n, "meterStop": 1600 + n, "timestamp": _stamp(n + 2000)}
        s.call(n + 2000, "StopTransaction", stop)  # after midnight: the next date
        s.close(n + 2100)
        scripts.append(s)
    return scripts


def record(path: Path, scripts: list[Script]) -> Path:
    with Recorder(path, auditor=Auditor()) as recorder:
        for script in scripts:
            for event in script.events:
                recorder.submit(event)
    return path


@pytest.fixture
def odd(tmp_path: Path) -> Path:
    return record(tmp_path / "odd.duckdb", odd_scripts("odd", ODD_IDENTITIES))


# -- the layout -------------------------------------------------------------------------------


def test_the_layout_is_hive_partitioned_by_date_and_identity(
    odd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = tmp_path / "lake"
    err = export(capsys, lake, odd)
    assert f"exported {odd} to {lake}/" in err
    with duckdb.connect(str(odd), read_only=True) as db:
        db.execute("SET TimeZone = 'UTC'")
        ((run_id, day),) = db.execute("SELECT run_id, started_at::DATE FROM runs").fetchall()
    files = parquet_files(lake)
    # Both dates (the session crosses midnight UTC), escaped identities, the run's name.
    for name in (
        f"frames/date=2026-03-01/identity=Depot%20A%2FCP%207/part-{run_id}-0.parquet",
        f"frames/date=2026-03-02/identity=Depot%20A%2FCP%207/part-{run_id}-0.parquet",
        f"frames/date=2026-03-01/identity=lot%3D3%231/part-{run_id}-0.parquet",
        f"frames/date=2026-03-01/identity=Z%C3%BCrich-S%C3%BCd/part-{run_id}-0.parquet",
        f"frames/date=2026-03-01/identity=%5F_HIVE_DEFAULT_PARTITION__/part-{run_id}-0.parquet",
        f"frames/date=2026-03-01/identity=/part-{run_id}-0.parquet",
        f"connections/date=2026-03-01/identity=0042/part-{run_id}-0.parquet",
        f"findings/date=2026-03-01/identity=0042/part-{run_id}-0.parquet",
        f"runs/date={day}/part-{run_id}-0.parquet",  # the run started today
        f"run_stats/date={day}/part-{run_id}-0.parquet",
    ):
        assert name in files, name
    assert {Path(f).parts[0] for f in files} == set(TABLE_NAMES)
    assert not [p for p in lake.iterdir() if p.name.startswith(".")]  # staging removed
    # The partition columns are in the path only.
    with duckdb.connect() as db:
        sample = lake / "frames" / "date=2026-03-01" / "identity=0042"
        read = f"read_parquet('{sample}/*.parquet', hive_partitioning = false)"
        columns = [r[0] for r in db.execute(f"DESCRIBE FROM {read}").fetchall()]
        assert "identity" not in columns
        assert "date" not in columns
        assert {"raw", "latency_ms"} <= set(columns)


def test_identities_read_back_equal(
    odd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = tmp_path / "lake"
    export(capsys, lake, odd)
    sql = (
        "SELECT c.identity, count(*) AS frames FROM frames JOIN connections AS c "
        "USING (connection_id) GROUP BY ALL"
    )
    from_db = query_rows(capsys, tmp_path, odd, sql)
    from_lake = query_rows(capsys, tmp_path, lake, sql)
    assert same_rows(from_db, from_lake)
    assert sorted(r["identity"] for r in from_lake) == sorted(ODD_IDENTITIES)
    assert counts(lake) == counts(odd)
    assert counts(lake)["findings"] >= len(ODD_IDENTITIES)


def test_every_named_query_reads_the_lake_like_the_recording(
    odd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = tmp_path / "lake"
    export(capsys, lake, odd)
    assert_queries_equal(capsys, tmp_path, odd, lake, "Depot A/CP 7")


SPECS = [
    ChargerSpec(identity="SIM 16/a", version="1.6", meter_samples=3, heartbeats=2),
    ChargerSpec(identity="SIM-201", version="2.0.1", meter_samples=2, heartbeats=1),
    ChargerSpec(identity="SIM=21", version="2.1", meter_samples=2),
]


async def test_a_recording_of_real_peers_through_the_proxy(
    proxy_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csms = SimCsms(initiate=True, heartbeat_interval=60)
    async with csms, proxy_factory(upstream=csms.url) as (proxy, box), asyncio.timeout(30):
        await asyncio.gather(*(run_charger(proxy.url + "/ocpp", s) for s in SPECS))
    recording = box[0]
    assert recording.stats.frames_lost == 0
    db = Path(recording.path)
    lake = tmp_path / "lake"
    export(capsys, lake, db)
    assert counts(lake) == counts(db)
    assert_queries_equal(capsys, tmp_path, db, lake, "SIM 16/a")
    sessions = query_rows(capsys, tmp_path, lake, "sessions")
    assert sorted(r["identity"] for r in sessions) == sorted(s.identity for s in SPECS)


# -- appending ---------------------------------------------------------------------------------


def test_exporting_twice_gives_the_same_lake(
    odd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = tmp_path / "lake"
    export(capsys, lake, odd)
    first = parquet_files(lake)
    err = export(capsys, lake, odd)
    assert set(parquet_files(lake)) == set(first)
    assert f"{len(first):,} from an earlier export of these runs replaced" in err
    assert counts(lake) == counts(odd)


def test_two_recordings_are_the_union(
    odd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = record(tmp_path / "other.duckdb", odd_scripts("other", ["Depot A/CP 7", "CP-9"]))
    lake = tmp_path / "lake"
    export(capsys, lake, odd)
    export(capsys, lake, other)
    export(capsys, lake, odd)  # again, after the other one: still no duplicates
    both = {t: counts(odd)[t] + counts(other)[t] for t in TABLES}
    assert counts(lake) == both
    from_lake = query_rows(capsys, tmp_path, lake, "sessions")
    from_dbs = query_rows(capsys, tmp_path, odd, other, "sessions")
    assert same_rows(from_lake, from_dbs)
    assert len(from_lake) == len(ODD_IDENTITIES) + 2
    # Both recordings in one command give the same lake.
    together = tmp_path / "together"
    code, _out, err = ocproxy(capsys, "export", odd, other, "--parquet", together, "--quiet")
    assert (code, err) == (0, "")
    assert counts(together) == both


def test_a_recording_that_grew_is_brought_up_to_date(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = record(tmp_path / "site.duckdb", odd_scripts("a", ["CP-1", "CP-2"]))
    lake = tmp_path / "lake"
    export(capsys, lake, db)
    record(db, odd_scripts("b", ["CP-1", "CP-3"]))  # the proxy ran again on the same file
    export(capsys, lake, db)
    assert counts(lake) == counts(db)
    assert counts(lake)["runs"] == 2


def test_files_an_export_no_longer_writes_are_removed(
    odd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = tmp_path / "lake"
    export(capsys, lake, odd)
    with duckdb.connect(str(odd)) as db:  # the rows of 2 March go away
        db.execute("DELETE FROM frames WHERE ts >= '2026-03-02T00:00:00Z'")
        db.execute("DELETE FROM findings WHERE ts >= '2026-03-02T00:00:00Z'")
    err = export(capsys, lake, odd)
    assert "replaced" in err
    assert not (lake / "frames" / "date=2026-03-02").exists()
    assert counts(lake) == counts(odd)


def test_exports_of_different_recordings_may_run_at_once(tmp_path: Path) -> None:
    dbs = [
        record(tmp_path / f"r{n}.duckdb", odd_scripts(f"r{n}", ["CP-1", f"CP-{n}"]))
        for n in range(3)
    ]
    lake = tmp_path / "lake"
    lake.mkdir()
    errors: list[BaseException] = []

    def work(db: Path) -> None:
        try:
            for _ in range(3):
                export_recording(db, lake)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(db,)) for db in dbs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert counts(lake) == {t: sum(counts(db)[t] for db in dbs) for t in TABLES}


def test_an_older_recording_gets_every_column(tmp_path: Path) -> None:
    from ocproxy.recorder.migrations import MIGRATIONS

    old = tmp_path / "old.duckdb"
    with duckdb.connect(str(old)) as db:
        db.execute("CREATE TABLE _ocproxy_migrations (name VARCHAR, applied_at TIMESTAMPTZ)")
        name, migration = MIGRATIONS[0]
        migration(db)
        db.execute("INSERT INTO _ocproxy_migrations VALUES (?, now())", [name])
        db.execute(
            "INSERT INTO connection_opens (connection_id, run_id, identity, opened_at, "
            "handshake_status) VALUES ('c1', 'r1', 'OLD-1', '2026-03-01T10:00:00Z', 101)"
        )
        db.execute(
            "INSERT INTO frames (connection_id, seq, ts, direction, raw, size, message_type, "
            "parse_status) VALUES ('c1', 0, '2026-03-01T10:00:01Z', 'to_csms', "
            "'[2,\"1\",\"Heartbeat\",{}]', 23, 2, 'ok')"
        )
    lake = tmp_path / "lake"
    export_recording(old, lake)
    with duckdb.connect() as db:
        frames = [
            r[0] for r in db.execute(f"DESCRIBE FROM '{lake}/frames/*/*/*.parquet'").fetchall()
        ]
        connections = [
            r[0] for r in db.execute(f"DESCRIBE FROM '{lake}/connections/*/*/*.parquet'").fetchall()
        ]
    assert {"injected", "redacted"} <= set(frames)
    assert {"mirror_of", "tls_version", "closed_at"} <= set(connections)
    assert counts(lake)["frames"] == 1


def test_progress_is_reported_per_table(odd: Path, tmp_path: Path) -> None:
    seen: list[tuple[str, float]] = []
    result = export_recording(odd, tmp_path / "lake", progress=lambda s, p: seen.append((s, p)))
    steps = [s for s, _p in seen]
    assert [s for s in dict.fromkeys(steps)] == [*TABLE_NAMES, "commit"]
    assert all(0 <= p <= 100 for _s, p in seen)
    assert seen[-1] == ("commit", 100.0)
    assert result.rows == counts(odd)
    assert result.files_written == len(parquet_files(tmp_path / "lake"))


def test_an_interrupted_export_leaves_the_lake_as_it_was(odd: Path, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    export_recording(odd, lake)
    before = parquet_files(lake)
    other = record(tmp_path / "other.duckdb", odd_scripts("other", ["CP-9"]))

    def interrupt(step: str, _percent: float) -> None:
        if step == "findings":  # frames and connections are written by now
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_recording(other, lake, progress=interrupt)
    with pytest.raises(KeyboardInterrupt):
        export_recording(odd, lake, progress=interrupt)
    assert parquet_files(lake) == before
    assert [p.name for p in lake.iterdir()] == [p.name for p in lake.iterdir() if p.is_dir()]
    assert not [p for p in lake.iterdir() if p.name.startswith(".")]


# -- the README's example ----------------------------------------------------------------------


def _readme_sql() -> str:
    """The DuckDB example of the export page (a ``python -c`` line around the SQL)."""
    section = _section()
    return section.split("duckdb.sql('''", 1)[1].split("'''", 1)[0]


def test_the_readme_duckdb_example_works_verbatim(
    odd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    other = record(tmp_path / "other.duckdb", odd_scripts("other", ["CP-9"]))
    export(capsys, tmp_path / "lake", odd, other)
    monkeypatch.chdir(tmp_path)
    with duckdb.connect() as db:
        db.execute("SET TimeZone = 'UTC'")
        cursor = db.execute(_readme_sql())
        names = [d[0] for d in cursor.description]
        found = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    expected = []
    for path in (odd, other):
        with duckdb.connect(str(path), read_only=True) as db:
            db.execute("SET TimeZone = 'UTC'")
            cursor = db.execute(
                """SELECT c.identity, CAST(f.ts AS DATE) AS date, c.ocpp_version,
                          count(*) FILTER (WHERE f.message_type = 2) AS calls,
                          count(*) FILTER (WHERE f.message_type = 4) AS callerrors,
                          round(quantile_cont(f.latency_ms, 0.95), 1) AS p95_ms
                   FROM frames AS f JOIN connections AS c USING (connection_id)
                   GROUP BY ALL"""
            )
            names = [d[0] for d in cursor.description]
            expected += [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    assert same_rows(found, expected)
    assert len({r["date"] for r in found}) == 2
    assert [(r["identity"], r["date"]) for r in found] == sorted(
        (r["identity"], r["date"]) for r in found
    )


def _section() -> str:
    """The export command's page (the README's section moved there)."""
    return (REPO / "docs" / "commands" / "export.md").read_text("utf-8")


def test_the_section_documents_every_option() -> None:
    section = _section()
    parser = argparse.ArgumentParser()
    add_export_command(parser.add_subparsers())
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for action in sub.choices["export"]._actions:
        for option in action.option_strings:
            if option.startswith("--") and option != "--help":
                assert f"`{option} " in section or f"`{option}`" in section, option


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda t: ([t / "missing.duckdb"], t / "lake"), "missing.duckdb: no such file"),
        (
            lambda t: ([_write(t / "notes.duckdb", "hello")], t / "lake"),
            "is not an ocproxy recording (not a DuckDB file)",
        ),
        (lambda t: ([_mkdir(t / "adir")], t / "lake"), "is a directory: ocproxy export reads"),
        (lambda t: ([t / "ok.duckdb"], _write(t / "afile", "x")), "is a file: --parquet needs"),
        (
            lambda t: ([t / "ok.duckdb"], _write(t / "full" / "thing.txt", "x").parent),
            "is not empty and is not an ocproxy Parquet export",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: Any, message: str
) -> None:
    record(tmp_path / "ok.duckdb", odd_scripts("ok", ["CP-1"]))
    sources, lake = setup(tmp_path)
    code, out, err = ocproxy(capsys, "export", *sources, "--parquet", lake)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1, err
    assert err.startswith("ocproxy: error: "), err
    assert message in err


def test_a_bad_second_recording_exports_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = record(tmp_path / "good.duckdb", odd_scripts("g", ["CP-1"]))
    bad = _write(tmp_path / "bad.duckdb", "not a recording")
    code, _out, err = ocproxy(capsys, "export", good, bad, "--parquet", tmp_path / "lake")
    assert code == 2, err
    assert not (tmp_path / "lake").exists()  # checked before anything was written


def test_an_identity_too_long_for_a_directory_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = record(tmp_path / "long.duckdb", odd_scripts("l", ["é" * 60]))
    code, _out, err = ocproxy(capsys, "export", db, "--parquet", tmp_path / "lake")
    assert code == 2
    assert "is too long for a partition directory" in err
    assert err.count("\n") == 1


def test_no_parquet_option_is_a_usage_error(odd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = ocproxy(capsys, "export", odd)
    assert code == 2
    assert "--parquet" in err


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


# -- the benchmark's generator -----------------------------------------------------------------


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    make = bench_module("make_recording")
    path = tmp_path_factory.mktemp("bench") / "fleet.duckdb"
    summary = make.make_recording(path, 40_000, chargers=24, days=2.0, seed=7)
    assert summary["frames"] == 40_000
    return path


def test_the_generator_writes_what_the_recorder_would(generated: Path) -> None:
    """Every derived column equals what observe() makes of the raw bytes, replayed in
    order per connection; seq has no gap; a connection's frames are in time order."""
    columns = (
        "message_type, message_id, action, parse_status, parse_detail, payload, error_code, "
        "error_description, request_seq, latency_ms, pairing, size, opcode"
    )
    names = [c.strip() for c in columns.split(",")]
    with duckdb.connect(str(generated), read_only=True) as db:
        rows = db.execute(
            f"SELECT connection_id, seq, epoch_us(ts), direction, raw, {columns} "
            "FROM frames ORDER BY connection_id, seq"
        ).fetchall()
        ((orphans,),) = db.execute(
            "SELECT count(*) FROM frames ANTI JOIN connection_opens USING (connection_id)"
        ).fetchall()
        kinds = dict(
            db.execute("SELECT parse_status, count(*) FROM frames GROUP BY ALL").fetchall()
        )
        types = dict(
            db.execute("SELECT message_type, count(*) FROM frames GROUP BY ALL").fetchall()
        )
        versions = {
            r[0] for r in db.execute("SELECT DISTINCT ocpp_version FROM connections").fetchall()
        }
    assert orphans == 0
    assert len(rows) == 40_000
    correlators: dict[str, Correlator] = {}
    previous: tuple[str, int, int] | None = None
    for row in rows:
        connection_id, seq, us, direction, raw = row[:5]
        if previous is not None and previous[0] == connection_id:
            assert seq == previous[1] + 1
            assert us > previous[2]
        elif previous is None or previous[0] != connection_id:
            assert seq == 0
        previous = (connection_id, seq, us)
        correlator = correlators.setdefault(connection_id, Correlator())
        event = FrameReceived(
            connection_id, seq, us / 1e6, Direction(direction), Opcode.TEXT,
            bytes(raw).decode(), len(raw),
        )  # fmt: skip
        seen = observe(event, correlator, None)
        expected = {name: getattr(seen, name) for name in names}
        if expected["message_type"] is not None:
            expected["message_type"] = int(expected["message_type"])
        assert dict(zip(names, row[5:], strict=True)) == expected, row[:4]
    assert kinds["ok"] > 39_000
    assert set(types) >= {2, 3, 4}
    assert {"1.6", "2.0.1"} <= versions


def test_the_generated_recording_exports_and_queries_alike(
    generated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = tmp_path / "lake"
    export(capsys, lake, generated)
    assert counts(lake) == counts(generated)
    with open_sources([str(generated)]) as opened:
        for name, query in load_queries().items():
            given = {"identity": "CP-0010"} if any(p.required for p in query.params) else {}
            result = run(opened.db, query.sql, bind(get_query(name), given), what=name)
            assert result.table.num_rows > 0 or name == "mirror", name
    assert_queries_equal(capsys, tmp_path, generated, lake, "Depot A/CP 7")
    assert os.path.isdir(lake / "frames" / "date=2026-01-05" / "identity=Depot%20A%2FCP%207")
