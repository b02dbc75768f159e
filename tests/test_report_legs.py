"""Mirror legs kept apart on the read side: named queries, ``report`` and ``audit`` count
the chargers' own connections by default; ``legs`` (``--param legs=``, ``--legs``)
selects the mirror legs or both, and a ``source`` column tells them apart.

The recording is made by a real proxy mirroring two real ``ocpp`` chargers to a
second simulated CSMS, so every charger CALL exists twice: once on the charger's
connection and once on its mirror leg.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pytest
from helpers_cli import run_ocproxy
from helpers_ws import wait_until

from ocproxy.analytics.report import build_report
from ocproxy.audit.auditor import Auditor
from ocproxy.proxy.config import MirrorRoute
from ocproxy.sim.charger import ChargerSpec, run_charger
from ocproxy.sim.csms import SimCsms

SPECS = [ChargerSpec(identity=f"CP-M{n}", version="1.6", meter_samples=2) for n in (1, 2)]


@pytest.fixture
async def mirrored(proxy_factory: Any, db_path: Path) -> Path:
    async with (
        SimCsms() as primary,
        SimCsms() as secondary,
        proxy_factory(
            recorder_options={"auditor": Auditor()},
            upstream=primary.url,
            mirrors=(MirrorRoute("*", secondary.url),),
        ) as (proxy, _box),
    ):
        for spec in SPECS:
            sent = len(await run_charger(proxy.url, spec))
            await wait_until(
                lambda i=spec.identity, n=sent: len(secondary.transcripts.get(i, [])) >= n,
                "the secondary got every charger message",
            )
    return db_path


def _query(capsys: pytest.CaptureFixture[str], db: Path, *argv: str) -> list[dict[str, Any]]:
    code, out, err = run_ocproxy(capsys, "query", db, *argv, "--format", "json")
    assert (code, err) == (0, ""), err
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


def _calls(db: Path, where: str) -> int:
    with duckdb.connect(str(db), read_only=True) as con:
        row = con.execute(
            "SELECT count(*) FROM frames JOIN connections USING (connection_id) "
            f"WHERE message_type = 2 AND direction = 'to_csms' AND {where}"
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_queries_count_the_chargers_own_connections_by_default(
    mirrored: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sessions = _query(capsys, mirrored, "sessions")
    assert [(r["identity"], r["source"], r["mirror_of"]) for r in sessions] == [
        ("CP-M1", "proxy", None),
        ("CP-M2", "proxy", None),
    ]
    every = _query(capsys, mirrored, "sessions", "--param", "legs=all")
    assert sorted((r["identity"], r["source"]) for r in every) == [
        ("CP-M1", "mirror"), ("CP-M1", "proxy"), ("CP-M2", "mirror"), ("CP-M2", "proxy"),
    ]  # fmt: skip
    legs = _query(capsys, mirrored, "sessions", "--param", "legs=mirror")
    assert {r["source"] for r in legs} == {"mirror"}
    assert {r["mirror_of"] for r in legs} == {r["connection_id"] for r in sessions}
    # latency: the charger's CALLs once each, not once more with the secondary's answers
    own = _query(capsys, mirrored, "latency")
    assert {r["source"] for r in own} == {"proxy"}
    assert sum(r["calls"] for r in own if r["direction"] == "to_csms") == _calls(
        mirrored, "mirror_of IS NULL"
    )
    both = _query(capsys, mirrored, "latency", "--param", "legs=all")
    boots = [(r["source"], r["calls"]) for r in both if r["action"] == "BootNotification"]
    assert sorted(boots) == [("mirror", 2), ("proxy", 2)]
    # the others filter the same way
    transactions = _query(capsys, mirrored, "transactions")
    assert len(transactions) == 2
    assert len(_query(capsys, mirrored, "transactions", "--param", "legs=all")) == 4


async def test_a_bad_legs_value_is_one_line_and_exit_2(
    mirrored: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_ocproxy(capsys, "query", mirrored, "sessions", "--param", "legs=both")
    assert (code, out) == (2, "")
    assert err.startswith("ocproxy: error: --param legs=both: legs is one of charger, mirror")
    assert err.count("\n") == 1


async def test_report_and_audit_leave_the_mirror_legs_out_by_default(
    mirrored: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    own = build_report([str(mirrored)])
    assert (own.overview.connections, own.overview.chargers) == (2, 2)
    assert own.overview.frames == _frames(mirrored, "mirror_of IS NULL")
    assert {row.source for row in own.latency} == {"proxy"}
    every = build_report([str(mirrored)], legs="all")
    assert every.overview.connections == 4
    assert every.overview.frames == _frames(mirrored, "true")
    assert {row.source for row in every.latency} == {"proxy", "mirror"}
    mirror = build_report([str(mirrored)], legs="mirror")
    assert mirror.overview.frames == _frames(mirrored, "mirror_of IS NOT NULL")
    # audit: the connections it reads
    for legs, connections in (("charger", 2), ("mirror", 2), ("all", 4)):
        code, out, _ = run_ocproxy(capsys, "audit", mirrored, "--legs", legs, "--jobs", "1")
        assert code in (0, 1)
        assert f"findings over {connections} connections" in out, out


def _frames(db: Path, where: str) -> int:
    with duckdb.connect(str(db), read_only=True) as con:
        row = con.execute(
            f"SELECT count(*) FROM frames JOIN connections USING (connection_id) WHERE {where}"
        ).fetchone()
    assert row is not None
    return int(row[0])
