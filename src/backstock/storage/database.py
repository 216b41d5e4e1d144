"""The database: the one owner of every connection, and the only place that knows which
database is underneath.

Work is handed in as a *unit*: a coroutine function taking a ``Conn``. ``read`` runs one at once
(each statement its own transaction); ``write`` runs one in a transaction, committed when it
returns, rolled back when it raises.

SQLite: reads run on the calling thread's own connection (microseconds; the event loop does not
hop threads for them). Every write of the process goes to one writer thread, which commits
the units pending at the time in one ``BEGIN IMMEDIATE`` transaction, each unit in a savepoint:
concurrent writes share one fsync, one unit's failure (a 409, a 429) rolls back that unit
only, and the event loop never waits on a commit or on another process's lock. The writers of
several processes on one file take turns on a file lock (``_WriterLock``).

PostgreSQL: psycopg's asyncio connections, a small pool per event loop (the API's, each
worker's), autocommit for reads and one transaction per write unit, run in pipeline mode (its
``BEGIN`` and writes whose outcome nothing reads share round trips: ``Conn.later``). Reads that
``read_together`` runs (a poll, a request's key) are asked in batches: those that arrive while
one is out go in the next, as one statement (``_Batcher``).

Failures that waiting can cure (the database away, locked, full, read-only, failing I/O) become
``Unavailable``: a 503 with ``Retry-After`` for requests, a retry for the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
import stat
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeVar

import psycopg
from psycopg.pq import TransactionStatus

from backstock.domain.errors import Unavailable
from backstock.settings import Settings, sqlite_path
from backstock.storage.sql import Conn, Statement, run_to_completion

log = logging.getLogger("backstock.storage")

T = TypeVar("T")
A = TypeVar("A")
Unit = Callable[[Conn], Awaitable[T]]
Batch = Callable[[Conn, list[A]], Awaitable[list[T]]]
"""A read of several asks at once: their answers, in the same order."""

BUSY_TIMEOUT_MS = 10_000
"""How long a SQLite write waits for another process's write lock before it fails with 503."""

CACHE_KIB = 16 * 1024
"""SQLite's page cache per connection, at most (filled as pages are read). SQLite's default,
2 MB, is less than one worker transaction of 100 updates to a 10k catalog touches: pages were
read again with a system call each and dirty ones spilled to the WAL before the commit, some
twice. With 16 MB: the worker's reads 1.41 -> 0.45 MB a job, its writes 640 -> 528 system calls
a job, its CPU 11 % less (600 jobs, 10k catalog; 32 and 64 MB did no better there)."""

CHECKPOINT_SECONDS = 0.5
"""How often, at most, the WAL is checkpointed while there are writes."""

_HURRIED_BUSY_MS = 250
"""The wait while the file is known to be locked (a write has just waited out the full busy
timeout): writes fail fast until one gets through, rather than each waiting the full timeout."""

BATCH_MAX = 256
"""The most asks ``read_together`` reads in one statement."""

_PING = Statement("ping", "SELECT 1")


def postgres_url(url: str) -> str:
    """The libpq form of a ``postgresql://`` or ``postgresql+psycopg://`` URL."""
    for prefix in ("postgresql+psycopg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url.removeprefix(prefix)
    return url


def sqlalchemy_url(url: str) -> str:
    """The same URL for SQLAlchemy (Alembic and the tests use it)."""
    if url.startswith("sqlite"):
        return url
    return "postgresql+psycopg://" + postgres_url(url).removeprefix("postgresql://")


class Database:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dialect: Literal["sqlite", "postgresql"] = (
            "sqlite" if settings.is_sqlite else "postgresql"
        )
        # SQLite
        self._path = sqlite_path(settings.database_url) if settings.is_sqlite else ""
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._opened_lock = threading.Lock()
        self._generation = 0  # bumped when a write finds the file read-only: reopen everything
        self._read_only = False  # since then, no write got through: reads close what they open
        self._writer = _Writer(self) if settings.is_sqlite else None
        # PostgreSQL
        self._pg_url = "" if settings.is_sqlite else postgres_url(settings.database_url)
        self._pools: dict[asyncio.AbstractEventLoop, _Pool] = {}
        self._groups: dict[asyncio.AbstractEventLoop, _Group] = {}
        self._batchers: dict[tuple[asyncio.AbstractEventLoop, Batch[Any, Any]], _Batcher] = {}

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    async def read(self, unit: Unit[T]) -> T:
        if self._writer is not None:
            with translate_errors():
                reader = self._thread_connection()
                try:
                    return await unit(Conn("sqlite", reader))
                finally:
                    if self._read_only:  # see _found_read_only
                        self._local.driver = None
                        self._forget(reader)
        async with self._pool().connection() as driver:
            return await unit(Conn("postgresql", driver))

    async def read_together(self, batch: Batch[A, T], ask: A) -> T:
        """``batch(conn, [ask])[0]``. On PostgreSQL, the asks of one event loop for the same
        ``batch`` that arrive while one of its reads is out are read together, in the next:
        one statement and one round trip for many (``_Batcher``). SQLite reads are in-thread
        and take microseconds: each is read alone."""
        if self._writer is not None:
            return (await self.read(lambda conn: batch(conn, [ask])))[0]
        loop = asyncio.get_running_loop()
        batcher = self._batchers.get((loop, batch))
        if batcher is None:
            batcher = self._batchers[(loop, batch)] = _Batcher(self._pool(), batch)
        answer: T = await batcher.submit(ask)
        return answer

    async def write(self, unit: Unit[T], *, single: bool = False) -> T:
        """``single``: the unit runs one statement. On PostgreSQL such writes of one event loop
        are committed together (``_Group``): one alone is its own transaction (no ``BEGIN`` and
        ``COMMIT`` round trips), those arriving meanwhile share the next commit."""
        if self._writer is not None:
            return await self._writer.submit(unit)
        if single:
            return await self._group().submit(unit)
        async with self._pool().connection() as driver:
            with translate_errors():
                return await _transaction(driver, unit)

    async def ping(self) -> None:
        """Raise ``Unavailable`` unless the database answers."""
        await self.read(lambda conn: conn.one(_PING))

    # ---- SQLite connections ------------------------------------------------------------------

    def open_sqlite(self) -> sqlite3.Connection:
        """A new connection to the file, set up as every connection of the process is."""
        driver = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            # The busy timeout first: with it, the statements below wait out another writer.
            driver.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            driver.execute(f"PRAGMA synchronous={self.settings.sqlite_synchronous}")
            driver.execute("PRAGMA foreign_keys=ON")
            driver.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            # A savepoint's copies of the pages it changes (``_Writer._unit``) in memory: in a
            # temporary file they were written with a system call each, as many as the WAL's.
            driver.execute("PRAGMA temp_store=MEMORY")
        except sqlite3.Error as exc:
            driver.close()
            raise unavailable_for(exc) or exc from exc
        with self._opened_lock:
            self._opened.append(driver)
        return driver

    def _thread_connection(self) -> sqlite3.Connection:
        local = self._local
        driver: sqlite3.Connection | None = getattr(local, "driver", None)
        if driver is not None and local.generation != self._generation:
            self._forget(driver)  # opened while the file was read-only: it must close
            driver = None
        if driver is None:
            local.generation = self._generation
            driver = local.driver = self.open_sqlite()
        return driver

    def _forget(self, driver: sqlite3.Connection) -> None:
        with self._opened_lock:
            if driver in self._opened:
                self._opened.remove(driver)
        driver.close()

    def _found_read_only(self) -> None:
        """A connection opened while the file could not be written stays read-only, and every
        connection of this process to the file shares its read-only WAL index: a write can
        succeed again only once all of them are closed. Each reopens on its next use; until a
        write gets through, reads close their connection when done and the writer closes its
        own after each group, so that a moment comes when none is open."""
        self._generation += 1
        self._read_only = True

    # ---- PostgreSQL pools --------------------------------------------------------------------

    def _pool(self) -> _Pool:
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None:
            pool = self._pools[loop] = _Pool(self._pg_url, self.settings)
        return pool

    def _group(self) -> _Group:
        loop = asyncio.get_running_loop()
        group = self._groups.get(loop)
        if group is None:
            group = self._groups[loop] = _Group(self._pool())
        return group

    async def close_loop(self) -> None:
        """Close this event loop's connections (at the end of the loop that used them)."""
        loop = asyncio.get_running_loop()
        self._groups.pop(loop, None)
        for owner in [owner for owner in self._batchers if owner[0] is loop]:
            del self._batchers[owner]
        pool = self._pools.pop(loop, None)
        if pool is not None:
            await pool.close()

    def close(self) -> None:
        """Stop the writer and close every SQLite connection; the next use starts afresh."""
        if self._writer is not None:
            self._writer.close()
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for driver in opened:
            with contextlib.suppress(sqlite3.Error):
                driver.close()
        self._local = threading.local()


class _WriterLock:
    """SQLite: which process's writer may write now, across the processes on one file (an
    exclusive ``flock`` on ``<file>-writer``). Writers queue on it and are woken as soon as it
    is free, where SQLite's own busy handler would poll with sleeps growing to 100 ms (the p99
    of several API processes queueing on one file). SQLite's lock still guards against any
    other program writing the file.

    Each acquisition opens the file anew, so a wait given up (left blocking in its helper
    thread until the lock comes free, then letting it go) never touches a later one's lock."""

    def __init__(self, path: str) -> None:
        self._path = f"{path}-writer"
        self._held: int | None = None

    def acquire(self, timeout: float) -> bool:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not self._wait(fd, timeout):
                return False
        except BaseException:
            os.close(fd)
            raise
        self._held = fd
        return True

    @staticmethod
    def _wait(fd: int, timeout: float) -> bool:
        """Another process holds it: block on it in a helper thread (woken by the kernel when
        it is free, no polling), for up to ``timeout``."""
        decided, outcome = threading.Lock(), {"taken": False, "abandoned": False}
        taken = threading.Event()

        def wait() -> None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with decided:
                if outcome["abandoned"]:  # the writer gave up meanwhile: let it go again
                    os.close(fd)  # closing the file releases its lock
                    return
                outcome["taken"] = True
            taken.set()

        threading.Thread(target=wait, name="backstock-writer-lock", daemon=True).start()
        taken.wait(timeout)
        with decided:
            outcome["abandoned"] = not outcome["taken"]
            return outcome["taken"]

    def release(self) -> None:
        fd, self._held = self._held, None
        if fd is not None:
            os.close(fd)  # closing the file releases its lock


class _Checkpointer:
    """SQLite: copies the WAL back into the database file (a ``PASSIVE`` checkpoint) on a thread
    of its own, at most every ``CHECKPOINT_SECONDS`` while there are writes. SQLite would
    otherwise do it inside the commit that passes 1,000 pages of WAL, and every write waiting
    for the writer would wait for the copy and its fsync too (spikes of a second under load,
    with 40 KB job payloads). A passive checkpoint takes no lock the writer needs; the writer's
    next transaction starts the WAL over once it is all copied.

    SQLite's own checkpoint stays on as the bound: the WAL is all copied only if no commit came
    in while the copy ran, and under writes without a pause (a worker applying one item per
    transaction) that may never happen. Without it the WAL grew until the disk was full, and
    after a full disk no checkpoint could run again (``test_sqlite_faults.py``, disk full:
    failed one run in three). With it, a commit checkpoints only when this thread fell 1,000
    pages behind."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._due = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._lock = threading.Lock()

    def wrote(self) -> None:
        with self._lock:
            if self._thread is None and not self._closing:
                self._thread = threading.Thread(
                    target=self._run, name="backstock-sqlite-checkpoint", daemon=True
                )
                self._thread.start()
        self._due.set()

    def _run(self) -> None:
        driver: sqlite3.Connection | None = None
        try:
            while True:
                self._due.wait()
                if self._stop.is_set():
                    return
                self._due.clear()
                try:
                    driver = driver or self._db.open_sqlite()
                    driver.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # the next write tries again; nothing is lost
                    log.debug("checkpoint skipped: %s", exc)
                    if driver is not None:
                        self._db._forget(driver)
                        driver = None
                if self._stop.wait(CHECKPOINT_SECONDS):
                    return
        finally:
            if driver is not None:
                self._db._forget(driver)

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            self._closing = True
        self._stop.set()
        self._due.set()
        if thread is not None:
            thread.join()
        with self._lock:
            self._closing = False
            self._stop.clear()
            self._due.clear()


class _Writer:
    """SQLite: the thread every write of the process is committed on, in groups."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._lock = _WriterLock(db._path)
        self._checkpointer = _Checkpointer(db)
        self._ready = threading.Condition()
        self._pending: list[tuple[Unit[Any], asyncio.Future[Any]]] = []
        self._thread: threading.Thread | None = None
        self._closing = False
        self._locked_out = False  # the last BEGIN timed out on another process's lock

    async def submit(self, unit: Unit[T]) -> T:
        """The unit's outcome once its group has committed. A unit still waiting for the
        writer after the busy timeout is withdrawn (never run) and refused with 503; one the
        writer has started is waited for, so a 503 never hides a commit."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        entry = (unit, future)
        with self._ready:
            self._pending.append(entry)
            if self._thread is None:  # started on first use, stopped by ``close``
                self._thread = threading.Thread(
                    target=self._run, name="backstock-sqlite-writer", daemon=True
                )
                self._thread.start()
            self._ready.notify()
        try:
            return await asyncio.wait_for(asyncio.shield(future), BUSY_TIMEOUT_MS / 1000)
        except TimeoutError:
            with self._ready:
                waiting = entry in self._pending
                if waiting:
                    self._pending.remove(entry)
            if waiting:
                raise Unavailable(_LOCKED, retry_after=1, kind="locked") from None
            return await future

    def close(self) -> None:
        """Stop once what is pending is committed (a later ``submit`` starts another)."""
        with self._ready:
            thread, self._closing = self._thread, True
            self._ready.notify_all()
        if thread is not None:
            thread.join()
        self._checkpointer.close()
        with self._ready:
            self._closing = False

    def _run(self) -> None:
        driver: sqlite3.Connection | None = None
        generation = -1
        try:
            while True:
                with self._ready:
                    while not self._pending and not self._closing:
                        self._ready.wait()
                    if not self._pending:  # closing, with nothing left to commit
                        return
                    group, self._pending = self._pending, []
                if driver is None or generation != self._db._generation:
                    if driver is not None:
                        self._db._forget(driver)
                    generation, driver = self._db._generation, None
                    try:
                        driver = self._db.open_sqlite()
                    except Exception as exc:  # noqa: BLE001 - each waiting unit gets it
                        _settle_all(group, exc)
                        continue
                try:
                    outcomes = self._commit(driver, group)
                except BaseException as exc:  # this thread dies: its units' callers are told
                    stopped = RuntimeError(f"The SQLite writer stopped: {exc!r}")
                    _settle(group, [stopped] * len(group))
                    raise
                _settle(group, outcomes)
                self._checkpointer.wrote()
                if generation != self._db._generation:  # found read-only: let go of the file
                    self._db._forget(driver)
                    driver = None
                else:
                    self._db._read_only = False
        finally:
            with self._ready:
                if self._thread is threading.current_thread():
                    self._thread = None

    def _commit(self, driver: sqlite3.Connection, group: list[Any]) -> list[Any]:
        wait = (_HURRIED_BUSY_MS if self._locked_out else BUSY_TIMEOUT_MS) / 1000
        if not self._lock.acquire(wait):  # another process's writer kept it all that time
            self._locked_out = True
            return [Unavailable(_LOCKED, retry_after=1, kind="locked")] * len(group)
        conn = Conn("sqlite", driver)
        try:
            self._begin(driver)
            if len(group) == 1:  # alone, its transaction is its savepoint (see ``_unit``)
                outcomes = [run_to_completion(group[0][0](conn))]
            else:
                outcomes = [self._unit(driver, conn, unit) for unit, _ in group]
            driver.execute("COMMIT")
        except BaseException as exc:  # every unit of the group gets it
            with contextlib.suppress(sqlite3.Error):
                if driver.in_transaction:  # also when the thread dies: never keep the lock
                    driver.execute("ROLLBACK")
            if not isinstance(exc, Exception):
                raise
            return [self._translated(exc)] * len(group)
        finally:
            self._lock.release()
        return outcomes

    def _unit(self, driver: sqlite3.Connection, conn: Conn, unit: Unit[Any]) -> Any:
        """One unit of a group, in a savepoint: its failure undoes its own changes only. A
        savepoint keeps a copy of each page the unit changes (in memory: ``temp_store``), so a
        unit alone (every worker transaction) runs without one: its failure rolls the
        transaction back, which undoes the same."""
        driver.execute("SAVEPOINT unit")
        try:
            outcome: Any = run_to_completion(unit(conn))  # type: ignore[arg-type]
        except Exception as exc:
            if not driver.in_transaction:
                raise  # SQLite rolled the whole transaction back (full disk, I/O error)
            driver.execute("ROLLBACK TO unit")
            driver.execute("RELEASE unit")
            return self._translated(exc)
        driver.execute("RELEASE unit")
        return outcome

    def _begin(self, driver: sqlite3.Connection) -> None:
        hurried = self._locked_out
        if hurried:
            driver.execute(f"PRAGMA busy_timeout={_HURRIED_BUSY_MS}")
        try:
            driver.execute("BEGIN IMMEDIATE")
            self._locked_out = False
        finally:
            if hurried:
                with contextlib.suppress(sqlite3.Error):
                    driver.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    def _translated(self, exc: BaseException) -> BaseException:
        code = _sqlite_code(exc)
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            self._locked_out = True
        elif code == sqlite3.SQLITE_READONLY:
            self._db._found_read_only()
        return unavailable_for(exc) or exc


def _settle(group: list[tuple[Any, asyncio.Future[Any]]], outcomes: list[Any]) -> None:
    for (_, future), outcome in zip(group, outcomes, strict=True):
        with contextlib.suppress(RuntimeError):  # its event loop has closed: no one waits
            future.get_loop().call_soon_threadsafe(_resolve, future, outcome)


def _settle_all(group: list[tuple[Any, asyncio.Future[Any]]], exc: BaseException) -> None:
    _settle(group, [unavailable_for(exc) or exc] * len(group))


def _resolve(future: asyncio.Future[Any], outcome: Any) -> None:
    if future.cancelled():  # the caller went away; what was committed stands
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


async def _transaction(driver: psycopg.AsyncConnection[Any], unit: Unit[T]) -> T:
    """PostgreSQL: ``unit`` in a transaction, in pipeline mode (see ``Conn``). Its ``BEGIN``
    and ``COMMIT`` are sent as statements, not with psycopg's ``transaction()``, which waits
    for each: so ``BEGIN`` goes with the unit's first query, and ``COMMIT`` with its ``later``
    writes, in one round trip (a worker's batch: 3 round trips, not 6 or 7)."""
    try:
        async with driver.pipeline() as pipeline:
            await driver.execute(b"BEGIN")
            outcome = await unit(Conn("postgresql", driver, pipeline))
            await driver.execute(b"COMMIT")
    except Exception:
        # A Python error (a 409, a 429), or a statement's: the transaction is still open,
        # perhaps aborted. A failed COMMIT has ended it already. (Cancelled: the pool drops
        # the connection, which is not idle.)
        status = driver.info.transaction_status
        if status != TransactionStatus.IDLE and not driver.broken:
            with contextlib.suppress(psycopg.Error):  # then not idle: the pool drops it
                if status == TransactionStatus.INERROR:
                    # A statement failed, and PostgreSQL skipped what was sent after it, a
                    # Parse among them perhaps, which psycopg counts as prepared once sent:
                    # its rollback() forgets them all (and deallocates them).
                    await driver.rollback()
                else:
                    await driver.execute(b"ROLLBACK")
        raise
    return outcome


class _Pool:
    """PostgreSQL: asyncio connections of one event loop, at most ``pool_size`` at once. A
    connection goes back only when idle and unbroken; when none can be opened the caller gets
    ``Unavailable`` at once (no waiting for a pool to heal), and when all are busy for longer
    than the pool timeout, ``Unavailable`` too."""

    def __init__(self, url: str, settings: Settings) -> None:
        self._url = url
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._slots = asyncio.Semaphore(settings.pool_size)
        self._connect_timeout = max(1, round(settings.pool_timeout_seconds))
        self._wait_timeout = settings.pool_timeout_seconds

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if self._slots.locked():  # all busy: wait for one, for so long (a free one: no timer)
            try:
                async with asyncio.timeout(self._wait_timeout):
                    await self._slots.acquire()
            except TimeoutError:
                raise Unavailable(
                    "The database is busy; retry later.", retry_after=1, kind="busy"
                ) from None
        else:
            await self._slots.acquire()
        try:
            with translate_errors():
                driver = self._idle.pop() if self._idle else await self._connect()
                try:
                    yield driver
                finally:
                    # Reused only when idle: not after a failure, nor when cancelled mid-query.
                    idle = driver.info.transaction_status == TransactionStatus.IDLE
                    if idle and not driver.broken:
                        self._idle.append(driver)
                    else:
                        await driver.close()
        finally:
            self._slots.release()

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(
            self._url, autocommit=True, connect_timeout=self._connect_timeout
        )

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for driver in idle:
            await driver.close()


class _Group:
    """PostgreSQL: the one-statement writes of one event loop (job acceptance), committed in
    groups. While a group commits, the writes that arrive wait and form the next one: a
    transaction of their statements, in arrival order, committed once. Acceptances of one
    account serialize on its row, so one commit per acceptance capped them at one per fsync.

    A statement's effects are what they would be alone (each statement is its own unit: a
    Python error raised after it, like a 429, leaves them as autocommit would). If a statement
    fails, the group is rolled back and each of its writes runs again alone. A grouped write
    reads each statement's result (``Conn.one``, ``all``, ``run``): a ``later`` write's
    failure would show only at the ``COMMIT``, as the whole group's."""

    def __init__(self, pool: _Pool) -> None:
        self._pool = pool
        self._pending: list[tuple[Unit[Any], asyncio.Future[Any]]] = []
        self._draining: asyncio.Task[None] | None = None

    async def submit(self, unit: Unit[T]) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((unit, future))
        if self._draining is None:
            self._draining = asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                group, self._pending = self._pending, []
                if len(group) == 1 or not await self._together(group):
                    for unit, future in group:
                        await self._alone(unit, future)
        finally:
            self._draining = None

    async def _alone(self, unit: Unit[Any], future: asyncio.Future[Any]) -> None:
        try:
            async with self._pool.connection() as driver:
                with translate_errors():
                    outcome: Any = await unit(Conn("postgresql", driver))
        except Exception as exc:  # noqa: BLE001 - the unit's own outcome, handed to its caller
            outcome = exc
        _resolve(future, outcome)

    async def _together(self, group: list[tuple[Unit[Any], asyncio.Future[Any]]]) -> bool:
        """Run the group in one transaction, in pipeline mode (``_transaction``: its ``BEGIN``
        goes with the first statement), its writes side by side (``_SharedSync``: their
        statements sent in arrival order, their results read in one round trip). False, with
        nothing committed, if a statement failed (each write then runs alone); if the commit
        itself failed, every write of the group gets that failure (its outcome is unknown, as
        a lone statement's would be)."""
        ran: list[Any] = []

        async def each(conn: Conn) -> list[Any]:
            shared = _SharedSync(conn.pipeline, len(group))
            side_by_side = Conn("postgresql", conn.driver, shared)

            async def run(unit: Unit[Any]) -> Any:
                try:
                    return await unit(side_by_side)
                except Exception as exc:  # noqa: BLE001 - a statement's, or raised after it
                    return exc
                finally:
                    shared.leave()

            # Tasks start in order, and each queues its first statement under the connection's
            # lock (first come, first served) before it awaits anything else: the statements
            # go in arrival order.
            outcomes = await asyncio.gather(*(run(unit) for unit, _ in group))
            for outcome in outcomes:
                if isinstance(outcome, psycopg.Error):  # a statement failed: the group did
                    raise outcome
            ran.extend(outcomes)
            return ran

        try:
            async with self._pool.connection() as driver:
                with translate_errors():
                    outcomes = await _transaction(driver, each)
        except Exception as exc:  # noqa: BLE001 - the group's failure, handed to its callers
            if len(ran) < len(group):
                return False
            outcomes = [exc] * len(group)
        for (_, future), outcome in zip(group, outcomes, strict=True):
            _resolve(future, outcome)
        return True


class _SharedSync:
    """A pipeline shared by the writes of a group, each in a task of its own: a write that
    needs its result (``Conn.all``, ``Conn.run``) waits until every write still running waits
    too, then one sync reads the results of all. Sequentially, each statement's result would
    be a round trip of its own."""

    def __init__(self, pipeline: Any, running: int) -> None:
        self._pipeline = pipeline
        self._running = running
        self._waiting: list[asyncio.Future[None]] = []
        self._syncing: asyncio.Task[None] | None = None  # referenced: the loop's is weak

    async def sync(self) -> None:
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self._maybe_sync()
        await future

    def leave(self) -> None:
        self._running -= 1
        self._maybe_sync()

    def _maybe_sync(self) -> None:
        if self._waiting and len(self._waiting) == self._running:
            waiting, self._waiting = self._waiting, []
            self._syncing = asyncio.get_running_loop().create_task(self._sync(waiting))

    async def _sync(self, waiting: list[asyncio.Future[None]]) -> None:
        try:
            await self._pipeline.sync()
        except BaseException as exc:  # noqa: BLE001 - each waiting write gets it
            for future in waiting:
                if not future.done():
                    future.set_exception(exc)
            return
        for future in waiting:
            if not future.done():
                future.set_result(None)


class _Batcher:
    """PostgreSQL: the asks of one event loop for one ``Batch`` read, read in batches. An ask
    that finds no read out goes at once, alone; those arriving while a read is out wait for it
    and go together in the next (at most ``BATCH_MAX``). Under load a poll then costs the event
    loop and the database a share of one statement rather than one each. A failed read fails
    each of its asks (each gets the ``Unavailable`` or error it would have got alone)."""

    def __init__(self, pool: _Pool, batch: Batch[Any, Any]) -> None:
        self._pool = pool
        self._batch = batch
        self._pending: list[tuple[Any, asyncio.Future[Any]]] = []
        self._draining: asyncio.Task[None] | None = None

    async def submit(self, ask: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((ask, future))
        if self._draining is None:
            self._draining = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        group: list[tuple[Any, asyncio.Future[Any]]] = []
        try:
            while self._pending:
                group = self._pending[:BATCH_MAX]
                del self._pending[:BATCH_MAX]
                try:
                    async with self._pool.connection() as driver:
                        with translate_errors():
                            answers = await self._batch(
                                Conn("postgresql", driver), [ask for ask, _ in group]
                            )
                except Exception as exc:  # noqa: BLE001 - the read's failure, for each ask
                    answers = [exc] * len(group)
                for (_, future), answer in zip(group, answers, strict=True):
                    _resolve(future, answer)
        finally:
            self._draining = None
            # Cancelled (its loop is closing): no answer comes to those still waiting.
            for _, future in group + self._pending:
                future.cancel()
            self._pending = []


_OPERATIONAL = (sqlite3.OperationalError, psycopg.OperationalError)


class translate_errors:  # noqa: N801 - used as a context manager like contextlib's
    """Failures that retrying later can cure become ``Unavailable`` (503) above the storage
    layer, each with a detail that says what is wrong."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, _tb: Any) -> Literal[False]:
        if exc is not None and isinstance(exc, _OPERATIONAL):
            unavailable = unavailable_for(exc)
            if unavailable is not None:
                raise unavailable from exc
        return False


_LOCKED = "The database is locked by another writer; retry later."
_SQLITE_FAILURES: dict[int, tuple[str, int, str]] = {
    # primary result code: (detail, Retry-After in seconds, kind)
    sqlite3.SQLITE_BUSY: (_LOCKED, 1, "locked"),
    sqlite3.SQLITE_LOCKED: (_LOCKED, 1, "locked"),
    sqlite3.SQLITE_PROTOCOL: (_LOCKED, 1, "locked"),
    sqlite3.SQLITE_FULL: (
        "The database's disk is full: writes fail until space is freed; retry later.",
        5,
        "full",
    ),
    sqlite3.SQLITE_READONLY: (
        "The database is read-only (its file cannot be written): writes fail until it is "
        "writable again; retry later.",
        5,
        "read_only",
    ),
    sqlite3.SQLITE_IOERR: (
        "The database's disk failed to read or write (I/O error); retry later.",
        5,
        "io",
    ),
    sqlite3.SQLITE_CANTOPEN: ("The database file cannot be opened; retry later.", 5, "cant_open"),
}


def unavailable_for(exc: BaseException) -> Unavailable | None:
    """The 503 for a failure that retrying later can cure, else ``None`` (a bug: a 500).

    SQLite says which by its result code; PostgreSQL by its kind: the server away, starting or
    stopping, or this transaction chosen as a deadlock or serialization victim."""
    if isinstance(exc, Unavailable):
        return exc
    code = _sqlite_code(exc)
    if code in _SQLITE_FAILURES:
        detail, retry_after, kind = _SQLITE_FAILURES[code]
        return Unavailable(detail, retry_after=retry_after, kind=kind)
    if isinstance(exc, psycopg.OperationalError) or _is_gone(exc):
        return Unavailable("The database is unavailable; retry later.", retry_after=1, kind="away")
    return None


def _sqlite_code(exc: BaseException | None) -> int | None:
    """SQLite's primary result code (``SQLITE_IOERR`` for ``SQLITE_IOERR_WRITE``), if any."""
    code = getattr(exc, "sqlite_errorcode", None) if isinstance(exc, sqlite3.Error) else None
    return code & 0xFF if isinstance(code, int) else None


def _is_gone(exc: BaseException | None) -> bool:
    if not isinstance(exc, psycopg.Error):
        return False
    text = str(exc).lower()
    markers = ("connection", "server closed", "terminating", "starting up", "shutting down")
    return any(marker in text for marker in markers)


def restrict_file(path: str) -> None:
    """Database files are readable by their owner only. Only group and other bits are taken
    away: a file its operator made read-only stays read-only."""
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            mode = stat.S_IMODE(os.stat(path + suffix).st_mode)
            os.chmod(path + suffix, mode & 0o700)
