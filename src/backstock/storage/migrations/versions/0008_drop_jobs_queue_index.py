"""the open jobs in one partial index, not two

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05

``ix_jobs_queue`` held the open jobs by ``pk`` alone, from the time a claim took the oldest open
job of all; since the fair queues each account's head is found in ``ix_jobs_open`` (by account,
then ``pk``), and nothing needs the other. It was worse than idle: with statistics taken when
the queue was emptier, PostgreSQL's planner found each account's head by walking it in ``pk``
order, past every other account's open jobs, rather than by the account in ``ix_jobs_open``.
Every acceptance and every job's end also wrote to it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_OPEN = "status IN ('queued', 'processing')"


def upgrade() -> None:
    op.drop_index("ix_jobs_queue", table_name="jobs")


def downgrade() -> None:
    op.create_index(
        "ix_jobs_queue",
        "jobs",
        ["pk"],
        unique=False,
        sqlite_where=sa.text(_OPEN),
        postgresql_where=sa.text(_OPEN),
    )
