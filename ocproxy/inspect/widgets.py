"""The inspector's panes: chargers, frames (one page, asking for more at its edges) and
the detail of one frame, drawn with rich renderables."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Group, RenderableType
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from textual.message import Message
from textual.widgets import DataTable

from ocproxy.audit.rules import RULES
from ocproxy.inspect.model import ChargerRow, Detail, FrameItem, answer_text, clock, iso, pretty
from ocproxy.tail.render import short_ids

DIRECTION_STYLE = {"to_csms": "cyan", "to_charger": "magenta"}  # as in ocproxy.console
ARROW = {"to_csms": "→", "to_charger": "←"}
STATE_STYLE = {"open": "green", "closed": "dim", "refused": "bold red"}
ID_WIDTH = 13


class ChargersTable(DataTable[Any]):
    COLUMNS = ("identity", "ver", "state", "frames", "open", "E/W/I", "last close", "since")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._shown: dict[tuple[str, str], str] = {}  # (identity, column) -> text shown

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        for name in self.COLUMNS:
            self.add_column(name, key=name)

    def show(self, rows: Iterable[ChargerRow]) -> None:
        """Add new chargers and update the others in place (the cursor stays put); only
        cells whose text changed are touched (live, every charger changes every tick)."""
        shown = self._shown
        for row in rows:
            cells = charger_cells(row)
            if row.identity not in self.rows:
                self.add_row(*cells, key=row.identity)
                for name, cell in zip(self.COLUMNS, cells, strict=True):
                    shown[(row.identity, name)] = cell.plain
                continue
            for name, cell in zip(self.COLUMNS, cells, strict=True):
                before = shown.get((row.identity, name))
                if before == cell.plain:
                    continue
                wider = before is None or len(cell.plain) > len(before)
                self.update_cell(row.identity, name, cell, update_width=wider)
                shown[(row.identity, name)] = cell.plain

    def clear(self, columns: bool = False) -> ChargersTable:
        self._shown.clear()
        super().clear(columns)
        return self


def charger_cells(row: ChargerRow) -> list[Text]:
    errors, warnings, infos = row.findings
    findings = Text()
    findings.append(str(errors), "bold red" if errors else "dim")
    findings.append("/")
    findings.append(str(warnings), "yellow" if warnings else "dim")
    findings.append("/")
    findings.append(str(infos), "dim")
    return [
        Text(row.identity, "bold"),
        Text(row.version or "-"),
        Text(row.state, STATE_STYLE.get(row.state, "")),
        Text(str(row.frames), justify="right"),
        Text(str(row.open_calls), "yellow" if row.open_calls else "dim", justify="right"),
        findings,
        Text(row.last_close or "-", "dim"),
        Text(clock(row.since), "dim"),
    ]


class FramesTable(DataTable[Any]):
    """One page of frames; moving past its first or last row asks for the next page."""

    COLUMNS = ("time (UTC)", "", "type", "action", "id", "answer", "notes")

    class Edge(Message):
        def __init__(self, forward: bool) -> None:
            super().__init__()
            self.forward = forward

    def on_mount(self) -> None:
        self.cursor_type = "row"
        for name in self.COLUMNS:
            self.add_column(name, key=name or "dir")
        self.items: list[FrameItem] = []
        self.marked: set[tuple[str, int]] = set()

    def show(self, items: list[FrameItem], ends_at: float | None, *, cursor: int = 0) -> None:
        self.clear()
        self.items = list(items)
        shown = short_ids((i.message_id for i in items), ID_WIDTH)
        for item in items:
            self.add_row(*self.cells(item, shown, ends_at), key=f"{item.connection_id}/{item.seq}")
        if items:
            self.move_cursor(row=max(0, min(cursor, len(items) - 1)), animate=False)

    def append(self, items: list[FrameItem], ends_at: float | None, keep: int) -> None:
        """Follow mode: new frames at the bottom, the oldest dropped beyond ``keep``."""
        shown = short_ids((i.message_id for i in [*self.items[-50:], *items]), ID_WIDTH)
        for item in items:
            self.items.append(item)
            self.add_row(*self.cells(item, shown, ends_at), key=f"{item.connection_id}/{item.seq}")
        while len(self.items) > keep:
            old = self.items.pop(0)
            self.remove_row(f"{old.connection_id}/{old.seq}")
        if self.items:
            self.move_cursor(row=len(self.items) - 1, animate=False)

    def cells(self, item: FrameItem, shown: dict[str, str], ends_at: float | None) -> list[Text]:
        style = DIRECTION_STYLE.get(item.direction, "")
        kind_style = "bold red" if item.malformed or item.message_type in (4, 5) else style
        mark = "●" if (item.connection_id, item.seq) in self.marked else " "
        answer = answer_text(item, ends_at)
        answer_style = "red" if answer.startswith(("no answer", "CALLERROR", "[")) else "yellow"
        return [
            Text(f"{mark}{clock(item.ts)}", "dim"),
            Text(ARROW.get(item.direction, "?"), style),
            Text(item.type_name, kind_style),
            Text(item.action or "-", style),
            Text(shown.get(item.message_id or "", "-"), "dim"),
            Text(answer, answer_style),
            notes(item),
        ]

    @property
    def current(self) -> FrameItem | None:
        if not self.items or self.cursor_row < 0 or self.cursor_row >= len(self.items):
            return None
        return self.items[self.cursor_row]

    def action_cursor_down(self) -> None:
        if self.items and self.cursor_row >= len(self.items) - 1:
            self.post_message(self.Edge(forward=True))
            return
        super().action_cursor_down()

    def action_cursor_up(self) -> None:
        if self.items and self.cursor_row <= 0:
            self.post_message(self.Edge(forward=False))
            return
        super().action_cursor_up()

    def action_page_down(self) -> None:
        if self.items and self.cursor_row >= len(self.items) - 1:
            self.post_message(self.Edge(forward=True))
            return
        super().action_page_down()

    def action_page_up(self) -> None:
        if self.items and self.cursor_row <= 0:
            self.post_message(self.Edge(forward=False))
            return
        super().action_page_up()


def notes(item: FrameItem) -> Text:
    parts: list[Text] = []
    if item.malformed:
        parts.append(Text(item.parse_status, "red"))
    if item.error_code:
        parts.append(Text(item.error_code, "red"))
    if item.pairing not in (None, "matched"):
        parts.append(Text(f"[{item.pairing}]", "red"))
    if item.injected:
        parts.append(Text("◆ injected", "bold yellow"))
    parts.extend(Text(f"⚑{rule}", "bold red") for rule, _ in item.findings)
    return Text(" ").join(parts)


# -- the detail pane ----------------------------------------------------------------------


def detail_view(detail: Detail) -> RenderableType:
    """The frame, its payload, its pair, its findings explained, its connection."""
    parts: list[RenderableType] = [_heading(detail.frame), _payload(detail.frame)]
    if detail.pair is not None:
        label = "its answer" if detail.frame.is_call else "the CALL it answers"
        parts += [
            Text(f"\n{label}", "bold underline"),
            _heading(detail.pair),
            _payload(detail.pair),
        ]
    if detail.findings:
        parts.append(Text("\nfindings", "bold underline"))
        for finding in detail.findings:
            line = Text(f"⚑ {finding.rule} ", "bold red")
            line.append(f"({finding.severity}) ", "red")
            line.append(finding.message)
            if finding.path:
                line.append(f" at {finding.path}", "dim")
            parts.append(line)
            rule = RULES.get(finding.rule)
            if rule is not None:
                parts.append(Text(f"  {rule.title}. {rule.explanation}", "dim"))
    if detail.handshake:
        parts += [Text("\nconnection handshake", "bold underline"), _handshake(detail.handshake)]
    return Group(*parts)


def _heading(item: FrameItem) -> Text:
    style = DIRECTION_STYLE.get(item.direction, "")
    text = Text()
    text.append(f"{iso(item.ts)} ", "dim")
    text.append(f"{item.identity} ", "bold")
    text.append(f"{ARROW.get(item.direction, '?')} {item.direction} ", style)
    text.append(f"{item.type_name} ", "bold red" if item.malformed else f"bold {style}")
    text.append(f"{item.action or '-'} ", style)
    text.append(f"id={item.message_id or '-'} seq={item.seq} {item.size} B", "dim")
    if item.latency_ms is not None and item.is_response:
        text.append(f" {item.latency_ms:.1f} ms", "yellow")
    if item.error_code:
        text.append(f" {item.error_code}: {item.error_description or ''}", "red")
    if item.injected:
        text.append(" ◆ injected", "bold yellow")
    return text


def _payload(item: FrameItem) -> RenderableType:
    if item.payload is None and item.raw is not None:
        return Text(item.raw, "red")
    return Syntax(pretty(item.payload), "json", theme="ansi_dark", word_wrap=True)


def _handshake(values: dict[str, Any] | Any) -> Table:
    table = Table.grid(padding=(0, 1))
    table.add_column(style="dim", no_wrap=True)
    table.add_column()
    for name, value in dict(values).items():
        if value in (None, "", [], ()):
            continue
        if name.endswith("_headers") and isinstance(value, list):
            value = "\n".join(f"{h[0]}: {h[1]}" for h in value if isinstance(h, list | tuple))
        table.add_row(name, str(value))
    return table
