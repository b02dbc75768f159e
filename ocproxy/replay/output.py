"""What a replay found, and how it is shown: side-by-side diffs, a summary, a progress bar.

:class:`ReplayReport` is filled in by the runner as the replay goes; identical
exchanges are only counted (a 100,000-exchange replay keeps no bytes for them), the
others keep both versions of their frames so they can be shown side by side.
Rendering is a pure function of the report (tested by rendering to a string console).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from ocproxy.replay.compare import Difference, DiffKind


class Outcome(StrEnum):
    SAME = "same"
    DIFFERENT = "different"
    NOT_REPLAYED = "not replayed"
    SKIPPED = "skipped"


@dataclass
class ExchangeResult:
    """One exchange that did not come out the same."""

    index: int
    action: str
    kind: str  # "call", "send", "raw" (sent byte-exact) or "call from peer"
    outcome: Outcome
    differences: list[Difference] = field(default_factory=list)
    recorded_request: bytes | None = None
    replay_request: bytes | None = None
    recorded_response: bytes | None = None
    replay_response: bytes | None = None
    note: str = ""


@dataclass
class ActionTally:
    exchanges: int = 0
    same: int = 0
    different: int = 0
    timeouts: int = 0
    not_replayed: int = 0
    skipped: int = 0


@dataclass
class ReplayReport:
    source_id: str
    role: str
    peer: str  # the target URL, or the address listened on
    total: int  # exchanges in the script
    replay_id: str | None = None
    identity: str = ""
    results: list[ExchangeResult] = field(default_factory=list)
    tally: dict[str, ActionTally] = field(default_factory=dict)
    # (exchange, action, recorded message id, replay message id)
    id_map: list[tuple[int, str, str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    failure: str | None = None  # why the replay stopped early, naming the exchange
    connection: list[Difference] = field(default_factory=list)
    interrupted: bool = False
    unsolicited_recorded: int = 0
    unsolicited_replayed: int = 0
    first_sent: float | None = None  # perf_counter() of the first frame sent
    last_done: float | None = None  # perf_counter() when the last exchange finished
    latencies_ms: list[float] = field(default_factory=list)

    def count(self, action: str, outcome: Outcome, *, timeout: bool = False) -> None:
        row = self.tally.setdefault(action, ActionTally())
        row.exchanges += 1
        if outcome is Outcome.SAME:
            row.same += 1
        elif outcome is Outcome.DIFFERENT:
            row.different += 1
        elif outcome is Outcome.NOT_REPLAYED:
            row.not_replayed += 1
        else:
            row.skipped += 1
        row.timeouts += timeout

    def add(self, result: ExchangeResult) -> None:
        timeout = any(d.kind is DiffKind.TIMEOUT for d in result.differences)
        self.count(result.action, result.outcome, timeout=timeout)
        self.results.append(result)

    @property
    def different(self) -> list[ExchangeResult]:
        return [r for r in self.results if r.outcome is Outcome.DIFFERENT]

    @property
    def differs(self) -> bool:
        return self.failure is not None or bool(self.connection) or bool(self.different)

    @property
    def exit_code(self) -> int:
        """1 when anything differs, 130 when interrupted with no difference, else 0."""
        if self.differs:
            return 1
        return 130 if self.interrupted else 0

    def totals(self) -> ActionTally:
        total = ActionTally()
        for row in self.tally.values():
            for name in vars(total):
                setattr(total, name, getattr(total, name) + getattr(row, name))
        return total

    @property
    def rate(self) -> float | None:
        """Exchanges per second, from the first frame sent to the last exchange finished."""
        if self.first_sent is None or self.last_done is None:
            return None
        elapsed = self.last_done - self.first_sent
        totals = self.totals()
        return (totals.same + totals.different) / elapsed if elapsed > 0 else None

    def as_json(self) -> dict[str, Any]:
        """The summary for tools and CI (``--json``)."""
        totals = self.totals()
        return {
            "source_connection": self.source_id,
            "replay_connection": self.replay_id,
            "role": self.role,
            "peer": self.peer,
            "exchanges": self.total,
            "totals": vars(totals),
            "by_action": {action: vars(row) for action, row in sorted(self.tally.items())},
            "exchanges_per_s": self.rate,
            "p50_ms": _median(self.latencies_ms),
            "failure": self.failure,
            "interrupted": self.interrupted,
            "warnings": self.warnings,
            "connection_differences": [d.describe() for d in self.connection],
            "differences": [
                {
                    "exchange": r.index,
                    "action": r.action,
                    "kind": r.kind,
                    "differences": [d.describe() for d in r.differences],
                }
                for r in self.different
            ],
            "skipped": [
                {"exchange": r.index, "action": r.action, "reason": r.note}
                for r in self.results
                if r.outcome is Outcome.SKIPPED
            ],
            "exit_code": self.exit_code,
        }


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


# -- rendering ---------------------------------------------------------------------------

_MAX_LINES = 24


def print_report(report: ReplayReport, console: Console, *, max_shown: int = 20) -> None:
    """Warnings, each differing exchange side by side, skipped frames, the summary."""
    for warning in report.warnings:
        console.print(Text(f"warning: {warning}", "yellow"))
    different = report.different
    for result in different[:max_shown]:
        console.print(exchange_panel(result))
    if len(different) > max_shown:
        console.print(
            f"... and {len(different) - max_shown} more differing exchanges (--max-shown)"
        )
    for result in report.results:
        if result.outcome is Outcome.SKIPPED:
            console.print(Text(f"skipped #{result.index} {result.action}: {result.note}", "yellow"))
    for difference in report.connection:
        console.print(Text(difference.describe(), "bold red"))
    console.print(summary_table(report))
    console.print(verdict(report))


def exchange_panel(result: ExchangeResult) -> Panel:
    """One exchange: recorded and replayed frames side by side, then what differs."""
    frames = Table(box=None, expand=True, show_edge=False, pad_edge=False)
    frames.add_column("", style="dim", no_wrap=True)
    frames.add_column("recorded", ratio=1, overflow="fold")
    frames.add_column("replay", ratio=1, overflow="fold")
    if result.kind == "call from peer" or result.recorded_response is None:
        frames.add_row("request", _pretty(result.recorded_request), _pretty(result.replay_request))
    frames.add_row("answer", _pretty(result.recorded_response), _pretty(result.replay_response))
    lines = Table(box=None, show_header=False, pad_edge=False)
    for _ in range(4):
        lines.add_column(overflow="fold")
    for d in result.differences:
        lines.add_row(
            Text(d.kind, "bold red"),
            d.path or d.where,
            d.recorded or "-",
            Text(d.replayed or "-", "red"),
        )
    count = len(result.differences)
    title = f"#{result.index} {result.action} ({result.kind}): {count} difference" + "s" * (
        count != 1
    )
    return Panel(Group(frames, lines), title=title, title_align="left", border_style="red")


def _pretty(data: bytes | None) -> RenderableType:
    if data is None:
        return Text("(none)", "dim")
    text = data.decode("utf-8", "replace")
    try:
        text = json.dumps(json.loads(text), indent=1, ensure_ascii=False)
    except ValueError:
        return Text(repr(text)[:2000], "magenta")  # shown escaped: it is malformed
    lines = text.splitlines()
    if len(lines) > _MAX_LINES:
        lines = [*lines[: _MAX_LINES - 1], f"... {len(lines) - _MAX_LINES + 1} more lines"]
    return Text("\n".join(lines))


def summary_table(report: ReplayReport) -> Table:
    totals = report.totals()
    rate = report.rate
    title = (
        f"replay of {report.source_id} as {report.role} against {report.peer or '-'}: "
        f"{totals.exchanges} of {report.total} exchanges"
        + ("" if rate is None else f", {rate:,.0f}/s")
    )
    p50 = _median(report.latencies_ms)
    if p50 is not None:
        title += f", answer p50 {p50:.1f} ms"
    table = Table(title=title, title_justify="left", show_footer=True)
    names = ("exchanges", "same", "different", "timeouts", "not_replayed", "skipped")
    table.add_column("action", footer="total")
    for name in names:
        footer = _cell(name, getattr(totals, name))
        table.add_column(name.replace("_", " "), justify="right", footer=footer)
    for action, row in sorted(report.tally.items()):
        table.add_row(action, *(_cell(name, getattr(row, name)) for name in names))
    return table


def _cell(name: str, value: int) -> Text:
    bad = name in ("different", "timeouts", "not_replayed") and value
    return Text(str(value), "bold red" if bad else "yellow" if name == "skipped" and value else "")


def verdict(report: ReplayReport) -> Text:
    if report.failure is not None:
        return Text(f"replay stopped: {report.failure}", "bold red")
    different = len(report.different) + len(report.connection)
    if different:
        return Text(f"{different} difference(s) from the recording", "bold red")
    if report.interrupted:
        return Text("interrupted: no difference in what was replayed", "yellow")
    return Text("no difference from the recording", "bold green")


class ProgressBar:
    """A rich progress bar advanced once per exchange; redrawn at most ten times a second."""

    def __init__(self, console: Console, total: int, *, enabled: bool = True) -> None:
        self._progress = Progress(
            TextColumn("replaying"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not enabled or not console.is_terminal,
        )
        self._task = self._progress.add_task("replay", total=total)
        self._done = 0
        self._shown_at = 0.0

    def advance(self) -> None:
        self._done += 1
        now = time.perf_counter()
        # Progress.update takes a lock and re-renders: not on every one of 100,000 exchanges.
        if now - self._shown_at >= 0.1:
            self._shown_at = now
            self._progress.update(self._task, completed=self._done)

    def __enter__(self) -> ProgressBar:
        self._progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.update(self._task, completed=self._done)
        self._progress.stop()
