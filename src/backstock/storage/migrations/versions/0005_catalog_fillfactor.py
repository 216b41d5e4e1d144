"""room on the catalog tables' pages for updates in place on PostgreSQL (fillfactor 70)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

PostgreSQL writes an updated row as a new version. When the new version fits on the page of
the old one and no indexed column changed, the update is "HOT": no index gets a new entry,
and the old version is pruned from the page by the next reader, without VACUUM. With the
default fillfactor of 100 the catalog tables' pages are full, so nearly every update of a
synced catalog (the same variants rewritten again and again) went to another page, added an
entry to each of the table's five indexes, and left a dead version that only VACUUM removes.
On the load of ``make bench-peers`` (the same 100 variants updated by every job; one API
process and its worker, one server at a time) 7 to 14 % of the updates were HOT; with pages
filled to 70 %, 47 to 48 %, and the worker applied 57 to 74 jobs a second instead of 33 to
50 while the API served 2,728 to 2,900 polls a second instead of 2,093 to 2,554.

Only pages written from now on are filled to 70 %; ``VACUUM FULL`` (or pg_repack) rewrites
an existing table. SQLite has no such setting: nothing changes there.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TABLES = ("catalog_items", "catalog_variants", "catalog_categories")
FILLFACTOR = 70


def upgrade() -> None:
    _fill(f"SET (fillfactor = {FILLFACTOR})")


def downgrade() -> None:
    _fill("RESET (fillfactor)")


def _fill(clause: str) -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    for table in TABLES:
        conn.execute(sa.text(f"ALTER TABLE {table} {clause}"))
