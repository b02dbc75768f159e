"""``ocproxy replay`` with real peers on loopback: recorded sessions played back.

Sessions are recorded between the ``ocpp`` package's peers through the real proxy,
then replayed against a fresh SimCsms (as the charger) or to a fresh ``ocpp``
charger (as the CSMS). Odd recordings (malformed frames, missing answers) are written
with a Recorder directly, and played against a raw WebSocket peer that keeps the exact
bytes it receives.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest
from ocpp.v16 import call_result as result16
from ocpp.v201 import call_result as result201
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from ocproxy.audit.offline import open_recording
from ocproxy.core.events import ClosedBy, ConnectionOpened, FrameReceived
from ocproxy.core.events import ConnectionClosed as ClosedEvent
from ocproxy.core.frames import Direction, Opcode
from ocproxy.errors import ConfigError
from ocproxy.proxy.legs import ChargerLeg
from ocproxy.recorder import Recorder
from ocproxy.replay.compare import DiffKind, IgnoreRules
from ocproxy.replay.output import Outcome, ReplayReport
from ocproxy.replay.runner import ReplayOptions, replay
from ocproxy.replay.script import Role, Script, Selection, after_message_id, load_script
from ocproxy.sim.charger import ChargerSpec, run_charger
from ocproxy.sim.csms import SimCsms

UP, DOWN = Direction.TO_CSMS, Direction.TO_CHARGER
FAST = {"speed": None, "timeout": 3.0}


# -- helpers -------------------------------------------------------------------------------


async def record_session(
    proxy_factory: Any, version: str, *, initiate: bool = True
) -> tuple[Path, str]:
    """A real session between ocpp peers through the proxy; (recording, connection id)."""
    spec = ChargerSpec(identity=f"CP-{version}", version=version)
    async with SimCsms(initiate=initiate) as csms, proxy_factory(upstream=csms.url) as (proxy, box):
        async with asyncio.timeout(30):
            await run_charger(proxy.url + "/ocpp", spec)
    recording = box[0]
    (connection,) = rows(recording.path, "SELECT connection_id FROM connections")
    return recording.path, connection["connection_id"]


def rows(path: Path, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    with duckdb.connect(str(path), read_only=True) as db:
        cursor = db.execute(sql, list(params))
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def load(path: Path, role: Role, *, skip_malformed: bool = False, **selection: Any) -> Script:
    with open_recording(path) as db:
        return load_script(db, Selection(**selection), role, skip_malformed=skip_malformed)


@dataclass
class Replayed:
    report: ReplayReport
    db: Path

    def connection(self) -> dict[str, Any]:
        (row,) = rows(self.db, "SELECT * FROM connections")
        return row

    def frames(self) -> list[dict[str, Any]]:
        return rows(self.db, "SELECT * FROM frames ORDER BY seq")


async def run_replay(
    tmp_path: Path, script: Script, options: ReplayOptions, **kwargs: Any
) -> Replayed:
    db = tmp_path / f"replay-{time.monotonic_ns()}.duckdb"
    recorder = Recorder(db, source="replay", flush_interval=0.05).start()
    try:
        async with asyncio.timeout(30):
            report = await replay(script, options, recorder, **kwargs)
    finally:
        recorder.close()
    return Replayed(report, db)


def charger(target: str, **options: Any) -> ReplayOptions:
    return ReplayOptions(Role.CHARGER, target=target, **{**FAST, **options})


def literal_recording(
    path: Path,
    frames: Sequence[tuple[Direction, bytes] | tuple[Direction, bytes, Opcode]],
    *,
    offered: tuple[str, ...] = ("ocpp1.6",),
    subprotocol: str | None = "ocpp1.6",
    gap: float = 0.01,
    identity: str = "CP-LIT",
    start: float | None = None,
) -> str:
    """A recording written event by event, as the proxy would have recorded it."""
    connection_id = f"lit-{time.monotonic_ns()}"
    ts = time.time() - 60 if start is None else start
    with Recorder(path, source="test") as recorder:
        recorder.submit(
            ConnectionOpened(
                connection_id,
                ts,
                identity,
                f"/ocpp/{identity}",
                "127.0.0.1:1",
                offered,
                subprotocol,
                None,
                101,
            )
        )
        for seq, (direction, data, *opcode) in enumerate(frames):
            ts += gap
            kind = opcode[0] if opcode else Opcode.TEXT
            recorder.submit(FrameReceived(connection_id, seq, ts, direction, kind, data, len(data)))
        recorder.submit(ClosedEvent(connection_id, ts + gap, 1000, "", ClosedBy.CHARGER))
    return connection_id


Policy = Callable[[bytes], list[bytes | int]]


def answer_calls(data: bytes) -> list[bytes | int]:
    """The raw CSMS's default: ``[3, id, {}]`` for a CALL, nothing for anything else."""
    try:
        frame = json.loads(data)
    except ValueError:
        return []
    if isinstance(frame, list) and len(frame) == 4 and frame[0] == 2:
        return [json.dumps([3, frame[1], {}]).encode()]
    return []


@dataclass
class RawCsms:
    url: str = ""
    received: list[tuple[Opcode, bytes]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # monotonic, when each arrived


@asynccontextmanager
async def raw_csms(policy: Policy = answer_calls) -> AsyncIterator[RawCsms]:
    """A CSMS that keeps every message's exact bytes and opcode; ``policy`` answers (an
    int closes the connection with that code)."""
    box = RawCsms()

    async def handler(leg: Any) -> None:
        try:
            while True:
                data, opcode = await leg.recv_message()
                box.received.append((opcode, data))
                box.times.append(time.monotonic())
                for action in policy(data):
                    if isinstance(action, int):
                        await leg.close(action, "test CSMS closes")
                        return
                    await leg.send_message(action, Opcode.TEXT)
        except ConnectionClosed:
            return

    async with serve(
        handler,
        "127.0.0.1",
        0,
        create_connection=ChargerLeg,
        subprotocols=[Subprotocol("ocpp1.6")],
    ) as server:
        box.url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        yield box


def differences(report: ReplayReport) -> list[tuple[str, DiffKind, str]]:
    return [(r.action, d.kind, d.path) for r in report.different for d in r.differences]


# -- as the charger, against the same kind of CSMS ---------------------------------------


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_replay_against_the_same_csms_shows_no_difference(
    version: str, proxy_factory: Any, tmp_path: Path
) -> None:
    source, connection_id = await record_session(proxy_factory, version)
    script = load(source, Role.CHARGER, connection=connection_id)
    assert script.expected, "the CSMS-initiated CALL must be in the script"
    async with SimCsms(initiate=True) as csms:
        replayed = await run_replay(tmp_path, script, charger(csms.url))
    report = replayed.report
    assert (report.failure, differences(report), report.connection) == (None, [], [])
    assert report.exit_code == 0
    totals = report.totals()
    assert (totals.exchanges, totals.same) == (script.total, script.total)
    # Recorded too, tagged as a replay, and comparable frame by frame in SQL.
    connection = replayed.connection()
    assert (connection["source"], connection["replay_of"]) == ("replay", connection_id)
    assert (connection["identity"], connection["subprotocol"]) == (
        f"CP-{version}",
        f"ocpp{version}",
    )
    assert (connection["closed_by"], connection["close_code"]) == ("charger", 1000)
    original = rows(source, "SELECT direction, message_type, action, pairing FROM frames")
    again = [
        {k: f[k] for k in ("direction", "message_type", "action", "pairing")}
        for f in replayed.frames()
    ]
    key = lambda f: (f["direction"], f["message_type"], f["action"])  # noqa: E731
    assert sorted(again, key=key) == sorted(original, key=key)
    assert {f["pairing"] for f in again} == {None, "matched"}
    # Fresh message ids, and the mapping is kept.
    assert len(report.id_map) == script.total
    recorded_ids = {f["message_id"] for f in rows(source, "SELECT message_id FROM frames")}
    assert not recorded_ids & {f["message_id"] for f in replayed.frames()}


@pytest.mark.parametrize(
    ("version", "override", "path"),
    [
        (
            "1.6",
            lambda **_: result16.Authorize(id_tag_info={"status": "Invalid"}),
            "idTagInfo.status",
        ),
        (
            "2.0.1",
            lambda **_: result201.Authorize(id_token_info={"status": "Blocked"}),
            "idTokenInfo.status",
        ),
    ],
)
async def test_a_csms_answering_one_action_differently_is_exactly_that_difference(
    version: str, override: Any, path: str, proxy_factory: Any, tmp_path: Path
) -> None:
    source, connection_id = await record_session(proxy_factory, version)
    script = load(source, Role.CHARGER, connection=connection_id)
    async with SimCsms(initiate=True, overrides={"Authorize": override}) as csms:
        replayed = await run_replay(tmp_path, script, charger(csms.url))
    report = replayed.report
    assert differences(report) == [("Authorize", DiffKind.STATUS_CHANGED, path)]
    (result,) = report.different
    assert result.recorded_response is not None
    assert result.replay_response is not None
    assert b"Accepted" in result.recorded_response
    assert report.tally["Authorize"].different == 1
    assert report.exit_code == 1


async def test_transaction_id_assigned_anew_is_carried_into_later_calls(
    proxy_factory: Any, tmp_path: Path
) -> None:
    source, connection_id = await record_session(proxy_factory, "1.6")
    script = load(source, Role.CHARGER, connection=connection_id)
    async with SimCsms(initiate=True) as csms:
        for _ in range(4):  # this CSMS now numbers transactions from 5
            csms.next_transaction_id()
        replayed = await run_replay(tmp_path, script, charger(csms.url))
        sent = csms.transcripts["CP-1.6"].in_direction("to_csms")
    assert replayed.report.exit_code == 0
    stop = next(json.loads(m) for m in sent if '"StopTransaction"' in m)
    assert stop[3]["transactionId"] == 5


async def test_calls_from_the_csms_the_recording_lacks_or_has_extra(
    proxy_factory: Any, tmp_path: Path
) -> None:
    quiet, quiet_id = await record_session(proxy_factory, "1.6", initiate=False)
    script = load(quiet, Role.CHARGER, connection=quiet_id)
    async with SimCsms(initiate=True) as csms:  # now asks GetConfiguration after boot
        unexpected = await run_replay(tmp_path, script, charger(csms.url))
    assert differences(unexpected.report) == [("GetConfiguration", DiffKind.UNEXPECTED, "")]
    (result,) = unexpected.report.different
    assert result.replay_response is not None
    assert b"GenericError" in result.replay_response


async def test_a_recorded_csms_call_that_never_comes_is_missing(
    proxy_factory: Any, tmp_path: Path
) -> None:
    source, connection_id = await record_session(proxy_factory, "2.0.1", initiate=True)
    script = load(source, Role.CHARGER, connection=connection_id)
    async with SimCsms(initiate=False) as csms:
        replayed = await run_replay(tmp_path, script, charger(csms.url, timeout=0.3))
    assert differences(replayed.report) == [("GetVariables", DiffKind.MISSING, "")]


# -- as the CSMS, to a real charger ---------------------------------------------------------


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_replay_as_csms_reproduces_the_recorded_exchange(
    version: str, proxy_factory: Any, tmp_path: Path
) -> None:
    source, connection_id = await record_session(proxy_factory, version)
    script = load(source, Role.CSMS, connection=connection_id)
    listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def the_charger() -> Any:
        port = await listening
        return await run_charger(
            f"ws://127.0.0.1:{port}/ocpp", ChargerSpec(f"CP-{version}", version)
        )

    options = ReplayOptions(Role.CSMS, listen=("127.0.0.1", 0), **FAST)
    replayed, transcript = await asyncio.gather(
        run_replay(tmp_path, script, options, on_listening=listening.set_result), the_charger()
    )
    report = replayed.report
    assert (report.failure, differences(report), report.exit_code) == (None, [], 0)
    assert report.totals().same == script.total
    # The charger got the recorded answers, byte for byte but for the message ids.
    recorded_answers = [
        after_message_id(bytes(f["raw"]))
        for f in rows(
            source,
            "SELECT raw FROM frames WHERE direction = 'to_charger' "
            "AND message_type = 3 ORDER BY seq",
        )
    ]
    got = [after_message_id(m.encode()) for m in transcript.in_direction("to_charger")]
    assert [a for a in got if a is not None and a.startswith(b"3")] == recorded_answers
    connection = replayed.connection()
    assert (connection["replay_of"], connection["closed_by"]) == (connection_id, "charger")


async def test_as_csms_a_charger_without_the_recorded_subprotocol_is_closed(
    proxy_factory: Any, tmp_path: Path
) -> None:
    source, connection_id = await record_session(proxy_factory, "1.6")
    script = load(source, Role.CSMS, connection=connection_id)
    listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def the_charger() -> BaseException | None:
        port = await listening
        try:
            await run_charger(f"ws://127.0.0.1:{port}", ChargerSpec("CP-1.6", "2.0.1"))
        except Exception as exc:
            return exc
        return None

    options = ReplayOptions(Role.CSMS, listen=("127.0.0.1", 0), **FAST)
    replayed, failure = await asyncio.gather(
        run_replay(tmp_path, script, options, on_listening=listening.set_result), the_charger()
    )
    assert failure is not None
    report = replayed.report
    assert report.failure is not None
    assert "subprotocol none" in report.failure
    assert [(d.kind, d.recorded, d.replayed) for d in report.connection] == [
        (DiffKind.HANDSHAKE, "ocpp1.6", None)
    ]
    assert report.totals().not_replayed == script.total
    # The ocpp charger gives up on its own (1011) and may beat our 1002 to it.
    connection = replayed.connection()
    assert (connection["closed_by"], connection["close_code"]) in [
        ("csms", 1002),
        ("charger", 1011),
    ]


# -- malformed frames -------------------------------------------------------------------------

MALFORMED: list[tuple[Direction, bytes] | tuple[Direction, bytes, Opcode]] = [
    (UP, b'[2,"h1","Heartbeat",{}]'),
    (DOWN, b'[3,"h1",{}]'),
    (UP, b'[2,"x","Heartbeat",{}'),  # invalid JSON
    (UP, b'  [2, "y", "Heartbeat"]'),  # wrong arity, odd spacing
    (UP, b"\xff\xfe not utf-8", Opcode.TEXT),
    (UP, b"\x00\x01binary", Opcode.BINARY),
    (UP, b'[2,"h2","Heartbeat",{}]'),
    (DOWN, b'[3,"h2",{}]'),
]


async def test_malformed_frames_are_replayed_byte_exact(tmp_path: Path) -> None:
    source = tmp_path / "odd.duckdb"
    connection_id = literal_recording(source, MALFORMED)
    script = load(source, Role.CHARGER, connection=connection_id)
    async with raw_csms() as csms:
        replayed = await run_replay(tmp_path, script, charger(csms.url))
    report = replayed.report
    assert (differences(report), report.exit_code) == ([], 0)
    assert csms.received[1:5] == [
        (Opcode.TEXT, b'[2,"x","Heartbeat",{}'),
        (Opcode.TEXT, b'  [2, "y", "Heartbeat"]'),
        (Opcode.TEXT, b"\xff\xfe not utf-8"),
        (Opcode.BINARY, b"\x00\x01binary"),
    ]
    assert len(csms.received) == 6
    statuses = [f["parse_status"] for f in replayed.frames() if f["direction"] == "to_csms"]
    assert statuses == ["ok", "invalid_json", "wrong_arity", "invalid_utf8", "invalid_json", "ok"]


async def test_malformed_frames_skipped_on_request_and_reported(tmp_path: Path) -> None:
    source = tmp_path / "odd.duckdb"
    connection_id = literal_recording(source, MALFORMED)
    script = load(source, Role.CHARGER, connection=connection_id, skip_malformed=True)
    async with raw_csms() as csms:
        replayed = await run_replay(tmp_path, script, charger(csms.url))
    assert [opcode for opcode, _ in csms.received] == [Opcode.TEXT, Opcode.TEXT]
    skipped = [(r.index, r.note) for r in replayed.report.results if r.outcome is Outcome.SKIPPED]
    assert skipped == [
        (2, "malformed (invalid_json), --skip-malformed"),
        (3, "malformed (wrong_arity), --skip-malformed"),
        (4, "malformed (invalid_utf8), --skip-malformed"),
        (5, "malformed (invalid_json), --skip-malformed"),
    ]
    assert replayed.report.totals().skipped == 4
    assert replayed.report.exit_code == 0


# -- bad input ------------------------------------------------------------------------------


async def test_unknown_connection_and_ambiguous_identity_are_usage_errors(
    proxy_factory: Any, tmp_path: Path
) -> None:
    source, _ = await record_session(proxy_factory, "1.6")
    with pytest.raises(ConfigError, match="no connection 'nope' in the recording"):
        load(source, Role.CHARGER, connection="nope")
    with pytest.raises(ConfigError, match="no charger 'CP-9' in the recording"):
        load(source, Role.CHARGER, identity="CP-9")
    literal_recording(source, MALFORMED[:2], identity="CP-1.6")
    with pytest.raises(ConfigError, match=r"'CP-1\.6' has 2 connections there; pick one"):
        load(source, Role.CHARGER, identity="CP-1.6")


async def test_target_refusing_the_handshake(proxy_factory: Any, tmp_path: Path) -> None:
    source, connection_id = await record_session(proxy_factory, "1.6")
    script = load(source, Role.CHARGER, connection=connection_id)
    async with SimCsms(basic_auth={"CP-1.6": "secret"}) as csms:
        replayed = await run_replay(tmp_path, script, charger(csms.url))
    report = replayed.report
    assert report.failure == "the target refused the handshake: HTTP 401 Unauthorized"
    assert report.totals().not_replayed == script.total
    assert report.exit_code == 1
    connection = replayed.connection()
    assert (connection["handshake_status"], connection["replay_of"]) == (401, connection_id)


async def test_a_header_makes_the_handshake_pass(proxy_factory: Any, tmp_path: Path) -> None:
    import base64

    source, connection_id = await record_session(proxy_factory, "1.6")
    script = load(source, Role.CHARGER, connection=connection_id)
    token = base64.b64encode(b"CP-1.6:secret").decode()
    async with SimCsms(basic_auth={"CP-1.6": "secret"}, initiate=True) as csms:
        options = charger(csms.url, headers=(("Authorization", f"Basic {token}"),))
        replayed = await run_replay(tmp_path, script, options)
    assert replayed.report.exit_code == 0


async def test_target_picking_another_subprotocol(tmp_path: Path) -> None:
    source = tmp_path / "lit.duckdb"
    connection_id = literal_recording(source, MALFORMED[:2], offered=("ocpp2.0.1", "ocpp1.6"))
    script = load(source, Role.CHARGER, connection=connection_id)
    async with SimCsms(subprotocols=["ocpp2.0.1"]) as csms:
        replayed = await run_replay(tmp_path, script, charger(csms.url))
    report = replayed.report
    assert report.failure == (
        "the peer agreed on subprotocol ocpp2.0.1, the recording on ocpp1.6: nothing was replayed"
    )
    assert report.exit_code == 1


async def test_recording_without_the_needed_answer(tmp_path: Path) -> None:
    source = tmp_path / "lit.duckdb"
    connection_id = literal_recording(
        source, [(UP, b'[2,"h1","Heartbeat",{}]'), (UP, b'[2,"a1","Authorize",{"idTag":"X"}]')]
    )
    script = load(source, Role.CHARGER, connection=connection_id)
    async with raw_csms() as csms:
        replayed = await run_replay(tmp_path, script, charger(csms.url))
    report = replayed.report
    assert report.warnings[0].startswith("exchange #1 Heartbeat: the recording holds no answer")
    assert differences(report) == [
        ("Heartbeat", DiffKind.NOT_IN_RECORDING, ""),
        ("Authorize", DiffKind.NOT_IN_RECORDING, ""),
    ]
    assert report.exit_code == 1


async def test_target_closing_mid_replay_names_the_exchange(tmp_path: Path) -> None:
    source = tmp_path / "lit.duckdb"
    frames = [
        (UP, b'[2,"h1","Heartbeat",{}]'),
        (DOWN, b'[3,"h1",{}]'),
        (UP, b'[2,"a1","Authorize",{"idTag":"X"}]'),
        (DOWN, b'[3,"a1",{"idTagInfo":{"status":"Accepted"}}]'),
        (UP, b'[2,"h2","Heartbeat",{}]'),
        (DOWN, b'[3,"h2",{}]'),
    ]
    connection_id = literal_recording(source, frames)
    script = load(source, Role.CHARGER, connection=connection_id)

    def close_on_authorize(data: bytes) -> list[bytes | int]:
        return [1011] if b"Authorize" in data else answer_calls(data)

    async with raw_csms(close_on_authorize) as csms:
        replayed = await run_replay(tmp_path, script, charger(csms.url))
    report = replayed.report
    assert report.failure == (
        "exchange #2 Authorize: the peer closed the connection (1011 'test CSMS closes') "
        "before its answer"
    )
    assert differences(report) == [("Authorize", DiffKind.CLOSED, "")]
    assert (report.tally["Heartbeat"].same, report.tally["Heartbeat"].not_replayed) == (1, 1)
    assert report.exit_code == 1
    assert replayed.connection()["closed_by"] == "csms"


async def test_an_answer_that_does_not_come_is_a_timeout(tmp_path: Path) -> None:
    source = tmp_path / "lit.duckdb"
    connection_id = literal_recording(source, MALFORMED[:2])
    script = load(source, Role.CHARGER, connection=connection_id)
    async with raw_csms(lambda data: []) as csms:
        replayed = await run_replay(tmp_path, script, charger(csms.url, timeout=0.2))
    assert differences(replayed.report) == [("Heartbeat", DiffKind.TIMEOUT, "")]
    assert replayed.report.tally["Heartbeat"].timeouts == 1


# -- pacing, time shifting, Ctrl-C -------------------------------------------------------------


async def test_pacing_follows_the_recording_scaled_by_speed(tmp_path: Path) -> None:
    source = tmp_path / "lit.duckdb"
    frames = [(UP, b'[2,"h1","Heartbeat",{}]'), (DOWN, b'[3,"h1",{}]')]
    frames += [(UP, b'[2,"h2","Heartbeat",{}]'), (DOWN, b'[3,"h2",{}]')]
    connection_id = literal_recording(source, frames, gap=0.5)
    script = load(source, Role.CHARGER, connection=connection_id)
    async with raw_csms() as csms:
        replayed = await run_replay(tmp_path, script, charger(csms.url, speed=5.0))
    # The second CALL was recorded 1 s after the first: 0.2 s apart at 5x.
    assert replayed.report.exit_code == 0
    first, second = csms.times
    assert 0.19 <= second - first < 0.6


async def test_shift_time_moves_payload_timestamps_to_the_present(tmp_path: Path) -> None:
    source = tmp_path / "lit.duckdb"
    yesterday = time.time() - 86_400
    stamp = datetime.fromtimestamp(yesterday, UTC).isoformat(timespec="milliseconds")
    call = json.dumps([2, "s1", "StatusNotification", {"connectorId": 1, "timestamp": stamp}])
    frames = [(UP, call.replace("+00:00", "Z").encode()), (DOWN, b'[3,"s1",{}]')]
    connection_id = literal_recording(source, frames, start=yesterday - 0.01)
    script = load(source, Role.CHARGER, connection=connection_id)
    async with raw_csms() as csms:
        await run_replay(tmp_path, script, charger(csms.url, shift_time=True))
    sent = json.loads(csms.received[0][1])[3]["timestamp"]
    assert sent.endswith("Z")  # same format, moved by a day
    assert abs(datetime.fromisoformat(sent).timestamp() - time.time()) < 30


async def test_stop_interrupts_cleanly_and_keeps_the_partial_comparison(tmp_path: Path) -> None:
    source = tmp_path / "lit.duckdb"
    frames = [(UP, b'[2,"h1","Heartbeat",{}]'), (DOWN, b'[3,"h1",{}]')]
    frames += [(UP, b'[2,"h2","Heartbeat",{}]'), (DOWN, b'[3,"h2",{}]')]
    connection_id = literal_recording(source, frames, gap=30.0)
    script = load(source, Role.CHARGER, connection=connection_id)
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.3, stop.set)
    async with raw_csms() as csms:
        replayed = await run_replay(tmp_path, script, charger(csms.url, speed=1.0), stop=stop)
    report = replayed.report
    assert report.interrupted
    assert report.exit_code == 130
    assert report.totals().not_replayed == 2
    assert (replayed.connection()["close_code"], replayed.connection()["closed_by"]) == (
        1001,
        "charger",
    )


# -- the command line -------------------------------------------------------------------------


async def test_command_line_end_to_end(
    proxy_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ocproxy.cli import main

    source, connection_id = await record_session(proxy_factory, "1.6")
    out, summary = tmp_path / "out.duckdb", tmp_path / "summary.json"
    overrides = {"Authorize": lambda **_: result16.Authorize(id_tag_info={"status": "Blocked"})}
    async with SimCsms(initiate=True, overrides=overrides) as csms:
        argv = [
            "replay",
            str(source),
            "--identity",
            "CP-1.6",
            "--as",
            "charger",
            "--target",
            csms.url,
            "--speed",
            "max",
            "--timeout",
            "5",
            "--db",
            str(out),
            "--json",
            str(summary),
            "--id-map",
            str(tmp_path / "ids.csv"),
        ]
        code = await asyncio.to_thread(main, argv)
    text = capsys.readouterr().out
    assert code == 1
    assert "status changed" in text
    assert "1 difference(s) from the recording" in text
    document = json.loads(summary.read_text())
    assert document["differences"][0]["action"] == "Authorize"
    assert document["replay_connection"] is not None
    (row,) = rows(out, "SELECT replay_of, source FROM connections")
    assert row == {"replay_of": connection_id, "source": "replay"}
    ids = (tmp_path / "ids.csv").read_text().splitlines()
    assert ids[0] == "exchange,action,recorded_id,replay_id"
    assert len(ids) == 1 + 12


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--connection", "nope", "--as", "charger", "--target", "ws://127.0.0.1:1"],
            "no connection 'nope' in the recording",
        ),
        (["--connection", "x", "--as", "charger"], "--as charger needs --target URL"),
        (["--connection", "x", "--as", "charger", "--target", "http://x"], "not a ws:// or wss://"),
        (["--connection", "x", "--as", "csms", "--target", "ws://x"], "are for --as charger"),
        (
            ["--connection", "x", "--as", "charger", "--target", "ws://x", "--ignore", "a..b"],
            "cannot read segment",
        ),
    ],
)
async def test_command_line_usage_errors_exit_2(
    argv: list[str], message: str, proxy_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from ocproxy.cli import main

    source, _ = await record_session(proxy_factory, "1.6")
    with pytest.raises(SystemExit) as exited:
        await asyncio.to_thread(main, ["replay", str(source), *argv])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_ignore_rules_reach_the_options() -> None:
    import argparse

    from ocproxy.replay.cli import add_replay_command, replay_options

    parser = argparse.ArgumentParser()
    add_replay_command(parser.add_subparsers())
    args = parser.parse_args(
        [
            "replay",
            "x.duckdb",
            "--connection",
            "c",
            "--as",
            "csms",
            "--listen",
            "127.0.0.1:0",
            "--ignore",
            "Authorize:idTagInfo",
            "--speed",
            "max",
        ]
    )
    options = replay_options(args)
    assert (options.role, options.listen, options.speed) == (Role.CSMS, ("127.0.0.1", 0), None)
    assert options.rules != IgnoreRules.parse()
    assert options.rules.ignored("Authorize", ("idTagInfo",))


async def test_stop_while_waiting_for_a_charger_is_an_interruption(
    proxy_factory: Any, tmp_path: Path
) -> None:
    source, connection_id = await record_session(proxy_factory, "1.6")
    script = load(source, Role.CSMS, connection=connection_id)
    stop = asyncio.Event()
    options = ReplayOptions(Role.CSMS, listen=("127.0.0.1", 0), **FAST)
    replay_task = run_replay(
        tmp_path, script, options, stop=stop, on_listening=lambda _: stop.set()
    )
    report = (await replay_task).report
    assert (report.interrupted, report.failure, report.exit_code) == (True, None, 130)
    assert report.totals().not_replayed == script.total


def test_target_url_keeps_the_recorded_path_and_can_rename_the_identity() -> None:
    from ocproxy.replay.runner import target_url

    assert target_url("ws://h:9/base/", "/ocpp/CP-1?x=1", None) == "ws://h:9/base/ocpp/CP-1?x=1"
    assert target_url("ws://h", "/ocpp/CP-1?x=1", "NEW 1") == "ws://h/ocpp/NEW%201?x=1"
