"""``ocproxy import`` of CSV and JSON-lines logs: original times, mapped columns,
directions from the message when the log has none, the proxy's redaction and audit,
one transaction per file, and bad input named by its line."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import duckdb
import pytest
from helpers_cli import run_ocproxy

from ocproxy.core.frames import Direction
from ocproxy.core.redaction import Redactor
from ocproxy.importer.mapping import ColumnMap, call_direction, parse_direction, parse_time
from ocproxy.recorder import Recorder

BOOT = {"chargePointVendor": "ACME", "chargePointModel": "X"}
KEY = "log-import-key"


def _rows(db: Path, sql: str) -> list[dict[str, Any]]:
    with duckdb.connect(str(db), read_only=True) as con:
        cursor = con.execute(sql)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _csv(path: Path, rows: list[tuple[Any, ...]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["when", "cp", "dir", "frame"])
        for when, cp, direction, frame in rows:
            writer.writerow([when, cp, direction, json.dumps(frame)])
    return path


def test_a_csv_log_keeps_its_times_and_is_audited_and_pseudonymised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OCPROXY_ID_KEY", KEY)
    log = _csv(tmp_path / "export.csv", [
        ("2026-01-01T10:00:00Z", "CP-1", "to_csms", [2, "b", "BootNotification", BOOT]),
        ("2026-01-01T10:00:00.250Z", "CP-1", "to_charger",
         [3, "b", {"status": "Accepted", "currentTime": "2026-01-01T10:00:00Z", "interval": 60}]),
        # the frame: two violations, both reported
        ("2026-01-01T10:00:05Z", "CP-1", "cp->cs", [2, "s", "StatusNotification",
         {"connectorId": "1", "errorCode": "noerror", "status": "Available"}]),
        ("2026-01-01T10:00:05.100Z", "CP-1", "CS->CP", [3, "s", {}]),
        ("1767261660000", "CP-2", "to_csms", [2, "a", "Authorize", {"idTag": "DEADBEEF"}]),
    ])  # fmt: skip
    db = tmp_path / "site.duckdb"
    argv = ["import", log, "--db", db, "--map", "time=when,identity=cp,message=frame,direction=dir"]
    code, out, err = run_ocproxy(capsys, *argv, "--quiet")
    assert (code, err) == (0, "")
    assert "5 messages, 2 connections" in out
    frames = _rows(
        db,
        "SELECT identity, seq, epoch_ms(ts) AS ms, direction, action, pairing, latency_ms, "
        "json_extract_string(payload, '$.idTag') AS tag, source, subprotocol FROM frames "
        "JOIN connections USING (connection_id) ORDER BY identity, seq",
    )
    assert [(f["identity"], f["seq"], f["ms"], f["direction"], f["action"]) for f in frames] == [
        ("CP-1", 0, 1_767_261_600_000, "to_csms", "BootNotification"),
        ("CP-1", 1, 1_767_261_600_250, "to_charger", "BootNotification"),
        ("CP-1", 2, 1_767_261_605_000, "to_csms", "StatusNotification"),
        ("CP-1", 3, 1_767_261_605_100, "to_charger", "StatusNotification"),
        ("CP-2", 0, 1_767_261_660_000, "to_csms", "Authorize"),
    ]
    assert frames[1]["latency_ms"] == 250.0
    assert {f["source"] for f in frames} == {"import:csv"}
    assert {f["subprotocol"] for f in frames} == {"ocpp1.6"}
    pseudonym = Redactor(KEY.encode()).redact("Authorize", {"idTag": "DEADBEEF"}, response=False)
    assert frames[4]["tag"] == pseudonym.payload["idTag"] != "DEADBEEF"
    findings = _rows(db, "SELECT seq, rule, path FROM findings ORDER BY rule")
    assert findings == [
        {"seq": 2, "rule": "schema-enum", "path": "$.errorCode"},
        {"seq": 2, "rule": "schema-type", "path": "$.connectorId"},
    ]
    (run,) = _rows(db, "SELECT source, settings FROM runs")
    assert run["source"] == "import:csv"
    assert json.loads(run["settings"])["file"] == str(log.resolve())


def test_a_json_lines_log_without_direction_or_identity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Directions from the actions and answers (documented rule), the identity from
    --charger, the version from the messages (TransactionEvent: 2.x), nested keys."""
    lines = [
        {"t": 1767261600.0, "m": {"frame": [2, "1", "Heartbeat", {}]}},
        {"t": 1767261600.1, "m": {"frame": [3, "1", {"currentTime": "2026-01-01T10:00:00Z"}]}},
        {"t": 1767261601.0, "m": {"frame": [2, "2", "GetVariables", {"getVariableData": []}]}},
        {"t": 1767261601.2, "m": {"frame": [4, "2", "NotSupported", "", {}]}},
        {"t": 1767261602.0, "m": {"frame": '[2,"3","TransactionEvent",{}]'}},
    ]
    log = tmp_path / "cp.jsonl"
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    db = tmp_path / "cp.duckdb"
    code, _, err = run_ocproxy(
        capsys, "import", log, "--db", db, "--map", "time=t,message=m.frame", "--charger",
        "CP-9", "--keep-ids", "--quiet",
    )  # fmt: skip
    assert (code, err) == (0, ""), err
    rows = _rows(
        db,
        "SELECT identity, direction, message_type, subprotocol, source FROM frames "
        "JOIN connections USING (connection_id) ORDER BY seq",
    )
    assert [(r["direction"], r["message_type"]) for r in rows] == [
        ("to_csms", 2), ("to_charger", 3), ("to_charger", 2), ("to_csms", 4), ("to_csms", 2),
    ]  # fmt: skip
    assert {(r["identity"], r["subprotocol"], r["source"]) for r in rows} == {
        ("CP-9", "ocpp2.0.1", "import:jsonl")
    }


@pytest.mark.parametrize(
    ("content", "argv", "message"),
    [
        ("when,cp,frame\n", ["--map", "time=ts,identity=cp,message=frame"],
         "no column 'ts' for --map (its columns: when, cp, frame)"),
        ('when,cp,frame\n2026-01-01T10:00:00Z,CP-1,"[2,""1"",""Heartbeat"",{}]"\nyesterday,CP-1,"[3,""1"",{}]"\n',
         ["--map", "time=when,identity=cp,message=frame"],
         "line 3: cannot read the time 'yesterday'"),
        ('when,cp,frame\n2026-01-01T10:00:00Z,CP-1,"[2]"\n',
         ["--map", "time=when,identity=cp,message=frame,direction=cp"],
         "line 2: 'CP-1' is not a direction"),
        ("when,cp,frame\n", ["--map", "time=when"], "--map needs message=COLUMN"),
        ("when,cp,frame\n", ["--map", "time=when,message=frame"],
         "--map has no identity=COLUMN: give --charger ID"),
        ("when,cp,frame\n", [], "a CSV or JSON-lines log needs --map"),
        ("when,cp,frame\n", ["--map", "time=when,colour=cp,message=frame"],
         "--map colour=...: the fields are time, identity, message, direction"),
    ],
)  # fmt: skip
def test_bad_logs_and_mappings_are_one_line_and_exit_2(
    tmp_path: Path,
    content: str,
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = tmp_path / "bad.csv"
    log.write_text(content)
    code, out, err = run_ocproxy(capsys, "import", log, "--db", tmp_path / "x.duckdb", *argv)
    assert (code, out) == (2, "")
    assert message in err
    assert err.count("\n") == 1, err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"t": 1767261600, "m": "[2,\\"1\\",\\"Heartbeat\\",{}]"}\n{"t": 1767261601, "m": \n',
         "line 2: not JSON"),
        ('\n{"t": 1767261600, "m": "[3,\\"1\\",{}]"}\n[1, 2]\n', "line 3: not a JSON object"),
        ('{"t": "soon", "m": "[3,\\"1\\",{}]"}\n', "line 1: cannot read the time 'soon'"),
        ('{"t": 1767261600}\n', "line 1: no message in 'm'"),
    ],
)  # fmt: skip
def test_bad_json_lines_are_named_by_number_and_exit_2(
    tmp_path: Path, content: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "bad.jsonl"
    log.write_text(content)
    db = tmp_path / "x.duckdb"
    argv: list[str | Path] = [
        "import",
        log,
        "--db",
        db,
        "--map",
        "time=t,message=m",
        "--charger",
        "CP-1",
    ]
    code, out, err = run_ocproxy(capsys, *argv)
    assert (code, out) == (2, "")
    assert f"{log} {message}" in err
    assert err.count("\n") == 1, err
    assert not db.exists() or _rows(db, "SELECT count(*) AS n FROM frames") == [{"n": 0}]


def test_an_import_that_fails_late_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One transaction per file: a bad time on the last of 50,000 lines (read by two
    processes, each staging batches) leaves the recording exactly as it was."""
    db = tmp_path / "site.duckdb"
    Recorder(db).start().close()  # an existing recording: its one run
    log = tmp_path / "big.csv"
    with open(log, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["when", "cp", "frame"])
        for n in range(50_000):
            writer.writerow(
                [1767261600 + n, f"CP-{n % 7}", json.dumps([2, str(n), "Heartbeat", {}])]
            )
        writer.writerow(["soon", "CP-1", json.dumps([2, "x", "Heartbeat", {}])])
    before = _rows(
        db, "SELECT (SELECT count(*) FROM runs) AS runs, (SELECT count(*) FROM frames) AS frames"
    )
    argv = [
        "import",
        log,
        "--db",
        db,
        "--map",
        "time=when,identity=cp,message=frame",
        "--jobs",
        "2",
    ]
    code, _, err = run_ocproxy(capsys, *argv, "--quiet")
    assert code == 2
    assert "line 50002: cannot read the time 'soon'" in err
    after = _rows(
        db, "SELECT (SELECT count(*) FROM runs) AS runs, (SELECT count(*) FROM frames) AS frames"
    )
    assert after == before == [{"runs": 1, "frames": 0}]
    assert not list(tmp_path.glob(".ocproxy-import-*"))  # no staging file left behind


def test_two_processes_import_every_line_once_each_charger_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--jobs 2 splits by charger: every line lands once, each charger's in its order."""
    log = tmp_path / "big.csv"
    with open(log, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["when", "cp", "frame"])
        for n in range(40_000):
            writer.writerow(
                [1767261600 + n, f"CP-{n % 7}", json.dumps([2, str(n), "Heartbeat", {}])]
            )
    db = tmp_path / "site.duckdb"
    argv: list[str | Path] = [
        "import",
        log,
        "--db",
        db,
        "--map",
        "time=when,identity=cp,message=frame",
    ]
    code, out, err = run_ocproxy(capsys, *argv, "--jobs", "2", "--quiet", "--no-audit")
    assert (code, err) == (0, "")
    assert "40,000 messages, 7 connections" in out
    rows = _rows(
        db,
        "SELECT identity, count(*) AS n, min(seq) AS first, max(seq) AS last, "
        "bool_and(message_id::INT % 7 = right(identity, 1)::INT) AS own, "
        "count(DISTINCT connection_id) AS connections FROM frames JOIN connections "
        "USING (connection_id) GROUP BY identity ORDER BY identity",
    )
    assert [(r["identity"], r["n"], r["first"], r["last"], r["own"], r["connections"])
            for r in rows] == [
        (f"CP-{k}", n, 0, n - 1, True, 1) for k, n in enumerate([5715] * 2 + [5714] * 5)
    ]  # fmt: skip
    order = _rows(
        db,
        "SELECT count(*) AS n FROM (SELECT message_id::INT - lag(message_id::INT) OVER "
        "(PARTITION BY connection_id ORDER BY seq) AS step FROM frames) WHERE step <> 7",
    )
    assert order == [{"n": 0}]  # file order kept within each charger


def test_without_tshark_one_line_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    capture = tmp_path / "c.pcap"
    capture.write_bytes(b"\xd4\xc3\xb2\xa1")
    monkeypatch.setenv("PATH", str(tmp_path))  # no tshark here
    code, out, err = run_ocproxy(capsys, "import", capture, "--db", tmp_path / "x.duckdb")
    assert (code, out) == (2, "")
    assert err.startswith("ocproxy: error: tshark is not installed: apt-get install tshark")
    assert err.count("\n") == 1


# -- the mapping's pieces, with literal values -------------------------------------------------


def test_times_in_every_spelling() -> None:
    t = 1_767_261_600.0  # 2026-01-01T10:00:00Z
    spellings = ["2026-01-01T10:00:00Z", "2026-01-01 10:00:00", "2026-01-01T11:00:00+01:00"]
    spellings += ["2026-01-01T10:00:00 UTC", t, int(t), "1767261600", t * 1e3, t * 1e6, t * 1e9]
    for value in spellings:
        assert parse_time(value) == pytest.approx(t), value
    for bad in ("", "soon", None, True, -5, float("nan")):
        with pytest.raises(ValueError, match=r"."):
            parse_time(bad)


def test_directions_and_the_rule_without_a_direction_column() -> None:
    assert parse_direction(" CP->CS ") is Direction.TO_CSMS
    assert parse_direction("from_csms") is Direction.TO_CHARGER
    with pytest.raises(ValueError, match="not a direction"):
        parse_direction("sideways")
    assert call_direction("MeterValues") is Direction.TO_CSMS
    assert call_direction("NotifyReport") is Direction.TO_CSMS
    assert call_direction("RemoteStartTransaction") is Direction.TO_CHARGER
    assert call_direction("DataTransfer") is Direction.TO_CSMS  # both ways: the charger's


def test_column_map() -> None:
    assert ColumnMap.parse("time=a, message = b ,identity=c") == ColumnMap("a", "b", "c")
