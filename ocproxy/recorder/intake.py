"""How a received frame becomes a row of the batch: the short cut or the general path.

The general path (:func:`~ocproxy.core.observe.observe`) parses the whole message,
builds its row object and hands it to the auditor and the sinks. When nothing reads
the row object (no audit, and every sink content with :meth:`Sink.on_plain_frame`), a
plain CALL or CALLRESULT (:func:`~ocproxy.core.quick.quick_frame`) is correlated and
its columns appended straight to the batch: measured on the benchmark's MeterValues
traffic, 2.0 us a frame instead of 7.6 from the relay's tuple to the Arrow table. The
rows are the same either way (``tests/recorder/test_intake.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ocproxy.core.correlation import Correlation, Correlator, Pairing
from ocproxy.core.events import FrameReceived
from ocproxy.core.frames import parse_frame
from ocproxy.core.observe import ObservedFrame, observe, observed
from ocproxy.core.quick import quick_frame
from ocproxy.core.redaction import Redactor
from ocproxy.recorder.packed import DATA, DIRECTIONS, TOO_LARGE, Packed, pack, unpack
from ocproxy.recorder.rows import FrameRows
from ocproxy.recorder.sink import Sink

if TYPE_CHECKING:  # the audit is loaded only by a recorder that audits
    from ocproxy.audit.auditor import Auditor, Finding

_PAIRINGS = {p: p.value for p in Pairing}


class Intake:
    """Frames in, rows (and findings) out, for one recorder; keeps each connection's
    :class:`Correlator` in the dict it is given."""

    def __init__(
        self, redactor: Redactor | None, auditor: Auditor | None, sinks: Sequence[Sink]
    ) -> None:
        self.redactor = redactor
        self.auditor = auditor
        self.sinks = list(sinks)
        # Whether any reader needs the row object of a plain frame.
        self.quick = auditor is None and not any(sink.wants_rows for sink in sinks)

    def packed(
        self,
        item: Packed,
        rows: FrameRows,
        findings: list[Finding],
        correlators: dict[str, Correlator],
    ) -> None:
        """Record one frame given as the relay's tuple (see :mod:`ocproxy.recorder.packed`)."""
        data = item[DATA]
        if self.quick and type(data) is bytes and not item[TOO_LARGE]:
            parsed = quick_frame(data)
            if parsed is not None:
                self._quick(item, parsed, rows, correlators)
                return
        event = unpack(item)
        assert isinstance(event, FrameReceived)
        self._general(event, rows, findings, correlators)

    def event(
        self,
        event: FrameReceived,
        rows: FrameRows,
        findings: list[Finding],
        correlators: dict[str, Correlator],
    ) -> None:
        """Record one frame given as its event."""
        data = event.data
        if self.quick and type(data) is bytes and not event.too_large:
            parsed = quick_frame(data)
            if parsed is not None:
                self._quick(pack(event), parsed, rows, correlators)
                return
        self._general(event, rows, findings, correlators)

    def _quick(
        self,
        item: Packed,
        parsed: tuple[int, str, str | None, str],
        rows: FrameRows,
        correlators: dict[str, Correlator],
    ) -> None:
        kind, message_id, action, payload = parsed
        _, connection_id, seq, ts, direction, _, data, size, _, _, _ = item
        correlator = correlators.get(connection_id)
        if correlator is None:
            correlator = correlators[connection_id] = Correlator()
        if action is not None:
            correlation = correlator.call(message_id, action, DIRECTIONS[direction], seq, ts)
        else:
            correlation = correlator.response(message_id, DIRECTIONS[direction], seq, ts)
            action = correlation.action
        redactor = self.redactor
        if redactor is not None and redactor.may_redact(action, data, response=kind == 3):
            self._redacted(item, correlation, rows)
            return
        rows.bases.append(item)
        rows.raw.append(data)
        rows.message_type.append(kind)
        rows.message_id.append(message_id)
        rows.action.append(action)
        rows.payload.append(payload)
        rows.request_seq.append(correlation.request_seq)
        rows.latency_ms.append(correlation.latency_ms)
        pairing = correlation.pairing
        rows.pairing.append(None if pairing is None else _PAIRINGS[pairing])
        for sink in self.sinks:
            sink.on_plain_frame(connection_id, direction, size)

    def _redacted(self, item: Packed, correlation: Correlation, rows: FrameRows) -> None:
        """A plain frame that may hold a secret: the general row, already correlated."""
        event = unpack(item)
        assert isinstance(event, FrameReceived)
        assert event.data is not None
        row = observed(event, parse_frame(event.data), correlation, self.redactor)
        rows.add(row)
        for sink in self.sinks:
            sink.on_frame(row, ())

    def _general(
        self,
        event: FrameReceived,
        rows: FrameRows,
        findings: list[Finding],
        correlators: dict[str, Correlator],
    ) -> None:
        correlator = correlators.get(event.connection_id)
        if correlator is None:
            correlator = correlators[event.connection_id] = Correlator()
        row: ObservedFrame = observe(event, correlator, self.redactor)
        rows.add(row)
        if self.auditor is None:
            for sink in self.sinks:
                sink.on_frame(row, ())
            return
        found = self.auditor.frame(row)
        if found:
            findings.extend(found)
        for sink in self.sinks:
            sink.on_frame(row, found)
