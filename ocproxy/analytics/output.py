"""Write a query result as a rich table, CSV, JSON or Parquet, to stdout or a file.

Results arrive as Arrow tables, so the Parquet writer keeps DuckDB's types, and CSV
and JSON are written from Python values: lists and structs become JSON (CSV has no
list type), timestamps ISO 8601, bytes as UTF-8 text (``base64:...`` when they are
not valid UTF-8).
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import decimal
import json
import math
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ocproxy.errors import ConfigError, OcproxyError

FORMATS = ("table", "csv", "json", "parquet")
_BY_SUFFIX = {".csv": "csv", ".json": "json", ".parquet": "parquet", ".txt": "table"}
# Wide enough that a table written to a pipe or file is never wrapped: rich would
# otherwise assume 80 columns there and fold every cell.
_UNWRAPPED = 100_000


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
) -> None:
    """Write ``table`` in ``fmt`` to ``output`` (a path) or ``stdout``."""
    if fmt == "parquet":
        assert output is not None  # choose_format() insists on it
        _write_parquet(table, output)
        return
    writer = {"table": _write_table, "csv": _write_csv, "json": _write_json}[fmt]
    with _opened(output, stdout) as stream:
        writer(table, stream, title)


@contextmanager
def _opened(output: str | None, stdout: TextIO | None) -> Iterator[TextIO]:
    if output is None:
        yield stdout if stdout is not None else sys.stdout
        return
    try:
        with open(output, "w", encoding="utf-8", newline="") as stream:
            yield stream
    except OSError as exc:
        raise OcproxyError(f"cannot write {output}: {exc.strerror or exc}") from exc


def _write_parquet(table: pa.Table, output: str) -> None:
    try:
        pq.write_table(table, output)
    except OSError as exc:
        raise OcproxyError(f"cannot write {output}: {exc}") from exc


def _write_table(table: pa.Table, stream: TextIO, title: str | None) -> None:
    is_terminal = stream.isatty() if hasattr(stream, "isatty") else False
    console = Console(file=stream, width=None if is_terminal else _UNWRAPPED)
    rows = table.num_rows
    caption = "no rows" if rows == 0 else f"{rows} row{'s' if rows != 1 else ''}"
    view = Table(title=title, caption=caption, header_style="bold")
    for field in table.schema:
        view.add_column(field.name, justify="right" if _is_numeric(field.type) else "left")
    for row in table.to_pylist():
        # Text, not str: a value such as "[red]" must not be read as rich markup.
        view.add_row(*(Text(_cell(value)) for value in row.values()))
    console.print(view)


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
        return json.dumps(_plain(value), ensure_ascii=False)
    return str(_plain(value))


def _write_csv(table: pa.Table, stream: TextIO, title: str | None) -> None:
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(table.column_names)
    for row in table.to_pylist():
        writer.writerow(_csv_value(value) for value in row.values())


def _csv_value(value: Any) -> Any:
    plain = _plain(value)
    if isinstance(plain, list | dict):
        return json.dumps(plain, ensure_ascii=False)
    return "" if plain is None else plain


def _write_json(table: pa.Table, stream: TextIO, title: str | None) -> None:
    # One object per line inside one array: valid JSON for jq, and diff-friendly.
    rows = table.to_pylist()
    stream.write("[")
    for index, row in enumerate(rows):
        separator = "," if index else ""
        stream.write(f"{separator}\n{json.dumps(_plain(row), ensure_ascii=False)}")
    stream.write("\n]\n" if rows else "]\n")


def _plain(value: Any) -> Any:
    """A value JSON can hold, recursively."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return _text_of(value)
    return value


def _text_of(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(data).decode("ascii")
