"""CSV and JSON-lines logs as recorder events, with their own timestamps.

Each line is one OCPP-J message: a time, the charger identity (or ``--charger`` for a
log of one charger), the message text and, if the log has it, the direction. A log
has no connections: each charger's messages become one connection, opened at its first
message, with no close (the log does not say when, or whether, it closed). Without a
direction column, a CALL's direction comes from its action (see
:func:`~ocproxy.importer.mapping.call_direction`) and an answer's from the CALL it
answers, by message id (an answer to no CALL of the log is taken as the CSMS's).
Without ``--ocpp``, a charger's version is read from its first messages (a
version-only action, or the shape of its BootNotification), else taken as 1.6.

Lines are read in file order, which is the order of each connection's frames.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote
from zlib import crc32

from ocproxy.core.events import ConnectionOpened, FrameReceived, RecorderEvent
from ocproxy.core.frames import Direction, Opcode
from ocproxy.core.handshake import OcppVersion
from ocproxy.errors import ConfigError
from ocproxy.importer.mapping import (
    DIRECTION_WORDS,
    SUBPROTOCOLS,
    ColumnMap,
    call_direction,
    parse_direction,
    parse_time,
    version_hint,
)

# A charger whose first this many messages betray no version is taken as 1.6.
VERSION_LOOKAHEAD = 500
_HEAD = re.compile(r'\s*\[\s*([2-6])\s*,\s*"((?:[^"\\]|\\.)*)"\s*(?:,\s*"((?:[^"\\]|\\.)*)")?')


@dataclass(slots=True)
class LogLine:
    """One line of a log. Never changed once made; not frozen: one is made per line,
    and a frozen dataclass's ``__init__`` costs ~1 us more."""

    line: int  # 1-based, as an editor counts
    ts: float
    identity: str
    text: str
    direction: Direction | None


@dataclass(frozen=True)
class LogOptions:
    path: str
    kind: str  # "csv" or "jsonl"
    columns: ColumnMap
    charger: str | None = None  # the identity of every line, for a log of one charger
    version: OcppVersion | None = None  # None: read it from each charger's messages
    share: int = 0  # this reader keeps the chargers whose crc32 % shares == share
    shares: int = 1

    @property
    def source(self) -> str:
        return f"import:{self.kind}"


def read_lines(options: LogOptions, handle: IO[str]) -> Iterator[LogLine]:
    """The log's lines, in file order; ConfigError naming the line for what cannot be read."""
    rows = _csv_rows(options, handle) if options.kind == "csv" else _json_rows(options, handle)
    columns, charger = options.columns, options.charger
    shares, share = options.shares, options.share
    words = DIRECTION_WORDS
    for line, raw_time, identity, text, said in rows:
        if columns.identity is None:
            identity = charger
        if identity is None:
            raise _bad(options, line, f"no {columns.identity!r}")
        if not isinstance(identity, str):
            identity = str(identity)
        if shares > 1 and crc32(identity.encode()) % shares != share:
            continue
        try:
            ts = parse_time(raw_time)
        except (ValueError, OverflowError) as exc:
            raise _bad(options, line, f"cannot read the time {raw_time!r}: {exc}") from None
        if text is None or text == "":
            raise _bad(options, line, f"no message in {columns.message!r}")
        if not isinstance(text, str):  # a JSON log may hold the frame as an array
            text = json.dumps(text, ensure_ascii=False, separators=(",", ":"))
        direction = None
        if columns.direction is not None:
            direction = words.get(said) if type(said) is str else None
            if direction is None:
                try:
                    direction = parse_direction(said)
                except ValueError as exc:
                    raise _bad(options, line, str(exc)) from None
        yield LogLine(line, ts, identity, text, direction)


# A row as read: line number, then the time, identity, message and direction cells.
_Row = tuple[int, Any, Any, Any, Any]


def _csv_rows(options: LogOptions, handle: IO[str]) -> Iterator[_Row]:
    reader = csv.reader(handle)
    header = next(reader, [])
    columns = options.columns
    wanted = [c for c in (columns.time, columns.message, columns.identity, columns.direction) if c]
    missing = [c for c in wanted if c not in header]
    if missing:
        raise ConfigError(
            f"{options.path}: no column {missing[0]!r} for --map (its columns: "
            f"{', '.join(header) or 'none'})"
        )
    # Only the mapped columns, by position; an unmapped one reads as None, from a cell
    # added past the header's. A short row is padded with empty cells, a long one cut.
    width = len(header)
    take = itemgetter(*(width if c is None else header.index(c) for c in _mapped(columns)))
    pad = [""] * width
    # Another process's lines are left at once (read_lines checks the share again).
    where = -1 if columns.identity is None else header.index(columns.identity)
    shares, share = options.shares, options.share
    mine = where >= 0 and shares > 1
    for row in reader:
        if mine and len(row) > where and crc32(row[where].encode()) % shares != share:
            continue
        if len(row) != width:
            row = (row + pad[len(row) :])[:width]
        row.append(None)  # type: ignore[arg-type]
        yield (reader.line_num, *take(row))


def _json_rows(options: LogOptions, handle: IO[str]) -> Iterator[_Row]:
    columns = options.columns
    identity, direction = columns.identity, columns.direction
    for number, text in enumerate(handle, 1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except ValueError as exc:
            raise _bad(options, number, f"not JSON ({exc})") from None
        if not isinstance(row, dict):
            raise _bad(options, number, "not a JSON object")
        yield (
            number,
            _cell(row, columns.time),
            None if identity is None else _cell(row, identity),
            _cell(row, columns.message),
            None if direction is None else _cell(row, direction),
        )


def _mapped(columns: ColumnMap) -> list[str | None]:
    return [columns.time, columns.identity, columns.message, columns.direction]


def _cell(row: Any, column: str) -> Any:
    if column in row:
        return row[column]
    value = row
    for part in column.split("."):  # a nested JSON key
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _bad(options: LogOptions, line: int, why: str) -> ConfigError:
    return ConfigError(f"{options.path} line {line}: {why}")


# -- lines to recorder events ---------------------------------------------------------------


@dataclass
class _Charger:
    identity: str
    version: OcppVersion | None
    connection_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    seq: itertools.count[int] = field(default_factory=itertools.count)
    waiting: list[LogLine] = field(default_factory=list)  # until the version is known
    calls: dict[str, Direction] = field(default_factory=dict)  # message id -> direction
    opened: bool = False


@dataclass
class LogEvents:
    """Turns log lines into the events ``ocproxy proxy`` would have recorded."""

    options: LogOptions
    chargers: dict[str, _Charger] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    messages: int = 0

    line: int = 0  # the last line read

    def events(self, lines: Iterable[LogLine]) -> Iterator[RecorderEvent]:
        """The events of every line, then of the end of the log."""
        chargers = self.chargers
        text_opcode = Opcode.TEXT
        for item in lines:
            self.line = item.line
            charger = chargers.get(item.identity)
            if charger is None or not charger.opened:
                yield from self.feed(item)
                continue
            # A charger already under way: its frame, inline (this runs once a message).
            self.messages += 1
            direction = item.direction or _direction(charger, item.text)
            data = item.text.encode("utf-8", "surrogatepass")
            yield FrameReceived(
                charger.connection_id,
                next(charger.seq),
                item.ts,
                direction,
                text_opcode,
                data,
                len(data),
                identity=charger.identity,
            )
        yield from self.finish()

    def feed(self, item: LogLine) -> Iterator[RecorderEvent]:
        charger = self.chargers.get(item.identity)
        if charger is None:
            charger = _Charger(item.identity, self.options.version)
            self.chargers[item.identity] = charger
        if charger.version is not None:
            yield from self._frame(charger, item)
            return
        charger.waiting.append(item)
        hint = message_version(item.text)
        if hint is None and len(charger.waiting) < VERSION_LOOKAHEAD:
            return
        yield from self._decide(charger, hint)

    def finish(self) -> Iterator[RecorderEvent]:
        """The chargers still waiting for a version at the end of the log."""
        for charger in self.chargers.values():
            if charger.version is None:
                yield from self._decide(charger, None)

    def _decide(self, charger: _Charger, hint: OcppVersion | None) -> Iterator[RecorderEvent]:
        if hint is None:
            self.notes.append(
                f"{charger.identity}: no OCPP version evident from its first messages; taken "
                "as 1.6 (give --ocpp to choose)"
            )
        charger.version = hint or OcppVersion.V16
        waiting, charger.waiting = charger.waiting, []
        for item in waiting:
            yield from self._frame(charger, item)

    def _frame(self, charger: _Charger, item: LogLine) -> Iterator[RecorderEvent]:
        seq = next(charger.seq)
        if seq == 0:
            charger.opened = True
            yield self._opened(charger, item.ts)
        self.messages += 1
        direction = item.direction or _direction(charger, item.text)
        data = item.text.encode("utf-8", "surrogatepass")
        yield FrameReceived(
            charger.connection_id,
            seq,
            item.ts,
            direction,
            Opcode.TEXT,
            data,
            len(data),
            identity=charger.identity,
        )

    def _opened(self, charger: _Charger, ts: float) -> ConnectionOpened:
        assert charger.version is not None
        subprotocol = SUBPROTOCOLS.get(charger.version, "ocpp1.6")
        return ConnectionOpened(
            connection_id=charger.connection_id,
            ts=ts,
            identity=charger.identity,
            path="/" + quote(charger.identity, safe=""),
            remote_addr=None,
            offered_subprotocols=(subprotocol,),
            subprotocol=subprotocol,
            upstream_url=None,
            handshake_status=101,
            source=self.options.source,
        )


def message_version(text: str) -> OcppVersion | None:
    """The OCPP version a message betrays (see :func:`~ocproxy.importer.mapping.version_hint`)."""
    head = _HEAD.match(text)
    if head is None or head.group(1) != "2":
        return None
    action = head.group(3)
    payload: object = None
    if action == "BootNotification":
        try:
            payload = json.loads(text)[3]
        except (ValueError, IndexError, TypeError, KeyError):
            return None
    return version_hint(action, payload)


def _direction(charger: _Charger, text: str) -> Direction:
    """A CALL's by its action; an answer's against its CALL's (the CSMS's if none)."""
    head = _HEAD.match(text)
    if head is None:
        return Direction.TO_CSMS  # unreadable: as if the charger sent it
    kind, message_id, action = head.group(1), head.group(2), head.group(3)
    if kind in ("2", "6") and action is not None:
        direction = call_direction(action)
        if kind == "2":
            charger.calls[message_id] = direction
            if len(charger.calls) > 10_000:  # answered ones are dropped; this bounds the rest
                del charger.calls[next(iter(charger.calls))]
        return direction
    called = charger.calls.pop(message_id, None) if kind in ("3", "4") else None
    if called is None and kind == "5":  # a CALLRESULTERROR travels with its CALL
        return Direction.TO_CSMS
    return Direction.TO_CHARGER if called is None else called.reverse


def open_log(path: Path) -> IO[str]:
    try:
        return open(path, encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
