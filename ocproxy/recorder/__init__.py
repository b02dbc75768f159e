"""The recording: a DuckDB file written by one thread, its schema made by migrations."""

from ocproxy.recorder.writer import DEFAULT_DB, Recorder, RecorderStats, Sink

__all__ = ["DEFAULT_DB", "Recorder", "RecorderStats", "Sink"]
