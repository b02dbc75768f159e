"""The opening handshake as pure functions, on literal paths and header lists."""

from __future__ import annotations

import base64

import pytest

from ocproxy.core.handshake import (
    REDACTED,
    SUBPROTOCOL_VERSIONS,
    OcppVersion,
    basic_auth_username,
    end_to_end_headers,
    headers_for_record,
    identity_from_path,
    ocpp_version,
    offered_subprotocols,
    redact_authorization,
    upstream_url,
)


def basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


# --- identity -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "identity"),
    [
        ("/ocpp/CP001", "CP001"),
        ("/ocpp/RDAM%20123", "RDAM 123"),
        ("/ocpp/RDAM%20123?x=1", "RDAM 123"),
        ("/ocpp/CP001?token=a/b/c", "CP001"),
        ("/ocpp/CP001?", "CP001"),
        ("/ocpp/CP001#frag", "CP001"),
        ("/ocpp/CP001?x=1#frag", "CP001"),
        ("/ocpp/", ""),
        ("/ocpp/?id=CP001", ""),
        ("/", ""),
        ("", ""),
        ("/CP001", "CP001"),
        ("CP001", "CP001"),
        ("/a/b/c/d/CP001", "CP001"),
        ("/ocpp/v16/site-7/CP001", "CP001"),
        ("/ocpp/A%2FB", "A/B"),
        ("/ocpp/A%2fB", "A/B"),
        ("/ocpp/A%3FB", "A?B"),
        ("/ocpp/A%23B", "A#B"),
        ("/ocpp/A%25B", "A%B"),
        ("/ocpp/A+B", "A+B"),  # '+' is not a space in a path
        ("/ocpp/%C3%A9t%C3%A9", "\u00e9t\u00e9"),
        ("/ocpp/CP:001", "CP:001"),  # ':' is a finding for 2.x, not a parse error
        ("/ocpp//CP001", "CP001"),
    ],
)
def test_identity_from_path(path: str, identity: str) -> None:
    assert identity_from_path(path) == identity


def test_identity_with_invalid_percent_utf8_does_not_raise() -> None:
    assert identity_from_path("/ocpp/CP%FF1") == "CP\ufffd1"
    assert identity_from_path("/ocpp/CP%zz") == "CP%zz"


# --- subprotocols -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subprotocol", "version"),
    [
        ("ocpp1.6", OcppVersion.V16),
        ("ocpp2.0", OcppVersion.V20),
        ("ocpp2.0.1", OcppVersion.V201),
        ("ocpp2.1", OcppVersion.V21),
    ],
)
def test_ocpp_version_known(subprotocol: str, version: OcppVersion) -> None:
    assert ocpp_version(subprotocol) is version
    assert SUBPROTOCOL_VERSIONS[subprotocol] is version


def test_ocpp_version_values() -> None:
    assert [str(v) for v in OcppVersion] == ["1.6", "2.0", "2.0.1", "2.1"]


def test_ocpp_version_tolerates_case_and_whitespace() -> None:
    assert ocpp_version(" OCPP1.6 ") is OcppVersion.V16
    assert ocpp_version("OCPP2.0.1") is OcppVersion.V201


@pytest.mark.parametrize(
    "subprotocol",
    [None, "", "ocpp1.5", "ocpp2", "ocpp2.0.2", "ocpp1.6j", "1.6", "ocpp1.6,ocpp2.0.1", "wamp"],
)
def test_ocpp_version_unknown(subprotocol: str | None) -> None:
    assert ocpp_version(subprotocol) is None


@pytest.mark.parametrize(
    ("values", "offered"),
    [
        ([], []),
        (["ocpp1.6"], ["ocpp1.6"]),
        (["ocpp2.0.1, ocpp1.6"], ["ocpp2.0.1", "ocpp1.6"]),
        (["ocpp2.1,ocpp2.0.1,ocpp1.6"], ["ocpp2.1", "ocpp2.0.1", "ocpp1.6"]),
        (["ocpp2.0.1", "ocpp1.6"], ["ocpp2.0.1", "ocpp1.6"]),
        (["ocpp2.1, ocpp2.0.1", "ocpp1.6"], ["ocpp2.1", "ocpp2.0.1", "ocpp1.6"]),
        (["ocpp1.6", "ocpp2.1, ocpp2.0.1"], ["ocpp1.6", "ocpp2.1", "ocpp2.0.1"]),
        (["", " , ,", "ocpp1.6,,"], ["ocpp1.6"]),
        (["  ocpp1.6  "], ["ocpp1.6"]),
        (["ocpp1.6, ocpp1.6"], ["ocpp1.6", "ocpp1.6"]),  # duplicates kept as offered
        (["bogus, ocpp1.6"], ["bogus", "ocpp1.6"]),  # unknown ones kept
    ],
)
def test_offered_subprotocols(values: list[str], offered: list[str]) -> None:
    assert offered_subprotocols(values) == offered


def test_offered_subprotocols_accepts_any_iterable() -> None:
    assert offered_subprotocols(v for v in ("ocpp2.1", "ocpp1.6")) == ["ocpp2.1", "ocpp1.6"]


# --- end-to-end headers -------------------------------------------------------------


def test_end_to_end_headers_drops_hop_by_hop_and_websocket_headers() -> None:
    headers = [
        ("Host", "proxy.example:9000"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Protocol", "ocpp1.6"),
        ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
        ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ("Authorization", "Basic Q1AwMDE6c2VjcmV0"),
        ("User-Agent", "Charger/1.0"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Authorization", "Basic eDp5"),
        ("Proxy-Authenticate", "Basic"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"),
        ("Trailer", "X"),
        ("Transfer-Encoding", "chunked"),
        ("Content-Length", "0"),
        ("X-Custom", "1"),
    ]
    assert end_to_end_headers(headers) == [
        ("Authorization", "Basic Q1AwMDE6c2VjcmV0"),
        ("User-Agent", "Charger/1.0"),
        ("X-Custom", "1"),
    ]


def test_end_to_end_headers_case_insensitive_names_kept_as_sent() -> None:
    headers = [
        ("HOST", "a"),
        ("sec-websocket-key", "k"),
        ("SEC-WEBSOCKET-PROTOCOL", "ocpp1.6"),
        ("authorization", "Basic eDp5"),
        ("x-CUSTOM", "v"),
    ]
    assert end_to_end_headers(headers) == [("authorization", "Basic eDp5"), ("x-CUSTOM", "v")]


def test_end_to_end_headers_drops_headers_named_in_connection() -> None:
    headers = [
        ("Connection", "Upgrade, X-Hop, x-other"),
        ("Connection", " X-Third "),
        ("X-Hop", "1"),
        ("X-Other", "2"),
        ("x-third", "3"),
        ("X-End", "4"),
        ("Upgrade", "websocket"),
    ]
    assert end_to_end_headers(headers) == [("X-End", "4")]


def test_end_to_end_headers_keep_order_and_duplicates() -> None:
    headers = [
        ("X-B", "1"),
        ("Host", "h"),
        ("X-A", "2"),
        ("X-B", "3"),
        ("Cookie", "a=1"),
        ("Cookie", "b=2"),
        ("User-Agent", "UA"),
        ("X-B", "3"),
    ]
    assert end_to_end_headers(headers) == [
        ("X-B", "1"),
        ("X-A", "2"),
        ("X-B", "3"),
        ("Cookie", "a=1"),
        ("Cookie", "b=2"),
        ("User-Agent", "UA"),
        ("X-B", "3"),
    ]


def test_end_to_end_headers_keeps_client_cert_headers_and_values_unchanged() -> None:
    headers = [("X-Forwarded-Client-Cert", 'Hash=abc;Subject="CN=CP001"'), ("Origin", "x")]
    assert end_to_end_headers(headers) == headers


def test_end_to_end_headers_accepts_iterator_and_empty() -> None:
    assert end_to_end_headers(iter([("Host", "h"), ("X-A", "1")])) == [("X-A", "1")]
    assert end_to_end_headers([]) == []


# --- upstream URL -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "path", "url"),
    [
        ("ws://csms:9000", "/ocpp/CP001", "ws://csms:9000/ocpp/CP001"),
        ("ws://csms:9000/", "/ocpp/CP001", "ws://csms:9000/ocpp/CP001"),
        ("ws://csms:9000///", "/ocpp/CP001", "ws://csms:9000/ocpp/CP001"),
        ("wss://csms.example/base/", "/CP001?x=1&y=%20", "wss://csms.example/base/CP001?x=1&y=%20"),
        ("ws://csms", "/ocpp/RDAM%20123", "ws://csms/ocpp/RDAM%20123"),
        ("ws://csms", "/ocpp/A%2FB?q=a/b#f", "ws://csms/ocpp/A%2FB?q=a/b#f"),
        ("ws://csms/", "/", "ws://csms/"),
        ("ws://csms/", "//double", "ws://csms//double"),
    ],
)
def test_upstream_url(base: str, path: str, url: str) -> None:
    assert upstream_url(base, path) == url


# --- Authorization ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "username"),
    [
        (basic("CP001:s3cr3t"), "CP001"),
        (basic("CP001:pa:ss:word"), "CP001"),
        (basic("CP001:"), "CP001"),
        (basic(":s3cr3t"), ""),
        (basic("RDAM 123:s3cr3t"), "RDAM 123"),
        (basic("\u00e9t\u00e9:pw"), "\u00e9t\u00e9"),
        ("basic " + base64.b64encode(b"CP001:pw").decode(), "CP001"),
        ("BASIC " + base64.b64encode(b"CP001:pw").decode(), "CP001"),
        ("  Basic   " + base64.b64encode(b"CP001:pw").decode() + "  ", "CP001"),
        ("Basic\t" + base64.b64encode(b"CP001:pw").decode(), "CP001"),
    ],
)
def test_basic_auth_username(value: str, username: str) -> None:
    assert basic_auth_username(value) == username


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "Basic",
        "Basic ",
        "Basic !!!not-base64!!!",
        "Basic Q1AwMDE6c2VjcmV",  # truncated: incorrect padding
        "Basic Q1AwMDE6c2Vj cmV0",  # space inside the token
        "Basic " + base64.b64encode(b"onlyasecret").decode(),  # no ':' at all
        "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig",
        'Digest username="CP001"',
        base64.b64encode(b"CP001:s3cr3t").decode(),  # no scheme
    ],
)
def test_basic_auth_username_none(value: str | None) -> None:
    assert basic_auth_username(value) is None


def test_basic_auth_username_invalid_utf8_replaced_not_raised() -> None:
    value = "Basic " + base64.b64encode(b"CP\xff01:pw").decode()
    assert basic_auth_username(value) == "CP\ufffd01"


SECRET = "s3cr3t-P4ss"
SECRET_B64 = base64.b64encode(f"CP001:{SECRET}".encode()).decode()


@pytest.mark.parametrize(
    ("value", "redacted"),
    [
        (basic(f"CP001:{SECRET}"), f"Basic CP001:{REDACTED}"),
        (f"basic {SECRET_B64}", f"basic CP001:{REDACTED}"),
        (f"Basic\t{SECRET_B64}", f"Basic CP001:{REDACTED}"),
        (f"  Basic  {SECRET_B64} ", f"Basic CP001:{REDACTED}"),
        (f"Bearer {SECRET}", f"Bearer {REDACTED}"),
        (f"Bearer {SECRET} more", f"Bearer {REDACTED}"),
        (f"Basic {SECRET}!!", f"Basic {REDACTED}"),  # malformed base64
        ("Basic " + base64.b64encode(SECRET.encode()).decode(), f"Basic {REDACTED}"),
        (SECRET, REDACTED),  # a bare token with no scheme
        (SECRET_B64, REDACTED),
        (f"Bearer\t{SECRET}", f"Bearer {REDACTED}"),
        ("Basic", REDACTED),
        ("", REDACTED),
    ],
)
def test_redact_authorization(value: str, redacted: str) -> None:
    out = redact_authorization(value)
    assert out == redacted
    assert SECRET not in out
    assert SECRET_B64 not in out


def test_headers_for_record_redacts_only_secrets() -> None:
    headers = [
        ("Host", "proxy:9000"),
        ("Authorization", basic(f"CP001:{SECRET}")),
        ("User-Agent", "Charger/1.0"),
        ("proxy-authorization", f"Bearer {SECRET}"),
        ("AUTHORIZATION", SECRET),
        ("Sec-WebSocket-Protocol", "ocpp2.0.1, ocpp1.6"),
        ("X-Custom", "keep me"),
    ]
    recorded = headers_for_record(headers)
    assert recorded == [
        ("Host", "proxy:9000"),
        ("Authorization", f"Basic CP001:{REDACTED}"),
        ("User-Agent", "Charger/1.0"),
        ("proxy-authorization", f"Bearer {REDACTED}"),
        ("AUTHORIZATION", REDACTED),
        ("Sec-WebSocket-Protocol", "ocpp2.0.1, ocpp1.6"),
        ("X-Custom", "keep me"),
    ]
    flat = repr(recorded)
    assert SECRET not in flat
    assert base64.b64encode(f"CP001:{SECRET}".encode()).decode() not in flat


def test_headers_for_record_keeps_order_duplicates_and_accepts_iterator() -> None:
    headers = [("X-A", "1"), ("X-A", "2"), ("Host", "h")]
    assert headers_for_record(iter(headers)) == headers
