"""Schema-valid traffic, generated for every action of every version, yields no finding.

For each action the request and the response are drawn from the JSON schemas the
``ocpp`` package ships (hypothesis-jsonschema, derandomized: the same payloads on
every run), sent as a CALL and its CALLRESULT through the real parser, correlator
and auditor, so the response is checked against its CALL's schema.

Each payload is also judged by an independent validator (python-jsonschema, installed
with hypothesis-jsonschema). Where it rejects a generated payload, that is a quirk of
generation, not a valid payload: the auditor must then flag the frame too, and the
only quirk allowed is the one we know of (``KNOWN_QUIRKS``).
"""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.internal.conjecture import utils as conjecture_utils
from hypothesis_jsonschema import from_schema

from ocproxy.audit import schemas
from ocproxy.core.handshake import OcppVersion

from .helpers import CP, CS, SUBPROTOCOL, VERSIONS, Feed, load_schema

# hypothesis-jsonschema 0.23.1 (the latest) drives hypothesis' private ``many`` helper
# through ``more()``, which hypothesis 6.170 replaced by iteration: every object schema
# then fails with "'many' object has no attribute 'more'". Until one of them is fixed
# (or hypothesis is pinned below that release), give ``many`` its old method back.
if not hasattr(conjecture_utils.many, "more"):  # pragma: no cover - depends on versions

    def _more(self: Any) -> bool:
        if self._depth is None:
            self.__enter__()
            self._iterated = True
        if self._in_element:
            self._finish_element()
        if not self._decide():
            self._closed = True
            return False
        self.count += 1
        self._in_element = True
        self._rejected = False
        return True

    conjecture_utils.many.more = _more

EXAMPLES = 2  # per action: the simplest request/response pair, then a random one

# Actions without a response schema: 2.1's NotifyPeriodicEventStream is a SEND, which
# is never answered (the only request schema of the three versions without "Request").
SEND_ONLY = {(OcppVersion.V21, "NotifyPeriodicEventStream")}

# Quirks of generation (payloads hypothesis-jsonschema believes valid, the independent
# validator does not), by (kind, JSON Schema keyword):
# - multipleOf 0.1 (1.6 chargingSchedulePeriod.limit, minChargingRate): the generator
#   builds k * 0.1 in binary floating point, e.g. 102.80000000000001, which is not a
#   multiple of 0.1 as a JSON number; the auditor (fastjsonschema, Decimal arithmetic)
#   rightly flags it as schema-violation.
KNOWN_QUIRKS = {"multipleOf"}

CASES = [(v, action) for v in VERSIONS for action in sorted(schemas.actions(v))]


def _capped(schema: Any) -> Any:
    """The schema with every unbounded array limited to 2 items (a subset of valid
    payloads), so the deeply nested 2.x charging-profile schemas generate in time."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "array" and "maxItems" not in node:
                node["maxItems"] = max(node.get("minItems", 0), 2)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def _decimal_multiple_of(validator: Any, divisor: Any, instance: Any, schema: Any) -> Any:
    """multipleOf as JSON Schema means it, on the decimal number the JSON text spells.

    python-jsonschema divides in binary floating point, where 102.80000000000001 / 0.1
    == 1028.0, and so accepts that number as a multiple of 0.1; it is not one.
    """
    if not validator.is_type(instance, "number"):
        return
    quotient = Decimal(repr(instance)) / Decimal(repr(divisor))
    if quotient != quotient.to_integral_value():
        yield jsonschema.ValidationError(f"{instance!r} is not a multiple of {divisor}")


def _independent_errors(schema: dict[str, Any], payload: Any) -> list[str]:
    base = jsonschema.validators.validator_for(schema)
    cls = jsonschema.validators.extend(base, {"multipleOf": _decimal_multiple_of})
    return sorted({str(error.validator) for error in cls(schema).iter_errors(payload)})


def test_every_schema_is_covered() -> None:
    """Every action has a request schema, and all but the SEND-only ones a response."""
    missing_response = set()
    for version, action in CASES:
        assert load_schema(version, action, response=False) is not None, (version, action)
        if load_schema(version, action, response=True) is None:
            missing_response.add((version, action))
    assert missing_response == SEND_ONLY
    assert len(CASES) == 39 + 64 + 91


@pytest.mark.parametrize(("version", "action"), CASES, ids=[f"{v}-{a}" for v, a in CASES])
def test_generated_valid_exchange_has_no_finding(version: OcppVersion, action: str) -> None:
    request_schema = load_schema(version, action, response=False)
    response_schema = load_schema(version, action, response=True)
    assert request_schema is not None
    requests = from_schema(_capped(request_schema))
    responses = st.none() if response_schema is None else from_schema(_capped(response_schema))
    quirks: set[str] = set()

    @settings(
        derandomize=True,
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(request=requests, response=responses)
    def exchange(request: dict[str, Any], response: dict[str, Any] | None) -> None:
        feed = Feed()
        connection_id, opened = feed.open(SUBPROTOCOL[version])
        assert opened == []
        if (version, action) in SEND_ONLY:
            frames = [(CP, [6, "gen-1", action, request], 0.0, request_schema)]
        else:
            frames = [
                (CP, [2, "gen-1", action, request], 0.0, request_schema),
                (CS, [3, "gen-1", response], 0.5, response_schema),
            ]
        for direction, message, at, schema in frames:
            found = feed.send(connection_id, direction, message, at)
            errors = _independent_errors(schema, message[-1])
            described = [(f.rule, f.path, f.message) for f in found]
            if not errors:
                assert found == [], (described, message)
            else:  # not a valid payload after all: the auditor must say so too
                quirks.update(errors)
                assert found, (errors, message)
                assert all(f.rule.startswith("schema-") for f in found), described

    exchange()
    assert quirks <= KNOWN_QUIRKS, quirks


def test_generated_date_times_carry_a_zone() -> None:
    """The generator's date-times are RFC 3339 with Z or an offset, as the auditor wants;
    were they naive, every generated payload above would be a finding."""
    seen: list[str] = []

    @settings(derandomize=True, max_examples=100, database=None, deadline=None)
    @given(from_schema({"type": "string", "format": "date-time"}))
    def draw(value: str) -> None:
        seen.append(value)
        assert not schemas.is_naive_timestamp(value)
        assert value.endswith("Z") or value[-6] in "+-", value

    draw()
    assert len(seen) == 100
    assert any(v.endswith("Z") for v in seen)
    assert any(not v.endswith("Z") for v in seen)
