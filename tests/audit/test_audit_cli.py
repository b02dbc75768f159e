"""``ocproxy audit DB``: reports, filters, exit codes, and recordings it cannot read.

The recording is made by the real recorder from literal events (no sockets), so the
timestamps, and with them ``--since``, are known to the second.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import duckdb
import pytest

from ocproxy.audit.rules import RULES
from ocproxy.cli import main
from ocproxy.core.events import ClosedBy, ConnectionClosed, ConnectionOpened, FrameReceived
from ocproxy.core.frames import Direction, Opcode
from ocproxy.recorder import Recorder
from ocproxy.recorder.migrations import MIGRATIONS

from .helpers import NOW, boot_request, status_request

JAN = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
MAR = datetime(2026, 3, 1, tzinfo=UTC).timestamp()
CP, CS = Direction.TO_CSMS, Direction.TO_CHARGER


def _session(
    recorder: Recorder,
    connection_id: str,
    identity: str,
    subprotocol: str,
    at: float,
    frames: list[tuple[Direction, Any, float]],
) -> None:
    recorder.submit(
        ConnectionOpened(
            connection_id, at, identity, f"/ocpp/{identity}", "127.0.0.1:1", (subprotocol,),
            subprotocol, f"ws://csms.invalid/ocpp/{identity}", 101,
        )
    )  # fmt: skip
    for seq, (direction, message, offset) in enumerate(frames):
        data = json.dumps(message)
        recorder.submit(
            FrameReceived(
                connection_id, seq, at + offset, direction, Opcode.TEXT, data, len(data),
                identity=identity,
            )
        )  # fmt: skip
    recorder.submit(ConnectionClosed(connection_id, at + 3600, 1000, "", ClosedBy.CHARGER))


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four connections of three chargers:

    - CP-A (2.0.1) in January: a naive timestamp (error) and an Occurence spelling (info)
    - CP-B (1.6) in January: two outstanding CALLs (warning), an answer after 10 s
    - CP-C (2.1) in March: clean
    - CP-A (2.0.1) in March: two BootNotifications without a reason (error, twice), with
      fresh ids (2.0.1 ids are unique across all connections of an identity)
    """
    from ocproxy.core.handshake import OcppVersion

    path = tmp_path_factory.mktemp("audit-cli") / "site.duckdb"
    recorder = Recorder(path, flush_interval=0.01).start()
    naive = {**status_request(OcppVersion.V201), "timestamp": "2026-01-01T10:00:00"}
    _session(recorder, "a-jan", "CP-A", "ocpp2.0.1", JAN, [
        (CP, [2, "1", "StatusNotification", naive], 1),
        (CS, [3, "1", {}], 2),
        (CS, [2, "2", "ClearCache", {}], 3),
        (CP, [4, "2", "OccurenceConstraintViolation", "", {}], 4),
    ])  # fmt: skip
    _session(recorder, "b-jan", "CP-B", "ocpp1.6", JAN + 10, [
        (CP, [2, "1", "BootNotification", boot_request(OcppVersion.V16)], 1),
        (CP, [2, "2", "Heartbeat", {}], 2),
        (CS, [3, "1", {"currentTime": NOW, "interval": 300, "status": "Accepted"}], 3),
        (CS, [3, "2", {"currentTime": NOW}], 12),
    ])  # fmt: skip
    _session(recorder, "c-mar", "CP-C", "ocpp2.1", MAR, [
        (CP, [2, "1", "Heartbeat", {}], 1),
        (CS, [3, "1", {"currentTime": NOW}], 2),
    ])  # fmt: skip
    station = boot_request(OcppVersion.V201)["chargingStation"]
    _session(recorder, "a-mar", "CP-A", "ocpp2.0.1", MAR + 10, [
        (CP, [2, "m1", "BootNotification", {"chargingStation": station}], 1),
        (CS, [4, "m1", "FormatViolation", "", {}], 2),
        (CP, [2, "m2", "BootNotification", {"chargingStation": station}], 3),
        (CS, [4, "m2", "FormatViolation", "", {}], 4),
    ])  # fmt: skip
    recorder.close()
    return path


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")


def _json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code, out, err = _run([*argv, "--format", "json"], capsys)
    assert err == ""
    return code, json.loads(out)


def _counts(document: dict[str, Any]) -> dict[tuple[str, str], int]:
    return {(g["identity"], g["rule"]): g["count"] for g in document["summary"]}


EVERYTHING = {
    ("CP-A", "timestamp-without-zone"): 1,
    ("CP-A", "error-code-spelling"): 1,
    ("CP-A", "schema-required"): 2,
    ("CP-B", "outstanding-call"): 1,
}


def test_table_lists_charger_rule_and_count(
    recording: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(["audit", str(recording)], capsys)
    assert (code, err) == (1, "")
    assert "5 findings over 4 connections" in out
    for (identity, rule), count in EVERYTHING.items():
        row = re.compile(
            rf"{re.escape(identity)}\s*│\s*{re.escape(rule)}\s*│\s*\w+\s*│\s*{count}\s*│"
        )
        assert row.search(out), (identity, rule, out)
    assert "CP-C" not in out  # a clean charger has no row


def test_json_report(recording: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, document = _json(["audit", str(recording)], capsys)
    assert code == 1
    assert _counts(document) == EVERYTHING
    assert len(document["findings"]) == sum(EVERYTHING.values())
    by_rule = {g["rule"]: g for g in document["summary"]}
    naive = by_rule["timestamp-without-zone"]
    assert naive["severity"] == "error"
    assert naive["example"]["path"] == "$.timestamp"
    assert naive["example"]["seq"] == 0
    assert "2026-01-01T10:00:00" in naive["example"]["frame"]
    assert naive["first_seen"] == "2026-01-01T00:00:01Z"
    assert by_rule["error-code-spelling"]["severity"] == "info"
    finding = document["findings"][0]
    assert set(finding) == {
        "identity", "connection_id", "seq", "ts", "rule", "severity", "message", "path",
    }  # fmt: skip


def test_json_to_output_file(
    recording: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "audit.json"
    code, out, _ = _run(
        ["audit", str(recording), "--format", "json", "--output", str(target)], capsys
    )
    assert (code, out) == (1, "")
    assert _counts(json.loads(target.read_text())) == EVERYTHING


@pytest.mark.parametrize("fmt", ["table", "json", "junit"])
@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("missing-dir", "No such file or directory"),
        ("a-directory", "Is a directory"),
        ("full-disk", "No space left on device"),
    ],
)
def test_unwritable_output_is_one_line_and_exit_2(
    recording: Path,
    tmp_path: Path,
    fmt: str,
    where: str,
    reason: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """As `ocproxy query -o` words it; exit 2, never 1, which CI reads as "findings"."""
    target = {
        "missing-dir": tmp_path / "nonexistent" / "dir" / "a.json",
        "a-directory": tmp_path,
        "full-disk": Path("/dev/full"),  # passes every check, then the write fails
    }[where]
    if where == "full-disk" and not target.exists():
        pytest.skip("no /dev/full here")
    code, out, err = _run(
        ["audit", str(recording), "--format", fmt, "--output", str(target)], capsys
    )
    assert (code, out) == (2, "")
    assert err == f"ocproxy: error: cannot write {target}: {reason}\n"


@pytest.mark.parametrize(
    ("fail_on", "failing"),
    [
        ("error", {"CP-A": {"timestamp-without-zone", "schema-required"}}),
        (
            "warning",
            {"CP-A": {"timestamp-without-zone", "schema-required"}, "CP-B": {"outstanding-call"}},
        ),
        (
            "info",
            {
                "CP-A": {"timestamp-without-zone", "schema-required", "error-code-spelling"},
                "CP-B": {"outstanding-call"},
            },
        ),
    ],
)
def test_junit_report(
    recording: Path, fail_on: str, failing: dict[str, set[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(
        ["audit", str(recording), "--format", "junit", "--fail-on", fail_on], capsys
    )
    assert (code, err) == (1, "")
    assert out.startswith("<?xml")
    root = ET.fromstring(out.encode("utf-8"))
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == {"CP-A", "CP-B", "CP-C"}
    for identity, suite in suites.items():
        cases = suite.findall("testcase")
        assert {c.get("name") for c in cases} == set(RULES)
        failed = {c.get("name") for c in cases if c.find("failure") is not None}
        assert failed == failing.get(identity, set()), identity
        assert suite.get("failures") == str(len(failed))
    # findings below --fail-on are reported, not failed
    if fail_on == "error":
        spelling = next(
            c for c in suites["CP-A"].findall("testcase") if c.get("name") == "error-code-spelling"
        )
        assert "1 finding(s)" in (spelling.findtext("system-out") or "")


@pytest.mark.parametrize(
    ("argv", "code", "counts"),
    [
        (["--identity", "CP-B"], 0, {("CP-B", "outstanding-call"): 1}),
        (["--identity", "CP-B", "--fail-on", "warning"], 1, {("CP-B", "outstanding-call"): 1}),
        (["--identity", "CP-C", "--fail-on", "info"], 0, {}),
        (
            ["--identity", "CP-B", "--identity", "CP-C", "--fail-on", "info"],
            1,
            {("CP-B", "outstanding-call"): 1},
        ),
        (["--since", "2026-02-01"], 1, {("CP-A", "schema-required"): 2}),
        (["--since", "2026-02-01T00:00:00+00:00", "--identity", "CP-C"], 0, {}),
        (["--since", "2027-01-01"], 0, {}),
        # CP-B's Heartbeat was answered after 10 s: late only with a shorter timeout
        (
            ["--identity", "CP-B", "--response-timeout", "5"],
            0,
            {("CP-B", "outstanding-call"): 1, ("CP-B", "late-response"): 1},
        ),
    ],
)
def test_filters_and_exit_codes(
    recording: Path,
    argv: list[str],
    code: int,
    counts: dict[tuple[str, str], int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    got, document = _json(["audit", str(recording), *argv], capsys)
    assert (got, _counts(document)) == (code, counts)


@pytest.mark.parametrize("fmt", ["table", "json", "junit"])
def test_identity_matching_nothing_is_one_line_and_exit_2(
    recording: Path, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A misspelt --identity must not turn a CI gate green with "0 findings"."""
    argv = ["audit", str(recording), "--identity", "CP-B", "--identity", "cp-c", "--format", fmt]
    code, out, err = _run(argv, capsys)
    assert (code, out) == (2, "")
    assert err == (
        f"ocproxy: error: no charger 'cp-c' in {recording} (its chargers: CP-A, CP-B, CP-C)\n"
    )


def test_exit_code_0_without_findings_at_fail_on(
    recording: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = _run(["audit", str(recording), "--identity", "CP-B"], capsys)
    assert code == 0


def test_explain(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(["audit", "--explain", "outstanding-call"], capsys)
    assert (code, err) == (0, "")
    assert "outstanding-call" in out
    assert "SEND (2.1) is exempt" in " ".join(out.split())


def test_list_rules(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["audit", "--list-rules"], capsys)
    assert code == 0
    assert all(rule in out for rule in RULES)


def test_unknown_rule_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(["audit", "--explain", "no-such-rule"], capsys)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert "unknown rule 'no-such-rule'" in err


# -- recordings it cannot read: one line naming the problem, exit 2 -----------------------


def _not_duckdb(path: Path) -> None:
    path.write_bytes(b"this is not a database\n" * 10)


def _empty_file(path: Path) -> None:
    path.write_bytes(b"")


def _sqlite(path: Path) -> None:
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE frames (raw BLOB)")


def _other_duckdb(path: Path) -> None:
    with duckdb.connect(str(path)) as db:
        db.execute("CREATE TABLE frames (raw BLOB)")


def _older_ocproxy(path: Path) -> None:
    with duckdb.connect(str(path)) as db:
        db.execute("CREATE TABLE _ocproxy_migrations (name VARCHAR, applied_at TIMESTAMPTZ)")
        db.execute("INSERT INTO _ocproxy_migrations VALUES ('m000_prehistoric', now())")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (None, "no such file or directory"),
        (_not_duckdb, "is not a DuckDB database"),
        (_empty_file, "is not a DuckDB database"),
        (_sqlite, "is not a DuckDB database"),
        (_other_duckdb, "is a DuckDB database but not an ocproxy recording"),
        (_older_ocproxy, "was made by an older ocproxy (lacks m001_initial)"),
    ],
    ids=["missing", "text", "empty", "sqlite", "other-duckdb", "older-ocproxy"],
)
def test_unreadable_recording_is_one_line_and_exit_2(
    make: Any, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "input.duckdb"
    if make is not None:
        make(path)
    code, out, err = _run(["audit", str(path)], capsys)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1, err
    assert err.startswith("ocproxy: error: ")
    assert message in err
    assert str(path) in err


def test_recording_with_only_the_first_migration_is_audited(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Made before the findings table existed: the frames are all ``audit`` needs."""
    path = tmp_path / "early.duckdb"
    name, first = MIGRATIONS[0]
    assert name == "m001_initial"
    with duckdb.connect(str(path)) as db:
        db.execute("CREATE TABLE _ocproxy_migrations (name VARCHAR, applied_at TIMESTAMPTZ)")
        first(db)
        db.execute("INSERT INTO _ocproxy_migrations VALUES ('m001_initial', now())")
        db.execute(
            "INSERT INTO connection_opens (connection_id, identity, offered_subprotocols, "
            "subprotocol, opened_at, handshake_status, request_headers) "
            "VALUES ('c1', 'CP-OLD', ['ocpp1.6'], 'ocpp1.6', now(), 101, '[]')"
        )
        db.execute(
            "INSERT INTO frames (connection_id, seq, ts, direction, opcode, raw, size, "
            "parse_status) VALUES ('c1', 0, now(), 'to_csms', 'text', "
            "'[2,\"1\",\"heartbeat\",{}]'::BLOB, 22, 'ok')"
        )
    code, document = _json(["audit", str(path)], capsys)
    assert (code, _counts(document)) == (1, {("CP-OLD", "unknown-action"): 1})


def test_connection_refused_at_tls_is_not_audited(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Recorded as the proxy records a failed TLS handshake (495, no HTTP request read):
    no identity or subprotocol offer to judge, so no finding about either."""
    path = tmp_path / "tls.duckdb"
    with Recorder(path) as recorder:
        recorder.submit(
            ConnectionOpened(
                "tls-1", JAN, "", "", "192.0.2.7:40000", (), None, None, 495,
            )
        )  # fmt: skip
        reason = "TLS handshake failed: [SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca"
        recorder.submit(ConnectionClosed("tls-1", JAN, None, reason, ClosedBy.PROXY))
    code, document = _json(["audit", str(path), "--fail-on", "info"], capsys)
    assert (code, document["findings"]) == (0, [])


def test_recording_held_by_a_running_proxy(tmp_path: Path) -> None:
    """DuckDB lets no other process open a file being written: say so, exit 2."""
    path = tmp_path / "live.duckdb"
    Recorder(path).start().close()
    with duckdb.connect(str(path)):  # this process holds the write lock
        result = subprocess.run(
            [sys.executable, "-m", "ocproxy", "audit", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr == (
        f"ocproxy: error: {path} is being written by another process; stop it or query a copy\n"
    )


def test_audit_via_subprocess(recording: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ocproxy", "audit", str(recording), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr) == (1, "")
    assert _counts(json.loads(result.stdout)) == EVERYTHING


def test_jobs_split_by_identity_give_the_same_findings(tmp_path: Path) -> None:
    from ocproxy.audit.auditor import AuditSettings
    from ocproxy.audit.offline import AuditScope, open_recording
    from ocproxy.audit.parallel import audit_file, identity_shares
    from ocproxy.core.handshake import OcppVersion

    path = tmp_path / "fleet.duckdb"
    recorder = Recorder(path, flush_interval=0.01).start()
    status = status_request(OcppVersion.V201)
    # CP-X reuses message id "1" on its second connection: a 2.0.1 finding only an
    # audit that sees both connections of the identity can make.
    for n, at in enumerate((JAN, MAR)):
        _session(recorder, f"x-{n}", "CP-X", "ocpp2.0.1", at, [
            (CP, [2, "1", "StatusNotification", status], 1),
            (CS, [3, "1", {}], 2),
        ])  # fmt: skip
    _session(recorder, "y", "CP-Y", "ocpp1.6", JAN, [
        (CP, [2, "1", "Heartbeat", {}], 1),
        (CP, [2, "2", "Heartbeat", {}], 2),  # a second outstanding CALL
    ])  # fmt: skip
    _session(recorder, "z", "CP-Z", "ocpp2.0.1", JAN, [
        (CP, [2, "1", "StatusNotification", {**status, "timestamp": "2026-01-01T10:00:00"}], 1),
    ])  # fmt: skip
    recorder.close()

    with open_recording(path) as db:
        shares = identity_shares(db, AuditScope(), jobs=3, min_frames_per_job=1)
    assert sorted(shares) == [("CP-X",), ("CP-Y",), ("CP-Z",)]
    settings = AuditSettings()
    one = audit_file(path, settings=settings, jobs=1)
    three = audit_file(path, settings=settings, jobs=3, min_frames_per_job=1)
    assert three == one
    rules = {f.rule for f in one[0]}
    assert {"message-id-reused", "outstanding-call", "timestamp-without-zone"} <= rules


@pytest.mark.parametrize("jobs", ["0", "-2", "many"])
def test_bad_jobs_is_exit_2(recording: Path, jobs: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = _run(["audit", str(recording), "--jobs", jobs], capsys)
    assert code == 2
    assert "is not a number of processes" in err
