"""Real simulated peers on loopback: SimCsms and run_charger, no mocks."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trustme
from ocpp.exceptions import NotImplementedError as OcppNotImplementedError
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v21 import call as call21
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK, InvalidStatus
from websockets.headers import build_authorization_basic
from websockets.typing import Subprotocol

from ocproxy.sim import (
    TO_CHARGER,
    TO_CSMS,
    ChargerSpec,
    NoSubprotocolError,
    SimCsms,
    Transcript,
    run_charger,
)

VERSIONS = ["1.6", "2.0.1", "2.1"]
FIRST_QUESTION = {"1.6": "GetConfiguration", "2.0.1": "GetVariables", "2.1": "GetVariables"}


@pytest.fixture
async def csms() -> AsyncIterator[SimCsms]:
    async with SimCsms() as server:
        yield server


def frames(transcript: Transcript, direction: str) -> list[list[Any]]:
    return [json.loads(data) for data in transcript.in_direction(direction)]


def calls(transcript: Transcript, direction: str) -> list[list[Any]]:
    return [frame for frame in frames(transcript, direction) if frame[0] == 2]


def actions(transcript: Transcript, direction: str) -> list[str]:
    return [frame[2] for frame in calls(transcript, direction)]


def payloads(transcript: Transcript, action: str) -> list[dict[str, Any]]:
    return [
        f[3] for f in calls(transcript, TO_CSMS) + calls(transcript, TO_CHARGER) if f[2] == action
    ]


def expected_actions(version: str, heartbeats: int, samples: int) -> list[str]:
    if version == "1.6":
        start, meter, stop = ["StartTransaction"], ["MeterValues"], ["StopTransaction"]
    else:
        start, meter, stop = ["TransactionEvent"], ["TransactionEvent"], ["TransactionEvent"]
    return [
        "BootNotification",
        *["Heartbeat"] * heartbeats,
        "StatusNotification",
        "Authorize",
        *start,
        "StatusNotification",
        *meter * samples,
        *stop,
        "StatusNotification",
    ]


@pytest.mark.parametrize("version", VERSIONS)
async def test_session_transcripts_match_on_both_ends(csms: SimCsms, version: str) -> None:
    spec = ChargerSpec(identity=f"CP-{version}", version=version, heartbeats=2, meter_samples=4)

    transcript = await run_charger(csms.url, spec)

    # Strict lock-step (the CSMS never initiates here), so nothing crosses on the wire
    # and both ends must have seen the very same frames in the very same order.
    assert transcript == csms.transcripts[spec.identity]
    assert actions(transcript, TO_CSMS) == expected_actions(version, 2, 4)
    assert actions(transcript, TO_CHARGER) == []
    call_ids = [frame[1] for frame in calls(transcript, TO_CSMS)]
    answers = frames(transcript, TO_CHARGER)
    assert [frame[0] for frame in answers] == [3] * len(call_ids)  # no CALLERROR
    assert [frame[1] for frame in answers] == call_ids
    assert len(set(call_ids)) == len(call_ids)


async def test_v16_meter_stop_and_transaction_ids(csms: SimCsms) -> None:
    first = ChargerSpec(identity="CP-A", version="1.6", meter_samples=3, wh_per_sample=1500)
    second = ChargerSpec(identity="CP-B", version="1.6", meter_samples=5, wh_per_sample=700)

    for spec in (first, second):
        await run_charger(csms.url, spec)

    stop_a = payloads(csms.transcripts["CP-A"], "StopTransaction")[0]
    stop_b = payloads(csms.transcripts["CP-B"], "StopTransaction")[0]
    assert stop_a["meterStop"] == 3 * 1500
    assert stop_b["meterStop"] == 5 * 700
    assert (stop_a["transactionId"], stop_b["transactionId"]) == (1, 2)
    samples = payloads(csms.transcripts["CP-B"], "MeterValues")
    values = [m["meterValue"][0]["sampledValue"][0]["value"] for m in samples]
    assert values == [str(700 * n) for n in range(1, 6)]


@pytest.mark.parametrize("version", ["2.0.1", "2.1"])
async def test_v2_transaction_events(csms: SimCsms, version: str) -> None:
    spec = ChargerSpec(identity="CP-2", version=version, meter_samples=3, wh_per_sample=1000)

    transcript = await run_charger(csms.url, spec)

    events = payloads(transcript, "TransactionEvent")
    assert [e["eventType"] for e in events] == ["Started", "Updated", "Updated", "Updated", "Ended"]
    assert [e["seqNo"] for e in events] == [0, 1, 2, 3, 4]
    assert len({e["transactionInfo"]["transactionId"] for e in events}) == 1
    assert events[-1]["transactionInfo"]["stoppedReason"] == "Local"
    final = events[-1]["meterValue"][0]["sampledValue"][0]
    assert (final["value"], final["context"]) == (3000, "Transaction.End")
    updated = events[1]["meterValue"][0]["sampledValue"][0]
    assert updated["measurand"] == "Energy.Active.Import.Register"
    assert updated["context"] == "Sample.Periodic"


@pytest.mark.parametrize("version", VERSIONS)
async def test_csms_initiated_call_appears_on_both_ends(version: str) -> None:
    spec = ChargerSpec(identity="CP-I", version=version)
    async with SimCsms(initiate=True) as csms:
        transcript = await run_charger(csms.url, spec)
    seen_by_csms = csms.transcripts["CP-I"]

    # Frames may cross on the wire now, so only each direction's order is exact.
    for direction in (TO_CSMS, TO_CHARGER):
        assert transcript.in_direction(direction) == seen_by_csms.in_direction(direction)
    initiated = calls(transcript, TO_CHARGER)
    assert [frame[2] for frame in initiated] == [FIRST_QUESTION[version]]
    answer = next(f for f in frames(transcript, TO_CSMS) if f[1] == initiated[0][1])
    assert answer[0] == 3
    # Sent only after the BootNotification answer, never ahead of it.
    boot_id = calls(transcript, TO_CSMS)[0][1]
    first_to_charger = frames(seen_by_csms, TO_CHARGER)[0]
    assert first_to_charger[:2] == [3, boot_id]


async def test_csms_call_reaches_running_charger(csms: SimCsms) -> None:
    spec = ChargerSpec(identity="CP-T", version="1.6", pace=0.1)
    async with asyncio.TaskGroup() as group:
        session = group.create_task(run_charger(csms.url, spec))
        await csms.wait_booted("CP-T")
        answer = await csms.call("CP-T", call16.TriggerMessage(requested_message="Heartbeat"))
        config = await csms.call("CP-T", call16.GetConfiguration(key=["HeartbeatInterval", "X"]))
    assert answer.status == "Accepted"
    assert config.configuration_key == [
        {"key": "HeartbeatInterval", "readonly": False, "value": "300"}
    ]
    assert config.unknown_key == ["X"]
    assert actions(session.result(), TO_CHARGER) == ["TriggerMessage", "GetConfiguration"]


async def test_v21_charger_answers_unknown_action_with_call_error(csms: SimCsms) -> None:
    spec = ChargerSpec(identity="CP-U", version="2.1", pace=0.1)
    async with asyncio.TaskGroup() as group:
        group.create_task(run_charger(csms.url, spec))
        await csms.wait_booted("CP-U")
        with pytest.raises(OcppNotImplementedError):
            await csms.call("CP-U", call21.ClearCache())


async def test_unsupported_subprotocol_gets_handshake_then_1002(csms: SimCsms) -> None:
    async with connect(f"{csms.url}/CP-X", subprotocols=[Subprotocol("ocpp9.9")]) as ws:
        assert ws.response is not None
        assert ws.response.status_code == 101
        assert "Sec-WebSocket-Protocol" not in ws.response.headers
        assert ws.subprotocol is None
        with pytest.raises(ConnectionClosedError) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1002
    assert "unsupported subprotocol" in closed.value.rcvd.reason
    assert "CP-X" not in csms.transcripts


async def test_subprotocol_follows_charger_preference() -> None:
    async with SimCsms() as csms:
        offered = [Subprotocol("ocpp9.9"), Subprotocol("ocpp2.1"), Subprotocol("ocpp1.6")]
        async with connect(f"{csms.url}/CP-P", subprotocols=offered) as ws:
            assert ws.subprotocol == "ocpp2.1"
    async with SimCsms(subprotocols=["ocpp1.6"]) as only16:
        spec = ChargerSpec(identity="CP-P", version="2.1")
        transcript = await run_charger(only16.url, spec, subprotocols=["ocpp2.1", "ocpp1.6"])
        assert "StartTransaction" in actions(transcript, TO_CSMS)  # it fell back to 1.6
        with pytest.raises(NoSubprotocolError):
            await run_charger(only16.url, spec)


async def test_identity_is_last_segment_percent_decoded(csms: SimCsms) -> None:
    spec = ChargerSpec(identity="CP 7/ä", version="1.6", meter_samples=1)
    transcript = await run_charger(f"{csms.url}/ocpp/site-1", spec)
    assert csms.transcripts["CP 7/ä"] == transcript


async def test_basic_auth() -> None:
    async with SimCsms(basic_auth={"CP-S": "s3cret"}) as csms:
        for headers in (None, {"Authorization": build_authorization_basic("CP-S", "wrong")}):
            with pytest.raises(InvalidStatus) as rejected:
                await run_charger(csms.url, ChargerSpec("CP-S", "1.6"), extra_headers=headers)
            assert rejected.value.response.status_code == 401
            assert rejected.value.response.headers["WWW-Authenticate"] == 'Basic realm="ocpp"'
        good = {"Authorization": build_authorization_basic("CP-S", "s3cret")}
        transcript = await run_charger(csms.url, ChargerSpec("CP-S", "1.6"), extra_headers=good)
    assert actions(transcript, TO_CSMS)[-1] == "StatusNotification"


async def test_override_authorize_invalid_stops_before_transaction() -> None:
    def invalid(**_: Any) -> Any:
        return result16.Authorize(id_tag_info={"status": "Invalid"})

    async with SimCsms(overrides={"Authorize": invalid}) as csms:
        transcript = await run_charger(csms.url, ChargerSpec("CP-O", "1.6"))
    assert actions(transcript, TO_CSMS) == [
        "BootNotification",
        "Heartbeat",
        "StatusNotification",
        "Authorize",
    ]
    assert frames(transcript, TO_CHARGER)[-1][2] == {"idTagInfo": {"status": "Invalid"}}


async def test_stop_ends_running_sessions() -> None:
    csms = SimCsms(initiate=True)
    await csms.start()
    spec = ChargerSpec(identity="CP-Z", version="2.0.1", pace=0.2)
    session = asyncio.create_task(run_charger(csms.url, spec))
    await csms.wait_booted("CP-Z")
    await csms.stop()
    with pytest.raises(ConnectionClosedOK):
        await session
    assert csms.connected == set()


# -- ocproxy sim csms / chargers, as commands ----------------------------------------------


async def _start_sim_csms(*extra: str) -> tuple[asyncio.subprocess.Process, str]:
    """``python -m ocproxy.sim csms`` on a free port; its URL, read from its first line."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ocproxy.sim", "csms", "--listen", "127.0.0.1:0", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    async with asyncio.timeout(30):
        first = (await process.stdout.readline()).decode()
    match = re.search(r"on (ws://127\.0\.0\.1:\d+) ", first)
    assert match, first
    return process, match.group(1)


async def _finish(process: asyncio.subprocess.Process) -> tuple[int, str, str]:
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def _ocproxy(*argv: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ocproxy", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    return await _finish(process)


async def _sim_commands_run_a_session_and_stop_on_sigterm() -> None:
    csms, url = await _start_sim_csms("--version", "2.0.1")
    try:
        code, out, err = await _ocproxy(
            "sim", "chargers", "--to", f"{url}/ocpp", "-n", "2", "--version", "2.0.1",
            "--pace", "0", "--transactions", "2",
        )  # fmt: skip
    finally:
        csms.send_signal(signal.SIGTERM)
    csms_code, csms_out, csms_err = await _finish(csms)
    assert (code, err) == (0, ""), out
    assert re.search(r"SIM-01 boot Accepted \(heartbeat every 300 s\)", out), out
    assert "SIM-02 transaction 2: 3900 Wh" in out
    assert out.count("done, hung up (1000)") == 2
    assert out.rstrip().endswith("2 charger(s): 4 transaction(s), 15000 Wh; 0 failed")
    assert (csms_code, csms_err) == (0, "")
    for identity in ("SIM-01", "SIM-02"):
        assert f"{identity} connected (ocpp2.0.1)" in csms_out
        assert f"{identity} booted (Accepted)" in csms_out
        assert f"{identity} disconnected (1000)" in csms_out
    assert csms_out.rstrip().endswith("stopped; 2 charger(s) were seen")


def test_sim_commands_run_a_session_and_stop_on_sigterm() -> None:
    # One event loop is enough: the commands run as processes of their own.
    asyncio.run(_sim_commands_run_a_session_and_stop_on_sigterm())


async def _sim_chargers_stay_until_their_duration() -> None:
    csms, url = await _start_sim_csms("--quiet", "--duration", "30")
    try:
        code, out, err = await _ocproxy(
            "sim", "chargers", "--to", url, "--stay", "--pace", "0", "--heartbeat", "0.1",
            "--duration", "1.5", "--prefix", "CP-",
        )  # fmt: skip
    finally:
        csms.send_signal(signal.SIGINT)
    csms_code, csms_out, _ = await _finish(csms)
    assert (code, err) == (0, ""), out
    assert "CP-01 transaction 1: 3600 Wh" in out
    assert "hung up" not in out
    assert out.rstrip().endswith("(stopped: duration)")
    assert csms_code == 0
    assert "CP-01" not in csms_out  # --quiet: the summary only
    assert "stopped; 1 charger(s) were seen" in csms_out


def test_sim_chargers_stay_until_their_duration() -> None:
    # One event loop is enough: the commands run as processes of their own.
    asyncio.run(_sim_chargers_stay_until_their_duration())


async def _sim_bad_input_is_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        in_use = await _ocproxy("sim", "csms", "--listen", f"127.0.0.1:{port}")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    unreachable = await _ocproxy(
        "sim", "chargers", "--to", f"ws://127.0.0.1:{closed}", "-n", "2", "--quiet"
    )
    assert in_use[0] == 1
    in_use_error = f"cannot listen on 127.0.0.1:{port}: Address already in use"
    assert in_use[2] == f"ocproxy: error: {in_use_error}\n"
    assert unreachable[0] == 1
    assert unreachable[2] == "ocproxy: error: 2 of 2 charger(s) failed\n"
    assert unreachable[1].count("Connection refused") == 2  # one red line per charger
    usage = {
        "bad URL": ("sim", "chargers", "--to", "http://csms.example"),
        "no URL": ("sim", "chargers"),
        "heartbeat without stay": ("sim", "chargers", "--to", "ws://h", "--heartbeat", "1"),
        "bad count": ("sim", "chargers", "--to", "ws://h", "-n", "0"),
        "bad listen": ("sim", "csms", "--listen", "nowhere"),
        "bad version": ("sim", "csms", "--version", "1.5"),
    }
    for what, argv in usage.items():
        code, out, err = await _ocproxy(*argv)
        assert (code, out) == (2, ""), what
        assert err.startswith("ocproxy"), (what, err)
        assert err.count("\n") == 1, (what, err)


def test_sim_bad_input_is_one_line() -> None:
    # One event loop is enough: the commands run as processes of their own.
    asyncio.run(_sim_bad_input_is_one_line())


async def test_a_server_certificate_not_trusted_is_said_as_such() -> None:
    """TLS failures read as TLS failures, not as the errno they carry ("Operation not
    permitted")."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)

    async def nothing(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async with serve(nothing, "127.0.0.1", 0, ssl=context) as server:
        port = server.sockets[0].getsockname()[1]
        code, out, _err = await _ocproxy(
            "sim", "chargers", "--to", f"wss://127.0.0.1:{port}/ocpp", "-n", "1", "--pace", "0",
        )  # fmt: skip
    assert code == 1
    assert "SIM-01 the server's certificate is not trusted: unable to get local issuer" in out
    assert "Operation not permitted" not in out
