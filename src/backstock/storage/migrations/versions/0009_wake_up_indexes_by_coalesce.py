"""the worker's wake-up indexes test the status through COALESCE, as their query does

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05

``ix_jobs_leases`` (processing jobs) and ``ix_jobs_held`` (held jobs' times) were conditioned
on ``status = …``, which also implies the open jobs' index's condition: with statistics taken
when the queue was emptier, PostgreSQL's planner answered the idle wake-up
(``next_lease_expiry``) by reading that whole index (1.8 ms at 11,000 queued jobs, after every
acceptance that wakes an idle worker). Conditioned on ``COALESCE(status, '') = …`` (the same
test: the status is never NULL), and queried so, only they can answer it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_BEFORE = {
    "ix_jobs_leases": ("pk", "status = 'processing'"),
    "ix_jobs_held": ("not_before", "status = 'queued' AND not_before IS NOT NULL"),
}
_AFTER = {
    "ix_jobs_leases": ("pk", "COALESCE(status, '') = 'processing'"),
    "ix_jobs_held": ("not_before", "COALESCE(status, '') = 'queued' AND not_before IS NOT NULL"),
}


def _make(indexes: dict[str, tuple[str, str]]) -> None:
    for name, (column, where) in indexes.items():
        op.drop_index(name, table_name="jobs")
        op.create_index(
            name,
            "jobs",
            [column],
            unique=False,
            sqlite_where=sa.text(where),
            postgresql_where=sa.text(where),
        )


def upgrade() -> None:
    _make(_AFTER)


def downgrade() -> None:
    _make(_BEFORE)
