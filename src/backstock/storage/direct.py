"""Single statements straight to the database driver, for the hottest requests (poll a job,
accept a job on PostgreSQL): no SQLAlchemy connection, no pool checkout, no thread hop.

Each statement runs on its own, in autocommit mode, so it is its own transaction: all these
paths need, since each does its work in one statement.

SQLite: one connection per thread (requests run on the event loop's thread), opened with the
same busy timeout as the engine's. The statement runs inline: it takes microseconds.
PostgreSQL: psycopg's asyncio connections on the event loop, kept in a small pool. A connection
that fails is closed, never reused; when none can be opened the caller gets ``Unavailable``
at once (no waiting for a pool to heal), as the engine's connections do, and when all are busy
for longer than the pool timeout, ``Unavailable`` too.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from sqlalchemy.engine import make_url

from backstock.domain.errors import Unavailable
from backstock.settings import Settings
from backstock.storage.database import (
    BUSY_TIMEOUT_MS,
    Database,
    DriverQuery,
    sqlalchemy_url,
    translate_errors,
)

Row = tuple[Any, ...]


class Direct:
    def __init__(self, settings: Settings) -> None:
        self.is_sqlite = settings.is_sqlite
        self._sqlite_path = make_url(settings.database_url).database if self.is_sqlite else None
        self._local = threading.local()
        self._sqlite_conns: list[sqlite3.Connection] = []
        self._sqlite_lock = threading.Lock()
        self._pg_url = (
            ""
            if self.is_sqlite
            else make_url(sqlalchemy_url(settings.database_url))
            .set(drivername="postgresql")
            .render_as_string(hide_password=False)
        )
        self._idle: list[psycopg.AsyncConnection[Row]] = []
        self._size = settings.pool_size
        self._slots: asyncio.Semaphore | None = None
        self._connect_timeout = max(1, round(settings.pool_timeout_seconds))
        self._wait_timeout = settings.pool_timeout_seconds

    async def one(self, query: DriverQuery, *params: Any) -> Row | None:
        if self.is_sqlite:
            with translate_errors():
                row: Row | None = self._sqlite().execute(query.qmark, params).fetchone()
                return row
        async with self._postgres() as conn:
            cursor = await conn.execute(query.format, params)
            return await cursor.fetchone()

    async def all(self, query: DriverQuery, *params: Any) -> Sequence[Row]:
        if self.is_sqlite:
            with translate_errors():
                rows: list[Row] = self._sqlite().execute(query.qmark, params).fetchall()
                return rows
        async with self._postgres() as conn:
            cursor = await conn.execute(query.format, params)
            return await cursor.fetchall()

    def _sqlite(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.reopens != Database.sqlite_reopens:
            # opened while the file was read-only: it must close for writes to succeed again
            with self._sqlite_lock:
                if conn in self._sqlite_conns:
                    self._sqlite_conns.remove(conn)
            conn.close()
            conn = None
        if conn is None:
            assert self._sqlite_path is not None
            # Used by this thread only; ``close`` may close it from another.
            self._local.reopens = Database.sqlite_reopens
            conn = sqlite3.connect(self._sqlite_path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._local.conn = conn
            with self._sqlite_lock:
                self._sqlite_conns.append(conn)
        return conn

    @asynccontextmanager
    async def _postgres(self) -> AsyncIterator[psycopg.AsyncConnection[Row]]:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._size)
        slots = self._slots
        try:
            async with asyncio.timeout(self._wait_timeout):
                await slots.acquire()
        except TimeoutError:
            # every connection busy that long (a database that stopped answering): as the
            # engine's pool does, give up rather than queue without end
            raise Unavailable("The database is busy; retry later.", retry_after=1) from None
        try:
            with translate_errors():
                conn = self._idle.pop() if self._idle else await self._connect()
                try:
                    yield conn
                finally:
                    # Reused only when idle: not after a failure, nor when cancelled mid-query.
                    idle = conn.info.transaction_status == TransactionStatus.IDLE
                    if idle and not conn.broken:
                        self._idle.append(conn)
                    else:
                        await conn.close()
        finally:
            slots.release()

    async def _connect(self) -> psycopg.AsyncConnection[Row]:
        return await psycopg.AsyncConnection.connect(
            self._pg_url, autocommit=True, connect_timeout=self._connect_timeout
        )

    async def close(self) -> None:
        """Close every connection; called on the event loop that used them, at shutdown. The
        next use (an app served again, as tests do) starts afresh."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()
        self._slots = None
        with self._sqlite_lock:
            conns, self._sqlite_conns = self._sqlite_conns, []
        for sqlite_conn in conns:
            sqlite_conn.close()
        self._local = threading.local()
