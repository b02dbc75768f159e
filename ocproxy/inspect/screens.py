"""The inspector's dialogs: help, inject a CALL, disconnect a charger, save frames."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static, TextArea

from ocproxy.audit import schemas
from ocproxy.core.handshake import ocpp_version
from ocproxy.errors import OcproxyError
from ocproxy.inspect.filters import HELP

CLOSE_CODES = (
    (1000, "normal closure"),
    (1001, "going away (as a server restart)"),
    (1008, "policy violation"),
    (1011, "internal error"),
    (1012, "service restart"),
    (4000, "application: maintenance"),
)

_DIALOG_CSS = """
#dialog { width: 76; height: auto; max-height: 90%; border: thick $accent; padding: 0 1;
          background: $surface; }
#dialog Label { margin-top: 1; }
#payload { height: 8; }
#answer { height: auto; max-height: 10; }
#buttons { height: 3; margin-top: 1; }
#buttons Button { margin-right: 1; }
"""


class HelpScreen(ModalScreen[None]):
    """Every key, and the filter syntax."""

    DEFAULT_CSS = _DIALOG_CSS
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def __init__(self, keys: Sequence[tuple[str, str]]) -> None:
        super().__init__()
        self.keys = keys

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        for key, what in self.keys:
            table.add_row(key, what)
        with VerticalScroll(id="dialog"):
            yield Static(Text("ocproxy inspect: keys", "bold"))
            yield Static(table)
            yield Static(Text("\nfilter expressions (/)", "bold"))
            yield Static(Text(HELP))
            yield Static(Text("\nescape closes this help", "dim"))


class InjectScreen(ModalScreen[None]):
    """Pick an action of the connection's OCPP version, edit the payload as JSON; it is
    checked against the schema before it is sent, and the answer is shown here."""

    DEFAULT_CSS = _DIALOG_CSS
    BINDINGS = [Binding("escape", "dismiss", "Close")]

    def __init__(
        self,
        identity: str,
        version: str | None,
        send: Callable[[str, dict[str, Any]], Awaitable[Any]],
    ) -> None:
        super().__init__()
        self.identity = identity
        self.ocpp = ocpp_version(f"ocpp{version}") if version else None
        self.send = send

    def compose(self) -> ComposeResult:
        actions = sorted(schemas.actions(self.ocpp)) if self.ocpp is not None else []
        with Vertical(id="dialog"):
            yield Static(Text(f"inject a CALL into {self.identity} (OCPP {self.ocpp or '?'})",
                              "bold"))  # fmt: skip
            yield Select([(a, a) for a in actions], prompt="action", id="action")
            yield Label("payload (JSON)")
            yield TextArea("{}", id="payload")
            yield Static("", id="answer")
            with Horizontal(id="buttons"):
                yield Button("Send", variant="primary", id="send")
                yield Button("Close", id="close")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "close":
            self.dismiss()
        else:
            self._send()

    def _say(self, text: str, style: str) -> None:
        self.query_one("#answer", Static).update(Text(text, style))

    @work(exclusive=True)
    async def _send(self) -> None:
        action = self.query_one("#action", Select).value
        if not isinstance(action, str):
            self._say("choose an action first", "red")
            return
        try:
            payload = json.loads(self.query_one("#payload", TextArea).text)
        except ValueError as exc:
            self._say(f"the payload is not JSON: {exc}", "red")
            return
        if not isinstance(payload, dict):
            self._say("the payload must be a JSON object", "red")
            return
        if self.ocpp is not None:
            violation = schemas.validate(self.ocpp, action, payload, response=False)
            if violation is not None:
                self._say(f"not sent, the schema says: {violation.message}", "red")
                return
        self._say(f"sent {action}, waiting for the answer…", "yellow")
        try:
            answer = await self.send(action, payload)
        except OcproxyError as exc:
            self._say(f"refused or failed: {exc}", "red")
            return
        style = "red" if isinstance(answer, list) and answer and answer[0] == 4 else "green"
        self._say("answer: " + json.dumps(answer, indent=2), style)


class DisconnectScreen(ModalScreen[tuple[int, str] | None]):
    """Choose the close code (and reason); dismissed with them, or None."""

    DEFAULT_CSS = _DIALOG_CSS
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, identity: str) -> None:
        super().__init__()
        self.identity = identity

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(Text(f"disconnect {self.identity} (both legs)", "bold"))
            yield Select(
                [(f"{code} {name}", code) for code, name in CLOSE_CODES],
                value=1001,
                allow_blank=False,
                id="code",
            )
            yield Label("reason")
            yield Input("disconnected by ocproxy inspect", id="reason", max_length=120)
            with Horizontal(id="buttons"):
                yield Button("Disconnect", variant="error", id="go")
                yield Button("Cancel", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "go":
            code = self.query_one("#code", Select).value
            reason = self.query_one("#reason", Input).value
            self.dismiss((int(code) if isinstance(code, int) else 1001, reason))
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class SaveScreen(ModalScreen[str | None]):
    """Where to save the selected frames (JSON lines); dismissed with the path, or None."""

    DEFAULT_CSS = _DIALOG_CSS
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, count: int, default: str) -> None:
        super().__init__()
        self.count = count
        self.default = default

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(Text(f"save {self.count} frame(s) as JSON lines to", "bold"))
            yield Input(self.default, id="path")
            with Horizontal(id="buttons"):
                yield Button("Save", variant="primary", id="save")
                yield Button("Cancel", id="cancel")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value or None)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.dismiss(self.query_one("#path", Input).value or None)
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)
