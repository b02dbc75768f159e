"""Rendering for ``ocproxy tail``: a pure function of a :class:`TailSnapshot`.

Colours follow ``ocproxy.console``: frames to the CSMS cyan, to the charger magenta,
CALLERROR / CALLRESULTERROR and malformed frames red; findings are marked with a red
``⚑rule-id`` (no space: a wrap never parts flag and rule), frames ocproxy injected
itself with a yellow ``◆ injected``, and the connections and frames of the proxy's legs
to a secondary CSMS (``proxy --mirror``) say ``mirror`` after the identity, as the
proxy's console does.

The frame list is a table whose columns are sized from the width it is given so that
the notes (error code, pairing, injection, findings) always keep room and wrap rather
than vanish; below ``NARROW`` columns each frame is one wrapping line instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from rich.console import Console, Group, RenderableType
from rich.highlighter import JSONHighlighter
from rich.padding import Padding
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ocproxy.tail.snapshot import ConnectionRow, FrameRow, TailSnapshot

DIRECTION_STYLE = {"to_csms": "cyan", "to_charger": "magenta"}  # as in ocproxy.console
ARROWS = {"to_csms": "→ csms", "to_charger": "← charger"}
ERROR_STYLE = "bold red"
FINDING_STYLE = "bold red"
INJECTED_STYLE = "bold yellow"
MIRROR_STYLE = "magenta"  # as in ocproxy.console
LATENCY_STYLE = "yellow"

WIDE = 150  # from this width message ids are shown whole
MEDIUM = 128  # from this width message ids are shown cut to SHORT_ID characters
NARROW = 110  # below this width each frame is one wrapping line, not a table row
SHORT_ID = 13
MAX_CONNECTIONS = 10  # connection rows shown when no height is given
_NOTES_MAX = 32  # the notes column is given room for a note up to this long
_BORDER = 4  # a panel's borders and padding
_CHROME_LINES = 8  # two panels' borders, headers and titles
_JSON = JSONHighlighter()


def render(
    snapshot: TailSnapshot, width: int | None = None, height: int | None = None
) -> RenderableType:
    """The connections panel above the frame list.

    ``width`` (the console's) sizes the columns; ``height`` (a live terminal's) shows
    only the newest frames that should fit, so the list scrolls (:func:`fit` measures).
    """
    if height is None:
        return _compose(snapshot, width, MAX_CONNECTIONS, None)
    connection_rows = max(3, height // 4)
    shown = min(len(snapshot.connections), connection_rows + 1) or 1
    return _compose(snapshot, width, connection_rows, max(1, height - shown - _CHROME_LINES))


def fit(snapshot: TailSnapshot, console: Console) -> RenderableType:
    """:func:`render` for a live terminal: as many of the newest frames as fit its height.

    Rows that wrap take more than one line, so the result is measured (not printed) and
    older frames are dropped until it fits: a Live view crops at the bottom, which would
    hide the newest frames.
    """
    width, height = console.width, console.height
    connection_rows = max(3, height // 4)
    shown = min(len(snapshot.connections), connection_rows + 1) or 1
    frame_rows = max(1, height - shown - _CHROME_LINES)
    renderable = _compose(snapshot, width, connection_rows, frame_rows)
    for _ in range(8):
        used = len(console.render_lines(renderable, console.options, pad=False))
        shown_frames = min(frame_rows, len(snapshot.frames))
        if used <= height or shown_frames <= 1:
            break
        frame_rows = max(1, shown_frames - (used - height))
        renderable = _compose(snapshot, width, connection_rows, frame_rows)
    return renderable


def _compose(
    snapshot: TailSnapshot, width: int | None, connection_rows: int, frame_rows: int | None
) -> RenderableType:
    return Group(
        connections_panel(snapshot, connection_rows, width),
        frames_panel(snapshot, frame_rows, width),
    )


def connections_panel(
    snapshot: TailSnapshot, max_rows: int = MAX_CONNECTIONS, width: int | None = None
) -> Panel:
    short = width is not None and width < 80
    # identity gets what the other columns and a 14-column state leave, within [6, 32]
    fixed = 9 + (8 if short else 19) + 7 + 8
    identity_width = 32 if width is None else max(6, min(32, width - _BORDER - fixed - 14))
    ordered = sorted(snapshot.connections, key=lambda c: (c.closed is not None, c.opened_at or 0.0))
    table = Table(box=None, expand=True, pad_edge=False)
    table.add_column(
        "identity", style="bold", no_wrap=True, overflow="ellipsis", max_width=identity_width
    )
    table.add_column("subprotocol", no_wrap=True)
    table.add_column("opened (UTC)", no_wrap=True)
    table.add_column("frames", justify="right", no_wrap=True)
    table.add_column("state", ratio=1)
    for row in ordered[:max_rows]:
        cells = connection_cells(row)
        if short:
            cells[2] = Text(cells[2].plain[11:] or "-", cells[2].style)
        table.add_row(*cells)
    if len(ordered) > max_rows:
        table.add_row(Text(f"… and {len(ordered) - max_rows} more", "dim"))
    if not ordered:
        table.add_row(Text("no connections", "dim"))
    opened = sum(c.closed is None for c in snapshot.connections)
    subtitle = f"{opened} open, {len(snapshot.connections) - opened} closed or refused"
    title = "connections" + (f" · {snapshot.source}" if snapshot.source else "")
    return Panel(
        table,
        title=Text(title, "bold"),
        title_align="left",
        subtitle=subtitle,
        subtitle_align="left",
        width=width,
    )


def connection_cells(row: ConnectionRow) -> list[Text]:
    if row.closed is None:
        state = Text("open", "green")
    elif row.refused:
        state = Text(row.closed, ERROR_STYLE)
    else:
        state = Text(f"closed {row.closed}", "dim")
    return [
        identity_text(row.identity, row.mirror, ""),
        Text(row.subprotocol or "-"),
        Text(_datetime(row.opened_at), "dim"),
        Text(str(row.frames)),
        state,
    ]


def frames_panel(
    snapshot: TailSnapshot, max_rows: int | None = None, width: int | None = None
) -> Panel:
    """The newest frames, one row each; how many columns depends on ``width``:
    whole message ids from ``WIDE``, cut ones from ``MEDIUM``, none from ``NARROW``,
    and below that one wrapping line per frame. With ``snapshot.payloads`` each frame
    is a line followed by its payload."""
    rows = snapshot.frames if max_rows is None else snapshot.frames[-max_rows:]
    body: RenderableType
    if snapshot.payloads:
        shown = short_ids(
            (r.message_id for r in rows), 36 if width is None or width >= WIDE else SHORT_ID
        )
        parts = [_with_payload(row, shown) for row in rows]
        body = Group(*parts) if parts else _empty(snapshot)
    elif width is not None and width < NARROW:
        shown = short_ids(row.message_id for row in rows)
        lines = [frame_line(row, shown.get(row.message_id or "")) for row in rows]
        body = Group(*(lines or [_empty(snapshot)]))
    else:
        body = _frame_table(rows, width) if rows else _empty(snapshot)
    title = Text(f"frames · last {len(rows)} of {snapshot.total}", "bold")
    filters = snapshot.filters.params()
    if snapshot.filters.legs != "charger":
        filters["legs"] = snapshot.filters.legs
    if filters:
        title.append(" · " + " ".join(f"{k}={v}" for k, v in filters.items()), "bold blue")
    subtitle = None
    if snapshot.ended is not None:
        subtitle = Text(snapshot.ended, ERROR_STYLE)
    elif snapshot.live:
        subtitle = Text("live · Ctrl-C to quit", "dim")
    return Panel(
        body, title=title, title_align="left", subtitle=subtitle, subtitle_align="left", width=width
    )


def _frame_table(rows: tuple[FrameRow, ...], width: int | None) -> Table:
    cells = [frame_cells(row) for row in rows]
    id_width = 0 if width is not None and width < MEDIUM else 36
    if width is not None and width < WIDE:
        id_width = min(id_width, SHORT_ID)
    if id_width:
        shown = short_ids((row.message_id for row in rows), id_width)
        for row, row_cells in zip(rows, cells, strict=True):
            if row.message_id is not None:
                row_cells[5] = Text(shown[row.message_id], "dim")
        # as wide as the widest id shown, so that the table never cuts one again
        id_width = max(id_width, *(c[5].cell_len for c in cells))

    def need(column: int, header: str) -> int:
        return max(len(header), *(c[column].cell_len for c in cells))

    # identity and action get what the other columns and the notes' minimum leave
    gaps = 2 * (8 if id_width else 7)
    fixed = sum(need(i, h) for i, h in ((0, "time (UTC)"), (2, "direction"), (3, "type")))
    fixed += need(6, "latency") + need(7, "size") + min(id_width, need(5, "id")) + gaps
    identity_need, action_need = need(1, "identity"), need(4, "action")
    # room for the longest single note, so that notes wrap between notes, not inside
    longest = max((p.cell_len for row in rows for p in note_parts(row)), default=0)
    notes_min = min(_NOTES_MAX, max(len("notes"), longest))
    spare = 1000 if width is None else width - _BORDER - fixed - notes_min
    if identity_need + action_need <= spare:
        identity_width, action_width = identity_need, action_need
    else:
        identity_width = max(4, min(identity_need, spare * 2 // 5))
        action_width = max(8, spare - identity_width)
    table = Table(box=None, expand=True, pad_edge=False)
    table.add_column("time (UTC)", no_wrap=True)
    table.add_column("identity", no_wrap=True, overflow="ellipsis", max_width=identity_width)
    table.add_column("direction", no_wrap=True)
    table.add_column("type", no_wrap=True)
    table.add_column("action", no_wrap=True, overflow="ellipsis", max_width=action_width)
    if id_width:
        table.add_column("id", no_wrap=True, overflow="fold", min_width=need(5, "id"))
    table.add_column("latency", justify="right", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("notes", ratio=1, overflow="fold")
    for row_cells in cells:
        if not id_width:
            del row_cells[5]
        table.add_row(*row_cells)
    return table


def frame_cells(row: FrameRow) -> list[Text]:
    """time, identity, direction, type, action, id, latency, size, notes."""
    style = DIRECTION_STYLE.get(row.direction, "white")
    if row.malformed:
        kind = Text("MALFORMED", ERROR_STYLE)
    elif row.is_error:
        kind = Text(row.type_name, ERROR_STYLE)
    else:
        kind = Text(row.type_name, f"bold {style}")
    latency = Text()
    if row.is_response and row.latency_ms is not None:
        latency = Text(f"{row.latency_ms:.1f} ms", LATENCY_STYLE)
    return [
        Text(_time(row.ts), "dim"),
        identity_text(row.identity, row.mirror),
        Text(ARROWS.get(row.direction, row.direction), style),
        kind,
        Text(row.action or "-", style),
        Text(row.message_id or "-", "dim"),
        latency,
        Text(f"{row.size} B", "dim"),
        notes(row),
    ]


def identity_text(identity: str, mirror: bool, style: str = "bold") -> Text:
    """The identity, followed by ``mirror`` for the proxy's leg to a secondary CSMS."""
    text = Text(identity, style)
    if mirror:
        text.append(" mirror", MIRROR_STYLE)
    return text


def frame_line(row: FrameRow, shown_id: str | None = None) -> Text:
    """One frame as a line (for narrow terminals): the cells that are set, in order,
    with the direction as an arrow and the message id as ``shown_id`` (from
    :func:`short_ids`, so that it is told apart from its neighbours), else whole."""
    cells = frame_cells(row)
    cells[2] = Text(cells[2].plain[:1], cells[2].style)  # the arrow alone
    if row.message_id is None:
        cells[5] = Text()
    else:
        cells[5] = Text(f"id={shown_id or row.message_id}", "dim")
    return Text(" ").join(cell for cell in cells if cell.plain)


def short_ids(ids: Iterable[str | None], width: int = SHORT_ID) -> dict[str, str]:
    """How each message id is shown in about ``width`` characters: whole when it fits,
    else its start and its end around "…". Ids that would look alike show one more
    character at each end, and again, up to the whole id (replayed ids share a long
    prefix and differ at the end, others the other way round): two distinct ids are
    never shown the same."""
    distinct = {i for i in ids if i is not None}
    tail = max(1, (width - 1) // 2)
    ends = {i: (width - 1 - tail, tail) for i in distinct if len(i) > width}
    shown = {i: _cut(i, ends.get(i)) for i in distinct}
    while True:
        alike: dict[str, list[str]] = {}
        for message_id, text in shown.items():
            alike.setdefault(text, []).append(message_id)
        clashes = [i for group in alike.values() if len(group) > 1 for i in group if i in ends]
        if not clashes:
            return shown
        for message_id in clashes:
            head, tail = ends[message_id]
            ends[message_id] = (head + 1, tail + 1)
            shown[message_id] = _cut(message_id, ends[message_id])


def _cut(message_id: str, ends: tuple[int, int] | None) -> str:
    if ends is None or sum(ends) + 1 >= len(message_id):
        return message_id
    head, tail = ends
    return f"{message_id[:head]}…{message_id[-tail:]}"


def _with_payload(row: FrameRow, shown: dict[str, str]) -> RenderableType:
    line = frame_line(row, shown.get(row.message_id or ""))
    return Group(line, Padding(payload_text(row), (0, 0, 0, 4)))


def payload_text(row: FrameRow) -> Text:
    """The payload as recorded (redacted), JSON-highlighted; for a frame that is not
    OCPP-J, its text as received; "(no payload recorded)" when neither was kept."""
    if row.payload is not None:
        return _JSON(Text(row.payload))
    if row.raw is not None:
        return Text(row.raw, "red")
    return Text("(no payload recorded)", "dim")


def notes(row: FrameRow) -> Text:
    """Why malformed, error code, unusual pairing, injection and findings, in order."""
    return Text(" ").join(note_parts(row))


def note_parts(row: FrameRow) -> list[Text]:
    parts: list[Text] = []
    if row.malformed:
        parts.append(Text(row.parse_status, "red"))
    if row.error_code:
        parts.append(Text(row.error_code, "red"))
    if row.pairing not in (None, "matched"):
        parts.append(Text(f"[{row.pairing}]", "red"))
    if row.injected:
        parts.append(Text("◆ injected", INJECTED_STYLE))
    parts.extend(Text(f"⚑{rule}", FINDING_STYLE) for rule in row.findings)
    return parts


def _empty(snapshot: TailSnapshot) -> Text:
    waiting = snapshot.live and snapshot.ended is None
    return Text("waiting for frames…" if waiting else "no frames", "dim")


def _time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S.%f")[:-3]


def _datetime(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")
