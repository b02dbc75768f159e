"""A batch's frames kept column by column, and the Arrow table they become.

The recorder's short cut (:func:`ocproxy.core.quick.quick_frame`) appends a plain
CALL's or CALLRESULT's columns straight here, without building an
:class:`~ocproxy.core.observe.ObservedFrame`; the general path appends the row it built.
The columns nearly always empty (parse status and detail, error code and description,
what was redacted) are not appended per frame: the few rows that have them are kept by
index and written over constant columns when the table is built.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from ocproxy.core.frames import ParseStatus
from ocproxy.core.observe import ObservedFrame
from ocproxy.recorder.packed import Packed

TS = pa.timestamp("us", tz="UTC")

FRAME_SCHEMA = pa.schema(
    [
        ("connection_id", pa.string()),
        ("seq", pa.int64()),
        ("ts", TS),
        ("direction", pa.string()),
        ("opcode", pa.string()),
        ("raw", pa.binary()),
        ("size", pa.int64()),
        ("message_type", pa.int16()),
        ("message_id", pa.string()),
        ("action", pa.string()),
        ("parse_status", pa.string()),
        ("parse_detail", pa.string()),
        ("payload", pa.string()),
        ("error_code", pa.string()),
        ("error_description", pa.string()),
        ("request_seq", pa.int64()),
        ("latency_ms", pa.float64()),
        ("pairing", pa.string()),
        ("injected", pa.bool_()),
        ("redacted", pa.list_(pa.string())),
    ]
)
OK = ParseStatus.OK.value


class FrameRows:
    """The frames of one batch, in order; ``len()`` counts them."""

    __slots__ = (
        "action",
        "bases",
        "latency_ms",
        "message_id",
        "message_type",
        "pairing",
        "payload",
        "rare",
        "raw",
        "request_seq",
    )

    def __init__(self) -> None:
        # Each frame's packed tuple (see ocproxy.recorder.packed): connection id, seq,
        # time, direction, opcode, size and injected are read from it.
        self.bases: list[Packed] = []
        self.raw: list[bytes | None] = []
        self.message_type: list[int | None] = []
        self.message_id: list[str | None] = []
        self.action: list[str | None] = []
        self.payload: list[str | None] = []
        self.request_seq: list[int | None] = []
        self.latency_ms: list[float | None] = []
        self.pairing: list[str | None] = []
        # index -> the row, for rows with a parse failure, an error or a redaction
        self.rare: dict[int, ObservedFrame] = {}

    def __len__(self) -> int:
        return len(self.bases)

    def add(self, frame: ObservedFrame) -> None:
        """Append a row the general path built."""
        if (
            frame.parse_status != OK
            or frame.parse_detail is not None
            or frame.error_code is not None
            or frame.error_description is not None
            or frame.redacted is not None
        ):
            self.rare[len(self.bases)] = frame
        self.bases.append(
            (
                "f", frame.connection_id, frame.seq, frame.ts, frame.direction, frame.opcode,
                None, frame.size, False, frame.identity, frame.injected,
            )
        )  # fmt: skip
        self.raw.append(frame.raw)
        self.message_type.append(frame.message_type)
        self.message_id.append(frame.message_id)
        self.action.append(frame.action)
        self.payload.append(frame.payload)
        self.request_seq.append(frame.request_seq)
        self.latency_ms.append(frame.latency_ms)
        self.pairing.append(frame.pairing)

    def table(self) -> pa.Table:
        """The ``frames`` rows, in :data:`FRAME_SCHEMA`."""
        count = len(self.bases)
        _, connection_id, seq, ts, direction, opcode, _, size, _, _, injected = (
            zip(*self.bases, strict=True) if count else ([],) * 11
        )
        parse_status: list[str] = [OK] * count
        parse_detail: list[str | None] = [None] * count
        error_code: list[str | None] = [None] * count
        error_description: list[str | None] = [None] * count
        redacted: list[Any] = [None] * count
        for index, frame in self.rare.items():
            parse_status[index] = frame.parse_status
            parse_detail[index] = frame.parse_detail
            error_code[index] = frame.error_code
            error_description[index] = frame.error_description
            redacted[index] = None if frame.redacted is None else list(frame.redacted)
        columns: dict[str, Any] = {
            "connection_id": connection_id,
            "seq": seq,
            # Whole microseconds through an int64 column: a datetime per frame costs 4x more.
            "ts": pa.array([round(t * 1e6) for t in ts], pa.int64()).cast(TS),
            "direction": direction,
            "opcode": opcode,
            "raw": self.raw,
            "size": size,
            "message_type": self.message_type,
            "message_id": self.message_id,
            "action": self.action,
            "parse_status": parse_status,
            "parse_detail": parse_detail,
            "payload": self.payload,
            "error_code": error_code,
            "error_description": error_description,
            "request_seq": self.request_seq,
            "latency_ms": self.latency_ms,
            "pairing": self.pairing,
            "injected": injected,
            "redacted": redacted,
        }
        return pa.table(columns, schema=FRAME_SCHEMA)
