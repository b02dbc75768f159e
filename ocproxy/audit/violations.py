"""Every schema violation of a payload, not only the first.

The compiled validators of :mod:`schemas` stop at the first violation; a frame with a
number sent as a string *and* a misspelt enum would show only one of them, and the
other only once the first is fixed. A payload they reject is walked again here by
jsonschema, which reports them all; a valid payload never comes here, so clean traffic
costs what it did.
"""

from __future__ import annotations

import re
from functools import cache, partial
from typing import Any

import fastjsonschema
import jsonschema

from ocproxy.audit import schemas
from ocproxy.audit.schemas import SchemaViolation
from ocproxy.core.handshake import OcppVersion


def violations(
    version: OcppVersion, action: str, payload: Any, *, response: bool
) -> tuple[SchemaViolation, ...]:
    """Every way ``payload`` violates its schema: one violation per value and keyword."""
    first = schemas.validate(version, action, payload, response=response)
    if first is None:
        return ()
    return every_violation(version, action, payload, first, response=response)


def every_violation(
    version: OcppVersion,
    action: str,
    payload: Any,
    first: SchemaViolation,
    *,
    response: bool,
) -> tuple[SchemaViolation, ...]:
    """Every violation of a payload :func:`schemas.validate` rejected with ``first``.

    :func:`schemas.validate` stays the check every payload goes through (a valid one
    costs nothing more); only a payload it rejects is walked again, by jsonschema, which
    unlike the compiled validators does not stop at the first violation.
    """
    every = _every_violation(_full_validator(version, action, response), payload)
    # Should the validators ever disagree, the compiled one's verdict stands.
    return every or (first,)


@cache
def _full_validator(version: OcppVersion, action: str, response: bool) -> Any:
    schema = schemas.schema(version, action, response=response)
    assert schema is not None, "only called for actions with a schema"
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=_FORMATS)


def _same_formats() -> jsonschema.FormatChecker:
    """Formats checked as fastjsonschema checks them (jsonschema lacks date-time and uri)."""
    checker = jsonschema.FormatChecker(())
    patterns = {
        **fastjsonschema.draft04.CodeGeneratorDraft04.FORMAT_REGEXS,
        **fastjsonschema.draft06.CodeGeneratorDraft06.FORMAT_REGEXS,
    }
    for name, pattern in patterns.items():
        checker.checks(name)(partial(_matches, re.compile(pattern)))
    return checker


def _matches(pattern: re.Pattern[str], value: object) -> bool:
    return not isinstance(value, str) or pattern.match(value) is not None


_FORMATS = _same_formats()


def _every_violation(validator: Any, payload: Any) -> tuple[SchemaViolation, ...]:
    try:
        errors = sorted(validator.iter_errors(payload), key=lambda e: _path_key(e.absolute_path))
    except (ValueError, TypeError, RecursionError):  # nothing jsonschema can walk
        return ()
    out: list[SchemaViolation] = []
    for error in errors:
        out.extend(_from_error(error))
    return tuple(out)


def _path_key(path: Any) -> tuple[tuple[int, str], ...]:
    return tuple((0, f"{p:09d}") if isinstance(p, int) else (1, str(p)) for p in path)


def _from_error(error: jsonschema.ValidationError) -> list[SchemaViolation]:
    path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    keyword, value, expected = str(error.validator), error.instance, error.validator_value
    rule = schemas.RULES.get(keyword, "schema-violation")
    if keyword == "required":
        # One per missing property: jsonschema reports each on its own already.
        missing = str(error.message).split("'")[1] if "'" in error.message else error.message
        return [SchemaViolation(rule, f"{path} lacks the required property {missing!r}", path)]
    if keyword == "additionalProperties" and isinstance(value, dict):
        known = set((error.schema or {}).get("properties") or {})
        return [
            SchemaViolation(rule, f"{path} has {name!r}, which the schema does not define", path)
            for name in value
            if name not in known
        ]
    if keyword == "enum":
        message = f"{path} is {value!r}, not one of {expected}"
        if isinstance(value, str):
            match = next((a for a in expected if str(a).lower() == value.lower()), None)
            if match is not None:
                message = f"{path} is {value!r}, which differs only in case from {match!r}"
        return [SchemaViolation(rule, message, path)]
    if keyword == "type":
        if isinstance(value, str) and _looks_numeric(value):
            return [SchemaViolation(rule, f"{path} is the string {value!r}, not of type "
                                    f"{expected}", path)]  # fmt: skip
        return [SchemaViolation(rule, f"{path} must be {expected}, is {_kind(value)}", path)]
    if keyword in ("maxLength", "maxItems"):
        unit = "characters" if keyword == "maxLength" else "items"
        return [SchemaViolation(rule, f"{path} is longer than {expected} {unit}", path)]
    if keyword == "format":
        return [SchemaViolation(rule, f"{path} is {value!r}, not a valid {expected}", path)]
    return [SchemaViolation(rule, f"{path}: {error.message}", path)]


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names.update({list: "an array", dict: "an object", type(None): "null"})
    return names.get(type(value), type(value).__name__)


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
