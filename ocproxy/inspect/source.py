"""What the inspector reads from: a recording or a running proxy (same questions)."""

from __future__ import annotations

from typing import Protocol

from ocproxy.inspect.filters import Filter
from ocproxy.inspect.model import ChargerRow, Detail, FrameItem, Key


class Source(Protocol):
    live: bool
    title: str

    async def chargers(self) -> list[ChargerRow]: ...
    def charger(self, identity: str) -> ChargerRow | None: ...
    async def page(self, identity: str | None, flt: Filter, *, after: Key | None = None,
                   before: Key | None = None, last: bool = False, responses: bool = False,
                   limit: int = 100) -> list[FrameItem]: ...  # fmt: skip
    async def around(self, identity: str | None, flt: Filter, key: Key, *,
                     responses: bool = False) -> list[FrameItem]: ...  # fmt: skip
    async def find(
        self, identity: str | None, flt: Filter, text: str, start: Key | None, *,
        forward: bool = True, responses: bool = False,
    ) -> FrameItem | None: ...  # fmt: skip
    async def pair_of(self, item: FrameItem) -> FrameItem | None: ...
    async def detail(self, item: FrameItem) -> Detail: ...
