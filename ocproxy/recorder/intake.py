"""How a received frame becomes a row of the batch: the short cut or the general path.

The general path (:func:`~ocproxy.core.observe.observe`) parses the whole message and
builds its row object for the auditor and the sinks. A plain CALL or CALLRESULT
(:func:`~ocproxy.core.quick.quick_frame`, nearly every frame) takes a short cut: it is
correlated from the four facts msgspec read, and

- when nothing reads row objects (no audit, and every sink content with
  :meth:`Sink.on_plain_frame`), its columns go straight into the batch: measured on the
  benchmark's MeterValues traffic, 2.0 us a frame instead of 7.6 from the relay's tuple
  to the Arrow table;
- otherwise its row is built from those facts and the payload decoded alone, which
  skips the general path's checks the short cut has already made.

The rows and findings are the same either way (``tests/test_intake.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ocproxy.core.correlation import Correlation, Correlator
from ocproxy.core.events import FrameReceived
from ocproxy.core.frames import Call, CallResult, decode_json, parse_frame
from ocproxy.core.observe import PAIRING_VALUES, ObservedFrame, observe, observed
from ocproxy.core.quick import Quick, quick_frame
from ocproxy.core.redaction import Redactor
from ocproxy.recorder.packed import DATA, DIRECTIONS, TOO_LARGE, Packed, pack, unpack
from ocproxy.recorder.rows import OK, FrameRows
from ocproxy.recorder.sink import Sink

if TYPE_CHECKING:  # the audit is loaded only by a recorder that audits
    from ocproxy.audit.auditor import Auditor, Finding


class Intake:
    """Frames in, rows (and findings) out, for one recorder; keeps each connection's
    :class:`Correlator` in the dict it is given. ``short_cut=False`` sends every frame
    down the general path (to compare the two)."""

    def __init__(
        self,
        redactor: Redactor | None,
        auditor: Auditor | None,
        sinks: Sequence[Sink],
        *,
        short_cut: bool = True,
    ) -> None:
        self.redactor = redactor
        self.auditor = auditor
        self.sinks = list(sinks)
        self.short_cut = short_cut
        # Whether a plain frame's row object can be skipped: nobody reads it.
        self.lean = auditor is None and not any(sink.wants_rows for sink in sinks)

    def packed(
        self,
        item: Packed,
        rows: FrameRows,
        findings: list[Finding],
        correlators: dict[str, Correlator],
    ) -> None:
        """Record one frame given as the relay's tuple (see :mod:`ocproxy.recorder.packed`)."""
        data = item[DATA]
        if self.short_cut and type(data) is bytes and not item[TOO_LARGE]:
            parsed = quick_frame(data)
            if parsed is not None:
                self._quick(item, parsed, rows, findings, correlators)
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
        if self.short_cut and type(data) is bytes and not event.too_large:
            parsed = quick_frame(data)
            if parsed is not None:
                self._quick(pack(event), parsed, rows, findings, correlators)
                return
        self._general(event, rows, findings, correlators)

    def _quick(
        self,
        item: Packed,
        parsed: Quick,
        rows: FrameRows,
        findings: list[Finding],
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
            # The general row, with the correlation already made.
            event = unpack(item)
            assert isinstance(event, FrameReceived)
            self._row(observed(event, parse_frame(data), correlation, redactor), rows, findings)
            return
        if not self.lean:
            self._row(_row_of(item, parsed, correlation), rows, findings)
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
        rows.pairing.append(None if pairing is None else PAIRING_VALUES[pairing])
        for sink in self.sinks:
            sink.on_plain_frame(connection_id, direction, size)

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
        self._row(observe(event, correlator, self.redactor), rows, findings)

    def _row(self, row: ObservedFrame, rows: FrameRows, findings: list[Finding]) -> None:
        """A row object: into the batch, then to the auditor and the sinks."""
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


def _row_of(item: Packed, parsed: Quick, correlation: Correlation) -> ObservedFrame:
    """The row :func:`~ocproxy.core.observe.observe` makes of a plain frame."""
    kind, message_id, action, payload = parsed
    # Decoded as the general path decodes the whole message (msgspec, then the
    # standard library for what it refuses, e.g. 1e999).
    value, _ = decode_json(payload)
    frame = Call(message_id, action, value) if action is not None else CallResult(message_id, value)
    pairing = correlation.pairing
    # Positional, in ObservedFrame's order (see observe).
    return ObservedFrame(
        item[1], item[2], item[3], item[4], item[5], item[6], item[7], OK, None, kind,
        message_id, correlation.action, payload, None, None, correlation.request_seq,
        correlation.latency_ms, None if pairing is None else PAIRING_VALUES[pairing], item[9],
        item[10], None, frame, correlation.outstanding,
    )  # fmt: skip
