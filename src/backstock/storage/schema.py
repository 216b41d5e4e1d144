"""The tables. Timestamps are integer microseconds since the epoch (UTC) on both databases;
JSON members are stored as text written by orjson. Every tenant table carries ``account_id``.
"""

from __future__ import annotations

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
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

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
    # Jobs queued or processing; the cap on it is checked and moved in the same transaction
    # as the job's insert and completion, so it holds across every API process.
    Column("open_jobs", Integer, nullable=False, server_default=text("0")),
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

_CATALOG_COLUMNS = (
    ("title", Text),
    ("description", Text),
    ("url", Text),
    ("price", Float),
    ("image_full_url", Text),
    ("image_thumbnail_url", Text),
    ("images", Text),
    ("custom_metadata", Text),
    ("published", Boolean),
)


def _catalog_columns() -> list[Column[object]]:
    return [Column(name, kind, nullable=True) for name, kind in _CATALOG_COLUMNS]


catalog_items = Table(
    "catalog_items",
    metadata,
    Column("pk", Serial, primary_key=True, autoincrement=True),
    Column("account_id", ForeignKey("accounts.id"), nullable=False),
    Column("external_id", String(512), nullable=False),
    *_catalog_columns(),
    Column("categories", Text, nullable=False, server_default=text("'[]'")),
    Column("created", BigInteger, nullable=False),
    Column("updated", BigInteger, nullable=False),
    UniqueConstraint("account_id", "external_id"),
    Index(None, "account_id", "pk"),
)

catalog_variants = Table(
    "catalog_variants",
    metadata,
    Column("pk", Serial, primary_key=True, autoincrement=True),
    Column("account_id", ForeignKey("accounts.id"), nullable=False),
    Column("external_id", String(512), nullable=False),
    Column("item_pk", ForeignKey("catalog_items.pk"), nullable=False),
    *_catalog_columns(),
    Column("sku", Text, nullable=True),
    Column("inventory_policy", Integer, nullable=True),
    Column("inventory_quantity", Float, nullable=True),
    Column("created", BigInteger, nullable=False),
    Column("updated", BigInteger, nullable=False),
    # How many bulk-job updates have landed on this row: lets tests and operators check
    # that every accepted update was applied exactly once.
    Column("update_count", BigInteger, nullable=False, server_default=text("0")),
    UniqueConstraint("account_id", "external_id"),
    Index(None, "account_id", "pk"),
    Index(None, "item_pk", "pk"),
    Index(None, "account_id", "sku"),
)

_OPEN = "status IN ('queued', 'processing')"

jobs = Table(
    "jobs",
    metadata,
    Column("pk", Serial, primary_key=True, autoincrement=True),
    Column("id", String(26), nullable=False, unique=True),
    Column("account_id", ForeignKey("accounts.id"), nullable=False),
    Column("status", String(16), nullable=False),
    Column("shape", String(8), nullable=False),
    Column("total_count", Integer, nullable=False),
    Column("completed_count", Integer, nullable=False, server_default=text("0")),
    Column("failed_count", Integer, nullable=False, server_default=text("0")),
    # Items [0, next_index) are applied and counted; moved in the same transaction as them.
    Column("next_index", Integer, nullable=False, server_default=text("0")),
    Column("payload", LargeBinary, nullable=False),
    # The request's variants as JSON:API resource identifiers, rendered once at acceptance.
    Column("variant_linkage", Text, nullable=False),
    Column("errors", Text, nullable=False, server_default=text("'[]'")),
    Column("created_at", BigInteger, nullable=False),
    Column("completed_at", BigInteger, nullable=True),
    Column("expires_at", BigInteger, nullable=True),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_expires_at", BigInteger, nullable=True),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Index(None, "account_id", "pk"),
    Index(None, "account_id", "status", "pk"),
    # The queue: only unfinished jobs, in acceptance order per account.
    Index(
        "ix_jobs_open",
        "account_id",
        "pk",
        sqlite_where=text(_OPEN),
        postgresql_where=text(_OPEN),
    ),
    Index("ix_jobs_queue", "pk", sqlite_where=text(_OPEN), postgresql_where=text(_OPEN)),
    Index("ix_jobs_expires_at", "expires_at"),
)
