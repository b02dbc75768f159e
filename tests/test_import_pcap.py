"""``ocproxy import`` of a real capture: tcpdump records the loopback traffic between
real ``ocpp`` chargers and a real proxy (in front of a simulated CSMS) while the proxy
records it too; the capture, imported, must give the proxy's rows, row by row.

tcpdump and tshark come from ``scripts/install-capture-tools.sh`` (run by ``make
test``, and here again when one is missing).
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from helpers_cli import run_ocproxy

from ocproxy.audit.auditor import Auditor
from ocproxy.core.redaction import Redactor
from ocproxy.sim.charger import ChargerSpec, run_charger
from ocproxy.sim.csms import SimCsms

REPO = Path(__file__).resolve().parents[1]
KEY = "import-test-key"
SPECS = [
    ChargerSpec(identity="CAP-16", version="1.6", meter_samples=3, heartbeats=2),
    ChargerSpec(identity="CAP-201", version="2.0.1", meter_samples=2),
]
# Columns that must be equal row by row (ts and latency: close, not equal: the proxy
# stamps a frame when its process reads it, the capture when the kernel saw it).
FRAME_COLUMNS = (
    "seq", "direction", "opcode", "raw", "size", "message_type", "message_id", "action",
    "parse_status", "parse_detail", "payload", "error_code", "error_description",
    "request_seq", "pairing", "injected", "redacted",
)  # fmt: skip
CONNECTION_COLUMNS = (
    "identity", "path", "offered_subprotocols", "subprotocol", "ocpp_version",
    "handshake_status", "request_headers", "close_code",
)  # fmt: skip


@pytest.fixture(scope="module")
def capture_tools() -> None:
    if shutil.which("tcpdump") is None or shutil.which("tshark") is None:
        done = subprocess.run(
            ["bash", str(REPO / "scripts" / "install-capture-tools.sh")],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if shutil.which("tcpdump") is None or shutil.which("tshark") is None:
            pytest.skip(f"tcpdump/tshark missing and not installable: {done.stderr.strip()}")


class Tcpdump:
    """tcpdump on loopback, writing every packet of one TCP port to a pcap file."""

    def __init__(self, path: Path, port: int) -> None:
        self.path = path
        self.process = subprocess.Popen(
            ["tcpdump", "-i", "lo", "-U", "--immediate-mode", "-s", "0", "-w", str(path),
             f"tcp port {port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip

    def wait_listening(self, port: int) -> None:
        """Return once packets to ``port`` are written: tcpdump says "listening on" a
        moment before its filter is attached, so a probe connection must show up."""
        assert self.process.stderr is not None
        line = self.process.stderr.readline()
        assert b"listening on" in line, line
        deadline = time.monotonic() + 30
        while self.path.stat().st_size <= 24:  # the pcap header alone
            assert time.monotonic() < deadline, "tcpdump captured nothing"
            with socket.create_connection(("127.0.0.1", port)):
                pass
            time.sleep(0.05)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=30)
        if self.process.stderr is not None:
            self.process.stderr.close()


@pytest.fixture
def tcpdump_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[Tcpdump] = []

    def start(port: int) -> Tcpdump:
        dump = Tcpdump(tmp_path / "capture.pcap", port)
        started.append(dump)
        return dump

    yield start
    for dump in started:
        if dump.process.poll() is None:
            dump.process.kill()
            dump.process.wait()
        if dump.process.stderr is not None:
            dump.process.stderr.close()


def _rows(db: Path, sql: str) -> list[dict[str, Any]]:
    with duckdb.connect(str(db), read_only=True) as con:
        cursor = con.execute(sql)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


async def test_a_capture_imports_as_the_proxy_recorded_it(
    capture_tools: None,
    proxy_factory: Any,
    tcpdump_factory: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("OCPROXY_ID_KEY", KEY)
    recorder = {"auditor": Auditor(), "redactor": Redactor(KEY.encode())}  # as the proxy runs
    async with (
        SimCsms(initiate=True) as csms,
        proxy_factory(recorder_options=recorder, upstream=csms.url) as (proxy, box),
    ):
        dump = tcpdump_factory(proxy.server.port)
        await asyncio.to_thread(dump.wait_listening, proxy.server.port)
        async with asyncio.timeout(60):
            for spec in SPECS:
                await run_charger(proxy.url + "/ocpp", spec)
        await asyncio.sleep(0.3)  # the last close reaches tcpdump
        await asyncio.to_thread(dump.stop)
    recorded = box[0].path
    imported = tmp_path / "imported.duckdb"
    code, out, err = run_ocproxy(capsys, "import", dump.path, "--db", imported, "--quiet")
    assert (code, err) == (0, ""), err
    assert "2 connections" in out
    # Connections: as the charger asked and the CSMS answered.
    columns = ", ".join(CONNECTION_COLUMNS)
    # (The proxy also records the probe that showed tcpdump capturing: it has no path.)
    order = "WHERE path <> '' ORDER BY identity"
    assert _rows(imported, f"SELECT {columns} FROM connections {order}") == _rows(
        recorded, f"SELECT {columns} FROM connections {order}"
    )
    assert {r["source"] for r in _rows(imported, "SELECT source FROM connections")} == {
        "import:pcap"
    }
    # Frames, row by row in each direction (TCP keeps each direction's order; a CALL
    # crossing an answer may take its seq in another order at the proxy, which reads
    # both legs): the same bytes, parse, pairing, redaction and pseudonyms.
    same = ("identity", *(c for c in FRAME_COLUMNS if c not in ("seq", "request_seq")))
    frames = (
        "SELECT identity, {columns}, epoch_us(ts) AS us FROM frames "
        "JOIN connections USING (connection_id) ORDER BY identity, direction, seq"
    ).format(columns=", ".join(FRAME_COLUMNS))
    ours, theirs = _rows(imported, frames), _rows(recorded, frames)
    assert len(ours) == len(theirs) > 40
    for mine, proxy_row in zip(ours, theirs, strict=True):
        assert {k: mine[k] for k in same} == {k: proxy_row[k] for k in same}
        assert abs(mine["us"] - proxy_row["us"]) < 250_000  # same moment, other clock
    assert any(r["redacted"] for r in ours)  # the idTags were pseudonymised alike
    # The same audit on the same frames.
    findings = (
        "SELECT c.identity, f.rule, f.path FROM findings AS f "
        "JOIN connections AS c USING (connection_id) WHERE c.path <> '' ORDER BY ALL"
    )
    assert _rows(imported, findings) == _rows(recorded, findings)


def test_a_capture_without_websocket_says_so(
    capture_tools: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.pcap"
    # A pcap header and no packet: a valid, empty capture.
    empty.write_bytes(bytes.fromhex("d4c3b2a1020004000000000000000000ffff000001000000"))
    code, out, err = run_ocproxy(capsys, "import", empty, "--db", tmp_path / "x.duckdb")
    assert (code, err) == (0, "")
    assert "0 messages" in out
    assert f"no WebSocket upgrade in {empty}: nothing to import" in out


def test_a_truncated_capture_imports_what_it_holds(
    capture_tools: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    whole = tmp_path / "whole.pcap"
    _write_pcap(whole)
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(whole.read_bytes()[:-20])  # the last packet is cut short
    db = tmp_path / "x.duckdb"
    code, out, err = run_ocproxy(capsys, "import", cut, "--db", db, "--quiet")
    assert (code, err) == (0, "")
    assert "tshark: " in out
    assert "imported what came before" in out
    assert _rows(db, "SELECT count(*) AS n FROM frames") == [{"n": 1}]


def _write_pcap(path: Path, *, answered: bool = True) -> None:
    """A literal capture: an upgrade, its 101 (unless not ``answered``: the capture
    missed it), one Heartbeat each way."""
    import struct

    def packet(src: int, dst: int, seq: int, ack: int, payload: bytes, t: int) -> bytes:
        tcp = struct.pack("!HHIIBBHHH", src, dst, seq, ack, 0x50, 0x18, 65535, 0, 0) + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0,
                         bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1])) + tcp  # fmt: skip
        frame = b"\x00" * 12 + b"\x08\x00" + ip
        return struct.pack("<IIII", 1_767_225_600 + t, 0, len(frame), len(frame)) + frame

    request = (
        b"GET /ocpp/CP-CUT HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Protocol: ocpp1.6\r\n\r\n"
    )
    response = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"Sec-WebSocket-Protocol: ocpp1.6\r\n\r\n"
    )
    call = b'[2,"1","Heartbeat",{}]'
    answer = b'[3,"1",{"currentTime":"2026-01-01T00:00:00Z"}]'
    ws_call = bytes([0x81, 0x80 | len(call)]) + b"\x00\x00\x00\x00" + call  # zero mask
    ws_answer = bytes([0x81, len(answer)]) + answer
    c, s = 1000, 5000
    body = packet(40000, 9000, c, s, request, 0)
    if answered:
        body += packet(9000, 40000, s, c + len(request), response, 1)
    body += packet(40000, 9000, c + len(request), s + len(response), ws_call, 2)
    body += packet(9000, 40000, s + len(response), c + len(request) + len(ws_call), ws_answer, 3)
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    path.write_bytes(header + body)


def test_an_upgrade_whose_answer_the_capture_missed_is_read_from_its_frames(
    capture_tools: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capture = tmp_path / "unanswered.pcap"
    _write_pcap(capture, answered=False)
    db = tmp_path / "x.duckdb"
    code, out, err = run_ocproxy(capsys, "import", capture, "--db", db, "--quiet")
    assert (code, err) == (0, "")
    assert "2 messages, 1 connections" in out
    rows = _rows(
        db,
        "SELECT identity, source, direction, raw FROM frames JOIN connections "
        "USING (connection_id) ORDER BY seq",
    )
    assert [(r["identity"], r["source"], r["direction"], r["raw"]) for r in rows] == [
        ("127.0.0.1:40000", "import:pcap:mid-connection", "to_csms", b'[2,"1","Heartbeat",{}]'),
        ("127.0.0.1:40000", "import:pcap:mid-connection", "to_charger",
         b'[3,"1",{"currentTime":"2026-01-01T00:00:00Z"}]'),
    ]  # fmt: skip


async def test_wss_reads_with_the_key_log_and_says_so_without(
    capture_tools: None, tcpdump_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real TLS WebSocket (trustme certificates; the client writes its keys as
    SSLKEYLOGFILE would): imported with --tls-keylog, one line without it."""
    import ssl

    import trustme
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.typing import Subprotocol

    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    keylog = tmp_path / "keys.log"
    client_context.keylog_filename = str(keylog)

    async def csms(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send('[3,"1",{"currentTime":"2026-01-01T00:00:00Z"}]')
            del message

    ocpp16 = [Subprotocol("ocpp1.6")]
    async with serve(csms, "127.0.0.1", 0, ssl=server_context, subprotocols=ocpp16) as server:
        port = server.sockets[0].getsockname()[1]
        dump = tcpdump_factory(port)
        await asyncio.to_thread(dump.wait_listening, port)
        url = f"wss://127.0.0.1:{port}/ocpp/CP-TLS"
        async with connect(url, ssl=client_context, subprotocols=ocpp16) as ws:
            await ws.send('[2,"1","Heartbeat",{}]')
            await ws.recv()
        await asyncio.sleep(0.3)
        await asyncio.to_thread(dump.stop)
    locked = tmp_path / "locked.duckdb"
    code, out, _ = run_ocproxy(capsys, "import", dump.path, "--db", locked, "--quiet")
    assert code == 0
    assert "0 messages" in out
    assert "1 TLS connection(s) skipped: no keys (or not theirs) to decrypt them" in out
    opened = tmp_path / "opened.duckdb"
    argv = ["import", dump.path, "--db", opened, "--tls-keylog", keylog, "--quiet"]
    code, out, err = run_ocproxy(capsys, *argv)
    assert (code, err) == (0, "")
    rows = _rows(opened, "SELECT identity, subprotocol, direction, raw FROM frames "
                 "JOIN connections USING (connection_id) ORDER BY seq")  # fmt: skip
    assert [(r["identity"], r["subprotocol"], r["direction"], r["raw"]) for r in rows] == [
        ("CP-TLS", "ocpp1.6", "to_csms", b'[2,"1","Heartbeat",{}]'),
        ("CP-TLS", "ocpp1.6", "to_charger", b'[3,"1",{"currentTime":"2026-01-01T00:00:00Z"}]'),
    ]


async def test_a_capture_begun_mid_connection_imports_from_the_first_whole_frame(
    capture_tools: None,
    proxy_factory: Any,
    tcpdump_factory: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A real capture, cut after the handshake and the first messages: the rest of the
    connection is imported, marked so, and its frames are the proxy's, byte for byte."""
    monkeypatch.setenv("OCPROXY_ID_KEY", KEY)
    recorder = {"auditor": Auditor(), "redactor": Redactor(KEY.encode())}
    async with (
        SimCsms(initiate=True) as csms,
        proxy_factory(recorder_options=recorder, upstream=csms.url) as (proxy, box),
    ):
        port = proxy.server.port
        dump = tcpdump_factory(port)
        await asyncio.to_thread(dump.wait_listening, port)
        async with asyncio.timeout(60):
            await run_charger(proxy.url + "/ocpp", SPECS[0])
        await asyncio.sleep(0.3)
        await asyncio.to_thread(dump.stop)
    packets = await asyncio.to_thread(_websocket_packets, dump.path, port)
    first_kept, _ = packets[3]  # the capture begins after the handshake and 3 packets more
    skipped = sum(count for _, count in packets[:3])
    cut = tmp_path / "cut.pcap"
    _keep_from(dump.path, cut, first_kept)
    imported = tmp_path / "imported.duckdb"
    code, out, err = run_ocproxy(capsys, "import", cut, "--db", imported, "--quiet")
    assert (code, err) == (0, ""), err
    assert "1 connection(s) captured mid-connection (no upgrade seen)" in out
    (conn,) = _rows(
        imported,
        "SELECT identity, path, remote_addr, source, subprotocol, handshake_status, close_code, "
        "closed_by FROM connections",
    )
    (theirs,) = _rows(
        box[0].path,
        "SELECT remote_addr, subprotocol, close_code, closed_by FROM connections "
        "WHERE identity = 'CAP-16'",
    )
    assert conn == {
        "identity": theirs["remote_addr"],  # the charger's address: no frame names it
        "path": "",
        "remote_addr": theirs["remote_addr"],
        "source": "import:pcap:mid-connection",
        "subprotocol": theirs["subprotocol"],  # told by its messages: ocpp1.6
        "handshake_status": 101,
        "close_code": theirs["close_code"],
        "closed_by": theirs["closed_by"],
    }
    columns = "direction, opcode, raw, size, message_type, message_id, parse_status, payload, "
    columns += "error_code, redacted"
    ours = _rows(imported, f"SELECT {columns} FROM frames ORDER BY seq")
    recorded = _rows(
        box[0].path,
        f"SELECT {columns} FROM frames JOIN connections USING (connection_id) "
        "WHERE identity = 'CAP-16' ORDER BY seq",
    )
    assert len(ours) == len(recorded) - skipped > 10
    for direction in ("to_csms", "to_charger"):
        mine = [r for r in ours if r["direction"] == direction]
        proxy_rows = [r for r in recorded if r["direction"] == direction]
        assert mine == proxy_rows[len(proxy_rows) - len(mine) :]


def _websocket_packets(capture: Path, port: int) -> list[tuple[int, int]]:
    """The packets that carry WebSocket frames: their number, and the text messages in each."""
    listed = subprocess.run(
        ["tshark", "-r", str(capture), "-n", "-d", f"tcp.port=={port},http", "-Y",
         "websocket", "-T", "fields", "-e", "frame.number", "-e", "websocket.opcode"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    cells = [line.split("\t") for line in listed]
    return [(int(number), opcodes.split(",").count("1")) for number, opcodes in cells]


def _keep_from(source: Path, target: Path, first: int) -> None:
    """A pcap file of ``source``'s packets from number ``first`` (1-based) on."""
    import struct

    data = source.read_bytes()
    out, at, number = [data[:24]], 24, 1
    while at + 16 <= len(data):
        (length,) = struct.unpack_from("<I", data, at + 8)
        if number >= first:
            out.append(data[at : at + 16 + length])
        at += 16 + length
        number += 1
    target.write_bytes(b"".join(out))
