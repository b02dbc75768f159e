"""Named queries: one ``.sql`` file each, with a header comment, run with parameters.

A named query starts with comment lines (see ``analysis/README.md``)::

    -- title: Transactions
    -- description: One row per transaction ...
    --   (an indented line continues the previous one)
    -- param identity: only this charger (optional, NULL when not given)
    -- param since = 2024-01-01: a parameter with a default
    -- param day (required): a parameter that must be given

Parameters are DuckDB prepared parameters (``$identity`` in the SQL); values arrive as
strings, so the SQL casts them where it needs another type. A query's result column
named ``issues`` (a list of strings) marks rows read leniently from payloads that
violate the OCPP schemas: such rows are counted and reported, never fatal.
"""

from __future__ import annotations

import functools
import re
import weakref
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from ocproxy.errors import ConfigError, OcproxyError
from ocproxy.recorder import derived

ISSUES_COLUMN = "issues"
LEGS = ("charger", "mirror", "all")  # values of the queries' legs parameter
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_PARAM_REF = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
_PARAM = re.compile(
    r"(?P<name>[a-z_][a-z0-9_]*)\s*"
    r"(?:\((?P<required>required)\)|=\s*(?P<default>[^:]*?))?\s*:\s*(?P<description>.+)"
)
_FIELDS = re.compile(rf"\b{derived.TABLE}\b", re.IGNORECASE)
# Connections whose frame_fields were checked (and, if incomplete, replaced by a view).
_CHECKED: weakref.WeakSet[duckdb.DuckDBPyConnection] = weakref.WeakSet()
_KEY = re.compile(r"(?P<key>title|description):\s*(?P<value>.*)|param\s+(?P<param>.*)")


@dataclass(frozen=True)
class Param:
    name: str
    description: str
    required: bool = False
    default: str | None = None


@dataclass(frozen=True)
class NamedQuery:
    name: str
    title: str
    description: str
    params: tuple[Param, ...]
    sql: str


@dataclass(frozen=True)
class QueryResult:
    table: pa.Table
    # Rows whose ``issues`` list is not empty: read from schema-violating payloads.
    lenient_rows: int = 0


def query_dir() -> Traversable:
    """Where the named queries are: inside the installed package, else the checkout."""
    installed = resources.files("ocproxy") / "analysis"
    if installed.is_dir():
        return installed
    # An editable checkout has them in the repository's analysis/, beside the package.
    return Path(__file__).resolve().parents[2] / "analysis"


@functools.cache
def load_queries() -> dict[str, NamedQuery]:
    """Every named query, by name, sorted by name."""
    directory = query_dir()
    if not directory.is_dir():
        raise OcproxyError(f"the named queries are missing from this installation ({directory})")
    files = sorted(
        (f for f in directory.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name
    )
    queries = [parse_query(f.name.removesuffix(".sql"), f.read_text("utf-8")) for f in files]
    return {q.name: q for q in queries}


def get_query(name: str) -> NamedQuery:
    queries = load_queries()
    if name not in queries:
        raise ConfigError(
            f"unknown query {name!r}: `ocproxy query --list` shows the named queries "
            f"({', '.join(queries)})"
        )
    return queries[name]


def looks_like_name(text: str) -> bool:
    """A bare word is a query name; anything else (spaces, punctuation) is SQL."""
    return re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", text) is not None


def parse_query(name: str, text: str) -> NamedQuery:
    """Read the header comment of a named query; a malformed header is an error."""
    if not _NAME.fullmatch(name):
        raise OcproxyError(f"named query file {name}.sql: names are lower_case_words")
    fields: dict[str, str] = {}
    params: list[Param] = []
    last: str | None = None
    for line in _header_lines(text):
        if line.startswith("  ") and last is not None:
            fields[last] = f"{fields[last]} {line.strip()}"
            continue
        match = _KEY.fullmatch(line.strip())
        if match is None:
            raise OcproxyError(f"named query {name}: cannot read header line {line.strip()!r}")
        if match["param"] is not None:
            params.append(_parse_param(name, match["param"]))
            last = None
        else:
            last = match["key"]
            fields[last] = match["value"].strip()
    query = NamedQuery(
        name=name,
        title=fields.get("title", ""),
        description=fields.get("description", ""),
        params=tuple(params),
        sql=text,
    )
    _check(query)
    return query


def _header_lines(text: str) -> list[str]:
    lines = []
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        body = line[2:].removeprefix(" ")
        if body.strip():
            lines.append(body)
    return lines


def _parse_param(query: str, text: str) -> Param:
    match = _PARAM.fullmatch(text.strip())
    if match is None:
        raise OcproxyError(f"named query {query}: cannot read parameter {text.strip()!r}")
    return Param(
        name=match["name"],
        description=match["description"].strip(),
        required=match["required"] is not None,
        default=match["default"],
    )


def _check(query: NamedQuery) -> None:
    if not query.title or not query.description:
        raise OcproxyError(f"named query {query.name}: the header needs a title and a description")
    used = set(_PARAM_REF.findall(query.sql))
    declared = {p.name for p in query.params}
    if used != declared:
        raise OcproxyError(
            f"named query {query.name}: parameters used {sorted(used)} "
            f"but declared {sorted(declared)}"
        )


def parse_params(items: list[str] | None) -> dict[str, str]:
    """``["k=v", ...]`` from ``--param`` options; the value may contain ``=``."""
    params: dict[str, str] = {}
    for item in items or []:
        name, equals, value = item.partition("=")
        name = name.strip()
        if not equals or not name:
            raise ConfigError(f"--param {item!r}: expected NAME=VALUE")
        if name in params:
            raise ConfigError(f"--param {name} given twice")
        params[name] = value
    return params


def bind(query: NamedQuery, given: dict[str, str]) -> dict[str, str | None]:
    """Values for every declared parameter: given, default, or an error if required."""
    declared = {p.name: p for p in query.params}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        takes = ", ".join(declared) or "no parameters"
        raise ConfigError(f"query {query.name} has no parameter {unknown[0]!r} (it takes {takes})")
    if given.get("legs", "charger") not in LEGS:
        raise ConfigError(
            f"--param legs={given['legs']}: legs is one of {', '.join(LEGS)} (the chargers' "
            "own connections, the mirror legs to a secondary CSMS, or both)"
        )
    values: dict[str, str | None] = {}
    for param in query.params:
        if param.name in given:
            values[param.name] = given[param.name]
        elif param.required:
            raise ConfigError(
                f"query {query.name} needs --param {param.name}=VALUE ({param.description})"
            )
        else:
            values[param.name] = param.default
    return values


def run(
    db: duckdb.DuckDBPyConnection,
    sql: str,
    params: dict[str, str | None],
    *,
    what: str = "query",
) -> QueryResult:
    """Run SQL (a script: the last statement's result counts) and fetch it as Arrow.

    SQL reading ``frame_fields`` (the payload fields parsed at insert time) gets them
    computed from ``frames`` when the sources lack some (a recording written before
    they existed): the same result, only slower."""
    try:
        if _FIELDS.search(sql):
            _fields_checked(db)
        relation = db.sql(sql, params=params or None)
        table = pa.table({}) if relation is None else relation.to_arrow_table()
    except duckdb.Error as exc:
        raise ConfigError(f"{what} failed: {_explain(exc, sql, params)}") from exc
    return QueryResult(table, lenient_rows(table))


def _fields_checked(db: duckdb.DuckDBPyConnection) -> None:
    """Check ``frame_fields`` once per connection (a report runs several queries)."""
    if db in _CHECKED:
        return
    derived.ensure_readable(db)
    _CHECKED.add(db)


def _explain(exc: duckdb.Error, sql: str, params: dict[str, str | None]) -> str:
    """DuckDB's first line, reworded where it is about --param."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    missing = re.search(r"Values were not provided for the following parameters?: (.+)", line)
    if missing:
        name = missing[1].split(",")[0].strip()
        return f"missing parameter {name!r}: give --param {name}=VALUE"
    if "count mismatch" in line or "excess parameters" in line:
        used = set(_PARAM_REF.findall(sql))
        unused = sorted(set(params) - used) or sorted(params)
        return f"the SQL does not use --param {', '.join(unused)}"
    return line


def lenient_rows(table: pa.Table) -> int:
    if ISSUES_COLUMN not in table.column_names:
        return 0
    column = table.column(ISSUES_COLUMN)
    if not pa.types.is_list(column.type):
        return 0
    lengths = pc.fill_null(pc.list_value_length(column), 0)
    return int(pc.sum(pc.greater(lengths, 0)).as_py() or 0)
