"""OCPP JSON schemas, loaded from the installed ``ocpp`` package and compiled on demand.

The schemas are licensed separately from the ``ocpp`` package's code, so they are read
where the package installed them, never copied. Compiling all ~390 takes ~2 s, so each
is compiled with fastjsonschema the first time an action is seen, then cached.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import fastjsonschema
import jsonschema_rs

from ocproxy.core.handshake import OcppVersion

# OCPP 2.0 was superseded by 2.0.1 before it shipped widely; its chargers are checked
# against the 2.0.1 schemas.
_PACKAGE_DIRS = {
    OcppVersion.V16: "v16",
    OcppVersion.V20: "v201",
    OcppVersion.V201: "v201",
    OcppVersion.V21: "v21",
}

_NAIVE_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d(:\d\d(\.\d+)?)?$")


@dataclass(frozen=True)
class SchemaViolation:
    rule: str  # one of the schema-* rule ids
    message: str
    path: str  # JSON path into the payload, "$" for the root


Validator = Callable[[Any], Any]


@cache
def actions(version: OcppVersion) -> frozenset[str]:
    """Every action the version defines (one request schema per action)."""
    names = set()
    for entry in _schema_dir(version).iterdir():
        name = entry.name.removesuffix(".json")
        if not entry.name.endswith(".json") or name.endswith("Response"):
            continue
        names.add(name.removesuffix("Request"))
    return frozenset(names)


@cache
def date_time_keys(version: OcppVersion) -> frozenset[str]:
    """Property names that hold a date-time in any of the version's schemas."""
    keys: set[str] = set()
    for entry in _schema_dir(version).iterdir():
        if entry.name.endswith(".json"):
            _collect_date_times(json.loads(entry.read_text(encoding="utf-8-sig")), keys)
    return frozenset(keys)


def _collect_date_times(node: Any, keys: set[str]) -> None:
    if isinstance(node, dict):
        for name, child in (node.get("properties") or {}).items():
            if isinstance(child, dict) and child.get("format") == "date-time":
                keys.add(name)
        for child in node.values():
            _collect_date_times(child, keys)
    elif isinstance(node, list):
        for child in node:
            _collect_date_times(child, keys)


def validate(
    version: OcppVersion, action: str, payload: Any, *, response: bool
) -> SchemaViolation | None:
    """The first way ``payload`` violates the action's request or response schema."""
    schema = _schema(version, action, response)
    if schema is None:
        return None
    # Almost every frame is valid: jsonschema-rs says so in ~0.4 us where fastjsonschema's
    # generated Python takes ~5 us (a MeterValues CALL). Only a frame it rejects pays
    # for fastjsonschema, whose exception is what the finding is built from.
    if _fast_valid(_fast_validator(version, action, response), payload):
        return None
    validator = _validator(version, action, response)
    try:
        validator(payload)
    except fastjsonschema.JsonSchemaValueException as exc:
        return _classify(exc)
    return None


def _fast_valid(validator: Any, payload: Any) -> bool:
    try:
        return bool(validator.is_valid(payload))
    except (ValueError, TypeError, OverflowError):  # lone surrogates, huge ints: the slow path
        return False


@cache
def _fast_validator(version: OcppVersion, action: str, response: bool) -> Any:
    schema = _schema(version, action, response)
    assert schema is not None, "only called for actions with a schema"
    return jsonschema_rs.validator_for(schema, validate_formats=True)


@cache
def _validator(version: OcppVersion, action: str, response: bool) -> Validator:
    schema = _schema(version, action, response)
    assert schema is not None, "only called for actions with a schema"
    validator: Validator = fastjsonschema.compile(schema, use_formats=True)
    return validator


def schema(version: OcppVersion, action: str, *, response: bool) -> dict[str, Any] | None:
    """The action's request or response schema (shared, do not modify), None if none."""
    return _schema(version, action, response)


@cache
def _schema(version: OcppVersion, action: str, response: bool) -> dict[str, Any] | None:
    """The action's request or response schema, None when the version defines none."""
    if action not in actions(version):
        return None
    if response:
        names = [f"{action}Response.json"]
    elif version is OcppVersion.V16:
        names = [f"{action}.json"]
    else:
        # 2.1's SEND-only NotifyPeriodicEventStream ships as "<Action>.json".
        names = [f"{action}Request.json", f"{action}.json"]
    directory = _schema_dir(version)
    entry = next((directory / n for n in names if (directory / n).is_file()), None)
    if entry is None:  # a response to a SEND-only action: nothing to check it against
        return None
    schema: dict[str, Any] = json.loads(entry.read_text(encoding="utf-8-sig"))
    # The schemas' "$id" URNs are not fetchable; every $ref in them is local.
    schema.pop("$id", None)
    return schema


def _schema_dir(version: OcppVersion) -> Any:
    return resources.files("ocpp") / _PACKAGE_DIRS[version] / "schemas"


# The finding rule for each JSON Schema keyword a violation names (violations.py too).
RULES = {
    "required": "schema-required",
    "additionalProperties": "schema-additional-property",
    "enum": "schema-enum",
    "type": "schema-type",
    "maxLength": "schema-max-length",
    "maxItems": "schema-max-length",
    "format": "schema-format",
}


def _classify(exc: fastjsonschema.JsonSchemaValueException) -> SchemaViolation:
    path = _json_path(str(exc.name or "data"))
    rule = RULES.get(str(exc.rule), "schema-violation")
    message = str(exc.message).replace(str(exc.name), path, 1)
    if rule == "schema-enum" and isinstance(exc.value, str):
        allowed = exc.rule_definition or []
        match = next((a for a in allowed if str(a).lower() == exc.value.lower()), None)
        if match is not None:
            message = f"{path} is {exc.value!r}, which differs only in case from {match!r}"
    if rule == "schema-type" and isinstance(exc.value, str) and _looks_numeric(exc.value):
        message = f"{path} is the string {exc.value!r}, not of type {exc.rule_definition}"
    return SchemaViolation(rule, message, path)


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def is_naive_timestamp(value: str) -> bool:
    """A date-time string without a zone (``2026-01-01T10:00:00``)."""
    return bool(_NAIVE_TIMESTAMP.match(value))


def _json_path(name: str) -> str:
    # fastjsonschema names the value "data.meterValue[0].timestamp"; exc.path splits that
    # into strings only, so array indexes cannot be told from keys there.
    return "$" + name.removeprefix("data")
