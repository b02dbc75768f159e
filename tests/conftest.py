"""Shared fixtures: a real recorder on a real DuckDB file, a real proxy on loopback.

Nothing of ocproxy's own is mocked: tests start the proxy exactly as the CLI does
(``ProxyServer`` + ``Recorder``) and read back the DuckDB file after closing it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import duckdb
import pytest

from ocproxy.app import loop_factory
from ocproxy.proxy.config import ProxyConfig
from ocproxy.proxy.server import ProxyServer
from ocproxy.recorder import Recorder, RecorderStats


@dataclass
class RunningProxy:
    server: ProxyServer
    recorder: Recorder
    db_path: Path

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}"


@dataclass
class Recording:
    """A closed recording, queried read-only."""

    path: Path
    stats: RecorderStats

    def rows(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        with duckdb.connect(str(self.path), read_only=True) as db:
            cursor = db.execute(sql, params or [])
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def frames(self, connection_id: str | None = None) -> list[dict[str, Any]]:
        where = "" if connection_id is None else "WHERE connection_id = ?"
        return self.rows(
            f"SELECT * FROM frames {where} ORDER BY connection_id, seq",
            [] if connection_id is None else [connection_id],
        )

    def connections(self) -> list[dict[str, Any]]:
        return self.rows("SELECT * FROM connections ORDER BY opened_at")


ProxyFactory = Callable[..., Any]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "recording.duckdb"


@pytest.fixture
def proxy_factory(db_path: Path) -> Callable[..., Any]:
    """``async with proxy_factory(upstream=URL, **config) as (proxy, recording_box): ...``

    After the block, ``recording_box[0]`` is the closed :class:`Recording`.
    """

    @asynccontextmanager
    async def start(
        recorder_options: dict[str, Any] | None = None, **overrides: Any
    ) -> AsyncIterator[tuple[RunningProxy, list[Recording]]]:
        config = replace(
            ProxyConfig(listen_host="127.0.0.1", listen_port=0, db=str(db_path), quiet=True),
            **overrides,
        )
        recorder = Recorder(db_path, flush_interval=0.05, **(recorder_options or {})).start()
        box: list[Recording] = []
        server = await ProxyServer(config, recorder).start()
        try:
            yield RunningProxy(server, recorder, db_path), box
        finally:
            await server.stop()
            stats = recorder.close()
            box.append(Recording(db_path, stats))

    return start


@pytest.fixture(autouse=True)
def _isolated_config_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: Any) -> None:
    """The per-user id key file goes to a temporary config home, never the real one."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config-home")))
    monkeypatch.delenv("OCPROXY_ID_KEY", raising=False)


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every async test runs on both loops ocproxy runs on: ``ocproxy proxy`` picks uvloop
    where it is installed (``loop_factory``), the other commands the standard loop."""
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "asyncio": asyncio.new_event_loop
    }
    uvloop = loop_factory()
    if uvloop is not None:
        factories["uvloop"] = uvloop
    return factories
