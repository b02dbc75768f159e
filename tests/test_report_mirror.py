"""``ocproxy report --mirror``: a real proxy mirrors four simulated chargers to a
secondary CSMS that says no to some of them; the report's figures are asserted exactly.

The secondary (a :class:`SimCsms` with overrides) asks for a 60 s heartbeat where the
primary asks for 300 s, rejects the boot of the charger of model "Old", says Invalid
to the token BADTAG, answers MeterValues with a CALLERROR, never answers DataTransfer,
and refuses the handshake of CP-D (it has no password). After the sessions it sends
its own CALLs: a RemoteStartTransaction to CP-A (allowed by CP-A's route) and to CP-B
(refused by the proxy), a GetConfiguration to CP-C (refused).
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest
from helpers_cli import run_ocproxy
from helpers_ws import wait_until
from ocpp.exceptions import InternalError, SecurityError
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from test_report_browser import ARTIFACTS, Browser, browser, chromium  # noqa: F401 (fixtures)

from ocproxy.analytics.html_mirror import render_mirror_html
from ocproxy.analytics.report_mirror import (
    CALLERROR,
    CUT_OFF,
    DIFFERENT,
    NOT_SENT,
    OUTCOMES,
    SAME,
    UNANSWERED,
    MirrorReport,
    build_mirror_report,
)
from ocproxy.proxy.config import MirrorRoute, ProxyConfig
from ocproxy.proxy.server import ProxyServer
from ocproxy.recorder import Recorder
from ocproxy.sim.charger import ChargerSpec, Station, full_session, run_charger
from ocproxy.sim.csms import SimCsms

PASSWORD = "pw"
CLOCK = "2026-01-01T00:00:00.000Z"
SPECS = [
    ChargerSpec("CP-A", "1.6", heartbeats=1, meter_samples=2),
    ChargerSpec("CP-B", "1.6", heartbeats=1, meter_samples=2, id_tag="BADTAG"),
    ChargerSpec("CP-C", "1.6", heartbeats=1, meter_samples=2, model="Old"),
    ChargerSpec("CP-D", "2.0.1", heartbeats=1, meter_samples=2),
]


def _secondary(release: asyncio.Event) -> SimCsms:
    def boot(charge_point_model: str, **_: Any) -> Any:
        status = "Rejected" if charge_point_model == "Old" else "Accepted"
        # A clock of its own: its answers always differ from the primary's in currentTime.
        return result16.BootNotification(current_time=CLOCK, interval=60, status=status)

    def authorize(id_tag: str, **_: Any) -> Any:
        status = "Invalid" if id_tag == "BADTAG" else "Accepted"
        return result16.Authorize(id_tag_info={"status": status})

    def meter_values(**_: Any) -> Any:
        raise InternalError(description="meter store down")

    async def data_transfer(**_: Any) -> Any:
        await release.wait()  # never in time: the charger's DataTransfer goes unanswered
        return result16.DataTransfer(status="Accepted")

    overrides: dict[str, Callable[..., Any]] = {
        "BootNotification": boot,
        "Authorize": authorize,
        "MeterValues": meter_values,
        "DataTransfer": data_transfer,
    }
    passwords = {spec.identity: PASSWORD for spec in SPECS if spec.identity != "CP-D"}
    return SimCsms(overrides=overrides, basic_auth=passwords)


def _auth(identity: str) -> dict[str, str]:
    token = base64.b64encode(f"{identity}:{PASSWORD}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def record_mirrored_fleet(path: Path) -> Path:
    """The recording described in the module docstring."""
    release = asyncio.Event()
    ready = {spec.identity: asyncio.Event() for spec in SPECS}
    go = asyncio.Event()
    async with SimCsms() as primary, _secondary(release) as secondary, asyncio.timeout(60):

        def script_for(identity: str) -> Any:
            async def script(cp: Station) -> None:
                await full_session(cp)
                ready[identity].set()
                await go.wait()
                await cp.ask(cp._call.DataTransfer(vendor_id="acme"))
                if identity != "CP-D":  # its copy must reach the secondary before the close
                    await wait_until(
                        lambda: any(
                            "DataTransfer" in m
                            for m in secondary.transcripts[identity].in_direction("to_csms")
                        ),
                        f"{identity}'s DataTransfer reached the secondary",
                        20,
                    )

            return script

        # The secondary's leg waits close_timeout for the answers it owes once the
        # charger is gone; the held DataTransfer answers come only after that: cut off.
        config = ProxyConfig(
            listen_host="127.0.0.1", listen_port=0, db=str(path), quiet=True,
            upstream=primary.url, close_timeout=0.5,
            mirrors=(
                MirrorRoute("CP-A", secondary.url, allow_actions=("RemoteStartTransaction",)),
                MirrorRoute("*", secondary.url),
            ),
        )  # fmt: skip
        recorder = Recorder(path, flush_interval=0.05).start()
        server = await ProxyServer(config, recorder).start()
        url = f"ws://127.0.0.1:{server.port}/ocpp"
        try:
            sessions = [
                asyncio.create_task(
                    run_charger(
                        url,
                        spec,
                        extra_headers=_auth(spec.identity),
                        script=script_for(spec.identity),
                    )
                )
                for spec in SPECS
            ]
            for event in ready.values():
                await event.wait()
            start = call16.RemoteStartTransaction(id_tag="04A1B2C3D4", connector_id=1)
            assert (await secondary.call("CP-A", start)).status == "Accepted"
            with pytest.raises(SecurityError):
                await secondary.call("CP-B", start)
            with pytest.raises(SecurityError):
                await secondary.call("CP-C", call16.GetConfiguration(key=["HeartbeatInterval"]))
            go.set()
            await asyncio.gather(*sessions)
        finally:
            await server.stop()
            release.set()
            stats = recorder.close()
    assert stats.frames_lost == 0
    return path


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mirror") / "site.duckdb"
    return asyncio.run(record_mirrored_fleet(path))


def test_every_mirror_leg_is_recorded_closed(mirrored: Path) -> None:
    """The charger hung up: its mirror leg was closed by the proxy, and recorded so."""
    with duckdb.connect(str(mirrored), read_only=True) as con:
        legs = con.execute(
            "SELECT identity, handshake_status, close_code, close_reason, closed_by "
            "FROM connections WHERE source = 'mirror' ORDER BY identity"
        ).fetchall()
    assert legs == [
        ("CP-A", 101, 1001, "charger disconnected", "proxy"),
        ("CP-B", 101, 1001, "charger disconnected", "proxy"),
        ("CP-C", 101, 1001, "charger disconnected", "proxy"),
        ("CP-D", 401, None, "secondary refused: HTTP 401", "csms"),
    ]


def _outcomes(report: MirrorReport) -> dict[str, dict[str, int]]:
    return {o.action: {k: v for k, v in o.counts.items() if v} for o in report.outcomes}


def test_per_action_outcomes(mirrored: Path) -> None:
    report = build_mirror_report([str(mirrored)])
    assert (report.chargers, report.legs, report.legs_refused) == (4, 4, 1)
    assert _outcomes(report) == {
        "BootNotification": {DIFFERENT: 3, UNANSWERED: 1},
        "Heartbeat": {SAME: 3, UNANSWERED: 1},
        "StatusNotification": {SAME: 9, UNANSWERED: 3},
        "Authorize": {SAME: 2, DIFFERENT: 1, UNANSWERED: 1},
        "StartTransaction": {SAME: 3},
        "MeterValues": {CALLERROR: 6},
        "StopTransaction": {SAME: 3},
        # The chargers left before the secondary answered, except CP-D: its leg was refused.
        "DataTransfer": {CUT_OFF: 3, UNANSWERED: 1},
        "TransactionEvent": {UNANSWERED: 4},
    }
    assert [report.total(k) for k in OUTCOMES] == [20, 4, 6, 11, 3, 0]
    assert OUTCOMES == (SAME, DIFFERENT, CALLERROR, UNANSWERED, CUT_OFF, NOT_SENT)
    assert report.verdict() == (
        "The secondary answered 20 of 44 mirrored CALLs as the primary did, 4 differently, "
        "6 with a CALLERROR, 11 not at all, 3 not before the charger disconnected. It never "
        "accepted 2 of 4 chargers."
    )
    differences = {
        (d.action, d.what): (d.exchanges, d.example_identity) for d in report.differences
    }
    assert differences == {
        ("MeterValues", "CALLERROR InternalError (primary: CALLRESULT)"): (6, "CP-A"),
        ("BootNotification", "interval: 300 → 60"): (2, "CP-A"),
        ("Authorize", 'idTagInfo.status: "Accepted" → "Invalid"'): (1, "CP-B"),
        ("BootNotification", 'interval: 300 → 60; status: "Accepted" → "Rejected"'): (1, "CP-C"),
    }
    # Timestamps are left out of the comparison, and listed.
    currenttime = next(i for i in report.ignored if i.path == "currentTime")
    assert currenttime.exchanges >= 3
    assert "BootNotification" in currenttime.actions


def test_rejections_own_calls_and_chargers_never_accepted(mirrored: Path) -> None:
    report = build_mirror_report([str(mirrored)])
    assert [
        (r.identity, r.boots, r.boots_rejected, r.tokens, r.tokens_rejected, r.remote_starts,
         r.remote_starts_refused, r.statuses)
        for r in report.rejected
    ] == [
        ("CP-B", 1, 0, 3, 1, 1, 1, ("remote start refused by the proxy", "token Invalid")),
        ("CP-C", 1, 1, 3, 0, 0, 0, ("boot Rejected",)),
    ]  # fmt: skip
    assert [
        (c.action, c.calls, c.allowed, c.refused, c.accepted, c.rejected, c.unanswered)
        for c in report.own_calls
    ] == [
        ("RemoteStartTransaction", 2, 1, 1, 1, 0, 0),
        ("GetConfiguration", 1, 0, 1, 0, 0, 0),
    ]
    assert [(n.identity, n.legs, n.reason) for n in report.never_accepted] == [
        ("CP-C", 1, "BootNotification answered Rejected (1 sent, none Accepted)"),
        ("CP-D", 1, "handshake: secondary refused: HTTP 401"),
    ]
    first = build_mirror_report([str(mirrored)], top=1)  # --top bounds the lists, not the counts
    assert [(n.identity, first.never_accepted_total) for n in first.never_accepted] == [("CP-C", 2)]
    assert first.verdict().endswith("It never accepted 2 of 4 chargers.")
    assert [r.identity for r in first.rejected] == ["CP-B"]


def test_latency_side_by_side(mirrored: Path) -> None:
    report = build_mirror_report([str(mirrored)])
    latency = {r.action: r for r in report.latency}
    boot = latency["BootNotification"]
    assert (boot.primary_answers, boot.secondary_answers) == (4, 3)
    assert None not in (boot.primary_p50_ms, boot.primary_p99_ms, boot.secondary_p50_ms)
    assert (latency["DataTransfer"].primary_answers, latency["DataTransfer"].secondary_answers) == (
        4, 0,
    )  # fmt: skip
    assert latency["DataTransfer"].secondary_p50_ms is None
    assert (latency["MeterValues"].primary_answers, latency["MeterValues"].secondary_answers) == (
        6, 6,
    )  # fmt: skip


def test_ignore_paths_are_left_out_and_listed(mirrored: Path) -> None:
    report = build_mirror_report([str(mirrored)], ignore=["interval"])
    assert _outcomes(report)["BootNotification"] == {SAME: 2, DIFFERENT: 1, UNANSWERED: 1}
    ignored = {i.path: (i.exchanges, i.actions) for i in report.ignored}
    assert ignored["interval"] == (3, ("BootNotification",))
    assert report.ignore_rules == ("timestamps", "currentTime", "timestamp", "transactionId",
                                   "requestId", "remoteStartId", "interval")  # fmt: skip
    assert ("BootNotification", 'status: "Accepted" → "Rejected"') in {
        (d.action, d.what) for d in report.differences
    }
    strict = build_mirror_report([str(mirrored)], default_ignores=False)
    assert (strict.ignore_rules, strict.ignored) == ((), ())
    # The secondary's own clock shows in every boot answer, now that times are compared.
    boots = [d.what for d in strict.differences if d.action == "BootNotification"]
    assert len(boots) >= 2
    assert all(f'→ "{CLOCK}"' in what for what in boots)
    one = build_mirror_report([str(mirrored)], identity="CP-B")
    assert (one.chargers, one.exchanges, one.total(DIFFERENT)) == (1, 11, 2)


# -- the command line --------------------------------------------------------------------


def test_report_mirror_command(mirrored: Path, tmp_path: Path, capsys: Any) -> None:
    html = tmp_path / "mirror.html"
    code, out, err = run_ocproxy(
        capsys, "report", mirrored, "--mirror", "--html", html, "--ignore", "interval"
    )
    assert code == 0, err
    lines = [line.strip("│ ") for line in out.splitlines()]
    assert any(re.fullmatch(r"secondary\s+│\s+ws://127\.0\.0\.1:\d+", line) for line in lines)
    assert (
        "The secondary answered 22 of 44 mirrored CALLs as the primary did, 2 differently, "
        "6 with a CALLERROR, 11 not at all, 3 not before the charger disconnected. It never "
        "accepted 2 of 4 chargers."
    ) in out.replace("\n", " ")
    assert re.search(r"BootNotification\s+│\s+4\s+│\s+2\s+│\s+1\s+│\s+0\s+│\s+1\s+│\s+0\s+│", out)
    assert re.search(r"CP-D\s+│\s+1\s+│\s+handshake: secondary refused: HTTP 401", out)
    assert re.search(r"interval\s+│\s+3\s+│\s+BootNotification", out)
    assert err == f"ocproxy: wrote {html} ({html.stat().st_size / 1024:,.0f} KiB)\n"
    assert 'id="verdict">The secondary answered 22 of 44' in html.read_text("utf-8")


def test_report_mirror_bad_input(mirrored: Path, tmp_path: Path, capsys: Any) -> None:
    plain = tmp_path / "plain.duckdb"
    with Recorder(plain):
        pass  # a recording without a mirror leg
    for argv, said in [
        (("--ignore", "interval"), "--ignore goes with --mirror"),
        (("--no-default-ignore",), "--no-default-ignore goes with --mirror"),
        (("--mirror", "--ignore", "Boot:"), "--ignore 'Boot:': expected [ACTION:]PATH"),
        (("--mirror", "--legs", "all"), "--legs does not go with --mirror"),
        (("--mirror", "--identity", "CP-Z"), "no charger 'CP-Z' in"),
    ]:
        code, out, err = run_ocproxy(capsys, "report", mirrored, *argv)
        assert (code, out) == (2, ""), argv
        assert err.startswith(f"ocproxy: error: {said}"), (argv, err)
        assert err.count("\n") == 1
    code, out, err = run_ocproxy(capsys, "report", plain, "--mirror", "--html", tmp_path / "x.html")
    assert (code, out) == (2, "")
    assert "no charger was mirrored to a secondary CSMS" in err
    assert not (tmp_path / "x.html").exists()  # nothing half-written


# -- the page, in a real browser -----------------------------------------------------------

PAGE = """(() => {
  const shown = (e) => { const b = e.getBoundingClientRect(); return b.width > 0 && b.height > 0; };
  const bars = (chart) => [
    ...document.querySelectorAll(`svg[data-chart="${chart}"] rect[data-series]`)]
    .filter(shown).map((r) => [r.dataset.series, Number(r.dataset.count || 0)]);
  const table = (id) => [...document.querySelectorAll(`section#${id} tbody tr`)].map(
    (r) => [...r.cells].map((c) => c.textContent));
  return {
    ready: document.documentElement.dataset.ready || null,
    verdict: document.getElementById("verdict").textContent,
    charts: [...document.querySelectorAll("svg[data-chart]")].map((s) => [s.dataset.chart,
      Math.round(s.getBoundingClientRect().width)]),
    outcomes: bars("mirror-outcomes"),
    latency: bars("mirror-latency").map((b) => b[0]),
    tips: document.querySelectorAll('svg[data-chart="mirror-outcomes"] rect > title').length,
    never: table("never-accepted"),
    own: table("own-calls"),
  };
})()"""


@pytest.mark.browser
def test_mirror_page_in_chromium(
    mirrored: Path,
    tmp_path: Path,
    browser: Browser,  # noqa: F811 (the fixture imported above)
) -> None:
    html = tmp_path / "mirror.html"
    html.write_text(render_mirror_html(build_mirror_report([str(mirrored)])), "utf-8")
    url = html.resolve().as_uri()
    browser.open(url)
    seen = browser.evaluate(PAGE)
    browser.screenshot(ARTIFACTS / "report-mirror.png")
    assert browser.problems() == []
    assert browser.requests() == [url]  # self-contained
    assert seen["ready"] == "1"
    assert [name for name, _ in seen["charts"]] == ["mirror-outcomes", "mirror-latency"]
    assert all(width > 900 for _, width in seen["charts"])
    assert seen["verdict"].startswith("The secondary answered 20 of 44 mirrored CALLs")
    drawn: dict[str, int] = {}
    for series, n in seen["outcomes"]:
        drawn[series] = drawn.get(series, 0) + n
    assert drawn == {SAME: 20, DIFFERENT: 4, CALLERROR: 6, UNANSWERED: 11, CUT_OFF: 3}
    assert seen["tips"] == len(seen["outcomes"])
    assert set(seen["latency"]) == {"primary", "secondary"}
    assert seen["never"] == [
        ["CP-C", "1", "BootNotification answered Rejected (1 sent, none Accepted)"],
        ["CP-D", "1", "handshake: secondary refused: HTTP 401"],
    ]
    assert seen["own"][0] == ["RemoteStartTransaction", "2", "1", "1", "1", "0", "0"]
    # A legend entry hides its outcome's bars, as on the report's other charts.
    browser.evaluate(
        'document.querySelector(\'svg[data-chart="mirror-outcomes"] .key[data-key="same"]\')'
        '.dispatchEvent(new Event("click"))'
    )
    assert SAME not in {s for s, _ in browser.evaluate(PAGE)["outcomes"]}
    assert browser.problems() == []


# -- ocproxy tail keeps the mirror legs apart, and marks them ---------------------------


def test_tail_marks_mirror_lines(
    mirrored: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    shown = {}
    for legs in ("charger", "mirror", "all"):
        code, out, err = run_ocproxy(
            capsys, "tail", mirrored, "--identity", "CP-A", "--limit", "100", "--legs", legs
        )
        assert (code, err) == (0, "")
        shown[legs] = out
    # CP-A's own connection: 11 CALLs, their answers, the secondary's RemoteStart relayed
    # (injected) and the charger's answer; its mirror leg: 11 copies, 10 answers (none to
    # DataTransfer), the RemoteStart CALL and the copy of the charger's answer.
    assert "frames · last 24 of 24 · identity=CP-A" in shown["charger"]
    assert "CP-A mirror" not in shown["charger"]
    assert "frames · last 23 of 23 · identity=CP-A legs=mirror" in shown["mirror"]
    assert "frames · last 47 of 47 · identity=CP-A legs=all" in shown["all"]
    assert sum("CP-A mirror" in line for line in shown["all"].splitlines()) == 23 + 1  # + its row
    assert sum("CP-A mirror" in line for line in shown["mirror"].splitlines()) == 23 + 1
