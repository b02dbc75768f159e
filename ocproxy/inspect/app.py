"""The inspector application: chargers on the left, the selected charger's frames and the
detail of one frame on the right, a filter bar below; every action a key (``?``)."""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Coroutine
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.events import Resize
from textual.widgets import DataTable, Footer, Input, Static

from ocproxy.errors import OcproxyError, first_line
from ocproxy.inspect.actions import InspectBase
from ocproxy.inspect.filters import Filter, FilterError, parse
from ocproxy.inspect.model import FrameItem, Key
from ocproxy.inspect.source import Source
from ocproxy.inspect.widgets import ChargersTable, FramesTable, detail_view

MIN_WIDTH, MIN_HEIGHT = 80, 24
FOLLOW_KEEP = 500  # rows a following frame list keeps
TICK_S = 0.25  # how often live changes are drawn


class InspectApp(InspectBase):
    TITLE = "ocproxy inspect"
    CSS = """
    HelpScreen, InjectScreen, DisconnectScreen, SaveScreen { align: center middle; }
    #main { height: 1fr; }
    #chargers { width: 40%; min-width: 34; }
    #right { width: 1fr; }
    #frames { height: 55%; }
    #detail { height: 1fr; border-top: solid $accent; }
    #bar { height: 1; }
    #filter { height: 1; border: none; padding: 0 1; }
    #status { height: 1; color: $text-muted; }
    #too-small { display: none; content-align: center middle; height: 1fr; }
    .too-small #too-small { display: block; }
    .too-small #main, .too-small #bar, .too-small #status { display: none; }
    """
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help"),
        Binding("slash", "focus_filter", "Filter"),
        Binding("s", "search", "Search"),
        Binding("n", "search_next", "Next", show=False),
        Binding("p", "search_previous", "Previous", show=False),
        Binding("a", "pair", "Answer/CALL"),
        Binding("f", "follow", "Follow"),
        Binding("r", "responses", "Responses", show=False),
        Binding("i", "inject", "Inject"),
        Binding("d", "disconnect", "Disconnect"),
        Binding("space", "mark", "Mark", show=False),
        Binding("y", "copy", "Copy", show=False),
        Binding("w", "save", "Save"),
        Binding("g", "first_page", "First", show=False),
        Binding("G", "last_page", "Last", show=False),
        Binding("escape", "to_frames", "Frames", show=False),
    ]

    def __init__(self, source: Source, *, identity: str | None = None) -> None:
        super().__init__()
        self.source = source
        self.identity = identity
        self.flt = Filter()
        self.search_text = ""
        self.responses = False
        self.following = source.live
        self.failure: str | None = None
        self.first_screen_s: float | None = None
        self._started = time.perf_counter()
        self._searching = False

    def compose(self) -> ComposeResult:
        yield Static(id="too-small")
        with Horizontal(id="main"):
            yield ChargersTable(id="chargers")
            with Vertical(id="right"):
                yield FramesTable(id="frames")
                with VerticalScroll(id="detail"):
                    yield Static(id="detail-body")
        with Horizontal(id="bar"):
            yield Input(placeholder="/ filter: action:Boot* dir:csms rule:schema-* \"text\"  "
                        "(? for help)", id="filter")  # fmt: skip
        yield Static(id="status")
        yield Footer()

    async def on_mount(self) -> None:
        self.title = f"ocproxy inspect · {self.source.title}"
        self._check_size(self.size.width, self.size.height)
        await self._guard(self._load_chargers(select=True))
        if self.source.live:
            self.set_interval(TICK_S, self._tick)
        self.first_screen_s = time.perf_counter() - self._started

    # -- errors never crash the screen ------------------------------------------------------

    async def _guard(self, work: Coroutine[Any, Any, Any]) -> Any:
        try:
            return await work
        except OcproxyError as exc:
            self.notify(first_line(exc), severity="error", timeout=8)
            self._status(first_line(exc), "red")
            return None

    def _handle_exception(self, error: Exception) -> None:
        # One line for the command to print, never a traceback on the screen.
        self.failure = f"{type(error).__name__}: {first_line(error)}"
        if self._exception is None:  # pilot (the tests) re-raises it
            self._exception = error
            self._exception_event.set()
        self._return_code = 1
        self.exit(1)

    # -- size ----------------------------------------------------------------------------

    def on_resize(self, event: Resize) -> None:
        self._check_size(event.size.width, event.size.height)

    def _check_size(self, width: int, height: int) -> None:
        small = width < MIN_WIDTH or height < MIN_HEIGHT
        self.set_class(small, "too-small")
        if small:
            self.query_one("#too-small", Static).update(Text(
                f"This terminal is {width}x{height}; ocproxy inspect needs at least "
                f"{MIN_WIDTH}x{MIN_HEIGHT}. Make it larger (or press q to quit).",
                "bold yellow", justify="center",
            ))  # fmt: skip

    # -- chargers ------------------------------------------------------------------------

    async def _load_chargers(self, *, select: bool = False) -> None:
        rows = await self.source.chargers()
        rows = [r for r in rows if self._wanted(r.identity)]
        table = self.query_one("#chargers", ChargersTable)
        table.clear()
        table.show(rows)
        if not rows:
            filtered = " match the filter" if self.flt.identities() else " yet"
            self._status("no chargers" + filtered, "yellow")
            self.query_one("#frames", FramesTable).show([], None)
            return
        if self.identity not in {r.identity for r in rows}:
            self.identity = rows[0].identity
        table.move_cursor(row=[r.identity for r in rows].index(self.identity), animate=False)
        await self._load_frames(last=self.following)

    def _wanted(self, identity: str) -> bool:
        patterns = self.flt.identities()
        return not patterns or any(fnmatch.fnmatchcase(identity, p) for p in patterns)

    @on(DataTable.RowSelected, "#chargers")
    @on(DataTable.RowHighlighted, "#chargers")
    async def _charger_chosen(self, event: DataTable.RowHighlighted) -> None:
        identity = str(event.row_key.value)
        if identity != self.identity:
            self.identity = identity
            await self._guard(self._load_frames(last=self.following))

    # -- frames --------------------------------------------------------------------------

    async def _load_frames(
        self, *, last: bool = False, after: Key | None = None, before: Key | None = None,
        cursor: int = 0,
    ) -> list[FrameItem]:  # fmt: skip
        items = await self.source.page(
            self.identity, self.flt, after=after, before=before, last=last,
            responses=self.responses,
        )  # fmt: skip
        if (after or before) and not items:
            self._status("no more frames this way", "dim")
            return items
        self.frames.show(items, self._ends_at(), cursor=len(items) - 1 if last else cursor)
        self._status_page()
        self._detail_later()
        return items

    @on(FramesTable.Edge)
    async def _edge(self, event: FramesTable.Edge) -> None:
        items = self.frames.items
        if not items:
            return
        if event.forward:
            await self._guard(self._load_frames(after=items[-1].key))
        else:
            page = await self._guard(self._load_frames(before=items[0].key, cursor=10**9))
            if page:
                self.frames.move_cursor(row=len(page) - 1, animate=False)

    @on(DataTable.RowHighlighted, "#frames")
    def _frame_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._detail_later()

    @work(group="detail", exclusive=True)
    async def _detail_later(self) -> None:
        # Off the paging path, the latest highlight only: scrolling never waits for it.
        await self._show_detail()

    async def _show_detail(self) -> None:
        if not self.query("#detail-body"):
            return  # the app is closing
        item = self.frames.current
        body = self.query_one("#detail-body", Static)
        if item is None:
            body.update(Text("no frame selected", "dim"))
            return
        detail = await self._guard(self.source.detail(item))
        if detail is not None and self.frames.current == item:
            body.update(detail_view(detail))

    def _status_page(self) -> None:
        items = self.frames.items
        flt = f" · filter: {self.flt.text}" if self.flt else ""
        mode = " · following" if self.following else ""
        what = "frames" if self.responses else "frames (answers beside their CALL)"
        self._status(f"{self.identity or 'all'} · {len(items)} {what}{flt}{mode}", "")

    # -- live ----------------------------------------------------------------------------

    async def _tick(self) -> None:
        take = getattr(self.source, "take_changes", None)
        if take is None:
            return
        changed: set[str] = take()
        ended = getattr(self.source, "ended", None)
        if ended:
            self._status(ended, "red")
        if not changed:
            return
        table = self.query_one("#chargers", ChargersTable)
        rows = [c for i in sorted(changed) if (c := self.source.charger(i)) is not None]
        table.show(r for r in rows if self._wanted(r.identity))
        if self.identity is None and table.row_count:
            await self._guard(self._load_chargers(select=True))
        elif self.following and self.identity in changed:
            items = self.frames.items
            new = await self.source.page(
                self.identity, self.flt, after=items[-1].key if items else None,
                responses=self.responses, limit=FOLLOW_KEEP,
            )  # fmt: skip
            if new:
                self.frames.append(new, self._ends_at(), FOLLOW_KEEP)
                self._detail_later()
                self._status_page()

    # -- the filter bar --------------------------------------------------------------------

    def action_focus_filter(self) -> None:
        self._searching = False
        bar = self.query_one("#filter", Input)
        bar.placeholder = 'filter: action:Boot* dir:csms rule:schema-* "text" (enter applies)'
        bar.value = self.flt.text
        bar.focus()

    def action_search(self) -> None:
        self._searching = True
        bar = self.query_one("#filter", Input)
        bar.placeholder = "search: text in payloads, an action or a message id (enter finds)"
        bar.value = self.search_text
        bar.focus()

    @on(Input.Submitted, "#filter")
    async def _bar_submitted(self, event: Input.Submitted) -> None:
        if self._searching:
            self.search_text = event.value
            self.frames.focus()
            await self._guard(self._search(forward=True))
            return
        try:
            self.flt = parse(event.value)
        except FilterError as exc:
            # said in the bar itself; the app carries on with the filter it had
            self._status(f"filter not applied: {exc}", "bold red")
            event.input.cursor_position = exc.column
            return
        self.frames.focus()
        await self._guard(self._load_chargers())

    def action_to_frames(self) -> None:
        self.frames.focus()

    # -- search, pairs, pages ------------------------------------------------------------

    async def action_search_next(self) -> None:
        await self._guard(self._search(forward=True))

    async def action_search_previous(self) -> None:
        await self._guard(self._search(forward=False))

    async def _search(self, *, forward: bool) -> None:
        if not self.search_text:
            self.action_search()
            return
        current = self.frames.current
        hit = await self.source.find(
            self.identity, self.flt, self.search_text, current.key if current else None,
            forward=forward, responses=self.responses,
        )  # fmt: skip
        if hit is None:
            self._status(f"{self.search_text!r}: no more matches this way", "yellow")
            return
        await self._land_on(hit)
        self._status(f"{self.search_text!r}: found at {hit.action or hit.type_name}", "green")

    async def _land_on(self, target: FrameItem) -> None:
        items = await self.source.around(self.identity, self.flt, target.key,
                                         responses=self.responses)  # fmt: skip
        index = next((n for n, i in enumerate(items) if i.key == target.key), 0)
        self.frames.show(items, self._ends_at(), cursor=index)
        self._detail_later()

    async def action_pair(self) -> None:
        item = self.frames.current
        if item is None:
            return
        if item.request_seq is None and item.answer is None:
            self._status("this frame has no paired frame", "yellow")
            return
        pair = await self._guard(self.source.pair_of(item))
        if pair is None:
            return
        if item.is_call and not self.responses:
            self.responses = True  # an answer beside its CALL has no row of its own
        await self._guard(self._land_on(pair))

    async def action_follow(self) -> None:
        self.following = not self.following
        if self.following:
            await self._guard(self._load_frames(last=True))
        self._status_page()

    async def action_responses(self) -> None:
        self.responses = not self.responses
        await self._guard(self._load_frames())

    async def action_first_page(self) -> None:
        self.following = False
        await self._guard(self._load_frames())

    async def action_last_page(self) -> None:
        await self._guard(self._load_frames(last=True))
