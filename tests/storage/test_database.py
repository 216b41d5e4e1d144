"""``Database``, the one owner of every connection.

SQLite: reads run on the calling thread's own connection; every write goes to one writer
thread, which commits the units pending at the time together (group commit), each unit in a
savepoint of its own. PostgreSQL: a small pool of asyncio connections per event loop, reused
while healthy, never after a failure, not stuck after a cancelled query; a database that is
away, or busy for longer than the pool timeout, is a 503.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

import orjson
import psycopg
import pytest
from sqlalchemy import text as sa_text

from backstock.bootstrap import build_services
from backstock.domain.errors import TooManyJobs, Unavailable
from backstock.domain.jobs import KINDS
from backstock.domain.keys import Principal, from_authorization
from backstock.settings import Settings, sqlite_path
from backstock.storage.database import Database
from backstock.storage.engine import JobStore
from backstock.storage.sql import Conn, Statement
from tests.proxy import CuttableProxy
from tests.support import BOTH_SCOPES, bulk_body, free_port, sql

T = TypeVar("T")
PLUS_ONE = Statement("plus_one", "SELECT :n + 1")
NAMES = Statement("names", "SELECT name FROM accounts ORDER BY id")
INSERT = Statement(
    "insert_account",
    "INSERT INTO accounts (name, created_at, cursor_key) VALUES (:name, 1, X'00') RETURNING id",
)
DEFER_FOREIGN_KEYS = Statement("defer", "PRAGMA defer_foreign_keys=ON")
KEY_OF_NO_ACCOUNT = Statement(
    "orphan_key",
    "INSERT INTO api_keys (id, account_id, secret_hash, scopes, created_at) "
    "VALUES ('orphan', 999999, 'x', 'catalogs:read', 1)",
)
PLUS_ONES = Statement(
    "plus_ones",
    "SELECT NULL",  # SQLite reads each ask alone (PLUS_ONE)
    "SELECT CAST(n AS BIGINT) + 1 FROM unnest(CAST(:ns AS TEXT[])) WITH ORDINALITY AS asks(n, i) "
    "ORDER BY i",
)
PID = Statement("pid", "SELECT pg_backend_pid()")
SLEEP = Statement("sleep", "SELECT pg_sleep(:seconds)")


@pytest.fixture
def database(sqlite_url: str) -> Iterator[Database]:
    db = Database(Settings(database_url=sqlite_url))
    yield db
    db.close()


def names(db: Database) -> list[str]:
    """The accounts' names in insertion order, read on a connection of the test's own."""
    with closing(sqlite3.connect(sqlite_path(db.settings.database_url))) as conn:
        return [row[0] for row in conn.execute("SELECT name FROM accounts ORDER BY id")]


def insert(name: str, statement: Statement = INSERT) -> Any:
    async def unit(conn: Conn) -> int:
        row = await conn.one(statement, {"name": name})
        assert row is not None
        return int(row[0])

    return unit


async def driver_of(conn: Conn) -> Any:
    return conn.driver


async def current_thread(_conn: Conn) -> threading.Thread:
    return threading.current_thread()


def wal_commits(db: Database) -> int:
    """How many transactions the write-ahead log holds: its frames that end a commit (a
    frame header's second field is the database size after the commit, zero otherwise),
    among those of the log's current generation (its salts)."""
    try:
        wal = Path(sqlite_path(db.settings.database_url) + "-wal").read_bytes()
    except FileNotFoundError:
        return 0
    if len(wal) < 32:
        return 0
    page_size, salts = int.from_bytes(wal[8:12], "big"), wal[16:24]
    commits, offset = 0, 32
    while offset + 24 + page_size <= len(wal):
        header = wal[offset : offset + 24]
        if header[8:16] != salts:
            break
        commits += int.from_bytes(header[4:8], "big") != 0
        offset += 24 + page_size
    return commits


async def hold_the_writer(db: Database, seconds: float = 0.3) -> asyncio.Future[int]:
    """Submit a write that keeps the writer thread busy for ``seconds``, and return once it
    runs: what is submitted meanwhile piles up for the writer's next group."""
    running = threading.Event()

    async def slow(conn: Conn) -> int:
        running.set()
        time.sleep(seconds)
        row = await conn.one(INSERT, {"name": "first"})
        assert row is not None
        return int(row[0])

    held = asyncio.ensure_future(db.write(slow))
    while not running.is_set():
        await asyncio.sleep(0.001)
    return held


# ---- SQLite: connections -------------------------------------------------------------------------


def test_sqlite_reads_on_one_connection_per_thread(database: Database) -> None:
    async def reads() -> tuple[Any, Any, threading.Thread]:
        assert await database.read(lambda conn: conn.one(PLUS_ONE, {"n": 41})) == (42,)
        first, again = await database.read(driver_of), await database.read(driver_of)
        return first, again, await database.read(current_thread)

    first, again, reader = asyncio.run(reads())
    assert first is again  # pinned: no connection set-up per read
    assert reader is threading.current_thread()  # read inline, on the caller's thread

    elsewhere: list[Any] = []
    thread = threading.Thread(target=lambda: elsewhere.append(asyncio.run(reads())))
    thread.start()
    thread.join(10)
    [(other, other_again, other_reader)] = elsewhere
    assert other is other_again and other is not first
    assert other_reader is thread

    database.close()
    assert asyncio.run(reads())[0] is not first  # closed: the next read opens afresh


def test_sqlite_writes_run_on_the_writer_and_reads_see_them_at_once(database: Database) -> None:
    async def scenario() -> tuple[threading.Thread, list[Any]]:
        writer = await database.write(current_thread)
        await database.read(driver_of)  # the reader's connection is open before the write
        await database.write(insert("a"))
        return writer, await database.read(lambda conn: conn.all(NAMES))

    writer, read = asyncio.run(scenario())
    assert writer is not threading.current_thread()
    assert writer.name == "backstock-sqlite-writer"
    assert read == [("a",)]  # no snapshot older than the commit


# ---- SQLite: group commit ------------------------------------------------------------------------


def test_concurrent_writes_share_one_commit_in_submission_order(database: Database) -> None:
    """Thirty coroutines write at once while the writer is busy: their units are committed
    together, in one transaction (one commit in the log), in the order they were submitted,
    and each gets its own outcome."""
    order = random.sample(range(30), 30)
    submitted: list[int] = []

    async def write(n: int) -> int:
        submitted.append(n)  # ``write`` queues the unit before it first waits
        return await database.write(insert(f"u{n}"))

    async def scenario() -> tuple[int, list[int], int]:
        held = await hold_the_writer(database)
        outcomes = await asyncio.gather(*(write(n) for n in order))
        return await held, outcomes, wal_commits(database)

    before = wal_commits(database)
    first, outcomes, after = asyncio.run(scenario())
    assert after - before == 2  # the held write's transaction, and one for all thirty
    assert submitted == order
    assert names(database) == ["first", *(f"u{n}" for n in order)]
    assert outcomes == list(range(first + 1, first + 31))  # each its own row's id


def test_a_failing_unit_rolls_back_its_own_changes_only(database: Database) -> None:
    class Oops(Exception):
        pass

    async def fails_after_writing(conn: Conn) -> None:
        await insert("half-done")(conn)
        raise Oops

    async def scenario() -> tuple[list[Any], int]:
        held = await hold_the_writer(database)
        outcomes = await asyncio.gather(
            database.write(insert("a")),
            database.write(fails_after_writing),
            database.write(insert("b")),
            database.write(insert("a")),  # a duplicate name: a constraint fails
            database.write(insert("c")),
            return_exceptions=True,
        )
        await held
        return list(outcomes), wal_commits(database)

    before = wal_commits(database)
    outcomes, after = asyncio.run(scenario())
    assert after - before == 2  # all five in one transaction
    assert isinstance(outcomes[1], Oops)
    assert isinstance(outcomes[3], sqlite3.IntegrityError)
    assert all(isinstance(outcomes[n], int) for n in (0, 2, 4))
    assert names(database) == ["first", "a", "b", "c"]


def test_a_unit_alone_runs_without_a_savepoint_and_its_failure_undoes_its_changes(
    database: Database,
) -> None:
    """A unit alone in its group (every worker transaction) is its transaction: no savepoint,
    whose copies of each page it changes cost as much again as the WAL's writes; a failure
    rolls the transaction back. A group of several keeps a savepoint per unit (above)."""
    seen: list[str] = []

    def trace(statement: str) -> None:
        seen.append(statement.split(maxsplit=1)[0].upper())

    class Oops(Exception):
        pass

    async def fails_after_writing(conn: Conn) -> None:
        conn.driver.set_trace_callback(trace)
        await insert("half-done")(conn)
        raise Oops

    async def scenario() -> Any:
        return await asyncio.gather(database.write(fails_after_writing), return_exceptions=True)

    (outcome,) = asyncio.run(scenario())
    assert isinstance(outcome, Oops)
    assert seen[0] == "INSERT" and "SAVEPOINT" not in seen and "RELEASE" not in seen, seen
    assert "ROLLBACK" in seen
    assert "half-done" not in names(database)

    async def untraced(conn: Conn) -> None:
        conn.driver.set_trace_callback(None)
        await insert("after")(conn)

    asyncio.run(database.write(untraced))  # the writer goes on
    assert names(database)[-1] == "after"


def test_sqlite_connections_keep_their_pages_and_savepoints_in_memory(database: Database) -> None:
    """A 16 MB page cache (SQLite's 2 MB held less than one worker transaction) and
    savepoint journals in memory (``storage/database.py``: ``CACHE_KIB``, ``temp_store``)."""

    async def pragmas(conn: Conn) -> tuple[int, int]:
        cache = conn.driver.execute("PRAGMA cache_size").fetchone()[0]
        temp = conn.driver.execute("PRAGMA temp_store").fetchone()[0]
        return cache, temp

    memory = 2
    assert asyncio.run(database.read(pragmas)) == (-16 * 1024, memory)
    assert asyncio.run(database.write(pragmas)) == (-16 * 1024, memory)


def test_a_failed_commit_fails_every_unit_of_its_group(database: Database) -> None:
    """A commit that fails (here a deferred foreign key, checked only at COMMIT) fails each
    unit it held; nothing of them is written, and the next write starts clean."""

    async def orphan_key(conn: Conn) -> None:
        await conn.run(DEFER_FOREIGN_KEYS)
        await conn.run(KEY_OF_NO_ACCOUNT)

    async def scenario() -> list[Any]:
        held = await hold_the_writer(database)
        outcomes = await asyncio.gather(
            database.write(insert("a")),
            database.write(orphan_key),
            database.write(insert("b")),
            return_exceptions=True,
        )
        await held
        await database.write(insert("after"))
        return list(outcomes)

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, sqlite3.IntegrityError) for o in outcomes), outcomes
    assert names(database) == ["first", "after"]


class WriterKiller(BaseException):
    """Not an ``Exception``: nothing on the writer thread turns it into an outcome."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_writer_thread_that_dies_lets_the_next_write_start_another(database: Database) -> None:
    async def dies(conn: Conn) -> None:
        await insert("doomed")(conn)
        raise WriterKiller

    async def scenario() -> tuple[threading.Thread, threading.Thread]:
        before = await database.write(current_thread)
        with pytest.raises(RuntimeError, match="writer stopped"):  # told, not left waiting
            await asyncio.wait_for(database.write(dies), 5)
        before.join(5)
        assert not before.is_alive()
        await asyncio.wait_for(database.write(insert("after")), 5)  # not locked out either
        return before, await database.write(current_thread)

    before, after = asyncio.run(scenario())
    assert after is not before and after.is_alive()
    assert names(database) == ["after"]


def test_close_commits_what_is_pending_and_a_later_write_starts_another(
    database: Database,
) -> None:
    submitted = threading.Event()
    outcomes: list[Any] = []

    async def writes() -> None:
        held = await hold_the_writer(database, seconds=0.5)
        pending = [asyncio.ensure_future(database.write(insert(f"p{n}"))) for n in range(5)]
        await asyncio.sleep(0)  # each has queued its unit
        submitted.set()
        outcomes.extend(await asyncio.gather(held, *pending))

    async def writer_thread() -> threading.Thread:
        return await database.write(current_thread)

    writer = asyncio.run(writer_thread())
    client = threading.Thread(target=asyncio.run, args=(writes(),))
    client.start()
    assert submitted.wait(5)
    database.close()  # while the held write still runs and five more wait
    assert not writer.is_alive()
    assert names(database) == ["first", *(f"p{n}" for n in range(5))]
    client.join(5)
    assert len(outcomes) == 6 and all(isinstance(o, int) for o in outcomes)

    assert asyncio.run(writer_thread()).is_alive()  # a later write starts another
    asyncio.run(database.write(insert("later")))
    assert names(database)[-1] == "later"


def test_concurrent_acceptances_share_commits_each_with_its_own_429(sqlite_url: str) -> None:
    """Jobs accepted by concurrent requests (``Jobs.spawn``, as the API calls it) share the
    writer's commit: they are queued in the order they came, and a request over its account's
    cap gets its own 429 without failing the others of its group."""
    services = build_services(Settings(database_url=sqlite_url, max_jobs_in_progress=3))
    store = services.jobs.store
    assert isinstance(store, JobStore)
    db = store.db  # the services' own database: its writer is the one to keep busy
    kind = KINDS["catalog-variant-bulk-update-job"]

    async def principal(account: str) -> Principal:
        made = await services.accounts.create_key(account, BOTH_SCOPES)
        return await services.accounts.authenticate(
            from_authorization(f"Klaviyo-API-Key {made.key}")
        )

    async def scenario() -> tuple[list[Any], int, int]:
        acme, other = await principal("acme"), await principal("other")
        requests = [acme] * 6 + [other]
        before = wal_commits(db)
        held = await hold_the_writer(db)
        outcomes = await asyncio.gather(
            *(
                services.jobs.spawn(who, kind, orjson.dumps(bulk_body([(f"V{n}", {"price": 1.0})])))
                for n, who in enumerate(requests)
            ),
            return_exceptions=True,
        )
        await held
        return outcomes, before, wal_commits(db)

    try:
        outcomes, before, after = asyncio.run(scenario())
    finally:
        services.close()
    assert after - before == 2  # the held write, and the seven requests together
    assert [type(o).__name__ for o in outcomes] == (
        ["JobRecord"] * 3 + ["TooManyJobs"] * 3 + ["JobRecord"]
    )
    assert all(isinstance(o, TooManyJobs) and o.status == 429 for o in outcomes[3:6])
    with closing(sqlite3.connect(sqlite_path(sqlite_url))) as conn:
        stored = [row[0] for row in conn.execute("SELECT id FROM jobs ORDER BY pk")]
        payloads = conn.execute("SELECT count(*) FROM job_payloads").fetchone()
    accepted = [o.id for o in outcomes if not isinstance(o, BaseException)]
    assert stored == accepted  # queued in the order the requests came, nothing else
    assert payloads == (4,)


# ---- PostgreSQL ----------------------------------------------------------------------------------


@pytest.mark.postgres
def test_postgres_connection_is_reused_while_healthy(pg_url: str) -> None:
    db = Database(Settings(database_url=pg_url))

    async def scenario() -> None:
        first = await db.read(lambda conn: conn.one(PID))
        assert await db.read(lambda conn: conn.one(PID)) == first
        assert await db.write(lambda conn: conn.one(PID)) == first  # writes too
        assert await db.write(lambda conn: conn.one(PID), single=True) == first
        await db.close_loop()

    asyncio.run(scenario())


@pytest.mark.postgres
def test_postgres_write_units_commit_whole_or_not_at_all(pg_url: str) -> None:
    """A write unit runs in pipeline mode, a ``later`` write's result read only with the next
    statement's or at the COMMIT: whatever fails, a Python error after its writes or a
    statement after a ``later`` one, nothing of the unit stays, the error is the unit's own,
    and the connection goes back to the pool, idle, for the next write."""
    db = Database(Settings(database_url=pg_url))
    add = Statement(
        "add", "INSERT INTO accounts (name, created_at, cursor_key) VALUES (:name, 1, '')"
    )
    divide = Statement("divide", "SELECT 1 / :n")
    count = Statement("count", "SELECT count(*) FROM accounts WHERE name LIKE 'unit-%'")

    class Oops(Exception):
        pass

    async def python_error(conn: Conn) -> None:
        await conn.later(add, {"name": "unit-1"})
        await conn.run(add, {"name": "unit-2"})
        raise Oops

    async def statement_error(conn: Conn) -> None:
        await conn.later(add, {"name": "unit-3"})
        await conn.one(divide, {"n": 0})

    async def later_error(conn: Conn) -> None:
        await conn.later(add, {"name": "unit-4"})
        await conn.later(add, {"name": "unit-4"})  # a duplicate name, raised at the COMMIT

    async def counted(conn: Conn) -> tuple[int, int]:
        await conn.later(add, {"name": "unit-5"})
        changed = await conn.run(
            Statement("rename", "UPDATE accounts SET name = 'unit-6' WHERE name = 'unit-5'")
        )
        row = await conn.one(count)
        assert row is not None
        return changed, int(row[0])

    async def scenario() -> None:
        try:
            await steps()
        finally:
            await db.close_loop()

    async def steps() -> None:
        pid = await db.read(lambda conn: conn.one(PID))
        with pytest.raises(Oops):
            await db.write(python_error)
        with pytest.raises(psycopg.errors.DivisionByZero):
            await db.write(statement_error)
        with pytest.raises(psycopg.errors.UniqueViolation):
            await db.write(later_error)
        assert await db.read(lambda conn: conn.one(count)) == (0,)
        assert await db.write(counted) == (1, 1)  # a count read within the unit is right
        assert await db.read(lambda conn: conn.one(count)) == (1,)
        assert await db.write(lambda conn: conn.one(PID)) == pid  # one connection throughout

    asyncio.run(scenario())
    db.close()


@pytest.mark.postgres
def test_postgres_connection_killed_gives_one_503_then_recovers(pg_url: str) -> None:
    db = Database(Settings(database_url=pg_url))

    async def scenario() -> None:
        row = await db.read(lambda conn: conn.one(PID))
        assert row is not None
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (row[0],))
        with pytest.raises(Unavailable) as caught:
            await db.read(lambda conn: conn.one(PID))
        assert caught.value.status == 503 and caught.value.retry_after == 1
        again = await db.read(lambda conn: conn.one(PID))
        assert again is not None and again != row  # a fresh connection
        assert await db.read(lambda conn: conn.one(PID)) == again
        await db.close_loop()

    asyncio.run(scenario())


@pytest.mark.postgres
def test_postgres_query_cancelled_leaves_no_stuck_connection(pg_url: str) -> None:
    # one connection at most: a slot or a connection left stuck would block the next read
    db = Database(Settings(database_url=pg_url, pool_size=1, pool_timeout_seconds=1))

    async def scenario() -> None:
        task = asyncio.create_task(db.read(lambda conn: conn.one(SLEEP, {"seconds": 5})))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        started = time.monotonic()
        after = await db.read(lambda conn: conn.one(PID))
        assert time.monotonic() - started < 1
        assert after is not None
        await db.close_loop()

    asyncio.run(scenario())
    with psycopg.connect(pg_url, autocommit=True) as admin:
        sleeping = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND state = 'active' AND query LIKE 'SELECT pg_sleep%'"
        ).fetchone()
    assert sleeping == (0,)  # nothing left running on the server either


def test_postgres_away_is_503_at_once() -> None:
    db = Database(Settings(database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"))

    async def scenario() -> None:
        for _ in range(2):  # each time: no waiting for a pool to heal
            started = time.monotonic()
            with pytest.raises(Unavailable) as caught:
                await db.read(lambda conn: conn.one(PID))
            assert time.monotonic() - started < 1
            assert caught.value.status == 503
        with pytest.raises(Unavailable):
            await db.write(lambda conn: conn.one(PID))
        with pytest.raises(Unavailable):
            await db.read_together(PlusOnes(), 1)
        await db.close_loop()

    asyncio.run(scenario())


def run_closing(db: Database, scenario: Callable[[], Awaitable[T]]) -> T:
    """``scenario`` on an event loop of its own; then that loop's connections and the database
    are closed, whatever happened."""

    async def main() -> T:
        try:
            return await scenario()
        finally:
            await db.close_loop()

    try:
        return asyncio.run(main())
    finally:
        db.close()


class PlusOnes:
    """A ``Batch``: each ask ``n`` answered ``n + 1``, the asks of each read recorded. Asks
    of ``"slow"`` make the read wait first; one of ``"bad"`` makes its statement fail."""

    def __init__(self) -> None:
        self.reads: list[list[Any]] = []

    async def __call__(self, conn: Conn, asks: list[Any]) -> list[Any]:
        self.reads.append(asks)
        if "slow" in asks:
            await conn.one(SLEEP, {"seconds": 0.3})
            asks = [0 if ask == "slow" else ask for ask in asks]
        if not conn.postgres:
            return [(await conn.one(PLUS_ONE, {"n": ask}) or [None])[0] for ask in asks]
        rows = await conn.all(PLUS_ONES, {"ns": [str(ask) for ask in asks]})
        return [row[0] for row in rows]


def test_reads_asked_together_go_in_one_statement_on_postgres_and_alone_on_sqlite(
    database_url: str, engine: str
) -> None:
    """PostgreSQL: the asks that arrive together go in one read; those that arrive while a read
    is out go in the next. SQLite (in-thread reads of microseconds): each alone."""
    db = Database(Settings(database_url=database_url))
    batch = PlusOnes()

    async def scenario() -> tuple[list[Any], list[Any]]:
        together = await asyncio.gather(*(db.read_together(batch, n) for n in range(40)))
        if engine == "sqlite":
            return together, []
        slow = asyncio.create_task(db.read_together(batch, "slow"))
        await asyncio.sleep(0.1)  # the slow read is out
        meanwhile = await asyncio.gather(*(db.read_together(batch, n) for n in range(5)))
        assert await slow == 1
        return together, meanwhile

    together, meanwhile = run_closing(db, scenario)
    assert together == [n + 1 for n in range(40)]
    if engine == "sqlite":
        assert batch.reads == [[n] for n in range(40)]
        return
    assert meanwhile == [1, 2, 3, 4, 5]
    assert batch.reads == [list(range(40)), ["slow"], list(range(5))]


@pytest.mark.postgres
def test_postgres_a_failed_read_together_fails_each_of_its_asks_and_the_next_reads_again(
    pg_url: str,
) -> None:
    db = Database(Settings(database_url=pg_url, pool_size=1))
    batch = PlusOnes()

    async def scenario() -> tuple[list[Any], list[Any]]:
        failed = await asyncio.gather(
            *(db.read_together(batch, ask) for ask in (1, "bad", 3)), return_exceptions=True
        )
        return failed, await asyncio.gather(*(db.read_together(batch, n) for n in (4, 5)))

    failed, after = run_closing(db, scenario)
    assert [type(outcome) for outcome in failed] == [psycopg.errors.InvalidTextRepresentation] * 3
    assert after == [5, 6]  # the one connection came back, healthy
    assert batch.reads == [[1, "bad", 3], [4, 5]]


@pytest.mark.postgres
def test_postgres_an_ask_withdrawn_while_read_leaves_the_others_their_answers(
    pg_url: str,
) -> None:
    db = Database(Settings(database_url=pg_url))
    batch = PlusOnes()

    async def scenario() -> list[Any]:
        asks = [asyncio.create_task(db.read_together(batch, ask)) for ask in ("slow", 7, 8)]
        await asyncio.sleep(0.1)
        asks[1].cancel()  # its client went away mid-read
        outcomes = await asyncio.gather(*asks, return_exceptions=True)
        outcomes.append(await db.read_together(batch, 9))
        return outcomes

    outcomes = run_closing(db, scenario)
    assert outcomes[0] == 1 and outcomes[2] == 9 and outcomes[3] == 10
    assert isinstance(outcomes[1], asyncio.CancelledError)
    assert batch.reads == [["slow", 7, 8], [9]]


@pytest.mark.postgres
def test_postgres_all_connections_busy_is_503_after_the_pool_timeout(pg_url: str) -> None:
    db = Database(Settings(database_url=pg_url, pool_size=1, pool_timeout_seconds=0.5))

    async def scenario() -> None:
        busy = asyncio.create_task(db.read(lambda conn: conn.one(SLEEP, {"seconds": 1.5})))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        with pytest.raises(Unavailable, match="busy") as caught:
            await db.read(lambda conn: conn.one(PID))
        assert 0.4 < time.monotonic() - started < 1.2
        assert caught.value.retry_after == 1
        await busy
        assert await db.read(lambda conn: conn.one(PID)) is not None  # the slot came back
        await db.close_loop()

    asyncio.run(scenario())


def test_a_write_waiting_longer_than_the_busy_timeout_is_withdrawn_with_a_503(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write still waiting for the writer after the busy timeout is refused and never runs;
    one the writer has started is waited for (a 503 never hides a commit)."""
    from backstock.storage import database as module

    monkeypatch.setattr(module, "BUSY_TIMEOUT_MS", 200)

    async def writes() -> tuple[Any, Any]:
        held = await hold_the_writer(database, seconds=0.6)  # the writer is inside it now
        late = await asyncio.gather(database.write(insert("late")), return_exceptions=True)
        return await held, late[0]

    held, late = asyncio.run(writes())
    assert isinstance(held, int)  # started before the timeout: waited for, committed
    assert isinstance(late, Unavailable) and late.status == 503
    assert "late" not in names(database)  # withdrawn: never ran


# ---- SQLite: the writers of several processes on one file ------------------------------------------


def _held_writer_lock(db: Database) -> int:
    """Take the file's writer lock as another process's writer would (a file of its own)."""
    import fcntl
    import os

    fd = os.open(f"{sqlite_path(db.settings.database_url)}-writer", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_writers_of_two_processes_take_turns_on_the_file_lock(sqlite_url: str) -> None:
    """Two Databases on one file (two processes' writers): every write of both commits; a
    write waiting for the other's lock goes through as soon as it is let go."""
    import os

    first, second = (Database(Settings(database_url=sqlite_url)) for _ in range(2))
    try:

        async def both() -> None:
            held = await hold_the_writer(first, seconds=0.3)  # first holds the lock now
            waiting = asyncio.ensure_future(second.write(insert("second")))
            await asyncio.sleep(0.1)
            assert not waiting.done()  # queued on the lock, not failed
            await held
            await waiting
            await asyncio.gather(
                *(
                    db.write(insert(f"{n}-{d}"))
                    for n in range(20)
                    for d, db in enumerate((first, second))
                )
            )

        asyncio.run(both())
        assert len(names(first)) == 42 and names(first)[:2] == ["first", "second"]
        lock_file = f"{sqlite_path(sqlite_url)}-writer"
        assert os.stat(lock_file).st_mode & 0o777 == 0o600
    finally:
        first.close()
        second.close()


def test_a_writer_lock_held_past_the_busy_timeout_is_a_503_and_writes_nothing(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from backstock.storage import database as module

    monkeypatch.setattr(module, "BUSY_TIMEOUT_MS", 200)
    fd = _held_writer_lock(database)
    try:

        async def late() -> Any:
            return (await asyncio.gather(database.write(insert("late")), return_exceptions=True))[0]

        refused = asyncio.run(late())
    finally:
        os.close(fd)  # the other process lets go
    assert isinstance(refused, Unavailable) and refused.kind == "locked"
    assert names(database) == []
    asyncio.run(database.write(insert("after")))  # and the next write goes through
    assert names(database) == ["after"]


# ---- PostgreSQL: one-statement writes committed in groups -----------------------------------------

GROUPED_INSERT = Statement(
    "insert_account_in_txn",
    "INSERT INTO accounts (name, created_at, cursor_key) VALUES (:name, 1, '\\x00'::bytea) "
    "RETURNING id, txid_current()",
)


@pytest.mark.postgres
def test_postgres_one_statement_writes_share_commits_and_a_failure_is_its_own(
    pg_url: str,
) -> None:
    db = Database(Settings(database_url=pg_url))

    def grouped(name: str) -> Any:
        async def unit(conn: Conn) -> tuple[int, int]:
            row = await conn.one(GROUPED_INSERT, {"name": name})
            assert row is not None
            return int(row[0]), int(row[1])

        return unit

    async def writes() -> tuple[list[Any], list[Any]]:
        try:
            await db.write(grouped("taken"), single=True)
            together = await asyncio.gather(
                *(db.write(grouped(f"n{n}"), single=True) for n in range(30))
            )
            names = [f"m{n}" for n in range(30)]
            names[10] = "taken"  # its statement fails: the others must not
            with_a_failure = await asyncio.gather(
                *(db.write(grouped(name), single=True) for name in names), return_exceptions=True
            )
            return together, with_a_failure
        finally:
            await db.close_loop()

    try:
        together, outcomes = asyncio.run(writes())
    finally:
        db.close()
    assert len({txid for _, txid in together}) < len(together)  # some committed together
    failed = outcomes.pop(10)
    assert isinstance(failed, psycopg.errors.UniqueViolation)
    assert all(isinstance(o, tuple) for o in outcomes), outcomes
    with sql(pg_url) as conn:
        stored = conn.execute(sa_text("SELECT name FROM accounts WHERE name LIKE 'm%'")).all()
    assert len(stored) == 29


FAILING = Statement("fails", "SELECT 1 / 0")


@pytest.mark.postgres
def test_postgres_a_failed_group_leaves_no_statement_that_psycopg_alone_thinks_prepared(
    pg_url: str,
) -> None:
    """psycopg prepares a statement on its sixth run, and counts it prepared once its Parse is
    sent. In a group the Parse may follow a statement that fails, and PostgreSQL skips it: the
    connection, back in the pool, must not then run that statement by a name PostgreSQL does
    not know (each write of the failed group runs again alone, on the same connection)."""
    db = Database(Settings(database_url=pg_url))

    def grouped(name: str) -> Any:
        return insert(name, GROUPED_INSERT)

    async def failing(conn: Conn) -> None:
        await conn.one(FAILING)

    async def raising(conn: Conn) -> None:
        await conn.one(GROUPED_INSERT, {"name": "rolled back"})
        raise LookupError

    async def writes() -> tuple[list[Any], list[int]]:
        try:
            # psycopg forgets its prepared statements on a connection's first ROLLBACK only
            with pytest.raises(LookupError):
                await db.write(raising)
            for n in range(4):  # with the one above, five runs: the next one prepares it
                await db.write(grouped(f"p{n}"), single=True)
            group = await asyncio.gather(
                db.write(failing, single=True),
                db.write(grouped("p5"), single=True),
                return_exceptions=True,
            )
            after = [await db.write(grouped(f"q{n}"), single=True) for n in range(3)]
            return group, after
        finally:
            await db.close_loop()

    try:
        group, after = asyncio.run(writes())
    finally:
        db.close()
    assert isinstance(group[0], psycopg.errors.DivisionByZero)
    assert isinstance(group[1], int), group[1]
    assert len(after) == 3


@pytest.mark.postgres
def test_postgres_a_group_of_writes_waits_on_the_database_once_per_round_of_statements(
    pg_url: str,
) -> None:
    """A group runs in pipeline mode, its writes side by side: their first statements go in
    arrival order and their results come back together, then the second statements of those
    that have one, then the commit. 30 writes, a third of them with a second statement and a
    fifth raising a Python error after it: 3 waits (31 one after the other, 33 with psycopg's
    ``transaction()``), one transaction, each write its own outcome, the ids in arrival
    order, and the rows of a write that raised kept, as autocommit would keep them."""
    proxy = CuttableProxy(("127.0.0.1", 5432))
    db = Database(
        Settings(database_url=pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"))
    )

    def unit(n: int) -> Any:
        async def write(conn: Conn) -> tuple[int, ...]:
            row = await conn.one(GROUPED_INSERT, {"name": f"w{n}-a"})
            assert row is not None
            if n % 3 == 0:  # a second statement, once the first's result is in
                second = await conn.one(GROUPED_INSERT, {"name": f"w{n}-b"})
                assert second is not None and second[0] > row[0]
                row = (*row, second[0])
            if n % 5 == 0:
                raise LookupError(f"w{n}")
            return tuple(row)

        return write

    async def writes() -> tuple[int, list[Any]]:
        try:
            await db.write(unit(101), single=True)  # the connection opened, alone
            before = proxy.round_trips
            outcomes = await asyncio.gather(
                *(db.write(unit(n), single=True) for n in range(30)), return_exceptions=True
            )
            return proxy.round_trips - before, outcomes
        finally:
            await db.close_loop()

    try:
        waits, outcomes = asyncio.run(writes())
    finally:
        db.close()
        proxy.close()
    assert [str(o) for o in outcomes if isinstance(o, LookupError)] == [
        f"w{n}" for n in range(0, 30, 5)
    ]
    done = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(done) == 24
    assert len({o[1] for o in done}) == 1  # the 30 arrived before the group formed: one transaction
    firsts = [o[0] for o in done]
    assert firsts == sorted(firsts)  # sent in arrival order
    assert waits == 3
    with sql(pg_url) as conn:
        stored = conn.execute(sa_text("SELECT name FROM accounts WHERE name LIKE 'w%'")).scalars()
        names = set(stored)
    expected = {f"w{n}-a" for n in range(30)} | {f"w{n}-b" for n in range(0, 30, 3)} | {"w101-a"}
    assert names == expected
