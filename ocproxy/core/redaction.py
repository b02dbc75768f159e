"""Keeping secrets and driver identities out of the recording (never out of forwarding).

Pure: a parsed payload and its action in, a redacted copy and a list of what was
removed out. Secrets become :data:`MARKER`; driver identifiers (idTag, idToken) become
a keyed hash of their upper-cased value, so one driver can be followed across
sessions without being identified. A response is only recognisable as carrying a
secret through its CALL's action, which correlation supplies.

2.1 ``-Signed`` actions carry a JWS; redacting inside it would break the signature the
recording is evidence of, so those frames are left alone.

A CALLERROR (or CALLRESULTERROR) may echo the message it answers in its details: the
``ocpp`` package sends ``{"cause": ..., "ocpp_message": "[2,\\"id\\",\\"Authorize\\",{...}]"}``,
the CALL as a JSON text inside a string, and its cause may quote a value in plain text
(``"'ABCDEFGH12' is too long"``). Details get the payload's protection, inside such
embedded documents too, and a value replaced anywhere is replaced in their other
strings as well.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ocproxy.core.frames import Call, Send, decode_json, parse_value

MARKER = "[redacted]"
_MIN_PSEUDONYM = 8
_JSON_SPACE = " \t\n\r"

# SetNetworkProfile: connectionData.<group>.<field> holding a secret (2.0.1 and 2.1).
_NETWORK_SECRETS = {
    ("apn", "apnPassword"),
    ("apn", "simPin"),
    ("vpn", "password"),
    ("vpn", "key"),
    (None, "basicAuthPassword"),
}
_ID_TAG_KEYS = frozenset({"idTag", "parentIdTag"})
_ID_TOKEN_KEYS = frozenset({"idToken", "groupIdToken"})


@dataclass(frozen=True)
class Redacted:
    payload: Any
    removed: tuple[str, ...]  # "$.path (why)" for each value replaced


@dataclass(frozen=True)
class Redactor:
    """``id_key`` None keeps driver identifiers as they are (``--keep-ids``)."""

    id_key: bytes | None = None

    def may_redact(self, action: str | None, raw: bytes, *, response: bool) -> bool:
        """Cheap test on the raw bytes: False means :meth:`redact` would change nothing.

        Most frames carry neither a secret-bearing action nor a driver id; skipping the
        copy and walk for them is a third of the recorder's per-frame time.
        """
        if (action, response) in _SECRET_RULES:
            return True
        if self.id_key is None:
            return False
        # Every pseudonymised key (idTag, idToken) contains "dT"; an escaped key has a
        # backslash. find() is ~3x cheaper than ``in`` here (measured, per frame).
        return raw.find(b"\\") != -1 or raw.find(b"dT") != -1

    def may_redact_details(self, action: str | None, raw: bytes, *, response: bool) -> bool:
        """:meth:`may_redact` for an error frame; an escaped quote may start an echoed
        document, which names its own action (the error may answer no known CALL)."""
        return b'\\"' in raw or self.may_redact(action, raw, response=response)

    def redact_details(self, action: str | None, details: Any, *, response: bool) -> Redacted:
        """An error's details; ``action`` and ``response`` describe the message answered."""
        rules = _rules(action, response)
        pseudonym = None if self.id_key is None else self._pseudonym
        removed: list[str] = []
        work = _scrub(details, "$", rules, pseudonym, removed)
        if pseudonym is not None:
            _pseudonymise(work, "$", pseudonym, removed)
        if not removed:
            return Redacted(details, ())
        # Longest first: a short value inside a longer one must not break the longer's.
        swaps = sorted(set(_changed_values(details, work)), key=lambda p: -len(p[0]))
        work = _swap_in_text(details, work, "$", swaps, removed)
        return Redacted(work, tuple(removed))

    def redact(self, action: str | None, payload: Any, *, response: bool) -> Redacted:
        if not isinstance(payload, dict) or action is None or action.endswith("-Signed"):
            return Redacted(payload, ())
        work = _copy(payload)
        removed: list[str] = []
        for rule in _SECRET_RULES.get((action, response), ()):
            rule(work, removed)
        if self.id_key is not None:
            _pseudonymise(work, "$", self._pseudonym, removed)
        if not removed:
            return Redacted(payload, ())
        return Redacted(work, tuple(removed))

    def _pseudonym(self, token: str) -> str:
        assert self.id_key is not None
        # surrogatepass: a "\\ud800" escape is valid JSON a peer may send as its id.
        data = token.upper().encode("utf-8", "surrogatepass")
        digest = hmac.new(self.id_key, data, hashlib.sha256).hexdigest()
        # As long as the original (at least 8): length limits found on the real token
        # are found on its pseudonym too.
        length = max(len(token), _MIN_PSEUDONYM)
        return (digest * (length // len(digest) + 1))[:length].upper()


_Rule = Callable[[dict[str, Any], list[str]], None]


def _rules(action: str | None, response: bool) -> tuple[_Rule, ...]:
    return () if action is None else _SECRET_RULES.get((action, response), ())


def _scrub(
    value: Any,
    path: str,
    rules: tuple[_Rule, ...],
    pseudonym: Callable[[str], str] | None,
    removed: list[str],
) -> Any:
    """A copy of error details with the secret ``rules`` applied to every object, also
    in JSON documents held by strings (ids are left to :func:`_pseudonymise`).

    Every object, not just the top: an implementation may nest the echoed payload
    under a key of its own choosing; the rules match nothing else.
    """
    if isinstance(value, str):
        return _scrub_text(value, path, rules, pseudonym, removed)
    if isinstance(value, list):
        frame = parse_value(value)
        if isinstance(frame, Call | Send):  # an echoed request names its own action
            rules = _rules(frame.action, False)
        return [
            _scrub(item, f"{path}[{i}]", rules, pseudonym, removed) for i, item in enumerate(value)
        ]
    if not isinstance(value, dict):
        return value
    work = {
        key: _scrub(item, f"{path}.{key}", rules, pseudonym, removed) for key, item in value.items()
    }
    found: list[str] = []
    for rule in rules:
        rule(work, found)
    removed.extend(path + entry[1:] for entry in found)  # entry is "$.<where> (why)"
    return work


def _scrub_text(
    text: str,
    path: str,
    rules: tuple[_Rule, ...],
    pseudonym: Callable[[str], str] | None,
    removed: list[str],
) -> str:
    """The string, or the JSON document it holds redacted and written back in place."""
    document = _document(text)
    if document is None:
        return text
    found: list[str] = []
    work = _scrub(document, path, rules, pseudonym, found)
    if pseudonym is not None:
        _pseudonymise(work, path, pseudonym, found)
    if not found:
        return text
    removed.extend(found)
    return _rewritten(text, document, work)


def _document(text: str) -> Any:
    """The object or array a string holds as JSON text, else None."""
    if not text.lstrip(_JSON_SPACE).startswith(("{", "[")):  # cheap: most strings are prose
        return None
    document, failure = decode_json(text)
    return None if failure is not None else document


def _changed_values(original: Any, redacted: Any) -> list[tuple[str, str]]:
    """(old, new) text of every scalar replaced, inside embedded JSON documents too."""
    if isinstance(original, dict) and isinstance(redacted, dict):
        return [p for k in original for p in _changed_values(original[k], redacted.get(k))]
    if isinstance(original, list) and isinstance(redacted, list):
        return [p for a, b in zip(original, redacted, strict=False) for p in _changed_values(a, b)]
    if original == redacted or isinstance(original, bool) or original is None:
        return []
    if isinstance(original, str) and isinstance(redacted, str):
        inner = _document(original), _document(redacted)
        if inner[0] is not None and inner[1] is not None:
            return _changed_values(*inner)
    if isinstance(original, str | int | float):
        return [(str(original), str(redacted))]  # str(): how a plain-text cause quotes it
    return []


def _swap_in_text(
    original: Any, value: Any, path: str, swaps: list[tuple[str, str]], removed: list[str]
) -> Any:
    """``value`` with every old text in ``swaps`` replaced in the strings redaction kept.

    A short secret may also replace unrelated text: over-redacting the recording is the
    safe side.
    """
    if isinstance(value, dict):
        return {
            k: _swap_in_text(original.get(k), v, f"{path}.{k}", swaps, removed)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [
            _swap_in_text(o, v, f"{path}[{i}]", swaps, removed)
            for i, (o, v) in enumerate(zip(original, value, strict=True))
        ]
    if not isinstance(value, str) or value != original:
        return value
    for old, new in swaps:
        if old:  # "" is in every string
            value = value.replace(old, new)
    if value != original:
        removed.append(f"{path} (repeats a redacted value)")
    return value


def _copy(value: Any) -> Any:
    """A copy of decoded JSON (dicts, lists, scalars): cheaper than copy.deepcopy."""
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value


def _ci(value: Any, name: str) -> bool:
    return isinstance(value, str) and value.lower() == name.lower()


def _configuration_key_set(payload: dict[str, Any], removed: list[str]) -> None:
    """1.6 ChangeConfiguration: key AuthorizationKey (any case) -> value."""
    if _ci(payload.get("key"), "AuthorizationKey") and "value" in payload:
        payload["value"] = MARKER
        removed.append("$.value (AuthorizationKey)")


def _configuration_keys_got(payload: dict[str, Any], removed: list[str]) -> None:
    """1.6 GetConfiguration.conf: configurationKey[i] with key AuthorizationKey."""
    for i, item in enumerate(_list(payload.get("configurationKey"))):
        if isinstance(item, dict) and _ci(item.get("key"), "AuthorizationKey") and "value" in item:
            item["value"] = MARKER
            removed.append(f"$.configurationKey[{i}].value (AuthorizationKey)")


def _basic_auth_variables(
    field: str, value_key: str
) -> Callable[[dict[str, Any], list[str]], None]:
    """2.x Set/GetVariables (and their results): SecurityCtrlr.BasicAuthPassword values."""

    def rule(payload: dict[str, Any], removed: list[str]) -> None:
        for i, item in enumerate(_list(payload.get(field))):
            if not isinstance(item, dict) or value_key not in item:
                continue
            component = item.get("component") or {}
            variable = item.get("variable") or {}
            if _ci(component.get("name"), "SecurityCtrlr") and _ci(
                variable.get("name"), "BasicAuthPassword"
            ):
                item[value_key] = MARKER
                removed.append(f"$.{field}[{i}].{value_key} (BasicAuthPassword)")

    return rule


def _report_variables(payload: dict[str, Any], removed: list[str]) -> None:
    """2.x NotifyReport: a charger reporting SecurityCtrlr.BasicAuthPassword's value."""
    for i, item in enumerate(_list(payload.get("reportData"))):
        if not isinstance(item, dict):
            continue
        if not (
            _ci((item.get("component") or {}).get("name"), "SecurityCtrlr")
            and _ci((item.get("variable") or {}).get("name"), "BasicAuthPassword")
        ):
            continue
        for j, attribute in enumerate(_list(item.get("variableAttribute"))):
            if isinstance(attribute, dict) and "value" in attribute:
                attribute["value"] = MARKER
                removed.append(
                    f"$.reportData[{i}].variableAttribute[{j}].value (BasicAuthPassword)"
                )


def _network_profile(payload: dict[str, Any], removed: list[str]) -> None:
    data = payload.get("connectionData")
    if not isinstance(data, dict):
        return
    for group, name in sorted(_NETWORK_SECRETS, key=str):
        holder = data if group is None else data.get(group)
        if isinstance(holder, dict) and name in holder:
            holder[name] = MARKER
            where = f"{group}." if group else ""
            removed.append(f"$.connectionData.{where}{name} (SetNetworkProfile secret)")


_SECRET_RULES: dict[tuple[str, bool], tuple[_Rule, ...]] = {
    ("ChangeConfiguration", False): (_configuration_key_set,),
    ("GetConfiguration", True): (_configuration_keys_got,),
    ("SetVariables", False): (_basic_auth_variables("setVariableData", "attributeValue"),),
    ("GetVariables", True): (_basic_auth_variables("getVariableResult", "attributeValue"),),
    ("NotifyReport", False): (_report_variables,),
    ("SetNetworkProfile", False): (_network_profile,),
}


def _pseudonymise(
    value: Any, path: str, pseudonym: Callable[[str], str], removed: list[str]
) -> None:
    if isinstance(value, list):
        for i, item in enumerate(value):
            _pseudonymise(item, f"{path}[{i}]", pseudonym, removed)
        return
    if not isinstance(value, dict):
        return
    for key, item in value.items():
        if key in _ID_TAG_KEYS and isinstance(item, str):
            value[key] = pseudonym(item)
            removed.append(f"{path}.{key} (pseudonymised)")
        elif (
            key in _ID_TOKEN_KEYS
            and isinstance(item, dict)
            and isinstance(item.get("idToken"), str)
        ):
            item["idToken"] = pseudonym(item["idToken"])
            removed.append(f"{path}.{key}.idToken (pseudonymised)")
            _pseudonymise(item, f"{path}.{key}", pseudonym, removed)
        elif key == "additionalIdToken" and isinstance(item, str):
            value[key] = pseudonym(item)
            removed.append(f"{path}.{key} (pseudonymised)")
        else:
            _pseudonymise(item, f"{path}.{key}", pseudonym, removed)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def redacted_raw(raw: bytes, frame: list[Any], payload: Any) -> bytes:
    """The frame's bytes with its payload's changed strings replaced in place.

    ``frame`` is the decoded frame (payload last). In-place replacement keeps every
    other byte as received; when it cannot be exact (an escaped secret, a secret that
    is also the message id), the frame is re-serialised compactly instead.
    """
    # surrogatepass: raw may hold a lone surrogate of str data (see observe._raw_bytes).
    text = raw.decode("utf-8", "surrogatepass")
    return _rewritten(text, frame, [*frame[:-1], payload]).encode("utf-8", "surrogatepass")


def _rewritten(text: str, original: Any, redacted: Any) -> str:
    """JSON ``text`` decoding to ``original``, changed to decode to ``redacted``."""
    for old, new in _changed_strings(original, redacted):
        for encoded in {json.dumps(old), json.dumps(old, ensure_ascii=False)}:
            text = text.replace(encoded, json.dumps(new))
    try:
        if json.loads(text) == redacted:
            return text
    except ValueError:
        pass
    return json.dumps(redacted, ensure_ascii=False, separators=(",", ":"))


def _changed_strings(original: Any, redacted: Any) -> list[tuple[str, str]]:
    if isinstance(original, dict) and isinstance(redacted, dict):
        return [p for k in original for p in _changed_strings(original[k], redacted.get(k))]
    if isinstance(original, list) and isinstance(redacted, list):
        return [p for a, b in zip(original, redacted, strict=False) for p in _changed_strings(a, b)]
    if isinstance(original, str) and isinstance(redacted, str) and original != redacted:
        return [(original, redacted)]
    return []
