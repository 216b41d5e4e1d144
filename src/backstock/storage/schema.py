"""The tables. The catalog tables' attribute columns come from the resource descriptions
(``domain.resources``). Timestamps are integer microseconds since the epoch (UTC) on both
databases; JSON attributes are stored as the JSON text of their value. Every tenant table
carries ``account_id``, and every query filters by it.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from backstock.domain.ids import MAX_EXTERNAL_ID
from backstock.domain.resources import CATEGORY, ITEM, RESOURCES, VARIANT, Resource

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only makes INTEGER PRIMARY KEY an alias of the rowid; PostgreSQL wants BIGINT.
Serial = BigInteger().with_variant(Integer(), "sqlite")

accounts = Table(
    "accounts",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("created_at", BigInteger, nullable=False),
    # The key its page cursors are enciphered with (domain.pagination).
    Column("cursor_key", LargeBinary, nullable=False),
)

# An account's jobs queued or processing, and the bytes of their payloads (and of failed items
# kept for a retry); the caps on them are checked and moved in the same transaction as the
# job's insert and completion, so they hold across every API process. A row of their own, made
# with the account: every acceptance and every job's end update it, and on PostgreSQL each
# update leaves a dead version behind; in the account's own row, which every key lookup and
# every poll joins, those versions slowed the reads (bench/README.md, session 17).
account_slots = Table(
    "account_slots",
    metadata,
    Column("account_id", ForeignKey("accounts.id"), primary_key=True),
    Column("open_jobs", Integer, nullable=False, server_default=text("0")),
    Column("open_bytes", BigInteger, nullable=False, server_default=text("0")),
)

# When a worker last claimed a job of an account (no row: never): claims go to the account
# served least recently (fair queues: one account's backlog does not hold up the others). A
# table of the workers' own: every acceptance updates the account's slots, and a claim updating
# them too would hold that row locked while the claimed batches apply.
account_turns = Table(
    "account_turns",
    metadata,
    Column("account_id", ForeignKey("accounts.id"), primary_key=True),
    Column("last_claim", BigInteger, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", ForeignKey("accounts.id"), nullable=False, index=True),
    Column("secret_hash", String(64), nullable=False),
    Column("scopes", String(200), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger, nullable=True),
)

COLUMN_TYPES: Final[dict[str, Any]] = {
    "text": Text,
    "number": Float,
    "policy": Integer,
    "boolean": Boolean,
    "strings": Text,  # JSON
    "metadata": Text,  # JSON
}
JSON_KINDS: Final = frozenset({"strings", "metadata"})


def _catalog_table(res: Resource, *extra: Any) -> Table:
    """A catalog resource's table: its key, account, external id, one column per stored
    attribute, and its timestamps. On PostgreSQL its pages are filled to 70 % (migration
    0005), leaving room for updates in place."""
    attributes = [
        Column(a.name, COLUMN_TYPES[a.kind], nullable=True)
        for a in res.stored
        if a.kind != "identity"
    ]
    return Table(
        res.table,
        metadata,
        Column("pk", Serial, primary_key=True, autoincrement=True),
        Column("account_id", ForeignKey("accounts.id"), nullable=False),
        Column("external_id", String(MAX_EXTERNAL_ID), nullable=False),
        *attributes,
        Column("created", BigInteger, nullable=False),
        Column("updated", BigInteger, nullable=False),
        # How many updates have landed on this row: lets tests and operators check that
        # every accepted update was applied exactly once.
        Column("update_count", BigInteger, nullable=False, server_default=text("0")),
        UniqueConstraint("account_id", "external_id"),
        Index(None, "account_id", "pk"),
        *extra,
    )


catalog_items = _catalog_table(ITEM)
catalog_categories = _catalog_table(CATEGORY)
catalog_variants = _catalog_table(
    VARIANT,
    Column("item_pk", ForeignKey("catalog_items.pk"), nullable=False),
    Index(None, "item_pk", "pk"),
    Index(None, "account_id", "sku"),
)

item_categories = Table(
    "item_categories",
    metadata,
    Column("account_id", ForeignKey("accounts.id"), nullable=False),
    Column("item_pk", ForeignKey("catalog_items.pk"), nullable=False),
    Column("category_pk", ForeignKey("catalog_categories.pk"), nullable=False),
    PrimaryKeyConstraint("item_pk", "category_pk"),
    Index(None, "category_pk", "item_pk"),
)
"""Which items are in which categories (``catalog-item`` ⟷ ``catalog-category``)."""

TABLES: Final = MappingProxyType(
    {res.type: metadata.tables[res.table] for res in RESOURCES.values()}
)

_OPEN = "status IN ('queued', 'processing')"
# The wake-up's indexes test the status through COALESCE (never NULL: the same test), and its
# query (storage/jobs.py ``_NEXT_LAPSE``) is written with these very conditions, so that it
# always matches them: PostgreSQL's planner then cannot answer it from the open jobs' index
# (migration 0009).
PROCESSING = "COALESCE(status, '') = 'processing'"
HELD = "COALESCE(status, '') = 'queued' AND not_before IS NOT NULL"

jobs = Table(
    "jobs",
    metadata,
    Column("pk", Serial, primary_key=True, autoincrement=True),
    Column("id", String(26), nullable=False, unique=True),
    Column("account_id", ForeignKey("accounts.id"), nullable=False),
    Column("kind", String(48), nullable=False),
    Column("status", String(16), nullable=False),
    Column("shape", String(8), nullable=False),
    Column("total_count", Integer, nullable=False),
    Column("completed_count", Integer, nullable=False, server_default=text("0")),
    Column("failed_count", Integer, nullable=False, server_default=text("0")),
    # Items [0, next_index) are applied and counted; moved in the same transaction as them.
    Column("next_index", Integer, nullable=False, server_default=text("0")),
    # The request's resources as JSON:API resource identifiers, rendered once at acceptance.
    Column("linkage", Text, nullable=False),
    Column("errors", Text, nullable=False, server_default=text("'[]'")),
    Column("created_at", BigInteger, nullable=False),
    Column("completed_at", BigInteger, nullable=True),
    Column("expires_at", BigInteger, nullable=True),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_expires_at", BigInteger, nullable=True),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    # Extensions (docs/extensions.md): the client's Idempotency-Key and a hash of its request,
    # the job this one retries the failed items of, and a time before which it is not claimed
    # (only the test faults set one).
    Column("idempotency_key", String(255), nullable=True),
    Column("request_hash", String(64), nullable=True),
    Column("retry_of", String(26), nullable=True),
    Column("not_before", BigInteger, nullable=True),
    Index(None, "account_id", "pk"),
    Index(None, "account_id", "kind", "pk"),
    # One job per key and account (a concurrent retry of the same spawn finds the first).
    Index(
        "ix_jobs_idempotency",
        "account_id",
        "idempotency_key",
        unique=True,
        sqlite_where=text("idempotency_key IS NOT NULL"),
        postgresql_where=text("idempotency_key IS NOT NULL"),
    ),
    # One retry job per source job.
    Index(
        "ix_jobs_retry_of",
        "account_id",
        "retry_of",
        unique=True,
        sqlite_where=text("retry_of IS NOT NULL"),
        postgresql_where=text("retry_of IS NOT NULL"),
    ),
    # The queue: only unfinished jobs, in acceptance order per account.
    Index(
        "ix_jobs_open",
        "account_id",
        "pk",
        sqlite_where=text(_OPEN),
        postgresql_where=text(_OPEN),
    ),
    Index("ix_jobs_expires_at", "expires_at"),
    # The worker's idle wake-up (``next_lease_expiry``): the processing jobs, a few rows, and
    # the earliest held job's time. Keyed on pk, not on the lease: a lease is renewed every
    # batch, and on PostgreSQL a write to an indexed column is never a HOT update.
    Index(
        "ix_jobs_leases",
        "pk",
        sqlite_where=text(PROCESSING),
        postgresql_where=text(PROCESSING),
    ),
    Index(
        "ix_jobs_held",
        "not_before",
        sqlite_where=text(HELD),
        postgresql_where=text(HELD),
    ),
)

job_payloads = Table(
    "job_payloads",
    metadata,
    Column("job_pk", ForeignKey("jobs.pk", ondelete="CASCADE"), primary_key=True),
    # The validated request, ``[[external_id, {attributes}, {relation: [ids]}], ...]``: kept
    # apart from the job row, which every claim and batch rewrites, and deleted when the job
    # completes (the job document and ``include`` need only the linkage).
    Column("payload", LargeBinary, nullable=False),
)

# ---- webhooks (docs/extensions.md) ----------------------------------------------------------

webhooks = Table(
    "webhooks",
    metadata,
    Column("account_id", ForeignKey("accounts.id"), primary_key=True),
    Column("url", Text, nullable=False),
    Column("secret", String(128), nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("pk", Serial, primary_key=True, autoincrement=True),
    Column("account_id", ForeignKey("accounts.id"), nullable=False),
    Column("job_id", String(26), nullable=False),
    Column("event", String(32), nullable=False),
    # The body, written with the job's end (the outbox): the job may expire before delivery.
    Column("payload", LargeBinary, nullable=False),
    Column("status", String(16), nullable=False, server_default=text("'pending'")),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_at", BigInteger, nullable=True),
    Column("last_status", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("delivered_at", BigInteger, nullable=True),
    Index(None, "account_id", "pk"),
    # What workers scan: the pending deliveries, by when they are due.
    Index(
        "ix_webhook_deliveries_due",
        "next_attempt_at",
        sqlite_where=text("status = 'pending'"),
        postgresql_where=text("status = 'pending'"),
    ),
)
