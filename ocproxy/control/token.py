"""The control token: made at start-up, kept in a file only its user can read.

``$XDG_CONFIG_HOME/ocproxy/control-PORT.token`` (mode 0600), so a client given the
control port finds it; ``control_token`` in --config or ``$OCPROXY_CONTROL_TOKEN``
sets one instead (for a client on another account, or a fixed token in a lab).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from ocproxy.errors import ConfigError, ControlError
from ocproxy.idkey import key_file

ENV_VAR = "OCPROXY_CONTROL_TOKEN"


def token_path(port: int) -> Path:
    return key_file().parent / f"control-{port}.token"


def new_token(configured: str | None) -> str:
    """The token the endpoint will accept: configured, from the environment, or random."""
    return configured or os.environ.get(ENV_VAR) or secrets.token_urlsafe(32)


def publish_token(port: int, token: str) -> Path:
    """Write the token where clients of the endpoint on ``port`` look for it (0600)."""
    path = token_path(port)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(token + "\n")
    except OSError as exc:
        raise ConfigError(f"cannot write the control token to {path}: {exc.strerror}") from exc
    return path


def withdraw_token(port: int) -> None:
    """Remove the token file when the endpoint stops: a stale token names no proxy."""
    with contextlib.suppress(OSError):
        token_path(port).unlink(missing_ok=True)


def read_token(port: int, explicit: str | None = None) -> str:
    """What a client sends: --token, else $OCPROXY_CONTROL_TOKEN, else the token file."""
    if explicit:
        return explicit
    from_env = os.environ.get(ENV_VAR)
    if from_env:
        return from_env
    path = token_path(port)
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ControlError(
            f"no control token: {path} is not readable ({exc.strerror}); is a proxy running "
            f"with --control on port {port}? (or give --token / ${ENV_VAR})"
        ) from exc
