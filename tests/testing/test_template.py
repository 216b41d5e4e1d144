"""A test server's database (``backstock.testing.template``) is what ``backstock migrate`` makes:
the same tables, columns, constraints and indexes, the same Alembic revision, WAL, mode 0600;
so Backstock and its tools take it as current."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from backstock.bootstrap import prepare_database
from backstock.settings import Settings
from backstock.storage import migrate
from backstock.testing import template


def _elements(body: str) -> list[str]:
    """The comma-separated elements of a CREATE TABLE's body (commas inside brackets kept)."""
    found, depth, start = [], 0, 0
    for at, char in enumerate(body):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            found.append(body[start:at])
            start = at + 1
    found.append(body[start:])
    return sorted(" ".join(element.split()) for element in found)


def schema(path: Path) -> dict[tuple[str, str], object]:
    """Every table, index and trigger. Columns and constraints are compared as sets: migrations
    that recreate a table (Alembic's batch mode) move added columns to its end, which nothing
    reads by position; everything else must match word for word (quoting aside)."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
        ).fetchall()
    found: dict[tuple[str, str], object] = {}
    for kind, name, sql in rows:
        text = sql.replace('"', "")
        if kind == "table":
            head, _, rest = text.partition("(")
            found[kind, name] = (" ".join(head.split()), _elements(rest.rpartition(")")[0]))
        else:
            found[kind, name] = " ".join(text.split())
    return found


def facts(path: Path) -> dict[str, object]:
    with sqlite3.connect(path) as conn:
        return {
            "revision": conn.execute("SELECT version_num FROM alembic_version").fetchall(),
            "journal_mode": conn.execute("PRAGMA journal_mode").fetchone()[0],
            "mode": oct(stat.S_IMODE(os.stat(path).st_mode) & 0o077),
        }


@pytest.fixture
def migrated(tmp_path: Path) -> Path:
    path = tmp_path / "migrated.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def made(tmp_path: Path) -> Path:
    path = tmp_path / "made.db"
    template.create(path)
    return path


def test_the_template_is_what_the_migrations_make(migrated: Path, made: Path) -> None:
    expected, got = schema(migrated), schema(made)
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert got[name] == expected[name], name
    assert facts(made) == facts(migrated)
    assert facts(made)["journal_mode"] == "wal" and facts(made)["mode"] == "0o0"


def test_the_head_revision_is_alembic_s(made: Path) -> None:
    url = f"sqlite:///{made}"
    assert migrate.pending(url) == (template.head_revision(), template.head_revision())
    migrate.check(url)  # the models and the file agree, as Alembic's autogenerate sees them


def test_backstock_takes_it_as_current(made: Path) -> None:
    before = schema(made)
    prepare_database(Settings(database_url=f"sqlite:///{made}"))  # migrates SQLite: nothing to do
    assert schema(made) == before


def test_a_branched_history_is_refused(tmp_path: Path) -> None:
    for name, down in (("a", "None"), ("b", '"a"'), ("c", '"a"')):
        (tmp_path / f"{name}.py").write_text(f'revision = "{name}"\ndown_revision = {down}\n')
    with pytest.raises(RuntimeError, match="2 heads"):
        template.head_revision(tmp_path)
    (tmp_path / "d.py").write_text('revision = "d"\ndown_revision = ("b", "c")\n')
    assert template.head_revision(tmp_path) == "d"


def test_an_existing_file_is_never_overwritten(made: Path) -> None:
    with pytest.raises(FileExistsError):
        template.create(made)
