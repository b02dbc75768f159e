"""The recording: a DuckDB file written by one thread, its schema made by migrations.

``Recorder`` is imported on first use: the relaying process needs only ``DEFAULT_DB``,
``RecorderStats`` and ``Sink``, and must not load DuckDB for them.
"""

from typing import TYPE_CHECKING, Any

from ocproxy.recorder.sink import DEFAULT_DB, RecorderStats, Sink

if TYPE_CHECKING:
    from ocproxy.recorder.writer import Recorder

__all__ = ["DEFAULT_DB", "Recorder", "RecorderStats", "Sink"]


def __getattr__(name: str) -> Any:
    if name == "Recorder":
        from ocproxy.recorder.writer import Recorder

        return Recorder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
