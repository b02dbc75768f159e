"""``ocproxy query`` as a user runs it: formats, files, and one-line errors with exit 2."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers_cli import run_ocproxy
from test_analytics import field_16, field_201, record


def ocproxy(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    """Run the command line in-process; (exit code, stdout, stderr)."""
    return run_ocproxy(capsys, *argv)


@pytest.fixture
def rec(tmp_path: Path) -> Path:
    return record(tmp_path / "site.duckdb", [*field_16(), *field_201()])


def test_list_shows_every_named_query(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = ocproxy(capsys, "query", "--list")
    assert code == 0
    for name, title in [
        ("transactions", "Transactions"),
        ("meter_values", "Meter values"),
        ("availability", "Availability per charger and day"),
        ("trace", "identity (required)"),
    ]:
        assert name in out
        assert title in out


def test_default_is_a_table(rec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = ocproxy(capsys, "query", rec, "inventory")
    assert code == 0
    assert "Charger inventory" in out
    assert "ACME" in out
    assert "2 rows" in out
    assert err == ""


def test_csv_to_stdout(rec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = ocproxy(capsys, "query", rec, "transactions", "--format", "csv")
    assert code == 0
    table = list(csv.DictReader(io.StringIO(out)))
    assert [(r["identity"], r["transaction_id"], r["energy_wh"]) for r in table] == [
        ("FIELD-1", "42", "1500.0"),
        ("FIELD-2", "TX-9", "1500.0"),
    ]
    assert json.loads(table[1]["issues"]) == []  # lists become JSON text in CSV


def test_json_file_by_suffix(rec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "errors.json"
    code, out, err = ocproxy(capsys, "query", rec, "errors", "--output", target)
    assert code == 0
    assert out == ""
    assert "wrote 3 rows to" in err
    rows = json.loads(target.read_text())
    assert [(r["kind"], r["action"]) for r in rows] == [
        ("callerror", "StatusNotification"),
        ("unanswered", "GetConfiguration"),
        ("unanswered", "Heartbeat"),
    ]


def test_parquet_needs_a_file(
    rec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "mv.parquet"
    code, _, err = ocproxy(capsys, "query", rec, "meter_values", "-o", target)
    assert code == 0
    table = pq.read_table(target)
    assert table.num_rows == 10
    assert table.schema.field("value").type == "double"
    assert "3 rows read leniently from payloads that violate the OCPP schemas" in err
    code, _, err = ocproxy(capsys, "query", rec, "sessions", "--format", "parquet")
    assert (code, err) == (
        2,
        "ocproxy: error: --format parquet needs --output FILE (Parquet is binary)\n",
    )


def test_sql_with_parameters_over_a_glob(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record(tmp_path / "a.duckdb", field_16())
    record(tmp_path / "b.duckdb", field_201())
    sql = "SELECT count(*) AS calls FROM frames WHERE action = $action AND message_type = 2"
    argv = ("query", tmp_path / "*.duckdb", sql, "--param", "action=StatusNotification")
    code, out, _ = ocproxy(capsys, *argv, "--format", "json")
    assert (code, json.loads(out)) == (0, [{"calls": 9}])


def test_sql_from_a_file(rec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "mine.sql"
    script.write_text("SELECT identity FROM connections ORDER BY opened_at LIMIT 1")
    code, out, _ = ocproxy(capsys, "query", rec, script, "--format", "csv")
    assert (code, out) == (0, "identity\nFIELD-1\n")


def test_bytes_are_text_and_long_sql_is_no_file_name(
    rec: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    padding = " " * 5000  # longer than any file name the OS would stat
    sql = f"SELECT raw, '\\xFF'::BLOB AS odd FROM frames WHERE seq = 0 LIMIT 1{padding}"
    code, out, _ = ocproxy(capsys, "query", rec, sql, "--format", "json")
    assert code == 0
    (row,) = json.loads(out)
    assert json.loads(row["raw"])[2] in {"BootNotification", "StatusNotification"}
    assert row["odd"] == "base64:/w=="


def test_empty_recording_is_an_empty_result_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = record(tmp_path / "empty.duckdb", [])
    code, out, err = ocproxy(capsys, "query", empty, "transactions")
    assert code == 0
    assert "no rows" in out
    assert err == f"ocproxy: note: {empty} holds no connections or frames\n"


def test_a_long_table_is_cut_and_says_so(rec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = ocproxy(capsys, "query", rec, "SELECT * FROM range(1500)")
    assert code == 0
    assert "first 1000 of 1500 rows" in out
    assert "the table shows the first 1000 of 1500 rows" in err


def test_unwritable_output_is_a_runtime_error(
    rec: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = ocproxy(capsys, "query", rec, "sessions", "-o", "/nonexistent/dir/s.csv")
    assert code == 1
    assert err == "ocproxy: error: cannot write /nonexistent/dir/s.csv: No such file or directory\n"


def _bad_inputs(tmp: Path, rec: Path) -> list[tuple[list[str | Path], str]]:
    text = tmp / "notes.txt"
    text.write_text("not a recording")
    return [
        ([rec, "nosuchquery"], "unknown query 'nosuchquery': `ocproxy query --list` shows"),
        ([rec, "trace"], "query trace needs --param identity=VALUE (the charger identity)"),
        ([rec, "sessions", "--param", "colour=red"], "query sessions has no parameter 'colour'"),
        # A misspelt charger is not an empty table: named queries and plain SQL alike.
        *(
            ([rec, query, "--param", "identity=field-1"], f"no charger 'field-1' in {rec} (its")
            for query in ("trace", "transactions", "SELECT $identity AS who")
        ),
        ([rec, "sessions", "--param", "identity"], "--param 'identity': expected NAME=VALUE"),
        ([rec, "SELEC * FROM frames"], 'SQL failed: Parser Error: syntax error at or near "SELEC"'),
        ([rec, "SELECT * FROM nope"], "SQL failed: Catalog Error: Table with name nope does not"),
        ([rec, "SELECT $who"], "SQL failed: missing parameter 'who': give --param who=VALUE"),
        ([rec, "SELECT 1", "--param", "x=1"], "SQL failed: the SQL does not use --param x"),
        ([text, "sessions"], f"{text} is not an ocproxy recording (not a DuckDB file)"),
        ([tmp / "gone.duckdb", "sessions"], f"{tmp / 'gone.duckdb'}: no such file or directory"),
        ([rec, rec], f"{rec} is a file, not SQL or a query name"),
        ([rec], "query needs one or more SOURCEs, then SQL or a query NAME (or --list)"),
        ([rec, tmp / "mine.sql"], f"{tmp / 'mine.sql'}: no such file"),
    ]


def test_bad_input_is_one_line_and_exit_2(
    rec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv, message in _bad_inputs(tmp_path, rec):
        code, out, err = ocproxy(capsys, "query", *argv)
        assert code == 2, argv
        assert out == "", argv
        assert err.startswith(f"ocproxy: error: {message}"), (argv, err)
        assert err.count("\n") == 1, (argv, err)


def test_python_m_ocproxy_query(rec: Path) -> None:
    def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "ocproxy", "query", *map(str, argv)]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    listed = run("--list")
    assert listed.returncode == 0
    assert "heartbeats" in listed.stdout
    done = run(rec, "heartbeats", "--format", "csv")
    assert done.returncode == 0
    assert done.stdout.splitlines()[0].startswith("identity,heartbeats,intervals")
    failed = run(rec, "SELECT nonsense FROM")
    assert failed.returncode == 2
    assert failed.stderr.startswith("ocproxy: error: SQL failed: Parser Error")
    assert "Traceback" not in failed.stderr


def test_help_names_every_view_and_each_one_can_be_queried(
    rec: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = ocproxy(capsys, "query", "--help")
    assert code == 0
    said = re.search(r"The views (.+?) span all of them", " ".join(out.split()))
    assert said is not None, out
    views = re.split(r", | and ", said[1])
    assert views == ["frames", "connections", "findings", "runs", "run_stats"]
    for view in views:
        code, out, err = ocproxy(capsys, "query", rec, f"SELECT count(*) AS n FROM {view}")
        assert (code, err) == (0, ""), view
