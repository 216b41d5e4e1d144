"""The engine and its transactions: the one place that knows which database is underneath.

SQLite: WAL, ``BEGIN IMMEDIATE`` for every write transaction (so a writer takes the lock at the
start instead of failing at commit), and a process-wide lock in front of it so that threads of
one process queue in Python rather than in SQLite's sleeping busy handler.
PostgreSQL: psycopg 3, READ COMMITTED, a pool sized by configuration.

Failures that waiting can cure (the database away, locked, full, read-only, failing I/O)
become ``Unavailable``: a 503 with ``Retry-After`` for requests, a retry for the worker.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Literal

import psycopg
from sqlalchemy import Connection, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import ConnectionPoolEntry

from backstock.domain.errors import Unavailable
from backstock.settings import Settings

__all__ = [
    "BUSY_TIMEOUT_MS",
    "Connection",
    "Database",
    "DriverQuery",
    "sqlalchemy_url",
    "translate_errors",
]

BUSY_TIMEOUT_MS = 10_000
"""How long a SQLite write waits for another process's write lock before it fails with 503.
Threads of one process wait for each other on the process's write lock, no longer than this."""

_HURRIED_BUSY_MS = 250
"""The wait while the file is known to be locked (a write has just waited out the full busy
timeout): writes fail fast until one gets through, rather than each holding its caller (on
SQLite, the event loop) for the full timeout."""


def sqlalchemy_url(url: str) -> str:
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


class Database:
    sqlite_reopens: ClassVar[int] = 0
    """How many times a write in this process found its SQLite file read-only and closed the
    pool's connections. A connection kept outside the pool (``Direct``'s) that was opened before
    the latest of these must close too: until all of them have, the file stays read-only."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.is_sqlite = settings.is_sqlite
        self._write_lock = threading.Lock() if self.is_sqlite else None
        self._reading = threading.local()
        self._locked_out = False  # SQLite: the last write timed out on another's lock
        self._stale_before = 0.0  # SQLite: connections opened before this are closed on checkin
        self.engine = self._create_engine(settings)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _stamp_opened)
            event.listen(self.engine, "checkin", self._close_if_stale)

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
        with translate_errors(), self.engine.connect() as conn:
            self._reading.conn = conn
            try:
                yield conn
            finally:
                self._reading.conn = None

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction, committed when the block ends without an exception."""
        with translate_errors():
            if self._write_lock is None:
                with self.engine.begin() as conn:
                    yield conn
                return
            if not self._write_lock.acquire(timeout=BUSY_TIMEOUT_MS / 1000):
                raise Unavailable(_SQLITE_FAILURES[sqlite3.SQLITE_BUSY][0], retry_after=1)
            try:
                with self.engine.connect() as conn, self._immediate(conn):
                    yield conn
            except (DBAPIError, sqlite3.Error) as exc:  # BEGIN goes straight to the driver
                self._after_failure(exc)
                raise
            finally:
                self._write_lock.release()

    @contextmanager
    def _immediate(self, conn: Connection) -> Iterator[None]:
        """A ``BEGIN IMMEDIATE`` transaction; a short busy wait while the file is locked out."""
        hurried = self._locked_out
        driver: Any = conn.connection.driver_connection
        if hurried:  # straight to the driver: through SQLAlchemy it would begin a transaction
            driver.execute(f"PRAGMA busy_timeout={_HURRIED_BUSY_MS}")
        conn.info["immediate"] = True
        try:
            with conn.begin():
                self._locked_out = False
                yield
        finally:
            conn.info["immediate"] = False
            if hurried:
                with contextlib.suppress(sqlite3.Error):
                    driver.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    def _after_failure(self, exc: DBAPIError | sqlite3.Error) -> None:
        code = _sqlite_code(exc.orig if isinstance(exc, DBAPIError) else exc)
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            self._locked_out = True
        elif code == sqlite3.SQLITE_READONLY:
            # A connection opened while the file could not be written stays read-only, and
            # every connection of this process to the file shares its read-only WAL index: a
            # write can succeed again only once all of them are closed. Close the idle ones
            # now and those in use when they come back; the next ones open the file afresh.
            self._stale_before = time.monotonic()
            Database.sqlite_reopens += 1
            self.engine.dispose()

    def _close_if_stale(self, _dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        if record.info.get("opened", 0.0) < self._stale_before:
            record.invalidate()

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
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
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


def _stamp_opened(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    record.info["opened"] = time.monotonic()


class translate_errors:  # noqa: N801 - used as a context manager like contextlib's
    """Failures that retrying later can cure become ``Unavailable`` (503) above the storage
    layer, each with a detail that says what is wrong."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, _tb: Any) -> Literal[False]:
        if isinstance(exc, PoolTimeout):
            raise Unavailable("The database is busy; retry later.", retry_after=1) from exc
        # raw driver errors come from a DriverQuery, which bypasses SQLAlchemy's own wrapping
        if isinstance(exc, DBAPIError | sqlite3.OperationalError | psycopg.OperationalError):
            unavailable = unavailable_for(exc)
            if unavailable is not None:
                raise unavailable from exc
        return False


_SQLITE_FAILURES: dict[int, tuple[str, int]] = {
    # primary result code: (detail, Retry-After in seconds)
    sqlite3.SQLITE_BUSY: ("The database is locked by another writer; retry later.", 1),
    sqlite3.SQLITE_LOCKED: ("The database is locked by another writer; retry later.", 1),
    sqlite3.SQLITE_PROTOCOL: ("The database is locked by another writer; retry later.", 1),
    sqlite3.SQLITE_FULL: (
        "The database's disk is full: writes fail until space is freed; retry later.",
        5,
    ),
    sqlite3.SQLITE_READONLY: (
        "The database is read-only (its file cannot be written): writes fail until it is "
        "writable again; retry later.",
        5,
    ),
    sqlite3.SQLITE_IOERR: (
        "The database's disk failed to read or write (I/O error); retry later.",
        5,
    ),
    sqlite3.SQLITE_CANTOPEN: ("The database file cannot be opened; retry later.", 5),
}


def unavailable_for(exc: BaseException) -> Unavailable | None:
    """The 503 for a failure that retrying later can cure, else ``None`` (a bug: a 500).

    SQLite says which by its result code; PostgreSQL by its message: the server away,
    starting or stopping, or this transaction chosen as a deadlock or serialization victim."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    code = _sqlite_code(orig)
    if code in _SQLITE_FAILURES:
        detail, retry_after = _SQLITE_FAILURES[code]
        return Unavailable(detail, retry_after=retry_after)
    if (isinstance(exc, DBAPIError) and exc.connection_invalidated) or _is_gone(orig):
        return Unavailable("The database is unavailable; retry later.", retry_after=1)
    return None


def _sqlite_code(exc: BaseException | None) -> int | None:
    """SQLite's primary result code (``SQLITE_IOERR`` for ``SQLITE_IOERR_WRITE``), if any."""
    code = getattr(exc, "sqlite_errorcode", None) if isinstance(exc, sqlite3.Error) else None
    return code & 0xFF if isinstance(code, int) else None


def _is_gone(exc: BaseException | None) -> bool:
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
