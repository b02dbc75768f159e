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


# CALLERRORs exactly as the ocpp package (2.1.0) sends them when its schema validation
# rejects a CALL: errorDetails {"cause": ..., "ocpp_message": <the CALL as JSON text>}.
TOO_LONG_TAG = "ABCDEFGH12ABCDEFGH12XYZ"
AUTHORIZE_TOO_LONG = f'[2,"a1","Authorize",{{"idTag":"{TOO_LONG_TAG}"}}]'
AUTHORIZE_REJECTED = (
    '[4,"a1","TypeConstraintViolation","Payload for Action is syntactically correct but at'
    " least one of the fields violates data type constraints (e.g. \\u201csomestring\\u201d:"
    f' 12)",{{"cause":"\'{TOO_LONG_TAG}\' is too long","ocpp_message":"[2,\\"a1\\",'
    f'\\"Authorize\\",{{\\"idTag\\":\\"{TOO_LONG_TAG}\\"}}]"}}]'
)
CHANGE_REJECTED = (
    '[4,"c1","FormatViolation","Payload for Action is syntactically incorrect or structure'
    ' for Action",{"cause":"Additional properties are not allowed (\'x\' was unexpected)",'
    '"ocpp_message":"[2,\\"c1\\",\\"ChangeConfiguration\\",{\\"key\\":\\"AuthorizationKey\\",'
    '\\"value\\":\\"SECRET-J16\\",\\"x\\":1}]"}]'
)


def test_callerror_echoing_an_authorize_gets_its_id_tag_pseudonymised() -> None:
    call, error = _observe(
        [(Direction.TO_CSMS, AUTHORIZE_TOO_LONG), (Direction.TO_CHARGER, AUTHORIZE_REJECTED)],
        Redactor(b"key-1"),
    )
    tag = json.loads(call.payload)["idTag"]  # the CALL's own pseudonym
    assert tag != TOO_LONG_TAG
    # Only the tag's bytes change, in the echoed CALL and in the cause quoting it.
    assert error.raw == AUTHORIZE_REJECTED.replace(TOO_LONG_TAG, tag).encode()
    details = json.loads(error.payload)
    assert json.loads(details["ocpp_message"]) == [2, "a1", "Authorize", {"idTag": tag}]
    assert details["cause"] == f"'{tag}' is too long"
    assert TOO_LONG_TAG not in error.payload
    assert error.redacted == (
        "$.ocpp_message[3].idTag (pseudonymised)",
        "$.cause (repeats a redacted value)",
    )
    assert error.size == len(AUTHORIZE_REJECTED)
    assert error.frame.error_details["ocpp_message"].count(TOO_LONG_TAG) == 1  # auditor's copy


SET_VARIABLES_REJECTED = (
    '[4,"s1","FormatViolation","Payload for Action is syntactically incorrect or structure'
    " for Action\",{\"cause\":\"Payload '{'setVariableData': [{'component': {'name':"
    " 'SecurityCtrlr'}, 'variable': {'name': 'BasicAuthPassword'}, 'attributeValue':"
    " 'SECRET-K2X', 'attributeType': 'Bogus'}]}' for action 'SetVariables' is not valid:"
    " 'Bogus' is not one of ['Actual', 'Target', 'MinSet', 'MaxSet']\","
    '"ocpp_message":"[2,\\"s1\\",\\"SetVariables\\",{\\"setVariableData\\":[{\\"component\\":'
    '{\\"name\\":\\"SecurityCtrlr\\"},\\"variable\\":{\\"name\\":\\"BasicAuthPassword\\"},'
    '\\"attributeValue\\":\\"SECRET-K2X\\",\\"attributeType\\":\\"Bogus\\"}]}]"}]'
)


@pytest.mark.parametrize(
    ("error", "secret", "removed"),
    [
        (CHANGE_REJECTED, "SECRET-J16", ("$.ocpp_message[3].value (AuthorizationKey)",)),
        (
            SET_VARIABLES_REJECTED,
            "SECRET-K2X",
            (
                "$.ocpp_message[3].setVariableData[0].attributeValue (BasicAuthPassword)",
                "$.cause (repeats a redacted value)",  # a Python repr of the payload
            ),
        ),
    ],
)
def test_callerror_echoing_a_secret_loses_the_secret(
    error: str, secret: str, removed: tuple[str, ...]
) -> None:
    echoed = json.loads(json.loads(error)[4]["ocpp_message"])
    call = json.dumps(echoed, separators=(",", ":"))
    row = _observe([(Direction.TO_CHARGER, call), (Direction.TO_CSMS, error)], Redactor(b"k"))[1]
    assert row.redacted == removed
    assert row.raw == error.replace(secret, MARKER).encode()
    assert secret not in row.payload
    assert MARKER in json.loads(row.payload)["ocpp_message"]


@pytest.mark.parametrize(
    "error",
    [
        # The ocpp package's answers that echo nothing secret.
        '[4,"1","NotImplemented","Request Action is recognized but not supported by the'
        ' receiver",{"cause":"No handler for SetVariables registered."}]',
        '[4,"1","ProtocolError","Payload for Action is incomplete",'
        '{"cause":"\'idTag\' is a required property"}]',
        # An echoed document with neither secret nor id, in the peer's own spacing.
        '[4, "1", "FormatViolation", "bad \\u00e9", {"cause": "a\\nb",'
        ' "ocpp_message": "[2, \\"1\\", \\"Heartbeat\\", {\\"x\\": 1}]", "n": [1.0, {}]}]',
        '[4,"1","GenericError","",{}]',
    ],
)
def test_ordinary_callerror_is_recorded_byte_identically(error: str) -> None:
    for redactor in (Redactor(b"k"), Redactor(None)):
        row = _observe([(Direction.TO_CSMS, error)], redactor)[0]
        assert row.raw == error.encode()
        assert row.redacted is None
        assert json.loads(row.payload) == json.loads(error)[4]


def test_keep_ids_keeps_echoed_ids_but_still_removes_echoed_secrets() -> None:
    # Unpaired (the proxy may have restarted between CALL and CALLERROR): the echoed
    # CALL names its own action.
    authorize, change = _observe(
        [(Direction.TO_CHARGER, AUTHORIZE_REJECTED), (Direction.TO_CSMS, CHANGE_REJECTED)],
        Redactor(None),
    )
    assert authorize.raw == AUTHORIZE_REJECTED.encode()
    assert authorize.redacted is None
    assert change.redacted == ("$.ocpp_message[3].value (AuthorizationKey)",)
    assert b"SECRET-J16" not in change.raw
    assert "SECRET-J16" not in change.payload


def test_error_details_holding_the_payload_itself_use_the_answered_action() -> None:
    # Not the ocpp package's shape: the payload as an object, nested under a key.
    error = '[4,"c1","FormatViolation","",{"payload":{"key":"authorizationkey","value":"pw"}}]'
    call = '[2,"c1","ChangeConfiguration",{"key":"authorizationkey","value":"pw"}]'
    row = _observe([(Direction.TO_CHARGER, call), (Direction.TO_CSMS, error)], Redactor(None))[1]
    assert row.redacted == ("$.payload.value (AuthorizationKey)",)
    assert row.raw == error.replace('"pw"', f'"{MARKER}"').encode()


async def test_real_ocpp_charge_point_rejections_leak_nothing(
    proxy_factory: Any, db_path: Path
) -> None:
    """The ocpp package's ChargePoint rejects bad CALLs, echoing them, through the proxy."""
    import asyncio

    from ocpp.routing import on
    from ocpp.v16 import ChargePoint, call_result

    class Charger(ChargePoint):  # type: ignore[misc]
        @on("ChangeConfiguration")  # type: ignore[untyped-decorator]
        def change(self, key: str, value: str) -> Any:
            return call_result.ChangeConfiguration(status="Accepted")

        @on("RemoteStartTransaction")  # type: ignore[untyped-decorator]
        def remote_start(self, id_tag: str, **_: Any) -> Any:
            return call_result.RemoteStartTransaction(status="Accepted")

    profile = {
        "chargingProfileId": 1,
        "stackLevel": 0,
        "chargingProfilePurpose": "Bogus",  # not in the enum: the cause quotes the payload
        "chargingProfileKind": "Absolute",
        "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": []},
    }
    calls = [
        # Extra property: FormatViolation echoing the CALL with its AuthorizationKey.
        ["ChangeConfiguration", {"key": "AuthorizationKey", "value": "SECRET-L16", "x": 1}],
        # Too long: the cause quotes the tag, the echo holds it.
        ["RemoteStartTransaction", {"idTag": "DRIVER0002ABCDEFGHIJKLM"}],
        ["RemoteStartTransaction", {"idTag": DRIVER, "chargingProfile": profile}],
        # A plain value, echoed too: proves the byte search can see echoed values.
        ["ChangeConfiguration", {"key": "HeartbeatInterval", "value": CANARY, "x": 1}],
    ]
    secrets = ["SECRET-L16", "DRIVER0002ABCDEFGHIJKLM", DRIVER]
    answers: list[str] = []

    async def csms(ws: ServerConnection) -> None:
        for i, (action, payload) in enumerate(calls):
            await ws.send(json.dumps([2, f"m{i}", action, payload]))
            answers.append(str(await ws.recv()))
        await ws.wait_closed()

    async with serve(csms, "127.0.0.1", 0, subprotocols=["ocpp1.6"]) as upstream:  # type: ignore[list-item]
        port = upstream.sockets[0].getsockname()[1]
        options = {"redactor": Redactor(b"test-key")}
        async with proxy_factory(recorder_options=options, upstream=f"ws://127.0.0.1:{port}") as (
            proxy,
            box,
        ):
            url = f"{proxy.url}/ocpp/CP-ECHO"
            async with connect(url, subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
                charger = asyncio.create_task(Charger("CP-ECHO", ws).start())
                await wait_until(lambda: len(answers) == len(calls), "every CALL answered")
                charger.cancel()
    # Forwarding is untouched: the CSMS got the echoes with every value in clear.
    assert [json.loads(a)[0] for a in answers] == [4] * len(calls)
    assert all(s in "".join(answers) for s in secrets)
    recording = box[0]
    everything = b"".join(p.read_bytes() for p in db_path.parent.glob(db_path.name + "*"))
    assert CANARY.encode() in everything
    assert [s for s in secrets if s.encode() in everything] == []
    rows = recording.rows(
        "SELECT message_id, raw, payload, redacted FROM frames WHERE message_type = 4 ORDER BY seq"
    )
    by_id = {r["message_id"]: r for r in rows}
    assert [r["message_id"] for r in rows] == ["m0", "m1", "m2", "m3"]
    assert by_id["m0"]["redacted"] == ["$.ocpp_message[3].value (AuthorizationKey)"]
    assert by_id["m1"]["redacted"] == [
        "$.ocpp_message[3].idTag (pseudonymised)",
        "$.cause (repeats a redacted value)",
    ]
    assert by_id["m2"]["redacted"] == [
        "$.ocpp_message[3].idTag (pseudonymised)",
        "$.cause (repeats a redacted value)",
    ]
    assert by_id["m3"]["redacted"] is None
    assert bytes(by_id["m3"]["raw"]) == answers[3].encode()  # nothing to hide: as received
    # The echoed tag carries the same pseudonym as the recorded CALL, so the driver can
    # still be followed.
    (call,) = recording.rows(
        "SELECT payload FROM frames WHERE message_type = 2 AND message_id = 'm2'"
    )
    tag = json.loads(call["payload"])["idTag"]
    echoed = json.loads(json.loads(by_id["m2"]["payload"])["ocpp_message"])
    assert echoed[3]["idTag"] == tag
