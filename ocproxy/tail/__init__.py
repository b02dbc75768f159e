"""``ocproxy tail``: a live (or recorded) view of connections and frames.

:mod:`ocproxy.tail.snapshot` holds the values and the pure functions that build them,
:mod:`ocproxy.tail.render` draws a snapshot, :mod:`ocproxy.tail.cli` is the command.
"""

from ocproxy.tail.render import render
from ocproxy.tail.snapshot import (
    ConnectionRow,
    FrameRow,
    TailFilters,
    TailSnapshot,
    apply_event,
    frame_row_from_event,
    frame_row_from_record,
    new_snapshot,
)

__all__ = [
    "ConnectionRow",
    "FrameRow",
    "TailFilters",
    "TailSnapshot",
    "apply_event",
    "frame_row_from_event",
    "frame_row_from_record",
    "new_snapshot",
    "render",
]
