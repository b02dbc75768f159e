"""TLS on both legs: security profiles 2 (server TLS) and 3 (mutual TLS).

Towards chargers: one or more certificate/key pairs (RSA and ECDSA for the same names
share a context, so OpenSSL picks what each charger supports; pairs for other names
are chosen by SNI), TLS 1.2 or newer, the cipher suites OCPP 2.x requires, and with a
client CA, verified charger certificates. Towards the CSMS: verification against the
system store or a CA bundle, an optional client certificate (the proxy's own: a
charger's private key never leaves the charger).

Every file problem is a ConfigError naming the file, raised at start-up.
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from ocproxy.errors import ConfigError

# OCPP 2.0.1 Part 2 (security): the TLS 1.2 suites a CSMS must offer; TLS 1.3 suites are
# OpenSSL's defaults. The two plain-RSA suites keep 1.6 security-extension chargers working.
OCPP_TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "AES128-GCM-SHA256",
        "AES256-GCM-SHA384",
    ]
)


@dataclass(frozen=True)
class PeerCertificate:
    subject: str
    common_name: str | None
    serial: str
    fingerprint_sha256: str
    pem: str


def server_context(pairs: list[tuple[str, str]], client_ca: str | None) -> ssl.SSLContext:
    """The listener's context; with several names, an SNI callback picks the right one."""
    groups: dict[frozenset[str], list[tuple[str, str]]] = {}
    for cert, key in pairs:
        groups.setdefault(_names(cert), []).append((cert, key))
    contexts = [(names, _context_for(group, client_ca)) for names, group in groups.items()]
    default = contexts[0][1]
    if len(contexts) > 1:

        def choose(sslobj: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
            for names, context in contexts:
                if server_name and any(_matches(pattern, server_name) for pattern in names):
                    sslobj.context = context
                    return

        for _, context in contexts:
            context.sni_callback = choose
    return default


def _context_for(pairs: list[tuple[str, str]], client_ca: str | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(OCPP_TLS12_CIPHERS)
    for cert, key in pairs:
        _check_not_expired(cert)
        try:
            context.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            raise ConfigError(f"{key} does not match {cert} or is not a key: {exc.reason}") from exc
        except OSError as exc:
            raise ConfigError(f"cannot read {exc.filename or cert}: {exc.strerror}") from exc
    if client_ca:
        _load_ca(context, client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def check_upstream_tls(
    ca: str | None, insecure: bool, client_certs: set[tuple[str | None, str | None]]
) -> None:
    """Load every setting towards a CSMS at start-up (the CA bundle, each client
    certificate and key): a bad file is then one line and exit 2, not an HTTP 500 for
    every charger that connects later."""
    if ca and insecure:
        raise ConfigError("--upstream-ca and --insecure-upstream contradict each other")
    for cert, key in client_certs:
        if key and not cert:
            raise ConfigError(f"client key {key} is given without its certificate")
        if cert:
            _check_not_expired(cert)
        upstream_context(ca, cert, key, insecure)


@cache
def upstream_context(
    ca: str | None, client_cert: str | None, client_key: str | None, insecure: bool
) -> ssl.SSLContext:
    """The CSMS leg's context (cached: one per distinct setting)."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca:
        _load_ca(context, ca)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if client_cert:
        try:
            context.load_cert_chain(client_cert, client_key)
        except ssl.SSLError as exc:
            key = client_key or "none given (then the certificate file must hold it)"
            raise ConfigError(
                f"client certificate {client_cert} with key {key}: {exc.reason or exc}"
            ) from exc
        except OSError as exc:
            raise ConfigError(f"cannot read {exc.filename or client_cert}: {exc.strerror}") from exc
    return context


def peer_certificate(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> PeerCertificate | None:
    """The verified charger certificate of a mutual-TLS connection, if any."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    cert = x509.load_der_x509_certificate(der)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return PeerCertificate(
        subject=cert.subject.rfc4514_string(),
        common_name=str(names[0].value) if names else None,
        serial=serial_hex(cert.serial_number),
        fingerprint_sha256=hashlib.sha256(der).hexdigest(),
        pem=ssl.DER_cert_to_PEM_cert(der),
    )


def serial_hex(number: int) -> str:
    """Hex in whole bytes, as ``openssl x509 -serial`` prints it (leading zero kept)."""
    text = format(number, "X")
    return "0" + text if len(text) % 2 else text


def forwarded_client_cert(peer: PeerCertificate) -> str:
    """``X-Forwarded-Client-Cert`` in Envoy's format: hash, subject and URL-encoded PEM."""
    from urllib.parse import quote

    return f'Hash={peer.fingerprint_sha256};Subject="{peer.subject}";Cert="{quote(peer.pem)}"'


def _load_ca(context: ssl.SSLContext, path: str) -> None:
    try:
        context.load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise ConfigError(f"cannot load CA bundle {path}: {reason}") from exc


def _certificate(path: str) -> x509.Certificate:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read certificate {path}: {exc.strerror}") from exc
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise ConfigError(f"{path} is not a PEM certificate") from exc


def _check_not_expired(path: str) -> None:
    cert = _certificate(path)
    now = datetime.now(UTC)
    if cert.not_valid_after_utc < now:
        raise ConfigError(f"certificate {path} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    if cert.not_valid_before_utc > now:
        raise ConfigError(f"certificate {path} is not valid before {cert.not_valid_before_utc}")


def _names(path: str) -> frozenset[str]:
    cert = _certificate(path)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = set(san.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = set()
    common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names and common:
        names.add(str(common[0].value))
    return frozenset(n.lower() for n in names)


def _matches(pattern: str, name: str) -> bool:
    name = name.lower()
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == name
