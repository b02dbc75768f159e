"""The inspector's filter expressions, from literal strings: parse, SQL and matching."""

from __future__ import annotations

from typing import Any

import duckdb
import pytest

from ocproxy.inspect.filters import Filter, FilterError, Term, matches, parse, to_sql

T_NOON = 1_769_860_800.0  # 2026-01-31T12:00:00Z


def test_parse_terms() -> None:
    flt = parse('action:Boot*,Authorize  dir:csms -type:CALLRESULT rule:schema-* "id tag" x')
    assert flt.terms == (
        Term("action", ("Boot*", "Authorize")),
        Term("direction", ("to_csms",)),
        Term("type", (3,), negate=True),
        Term("rule", ("schema-*",)),
        Term("text", ("id tag",)),
        Term("text", ("x",)),
    )
    assert parse("since:2026-01-31T12:00Z until:2026-01-31T13:00:00").terms == (
        Term("since", (T_NOON,)),
        Term("until", (T_NOON + 3600,)),
    )
    assert parse("severity:WARNING is:injected,error cp:CP-1 id:abc").terms == (
        Term("severity", (20,)),
        Term("is", ("injected", "error")),
        Term("identity", ("CP-1",)),
        Term("message_id", ("abc",)),
    )
    assert parse('text:"a b" type:malformed dir:<').terms == (
        Term("text", ("a b",)),
        Term("type", (0,)),
        Term("direction", ("to_charger",)),
    )
    assert parse("   ") == Filter("   ", ())
    assert not parse("")
    assert parse("identity:CP-* -identity:CP-9").identities() == ("CP-*",)


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("action:Boot colour:red", 13, "unknown key 'colour'"),
        ("action:", 8, "action: needs a value"),
        ("dir:up", 5, "'up' is not one of csms, charger"),
        ("type:CALL,RESULT", 6, "'RESULT' is not a message type"),
        ("type:CALL,", 6, "an empty alternative"),
        ("severity:fatal", 10, "'fatal' is not a severity"),
        ("severity:info,error", 10, "severity takes one value"),
        ("since:yesterday", 7, "'yesterday' is not a time"),
        ('text:"open', 6, "this quote is never closed"),
        ("is:broken", 4, "'broken' is not one of injected"),
        ('"a"b', 1, "text after a closing quote"),
    ],
)
def test_errors_say_where(text: str, column: int, message: str) -> None:
    with pytest.raises(FilterError) as error:
        parse(text)
    assert error.value.column + 1 == column, error.value
    assert error.value.message.startswith(message), error.value.message
    assert str(error.value).startswith(f"column {column}: ")


FRAMES: list[dict[str, Any]] = [
    {"identity": "CP-1", "direction": "to_csms", "message_type": 2, "action": "BootNotification",
     "message_id": "b1", "parse_status": "ok", "payload": '{"chargePointVendor":"Acme"}',
     "ts": T_NOON - 10, "injected": False, "findings": []},
    {"identity": "CP-1", "direction": "to_charger", "message_type": 3, "action": "BootNotification",
     "message_id": "b1", "parse_status": "ok", "payload": '{"status":"Accepted"}', "ts": T_NOON,
     "injected": False, "findings": [{"rule": "schema-required", "severity": "error"}]},
    {"identity": "CP-2", "direction": "to_csms", "message_type": None, "action": None,
     "message_id": None, "parse_status": "invalid_json", "payload": None, "raw": '[2,"x",',
     "ts": T_NOON + 5, "injected": False,
     "findings": [{"rule": "malformed-frame", "severity": "warning"}]},
    {"identity": "CP-2", "direction": "to_charger", "message_type": 2, "action": "Reset",
     "message_id": "i1", "parse_status": "ok", "payload": '{"type":"Soft"}', "ts": T_NOON + 9,
     "injected": True, "findings": []},
    {"identity": "CP-2", "direction": "to_csms", "message_type": 4, "action": "Reset",
     "message_id": "i1", "parse_status": "ok", "payload": "{}", "ts": T_NOON + 10,
     "injected": True, "findings": [{"rule": "info-thing", "severity": "info"}]},
]  # fmt: skip

CASES = {
    "": [0, 1, 2, 3, 4],
    "identity:CP-1": [0, 1],
    "identity:CP-*": [0, 1, 2, 3, 4],
    "-identity:CP-1": [2, 3, 4],
    "action:Boot*": [0, 1],
    "action:Reset,BootNotification dir:charger": [1, 3],
    "type:CALL": [0, 3],
    "type:malformed": [2],
    "-type:CALL,CALLRESULT": [2, 4],
    "rule:schema-*": [1],
    "severity:warning": [1, 2],
    "severity:info": [1, 2, 4],
    "accepted": [1],
    "[2,": [2],
    "text:SOFT": [3],
    "since:2026-01-31T12:00:00Z": [1, 2, 3, 4],
    "until:2026-01-31T12:00:05Z": [0, 1],
    "is:injected": [3, 4],
    "is:error": [4],
    "is:malformed": [2],
    "is:finding": [1, 2, 4],
    "-is:finding dir:csms": [0],
    "id:i1": [3, 4],
}


@pytest.mark.parametrize("text", list(CASES))
def test_matches_in_memory(text: str) -> None:
    flt = parse(text)
    assert [n for n, frame in enumerate(FRAMES) if matches(flt, frame)] == CASES[text]


@pytest.fixture(scope="module")
def db() -> duckdb.DuckDBPyConnection:
    """The same frames as a tiny recording's tables, to run to_sql's fragments on."""
    con = duckdb.connect(":memory:")
    con.execute(
        "CREATE TABLE connections (connection_id VARCHAR, identity VARCHAR);"
        "CREATE TABLE frames (connection_id VARCHAR, seq BIGINT, ts TIMESTAMPTZ, direction "
        "VARCHAR, message_type SMALLINT, message_id VARCHAR, action VARCHAR, parse_status "
        "VARCHAR, payload JSON, injected BOOLEAN);"
        "CREATE TABLE findings (connection_id VARCHAR, seq BIGINT, rule VARCHAR, severity VARCHAR);"
        "INSERT INTO connections VALUES ('c1', 'CP-1'), ('c2', 'CP-2')"
    )
    for n, f in enumerate(FRAMES):
        cid = "c1" if f["identity"] == "CP-1" else "c2"
        con.execute(
            "INSERT INTO frames VALUES (?, ?, to_timestamp(?), ?, ?, ?, ?, ?, ?, ?)",
            [cid, n, f["ts"], f["direction"], f["message_type"], f["message_id"], f["action"],
             f["parse_status"], f["payload"], f["injected"]],
        )  # fmt: skip
        for finding in f["findings"]:
            con.execute("INSERT INTO findings VALUES (?, ?, ?, ?)",
                        [cid, n, finding["rule"], finding["severity"]])  # fmt: skip
    return con


@pytest.mark.parametrize("text", [t for t in CASES if t != "[2,"])
def test_sql_selects_the_same_frames(db: duckdb.DuckDBPyConnection, text: str) -> None:
    where, params = to_sql(parse(text))
    rows = db.execute(
        f"SELECT f.seq FROM frames f JOIN connections c USING (connection_id) WHERE {where} "
        "ORDER BY f.seq",
        params,
    ).fetchall()
    assert [r[0] for r in rows] == CASES[text]


def test_sql_text_search_is_in_payloads_only(db: duckdb.DuckDBPyConnection) -> None:
    # A malformed frame has no payload: the SQL side searches payloads (raw may be binary).
    where, params = to_sql(parse("[2,"))
    rows = db.execute(f"SELECT f.seq FROM frames f WHERE {where}", params).fetchall()
    assert rows == []
