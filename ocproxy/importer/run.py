"""Import one file into a recording: read it in shares, stage each, merge in one go.

A log is read by ``jobs`` processes at once, each keeping the chargers whose identity
hashes to its share (rules such as message-id uniqueness span a charger's
connections, so a charger is never split); a capture by one (tshark is the slow part).
Each share is recorded by the proxy's Recorder into a staging file; the staging files
are then copied into the recording in one transaction: a file is imported whole or
not at all.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ocproxy.core.events import RecorderEvent
from ocproxy.errors import ConfigError
from ocproxy.importer.logs import LogEvents, LogOptions, open_log, read_lines
from ocproxy.importer.midstream import MidConnections, run_segments
from ocproxy.importer.pcap import CaptureEvents, CaptureOptions, run_tshark, tshark_binary
from ocproxy.importer.staging import StagingOptions, merge, stage

Progress = Callable[[float | None], None]  # fraction of the file done; None: unknown
_CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".pcap.gz", ".pcapng.gz")
_LOG_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


@dataclass(frozen=True)
class ImportResult:
    path: str
    kind: str
    run_id: str
    connections: int
    messages: int
    seconds: float
    notes: tuple[str, ...] = ()
    cpu_s: float = 0.0  # CPU time of every process that worked on it (bench figures)
    share_cpu_s: tuple[float, ...] = ()  # of each process that read and staged a share
    merge_cpu_s: float = 0.0  # of the copy into the recording, after them

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Share:
    messages: int = 0
    connections: int = 0
    notes: list[str] = field(default_factory=list)
    cpu_s: float = 0.0


def file_kind(path: str, given: str | None) -> str:
    if given is not None:
        return given
    name = path.lower()
    if name.endswith(_CAPTURE_SUFFIXES):
        return "pcap"
    for suffix, kind in _LOG_SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    raise ConfigError(f"{path}: cannot tell its format from its name; give --format")


def import_capture(
    target: Path, options: CaptureOptions, staging: StagingOptions, progress: Progress
) -> ImportResult:
    started = time.time()
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".ocproxy-import-") as tmp:
        process, ports = run_tshark(options)
        reader = CaptureEvents(options, tls_streams=ports.tls_streams)
        mid = MidConnections()
        staged = Path(tmp) / "s0.duckdb"
        try:
            events = _capture_events(process, ports.tls_streams, reader, mid)
            stats = stage(staged, events, staging, lambda _n: progress(None))
            process.wait()
            assert process.stderr is not None
            complaint = _tshark_complaint(process.stderr.read())
        finally:
            _stop(process)
        notes = [*reader.notes, *mid.notes()]
        if complaint:
            notes.insert(0, f"tshark: {complaint}; imported what came before")
        if not reader.streams and not reader.locked and not mid.found:
            notes.append(f"no WebSocket upgrade in {options.path}: nothing to import")
        progress(1.0)
        run_id = merge(target, [staged], _settings(options.path, "pcap"), staging.source, started)
    return ImportResult(
        options.path,
        "pcap",
        run_id,
        stats.connections,
        reader.messages + mid.messages,
        time.time() - started,
        tuple(notes),
    )


def _capture_events(
    process: subprocess.Popen[bytes],
    tls_streams: frozenset[str],
    reader: CaptureEvents,
    mid: MidConnections,
) -> Iterator[RecorderEvent]:
    """The PDML pass's events, then those of the streams it could not read: no upgrade
    seen (or its answer missed: the capture begun in between), from a third pass."""
    assert process.stdout is not None
    yield from reader.read(process.stdout)
    known = {n for n, s in reader.streams.items() if s.opened} | tls_streams
    segments = run_segments(tshark_binary(), reader.options.path, known)
    assert segments.stdout is not None
    try:
        yield from mid.read(segments.stdout)
        segments.wait()
    finally:  # an import that failed on the way stops the pass too
        _stop(segments)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """A tshark process ended (killed if it is still writing) and its pipes closed."""
    if process.poll() is None:
        process.kill()
        process.wait()
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()


def _tshark_complaint(stderr: bytes) -> str:
    lines = [
        line.strip()
        for line in stderr.decode("utf-8", "replace").splitlines()
        if line.strip() and "dangerous" not in line and not line.startswith("Running as user")
    ]
    return lines[0] if lines else ""


def import_log(
    target: Path, options: LogOptions, staging: StagingOptions, jobs: int, progress: Progress
) -> ImportResult:
    started = time.time()
    lines = _count_lines(Path(options.path))
    with open_log(Path(options.path)) as handle:  # the mapping is checked before any work
        next(read_lines(replace(options, shares=1, share=0), handle), None)
    jobs = max(1, min(jobs, lines // 20_000 or 1))
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".ocproxy-import-") as tmp:
        staged = [Path(tmp) / f"s{k}.duckdb" for k in range(jobs)]
        if jobs == 1:
            shares = [
                _log_share(options, staged[0], staging, lambda n: progress(n / max(lines, 1)))
            ]
        else:
            shares = _in_processes(options, staged, staging, lines, progress)
        messages = sum(s.messages for s in shares)
        cpu = time.process_time()
        run_id = merge(
            target, staged, _settings(options.path, options.kind), staging.source, started
        )
        merge_cpu = time.process_time() - cpu
    notes = [n for s in shares for n in s.notes]
    if not messages:
        notes.append(f"no messages in {options.path}")
    return ImportResult(
        options.path,
        options.kind,
        run_id,
        sum(s.connections for s in shares),
        messages,
        time.time() - started,
        tuple(notes),
        sum(s.cpu_s for s in shares) + merge_cpu,
        tuple(s.cpu_s for s in shares),
        merge_cpu,
    )


def _log_share(
    options: LogOptions, staged: Path, staging: StagingOptions, report: Callable[[int], None]
) -> _Share:
    """Stage one share of a log; ``report`` gets the line reached now and then."""
    cpu = time.process_time()
    converter = LogEvents(options)
    with open_log(Path(options.path)) as handle:
        events = converter.events(read_lines(options, handle))
        stats = stage(staged, events, staging, lambda _n: report(converter.line))
    spent = time.process_time() - cpu
    return _Share(converter.messages, stats.connections, converter.notes, spent)


def _in_processes(
    options: LogOptions,
    staged: list[Path],
    staging: StagingOptions,
    lines: int,
    progress: Progress,
) -> list[_Share]:
    context = multiprocessing.get_context("forkserver")
    counters = [context.Value("q", 0, lock=False) for _ in staged]
    jobs = len(staged)
    with ProcessPoolExecutor(
        max_workers=jobs, mp_context=context, initializer=_keep, initargs=(counters,)
    ) as pool:
        futures: list[Future[_Share]] = [
            pool.submit(_share_in_process, k, replace(options, share=k, shares=jobs), path, staging)
            for k, path in enumerate(staged)
        ]
        while not all(f.done() for f in futures):
            progress(sum(c.value for c in counters) / max(lines * jobs, 1))
            time.sleep(0.1)
        return [f.result() for f in futures]  # a share's ConfigError is raised here


_COUNTERS: list[Any] = []


def _keep(counters: list[Any]) -> None:
    """Worker initializer: shared counters reach a worker only as it starts.

    A worker says nothing on stdout (its progress goes through the counters), but
    DuckDB draws a progress bar there for any statement over 2 s (a commit that
    checkpoints, on a busy machine): it would cut through the command's own output."""
    _COUNTERS[:] = counters
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


def _share_in_process(k: int, options: LogOptions, staged: Path, staging: StagingOptions) -> _Share:
    counter = _COUNTERS[k]

    def report(line: int) -> None:
        counter.value = line

    return _log_share(options, staged, staging, report)


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as handle:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _settings(path: str, kind: str) -> dict[str, Any]:
    return {"command": "import", "file": str(Path(path).resolve()), "format": kind}
