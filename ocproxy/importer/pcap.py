"""pcap / pcapng captures of OCPP-J as recorder events, through tshark.

Wireshark's own dissectors do the hard parts: TCP reassembly, the HTTP upgrade,
WebSocket framing, unmasking, fragments, permessage-deflate and, with a key log file,
TLS. tshark writes PDML (XML, one ``<packet>`` at a time), read here as a stream: the
``value`` attribute of a field is its bytes in hex, so frames are taken byte for byte.

Per TCP stream: the charger is the side that sent the HTTP upgrade request; its
request (path, subprotocols, headers with the Authorization secret removed, as the
proxy records them) and the server's answer make the connection; each whole WebSocket
message is a frame, in capture order; a close frame (or the end of the capture) ends
it. A stream whose upgrade was not captured is not WebSocket to tshark: see
:mod:`ocproxy.importer.midstream`.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ocproxy.core.events import (
    ClosedBy,
    ConnectionClosed,
    ConnectionOpened,
    FrameReceived,
    RecorderEvent,
)
from ocproxy.core.frames import Direction, Opcode
from ocproxy.core.handshake import headers_for_record, identity_from_path, offered_subprotocols
from ocproxy.errors import ConfigError

INSTALL_HINT = (
    "tshark is not installed: apt-get install tshark (Debian, Ubuntu), "
    "dnf install wireshark-cli (Fedora), brew install wireshark (macOS)"
)
SOURCE = "import:pcap"
_FILTER = "http.request or http.response or websocket"


@dataclass(frozen=True)
class CaptureOptions:
    path: str
    tls_keylog: str | None = None
    ports: tuple[int, ...] = ()  # also decode these TCP ports as HTTP (or TLS with keys)


# An HTTP request that asks for a WebSocket upgrade, whatever port it went to; a TLS
# ClientHello (handshake record, type 1), whatever port.
_UPGRADE = r'tcp.payload matches "^GET " && tcp.payload matches "(?i)\r\nupgrade:[ \t]*websocket"'
_HELLO = "tcp.payload[0] == 0x16 && tcp.payload[5] == 0x01"


@dataclass(frozen=True)
class Ports:
    """What the first pass found: where upgrades and TLS connections went."""

    http: tuple[int, ...] = ()
    tls: tuple[int, ...] = ()
    tls_streams: frozenset[str] = frozenset()


def tshark_binary() -> str:
    binary = shutil.which("tshark")
    if binary is None:
        raise ConfigError(INSTALL_HINT)
    return binary


def tshark_command(options: CaptureOptions, found: Ports | None = None) -> list[str]:
    """The PDML pass, each port found decoded as HTTP (or TLS, with keys)."""
    found = found or Ports()
    command = [tshark_binary(), "-r", options.path, "-n", "-Y", _FILTER, "-T", "pdml"]
    tls = set(found.tls) | (set(options.ports) if options.tls_keylog else set())
    http = (set(found.http) | (set() if options.tls_keylog else set(options.ports))) - tls
    if options.tls_keylog:
        command += ["-o", f"tls.keylog_file:{options.tls_keylog}"]
        command += [arg for port in sorted(tls) for arg in ("-d", f"tcp.port=={port},tls")]
    command += [arg for port in sorted(http) for arg in ("-d", f"tcp.port=={port},http")]
    return command


def find_ports(options: CaptureOptions) -> Ports:
    """Where plain upgrade requests and TLS ClientHellos went.

    tshark takes traffic on a port it does not know for HTTP (or TLS) only by
    heuristics, and traffic on a port registered to another protocol (a proxy on a
    random port may get one) for that protocol: this quick first pass finds them, so
    that the second one decodes each as HTTP and WebSocket (TLS first, with keys).
    """
    fields = ["-T", "fields", "-e", "tcp.stream", "-e", "tcp.dstport", "-e", "tcp.payload"]
    done = subprocess.run(
        [tshark_binary(), "-r", options.path, "-n", "-Y", f"({_UPGRADE}) || ({_HELLO})", *fields],
        capture_output=True,
        check=False,
    )
    http: set[int] = set()
    tls: set[int] = set()
    streams: set[str] = set()
    for line in done.stdout.decode("ascii", "replace").splitlines():
        stream, port, payload = [*line.split("\t"), "", "", ""][:3]
        if not port.isdigit():
            continue
        if payload.replace(":", "").startswith("16"):
            tls.add(int(port))
            streams.add(stream)
        else:
            http.add(int(port))
    return Ports(tuple(sorted(http)), tuple(sorted(tls)), frozenset(streams))


@dataclass
class _Stream:
    number: str
    client: tuple[str, str]  # (address, port) of the side that sent the upgrade request
    ts: float
    path: str
    headers: list[tuple[str, str]]
    connection_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    seq: int = 0
    # per direction: the opcode of the message being received and whether it is compressed
    first: dict[Direction, tuple[int, bool]] = field(default_factory=dict)
    opened: bool = False
    closed: bool = False


@dataclass
class CaptureEvents:
    """Reads tshark's PDML and yields the events ``ocproxy proxy`` would have recorded."""

    options: CaptureOptions
    streams: dict[str, _Stream] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    messages: int = 0
    packets: int = 0
    tls_streams: frozenset[str] = frozenset()  # TCP streams that began a TLS handshake
    uninflated: int = 0  # fragmented compressed messages tshark did not inflate

    def read(self, pdml: IO[bytes]) -> Iterator[RecorderEvent]:
        try:
            for _event, element in ET.iterparse(pdml, events=("end",)):
                if element.tag != "packet":
                    continue
                self.packets += 1
                yield from self._packet(element)
                element.clear()
        except ET.ParseError:
            self.notes.append("tshark's output ended early: imported what came before")
        yield from self._finish()

    def _packet(self, packet: ET.Element) -> Iterator[RecorderEvent]:
        fields = _top_fields(packet)
        ts = float(fields.get("frame.time_epoch", "0"))
        number = fields.get("tcp.stream", "")
        source = (
            fields.get("ip.src") or fields.get("ipv6.src") or "",
            fields.get("tcp.srcport", ""),
        )
        protos = packet.findall("proto")
        for index, proto in enumerate(protos):
            name = proto.get("name")
            if name == "http":
                yield from self._http(proto, number, source, ts)
            elif name == "websocket":
                # A binary payload, or a reassembled message's fragments, come in the
                # wrapper that follows the frame's own element.
                after = protos[index + 1] if index + 1 < len(protos) else None
                wrapper = after if after is not None and after.get("name") != "websocket" else None
                yield from self._websocket(proto, wrapper, number, source, ts)

    def _http(
        self, proto: ET.Element, number: str, source: tuple[str, str], ts: float
    ) -> Iterator[RecorderEvent]:
        values = _fields(proto)
        if "http.request.method" in values:
            uri = values.get("http.request.uri", "/")
            headers = _headers(proto, "http.request.line")
            self.streams[number] = _Stream(number, source, ts, uri, headers)
            return
        stream = self.streams.get(number)
        status = values.get("http.response.code")
        if stream is None or status is None or stream.opened:
            return
        stream.opened = True
        yield _opened(stream, int(status), _headers(proto, "http.response.line"), ts)
        if int(status) != 101:
            stream.closed = True
            yield ConnectionClosed(stream.connection_id, ts, None, None, ClosedBy.CSMS)

    def _websocket(
        self,
        proto: ET.Element,
        wrapper: ET.Element | None,
        number: str,
        source: tuple[str, str],
        ts: float,
    ) -> Iterator[RecorderEvent]:
        stream = self.streams.get(number)
        if stream is None or not stream.opened:
            return  # no upgrade captured: the third pass reads it (midstream)
        if stream.closed:
            return
        values = _fields(proto)
        opcode = int(values.get("websocket.opcode", "0"))
        direction = Direction.TO_CSMS if source == stream.client else Direction.TO_CHARGER
        if opcode == 8:
            yield _closed(stream, values, direction, ts)
            stream.closed = True
            return
        whole = values.get("websocket.fin") == "1"
        extra = _fields(wrapper) if wrapper is not None else {}
        if opcode in (1, 2):
            stream.first[direction] = (opcode, values.get("websocket.pmc") == "1")
        if not whole or opcode not in (0, 1, 2):
            return  # a fragment (its message comes with the last one), a ping or a pong
        kind, compressed = stream.first.get(direction, (1, False))
        if opcode == 0 and compressed:
            # tshark 4.0 reassembles a fragmented compressed message without inflating it
            self.uninflated += 1
            return
        data = _payload(proto) if "data.data" not in extra else _payload(wrapper)
        if data is None:
            return
        text = (opcode or kind) == 1
        self.messages += 1
        stream.seq += 1
        yield FrameReceived(
            stream.connection_id,
            stream.seq - 1,
            ts,
            direction,
            Opcode.TEXT if text else Opcode.BINARY,
            data,
            len(data),
            identity=identity_from_path(stream.path),
        )

    def _finish(self) -> Iterator[RecorderEvent]:
        # Streams whose upgrade was not captured are read by the third pass (midstream).
        if self.uninflated:
            self.notes.append(
                f"{self.uninflated} fragmented compressed message(s) skipped: tshark "
                "reassembles them without inflating them"
            )
        locked = self.tls_streams - set(self.streams)
        if locked:
            self.notes.append(
                f"{len(locked)} TLS connection(s) skipped: no keys (or not theirs) to decrypt them "
                "(--tls-keylog FILE, as written by SSLKEYLOGFILE)"
            )
        yield from ()

    @property
    def locked(self) -> int:
        """TLS connections that could not be read: no keys for them."""
        return len(self.tls_streams - set(self.streams))


def _top_fields(packet: ET.Element) -> dict[str, str]:
    wanted = ("frame.time_epoch", "ip.src", "ipv6.src", "tcp.srcport", "tcp.stream")
    found: dict[str, str] = {}
    for proto in packet.findall("proto"):
        if proto.get("name") in ("frame", "ip", "ipv6", "tcp"):
            for item in proto.iter("field"):
                name = item.get("name")
                if name in wanted and name not in found:
                    found[name] = item.get("show", "")
    return found


def _fields(proto: ET.Element) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in proto.iter("field"):
        name = item.get("name")
        if name and name not in out:
            out[name] = item.get("show", "")
    return out


def _headers(proto: ET.Element, name: str) -> list[tuple[str, str]]:
    headers = []
    for item in proto.iter("field"):
        if item.get("name") != name:
            continue
        line = bytes.fromhex(item.get("value", "")).decode("latin-1").rstrip("\r\n")
        key, _, value = line.partition(":")
        headers.append((key.strip(), value.strip()))
    return headers


def _payload(proto: ET.Element | None) -> bytes | None:
    """The message's bytes: unmasked, inflated and reassembled by tshark."""
    if proto is None:
        return None
    for name in ("websocket.payload.text", "data.data", "websocket.payload.binary"):
        for item in proto.iter("field"):
            if item.get("name") == name and item.get("value") is not None:
                return bytes.fromhex(item.get("value", ""))
    return b""


def _opened(
    stream: _Stream, status: int, response: list[tuple[str, str]], ts: float
) -> ConnectionOpened:
    offered = offered_subprotocols(
        value for name, value in stream.headers if name.lower() == "sec-websocket-protocol"
    )
    chosen = next((v for n, v in response if n.lower() == "sec-websocket-protocol"), None)
    return ConnectionOpened(
        connection_id=stream.connection_id,
        ts=stream.ts,
        identity=identity_from_path(stream.path),
        path=stream.path,
        remote_addr=f"{stream.client[0]}:{stream.client[1]}",
        offered_subprotocols=tuple(offered),
        subprotocol=chosen if status == 101 else None,
        upstream_url=None,
        handshake_status=status,
        request_headers=tuple(headers_for_record(stream.headers)),
        response_headers=tuple(response),
        source=SOURCE,
    )


def _closed(
    stream: _Stream, values: dict[str, str], direction: Direction, ts: float
) -> ConnectionClosed:
    code = values.get("websocket.payload.close.status_code")
    reason = values.get("websocket.payload.close.reason")
    by = ClosedBy.CHARGER if direction is Direction.TO_CSMS else ClosedBy.CSMS
    return ConnectionClosed(stream.connection_id, ts, int(code) if code else None, reason, by)


def run_tshark(options: CaptureOptions) -> tuple[subprocess.Popen[bytes], Ports]:
    """tshark writing the capture's PDML, and what the first pass found."""
    if not Path(options.path).is_file():
        raise ConfigError(f"{options.path}: no such file or directory")
    ports = find_ports(options)
    command = tshark_command(options, ports)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE), ports
