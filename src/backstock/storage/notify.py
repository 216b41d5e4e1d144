"""PostgreSQL ``LISTEN``: wakes a process's workers when any process accepts a job."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import psycopg

from backstock.storage.database import postgres_url

log = logging.getLogger("backstock.worker")

_LISTEN = "LISTEN backstock_jobs"  # the channel ``storage.jobs`` notifies


async def listen_for_jobs(
    database_url: str, on_job: Callable[[], None], stopping: asyncio.Event
) -> None:
    """Call ``on_job`` for every notification until ``stopping`` is set; reconnect on failure
    (and call ``on_job`` after each reconnect: notifications sent meanwhile were lost)."""
    url = postgres_url(database_url)
    while not stopping.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(
                url, autocommit=True, connect_timeout=5
            ) as conn:
                await conn.execute(_LISTEN)
                on_job()
                while not stopping.is_set():
                    async for _ in conn.notifies(timeout=0.25):  # also how soon stop is seen
                        on_job()
        except psycopg.Error as exc:
            log.warning("LISTEN connection lost (%s); reconnecting", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 1.0)
