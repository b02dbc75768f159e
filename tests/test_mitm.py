"""The mitmproxy addon, run by a real ``mitmdump`` subprocess in reverse mode.

Every test starts ``mitmdump --mode reverse:http://127.0.0.1:CSMS@127.0.0.1:0 -s
addons/ocproxy_recorder.py --set ocproxy_db=FILE`` in front of a real CSMS on loopback
(the ``ocpp``-based :class:`SimCsms`, or a raw websockets server the test drives), runs
real chargers through it, stops it with SIGINT (so the addon's ``done`` flushes) and
reads the closed DuckDB file. The scripted exchange is also run through ``ocproxy
proxy`` (the ``proxy_factory`` fixture), and the two recordings are compared row by row.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pytest
from helpers_ws import Message, Upstream, closed_port, headers_json, receive, send, upstream
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from ocproxy.audit.offline import audit_recording, open_recording
from ocproxy.core.redaction import Redactor
from ocproxy.mitm import addon_path
from ocproxy.sim.charger import ChargerSpec, run_charger
from ocproxy.sim.csms import SimCsms
from ocproxy.sim.transcript import TO_CHARGER, TO_CSMS, Transcript

REPO = Path(__file__).resolve().parents[1]
SHIM = Path("addons/ocproxy_recorder.py")  # relative to REPO, as `mitmdump -s` from the root
MITMDUMP = Path(sys.executable).with_name("mitmdump")
TIMEOUT = 15.0


# -- a mitmdump subprocess --------------------------------------------------------------------


@dataclass
class Mitmdump:
    process: asyncio.subprocess.Process
    db: Path | None
    port: int = 0
    lines: list[str] = field(default_factory=list)
    returncode: int | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def ocproxy_lines(self) -> list[str]:
        return [line for line in self.lines if "ocproxy:" in line]


@pytest.fixture(scope="session")
def mitm_confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One confdir for every run: mitmproxy makes its CA there once, ~/.mitmproxy is untouched."""
    return tmp_path_factory.mktemp("mitmproxy-conf")


@contextlib.asynccontextmanager
async def mitmdump(
    csms_port: int,
    db: Path | None,
    confdir: Path,
    *,
    options: Iterable[str] = (),
    scripts: Iterable[Path] = (),
    addon: Path = SHIM,
    cwd: Path = REPO,
    mode: str | None = None,
) -> AsyncIterator[Mitmdump]:
    """mitmdump with the addon in front of the CSMS; SIGINT and a wait for its exit on leaving.

    ``mode`` defaults to ``reverse:http://127.0.0.1:CSMS_PORT``; it listens on a free port.
    """
    mode = mode or f"reverse:http://127.0.0.1:{csms_port}"
    args = [
        str(MITMDUMP),
        "--mode",
        f"{mode}@127.0.0.1:0",
        "--set",
        f"confdir={confdir}",
        "--set",
        "flow_detail=0",
        "-s",
        str(addon),
    ]
    for script in scripts:
        args += ["-s", str(script)]
    if db is not None:
        args += ["--set", f"ocproxy_db={db}"]
    for option in options:
        args += ["--set", option]
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    run = Mitmdump(process, db)
    new_line = asyncio.Event()

    async def drain() -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            run.lines.append(line.decode("utf-8", "replace"))
            new_line.set()
        new_line.set()

    drainer = asyncio.create_task(drain())
    try:
        async with asyncio.timeout(TIMEOUT):
            while not (match := re.search(r"listening at 127\.0\.0\.1:(\d+)", run.output)):
                if drainer.done():
                    raise AssertionError(f"mitmdump exited early:\n{run.output}")
                new_line.clear()
                await new_line.wait()
        run.port = int(match.group(1))
        yield run
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        try:
            async with asyncio.timeout(TIMEOUT):
                run.returncode = await process.wait()
                await drainer
        except TimeoutError:
            process.kill()
            await process.wait()
            raise AssertionError(f"mitmdump did not stop on SIGINT:\n{run.output}") from None


def rows(db: Path, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    with duckdb.connect(str(db), read_only=True) as con:
        cursor = con.execute(sql, params or [])
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def connection(db: Path, identity: str) -> dict[str, Any]:
    found = rows(db, "SELECT * FROM connections WHERE identity = ?", [identity])
    assert len(found) == 1, found
    return found[0]


def frames(db: Path, connection_id: str) -> list[dict[str, Any]]:
    return rows(db, "SELECT * FROM frames WHERE connection_id = ? ORDER BY seq", [connection_id])


# -- real ocpp peers -----------------------------------------------------------------------------


def _assert_matches_transcript(recorded: list[dict[str, Any]], transcript: Transcript) -> None:
    for direction in (TO_CSMS, TO_CHARGER):
        raw = [bytes(f["raw"]).decode() for f in recorded if f["direction"] == direction]
        assert raw == transcript.in_direction(direction)
    assert len(recorded) == len(transcript)
    assert [f["seq"] for f in recorded] == list(range(len(recorded)))
    by_seq = {f["seq"]: f for f in recorded}
    for row in recorded:
        frame = json.loads(row["raw"])
        assert (row["opcode"], row["parse_status"], row["injected"]) == ("text", "ok", False)
        assert row["size"] == len(row["raw"])
        assert (row["message_type"], row["message_id"]) == (frame[0], frame[1])
        if frame[0] == 2:
            assert row["action"] == frame[2]
            assert row["request_seq"] is None
        else:  # every answer is paired with its CALL, going the other way
            call = by_seq[row["request_seq"]]
            assert (call["message_id"], call["action"]) == (row["message_id"], row["action"])
            assert call["direction"] != row["direction"]
            assert row["pairing"] == "matched"
            assert row["latency_ms"] >= 0


async def test_ocpp_peers_through_mitmdump(tmp_path: Path, mitm_confdir: Path) -> None:
    db = tmp_path / "mitm.duckdb"
    specs = [ChargerSpec("CP-16", "1.6", meter_samples=2), ChargerSpec("CP-201", "2.0.1")]
    # Ids kept: raw is compared byte for byte with what the peers sent (the pseudonyms
    # are test_driver_ids_are_pseudonymised_as_by_the_proxy's subject).
    keep = ["ocproxy_keep_ids=true"]
    async with (
        SimCsms(initiate=True) as csms,
        mitmdump(csms.port, db, mitm_confdir, options=keep) as run,
        asyncio.timeout(30),
    ):
        transcripts = await asyncio.gather(*(run_charger(run.url, s) for s in specs))
    assert run.returncode == 0, run.output

    for spec, transcript in zip(specs, transcripts, strict=True):
        row = connection(db, spec.identity)
        subprotocol = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1"}[spec.version]
        assert row["source"] == "mitmproxy"
        assert row["path"] == f"/{spec.identity}"
        assert row["offered_subprotocols"] == [subprotocol]
        assert (row["subprotocol"], row["ocpp_version"]) == (subprotocol, spec.version)
        assert row["handshake_status"] == 101
        assert row["upstream_url"] == f"ws://127.0.0.1:{csms.port}/{spec.identity}"
        assert (row["close_code"], row["closed_by"]) == (1000, "charger")
        recorded = frames(db, row["connection_id"])
        _assert_matches_transcript(recorded, transcript)
        _assert_matches_transcript(recorded, csms.transcripts[spec.identity])
        actions = {f["action"] for f in recorded}
        assert {"BootNotification", "Heartbeat", "Authorize"} <= actions
        assert "GetConfiguration" in actions or "GetVariables" in actions  # CSMS-initiated
    stats = rows(db, "SELECT * FROM run_stats")
    assert [(s["frames_recorded"], s["frames_lost"]) for s in stats] == [
        (sum(len(t) for t in transcripts), 0)
    ]
    # The auditor ran live: schema-valid peers, so no malformed frames or schema errors.
    findings = rows(db, "SELECT rule FROM findings WHERE severity = 'error'")
    assert findings == []


# -- a scripted exchange, recorded by mitmdump and by ocproxy proxy ------------------------------

BASIC = "Basic " + base64.b64encode(b"CP 1:s3cret-password").decode()
BOOT = b'[2,"m1","BootNotification",{"chargePointVendor":"V","chargePointModel":"M"}]'
BOOTED = b'[3,"m1",{"status":"Accepted","currentTime":"2025-01-01T00:00:00Z","interval":300}]'
CONFIG = b'[3,"c1",{"configurationKey":[{"key":"HeartbeatInterval","readonly":false}]}]'
SCRIPT: list[tuple[str, Message]] = [
    ("charger", ("text", BOOT)),
    ("csms", ("text", BOOTED)),
    ("csms", ("text", b'[2,"c1","GetConfiguration",{"key":["HeartbeatInterval"]}]')),
    ("charger", ("text", CONFIG)),
    ("charger", ("text", b'[2,"m2","Heartbeat",{}]')),
    ("csms", ("text", b'[4,"m2","InternalError","boom",{}]')),
    ("charger", ("text", b"not json at all")),
    ("charger", ("text", b'[2,"m3"]')),
    ("charger", ("binary", b"\x00\x01\xfe\xff")),
    ("charger", ("text", '[2,"m4","DataTransfer",{"vendorId":"Ünïcode ✓"}]'.encode())),
    ("csms", ("text", b'[3,"m4",{"status":"Accepted"}]')),
    ("csms", ("text", b'[3,"nope",{}]')),
]


@dataclass
class RawCsms:
    """A raw websockets server as the CSMS: hands each connection to the test."""

    server: Upstream
    accepted: asyncio.Queue[ServerConnection]


@contextlib.asynccontextmanager
async def raw_csms() -> AsyncIterator[RawCsms]:
    accepted: asyncio.Queue[ServerConnection] = asyncio.Queue()

    async def handler(ws: ServerConnection) -> None:
        await accepted.put(ws)
        await ws.wait_closed()

    def refuse(connection: ServerConnection, request: Request) -> Response | None:
        if request.path.endswith("/DENIED"):
            response = connection.respond(401, "Unauthorized\n")
            response.headers["WWW-Authenticate"] = 'Basic realm="ocpp"'
            return response
        return None

    subprotocols = [Subprotocol("ocpp1.6"), Subprotocol("chat")]
    async with upstream(handler, process_request=refuse, subprotocols=subprotocols) as server:
        yield RawCsms(server, accepted)


async def run_script(url: str, csms: RawCsms) -> None:
    """The scripted charger: each message is received by the other peer before the next."""
    async with connect(
        f"{url}/ocpp/CP%201",
        subprotocols=[Subprotocol("ocpp2.0.1"), Subprotocol("ocpp1.6")],
        additional_headers=[("Authorization", BASIC), ("X-Site", "depot 7")],
        compression=None,
    ) as charger:
        peer = await asyncio.wait_for(csms.accepted.get(), TIMEOUT)
        for sender, message in SCRIPT:
            source, sink = (charger, peer) if sender == "charger" else (peer, charger)
            await send(source, message)
            assert await receive(sink, 1) == [message]
        await charger.close(1000, "bye")
    await peer.wait_closed()
    with pytest.raises(InvalidStatus) as refused:
        await connect(f"{url}/ocpp/DENIED", subprotocols=[Subprotocol("ocpp1.6")])
    assert refused.value.response.status_code == 401


async def exchange_one(url: str, csms: RawCsms, path: str, subprotocol: str) -> None:
    """A short WebSocket session that the addon must not record."""
    async with connect(f"{url}{path}", subprotocols=[Subprotocol(subprotocol)]) as client:
        peer = await asyncio.wait_for(csms.accepted.get(), TIMEOUT)
        await client.send("hello")
        assert await peer.recv() == "hello"
    await peer.wait_closed()


# Columns that differ between two recordings of the same exchange by construction.
_VOLATILE_CONNECTION = {
    "connection_id",
    "run_id",
    "source",
    "remote_addr",
    "opened_at",
    "closed_at",
}
_VOLATILE_FRAME = {"connection_id", "ts", "latency_ms"}
# Host: mitmproxy's reverse mode rewrites it (keep_host_header=false); the key is random.
_PER_LEG_REQUEST = {"host", "sec-websocket-key"}
# Date is the time; the accept hash follows the random key.
_PER_LEG_RESPONSE = {"date", "sec-websocket-accept"}


def _headers(value: str, drop: set[str]) -> list[tuple[str, str]]:
    return [(n, v) for n, v in headers_json(value) if n.lower() not in drop]


def _comparable(row: dict[str, Any], volatile: set[str]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in volatile}


async def test_scripted_exchange_same_rows_as_ocproxy_proxy(
    tmp_path: Path, mitm_confdir: Path, proxy_factory: Any
) -> None:
    mitm_db = tmp_path / "mitm.duckdb"
    options = ["ocproxy_paths=/ocpp/*"]
    # One CSMS for both runs, so that even upstream_url is the same.
    async with raw_csms() as csms:
        async with mitmdump(csms.server.port, mitm_db, mitm_confdir, options=options) as run:
            async with asyncio.timeout(30):
                await run_script(run.url, csms)
                await exchange_one(run.url, csms, "/ocpp/chat-room", "chat")  # not OCPP
                await exchange_one(run.url, csms, "/other/CP9", "ocpp1.6")  # path not OCPP
                # Still connected when mitmdump stops: closed in the recording by done().
                live = await connect(
                    f"{run.url}/ocpp/CP-LIVE", subprotocols=[Subprotocol("ocpp1.6")]
                )
                await asyncio.wait_for(csms.accepted.get(), TIMEOUT)
        async with proxy_factory(upstream=csms.server.url) as (proxy, box), asyncio.timeout(30):
            await run_script(proxy.url, csms)
    assert run.returncode == 0, run.output
    await live.close()
    proxy_db = box[0].path

    # Only the OCPP connections were recorded; each ignored flow is one log line.
    identities = [r["identity"] for r in rows(mitm_db, "SELECT identity FROM connections")]
    assert sorted(identities) == ["CP 1", "CP-LIVE", "DENIED"]
    ignored = [line for line in run.ocproxy_lines() if "not recording WebSocket" in line]
    assert len(ignored) == 2, run.output
    assert "/ocpp/chat-room" in ignored[0]
    assert "offers no OCPP subprotocol (offered: chat)" in ignored[0]
    assert "/other/CP9" in ignored[1]
    assert "ocproxy_paths='/ocpp/*'" in ignored[1]

    for identity in ("CP 1", "DENIED"):
        mitm_row, proxy_row = connection(mitm_db, identity), connection(proxy_db, identity)
        assert (mitm_row["source"], proxy_row["source"]) == ("mitmproxy", "proxy")
        volatile = _VOLATILE_CONNECTION | {"request_headers", "response_headers"}
        assert _comparable(mitm_row, volatile) == _comparable(proxy_row, volatile)
        for column, drop in [
            ("request_headers", _PER_LEG_REQUEST),
            ("response_headers", _PER_LEG_RESPONSE),
        ]:
            mitm_headers = _headers(mitm_row[column], drop)
            proxy_headers = _headers(proxy_row[column], drop)
            if column == "request_headers":  # as the charger sent them, in order
                assert mitm_headers == proxy_headers
            else:  # the proxy writes its own response: the same headers, not the same order
                assert sorted(mitm_headers) == sorted(proxy_headers)
        mitm_frames = frames(mitm_db, mitm_row["connection_id"])
        proxy_frames = frames(proxy_db, proxy_row["connection_id"])
        assert [_comparable(f, _VOLATILE_FRAME) for f in mitm_frames] == [
            _comparable(f, _VOLATILE_FRAME) for f in proxy_frames
        ]

    row = connection(mitm_db, "CP 1")
    assert (row["path"], row["subprotocol"], row["offered_subprotocols"]) == (
        "/ocpp/CP%201",
        "ocpp1.6",
        ["ocpp2.0.1", "ocpp1.6"],
    )
    assert (row["close_code"], row["close_reason"], row["closed_by"]) == (1000, "bye", "charger")
    assert ["Authorization", "Basic CP 1:[redacted]"] in json.loads(row["request_headers"])
    assert "s3cret" not in row["request_headers"]
    recorded = frames(mitm_db, row["connection_id"])
    assert [(f["direction"], f["opcode"], bytes(f["raw"])) for f in recorded] == [
        ("to_csms" if sender == "charger" else "to_charger", opcode, data)
        for sender, (opcode, data) in SCRIPT
    ]
    assert [f["parse_status"] for f in recorded][6:9] == [
        "invalid_json",
        "wrong_arity",
        "invalid_utf8",
    ]
    pairing = [(f["message_type"], f["action"], f["request_seq"], f["pairing"]) for f in recorded]
    assert pairing[:6] == [
        (2, "BootNotification", None, None),
        (3, "BootNotification", 0, "matched"),
        (2, "GetConfiguration", None, None),
        (3, "GetConfiguration", 2, "matched"),
        (2, "Heartbeat", None, None),
        (4, "Heartbeat", 4, "matched"),
    ]
    assert pairing[-1] == (3, None, None, "unknown_id")
    denied = connection(mitm_db, "DENIED")
    assert (denied["handshake_status"], denied["closed_by"]) == (401, "csms")
    assert denied["close_reason"] == "CSMS refused: HTTP 401"
    still_open = connection(mitm_db, "CP-LIVE")
    assert (still_open["close_code"], still_open["closed_by"]) == (1006, "proxy")
    assert still_open["close_reason"] == "mitmproxy shut down"

    # Same findings: live in mitmdump, recomputed from the proxy's frames by ocproxy audit.
    def findings_of(db_findings: Iterable[tuple[str, Any, str, str, str]]) -> list[tuple[Any, ...]]:
        return sorted(db_findings, key=repr)

    mitm_findings = findings_of(
        (r["identity"], r["seq"], r["rule"], r["severity"], r["message"])
        for r in rows(mitm_db, "SELECT * FROM findings JOIN connections USING (connection_id)")
    )
    with contextlib.closing(open_recording(proxy_db)) as con:
        offline, _, names = audit_recording(con)
    proxy_findings = findings_of(
        (names[f.connection_id], f.seq, f.rule, str(f.severity), f.message) for f in offline
    )
    assert mitm_findings == proxy_findings
    assert {f[2] for f in mitm_findings} >= {"malformed-frame", "unknown-response-id"}


# -- injection --------------------------------------------------------------------------------

INJECTOR = '''
import logging
from mitmproxy import ctx, exceptions

class Injector:
    """Drives ocproxy.inject from a second addon when the charger asks for it."""

    held = 0

    def websocket_end(self, flow):
        logging.info(f"injector: at most {self.held} messages held")

    def websocket_message(self, flow):
        self.held = max(self.held, len(flow.websocket.messages))
        message = flow.websocket.messages[-1]
        if not message.from_client or message.injected:
            return
        if b"inject-to-charger" in message.content:
            ctx.master.commands.call(
                "ocproxy.inject", flow, "GetConfiguration", '{"key":["HeartbeatInterval"]}'
            )
            try:
                ctx.master.commands.call("ocproxy.inject", flow, "Reset", "[1]")
            except exceptions.CommandError as exc:
                logging.info(f"injector: refused: {exc}")
        elif b"inject-to-csms" in message.content:
            ctx.master.commands.call("ocproxy.inject", flow, "Heartbeat", "{}", "--to", "csms")

addons = [Injector()]
'''


async def test_inject_call_answer_recorded_not_forwarded(
    tmp_path: Path, mitm_confdir: Path
) -> None:
    db = tmp_path / "mitm.duckdb"
    injector = tmp_path / "injector.py"
    injector.write_text(INJECTOR)
    later = "2025-01-01T00:00:00Z"
    async with (
        raw_csms() as csms,
        mitmdump(csms.server.port, db, mitm_confdir, scripts=[injector]) as run,
        asyncio.timeout(30),
        connect(f"{run.url}/ocpp/INJ-1", subprotocols=[Subprotocol("ocpp1.6")]) as charger,
    ):
        peer = await asyncio.wait_for(csms.accepted.get(), TIMEOUT)
        t1 = '[2,"t1","DataTransfer",{"vendorId":"inject-to-charger"}]'
        await charger.send(t1)
        assert await peer.recv() == t1
        injected = json.loads(await charger.recv())  # the CALL ocproxy.inject sent
        assert injected[0] == 2
        assert injected[2:] == ["GetConfiguration", {"key": ["HeartbeatInterval"]}]
        x = injected[1]
        assert str(uuid.UUID(x)) == x
        await peer.send('[3,"t1",{"status":"Accepted"}]')
        assert await charger.recv() == '[3,"t1",{"status":"Accepted"}]'
        await charger.send(f'[3,"{x}",{{"configurationKey":[]}}]')  # answer: not forwarded
        await charger.send('[2,"t2","Heartbeat",{}]')
        assert await peer.recv() == '[2,"t2","Heartbeat",{}]'
        await peer.send(f'[3,"t2",{{"currentTime":"{later}"}}]')
        assert await charger.recv() == f'[3,"t2",{{"currentTime":"{later}"}}]'

        t3 = '[2,"t3","DataTransfer",{"vendorId":"inject-to-csms"}]'
        await charger.send(t3)
        got = [json.loads(await peer.recv()) for _ in range(2)]
        assert json.loads(t3) in got
        (to_csms,) = [m for m in got if m[1] != "t3"]
        assert to_csms[0] == 2
        assert to_csms[2:] == ["Heartbeat", {}]
        y = to_csms[1]
        await peer.send(f'[3,"{y}",{{"currentTime":"{later}"}}]')  # answer: not forwarded
        await peer.send('[3,"t3",{"status":"Accepted"}]')
        assert await charger.recv() == '[3,"t3",{"status":"Accepted"}]'
        await charger.close(1000, "bye")
    assert run.returncode == 0, run.output
    assert any(f"injected GetConfiguration CALL {x}" in line for line in run.ocproxy_lines())
    assert any("payload must be a JSON object" in line for line in run.lines), run.output
    # ocproxy_keep_messages is off: the flow never holds more than the latest message.
    assert "injector: at most 1 messages held" in run.output

    row = connection(db, "INJ-1")
    recorded = frames(db, row["connection_id"])
    assert [f["seq"] for f in recorded] == list(range(10))
    marked = [
        (f["direction"], f["message_type"], f["message_id"], f["action"], f["pairing"])
        for f in recorded
        if f["injected"]
    ]
    assert marked == [
        ("to_charger", 2, x, "GetConfiguration", None),
        ("to_csms", 3, x, "GetConfiguration", "matched"),
        ("to_csms", 2, y, "Heartbeat", None),
        ("to_charger", 3, y, "Heartbeat", "matched"),
    ]
    by_id = {(f["message_id"], f["message_type"]): f for f in recorded}
    assert by_id[(x, 3)]["request_seq"] == by_id[(x, 2)]["seq"]
    assert by_id[(y, 3)]["request_seq"] == by_id[(y, 2)]["seq"]
    assert {f["message_id"] for f in recorded if not f["injected"]} == {"t1", "t2", "t3"}


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("problem", ["missing-directory", "not-a-database"])
async def test_unusable_database_keeps_mitmdump_relaying(
    problem: str, tmp_path: Path, mitm_confdir: Path
) -> None:
    if problem == "missing-directory":
        db = tmp_path / "no" / "such" / "dir" / "rec.duckdb"
    else:
        db = tmp_path / "notes.duckdb"
        db.write_text("another program's file, not a DuckDB database\n" * 100)
    before = db.read_bytes() if db.exists() else None
    # The installed addon (ocproxy addon-path), run from outside the repository.
    installed = addon_path()
    async with (
        raw_csms() as csms,
        mitmdump(csms.server.port, db, mitm_confdir, addon=installed, cwd=tmp_path) as run,
    ):
        async with asyncio.timeout(30):
            await exchange_ocpp(run.url, csms)
            await exchange_ocpp(run.url, csms)
    assert run.returncode == 0, run.output
    lines = run.ocproxy_lines()
    failures = [line for line in lines if "cannot open recording" in line]
    assert len(failures) == 1, run.output
    assert str(db) in failures[0]
    assert "NOT recorded" in failures[0]
    assert any("4 OCPP frames were relayed but not recorded" in line for line in lines), run.output
    assert (db.read_bytes() if db.exists() else None) == before  # left as it was


async def exchange_ocpp(url: str, csms: RawCsms, proxy: str | None = None) -> None:
    async with connect(
        f"{url}/ocpp/CP-X", subprotocols=[Subprotocol("ocpp1.6")], proxy=proxy
    ) as charger:
        peer = await asyncio.wait_for(csms.accepted.get(), TIMEOUT)
        await charger.send('[2,"h1","Heartbeat",{}]')
        assert await peer.recv() == '[2,"h1","Heartbeat",{}]'
        await peer.send('[3,"h1",{"currentTime":"2025-01-01T00:00:00Z"}]')
        assert await charger.recv() == '[3,"h1",{"currentTime":"2025-01-01T00:00:00Z"}]'
    await peer.wait_closed()


async def test_without_ocproxy_db_one_line_and_nothing_said_lost(
    tmp_path: Path, mitm_confdir: Path
) -> None:
    async with raw_csms() as csms, mitmdump(csms.server.port, None, mitm_confdir) as run:
        async with asyncio.timeout(30):
            await exchange_ocpp(run.url, csms)
    assert run.returncode == 0, run.output
    assert run.ocproxy_lines() == [
        line for line in run.lines if "ocproxy: not recording (set ocproxy_db=FILE" in line
    ], run.output
    assert len(run.ocproxy_lines()) == 1, run.output


@pytest.mark.parametrize("keep_ids", [False, True], ids=["pseudonymised", "kept"])
async def test_driver_ids_are_pseudonymised_as_by_the_proxy(
    tmp_path: Path, mitm_confdir: Path, monkeypatch: pytest.MonkeyPatch, keep_ids: bool
) -> None:
    key = "mitm-test-key"
    monkeypatch.setenv("OCPROXY_ID_KEY", key)  # mitmdump inherits it
    db = tmp_path / "ids.duckdb"
    call = '[2,"a1","Authorize",{"idTag":"DRIVER12345678"}]'
    options = ["ocproxy_keep_ids=true"] if keep_ids else []
    async with (
        raw_csms() as csms,
        mitmdump(csms.server.port, db, mitm_confdir, options=options) as run,
        connect(f"{run.url}/ocpp/CP-ID", subprotocols=[Subprotocol("ocpp1.6")]) as charger,
    ):
        peer = await asyncio.wait_for(csms.accepted.get(), TIMEOUT)
        await charger.send(call)
        assert await peer.recv() == call  # forwarding is never changed
    assert run.returncode == 0, run.output
    (row,) = rows(db, "SELECT raw, payload, redacted FROM frames")
    if keep_ids:
        assert (bytes(row["raw"]).decode(), row["redacted"]) == (call, None)
        return
    tag = {"idTag": "DRIVER12345678"}
    expected = Redactor(key.encode()).redact("Authorize", tag, response=False)
    assert bytes(row["raw"]).decode() == json.dumps(
        [2, "a1", "Authorize", expected.payload], separators=(",", ":")
    )
    assert row["redacted"] == ["$.idTag (pseudonymised)"]


def test_an_unparsable_option_value_stops_mitmdump(tmp_path: Path, mitm_confdir: Path) -> None:
    """mitmproxy would otherwise drop every ocproxy option with it, ocproxy_db included,
    and relay without recording or a word."""
    result = subprocess.run(
        [
            str(MITMDUMP), "--mode", "reverse:http://127.0.0.1:1@127.0.0.1:0",
            "--set", f"confdir={mitm_confdir}", "-s", str(SHIM),
            "--set", f"ocproxy_db={tmp_path / 'x.duckdb'}", "--set", "ocproxy_audit=maybe",
        ],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "--set ocproxy_audit=maybe: give true or false" in result.stdout + result.stderr


async def test_unreachable_csms_recorded_like_the_proxy(
    tmp_path: Path, mitm_confdir: Path, proxy_factory: Any
) -> None:
    db = tmp_path / "mitm.duckdb"
    port = closed_port()
    # connection_strategy=lazy: mitmproxy reads the handshake before it dials the CSMS. With
    # the default (eager) it dials first and, failing, closes the charger's connection
    # before any request was read, so there is no flow (no path, no identity) to record.
    lazy = ["connection_strategy=lazy"]
    async with mitmdump(port, db, mitm_confdir, options=lazy) as run:
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"{run.url}/ocpp/CP-502", subprotocols=[Subprotocol("ocpp1.6")])
        assert refused.value.response.status_code == 502
    async with proxy_factory(upstream=f"ws://127.0.0.1:{port}") as (proxy, box):
        with pytest.raises(InvalidStatus):
            await connect(f"{proxy.url}/ocpp/CP-502", subprotocols=[Subprotocol("ocpp1.6")])
    mitm_row, proxy_row = connection(db, "CP-502"), connection(box[0].path, "CP-502")
    for row in (mitm_row, proxy_row):
        assert (row["handshake_status"], row["closed_by"], row["subprotocol"]) == (
            502,
            "proxy",
            None,
        )
        assert row["close_reason"].startswith("CSMS unreachable: ")
    assert mitm_row["upstream_url"] == proxy_row["upstream_url"]


async def test_regular_proxy_mode_and_idle_timeout(tmp_path: Path, mitm_confdir: Path) -> None:
    """Chargers using mitmdump as an HTTP proxy (CONNECT); one idles past tcp_timeout."""
    db = tmp_path / "mitm.duckdb"
    options = ["tcp_timeout=2"]
    async with (
        raw_csms() as csms,
        mitmdump(0, db, mitm_confdir, mode="regular", options=options) as run,
        asyncio.timeout(30),
    ):
        proxy = f"http://127.0.0.1:{run.port}"
        url = f"ws://127.0.0.1:{csms.server.port}"
        await exchange_ocpp(url, csms, proxy=proxy)
        async with connect(
            f"{url}/CP-QUIET",
            subprotocols=[Subprotocol("ocpp1.6")],
            proxy=proxy,
            ping_interval=None,
        ) as quiet:
            await asyncio.wait_for(csms.accepted.get(), TIMEOUT)
            with pytest.raises(ConnectionClosed):
                await quiet.recv()  # mitmproxy cuts it after 2 s without a byte
    print(run.output)
    row = connection(db, "CP-X")
    assert row["upstream_url"] == f"ws://127.0.0.1:{csms.server.port}/ocpp/CP-X"
    assert (row["close_code"], row["closed_by"]) == (1000, "charger")
    assert len(frames(db, row["connection_id"])) == 2
    quiet_row = connection(db, "CP-QUIET")
    assert (quiet_row["close_code"], quiet_row["closed_by"]) == (1006, "proxy")
    assert quiet_row["close_reason"] == "idle for tcp_timeout (2 s): mitmproxy closed it"


# -- the installed addon ---------------------------------------------------------------------------


def test_addon_path_points_at_the_installed_script() -> None:
    path = addon_path()
    assert path.is_file()
    assert path.name == "ocproxy_recorder.py"
    assert "addons = [OcproxyRecorder()]" in path.read_text()


def test_addon_path_command(capsys: pytest.CaptureFixture[str]) -> None:
    from ocproxy.mitm.cli import add_addon_path_command

    parser = argparse.ArgumentParser(prog="ocproxy")
    add_addon_path_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["addon-path"])
    assert args.func(args) == 0
    assert capsys.readouterr().out == f"{addon_path()}\n"
