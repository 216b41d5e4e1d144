"""the fair queue's turns in a table of their own

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

``accounts.last_claim`` moves to ``account_turns``. Every acceptance updates the account's row
(its open jobs and bytes); a worker's claim updated it too, so on PostgreSQL an account's spawns
waited for the whole transaction of the batches claimed with it. The worker now frees the slots
of the jobs it ends with the last statement of its transaction.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "account_turns",
        sa.Column("account_id", _SERIAL, nullable=False),
        sa.Column("last_claim", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_account_turns_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_account_turns")),
    )
    op.execute(
        "INSERT INTO account_turns (account_id, last_claim) "
        "SELECT id, last_claim FROM accounts WHERE last_claim > 0"
    )
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("last_claim")


def downgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(
            sa.Column("last_claim", sa.BigInteger(), server_default=sa.text("0"), nullable=False)
        )
    op.execute(
        "UPDATE accounts SET last_claim = COALESCE("
        "(SELECT t.last_claim FROM account_turns AS t WHERE t.account_id = accounts.id), 0)"
    )
    op.drop_table("account_turns")
