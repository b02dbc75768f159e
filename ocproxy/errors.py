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


# -- the words every command uses for the same problem -----------------------------------
#
# One wording per problem, whichever command meets it, so that a technician (or a script
# grepping a log) learns it once. Each returns the message; the caller picks the class.

READING = "stop it or query a copy"
"""What to do about a locked recording one only wants to read."""
WRITING = "stop it or record to another file"
"""What to do about a locked recording one wants to write."""


def no_such_file(path: object) -> str:
    """``site.duckdb: no such file or directory`` (a recording, a SQL file, a lake)."""
    return f"{path}: no such file or directory"


def locked(path: object, hint: str = READING) -> str:
    """``site.duckdb is being written by another process; stop it or query a copy``.

    DuckDB lets one process open a file while it is being written: a running ``ocproxy
    proxy`` (or ``replay``, ``demo``, mitmdump with the addon) holds it until it stops."""
    return f"{path} is being written by another process; {hint}"


def open_failure(path: object, exc: BaseException, hint: str = READING) -> str:
    """Why a recording could not be opened: :func:`locked`, or DuckDB's first line."""
    text = first_line(exc)
    if "lock" in text.lower():
        return locked(path, hint)
    return f"cannot open recording {path}: {text}"


def unknown_identity(identity: object, where: object) -> str:
    """``no charger 'CP-9' in site.duckdb``: an --identity that matches nothing there."""
    return f"no charger {identity!r} in {where}"


def no_live_connection(identity: object) -> str:
    """``no live connection of charger 'CP-9'``: not connected to the running proxy."""
    return f"no live connection of charger {identity!r}"
