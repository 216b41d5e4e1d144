"""SQLite failures that waiting can cure become ``Unavailable`` (503, ``Retry-After``) with a
detail naming the fault, and the worker retries them without counting them as a bug's."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.exc import OperationalError as SAOperationalError

from backstock.domain.errors import Unavailable
from backstock.settings import Settings
from backstock.storage import database, migrate
from backstock.storage.database import Database, translate_errors, unavailable_for
from backstock.worker import POISON_TRIES, Worker


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "faults.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def opened() -> Iterator[list[Database]]:
    made: list[Database] = []
    yield made
    for db in made:
        db.dispose()


def open_db(opened: list[Database], url: str) -> Database:
    opened.append(Database(Settings(database_url=url)))
    return opened[-1]


def insert_account(db: Database, name: str) -> None:
    with db.write() as conn:
        conn.execute(text("INSERT INTO accounts (name, created_at) VALUES (:n, 1)"), {"n": name})


def sqlite_error(message: str, code: int) -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError(message)
    exc.sqlite_errorcode = code  # type: ignore[attr-defined]
    return exc


@pytest.mark.parametrize(
    ("message", "code", "words", "retry_after"),
    [
        ("database is locked", sqlite3.SQLITE_BUSY, "locked by another writer", 1),
        ("database table is locked", sqlite3.SQLITE_LOCKED, "locked by another writer", 1),
        ("database or disk is full", sqlite3.SQLITE_FULL, "disk is full", 5),
        ("attempt to write a readonly database", sqlite3.SQLITE_READONLY, "read-only", 5),
        ("attempt to write a readonly database", sqlite3.SQLITE_READONLY_DBMOVED, "read-only", 5),
        ("disk I/O error", sqlite3.SQLITE_IOERR, "I/O error", 5),
        ("disk I/O error", 778, "I/O error", 5),  # SQLITE_IOERR_WRITE, as EFBIG gives
        ("unable to open database file", sqlite3.SQLITE_CANTOPEN, "cannot be opened", 5),
    ],
)
def test_each_sqlite_fault_has_its_own_503(
    message: str, code: int, words: str, retry_after: int
) -> None:
    raw = sqlite_error(message, code)
    for exc in (raw, SAOperationalError("COMMIT", {}, raw)):  # from a DriverQuery, or wrapped
        with pytest.raises(Unavailable) as caught, translate_errors():
            raise exc
        assert words in caught.value.detail
        assert caught.value.retry_after == retry_after
        assert caught.value.status == 503


def test_other_failures_are_not_unavailability() -> None:
    constraint = sqlite3.IntegrityError("UNIQUE constraint failed: accounts.name")
    constraint.sqlite_errorcode = sqlite3.SQLITE_CONSTRAINT_UNIQUE  # type: ignore[attr-defined]
    assert unavailable_for(IntegrityError("INSERT", {}, constraint)) is None
    assert unavailable_for(sqlite_error("no such table: nope", sqlite3.SQLITE_ERROR)) is None
    # PostgreSQL keeps its markers
    gone = unavailable_for(psycopg.OperationalError("server closed the connection unexpectedly"))
    assert gone is not None and "unavailable" in gone.detail


def test_a_read_only_file(db_path: Path, opened: list[Database]) -> None:
    db = open_db(opened, f"sqlite:///file:{db_path}?mode=ro&uri=true")
    before = Database.sqlite_reopens
    with db.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM accounts")).scalar() == 0
    with pytest.raises(Unavailable, match="read-only"):
        insert_account(db, "a")
    assert Database.sqlite_reopens == before + 1  # every connection closed, to open afresh
    with db.read() as conn:  # reads still served
        assert conn.execute(text("SELECT count(*) FROM accounts")).scalar() == 0


def write_past_the_last_page(db: Database) -> None:
    with db.write() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
        conn.exec_driver_sql(f"PRAGMA max_page_count={pages}")  # as if the disk had no more
        insert = text("INSERT INTO accounts (name, created_at) VALUES (:n, 1)")
        conn.execute(insert, {"n": "x" * 9000})


def test_a_full_database(db_path: Path, opened: list[Database]) -> None:
    db = open_db(opened, f"sqlite:///{db_path}")
    with pytest.raises(Unavailable, match="disk is full"):
        write_past_the_last_page(db)
    with db.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM accounts")).scalar() == 0


def test_a_file_that_cannot_be_opened(tmp_path: Path, opened: list[Database]) -> None:
    db = open_db(opened, f"sqlite:///{tmp_path / 'no such directory' / 'x.db'}")
    with pytest.raises(Unavailable, match="cannot be opened"), db.read():
        pass


def test_a_file_locked_by_another_connection(
    db_path: Path, opened: list[Database], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first write waits out the busy timeout; the next ones fail fast (not a full
    timeout each) until one gets through; then waits are full again."""
    monkeypatch.setattr(database, "BUSY_TIMEOUT_MS", 300)
    db = open_db(opened, f"sqlite:///{db_path}")
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(Unavailable, match="locked by another writer") as caught:
            insert_account(db, "a")
        assert caught.value.retry_after == 1
        assert db._locked_out
        with pytest.raises(Unavailable, match="locked by another writer"):
            insert_account(db, "b")
        other.execute("ROLLBACK")
        insert_account(db, "c")
        assert not db._locked_out
        with db.read() as conn:
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 300  # restored
    finally:
        other.close()


def test_threads_wait_for_the_write_lock_no_longer_than_the_busy_timeout(
    db_path: Path, opened: list[Database], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database, "BUSY_TIMEOUT_MS", 100)
    db = open_db(opened, f"sqlite:///{db_path}")
    assert db._write_lock is not None
    with (
        db._write_lock,  # another thread stuck in a write
        pytest.raises(Unavailable, match="locked by another writer"),
    ):
        insert_account(db, "a")


class _NoWait(threading.Event):
    def wait(self, timeout: float | None = None) -> bool:
        return self.is_set()


@pytest.mark.parametrize(
    ("failure", "poisoned"),
    [(Unavailable("The database's disk is full", retry_after=5), False), (RuntimeError(), True)],
)
def test_the_worker_counts_only_unexpected_failures_toward_a_poisoned_batch(
    failure: Exception, poisoned: bool
) -> None:
    """A batch failing because the database is locked, full or read-only is retried for as
    long as it takes; only a failure no wait can cure switches to ``on_poison`` after 5."""
    worker = Worker(jobs=None)  # type: ignore[arg-type]  # _retrying needs no jobs
    worker.stop = _NoWait()
    tries = 0

    def action() -> str:
        nonlocal tries
        tries += 1
        if tries <= POISON_TRIES * 3:
            raise failure
        return "applied"

    result = worker._retrying(action, on_poison=lambda: "poison")
    assert result == ("poison" if poisoned else "applied")
