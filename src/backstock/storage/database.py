"""The engine and its transactions: the one place that knows which database is underneath.

SQLite: WAL, ``BEGIN IMMEDIATE`` for every write transaction (so a writer takes the lock at the
start instead of failing at commit), and a process-wide lock in front of it so that threads of
one process queue in Python rather than in SQLite's sleeping busy handler.
PostgreSQL: psycopg 3, READ COMMITTED, a pool sized by configuration.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import psycopg
from sqlalchemy import Connection, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from backstock.domain.errors import Unavailable
from backstock.settings import Settings

__all__ = ["Connection", "Database", "DriverQuery", "sqlalchemy_url"]


def sqlalchemy_url(url: str) -> str:
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


class Database:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.is_sqlite = settings.is_sqlite
        self._write_lock = threading.Lock() if self.is_sqlite else None
        self._reading = threading.local()
        self.engine = self._create_engine(settings)

    @staticmethod
    def _create_engine(settings: Settings) -> Engine:
        url = sqlalchemy_url(settings.database_url)
        pool: dict[str, Any] = {
            "pool_size": settings.pool_size,
            "max_overflow": settings.pool_max_overflow,
            "pool_timeout": settings.pool_timeout_seconds,
            "pool_pre_ping": False,
        }
        if settings.is_sqlite:
            engine = create_engine(url, connect_args={"check_same_thread": False}, **pool)
            _configure_sqlite(engine, settings.sqlite_synchronous)
        else:
            engine = create_engine(url, pool_recycle=1800, **pool)
        return engine

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads; on SQLite a deferred transaction (a consistent snapshot).

        Re-entrant per thread: a read inside a read shares the outer one's connection, so a
        request that authenticates and then reads does one checkout and one transaction."""
        current: Connection | None = getattr(self._reading, "conn", None)
        if current is not None:
            yield current
            return
        with _translate_errors(), self.engine.connect() as conn:
            self._reading.conn = conn
            try:
                yield conn
            finally:
                self._reading.conn = None

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction, committed when the block ends without an exception."""
        with _translate_errors():
            if self._write_lock is None:
                with self.engine.begin() as conn:
                    yield conn
                return
            with self._write_lock, self.engine.connect() as conn:
                conn.info["immediate"] = True
                try:
                    with conn.begin():
                        yield conn
                finally:
                    conn.info["immediate"] = False

    def dispose(self) -> None:
        self.engine.dispose()


class DriverQuery:
    """A read handed straight to the database driver, for the few statements on the hottest
    paths: SQLAlchemy's execution machinery costs several times what SQLite takes to answer
    them. Written with ``?`` placeholders; PostgreSQL gets ``%s``. Each runs on its own (no
    transaction is begun for it), which is all a single-statement read needs."""

    def __init__(self, sql: str) -> None:
        self.qmark = sql
        self.format = sql.replace("?", "%s")

    def fetch_one(self, conn: Connection, *params: Any) -> tuple[Any, ...] | None:
        driver: Any = conn.connection.driver_connection
        if conn.dialect.name == "sqlite":
            row = driver.execute(self.qmark, params).fetchone()
        else:
            with driver.cursor() as cursor:
                cursor.execute(self.format, params)
                row = cursor.fetchone()
        return None if row is None else tuple(row)


def _configure_sqlite(engine: Engine, synchronous: str) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite would defer it).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # The busy timeout first: with it, the statements below wait out another writer.
        cursor.execute("PRAGMA busy_timeout=10000")
        # WAL is a property of the file, set once; switching needs an exclusive lock, which a
        # new connection must not ask for while others are writing.
        if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # Straight to the driver: SQLAlchemy's statement path costs more than the BEGIN.
        driver = conn.connection.driver_connection
        assert driver is not None
        driver.execute("BEGIN IMMEDIATE" if conn.info.get("immediate") else "BEGIN")


class _translate_errors:  # noqa: N801 - used as a context manager like contextlib's
    """Connection failures become ``Unavailable`` (503) above the storage layer."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, _tb: Any) -> Literal[False]:
        if isinstance(exc, PoolTimeout):
            raise Unavailable("The database is busy; retry later.", retry_after=1) from exc
        if isinstance(exc, OperationalError | DBAPIError) and _is_disconnect(exc):
            raise Unavailable("The database is unavailable; retry later.", retry_after=1) from exc
        if isinstance(exc, sqlite3.OperationalError | psycopg.OperationalError) and _is_gone(exc):
            # from a DriverQuery, which bypasses SQLAlchemy's own wrapping
            raise Unavailable("The database is unavailable; retry later.", retry_after=1) from exc
        return False


def _is_disconnect(exc: DBAPIError) -> bool:
    return exc.connection_invalidated or _is_gone(exc.orig)


def _is_gone(exc: BaseException | None) -> bool:
    """A failure that retrying later can cure: the database away, locked, full, or (PostgreSQL)
    this transaction chosen as a deadlock victim. Such requests get 503 with Retry-After."""
    text = str(exc).lower()
    markers = (
        "connection",
        "server closed",
        "terminating",
        "database is locked",
        "readonly",
        "disk",
        "unable to open",
        "starting up",
        "shutting down",
        "deadlock detected",
        "could not serialize",
    )
    return any(marker in text for marker in markers)
