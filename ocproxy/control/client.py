"""A client of a running proxy's control endpoint (used by tail, inject, query --live)."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ocproxy.control.token import read_token
from ocproxy.errors import ControlError


class RequestRefused(ControlError):
    """The endpoint was reached and answered the request with an error (``"ok": false``).

    Not reaching it, a wrong token or the endpoint going away are plain ``ControlError``s:
    a command can tell "the proxy said no to what you asked" (often a bad argument, such
    as bad SQL) from "the proxy is not there".
    """

    def __init__(self, op: str, reason: str) -> None:
        super().__init__(reason)
        self.op = op
        self.reason = reason


class ControlClient:
    """``async with ControlClient(host, port) as control: await control.request(...)``"""

    def __init__(self, host: str, port: int, token: str | None = None) -> None:
        self.host = host
        self.port = port
        self.token = read_token(port, token)
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[str, asyncio.Future[Any]]] = {}
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._connection: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ControlClient:
        url = f"ws://{self.host}:{self.port}/control"
        try:
            self._connection = await connect(
                url, additional_headers={"Authorization": f"Bearer {self.token}"}, proxy=None
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise ControlError(
                f"the control endpoint at {url} refused us (HTTP {status}): wrong token?"
            ) from exc
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            raise ControlError(f"no control endpoint at {url}: {exc}") from exc
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._connection is not None:
            await self._connection.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)

    async def request(self, op: str, **params: Any) -> Any:
        """Send one request and return its result; a refusal raises RequestRefused."""
        assert self._connection is not None, "use async with"
        request_id = next(self._ids)
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = (op, answer)
        await self._connection.send(json.dumps({"id": request_id, "op": op, **params}))
        return await answer

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Pushed events (after ``subscribe``), until the endpoint closes."""
        while (event := await self._events.get()) is not None:
            yield event

    async def _read(self) -> None:
        assert self._connection is not None
        try:
            async for message in self._connection:
                self._route(json.loads(message))
        except ConnectionClosed:
            pass
        finally:
            self._events.put_nowait(None)
            for _op, answer in self._waiting.values():
                if not answer.done():
                    answer.set_exception(ControlError("the control endpoint closed"))

    def _route(self, message: dict[str, Any]) -> None:
        if "event" in message:
            self._events.put_nowait(message)
            return
        waiting = self._waiting.pop(message.get("id"), None)  # type: ignore[arg-type]
        if waiting is None or waiting[1].done():
            return
        op, answer = waiting
        if message.get("ok"):
            answer.set_result(message.get("result"))
        else:
            answer.set_exception(RequestRefused(op, str(message.get("error"))))
