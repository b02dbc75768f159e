"""Keeping secrets and driver identities out of the recording (never out of forwarding).

Pure: a parsed payload and its action in, a redacted copy and a list of what was
removed out. Secrets become :data:`MARKER`; driver identifiers (idTag, idToken) become
a keyed hash of their upper-cased value, so one driver can be followed across
sessions without being identified. A response is only recognisable as carrying a
secret through its CALL's action, which correlation supplies.

2.1 ``-Signed`` actions carry a JWS; redacting inside it would break the signature the
recording is evidence of, so those frames are left alone.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MARKER = "[redacted]"
_MIN_PSEUDONYM = 8

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
        # Every pseudonymised key contains one of these; an escaped key has a backslash.
        return b"dTag" in raw or b"dToken" in raw or b"\\" in raw

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
        digest = hmac.new(self.id_key, token.upper().encode(), hashlib.sha256).hexdigest()
        # As long as the original (at least 8): length limits found on the real token
        # are found on its pseudonym too.
        length = max(len(token), _MIN_PSEUDONYM)
        return (digest * (length // len(digest) + 1))[:length].upper()


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


_SECRET_RULES: dict[tuple[str, bool], tuple[Callable[[dict[str, Any], list[str]], None], ...]] = {
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
    expected = [*frame[:-1], payload]
    text = raw.decode("utf-8")
    for old, new in _changed_strings(frame[-1], payload):
        for encoded in {json.dumps(old), json.dumps(old, ensure_ascii=False)}:
            text = text.replace(encoded, json.dumps(new))
    try:
        if json.loads(text) == expected:
            return text.encode("utf-8")
    except ValueError:
        pass
    return json.dumps(expected, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _changed_strings(original: Any, redacted: Any) -> list[tuple[str, str]]:
    if isinstance(original, dict) and isinstance(redacted, dict):
        return [p for k in original for p in _changed_strings(original[k], redacted.get(k))]
    if isinstance(original, list) and isinstance(redacted, list):
        return [p for a, b in zip(original, redacted, strict=False) for p in _changed_strings(a, b)]
    if isinstance(original, str) and isinstance(redacted, str) and original != redacted:
        return [(original, redacted)]
    return []
