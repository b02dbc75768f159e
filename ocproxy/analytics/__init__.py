"""Querying recordings: named SQL queries (``analysis/*.sql``) over one or more sources.

``open_sources`` turns recordings (DuckDB files, globs, Parquet exports) into one
read-only DuckDB connection with the public views; ``load_queries`` / ``bind`` /
``run`` find, parameterise and run the named queries; ``write_result`` prints them.
"""

from ocproxy.analytics.output import FORMATS, choose_format, write_result
from ocproxy.analytics.queries import (
    NamedQuery,
    Param,
    QueryResult,
    bind,
    get_query,
    load_queries,
    parse_params,
    run,
)
from ocproxy.analytics.sources import PUBLIC_TABLES, Sources, open_sources

__all__ = [
    "FORMATS",
    "PUBLIC_TABLES",
    "NamedQuery",
    "Param",
    "QueryResult",
    "Sources",
    "bind",
    "choose_format",
    "get_query",
    "load_queries",
    "open_sources",
    "parse_params",
    "run",
    "write_result",
]
