"""The spawn floor: a raw ASGI app (no framework) that does only what accepting a bulk job
cannot avoid. It reads the body, parses it with orjson, commits it as one row in one
transaction and answers 202 with a small JSON document.

SQLite: one connection with Backstock's pragmas (WAL, synchronous=FULL, busy_timeout), the
insert run on one writer thread so that the event loop reads the next bodies meanwhile.
PostgreSQL: psycopg's asyncio connections, one per client connection, in autocommit: a single
INSERT is one transaction and one round trip.

Configured by environment: ``BENCH_FLOOR_DB`` (``sqlite:///path`` or ``postgresql://…``),
``BENCH_FLOOR_CONNECTIONS`` (PostgreSQL connections), ``BENCH_FLOOR_SQLITE_WRITES``
(``thread``, the default, or ``inline``: on the event loop).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import orjson

from backstock.storage.database import CACHE_KIB
from bench.pgpool import FloorPool
from bench.rawasgi import App, Receive, Scope, Send, lifespan, read_body, respond

TABLE = "floor_jobs"
SQLITE_DDL = f"CREATE TABLE IF NOT EXISTS {TABLE} (id TEXT PRIMARY KEY, payload BLOB NOT NULL, total INTEGER NOT NULL, created_at INTEGER NOT NULL)"  # noqa: E501
PG_DDL = f"CREATE TABLE IF NOT EXISTS {TABLE} (id TEXT PRIMARY KEY, payload BYTEA NOT NULL, total INTEGER NOT NULL, created_at BIGINT NOT NULL)"  # noqa: E501
_BAD = b'{"errors":[{"status":400,"code":"invalid","title":"Invalid body"}]}'


def new_id() -> str:
    """Time-ordered, unique enough: 48 bits of microseconds' hex and 40 random bits."""
    return f"{time.time_ns() // 1000:014x}{os.urandom(5).hex()}"


def sqlite_connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")  # as Backstock's connections
    return conn


def create() -> App:
    url = os.environ["BENCH_FLOOR_DB"]
    sqlite = url.startswith("sqlite")

    if sqlite:
        conn = sqlite_connect(url.removeprefix("sqlite:///"))
        conn.execute(SQLITE_DDL)
        writer = ThreadPoolExecutor(1)
        inline = os.environ.get("BENCH_FLOOR_SQLITE_WRITES", "thread") == "inline"
        insert = f"INSERT INTO {TABLE} (id, payload, total, created_at) VALUES (?, ?, ?, ?)"

        def commit(row: tuple[str, bytes, int, int]) -> None:
            conn.execute(insert, row)  # autocommit: one statement, one transaction

        async def store(row: tuple[str, bytes, int, int]) -> None:
            if inline:
                commit(row)
            else:
                await asyncio.get_running_loop().run_in_executor(writer, commit, row)

        async def startup() -> None:
            return None

        async def shutdown() -> None:
            writer.shutdown()
            conn.close()

    else:
        pool = FloorPool(url)
        pg_insert = f"INSERT INTO {TABLE} (id, payload, total, created_at) VALUES (%s, %s, %s, %s)"

        async def startup() -> None:
            await pool.open()
            async with pool.connection() as conn:
                await conn.execute(PG_DDL)

        async def store(row: tuple[str, bytes, int, int]) -> None:
            async with pool.connection() as conn:
                await conn.execute(pg_insert, row)

        shutdown = pool.close

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send, startup, shutdown)
            return
        if scope["method"] != "POST":
            await respond(send, 200, b'{"status":"ok"}')
            return
        body = await read_body(receive)
        try:
            variants = orjson.loads(body)["data"]["attributes"]["variants"]
            total = len(variants["data"] if isinstance(variants, dict) else variants)
        except (orjson.JSONDecodeError, KeyError, TypeError):
            await respond(send, 400, _BAD)
            return
        job_id = new_id()
        now = time.time_ns() // 1000
        await store((job_id, body, total, now))
        document = {
            "data": {
                "type": "catalog-variant-bulk-update-job",
                "id": job_id,
                "attributes": {"status": "queued", "total_count": total, "created_at": now},
            }
        }
        await respond(send, 202, orjson.dumps(document))

    return app
