"""The one way ocproxy makes a rich Console: a terminal's width on a terminal, and
natural width everywhere else.

When stdout is a pipe or a file (a log, systemd's journal, ``nohup``, ``| less``), rich
assumes 80 columns (or ``$COLUMNS``) and squeezes tables into them: identities cut to
``ident…``, columns dropped, one-line messages wrapped. A log has no width, so there
every top-level renderable is drawn at its own natural width: a table as wide as its
widest cells, a panel as wide as its content, a line on one line. On a terminal
nothing changes.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterable
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderableType
from rich.live_render import LiveRender
from rich.measure import Measurement
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

# The width a log console claims: wider than any line ocproxy prints, so that nothing
# is cut or wrapped at it. Renderables are drawn at their own width, never this one.
UNBOUNDED = 100_000
# What takes any width it is given (Markdown prose, a rule) gets this much in a log.
PROSE_WIDTH = 100


class NaturalWidthConsole(Console):
    """A Console that draws each renderable it prints at the renderable's natural width
    when its output is not a terminal (and no width was asked for)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.natural_width = not self.is_terminal and kwargs.get("width") is None
        if self.natural_width:
            self.width = UNBOUNDED
        # Only the outermost render is sized; what it contains is laid out as rich does.
        self._rendering = threading.local()

    def render(
        self, renderable: RenderableType, options: ConsoleOptions | None = None
    ) -> Iterable[Segment]:
        if not self.natural_width or getattr(self._rendering, "active", False):
            yield from super().render(renderable, options)
            return
        options = options or self.options
        renderable = _title_apart(renderable)
        # A Live view (ocproxy tail into a pipe) is printed through its LiveRender.
        measured = renderable.renderable if isinstance(renderable, LiveRender) else renderable
        natural = Measurement.get(self, options, measured).maximum
        if natural >= options.max_width:  # no natural width: it fills whatever it gets
            natural = PROSE_WIDTH
        self._rendering.active = True
        try:
            yield from super().render(
                renderable, options.update_width(max(1, min(natural, options.max_width)))
            )
        finally:
            self._rendering.active = False


def _title_apart(renderable: RenderableType) -> RenderableType:
    """A table's title on a line of its own: rich wraps it at the table's width."""
    if not isinstance(renderable, Table) or renderable.title is None:
        return renderable
    table = copy.copy(renderable)
    table.title = None
    title = renderable.title
    return Group(Text(title) if isinstance(title, str) else title, table)


def make_console(**kwargs: Any) -> Console:
    """A rich Console (``Console``'s keyword arguments) for a terminal or for a log.

    On a terminal it is rich's own. Anywhere else tables come out at their natural
    width, never truncated, and one-line messages never wrap, whatever ``$COLUMNS`` says.
    """
    return NaturalWidthConsole(**kwargs)
