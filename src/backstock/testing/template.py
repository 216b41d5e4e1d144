"""The database of a test server: a SQLite file at the newest schema in milliseconds.

``backstock migrate`` runs Alembic, which costs most of a second (importing it, loading the
migration scripts, replaying them). A test server's database is always new, so it is made
instead from the tables the code declares (``storage.schema.metadata``), with Alembic's version
row written at the head revision, so that ``prepare_database``, ``backstock migrate`` and
``storage.migrate.pending`` find it current. It is built once per process, kept as the bytes of
the file, and written out for each server; ``tests/testing/test_template.py`` checks that it is
what ``storage.migrate.upgrade`` makes (the same tables, columns, constraints and indexes, the
same revision, WAL, mode 0600).
"""

from __future__ import annotations

import os
import re
import sqlite3
import tempfile
import threading
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.pool import NullPool

from backstock.storage.database import restrict_file
from backstock.storage.schema import metadata

VERSIONS = Path(__file__).parent.parent / "storage" / "migrations" / "versions"
_REVISION = re.compile(r"^revision\s*(?::\s*str\s*)?=\s*['\"]([^'\"]+)['\"]", re.MULTILINE)
_DOWN = re.compile(r"^down_revision\s*(?::[^=]+)?=\s*(.+)$", re.MULTILINE)
# Alembic's own DDL for its table, as it writes it on SQLite.
_VERSION_TABLE = (
    "CREATE TABLE alembic_version (\n\tversion_num VARCHAR(32) NOT NULL, \n"
    "\tCONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)\n)"
)

_lock = threading.Lock()
_image: bytes | None = None


def head_revision(versions: Path = VERSIONS) -> str:
    """The newest migration's revision, read from the scripts' text (importing Alembic to ask
    it would cost a tenth of a second). One head only: a branched history is refused."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in versions.glob("*.py"):
        text = script.read_text(encoding="utf-8")
        found = _REVISION.search(text)
        if found is None:
            continue
        revisions.add(found.group(1))
        down = _DOWN.search(text)
        if down is not None:
            parents.update(re.findall(r"['\"]([^'\"]+)['\"]", down.group(1)))
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"the migrations have {len(heads)} heads ({sorted(heads)}), not one")
    return heads.pop()


def build(path: str | Path) -> None:
    """Make a new SQLite database at ``path`` as ``backstock migrate`` would: the schema at the
    head revision, in WAL mode, readable by its owner only."""
    engine = create_engine(f"sqlite:///{path}", poolclass=NullPool)

    @event.listens_for(engine, "connect")
    def _quick(driver: sqlite3.Connection, _record: object) -> None:
        # A file nobody uses yet: no fsync is needed until it is complete (closing it syncs).
        driver.execute("PRAGMA synchronous=OFF")
        driver.execute("PRAGMA journal_mode=WAL")

    try:
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql(_VERSION_TABLE)
            conn.exec_driver_sql(
                "INSERT INTO alembic_version (version_num) VALUES (?)", (head_revision(),)
            )
    finally:
        engine.dispose()  # the last connection closes: the WAL is checkpointed into the file
    restrict_file(str(path))


def image() -> bytes:
    """The bytes of a new database (built on first use, then kept for the process)."""
    global _image  # noqa: PLW0603 - a per-process cache
    with _lock:
        if _image is None:
            with tempfile.TemporaryDirectory(prefix="backstock-template-") as folder:
                path = Path(folder) / "template.db"
                build(path)
                _image = path.read_bytes()
        return _image


def create(path: str | Path) -> None:
    """Write a new database at ``path`` (which must not exist), mode 0600."""
    data = image()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
