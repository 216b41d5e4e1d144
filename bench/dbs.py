"""Scratch databases (a SQLite file, or a PostgreSQL database created and dropped per run), the
catalog they hold, an API key, and jobs queued through Backstock's own service layer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from backstock.bootstrap import build_services, run
from backstock.domain.jobs import KINDS
from backstock.domain.keys import Principal, from_authorization
from backstock.services.container import Services
from backstock.settings import Settings
from backstock.storage import migrate
from bench.payload import CATALOG_COLUMNS, bulk_body, catalog_row, external_id, job_updates

DEFAULT_PG = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
"""The PostgreSQL admin URL every benchmark makes its scratch databases with."""
ACCOUNT = "bench"
SCOPES = ("catalogs:read", "catalogs:write")
UPDATE_JOB = KINDS["catalog-variant-bulk-update-job"]


@dataclass
class Scratch:
    """One database of one engine, migrated, with the account ``bench`` and its key."""

    kind: str
    """``sqlite`` or ``postgresql``."""
    url: str
    label: str
    pg_admin: str | None = None
    pg_name: str | None = None
    key: str = ""
    account_id: int = 0
    variant_ids: list[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        return self.url.removeprefix("sqlite:///")

    def connect(self) -> Any:
        """A plain DB-API connection (autocommit) for the benchmark's own reads and seeding."""
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=10000")
            return conn
        return psycopg.connect(self.url, autocommit=True)

    @property
    def mark(self) -> str:
        return "?" if self.kind == "sqlite" else "%s"

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": self.url,
            "rate_limits": "off",
            "run_worker": False,
            "max_jobs_in_progress": 1_000_000_000,
            "max_queued_bytes": 2**50,
        }
        return Settings(**(values | overrides))

    def drop(self) -> None:
        if self.kind == "sqlite":
            for suffix in ("", "-wal", "-shm"):
                Path(self.path + suffix).unlink(missing_ok=True)
            return
        assert self.pg_admin is not None
        with psycopg.connect(self.pg_admin, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')


def pg_url(admin: str, name: str) -> str:
    return admin.rsplit("/", 1)[0] + "/" + name


def check_postgres(admin: str) -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
            return None if conn.execute("SELECT 1").fetchone() else "no answer"
    except psycopg.Error as exc:
        return str(exc).strip()


async def principal(services: Services, key: str) -> Principal:
    """Who ``key`` is, authenticated as the API authenticates a request."""
    return await services.accounts.authenticate(from_authorization(f"Klaviyo-API-Key {key}"))


@contextlib.contextmanager
def scratch(kind: str, label: str, workdir: Path, pg_admin: str) -> Iterator[Scratch]:
    """A fresh, migrated database with a key; dropped (file or database) when done."""
    if kind == "sqlite":
        db = Scratch(kind, f"sqlite:///{workdir / f'{label}.db'}", label)
    else:
        name = f"backstock_bench_{label}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(pg_admin, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        db = Scratch(kind, pg_url(pg_admin, name), label, pg_admin, name)
    try:
        migrate.upgrade(db.url)
        services = build_services(db.settings())
        try:
            db.key = run(services, lambda: services.accounts.create_key(ACCOUNT, SCOPES)).key
            db.account_id = run(services, lambda: principal(services, db.key)).account_id
        finally:
            services.close()
        yield db
    finally:
        db.drop()


def seed_catalog(db: Scratch, variants: int, seed: int = 1) -> list[str]:
    """``variants`` variants with random external ids (ten per item), bulk-inserted."""
    rng = random.Random(seed)
    now = time.time_ns() // 1000
    items = max(1, variants // 10)
    ids = list(dict.fromkeys(external_id(rng) for _ in range(variants)))
    conn = db.connect()
    try:
        item_rows = [
            (db.account_id, f"I{n:08d}", f"Item {n}", "https://shop.example.com/i", now, now)
            for n in range(items)
        ]
        item_cols = "account_id, external_id, title, url, created, updated"
        variant_cols = (
            f"account_id, external_id, item_pk, {', '.join(CATALOG_COLUMNS)}, created, updated"
        )
        if db.kind == "sqlite":
            conn.execute("BEGIN")
            conn.executemany(
                f"INSERT INTO catalog_items ({item_cols}) VALUES (?, ?, ?, ?, ?, ?)", item_rows
            )
            pks = [row[0] for row in conn.execute("SELECT pk FROM catalog_items ORDER BY pk")]
            marks = ", ".join("?" * (5 + len(CATALOG_COLUMNS)))
            conn.executemany(
                f"INSERT INTO catalog_variants ({variant_cols}) VALUES ({marks})",
                (
                    (db.account_id, e, pks[n % len(pks)], *catalog_row(rng, e), now, now)
                    for n, e in enumerate(ids)
                ),
            )
            conn.execute("COMMIT")
            conn.execute("ANALYZE")
        else:
            with conn.cursor() as cur:
                with cur.copy(f"COPY catalog_items ({item_cols}) FROM STDIN") as copy:
                    for row in item_rows:
                        copy.write_row(row)
                pks = [row[0] for row in cur.execute("SELECT pk FROM catalog_items ORDER BY pk")]
                with cur.copy(f"COPY catalog_variants ({variant_cols}) FROM STDIN") as copy:
                    for n, e in enumerate(ids):
                        copy.write_row(
                            (db.account_id, e, pks[n % len(pks)], *catalog_row(rng, e), now, now)
                        )
                cur.execute("VACUUM ANALYZE catalog_variants")
                cur.execute("VACUUM ANALYZE catalog_items")
    finally:
        conn.close()
    db.variant_ids = ids
    return ids


def job_bodies(db: Scratch, count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [bulk_body(job_updates(rng, db.variant_ids)) for _ in range(count)]


def queue_jobs(db: Scratch, bodies: list[bytes], at_once: int = 1) -> list[str]:
    """Accept the jobs through Backstock's service (as the API would); return their ids.
    ``at_once``: spawns sent together (they share commits; their order among them is open)."""
    services = build_services(db.settings())

    async def spawn_all() -> list[str]:
        who = await principal(services, db.key)
        ids: list[str] = []
        for start in range(0, len(bodies), at_once):
            chunk = bodies[start : start + at_once]
            spawns = (services.jobs.spawn(who, UPDATE_JOB, body) for body in chunk)
            ids += [job.id for job in await asyncio.gather(*spawns)]
        return ids

    try:
        return run(services, spawn_all)
    finally:
        services.close()


def max_job_pk(db: Scratch) -> int:
    conn = db.connect()
    try:
        return int(conn.execute("SELECT coalesce(max(pk), 0) FROM jobs").fetchone()[0])
    finally:
        conn.close()
