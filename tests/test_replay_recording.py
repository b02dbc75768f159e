"""What a replay takes from its source and what it records: frames ocproxy injected are
not the peer's (neither replayed nor expected), and the replay's own recording holds
driver ids pseudonymised with the proxy's key unless --keep-ids."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from test_replay import charger, load, raw_csms, record_session, rows, run_replay

from ocproxy.core.events import ClosedBy, ConnectionClosed, ConnectionOpened, FrameReceived
from ocproxy.core.frames import Direction, Opcode
from ocproxy.core.redaction import Redactor
from ocproxy.recorder import Recorder
from ocproxy.replay.output import Outcome
from ocproxy.replay.script import Role
from ocproxy.sim.charger import ChargerSpec
from ocproxy.sim.csms import SimCsms

UP, DOWN = Direction.TO_CSMS, Direction.TO_CHARGER
BOOT = {"chargePointVendor": "ACME", "chargePointModel": "X"}
NOW = "2026-01-01T00:00:00Z"
BOOT_ANSWER = {"status": "Accepted", "currentTime": NOW, "interval": 300}


def _recording_with_injections(path: Path) -> str:
    """A 1.6 session as the proxy records it when `ocproxy inject` was used both ways:
    the injected CALLs and the answers to them carry ``injected``."""
    frames: list[tuple[Direction, list[Any], bool]] = [
        (UP, [2, "b1", "BootNotification", BOOT], False),
        (DOWN, [3, "b1", BOOT_ANSWER], False),
        (DOWN, [2, "inj-1", "GetConfiguration", {}], True),  # to the charger
        (UP, [3, "inj-1", {"configurationKey": []}], True),
        (UP, [2, "inj-2", "Heartbeat", {}], True),  # to the CSMS
        (DOWN, [3, "inj-2", {"currentTime": "2026-01-01T00:00:01Z"}], True),
        (UP, [2, "h1", "Heartbeat", {}], False),
        (DOWN, [3, "h1", {"currentTime": "2026-01-01T00:00:02Z"}], False),
    ]
    connection_id = f"inj-{time.monotonic_ns()}"
    ts = time.time() - 60
    with Recorder(path, source="test") as recorder:
        recorder.submit(
            ConnectionOpened(
                connection_id, ts, "CP-INJ", "/ocpp/CP-INJ", None, ("ocpp1.6",), "ocpp1.6",
                None, 101,
            )
        )  # fmt: skip
        for seq, (direction, message, injected) in enumerate(frames):
            data = json.dumps(message)
            recorder.submit(
                FrameReceived(
                    connection_id, seq, ts + 0.01 * seq, direction, Opcode.TEXT, data, len(data),
                    injected=injected,
                )
            )  # fmt: skip
        recorder.submit(ConnectionClosed(connection_id, ts + 1, 1000, "", ClosedBy.CHARGER))
    return connection_id


@pytest.mark.parametrize("role", [Role.CHARGER, Role.CSMS])
def test_injected_frames_are_neither_steps_nor_expected(tmp_path: Path, role: Role) -> None:
    path = tmp_path / "src.duckdb"
    connection_id = _recording_with_injections(path)
    script = load(path, role, connection=connection_id)
    sent = [s.action for s in script.steps]
    expected = [e.action for e in script.expected]
    assert "GetConfiguration" not in sent + expected
    assert (sent, expected) == (
        (["BootNotification", "Heartbeat"], []) if role is Role.CHARGER else ([], [
            "BootNotification", "Heartbeat"])
    )  # fmt: skip
    assert [(s.action, s.reason) for s in script.skipped] == [
        ("GetConfiguration", "sent by ocproxy itself (ocproxy inject), not by the peer"),
        ("Heartbeat", "sent by ocproxy itself (ocproxy inject), not by the peer"),
    ]
    assert script.warnings == []


async def test_replay_as_charger_sends_only_the_chargers_frames(tmp_path: Path) -> None:
    """Before: the injected GetConfiguration was expected from the CSMS (a false "never
    sent", exit 1 after the whole --timeout) and the answer to it was sent."""
    path = tmp_path / "src.duckdb"
    connection_id = _recording_with_injections(path)
    script = load(path, Role.CHARGER, connection=connection_id)
    answers = {"BootNotification": BOOT_ANSWER, "Heartbeat": {"currentTime": NOW}}

    def answer(data: bytes) -> list[bytes | int]:
        message = json.loads(data)
        return [json.dumps([3, message[1], answers[message[2]]]).encode()]

    async with raw_csms(answer) as csms:
        replayed = await run_replay(tmp_path, script, charger(csms.url))
        received = [json.loads(data) for _, data in csms.received]
    assert [(m[0], m[2]) for m in received] == [(2, "BootNotification"), (2, "Heartbeat")]
    assert replayed.report.exit_code == 0
    outcomes = [r.outcome for r in replayed.report.results]
    assert outcomes == [Outcome.SKIPPED, Outcome.SKIPPED]  # results list what was not same


@pytest.mark.parametrize("keep_ids", [False, True])
async def test_replay_recording_pseudonymises_driver_ids(
    proxy_factory: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    keep_ids: bool,
) -> None:
    """`ocproxy replay` records with the proxy's key (here from $OCPROXY_ID_KEY), so a
    replay recording compares with the proxy's own; --keep-ids keeps them in clear."""
    from ocproxy.cli import main

    monkeypatch.setenv("OCPROXY_ID_KEY", "replay-test-key")
    source, _ = await record_session(proxy_factory, "1.6")  # recorded keeping ids
    tag = ChargerSpec(identity="x", version="1.6").id_tag
    out = tmp_path / "out.duckdb"
    async with SimCsms(initiate=True) as csms:
        argv = ["replay", str(source), "--identity", "CP-1.6", "--as", "charger"]
        argv += ["--target", csms.url, "--speed", "max", "--timeout", "5", "--db", str(out)]
        code = await asyncio.to_thread(main, [*argv, *(["--keep-ids"] if keep_ids else [])])
    capsys.readouterr()
    assert code == 0
    (row,) = rows(
        out,
        "SELECT json_extract_string(payload, '$.idTag') AS tag, redacted FROM frames "
        "WHERE action = 'Authorize' AND message_type = 2",
    )
    pseudonym = Redactor(b"replay-test-key").redact("Authorize", {"idTag": tag}, response=False)
    if keep_ids:
        assert row == {"tag": tag, "redacted": None}
    else:
        assert row["tag"] == pseudonym.payload["idTag"] != tag
        assert row["redacted"] == ["$.idTag (pseudonymised)"]
