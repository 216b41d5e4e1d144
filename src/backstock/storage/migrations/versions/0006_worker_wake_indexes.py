"""the worker's idle wake-up read from two small indexes, not the whole jobs table

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

A worker with nothing to claim asks when to look again: the earliest lease of a processing
job to lapse, or the earliest time a held job may be claimed (``next_lease_expiry``). Both
scanned the whole jobs table, finished jobs kept for days included, and a worker asks after
every wake-up: on PostgreSQL under ``make bench-peers``' POST load, with one account's queue
thousands of jobs long and every acceptance waking the worker, those scans (1.6 ms each at
5,000 jobs, growing with the table) took most of the database's CPU. Two partial indexes hold
only processing jobs' leases and held jobs' times; each answer is an index's first entry.
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
        ("ix_jobs_leases", "lease_expires_at", _PROCESSING),
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
