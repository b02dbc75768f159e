"""What the relaying process needs of the recorder: no DuckDB here.

The relay imports this (and :mod:`ocproxy.recorder.process`), never the writer: the
proxy's relaying process then holds neither DuckDB nor Arrow (measured, ~60 MB less).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ocproxy.core.events import ConnectionClosed, ConnectionOpened
from ocproxy.core.observe import ObservedFrame

if TYPE_CHECKING:
    from ocproxy.audit.auditor import Finding

DEFAULT_DB = "ocproxy.duckdb"


class Sink:
    """Receives what the recorder processed, on the writer thread. Override what you need."""

    #: Whether :meth:`on_frame` must see every frame's row. A sink that sets this False
    #: gets :meth:`on_plain_frame` for a well-formed CALL or CALLRESULT instead, and
    #: (with no audit) lets the recorder skip building that row: its short cut.
    wants_rows = True

    def on_plain_frame(self, connection_id: str, direction: str, size: int) -> None:
        """A well-formed CALL or CALLRESULT was recorded without a row object (see
        :attr:`wants_rows`); ``direction`` is ``to_csms`` or ``to_charger``."""

    def on_open(self, event: ConnectionOpened) -> None:
        """A connection was opened (or refused: see ``handshake_status``)."""

    def on_frame(self, frame: ObservedFrame, findings: Sequence[Finding] = ()) -> None:
        """A frame was parsed, correlated and audited (it is written with the next batch)."""

    def on_close(self, event: ConnectionClosed) -> None:
        """A connection was closed."""

    def on_error(self, message: str) -> None:
        """Recording failed; ``message`` says what and how many rows were lost."""


@dataclass
class RecorderStats:
    run_id: str
    connections: int = 0
    frames_recorded: int = 0
    frames_lost: int = 0
    backpressure_waits: int = 0
    backpressure_wait_s: float = 0.0
    max_queue_depth: int = 0
    errors: list[str] = field(default_factory=list)
