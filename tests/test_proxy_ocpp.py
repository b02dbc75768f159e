"""Real OCPP peers (the ``ocpp`` package's classes) talking through the proxy.

What each peer sent and received (its transcript) is compared with what the proxy
recorded: same messages, same bytes, same order per direction, every response paired.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from ocproxy.sim.charger import ChargerSpec, run_charger
from ocproxy.sim.csms import SimCsms
from ocproxy.sim.transcript import TO_CHARGER, TO_CSMS, Transcript

VERSIONS = ["1.6", "2.0.1", "2.1"]


def _recorded(frames: list[dict[str, Any]], direction: str) -> list[str]:
    return [bytes(f["raw"]).decode() for f in frames if f["direction"] == direction]


def _assert_same_traffic(
    frames: list[dict[str, Any]], charger: Transcript, csms: Transcript
) -> None:
    for direction in (TO_CSMS, TO_CHARGER):
        recorded = _recorded(frames, direction)
        assert recorded == charger.in_direction(direction)
        assert recorded == csms.in_direction(direction)
    assert len(frames) == len(charger) == len(csms)
    assert [f["seq"] for f in frames] == list(range(len(frames)))
    assert {f["opcode"] for f in frames} == {"text"}
    assert {f["parse_status"] for f in frames} == {"ok"}


def _assert_all_paired(frames: list[dict[str, Any]]) -> None:
    by_seq = {f["seq"]: f for f in frames}
    calls = [f for f in frames if f["message_type"] == 2]
    responses = [f for f in frames if f["message_type"] in (3, 4)]
    assert len(calls) == len(responses)
    for response in responses:
        call = by_seq[response["request_seq"]]
        assert call["message_id"] == response["message_id"]
        assert call["action"] == response["action"]
        assert call["direction"] != response["direction"]
        assert response["pairing"] == "matched"
        assert response["latency_ms"] >= 0


@pytest.mark.parametrize("version", VERSIONS)
async def test_session_recorded_exactly(version: str, proxy_factory: Any) -> None:
    spec = ChargerSpec(identity=f"CP-{version}", version=version, meter_samples=4)
    async with SimCsms(initiate=True) as csms:
        async with proxy_factory(upstream=csms.url) as (proxy, box):
            async with asyncio.timeout(30):
                transcript = await run_charger(proxy.url + "/ocpp", spec)
        server_side = csms.transcripts[spec.identity]
    recording = box[0]
    frames = recording.frames()
    _assert_same_traffic(frames, transcript, server_side)
    _assert_all_paired(frames)
    (connection,) = recording.connections()
    subprotocol = f"ocpp{version}"
    assert connection["identity"] == spec.identity
    assert connection["path"] == f"/ocpp/{spec.identity}"
    assert connection["offered_subprotocols"] == [subprotocol]
    assert connection["subprotocol"] == subprotocol
    assert connection["ocpp_version"] == version
    assert connection["upstream_url"] == f"{csms.url}/ocpp/{spec.identity}"
    assert (connection["handshake_status"], connection["close_code"]) == (101, 1000)
    assert connection["closed_by"] == "charger"
    assert recording.stats.frames_recorded == len(frames)
    assert recording.stats.frames_lost == 0
    initiated = {"1.6": "GetConfiguration"}.get(version, "GetVariables")
    assert [f["direction"] for f in frames if f["action"] == initiated] == [
        TO_CHARGER,
        TO_CSMS,
    ]


async def test_payloads_and_meter_values_survive(proxy_factory: Any) -> None:
    spec = ChargerSpec(identity="CP-METER", version="1.6", meter_samples=3, wh_per_sample=2500)
    async with SimCsms() as csms, proxy_factory(upstream=csms.url) as (proxy, box):
        await run_charger(proxy.url, spec)
    rows = box[0].rows(
        "SELECT payload FROM frames WHERE action = 'StopTransaction' AND message_type = 2"
    )
    assert json.loads(rows[0]["payload"])["meterStop"] == 7500


async def test_many_chargers_of_mixed_versions_concurrently(proxy_factory: Any) -> None:
    specs = [ChargerSpec(identity=f"FLEET-{i:02d}", version=VERSIONS[i % 3]) for i in range(12)]
    async with SimCsms(initiate=True) as csms:
        async with proxy_factory(upstream=csms.url) as (proxy, box):
            async with asyncio.timeout(60):
                transcripts = await asyncio.gather(*(run_charger(proxy.url, s) for s in specs))
        server_sides = {s.identity: csms.transcripts[s.identity] for s in specs}
    recording = box[0]
    connections = {c["identity"]: c for c in recording.connections()}
    assert set(connections) == {s.identity for s in specs}
    for spec, transcript in zip(specs, transcripts, strict=True):
        frames = recording.frames(connections[spec.identity]["connection_id"])
        _assert_same_traffic(frames, transcript, server_sides[spec.identity])
        _assert_all_paired(frames)


async def test_refusal_by_csms_is_mirrored_and_recorded(proxy_factory: Any) -> None:
    from websockets.exceptions import InvalidStatus

    spec = ChargerSpec(identity="CP-AUTH", version="2.0.1")
    async with (
        SimCsms(basic_auth={"CP-AUTH": "s3cret"}) as csms,
        proxy_factory(upstream=csms.url) as (proxy, box),
    ):
        with pytest.raises(InvalidStatus) as refused:
            await run_charger(proxy.url, spec)
        ok = await run_charger(
            proxy.url, spec, extra_headers={"Authorization": _basic("CP-AUTH", "s3cret")}
        )
    assert refused.value.response.status_code == 401
    assert refused.value.response.headers["WWW-Authenticate"] == 'Basic realm="ocpp"'
    assert len(ok) > 0
    statuses = [c["handshake_status"] for c in box[0].connections()]
    assert statuses == [401, 101]
    headers = box[0].rows("SELECT request_headers::VARCHAR AS h FROM connections")
    assert all("s3cret" not in row["h"] for row in headers)
    assert any("CP-AUTH:[redacted]" in row["h"] for row in headers)


def _basic(user: str, password: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
