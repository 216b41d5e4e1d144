"""the worker's idle wake-up read from two small indexes, not the whole jobs table

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

A worker with nothing to claim asks when to look again: the earliest lease of a processing
job to lapse, or the earliest time a held job may be claimed (``next_lease_expiry``). Both
halves of the query scanned the whole jobs table, finished jobs kept for days included (on
PostgreSQL 1.6 ms for the two at 5,000 jobs, growing with the table), and a worker asks after
every wake-up: under a steady POST load, after every acceptance. Two partial indexes hold only
the processing jobs (by ``pk``: a lease is renewed every batch, and on PostgreSQL an update
that changes an indexed column is never HOT) and the held jobs' times.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_PROCESSING = "status = 'processing'"
_HELD = "status = 'queued' AND not_before IS NOT NULL"


def upgrade() -> None:
    for name, column, where in (
        ("ix_jobs_leases", "pk", _PROCESSING),
        ("ix_jobs_held", "not_before", _HELD),
    ):
        op.create_index(
            name,
            "jobs",
            [column],
            unique=False,
            sqlite_where=sa.text(where),
            postgresql_where=sa.text(where),
        )


def downgrade() -> None:
    op.drop_index("ix_jobs_held", table_name="jobs")
    op.drop_index("ix_jobs_leases", table_name="jobs")
