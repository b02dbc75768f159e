"""Write a query result as a rich table, CSV, JSON or Parquet, to stdout or a file.

Results arrive as Arrow tables. Parquet is written by pyarrow, keeping DuckDB's types;
CSV and JSON by DuckDB's own writers (millions of rows in seconds, where Python's
csv module would take minutes), with list and struct columns as JSON text in CSV,
bytes as UTF-8 text (``base64:...`` when they are not UTF-8) and timestamps in UTC.
A table is for reading: on a terminal or pipe it shows at most :data:`TABLE_ROWS` rows
(the caller says how many were left out).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from rich.table import Table
from rich.text import Text

from ocproxy.errors import ConfigError, OcproxyError
from ocproxy.terminal import make_console

FORMATS = ("table", "csv", "json", "parquet")
TABLE_ROWS = 1000
_BY_SUFFIX = {".csv": "csv", ".json": "json", ".parquet": "parquet", ".txt": "table"}


def choose_format(requested: str | None, output: str | None) -> str:
    """The --format given, else the one --output's suffix implies, else a table."""
    if requested is not None:
        fmt = requested
    elif output is not None:
        fmt = _BY_SUFFIX.get(Path(output).suffix.lower(), "table")
    else:
        fmt = "table"
    if fmt == "parquet" and output is None:
        raise ConfigError("--format parquet needs --output FILE (Parquet is binary)")
    return fmt


def write_result(
    table: pa.Table,
    fmt: str,
    output: str | None = None,
    *,
    title: str | None = None,
    stdout: TextIO | None = None,
) -> int:
    """Write ``table`` in ``fmt`` to ``output`` (a path) or ``stdout``; return rows written."""
    stream = stdout if stdout is not None else sys.stdout
    try:
        if output is not None:
            # Fail here, with the OS's reason, rather than deep inside a writer.
            open(output, "wb").close()
        if fmt == "parquet":
            assert output is not None  # choose_format() insists on it
            pq.write_table(table, output)
        elif fmt == "table":
            return _write_table(table, output, stream, title)
        elif output is not None:
            _copy(table, fmt, output)
        else:
            _copy_to_stream(table, fmt, stream)
    except (OSError, duckdb.IOException) as exc:
        if isinstance(exc, BrokenPipeError):
            raise
        raise OcproxyError(f"cannot write {output or 'the output'}: {_reason(exc)}") from exc
    return int(table.num_rows)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- table ------------------------------------------------------------------------------


def _write_table(table: pa.Table, output: str | None, stream: TextIO, title: str | None) -> int:
    if output is not None:
        with open(output, "w", encoding="utf-8") as file:
            _render(table, file, title, table.num_rows)
        return int(table.num_rows)
    shown = table.slice(0, TABLE_ROWS)
    _render(shown, stream, title, table.num_rows)
    return int(shown.num_rows)


def _render(table: pa.Table, stream: TextIO, title: str | None, total: int) -> None:
    console = make_console(file=stream)
    shown = table.num_rows
    # A caption is only as wide as the table: the longer "first N of M" goes below it.
    caption = "no rows" if total == 0 else f"{total} row{'s' if total != 1 else ''}"
    view = Table(title=title, caption=caption if shown == total else None, header_style="bold")
    for field in table.schema:
        view.add_column(field.name, justify="right" if _is_numeric(field.type) else "left")
    # Column by column, not to_pylist(): its dicts would merge two columns of one name.
    for row in zip(*(column.to_pylist() for column in table.columns), strict=True):
        # Text, not str: a value such as "[red]" must not be read as rich markup.
        view.add_row(*(Text(_cell(value)) for value in row))
    console.print(view)
    if shown < total:
        console.print(Text(f"first {shown} of {caption}", style="dim"))


def _is_numeric(kind: pa.DataType) -> bool:
    return bool(pa.types.is_integer(kind) or pa.types.is_floating(kind))


def _cell(value: Any) -> str:
    if value is None or value == []:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if math.isfinite(value) else str(value)
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ", timespec="milliseconds")
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, default=str)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


# -- csv and json ----------------------------------------------------------------------------


def _copy_to_stream(table: pa.Table, fmt: str, stream: TextIO) -> None:
    # DuckDB writes files, not Python streams: write one, then pass it through.
    with tempfile.TemporaryDirectory(prefix="ocproxy-query-") as scratch:
        path = Path(scratch) / f"result.{fmt}"
        _copy(table, fmt, str(path))
        with path.open(encoding="utf-8", newline="") as written:
            shutil.copyfileobj(written, stream)
    stream.flush()


def _copy(table: pa.Table, fmt: str, path: str) -> None:
    db = duckdb.connect(":memory:")
    try:
        db.execute("SET TimeZone = 'UTC'")
        db.register("result", table)
        options = "FORMAT csv, HEADER true" if fmt == "csv" else "FORMAT json, ARRAY true"
        db.execute(f"COPY ({_select(table, fmt)}) TO '{_quote(path)}' ({options})")
    finally:
        db.close()


def _select(table: pa.Table, fmt: str) -> str:
    """SELECT over the result, with the columns the format cannot hold rewritten."""
    replaced = []
    for field in table.schema:
        name = '"' + field.name.replace('"', '""') + '"'
        if fmt == "csv" and _is_nested(field.type):
            replaced.append(f"to_json({name})::VARCHAR AS {name}")
        elif pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type):
            # frames.raw: the text it almost always is, not DuckDB's \x.. escapes.
            text = f"coalesce(try(decode({name})), 'base64:' || to_base64({name}))"
            replaced.append(f"{text} AS {name}")
        elif fmt == "json" and pa.types.is_floating(field.type):
            # DuckDB would write NaN and Infinity, which JSON does not have.
            replaced.append(f"CASE WHEN isfinite({name}) THEN {name} END AS {name}")
    if not replaced:
        return "SELECT * FROM result"
    return f"SELECT * REPLACE ({', '.join(replaced)}) FROM result"


def _is_nested(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_list(kind)
        or pa.types.is_large_list(kind)
        or pa.types.is_fixed_size_list(kind)
        or pa.types.is_struct(kind)
        or pa.types.is_map(kind)
    )


def _quote(text: str) -> str:
    return text.replace("'", "''")
