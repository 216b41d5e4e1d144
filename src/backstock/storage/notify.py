"""PostgreSQL ``LISTEN``: wakes a process's workers when any process accepts a job, and tells
its API of each job's progress (its event streams)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import psycopg

from backstock.storage.database import postgres_url

log = logging.getLogger("backstock.worker")


async def listen(
    database_url: str, channel: str, on_notify: Callable[[str], None], stopping: asyncio.Event
) -> None:
    """Call ``on_notify`` with each notification's payload until ``stopping`` is set;
    reconnect on failure (and call ``on_notify("")`` after each connect: notifications sent
    meanwhile were lost)."""
    url = postgres_url(database_url)
    while not stopping.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(
                url, autocommit=True, connect_timeout=5
            ) as conn:
                await conn.execute(f"LISTEN {channel}")
                on_notify("")
                while not stopping.is_set():
                    async for notice in conn.notifies(timeout=0.25):  # also how soon stop is seen
                        on_notify(notice.payload)
        except psycopg.Error as exc:
            log.warning("LISTEN %s: connection lost (%s); reconnecting", channel, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 1.0)
