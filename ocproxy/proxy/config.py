"""Proxy settings: from the command line, a TOML file, or both (the command line wins).

A config file lets one proxy front chargers of several networks::

    listen = "0.0.0.0:9000"
    db = "site.duckdb"
    upstream = "wss://default-csms.example.net/ocpp"   # for identities no route matches

    [[route]]
    identity = "ACME-*"                                # fnmatch pattern, first match wins
    upstream = "wss://acme-csms.example.net/ocpp"
"""

from __future__ import annotations

import fnmatch
import functools
import tomllib
from dataclasses import dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ocproxy.errors import ConfigError
from ocproxy.recorder import DEFAULT_DB
from ocproxy.recorder.rotation import DEFAULT_RECORDER_MEMORY, recorder_memory

DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024


@dataclass(frozen=True)
class Route:
    identity: str  # fnmatch pattern, case-sensitive like identities
    upstream: str
    # The proxy's own client certificate towards this route's CSMS (profile 3).
    client_cert: str | None = None
    client_key: str | None = None


@dataclass(frozen=True)
class MirrorRoute:
    """Chargers matching ``identity`` are mirrored to a secondary CSMS at ``upstream``."""

    identity: str
    upstream: str
    # The secondary's own CALLs with these actions reach the charger; others are refused.
    allow_actions: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProxyConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = 9000
    upstream: str | None = None
    routes: tuple[Route, ...] = ()
    mirrors: tuple[MirrorRoute, ...] = ()
    db: str = DEFAULT_DB
    connect_timeout: float = 10.0
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    close_timeout: float = 10.0
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    queue_limit: int = 10_000
    # How often the recorder commits what it has (seconds): what a kill -9 can lose.
    flush_interval: float = 0.25
    # Connections the kernel queues before the proxy accepts them (capped by
    # net.core.somaxconn): a fleet reconnecting at once after an outage must not be refused.
    backlog: int = 4096
    # At most this many CSMS legs being opened at once (0: no bound); chargers beyond it
    # wait their turn in the queue, they are not refused.
    max_pending_dials: int = 0
    # On SIGTERM, close live connections spread evenly over this many seconds (1001,
    # "proxy restarting") instead of all at once: a restart is not a reconnect storm.
    drain: float = 0.0
    # SO_REUSEPORT: a second proxy may listen on the same address while this one drains.
    reuse_port: bool = False
    # A new recording file every hour, day or so many bytes (see recorder/rotation.py).
    rotate: str | None = None
    # DuckDB's memory_limit in the recorder: what it may cache of the recording.
    recorder_memory: str = DEFAULT_RECORDER_MEMORY
    quiet: bool = False
    audit: bool = True
    response_timeout: float = 30.0
    keep_ids: bool = False
    # Key for pseudonymising driver ids; else $OCPROXY_ID_KEY, else a per-user key file.
    id_key: str | None = None
    # TLS towards chargers (profiles 2 and 3).
    tls_cert: tuple[str, ...] = ()
    tls_key: tuple[str, ...] = ()
    client_ca: str | None = None
    strict_client_cert: bool = False
    # TLS towards the CSMS.
    upstream_ca: str | None = None
    insecure_upstream: bool = False
    upstream_client_cert: str | None = None
    upstream_client_key: str | None = None
    forward_client_cert: bool = False
    # Control endpoint (ocproxy tail / inject / query --live): off unless set; loopback
    # unless a host is given.
    control: str | None = None
    control_token: str | None = None

    def upstream_for(self, identity: str) -> str | None:
        """The upstream base URL for a charger identity: first matching route, else default."""
        for route in self.routes:
            if fnmatch.fnmatchcase(identity, route.identity):
                return route.upstream
        return self.upstream

    def mirror_for(self, identity: str) -> MirrorRoute | None:
        for mirror in self.mirrors:
            if fnmatch.fnmatchcase(identity, mirror.identity):
                return mirror
        return None

    def client_cert_for(self, identity: str) -> tuple[str | None, str | None]:
        """The proxy's client certificate and key towards this identity's CSMS."""
        for route in self.routes:
            if fnmatch.fnmatchcase(identity, route.identity) and route.client_cert:
                return route.client_cert, route.client_key
        return self.upstream_client_cert, self.upstream_client_key

    def validate(self) -> ProxyConfig:
        if self.upstream is None and not self.routes:
            raise ConfigError("no upstream: give --upstream URL or routes in --config")
        for url in [self.upstream, *(r.upstream for r in self.routes)]:
            if url is not None:
                check_ws_url(url)
        for mirror in self.mirrors:
            check_mirror(mirror)
        positive = (
            "connect_timeout",
            "close_timeout",
            "max_message_size",
            "queue_limit",
            "backlog",
            "flush_interval",
        )
        for name in (*positive, "response_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.replace('_', '-')} must be positive")
        if len(self.tls_cert) != len(self.tls_key):
            raise ConfigError("give one --tls-key for each --tls-cert, in the same order")
        if self.client_ca and not self.tls_cert:
            raise ConfigError("--client-ca needs --tls-cert/--tls-key (mutual TLS is TLS)")
        for flag in ("strict_client_cert", "forward_client_cert"):
            if getattr(self, flag) and not self.client_ca:
                option = "--" + flag.replace("_", "-")
                raise ConfigError(f"{option} needs --client-ca (charger certificates to check)")
        if self.rotate is not None:
            from ocproxy.recorder.rotation import Rotation

            Rotation.parse(self.rotate)
        recorder_memory(str(self.recorder_memory))  # TOML may give a number of bytes
        if self.drain < 0:
            raise ConfigError("drain must be 0 or more seconds")
        if self.max_pending_dials < 0:
            raise ConfigError("max-pending-dials must be 0 (no bound) or positive")
        if self.control is not None:
            parse_control(self.control)
        if not 0 <= self.listen_port <= 65535:
            raise ConfigError(f"listen port {self.listen_port} is out of range")
        return self


def check_ws_url(url: str, what: str = "upstream") -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConfigError(f"{what} {url!r} is not a ws:// or wss:// URL")
    return url


def check_mirror(mirror: MirrorRoute) -> None:
    """A ws(s) URL, and allow_actions that OCPP defines: a misspelt action would
    silently refuse what it was meant to let through."""
    where = "mirror" if mirror.identity == "*" else f"[[mirror]] {mirror.identity!r}"
    check_ws_url(mirror.upstream, f"{where} upstream")
    known = ocpp_actions()
    for action in mirror.allow_actions:
        if not any(action in names for names in known.values()):
            raise ConfigError(
                f"{where}: allow_actions entry {action!r} is not an action of OCPP "
                f"{', '.join(known)}"
            )


@functools.cache
def ocpp_actions() -> dict[str, frozenset[str]]:
    """The actions each OCPP version defines: one request schema each in the installed
    ``ocpp`` package (read here, not through the audit, which the relay does not load)."""
    found = {}
    for version, folder in (("1.6", "v16"), ("2.0.1", "v201"), ("2.1", "v21")):
        schemas = resources.files("ocpp") / folder / "schemas"
        found[version] = frozenset(
            e.name.removesuffix(".json").removesuffix("Request")
            for e in schemas.iterdir()
            if e.name.endswith(".json") and not e.name.endswith("Response.json")
        )
    return found


def parse_control(value: str) -> tuple[str, int]:
    """``HOST:PORT``, or ``:PORT`` / ``PORT`` for loopback (the control endpoint's default)."""
    if value.isdigit():
        value = f":{value}"
    host, port = parse_listen(value)
    return ("127.0.0.1" if value.startswith(":") else host), port


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``:PORT`` (all interfaces)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--listen {value!r} is not HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    number = int(port)
    if number > 65535:
        raise ConfigError(f"--listen port {number} is out of range")
    return host, number


_FILE_KEYS = {
    "listen",
    "upstream",
    "route",
    "mirror",
    "db",
    "connect_timeout",
    "ping_interval",
    "ping_timeout",
    "close_timeout",
    "max_message_size",
    "queue_limit",
    "flush_interval",
    "backlog",
    "max_pending_dials",
    "drain",
    "reuse_port",
    "rotate",
    "recorder_memory",
    "quiet",
    "audit",
    "response_timeout",
    "keep_ids",
    "id_key",
    "tls_cert",
    "tls_key",
    "client_ca",
    "strict_client_cert",
    "upstream_ca",
    "insecure_upstream",
    "upstream_client_cert",
    "upstream_client_key",
    "forward_client_cert",
    "control",
    "control_token",
}
_ROUTE_KEYS = {"identity", "upstream", "client_cert", "client_key"}


def load_config(path: str | Path) -> ProxyConfig:
    """Read a TOML config file; any problem is a ConfigError naming the file."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - _FILE_KEYS)
    if unknown:
        raise ConfigError(f"config {path}: unknown key(s) {', '.join(unknown)}")
    return _from_mapping(data, str(path))


def _from_mapping(data: dict[str, Any], origin: str) -> ProxyConfig:
    config = ProxyConfig()
    values: dict[str, Any] = {}
    if "listen" in data:
        values["listen_host"], values["listen_port"] = parse_listen(str(data["listen"]))
    routes = data.get("route", [])
    if not isinstance(routes, list) or not all(
        isinstance(r, dict) and {"identity", "upstream"} <= set(r) <= _ROUTE_KEYS for r in routes
    ):
        raise ConfigError(
            f"config {origin}: each [[route]] needs identity and upstream "
            "(and may have client_cert, client_key)"
        )
    values["routes"] = tuple(
        Route(str(r["identity"]), str(r["upstream"]), r.get("client_cert"), r.get("client_key"))
        for r in routes
    )
    values["mirrors"] = _mirrors(data.pop("mirror", []), origin)
    for key in ("tls_cert", "tls_key"):
        if key in data:
            value = data.pop(key)
            values[key] = tuple(value) if isinstance(value, list) else (str(value),)
    known = {f.name: f for f in fields(ProxyConfig)}
    for key, value in data.items():
        if key in known and key not in ("routes",):
            values[key] = _typed(key, value, type(getattr(config, key)), origin)
    return replace(config, **values)


def _mirrors(entries: Any, origin: str) -> tuple[MirrorRoute, ...]:
    if isinstance(entries, str):  # mirror = "ws://...", as --mirror: every charger
        return (MirrorRoute("*", entries),)
    keys = {"identity", "upstream", "allow_actions"}
    if not isinstance(entries, list) or not all(
        isinstance(m, dict) and {"identity", "upstream"} <= set(m) <= keys for m in entries
    ):
        raise ConfigError(
            f"config {origin}: each [[mirror]] needs identity and upstream "
            "(and may have allow_actions)"
        )
    for m in entries:
        allowed = m.get("allow_actions", [])
        if not isinstance(allowed, list) or not all(isinstance(a, str) for a in allowed):
            raise ConfigError(
                f"config {origin}: [[mirror]] {str(m['identity'])!r}: allow_actions must be a "
                'list of action names, e.g. ["TriggerMessage"]'
            )
    return tuple(
        MirrorRoute(str(m["identity"]), str(m["upstream"]), tuple(m.get("allow_actions", ())))
        for m in entries
    )


def _typed(key: str, value: Any, kind: type, origin: str) -> Any:
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"config {origin}: {key} must be true or false")
    if kind in (int, float) and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ConfigError(f"config {origin}: {key} must be a number")
    return value
