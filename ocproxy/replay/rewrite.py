"""Byte-level rewrites of recorded frames for a replay.

Fresh message ids, a peer-assigned ``transactionId`` carried over, timestamps shifted
to the present: each works on the raw bytes so that everything else in a frame stays
byte-exact. Re-exported by :mod:`ocproxy.replay.script`, where they were defined first.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any

# The head of an OCPP-J frame: '[', the message type, the message id as a JSON string.
_HEAD = re.compile(rb'\A\s*\[\s*([2-6])\s*,\s*("(?:[^"\\]|\\.)*")')
_TIMESTAMP = re.compile(rb'"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})?"')
_TRANSACTION_ID = re.compile(rb'("transactionId"\s*:\s*)(-?\d+|"(?:[^"\\]|\\.)*")')


def with_message_id(raw: bytes, message_id: str) -> bytes:
    """The frame with its message id replaced; every other byte unchanged."""
    head = _HEAD.match(raw)
    if head is None:
        return raw
    start, end = head.span(2)
    return raw[:start] + json.dumps(message_id).encode() + raw[end:]


def json_frame(value: list[Any]) -> bytes:
    """A frame of our own (the CALLERROR for a CALL the recording cannot answer)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def after_message_id(raw: bytes) -> bytes | None:
    """Everything after the message id: equal for two answers that differ only by id."""
    head = _HEAD.match(raw)
    return None if head is None else raw[head.start(1) : head.end(1)] + raw[head.end(2) :]


def map_values(raw: bytes, mapping: dict[bytes, bytes]) -> bytes:
    """Carry a peer-assigned ``transactionId`` over: recorded value -> the replay's value."""
    if not mapping or b'"transactionId"' not in raw:
        return raw

    def swap(match: re.Match[bytes]) -> bytes:
        return match.group(1) + mapping.get(match.group(2), match.group(2))

    return _TRANSACTION_ID.sub(swap, raw)


def learn_values(recorded: Any, replayed: Any, into: dict[bytes, bytes]) -> None:
    """Note every ``transactionId`` the peer now assigns differently from the recording."""
    if isinstance(recorded, dict) and isinstance(replayed, dict):
        for key, value in recorded.items():
            if key not in replayed:
                continue
            new = replayed[key]
            if key == "transactionId" and isinstance(value, int | str) and value != new:
                into[json.dumps(value).encode()] = json.dumps(new).encode()
            else:
                learn_values(value, new, into)
    elif isinstance(recorded, list) and isinstance(replayed, list):
        for old, new in zip(recorded, replayed, strict=False):
            learn_values(old, new, into)


def shift_timestamps(raw: bytes, delta_s: float) -> bytes:
    """Every ISO 8601 date-time string moved by ``delta_s``, in the same format."""
    if not delta_s:
        return raw

    def shift(match: re.Match[bytes]) -> bytes:
        base, fraction, zone = (g.decode() if g else "" for g in match.groups())
        try:
            moment = datetime.fromisoformat(base + (fraction[:7] if fraction else ""))
        except ValueError:
            return match.group(0)  # 2024-13-45T...: not a date, leave it alone
        moment += timedelta(seconds=delta_s)
        text = moment.strftime("%Y-%m-%dT%H:%M:%S")
        if fraction:
            digits = len(fraction) - 1
            text += "." + f"{moment.microsecond:06d}".ljust(digits, "0")[:digits]
        return f'"{text}{zone}"'.encode()

    return _TIMESTAMP.sub(shift, raw)
