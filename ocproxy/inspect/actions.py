"""The inspector's actions on the selection and on the charger: mark, copy, save,
inject, disconnect, help; and the state they share with the application."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import App
from textual.widgets import Static

from ocproxy.errors import OcproxyError, first_line
from ocproxy.inspect.model import ChargerRow, FrameItem
from ocproxy.inspect.screens import DisconnectScreen, HelpScreen, InjectScreen, SaveScreen
from ocproxy.inspect.source import Source
from ocproxy.inspect.widgets import FramesTable

KEYS_HELP = (
    ("up/down, pgup/pgdn", "move; past the first or last row loads the page before/after"),
    ("tab / shift+tab", "next / previous pane (chargers, frames, detail, filter)"),
    ("enter (chargers)", "show that charger's frames"),
    ("/", "type a filter expression; enter applies it, escape leaves it"),
    ("s", "search text (payload, action or message id); enter finds the next"),
    ("n / p", "next / previous search match"),
    ("a", "jump from a CALL to its answer, or from an answer to its CALL"),
    ("f", "follow: the newest frames as they come (live), or the last page"),
    ("r", "answers as rows of their own, or beside their CALL (default)"),
    ("g / G", "first / last page"),
    ("space", "mark or unmark the frame (for copy and save)"),
    ("y", "copy the marked frames (or the current one) as JSON lines"),
    ("w", "save the marked frames (or the current one) as JSON lines"),
    ("i", "inject a CALL into the selected charger (live)"),
    ("d", "disconnect the selected charger, with a close code (live)"),
    ("?", "this help"),
    ("q", "quit"),
)


class InspectBase(App[int]):
    source: Source
    identity: str | None

    @property
    def frames(self) -> FramesTable:
        return self.query_one("#frames", FramesTable)

    def _ends_at(self) -> float | None:
        charger = self.source.charger(self.identity) if self.identity else None
        if charger is not None and charger.ends_at is not None:
            return charger.ends_at
        return time.time() if self.source.live else None

    def _status(self, text: str, style: str) -> None:
        for line in self.query("#status").results(Static):  # none once the app is closing
            line.update(Text(text, style))

    # -- marking, copying, saving ----------------------------------------------------------

    def action_mark(self) -> None:
        item = self.frames.current
        if item is None:
            return
        key = (item.connection_id, item.seq)
        self.frames.marked ^= {key}
        row = self.frames.cursor_row
        self.frames.show(self.frames.items, self._ends_at(), cursor=row)

    def selected(self) -> list[FrameItem]:
        marked = [i for i in self.frames.items if (i.connection_id, i.seq) in self.frames.marked]
        current = self.frames.current
        return marked or ([current] if current else [])

    def selected_jsonl(self) -> str:
        return "".join(json.dumps(i.as_json(), ensure_ascii=False) + "\n" for i in self.selected())

    def action_copy(self) -> None:
        chosen = self.selected()
        self.copy_to_clipboard(self.selected_jsonl())
        self._status(f"copied {len(chosen)} frame(s) as JSON lines", "green")

    def action_save(self) -> None:
        chosen = self.selected()
        if not chosen:
            return
        default = f"inspect-{self.identity or 'all'}-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"

        def save(path: str | None) -> None:
            if path is None:
                return
            try:
                Path(path).write_text(self.selected_jsonl(), encoding="utf-8")
            except OSError as exc:
                self._status(f"not saved: {path}: {exc.strerror}", "red")
                return
            self._status(f"saved {len(chosen)} frame(s) to {path}", "green")

        self.push_screen(SaveScreen(len(chosen), default), save)

    # -- acting on the charger (live) ------------------------------------------------------

    def _live_charger(self) -> ChargerRow | None:
        if not self.source.live:
            self._status("inject and disconnect need a running proxy: ocproxy inspect "
                         "--control HOST:PORT", "yellow")  # fmt: skip
            return None
        charger = self.source.charger(self.identity) if self.identity else None
        if charger is None or charger.state != "open":
            self._status(f"{self.identity} is not connected", "yellow")
            return None
        return charger

    def action_inject(self) -> None:
        charger = self._live_charger()
        if charger is None:
            return
        inject = self.source.inject  # type: ignore[attr-defined]

        async def send(action: str, payload: dict[str, Any]) -> Any:
            return await inject(charger.identity, action, payload)

        self.push_screen(InjectScreen(charger.identity, charger.version, send))

    def action_disconnect(self) -> None:
        charger = self._live_charger()
        if charger is None:
            return

        async def chosen(choice: tuple[int, str] | None) -> None:
            if choice is None:
                return
            code, reason = choice
            disconnect = self.source.disconnect  # type: ignore[attr-defined]
            try:
                await disconnect(charger.identity, code, reason)
            except OcproxyError as exc:
                self._status(first_line(exc), "red")
                return
            self._status(f"{charger.identity} disconnected with {code}", "green")

        self.push_screen(DisconnectScreen(charger.identity), chosen)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(KEYS_HELP))
