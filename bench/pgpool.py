"""The PostgreSQL side the spawn and get floors share: a fixed set of psycopg asyncio
connections in autocommit, each request taking one for the length of its statements."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg

Connection = psycopg.AsyncConnection[tuple[Any, ...]]


class FloorPool:
    def __init__(self, url: str) -> None:
        self.url = url
        self.size = int(os.environ.get("BENCH_FLOOR_CONNECTIONS", "8"))
        self._idle: asyncio.Queue[Connection] = asyncio.Queue()

    async def open(self) -> None:
        for _ in range(self.size):
            self._idle.put_nowait(await psycopg.AsyncConnection.connect(self.url, autocommit=True))

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        conn = await self._idle.get()
        try:
            yield conn
        finally:
            self._idle.put_nowait(conn)

    async def close(self) -> None:
        while not self._idle.empty():
            await self._idle.get_nowait().close()
