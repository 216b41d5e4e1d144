"""The direct lane (single statements straight to the driver): its connections are reused while
healthy, never after a failure, not stuck after a cancelled query, and a database that is away
is a 503 at once."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest
from backstock.storage.direct import Direct

from backstock.domain.errors import Unavailable
from backstock.settings import Settings
from backstock.storage.database import DriverQuery
from tests.support import free_port

PID = DriverQuery("SELECT pg_backend_pid()")
SLEEP = DriverQuery("SELECT pg_sleep(?)")


def test_sqlite_reads_its_rows_on_one_connection_per_thread(sqlite_url: str) -> None:
    direct = Direct(Settings(database_url=sqlite_url))

    async def scenario() -> None:
        assert await direct.one(DriverQuery("SELECT ? + 1"), 41) == (42,)
        assert await direct.all(DriverQuery("SELECT name FROM accounts")) == []
        first = direct._sqlite()
        assert direct._sqlite() is first  # pinned: no connection set-up per request
        await direct.close()
        assert direct._sqlite() is not first

    asyncio.run(scenario())


@pytest.mark.postgres
def test_postgres_connection_is_reused_while_healthy(pg_url: str) -> None:
    direct = Direct(Settings(database_url=pg_url))

    async def scenario() -> None:
        first = await direct.one(PID)
        assert await direct.one(PID) == first
        await direct.close()

    asyncio.run(scenario())


@pytest.mark.postgres
def test_postgres_connection_killed_gives_one_503_then_recovers(pg_url: str) -> None:
    direct = Direct(Settings(database_url=pg_url))

    async def scenario() -> None:
        row = await direct.one(PID)
        assert row is not None
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (row[0],))
        with pytest.raises(Unavailable):
            await direct.one(PID)
        again = await direct.one(PID)
        assert again is not None and again != row  # a fresh connection
        await direct.close()

    asyncio.run(scenario())


@pytest.mark.postgres
def test_postgres_query_cancelled_leaves_no_stuck_connection(pg_url: str) -> None:
    direct = Direct(Settings(database_url=pg_url))

    async def scenario() -> None:
        task = asyncio.create_task(direct.one(SLEEP, 5))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        started = time.monotonic()
        after = await direct.one(PID)
        # psycopg cancels the query on the server: the connection is idle again, or dropped
        assert time.monotonic() - started < 2
        assert after is not None
        await direct.close()

    asyncio.run(scenario())


def test_postgres_away_is_503_at_once() -> None:
    settings = Settings(database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere")
    direct = Direct(settings)

    async def scenario() -> None:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await direct.one(PID)
        assert time.monotonic() - started < 2

    asyncio.run(scenario())


@pytest.mark.postgres
def test_postgres_all_connections_busy_is_503_after_the_pool_timeout(pg_url: str) -> None:
    direct = Direct(Settings(database_url=pg_url, pool_size=1, pool_timeout_seconds=0.5))

    async def scenario() -> None:
        busy = asyncio.create_task(direct.one(SLEEP, 3))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await direct.one(PID)
        assert 0.4 < time.monotonic() - started < 2
        await busy
        assert await direct.one(PID) is not None  # the slot came back
        await direct.close()

    asyncio.run(scenario())
