"""The inspector's filter expressions: parsed without I/O, then matched two ways.

An expression is terms separated by spaces, all of which must hold::

    action:Boot*,Authorize  dir:csms  -type:CALLRESULT  rule:schema-*  "idTag"
    severity:warning  since:2026-01-31T12:00  until:2026-01-31T13:00  is:injected

``key:value`` terms compare one field (``value`` may be a comma list of alternatives,
``*``/``?`` globs where the field is a name); a bare word or a quoted string is text
searched in the payload (case-insensitive); a leading ``-`` negates a term. A bad
expression raises :class:`FilterError` with the column it went wrong at.

:func:`to_sql` turns a filter into a DuckDB ``WHERE`` fragment over ``frames f`` (for
recordings); :func:`matches` applies it to a frame in memory (live).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ocproxy.audit.rules import Severity

TYPES = {"CALL": 2, "CALLRESULT": 3, "CALLERROR": 4, "CALLRESULTERROR": 5, "SEND": 6}
DIRECTIONS = {
    "to_csms": "to_csms",
    "csms": "to_csms",
    ">": "to_csms",
    "to_charger": "to_charger",
    "charger": "to_charger",
    "<": "to_charger",
}
FLAGS = ("injected", "error", "malformed", "finding")
KEYS = {
    "identity": "identity",
    "cp": "identity",
    "action": "action",
    "dir": "direction",
    "direction": "direction",
    "type": "type",
    "rule": "rule",
    "severity": "severity",
    "sev": "severity",
    "text": "text",
    "id": "message_id",
    "since": "since",
    "until": "until",
    "is": "is",
}
HELP = (
    "identity:CP-*  action:Boot*,Authorize  dir:csms|charger  type:CALL,CALLERROR  "
    "rule:schema-*  severity:warning  id:MSGID  since:/until:2026-01-31T12:00  "
    'is:injected|error|malformed|finding  text or "quoted text"  -term negates'
)


class FilterError(ValueError):
    """An expression that does not parse; ``column`` is where (0-based)."""

    def __init__(self, column: int, message: str) -> None:
        super().__init__(f"column {column + 1}: {message}")
        self.column = column
        self.message = message


@dataclass(frozen=True, slots=True)
class Term:
    field: str  # one of KEYS' values
    values: tuple[Any, ...]  # strings; epoch seconds for since/until; ints for type
    negate: bool = False


@dataclass(frozen=True, slots=True)
class Filter:
    text: str = ""
    terms: tuple[Term, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.terms)

    def has(self, field: str) -> bool:
        return any(t.field == field for t in self.terms)

    def identities(self) -> tuple[str, ...]:
        """The identity patterns a positive ``identity:`` term allows (for the chargers
        pane); empty when any charger may match."""
        return tuple(
            v for t in self.terms if t.field == "identity" and not t.negate for v in t.values
        )


# -- parsing --------------------------------------------------------------------------------


def parse(text: str) -> Filter:
    """The filter an expression means; ``""`` is the filter that lets everything through."""
    return Filter(text, tuple(_term(word, column) for word, column in _words(text)))


def _words(text: str) -> list[tuple[str, int]]:
    """Split on spaces outside double quotes; quotes are kept (``_term`` reads them)."""
    words: list[tuple[str, int]] = []
    start: int | None = None
    quoted = False
    for column, char in enumerate(text):
        if char == '"':
            quoted = not quoted
            if start is None:
                start = column
        elif char.isspace() and not quoted:
            if start is not None:
                words.append((text[start:column], start))
                start = None
        elif start is None:
            start = column
    if quoted:
        raise FilterError(text.rindex('"'), "this quote is never closed")
    if start is not None:
        words.append((text[start:], start))
    return words


def _term(word: str, column: int) -> Term:
    negate = word.startswith("-") and len(word) > 1
    body = word[1:] if negate else word
    offset = column + (1 if negate else 0)
    key, sep, value = body.partition(":")
    if not sep or key.startswith('"'):
        return Term("text", (_unquote(body, offset),), negate)
    field = KEYS.get(key.lower())
    if field is None:
        known = ", ".join(sorted(set(KEYS) - {"cp", "sev", "dir"}))
        raise FilterError(offset, f"unknown key {key!r} (one of {known})")
    value_column = offset + len(key) + 1
    value = _unquote(value, value_column)
    if not value:
        raise FilterError(value_column, f"{key}: needs a value")
    return Term(field, _values(field, value, value_column), negate)


def _unquote(text: str, column: int) -> str:
    if text.startswith('"'):
        if len(text) < 2 or not text.endswith('"'):
            raise FilterError(column, "text after a closing quote")
        return text[1:-1]
    return text


def _values(field: str, value: str, column: int) -> tuple[Any, ...]:
    if field in ("since", "until"):
        return (_time(value, column),)
    if field in ("text", "message_id"):
        return (value,)
    items = value.split(",")
    if any(not item for item in items):
        raise FilterError(column, "an empty alternative in a comma list")
    if field == "direction":
        return tuple(_choice(DIRECTIONS, item, column, "csms, charger") for item in items)
    if field == "type":
        return tuple(_type(item, column) for item in items)
    if field == "severity":
        if len(items) > 1:
            raise FilterError(column, "severity takes one value: info, warning or error")
        return (int(_severity(items[0], column)),)
    if field == "is":
        return tuple(_choice({f: f for f in FLAGS}, item.lower(), column, ", ".join(FLAGS))
                     for item in items)  # fmt: skip
    return tuple(items)


def _choice(options: Mapping[str, str], item: str, column: int, listed: str) -> str:
    if item.lower() not in options:
        raise FilterError(column, f"{item!r} is not one of {listed}")
    return options[item.lower()]


def _type(item: str, column: int) -> int:
    name = item.upper()
    if name == "MALFORMED":
        return 0  # matched by parse_status, not message_type
    if name not in TYPES:
        raise FilterError(column, f"{item!r} is not a message type (CALL, CALLRESULT, "
                                  "CALLERROR, CALLRESULTERROR, SEND, MALFORMED)")  # fmt: skip
    return TYPES[name]


def _severity(item: str, column: int) -> Severity:
    try:
        return Severity.parse(item)
    except KeyError:
        raise FilterError(column, f"{item!r} is not a severity (info, warning, error)") from None


def _time(value: str, column: int) -> float:
    """ISO 8601 date or date and time; UTC unless it says otherwise."""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise FilterError(column, f"{value!r} is not a time like 2026-01-31T12:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


# -- matching in memory (live) ----------------------------------------------------------------


def matches(flt: Filter, frame: Mapping[str, Any]) -> bool:
    """Whether a frame passes: ``frame`` has the keys of a control ``frame`` event
    (identity, direction, message_type, action, message_id, parse_status, injected,
    payload or raw, ts in epoch seconds, findings as [{"rule", "severity"}])."""
    return all(_holds(term, frame) != term.negate for term in flt.terms)


def _holds(term: Term, frame: Mapping[str, Any]) -> bool:
    field, values = term.field, term.values
    if field in ("identity", "action"):
        name = frame.get(field)
        return name is not None and any(fnmatch.fnmatchcase(name, v) for v in values)
    if field == "direction":
        return frame.get("direction") in values
    if field == "type":
        malformed = frame.get("parse_status") not in (None, "ok")
        return any((v == 0 and malformed) or (v != 0 and frame.get("message_type") == v
                                              and not malformed) for v in values)  # fmt: skip
    if field == "message_id":
        return bool(frame.get("message_id") == values[0])
    if field == "text":
        body = frame.get("payload") or frame.get("raw") or ""
        return str(values[0]).lower() in str(body).lower()
    if field in ("since", "until"):
        ts = float(frame.get("ts") or 0.0)
        return bool(ts >= values[0] if field == "since" else ts < values[0])
    findings: Sequence[Mapping[str, Any]] = frame.get("findings") or ()
    if field == "rule":
        return any(fnmatch.fnmatchcase(str(f.get("rule")), v) for f in findings for v in values)
    if field == "severity":
        return any(int(Severity.parse(str(f.get("severity")))) >= values[0] for f in findings)
    return all(_flag(flag, frame, findings) for flag in values)


def _flag(flag: str, frame: Mapping[str, Any], findings: Sequence[Any]) -> bool:
    if flag == "injected":
        return bool(frame.get("injected"))
    if flag == "error":
        return frame.get("message_type") in (4, 5)
    if flag == "malformed":
        return frame.get("parse_status") not in (None, "ok")
    return bool(findings)


# -- SQL (recordings) -------------------------------------------------------------------------


def to_sql(flt: Filter) -> tuple[str, dict[str, Any]]:
    """A ``WHERE`` fragment over ``frames f`` joined to ``connections c``, and its
    parameters (named ``$fN``). ``TRUE`` for an empty filter."""
    clauses: list[str] = []
    params: dict[str, Any] = {}
    for term in flt.terms:
        clause = _clause(term, params)
        clauses.append(f"NOT ({clause})" if term.negate else f"({clause})")
    return (" AND ".join(clauses) or "TRUE"), params


def _param(params: dict[str, Any], value: Any) -> str:
    name = f"f{len(params)}"
    params[name] = value
    return f"${name}"


def _globs(column: str, values: tuple[Any, ...], params: dict[str, Any]) -> str:
    # GLOB is case-sensitive like identities and actions; a value without wildcards is
    # an equality (cheaper, and exact for names holding [ ]).
    parts = [
        f"{column} GLOB {_param(params, v)}" if set(v) & set("*?[")
        else f"{column} = {_param(params, v)}"
        for v in values
    ]  # fmt: skip
    return " OR ".join(parts)


def _clause(term: Term, params: dict[str, Any]) -> str:
    field, values = term.field, term.values
    if field == "identity":
        return _globs("c.identity", values, params)
    if field == "action":
        return _globs("f.action", values, params)
    if field == "direction":
        return " OR ".join(f"f.direction = {_param(params, v)}" for v in values)
    if field == "type":
        return " OR ".join(
            "f.parse_status <> 'ok'" if v == 0
            else f"(f.message_type = {int(v)} AND f.parse_status = 'ok')"
            for v in values
        )  # fmt: skip
    if field == "message_id":
        return f"f.message_id = {_param(params, values[0])}"
    if field == "text":
        return f"contains(lower(f.payload::VARCHAR), lower({_param(params, values[0])}))"
    if field == "since":
        return f"f.ts >= to_timestamp({_param(params, values[0])})"
    if field == "until":
        return f"f.ts < to_timestamp({_param(params, values[0])})"
    if field == "rule":
        return _finding(_globs("g.rule", values, params))
    if field == "severity":
        allowed = [str(s) for s in Severity if int(s) >= values[0]]
        return _finding(f"g.severity IN ({', '.join(repr(a) for a in allowed)})")
    return " AND ".join(_flag_sql(flag) for flag in values)


def _finding(condition: str) -> str:
    # A semi-join on the (small) findings table, not a correlated EXISTS per frame.
    return (
        "(f.connection_id, f.seq) IN (SELECT (g.connection_id, g.seq) FROM findings g "
        f"WHERE {condition})"
    )


def _flag_sql(flag: str) -> str:
    return {
        "injected": "coalesce(f.injected, false)",
        "error": "f.message_type IN (4, 5)",
        "malformed": "f.parse_status <> 'ok'",
        "finding": _finding("TRUE"),
    }[flag]
