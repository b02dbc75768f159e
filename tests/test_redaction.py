"""Secrets and driver identities: forwarded intact, never in the recording's bytes."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from helpers_ws import wait_until
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from ocproxy.core.correlation import Correlator
from ocproxy.core.events import FrameReceived
from ocproxy.core.frames import Direction, Opcode
from ocproxy.core.observe import observe
from ocproxy.core.redaction import MARKER, Redactor

CANARY = "CANARY-NOT-SECRET-4711"  # a plain value: proves the byte search can see values
DRIVER = "DRIVER0001ABC"


def _exchanges(version: str) -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """(direction of the CALL, action, request, response) carrying every secret field."""
    if version == "1.6":
        return [
            (
                "to_csms",
                "Authorize",
                {"idTag": DRIVER.lower()},
                {"idTagInfo": {"status": "Accepted", "parentIdTag": "PARENT-77777"}},
            ),
            (
                "to_charger",
                "ChangeConfiguration",
                {"key": "AuthorizationKey", "value": "SECRET-A16"},
                {"status": "Accepted"},
            ),
            (
                "to_charger",
                "GetConfiguration",
                {"key": ["authorizationkey"]},
                {
                    "configurationKey": [
                        {"key": "AuthorizationKey", "readonly": False, "value": "SECRET-B16"}
                    ]
                },
            ),
            ("to_charger", "DataTransfer", {"vendorId": CANARY}, {"status": "Accepted"}),
        ]
    variable = {"component": {"name": "SecurityCtrlr"}, "variable": {"name": "BasicAuthPassword"}}
    profile: dict[str, Any] = {
        "ocppVersion": "OCPP20",
        "ocppTransport": "JSON",
        "ocppCsmsUrl": "wss://csms.example/ocpp",
        "messageTimeout": 30,
        "securityProfile": 2,
        "ocppInterface": "Wireless0",
        "apn": {
            "apn": "internet",
            "apnPassword": "SECRET-C2X",
            "simPin": 987654321,
            "apnAuthentication": "AUTO",
        },
        "vpn": {
            "server": "vpn",
            "user": "u",
            "password": "SECRET-D2X",
            "key": "SECRET-E2X",
            "type": "IPSec",
        },
    }
    if version == "2.1":
        profile["basicAuthPassword"] = "SECRET-F21"
    return [
        (
            "to_csms",
            "Authorize",
            {
                "idToken": {
                    "idToken": DRIVER,
                    "type": "ISO14443",
                    "additionalInfo": [{"additionalIdToken": "ADDITIONAL-999", "type": "x"}],
                }
            },
            {
                "idTokenInfo": {
                    "status": "Accepted",
                    "groupIdToken": {"idToken": "GROUP-55555", "type": "Central"},
                }
            },
        ),
        (
            "to_charger",
            "SetVariables",
            {"setVariableData": [{**variable, "attributeValue": "SECRET-G2X"}]},
            {"setVariableResult": [{**variable, "attributeStatus": "Accepted"}]},
        ),
        (
            "to_charger",
            "GetVariables",
            {"getVariableData": [variable]},
            {
                "getVariableResult": [
                    {**variable, "attributeStatus": "Accepted", "attributeValue": "SECRET-H2X"}
                ]
            },
        ),
        (
            "to_csms",
            "NotifyReport",
            {
                "requestId": 1,
                "generatedAt": "2026-01-01T00:00:00Z",
                "seqNo": 0,
                "reportData": [{**variable, "variableAttribute": [{"value": "SECRET-I2X"}]}],
            },
            {},
        ),
        (
            "to_charger",
            "SetNetworkProfile",
            {"configurationSlot": 1, "connectionData": profile},
            {"status": "Accepted"},
        ),
        ("to_charger", "DataTransfer", {"vendorId": CANARY}, {"status": "Accepted"}),
    ]


SECRETS = [
    "SECRET-A16",
    "SECRET-B16",
    "SECRET-C2X",
    "987654321",
    "SECRET-D2X",
    "SECRET-E2X",
    "SECRET-F21",
    "SECRET-G2X",
    "SECRET-H2X",
    "SECRET-I2X",
    "HDR-SECRET-PW",
    "URL-SECRET-PW",
    DRIVER,
    DRIVER.lower(),
    "PARENT-77777",
    "ADDITIONAL-999",
    "GROUP-55555",
]


@pytest.mark.parametrize("version", ["1.6", "2.0.1", "2.1"])
async def test_no_secret_reaches_the_database_file(
    version: str, proxy_factory: Any, db_path: Path
) -> None:
    exchanges = _exchanges(version)
    charger_got: list[str] = []
    csms_got: list[str] = []
    scripted: dict[str, str] = {}

    async def csms(ws: ServerConnection) -> None:
        async for message in ws:
            assert isinstance(message, str)
            csms_got.append(message)
            frame = json.loads(message)
            if frame[0] == 2:  # a charger's CALL: answer from the script
                await ws.send(scripted[frame[1]])
        return

    subprotocol = "ocpp" + version
    async with serve(csms, "127.0.0.1", 0, subprotocols=[subprotocol]) as upstream:  # type: ignore[list-item]
        port = upstream.sockets[0].getsockname()[1]
        async with proxy_factory(
            recorder_options={"redactor": Redactor(b"test-key")},
            upstream=f"ws://user:URL-SECRET-PW@127.0.0.1:{port}",
        ) as (proxy, box):
            auth = "Basic " + base64.b64encode(b"CP-SECRET:HDR-SECRET-PW").decode()
            async with connect(
                f"{proxy.url}/ocpp/CP-SECRET",
                subprotocols=[subprotocol],  # type: ignore[list-item]
                additional_headers={"Authorization": auth},
            ) as charger:
                server = await _server_side(upstream)
                for i, (direction, action, request, response) in enumerate(exchanges):
                    call = json.dumps([2, f"m{i}", action, request])
                    result = json.dumps([3, f"m{i}", response])
                    if direction == "to_csms":
                        scripted[f"m{i}"] = result
                        await charger.send(call)
                        charger_got.append(str(await charger.recv()))
                    else:
                        await server.send(call)
                        charger_got.append(str(await charger.recv()))
                        await charger.send(result)
                        await wait_until(lambda n=i: len(csms_got) > n, "the CSMS got the answer")
    # Forwarding is untouched: every secret arrived where it was sent.
    sent_to_charger = [
        json.dumps([3, f"m{i}", e[3]])
        if e[0] == "to_csms"
        else json.dumps([2, f"m{i}", e[1], e[2]])
        for i, e in enumerate(exchanges)
    ]
    assert charger_got == sent_to_charger
    assert "SECRET" in "".join(csms_got) + "".join(charger_got)
    recording = box[0]
    assert recording.stats.frames_recorded == 2 * len(exchanges)
    everything = b"".join(p.read_bytes() for p in db_path.parent.glob(db_path.name + "*"))
    assert CANARY.encode() in everything  # the search can see plain values in the file
    leaked = [s for s in SECRETS if s.encode() in everything]
    assert leaked == []
    redacted = recording.rows("SELECT redacted FROM frames WHERE redacted IS NOT NULL")
    assert redacted
    sizes = [r["size"] for r in recording.rows("SELECT size FROM frames ORDER BY seq")]
    on_the_wire = sorted(len(m.encode()) for m in csms_got + charger_got)
    assert sorted(sizes) == on_the_wire  # the size received, not the size stored


async def _server_side(upstream: Any) -> ServerConnection:
    await wait_until(lambda: bool(upstream.connections), "the CSMS leg is open")
    return next(iter(upstream.connections))  # type: ignore[no-any-return]


def _observe(frames: list[tuple[Direction, str]], redactor: Redactor) -> list[Any]:
    correlator = Correlator()
    return [
        observe(
            FrameReceived("c", i, float(i), d, Opcode.TEXT, raw.encode(), len(raw)),
            correlator,
            redactor,
        )
        for i, (d, raw) in enumerate(frames)
    ]


def test_pseudonyms_are_case_insensitive_keyed_and_length_preserving() -> None:
    frames = [
        (Direction.TO_CSMS, '[2,"1","Authorize",{"idTag":"abcdef123456"}]'),
        (Direction.TO_CSMS, '[2,"2","Authorize",{"idTag":"ABCDEF123456"}]'),
        (Direction.TO_CSMS, '[2,"3","Authorize",{"idTag":"x1"}]'),
    ]
    first, second, short = _observe(frames, Redactor(b"key-1"))
    other_key = _observe(frames[:1], Redactor(b"key-2"))[0]
    tag = json.loads(first.payload)["idTag"]
    assert tag == json.loads(second.payload)["idTag"]
    assert tag != "ABCDEF123456"
    assert len(tag) == len("abcdef123456")
    assert len(json.loads(short.payload)["idTag"]) == 8
    assert json.loads(other_key.payload)["idTag"] != tag
    assert first.redacted == ("$.idTag (pseudonymised)",)
    assert first.raw == f'[2,"1","Authorize",{{"idTag":"{tag}"}}]'.encode()
    assert first.size == len(frames[0][1])


def test_keep_ids_keeps_tokens_but_still_removes_secrets() -> None:
    frames = [
        (Direction.TO_CSMS, '[2,"1","Authorize",{"idTag":"ABC"}]'),
        (
            Direction.TO_CHARGER,
            '[2,"2","ChangeConfiguration",{"key":"AUTHORIZATIONKEY","value":"pw"}]',
        ),
    ]
    authorize, change = _observe(frames, Redactor(None))
    assert authorize.redacted is None
    assert authorize.raw == frames[0][1].encode()
    assert json.loads(change.payload)["value"] == MARKER
    assert b"pw" not in change.raw


def test_answer_is_only_redacted_when_paired_with_its_call() -> None:
    answer = (
        '[3,"9",{"configurationKey":[{"key":"AuthorizationKey","readonly":false,"value":"pw"}]}]'
    )
    unpaired = _observe([(Direction.TO_CSMS, answer)], Redactor(None))[0]
    assert unpaired.redacted is None  # an answer to nothing is not a GetConfiguration answer
    paired = _observe(
        [(Direction.TO_CHARGER, '[2,"9","GetConfiguration",{}]'), (Direction.TO_CSMS, answer)],
        Redactor(None),
    )[1]
    assert paired.redacted == ("$.configurationKey[0].value (AuthorizationKey)",)


def test_signed_frames_are_left_alone() -> None:
    raw = '[2,"1","ChangeConfiguration-Signed",{"key":"AuthorizationKey","value":"pw"}]'
    frame = _observe([(Direction.TO_CHARGER, raw)], Redactor(b"k"))[0]
    assert frame.raw == raw.encode()
    assert frame.redacted is None


def test_escaped_secret_falls_back_to_reserialising() -> None:
    raw = '[2,"1","ChangeConfiguration",{"key":"AuthorizationKey","value":"p\\u0077"}]'
    frame = _observe([(Direction.TO_CHARGER, raw)], Redactor(None))[0]
    assert json.loads(frame.raw) == [
        2,
        "1",
        "ChangeConfiguration",
        {"key": "AuthorizationKey", "value": MARKER},
    ]
    assert frame.size == len(raw)
