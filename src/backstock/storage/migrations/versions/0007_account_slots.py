"""an account's open jobs and bytes in a row of their own

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05

``accounts.open_jobs`` and ``accounts.open_bytes`` move to ``account_slots``. Every acceptance
and every job's end update them; on PostgreSQL each update leaves a dead version of the row
behind until vacuum. In the account's own row, which every key lookup and every poll joins, a
spawn round left hundreds of dead versions over some thirty pages, and the polls after it read
through them (bench/README.md, session 17). Every account gets its row, with its counters.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "account_slots",
        sa.Column("account_id", _SERIAL, nullable=False),
        sa.Column("open_jobs", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("open_bytes", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_account_slots_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_account_slots")),
    )
    op.execute(
        "INSERT INTO account_slots (account_id, open_jobs, open_bytes) "
        "SELECT id, open_jobs, open_bytes FROM accounts"
    )
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("open_bytes")
        batch.drop_column("open_jobs")


def downgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(
            sa.Column("open_jobs", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch.add_column(
            sa.Column("open_bytes", sa.BigInteger(), server_default=sa.text("0"), nullable=False)
        )
    op.execute(
        "UPDATE accounts SET"
        " open_jobs = COALESCE((SELECT s.open_jobs FROM account_slots AS s"
        " WHERE s.account_id = accounts.id), 0),"
        " open_bytes = COALESCE((SELECT s.open_bytes FROM account_slots AS s"
        " WHERE s.account_id = accounts.id), 0)"
    )
    op.drop_table("account_slots")
