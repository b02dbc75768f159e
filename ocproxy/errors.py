"""The exception tree of ocproxy.

Library errors (duckdb, websockets, tomllib, OSError) are translated at the boundary
with ``raise ... from`` so that callers only ever need to catch these::

    OcproxyError
    ├── ConfigError        bad command line value or config file    (CLI exit code 2)
    ├── RecorderError      the recording cannot be opened or written (CLI exit code 1)
    ├── ProxyError         the proxy cannot start (e.g. port in use) (CLI exit code 1)
    └── ControlError       a control-endpoint request failed          (CLI exit code 1)
        └── InjectError    an injected CALL cannot be sent

Peer data never raises: a malformed frame is a value (``core.frames.Malformed``).
"""


class OcproxyError(Exception):
    """Base of every error ocproxy raises on purpose."""

    exit_code = 1


class ConfigError(OcproxyError):
    """A command-line option or config file is invalid."""

    exit_code = 2


class RecorderError(OcproxyError):
    """The DuckDB recording cannot be opened, migrated or written."""


class ProxyError(OcproxyError):
    """The proxy cannot start or run (listen address in use, ...)."""


class ControlError(OcproxyError):
    """A request to a running proxy's control endpoint failed (or was refused)."""


class InjectError(ControlError):
    """An injected CALL cannot be sent (connection closed, one already outstanding)."""


def first_line(exc: BaseException) -> str:
    """A library error's first line: DuckDB's messages go on with hints and stack lines."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def open_failure(path: object, exc: BaseException) -> str:
    """Why a recording could not be opened, in the words every command uses."""
    text = first_line(exc)
    if "lock" in text.lower():
        return f"{path} is being written by another process; stop it or query a copy"
    return f"cannot open {path}: {text}"
