"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-23 15:41:17.461720
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "accounts",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("open_jobs", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
        sa.UniqueConstraint("name", name=op.f("uq_accounts_name")),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column(
            "account_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("revoked_at", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_api_keys_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_account_id"), ["account_id"], unique=False)

    op.create_table(
        "catalog_items",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column(
            "account_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("external_id", sa.String(length=512), nullable=False),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("price", sa.Float(), nullable=True),
        sa.Column("image_full_url", sa.Text(), nullable=True),
        sa.Column("image_thumbnail_url", sa.Text(), nullable=True),
        sa.Column("images", sa.Text(), nullable=True),
        sa.Column("custom_metadata", sa.Text(), nullable=True),
        sa.Column("published", sa.Boolean(), nullable=True),
        sa.Column("categories", sa.Text(), server_default=sa.text("'[]'"), nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.Column("updated", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_catalog_items_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_catalog_items")),
        sa.UniqueConstraint(
            "account_id", "external_id", name=op.f("uq_catalog_items_account_id_external_id")
        ),
    )
    with op.batch_alter_table("catalog_items", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_catalog_items_account_id_pk"), ["account_id", "pk"], unique=False
        )

    op.create_table(
        "jobs",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column(
            "account_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("shape", sa.String(length=8), nullable=False),
        sa.Column("total_count", sa.Integer(), nullable=False),
        sa.Column("completed_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("failed_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("next_index", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("variant_linkage", sa.Text(), nullable=False),
        sa.Column("errors", sa.Text(), server_default=sa.text("'[]'"), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("completed_at", sa.BigInteger(), nullable=True),
        sa.Column("expires_at", sa.BigInteger(), nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", sa.BigInteger(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_jobs_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_jobs")),
        sa.UniqueConstraint("id", name=op.f("uq_jobs_id")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_jobs_account_id_pk"), ["account_id", "pk"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_jobs_account_id_status_pk"), ["account_id", "status", "pk"], unique=False
        )
        batch_op.create_index("ix_jobs_expires_at", ["expires_at"], unique=False)
        batch_op.create_index(
            "ix_jobs_open",
            ["account_id", "pk"],
            unique=False,
            sqlite_where=sa.text("status IN ('queued', 'processing')"),
            postgresql_where=sa.text("status IN ('queued', 'processing')"),
        )
        batch_op.create_index(
            "ix_jobs_queue",
            ["pk"],
            unique=False,
            sqlite_where=sa.text("status IN ('queued', 'processing')"),
            postgresql_where=sa.text("status IN ('queued', 'processing')"),
        )

    op.create_table(
        "catalog_variants",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column(
            "account_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("external_id", sa.String(length=512), nullable=False),
        sa.Column("item_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("price", sa.Float(), nullable=True),
        sa.Column("image_full_url", sa.Text(), nullable=True),
        sa.Column("image_thumbnail_url", sa.Text(), nullable=True),
        sa.Column("images", sa.Text(), nullable=True),
        sa.Column("custom_metadata", sa.Text(), nullable=True),
        sa.Column("published", sa.Boolean(), nullable=True),
        sa.Column("sku", sa.Text(), nullable=True),
        sa.Column("inventory_policy", sa.Integer(), nullable=True),
        sa.Column("inventory_quantity", sa.Float(), nullable=True),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.Column("updated", sa.BigInteger(), nullable=False),
        sa.Column("update_count", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_catalog_variants_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["item_pk"],
            ["catalog_items.pk"],
            name=op.f("fk_catalog_variants_item_pk_catalog_items"),
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_catalog_variants")),
        sa.UniqueConstraint(
            "account_id", "external_id", name=op.f("uq_catalog_variants_account_id_external_id")
        ),
    )
    with op.batch_alter_table("catalog_variants", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_catalog_variants_account_id_pk"), ["account_id", "pk"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_catalog_variants_account_id_sku"), ["account_id", "sku"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_catalog_variants_item_pk_pk"), ["item_pk", "pk"], unique=False
        )


def downgrade() -> None:

    with op.batch_alter_table("catalog_variants", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_catalog_variants_item_pk_pk"))
        batch_op.drop_index(batch_op.f("ix_catalog_variants_account_id_sku"))
        batch_op.drop_index(batch_op.f("ix_catalog_variants_account_id_pk"))

    op.drop_table("catalog_variants")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_jobs_queue",
            sqlite_where=sa.text("status IN ('queued', 'processing')"),
            postgresql_where=sa.text("status IN ('queued', 'processing')"),
        )
        batch_op.drop_index(
            "ix_jobs_open",
            sqlite_where=sa.text("status IN ('queued', 'processing')"),
            postgresql_where=sa.text("status IN ('queued', 'processing')"),
        )
        batch_op.drop_index("ix_jobs_expires_at")
        batch_op.drop_index(batch_op.f("ix_jobs_account_id_status_pk"))
        batch_op.drop_index(batch_op.f("ix_jobs_account_id_pk"))

    op.drop_table("jobs")
    with op.batch_alter_table("catalog_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_catalog_items_account_id_pk"))

    op.drop_table("catalog_items")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_account_id"))

    op.drop_table("api_keys")
    op.drop_table("accounts")
