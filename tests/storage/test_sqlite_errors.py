"""SQLite failures that waiting can cure become ``Unavailable`` (503, ``Retry-After``) with a
detail naming the fault, and the worker retries them without counting them as a bug's."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from backstock.bootstrap import build_services
from backstock.domain.errors import Unavailable
from backstock.domain.jobs import KINDS
from backstock.domain.keys import from_authorization
from backstock.domain.resources import ITEM, VARIANT
from backstock.services.container import Services
from backstock.settings import Settings, sqlite_path
from backstock.storage import catalog as catalog_store
from backstock.storage import database
from backstock.storage.database import Database, translate_errors, unavailable_for
from backstock.storage.sql import Conn, Statement
from backstock.worker import POISON_TRIES, Worker
from tests.support import bulk_body, call, item_body, make_key, variant_body

COUNT = Statement("count_accounts", "SELECT count(*) FROM accounts")
INSERT = Statement(
    "insert_account",
    "INSERT INTO accounts (name, created_at, cursor_key) VALUES (:name, 1, X'00')",
)
NAMED = Statement("named", "SELECT count(*) FROM accounts WHERE name = :name")
BUSY_TIMEOUT = Statement("busy_timeout", "PRAGMA busy_timeout")
PAGE_COUNT = Statement("page_count", "PRAGMA page_count")


@pytest.fixture
def db_path(sqlite_url: str) -> Path:
    return Path(sqlite_path(sqlite_url))


@pytest.fixture
def opened() -> Iterator[list[Database]]:
    made: list[Database] = []
    yield made
    for db in made:
        db.close()


def open_db(opened: list[Database], url: str) -> Database:
    opened.append(Database(Settings(database_url=url)))
    return opened[-1]


def count(db: Database) -> int:
    row = asyncio.run(db.read(lambda conn: conn.one(COUNT)))
    assert row is not None
    return int(row[0])


def insert_account(db: Database, name: str) -> None:
    asyncio.run(db.write(lambda conn: conn.run(INSERT, {"name": name})))


def sqlite_error(message: str, code: int) -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError(message)
    exc.sqlite_errorcode = code
    return exc


FAULTS = [
    ("database is locked", sqlite3.SQLITE_BUSY, "locked by another writer", 1),
    ("database table is locked", sqlite3.SQLITE_LOCKED, "locked by another writer", 1),
    ("locking protocol", sqlite3.SQLITE_PROTOCOL, "locked by another writer", 1),
    ("database or disk is full", sqlite3.SQLITE_FULL, "disk is full", 5),
    ("attempt to write a readonly database", sqlite3.SQLITE_READONLY, "read-only", 5),
    ("attempt to write a readonly database", sqlite3.SQLITE_READONLY_DBMOVED, "read-only", 5),
    ("disk I/O error", sqlite3.SQLITE_IOERR, "I/O error", 5),
    ("disk I/O error", 778, "I/O error", 5),  # SQLITE_IOERR_WRITE, as EFBIG gives
    ("unable to open database file", sqlite3.SQLITE_CANTOPEN, "cannot be opened", 5),
]


@pytest.mark.parametrize(("message", "code", "words", "retry_after"), FAULTS)
def test_each_sqlite_fault_has_its_own_503(
    message: str, code: int, words: str, retry_after: int
) -> None:
    raw = sqlite_error(message, code)
    with pytest.raises(Unavailable) as caught, translate_errors():
        raise raw
    assert caught.value.__cause__ is raw
    found = unavailable_for(raw)  # the writer thread's way
    for unavailable in (caught.value, found):
        assert unavailable is not None
        assert words in unavailable.detail
        assert unavailable.retry_after == retry_after
        assert unavailable.status == 503


@pytest.mark.parametrize(("message", "code", "words", "retry_after"), FAULTS)
def test_each_sqlite_fault_in_a_unit_of_work_is_its_503(
    sqlite_url: str, message: str, code: int, words: str, retry_after: int
) -> None:
    """Synthesized faults raised inside units of work, a write's (on the writer thread) and a
    read's (on the caller's): the caller gets the 503, and the write's changes are rolled
    back."""
    db = Database(Settings(database_url=sqlite_url))
    name = f"fault-{code}-{time.monotonic_ns()}"

    async def write_then_fail(conn: Conn) -> None:
        await conn.run(INSERT, {"name": name})
        raise sqlite_error(message, code)

    async def read_fails(_conn: Conn) -> None:
        raise sqlite_error(message, code)

    async def scenario() -> list[Unavailable]:
        caught = []
        for action in (db.write(write_then_fail), db.read(read_fails)):
            with pytest.raises(Unavailable) as failed:
                await action
            caught.append(failed.value)
        await db.close_loop()
        return caught

    try:
        for unavailable in asyncio.run(scenario()):
            assert words in unavailable.detail
            assert unavailable.retry_after == retry_after
        found = asyncio.run(db.read(lambda conn: conn.one(NAMED, {"name": name})))
        assert found == (0,)  # the write's insert was rolled back
    finally:
        db.close()


def test_other_failures_are_not_unavailability() -> None:
    constraint = sqlite3.IntegrityError("UNIQUE constraint failed: accounts.name")
    constraint.sqlite_errorcode = sqlite3.SQLITE_CONSTRAINT_UNIQUE
    assert unavailable_for(constraint) is None
    assert unavailable_for(sqlite_error("no such table: nope", sqlite3.SQLITE_ERROR)) is None
    assert unavailable_for(RuntimeError("a bug")) is None
    with pytest.raises(sqlite3.OperationalError), translate_errors():
        raise sqlite_error("no such table: nope", sqlite3.SQLITE_ERROR)
    # PostgreSQL keeps its markers
    gone = unavailable_for(psycopg.OperationalError("server closed the connection unexpectedly"))
    assert gone is not None and "unavailable" in gone.detail


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """The file cannot be written, even by root (immutable), until the block ends."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], check=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        path.chmod(0o400)
        try:
            yield
        finally:
            path.chmod(0o600)


def test_a_read_only_file(db_path: Path, opened: list[Database]) -> None:
    """Writes get the read-only 503 while reads are served; once the file is writable again,
    writes succeed (every connection of the process reopened, without a restart)."""
    db = open_db(opened, f"sqlite:///{db_path}")
    with read_only(db_path):
        assert count(db) == 0
        with pytest.raises(Unavailable, match="read-only") as caught:
            insert_account(db, "a")
        assert caught.value.retry_after == 5
        assert count(db) == 0  # reads still served
        with pytest.raises(Unavailable, match="read-only"):
            insert_account(db, "b")
    insert_account(db, "c")
    assert count(db) == 1


def test_a_full_database(db_path: Path, opened: list[Database]) -> None:
    db = open_db(opened, f"sqlite:///{db_path}")

    async def write_past_the_last_page(conn: Conn) -> None:
        row = await conn.one(PAGE_COUNT)
        assert row is not None
        # as if the disk had no more room (on this connection: the writer's)
        await conn.run(Statement("max_pages", f"PRAGMA max_page_count={row[0]}"))
        await conn.run(INSERT, {"name": "x" * 9000})

    with pytest.raises(Unavailable, match="disk is full") as caught:
        asyncio.run(db.write(write_past_the_last_page))
    assert caught.value.retry_after == 5
    assert count(db) == 0


def test_a_file_that_cannot_be_opened(tmp_path: Path, opened: list[Database]) -> None:
    db = open_db(opened, f"sqlite:///{tmp_path / 'no such directory' / 'x.db'}")
    with pytest.raises(Unavailable, match="cannot be opened"):
        count(db)
    with pytest.raises(Unavailable, match="cannot be opened"):
        insert_account(db, "a")


def test_a_file_locked_by_another_connection(
    db_path: Path, opened: list[Database], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first write waits out the busy timeout; the next ones fail fast (not a full
    timeout each) until one gets through; then waits are full again."""
    monkeypatch.setattr(database, "BUSY_TIMEOUT_MS", 1000)
    db = open_db(opened, f"sqlite:///{db_path}")
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(Unavailable, match="locked by another writer") as caught:
            insert_account(db, "a")
        assert time.monotonic() - started >= 0.9  # the whole busy timeout
        assert caught.value.retry_after == 1
        started = time.monotonic()
        with pytest.raises(Unavailable, match="locked by another writer"):
            insert_account(db, "b")
        assert time.monotonic() - started < 0.6  # hurried: locked out
        assert count(db) == 0  # reads are not held up by the lock
        other.execute("ROLLBACK")
        insert_account(db, "c")
        waited = asyncio.run(db.write(lambda conn: conn.one(BUSY_TIMEOUT)))
        assert waited == (1000,)  # restored on the writer's connection
    finally:
        other.close()
    assert count(db) == 1


# ---- the worker --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "poisoned"),
    [(Unavailable("The database's disk is full", retry_after=5), False), (RuntimeError(), True)],
)
def test_the_worker_counts_only_unexpected_failures_toward_a_poisoned_batch(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, failure: Exception, poisoned: bool
) -> None:
    """A batch failing because the database is locked, full or read-only is retried for as
    long as it takes; only a failure no wait can cure switches to ``on_poison`` after
    ``POISON_TRIES``."""
    services = build_services(Settings(database_url=sqlite_url))
    worker = Worker(services)
    tries = 0

    async def action() -> str:
        nonlocal tries
        tries += 1
        if tries <= POISON_TRIES * 3:
            raise failure
        return "applied"

    async def poison() -> str:
        return "poison"

    async def no_wait(_seconds: float) -> None:
        return None

    async def scenario() -> str | None:
        worker._stopping = asyncio.Event()
        monkeypatch.setattr(worker, "_sleep", no_wait)  # the backoff, not the counting, is tested
        return await worker._retrying(action, on_poison=poison)

    try:
        result = asyncio.run(scenario())
    finally:
        services.close()
    assert result == ("poison" if poisoned else "applied")
    assert tries == (POISON_TRIES if poisoned else POISON_TRIES * 3 + 1)


def io_error() -> sqlite3.OperationalError:
    return sqlite_error("disk I/O error", 778)  # SQLITE_IOERR_WRITE


@pytest.mark.parametrize(("failure", "outcome"), [(io_error, (6, 0)), (RuntimeError, (2, 4))])
def test_a_worker_retries_io_errors_for_as_long_as_they_last(
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
    failure: Callable[[], Exception],
    outcome: tuple[int, int],
) -> None:
    """A job of three batches whose second batch fails ``2 * POISON_TRIES`` times in a row:
    with I/O errors (503s) the worker keeps retrying and the job completes with every item
    applied; with a bug's error each batch is given up after ``POISON_TRIES``."""
    services = build_services(Settings(database_url=sqlite_url, worker_batch_size=2))
    try:
        run_failing_job(services, monkeypatch, failure, outcome)
    finally:
        services.close()


def run_failing_job(
    services: Services,
    monkeypatch: pytest.MonkeyPatch,
    failure: Callable[[], Exception],
    outcome: tuple[int, int],
) -> None:
    key = make_key(services, "acme")
    api_key = from_authorization(f"Klaviyo-API-Key {key}")
    who = call(services, lambda: services.accounts.authenticate(api_key))
    externals = [f"V{n}" for n in range(6)]

    async def seed() -> None:
        await services.catalog.create(who, ITEM, orjson.dumps(item_body("I")))
        for external in externals:
            await services.catalog.create(who, VARIANT, orjson.dumps(variant_body(external, "I")))

    call(services, seed)
    real = catalog_store.apply
    calls = 0

    async def failing(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if 1 < calls <= 1 + 2 * POISON_TRIES:  # the first batch (the claim's) applies
            raise failure()
        return await real(*args)

    monkeypatch.setattr(catalog_store, "apply", failing)
    kind = KINDS["catalog-variant-bulk-update-job"]
    body = orjson.dumps(bulk_body([(e, {"price": 1.25}) for e in externals]))
    job = call(services, lambda: services.jobs.spawn(who, kind, body))
    worker = Worker(services)
    backoff = asyncio.sleep

    async def short_backoff(_seconds: float) -> None:
        await backoff(0.001)  # the waits shortened: what counts as a bug's failure is tested

    monkeypatch.setattr(worker, "_sleep", short_backoff)
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while call(services, lambda: services.jobs.get(who, kind, job.id)).status != "complete":
            assert time.monotonic() < deadline, "the job did not complete"
            time.sleep(0.02)
    finally:
        worker.shutdown()
    done = call(services, lambda: services.jobs.get(who, kind, job.id))
    assert (done.completed_count, done.failed_count) == outcome
    errors = orjson.loads(done.errors)
    assert len(errors) == done.failed_count
    assert all(e["code"] == "internal_error" for e in errors)
    assert calls >= 1 + 2 * POISON_TRIES  # every failure happened
    prices = [record["price"] for record in call(
        services, lambda: services.catalog.store.get_many(VARIANT, who.account_id, externals)
    )]  # fmt: skip
    assert prices.count(1.25) == outcome[0]
