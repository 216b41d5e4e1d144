"""the whole Catalogs API: categories, item-category links, every job kind, payloads apart

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

- ``catalog_categories`` and ``item_categories`` (many-to-many). The ids an item used to keep in
  its ``categories`` JSON column become links, to categories created for them (named by their
  external id) where none exists.
- ``update_count`` on items (variants had it already).
- accounts: ``open_bytes`` (the queued-bytes quota), ``last_claim`` (fair claiming) and
  ``cursor_key`` (a random key per account for its page cursors).
- jobs: ``idempotency_key``, ``request_hash``, ``retry_of`` and ``not_before`` (the extensions of
  docs/extensions.md), each key unique per account where set; ``webhooks`` and their
  ``webhook_deliveries``.
- ``jobs.kind``: every job so far was a catalog-variant bulk update job. ``variant_linkage`` is
  now ``linkage``. The payload moves to ``job_payloads`` (unfinished jobs only: a finished job
  needs none), as ``[external_id, changes, {}]`` triples, lz4-compressed on PostgreSQL where it
  can be.
"""

from __future__ import annotations

import json
import os
import time

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "catalog_categories",
        sa.Column("pk", _SERIAL, autoincrement=True, nullable=False),
        sa.Column("account_id", _SERIAL, nullable=False),
        sa.Column("external_id", sa.String(length=512), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.Column("updated", sa.BigInteger(), nullable=False),
        sa.Column("update_count", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_catalog_categories_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_catalog_categories")),
        sa.UniqueConstraint(
            "account_id", "external_id", name=op.f("uq_catalog_categories_account_id_external_id")
        ),
    )
    op.create_index(
        op.f("ix_catalog_categories_account_id_pk"), "catalog_categories", ["account_id", "pk"]
    )
    op.create_table(
        "item_categories",
        sa.Column("account_id", _SERIAL, nullable=False),
        sa.Column("item_pk", _SERIAL, nullable=False),
        sa.Column("category_pk", _SERIAL, nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_item_categories_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["category_pk"],
            ["catalog_categories.pk"],
            name=op.f("fk_item_categories_category_pk_catalog_categories"),
        ),
        sa.ForeignKeyConstraint(
            ["item_pk"], ["catalog_items.pk"], name=op.f("fk_item_categories_item_pk_catalog_items")
        ),
        sa.PrimaryKeyConstraint("item_pk", "category_pk", name=op.f("pk_item_categories")),
    )
    op.create_index(
        op.f("ix_item_categories_category_pk_item_pk"),
        "item_categories",
        ["category_pk", "item_pk"],
    )
    _categories_to_links()
    with op.batch_alter_table("catalog_items") as batch:
        batch.drop_column("categories")
        batch.add_column(
            sa.Column("update_count", sa.BigInteger(), server_default=sa.text("0"), nullable=False)
        )

    op.create_table(
        "job_payloads",
        sa.Column("job_pk", _SERIAL, nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_pk"], ["jobs.pk"], name=op.f("fk_job_payloads_job_pk_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_pk", name=op.f("pk_job_payloads")),
    )
    _payloads_apart()
    _fast_compression()
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(
            sa.Column("open_bytes", sa.BigInteger(), server_default=sa.text("0"), nullable=False)
        )
        batch.add_column(
            sa.Column("last_claim", sa.BigInteger(), server_default=sa.text("0"), nullable=False)
        )
        batch.add_column(sa.Column("cursor_key", sa.LargeBinary(), nullable=True))
    conn = op.get_bind()
    for (account,) in conn.execute(sa.text("SELECT id FROM accounts")).all():
        conn.execute(
            sa.text("UPDATE accounts SET cursor_key = :key WHERE id = :id"),
            {"key": os.urandom(16), "id": account},
        )
    for pk, size in conn.execute(
        sa.text("SELECT j.account_id, SUM(LENGTH(p.payload)) FROM job_payloads AS p "
                "JOIN jobs AS j ON j.pk = p.job_pk GROUP BY j.account_id")
    ).all():  # fmt: skip
        conn.execute(
            sa.text("UPDATE accounts SET open_bytes = :size WHERE id = :id"),
            {"size": int(size), "id": pk},
        )
    with op.batch_alter_table("accounts") as batch:
        batch.alter_column("cursor_key", existing_type=sa.LargeBinary(), nullable=False)
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column(
                "kind",
                sa.String(length=48),
                server_default="catalog-variant-bulk-update-job",
                nullable=False,
            )
        )
        batch.alter_column("variant_linkage", new_column_name="linkage")
        batch.drop_column("payload")
        batch.drop_index("ix_jobs_account_id_status_pk")
        batch.create_index(op.f("ix_jobs_account_id_kind_pk"), ["account_id", "kind", "pk"])
        batch.add_column(sa.Column("idempotency_key", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("request_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("retry_of", sa.String(length=26), nullable=True))
        batch.add_column(sa.Column("not_before", sa.BigInteger(), nullable=True))
        set_key = sa.text("idempotency_key IS NOT NULL")
        batch.create_index(
            "ix_jobs_idempotency", ["account_id", "idempotency_key"], unique=True,
            sqlite_where=set_key, postgresql_where=set_key,
        )  # fmt: skip
        set_retry = sa.text("retry_of IS NOT NULL")
        batch.create_index(
            "ix_jobs_retry_of", ["account_id", "retry_of"], unique=True,
            sqlite_where=set_retry, postgresql_where=set_retry,
        )  # fmt: skip
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("kind", server_default=None)
    _webhooks()


def _webhooks() -> None:
    op.create_table(
        "webhooks",
        sa.Column("account_id", _SERIAL, nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_webhooks_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_webhooks")),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("pk", _SERIAL, autoincrement=True, nullable=False),
        sa.Column("account_id", _SERIAL, nullable=False),
        sa.Column("job_id", sa.String(length=26), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(length=16), server_default=sa.text("'pending'"),
                  nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("next_attempt_at", sa.BigInteger(), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("delivered_at", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"],
            name=op.f("fk_webhook_deliveries_account_id_accounts"),
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_webhook_deliveries")),
    )  # fmt: skip
    op.create_index(
        op.f("ix_webhook_deliveries_account_id_pk"), "webhook_deliveries", ["account_id", "pk"]
    )
    pending = sa.text("status = 'pending'")
    op.create_index(
        "ix_webhook_deliveries_due", "webhook_deliveries", ["next_attempt_at"],
        sqlite_where=pending, postgresql_where=pending,
    )  # fmt: skip


def _categories_to_links() -> None:
    conn = op.get_bind()
    now = time.time_ns() // 1000
    items = conn.execute(
        sa.text("SELECT pk, account_id, categories FROM catalog_items WHERE categories <> '[]'")
    ).all()
    for item_pk, account, categories in items:
        for compound in dict.fromkeys(json.loads(categories)):
            external = str(compound).split(":::", 2)[-1]
            find = sa.text(
                "SELECT pk FROM catalog_categories WHERE account_id = :a AND external_id = :e"
            )
            category = conn.execute(find, {"a": account, "e": external}).scalar()
            if category is None:
                conn.execute(
                    sa.text(
                        "INSERT INTO catalog_categories (account_id, external_id, name, created, "
                        "updated) VALUES (:a, :e, :name, :now, :now)"
                    ),
                    # the name its own parameter: PostgreSQL cannot type one as both
                    # varchar (external_id) and text (name)
                    {"a": account, "e": external, "name": external, "now": now},
                )
                category = conn.execute(find, {"a": account, "e": external}).scalar()
            conn.execute(
                sa.text(
                    "INSERT INTO item_categories (account_id, item_pk, category_pk) "
                    "VALUES (:a, :i, :c)"
                ),
                {"a": account, "i": item_pk, "c": category},
            )


def _fast_compression() -> None:
    """PostgreSQL 14+ built with lz4: payloads compressed with lz4 rather than pglz, as small
    and about three times cheaper to read back (each claim reads one). Elsewhere, pglz stays."""
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    try:
        with conn.begin_nested():
            conn.execute(
                sa.text("ALTER TABLE job_payloads ALTER COLUMN payload SET COMPRESSION lz4")
            )
    except sa.exc.DBAPIError:
        pass


def _payloads_apart() -> None:
    conn = op.get_bind()
    rows = conn.execute(
        sa.text("SELECT pk, payload FROM jobs WHERE status IN ('queued', 'processing')")
    ).all()
    for pk, payload in rows:
        triples = [[external, changes, {}] for external, changes in json.loads(bytes(payload))]
        conn.execute(
            sa.text("INSERT INTO job_payloads (job_pk, payload) VALUES (:pk, :payload)"),
            {"pk": pk, "payload": json.dumps(triples, separators=(",", ":")).encode()},
        )


def downgrade() -> None:
    raise NotImplementedError("0002 has no downgrade: restore a backup taken before upgrading")
