"""Security profiles 2 and 3 with real TLS on loopback (certificates made by trustme)."""

from __future__ import annotations

import hashlib
import ssl
import subprocess
import sys
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import InvalidStatus

from ocproxy.audit.auditor import Auditor
from ocproxy.proxy.tls import peer_certificate, serial_hex


@dataclass
class Pki:
    dir: Path
    server_ca: trustme.CA
    charger_ca: trustme.CA

    def write(self, name: str, cert: trustme.LeafCert) -> tuple[str, str]:
        cert_path, key_path = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        cert.cert_chain_pems[0].write_to_path(str(cert_path))
        cert.private_key_pem.write_to_path(str(key_path))
        return str(cert_path), str(key_path)

    def ca_file(self, ca: trustme.CA, name: str) -> str:
        path = self.dir / f"{name}-ca.pem"
        ca.cert_pem.write_to_path(str(path))
        return str(path)

    def charger_context(self, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.server_ca.configure_trust(context)  # trusts only the proxy's CA
        if cert is not None:
            cert.configure_cert(context)
        return context


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path, trustme.CA(key_type=trustme.KeyType.RSA), trustme.CA())


async def _echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


def _tls_options(pki: Pki, **extra: Any) -> dict[str, Any]:
    rsa = pki.write(
        "proxy-rsa", pki.server_ca.issue_cert("localhost", key_type=trustme.KeyType.RSA)
    )
    ecdsa = pki.write("proxy-ec", pki.server_ca.issue_cert("localhost"))
    return {"tls_cert": (rsa[0], ecdsa[0]), "tls_key": (rsa[1], ecdsa[1]), **extra}


async def test_charger_trusting_only_the_proxy_ca_connects(pki: Pki, proxy_factory: Any) -> None:
    async with serve(_echo, "127.0.0.1", 0, subprotocols=["ocpp2.0.1"]) as upstream:  # type: ignore[list-item]
        port = upstream.sockets[0].getsockname()[1]
        async with proxy_factory(upstream=f"ws://127.0.0.1:{port}", **_tls_options(pki)) as (
            proxy,
            box,
        ):
            url = f"wss://localhost:{proxy.server.port}/ocpp/CP-TLS"
            async with connect(url, ssl=pki.charger_context(), subprotocols=["ocpp2.0.1"]) as ws:  # type: ignore[list-item]
                await ws.send('[2,"1","Heartbeat",{}]')
                assert await ws.recv() == '[2,"1","Heartbeat",{}]'
                assert ws.transport.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
    (connection,) = box[0].connections()
    assert connection["tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert connection["client_cert_subject"] is None


@pytest.mark.parametrize("key_type", [trustme.KeyType.RSA, trustme.KeyType.ECDSA])
async def test_rsa_and_ecdsa_only_chargers_both_connect(
    pki: Pki, proxy_factory: Any, key_type: trustme.KeyType
) -> None:
    """TLS 1.2 chargers limited to one signature algorithm each find their certificate."""
    async with serve(_echo, "127.0.0.1", 0) as upstream:
        port = upstream.sockets[0].getsockname()[1]
        async with proxy_factory(upstream=f"ws://127.0.0.1:{port}", **_tls_options(pki)) as (
            proxy,
            _box,
        ):
            context = pki.charger_context()
            context.maximum_version = ssl.TLSVersion.TLSv1_2
            suite = (
                "ECDHE-RSA-AES128-GCM-SHA256"
                if key_type is trustme.KeyType.RSA
                else ("ECDHE-ECDSA-AES128-GCM-SHA256")
            )
            context.set_ciphers(suite)
            async with connect(f"wss://localhost:{proxy.server.port}/CP", ssl=context) as ws:
                cipher = ws.transport.get_extra_info("ssl_object").cipher()
                assert cipher[0] == suite


async def test_tls_1_1_client_is_refused(pki: Pki, proxy_factory: Any) -> None:
    async with serve(_echo, "127.0.0.1", 0) as upstream:
        port = upstream.sockets[0].getsockname()[1]
        async with proxy_factory(upstream=f"ws://127.0.0.1:{port}", **_tls_options(pki)) as (
            proxy,
            _box,
        ):
            context = pki.charger_context()
            with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated: that is the point
                warnings.simplefilter("ignore", DeprecationWarning)
                context.minimum_version = ssl.TLSVersion.TLSv1
                context.maximum_version = ssl.TLSVersion.TLSv1_1
            context.set_ciphers("DEFAULT@SECLEVEL=0")
            # An SSL alert or a reset, depending on what the client's OpenSSL still offers.
            with pytest.raises(OSError):  # noqa: PT011 - which OSError depends on OpenSSL
                await connect(f"wss://localhost:{proxy.server.port}/CP", ssl=context)


async def _mtls_attempt(
    pki: Pki, proxy_factory: Any, cert: trustme.LeafCert, identity: str, **options: Any
) -> tuple[Exception | None, Any]:
    client_ca = pki.ca_file(pki.charger_ca, "chargers")
    async with serve(_echo, "127.0.0.1", 0, subprotocols=["ocpp2.0.1"]) as upstream:  # type: ignore[list-item]
        port = upstream.sockets[0].getsockname()[1]
        async with proxy_factory(
            recorder_options={"auditor": Auditor()},
            upstream=f"ws://127.0.0.1:{port}",
            **_tls_options(pki, client_ca=client_ca, **options),
        ) as (proxy, box):
            url = f"wss://localhost:{proxy.server.port}/ocpp/{identity}"
            error: Exception | None = None
            try:
                async with connect(
                    url,
                    ssl=pki.charger_context(cert),
                    subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
                ) as ws:
                    await ws.send('[2,"1","Heartbeat",{}]')
                    await ws.recv()
            except (ssl.SSLError, OSError, InvalidStatus) as exc:
                error = exc
            except Exception as exc:  # websockets wraps some TLS failures
                error = exc
    return error, box[0]


async def test_mtls_valid_certificate_is_recorded(pki: Pki, proxy_factory: Any) -> None:
    cert = pki.charger_ca.issue_cert("CP-17", common_name="CP-17")
    error, recording = await _mtls_attempt(pki, proxy_factory, cert, "CP-17")
    assert error is None
    (connection,) = recording.connections()
    assert connection["client_cert_common_name"] == "CP-17"
    assert "CN=CP-17" in connection["client_cert_subject"]
    assert len(connection["client_cert_fingerprint"]) == 64
    issued = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())
    # As `openssl x509 -serial` prints it: hex in whole bytes, leading zero kept.
    serial = connection["client_cert_serial"]
    assert len(serial) % 2 == 0
    assert int(serial, 16) == issued.serial_number
    assert (
        connection["client_cert_fingerprint"]
        == hashlib.sha256(issued.public_bytes(serialization.Encoding.DER)).hexdigest()
    )
    assert recording.rows("SELECT rule FROM findings") == []


def test_serials_are_printed_as_openssl_prints_them() -> None:
    assert [serial_hex(n) for n in (0x0F72B1, 0xF72B1, 0x1, 0xABCD)] == [
        "0F72B1",
        "0F72B1",
        "01",
        "ABCD",
    ]


@pytest.mark.parametrize("problem", ["expired", "wrong-ca", "none"])
async def test_mtls_bad_certificates_are_refused(
    pki: Pki, proxy_factory: Any, problem: str
) -> None:
    if problem == "expired":
        past = datetime.now(UTC) - timedelta(days=30)
        cert = pki.charger_ca.issue_cert(
            "CP-17", common_name="CP-17", not_before=past - timedelta(days=1), not_after=past
        )
    elif problem == "wrong-ca":
        cert = trustme.CA().issue_cert("CP-17", common_name="CP-17")
    else:
        cert = None
    error, recording = await _mtls_attempt(pki, proxy_factory, cert, "CP-17")  # type: ignore[arg-type]
    assert error is not None
    # Refused by the TLS layer, before any HTTP: recorded with its reason all the same.
    (connection,) = recording.connections()
    assert connection["handshake_status"] == 495
    assert connection["close_reason"].startswith("TLS handshake failed")
    assert connection["remote_addr"].startswith("127.0.0.1:")
    assert connection["closed_by"] == "proxy"


async def test_mtls_wrong_identity_is_a_finding_or_a_refusal(pki: Pki, proxy_factory: Any) -> None:
    cert = pki.charger_ca.issue_cert("CP-OTHER", common_name="CP-OTHER")
    error, recording = await _mtls_attempt(pki, proxy_factory, cert, "CP-17")
    assert error is None
    assert [r["rule"] for r in recording.rows("SELECT rule FROM findings")] == [
        "client-cert-identity-mismatch"
    ]
    error, recording = await _mtls_attempt(
        pki, proxy_factory, cert, "CP-17", strict_client_cert=True
    )
    assert isinstance(error, InvalidStatus)
    assert error.response.status_code == 403
    assert [c["handshake_status"] for c in recording.connections()][-1] == 403


async def test_csms_sees_proxy_client_cert_and_forwarded_header(
    pki: Pki, proxy_factory: Any
) -> None:
    csms_ca = trustme.CA()
    proxy_ca = trustme.CA()
    csms_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    csms_ca.issue_cert("localhost", "127.0.0.1").configure_cert(csms_context)
    proxy_ca.configure_trust(csms_context)
    csms_context.verify_mode = ssl.CERT_REQUIRED
    seen: list[tuple[Any, Any]] = []

    async def csms(ws: ServerConnection) -> None:
        peer = peer_certificate(ws.transport.get_extra_info("ssl_object"))
        assert ws.request is not None
        seen.append((peer, ws.request.headers.get_all("X-Forwarded-Client-Cert")))
        await _echo(ws)

    client = pki.write("proxy-client", proxy_ca.issue_cert("ocproxy", common_name="ocproxy"))
    async with serve(csms, "127.0.0.1", 0, ssl=csms_context) as upstream:
        port = upstream.sockets[0].getsockname()[1]
        charger_cert = pki.charger_ca.issue_cert("CP-17", common_name="CP-17")
        client_ca = pki.ca_file(pki.charger_ca, "chargers")
        async with (
            proxy_factory(
                upstream=f"wss://localhost:{port}",
                upstream_ca=pki.ca_file(csms_ca, "csms"),
                upstream_client_cert=client[0],
                upstream_client_key=client[1],
                forward_client_cert=True,
                **_tls_options(pki, client_ca=client_ca),
            ) as (proxy, _box),
            connect(
                f"wss://localhost:{proxy.server.port}/ocpp/CP-17",
                ssl=pki.charger_context(charger_cert),
                additional_headers={"X-Forwarded-Client-Cert": "Hash=forged"},
            ) as ws,
        ):
            await ws.send("hello")
            assert await ws.recv() == "hello"
    ((peer, forwarded),) = seen
    assert peer.common_name == "ocproxy"
    assert len(forwarded) == 1
    assert "forged" not in forwarded[0]
    assert "CN=CP-17" in forwarded[0]


def _run_proxy_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "ocproxy",
            "proxy",
            "--upstream",
            "ws://127.0.0.1:1",
            "--listen",
            "127.0.0.1:0",
            "--quiet",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _expired(pki: Pki, name: str) -> tuple[str, str]:
    past = datetime.now(UTC) - timedelta(days=3)
    cert = pki.server_ca.issue_cert(name, not_before=past - timedelta(days=9), not_after=past)
    return pki.write(name, cert)


def _assert_refused_at_start_up(cases: list[tuple[str, tuple[str, ...]]], tmp_path: Path) -> None:
    """Each set of options: one line on stderr naming the problem, exit 2."""
    for message, args in cases:
        result = _run_proxy_cli("--db", str(tmp_path / "x.duckdb"), *args)
        assert result.returncode == 2, (message, result.stdout, result.stderr)
        assert message in result.stderr, (message, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_bad_certificate_files_exit_2(pki: Pki, tmp_path: Path) -> None:
    good = pki.write("good", pki.server_ca.issue_cert("localhost"))
    other = pki.write("other", pki.server_ca.issue_cert("localhost"))
    expired = _expired(pki, "localhost")
    missing = str(tmp_path / "missing.pem")
    cases = [
        ("cannot read certificate", ("--tls-cert", missing, "--tls-key", good[1])),
        ("does not match", ("--tls-cert", good[0], "--tls-key", other[1])),
        ("expired on", ("--tls-cert", expired[0], "--tls-key", expired[1])),
        ("one --tls-key for each --tls-cert", ("--tls-cert", good[0])),
    ]
    _assert_refused_at_start_up(cases, tmp_path)


def test_bad_upstream_tls_files_exit_2_at_start_up(pki: Pki, tmp_path: Path) -> None:
    """Towards the CSMS too: before, each of these started, then answered every charger
    with an unrecorded HTTP 500."""
    client = pki.write("client", pki.server_ca.issue_cert("ocproxy-client"))
    other = pki.write("other", pki.server_ca.issue_cert("someone-else"))
    expired = _expired(pki, "ocproxy")
    ca = pki.ca_file(pki.server_ca, "csms")
    route = tmp_path / "route.toml"
    route.write_text(
        f'[[route]]\nidentity = "ACME-*"\nupstream = "wss://127.0.0.1:1"\n'
        f'client_cert = "{tmp_path / "missing.pem"}"\nclient_key = "{client[1]}"\n'
    )
    cases = [
        ("cannot load CA bundle", ("--upstream-ca", str(tmp_path / "nope.pem"))),
        ("cannot load CA bundle", ("--upstream-ca", client[1])),  # a key is no CA bundle
        ("with key none given", ("--upstream-client-cert", client[0])),
        ("with key", ("--upstream-client-cert", client[0], "--upstream-client-key", other[1])),
        ("without its certificate", ("--upstream-client-key", client[1])),
        ("expired on", ("--upstream-client-cert", expired[0], "--upstream-client-key", expired[1])),
        ("cannot read certificate", ("--config", str(route))),
        ("contradict each other", ("--upstream-ca", ca, "--insecure-upstream")),
        ("--strict-client-cert needs --client-ca", ("--strict-client-cert",)),
        ("--forward-client-cert needs --client-ca", ("--forward-client-cert",)),
    ]
    _assert_refused_at_start_up(cases, tmp_path)


async def test_sni_chooses_the_certificate_for_the_name_dialled(
    pki: Pki, proxy_factory: Any
) -> None:
    first = pki.write("a", pki.server_ca.issue_cert("a.example"))
    second = pki.write("b", pki.server_ca.issue_cert("b.example"))
    async with serve(_echo, "127.0.0.1", 0) as upstream:
        port = upstream.sockets[0].getsockname()[1]
        async with proxy_factory(
            upstream=f"ws://127.0.0.1:{port}",
            tls_cert=(first[0], second[0]),
            tls_key=(first[1], second[1]),
        ) as (proxy, _box):
            for name in ("a.example", "b.example"):
                async with connect(
                    f"wss://127.0.0.1:{proxy.server.port}/CP",
                    ssl=pki.charger_context(),
                    server_hostname=name,  # verification fails unless the right one is served
                ) as ws:
                    der = ws.transport.get_extra_info("ssl_object").getpeercert()
                    sans = [value for kind, value in der["subjectAltName"] if kind == "DNS"]
                    assert sans == [name]


async def test_a_failed_tls_handshake_never_disturbs_other_connections(
    pki: Pki, proxy_factory: Any
) -> None:
    async with serve(_echo, "127.0.0.1", 0) as upstream:
        port = upstream.sockets[0].getsockname()[1]
        async with proxy_factory(upstream=f"ws://127.0.0.1:{port}", **_tls_options(pki)) as (
            proxy,
            box,
        ):
            url = f"wss://localhost:{proxy.server.port}/ocpp"
            async with connect(f"{url}/CP-GOOD", ssl=pki.charger_context()) as good:
                stranger = ssl.create_default_context()  # does not trust the proxy's CA
                with pytest.raises(ssl.SSLCertVerificationError):
                    await connect(f"{url}/CP-BAD", ssl=stranger)
                await good.send("still here")
                assert await good.recv() == "still here"
    rows = box[0].rows(
        "SELECT identity, handshake_status, close_reason FROM connections ORDER BY opened_at"
    )
    assert [(r["identity"], r["handshake_status"]) for r in rows] == [("CP-GOOD", 101), ("", 495)]
    assert rows[1]["close_reason"].startswith("TLS handshake failed")
