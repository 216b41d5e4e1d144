"""The job table is the queue.

Acceptance inserts one row holding the validated payload, in the same transaction as the
account's open-job counter (the 500-jobs cap) and, on PostgreSQL, a ``NOTIFY``.

A worker claims the *head* of an account's queue: the oldest unfinished job of that account,
when it is queued or its lease has lapsed. So jobs of one account run one at a time, in
acceptance order, whichever worker runs them; jobs of different accounts run in parallel.

Each batch of items is applied in one transaction that first fences on the lease (owner and
``next_index``), then writes the variants, then moves ``next_index`` and the counters. A batch
commits whole or not at all, so a resumed job never applies or counts an item twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson
from sqlalchemy import Connection, and_, bindparam, delete, func, or_, select, text, update
from sqlalchemy.engine import Row

from backstock.domain.errors import TooManyJobs
from backstock.domain.ids import AccountId, JobId
from backstock.domain.pagination import Page, PageRequest
from backstock.storage import accounts as accounts_store
from backstock.storage.accounts import KeyRecord
from backstock.storage.catalog import JSON_COLUMNS
from backstock.storage.database import DriverQuery
from backstock.storage.direct import Direct
from backstock.storage.pages import paginate
from backstock.storage.schema import accounts, jobs

NOTIFY_CHANNEL = "backstock_jobs"  # also spelled out in _ACCEPT_POSTGRES


@dataclass(frozen=True, slots=True)
class JobRecord:
    pk: int
    id: JobId
    status: str
    shape: str
    total_count: int
    completed_count: int
    failed_count: int
    created_at: int
    completed_at: int | None
    expires_at: int | None
    errors: str
    """The job's ``errors`` array as JSON text."""
    variant_linkage: str
    """The request's variants as JSON:API resource identifiers (JSON text)."""


_JOB_NAMES = (
    "pk", "id", "status", "shape", "total_count", "completed_count", "failed_count",
    "created_at", "completed_at", "expires_at", "errors", "variant_linkage",
)  # fmt: skip
_JOB_SELECT = select(*(jobs.c[name] for name in _JOB_NAMES))


def _job(row: Row[Any]) -> JobRecord:
    return JobRecord(*row)  # type: ignore[call-arg]


# Statements of the hot paths are built once; each call only binds its values.
_TAKE_SLOT = (
    update(accounts)
    .where(accounts.c.id == bindparam("account"), accounts.c.open_jobs < bindparam("max_open"))
    .values(open_jobs=accounts.c.open_jobs + 1)
)
_INSERT_JOB = jobs.insert().returning(jobs.c.pk)
# PostgreSQL: the same three steps in one round trip. The slot is taken (the account row
# stays locked to the end of the transaction, which also orders one account's jobs), the job
# inserted only if it was, and the NOTIFY is delivered at commit to every LISTENing worker.
_ACCEPT_POSTGRES = DriverQuery("""
WITH slot AS (
    UPDATE accounts SET open_jobs = open_jobs + 1
     WHERE id = ? AND open_jobs < ?
 RETURNING id),
job AS (
    INSERT INTO jobs (id, account_id, status, shape, total_count, payload, variant_linkage,
                      errors, created_at)
    SELECT ?, slot.id, 'queued', ?, ?, ?, ?, '[]', ?
      FROM slot
 RETURNING pk)
SELECT job.pk, pg_notify('backstock_jobs', '') FROM job
""")


@dataclass(frozen=True, slots=True)
class NewJob:
    account: AccountId
    id: JobId
    shape: str
    total: int
    payload: bytes
    linkage: str
    created_at: int

    def accept_params(self, max_open: int) -> tuple[Any, ...]:
        return (
            self.account, max_open, self.id, self.shape, self.total, self.payload,
            self.linkage, self.created_at,
        )  # fmt: skip


def insert_job(conn: Connection, new: NewJob, max_open: int) -> JobRecord:
    """Queue the job, if the account has fewer than ``max_open`` open jobs (else 429)."""
    if conn.dialect.name == "postgresql":
        row = _ACCEPT_POSTGRES.fetch_one(conn, *new.accept_params(max_open))
        return _accepted(new, None if row is None else row[0], max_open)
    taken = conn.execute(_TAKE_SLOT, {"account": new.account, "max_open": max_open})
    pk = None
    if taken.rowcount == 1:
        values = {
            "id": new.id, "account_id": new.account, "status": "queued", "shape": new.shape,
            "total_count": new.total, "payload": new.payload, "variant_linkage": new.linkage,
            "errors": "[]", "created_at": new.created_at,
        }  # fmt: skip
        pk = conn.execute(_INSERT_JOB, values).scalar_one()
    return _accepted(new, pk, max_open)


async def accept_job(direct: Direct, new: NewJob, max_open: int) -> JobRecord:
    """``insert_job`` on PostgreSQL as one autocommitted statement (its own transaction)."""
    row = await direct.one(_ACCEPT_POSTGRES, *new.accept_params(max_open))
    return _accepted(new, None if row is None else row[0], max_open)


def _accepted(new: NewJob, pk: int | None, max_open: int) -> JobRecord:
    if pk is None:
        raise TooManyJobs(
            f"This account already has {max_open} jobs queued or processing; "
            "wait for some to complete.",
            retry_after=1,
        )
    return JobRecord(
        pk, new.id, "queued", new.shape, new.total, 0, 0, new.created_at, None, None, "[]",
        new.linkage,
    )  # fmt: skip


_VISIBLE = and_(
    # the account's jobs that have not expired (expired ones await the reaper)
    jobs.c.account_id == bindparam("account"),
    or_(jobs.c.expires_at.is_(None), jobs.c.expires_at > bindparam("now")),
)
_KEY_AND_JOB = DriverQuery(
    f"SELECT {accounts_store.KEY_COLUMNS}, {', '.join(f'j.{name}' for name in _JOB_NAMES)}"
    f"{accounts_store.KEY_FROM} LEFT JOIN jobs AS j ON j.account_id = k.account_id"
    " AND j.id = ? AND (j.expires_at IS NULL OR j.expires_at > ?) WHERE k.id = ?"
)


async def find_key_and_job(
    direct: Direct, key_id: str, job_id: str, now: int
) -> tuple[KeyRecord | None, JobRecord | None]:
    """A poll in one statement: the caller's key and, of that key's account only, the job."""
    row = await direct.one(_KEY_AND_JOB, job_id, now, key_id)
    if row is None:
        return None, None
    job = row[accounts_store.KEY_WIDTH :]
    return accounts_store.key_record(row), None if job[0] is None else JobRecord(*job)


def list_jobs(
    conn: Connection, account: AccountId, status: str | None, page: PageRequest, now: int
) -> Page[JobRecord]:
    """Keyset-paginated on ``pk`` (newest first when ``page.descending``)."""
    query = _JOB_SELECT.where(_VISIBLE).params(account=account, now=now)
    if status is not None:
        query = query.where(jobs.c.status == status)
    return paginate(conn, query, jobs.c.pk, page, _job, lambda job: job.pk)


# ---- the worker's side -----------------------------------------------------------------------


@dataclass(slots=True)
class ClaimedJob:
    pk: int
    id: JobId
    account_id: AccountId
    shape: str
    total_count: int
    completed_count: int
    failed_count: int
    next_index: int
    payload: bytes
    errors: list[dict[str, Any]]
    owner: str
    lease_expires_at: int = 0


_CLAIM = """
UPDATE jobs
   SET status = 'processing', lease_owner = :owner, lease_expires_at = :expires,
       attempts = attempts + 1
 WHERE pk = (
       SELECT j.pk FROM jobs AS j
        WHERE j.status IN ('queued', 'processing')
          AND (j.status = 'queued' OR j.lease_expires_at < :now)
          -- only the head of its account's queue: ordering per account
          AND NOT EXISTS (SELECT 1 FROM jobs AS e
                           WHERE e.account_id = j.account_id
                             AND e.status IN ('queued', 'processing') AND e.pk < j.pk)
        ORDER BY j.pk LIMIT 1 {lock})
   AND status IN ('queued', 'processing')
RETURNING pk, id, account_id, shape, total_count, completed_count, failed_count,
          next_index, payload, errors
"""
_CLAIM_SQLITE = text(_CLAIM.format(lock=""))  # BEGIN IMMEDIATE: one writer at a time
# PostgreSQL: a head another worker is claiming right now is skipped, not waited for.
_CLAIM_POSTGRES = text(_CLAIM.format(lock="FOR UPDATE SKIP LOCKED"))


def claim_next_job(conn: Connection, owner: str, now: int, lease_us: int) -> ClaimedJob | None:
    claim = _CLAIM_POSTGRES if conn.dialect.name == "postgresql" else _CLAIM_SQLITE
    row = conn.execute(claim, {"owner": owner, "now": now, "expires": now + lease_us}).first()
    if row is None:
        return None
    pk, job_id, account, shape, total, done, failed, next_index, payload, errors = row
    return ClaimedJob(
        pk, JobId(job_id), AccountId(account), shape, total, done, failed, next_index,
        bytes(payload), orjson.loads(errors), owner, now + lease_us,
    )  # fmt: skip


_FENCE = (
    update(jobs)
    .where(
        jobs.c.pk == bindparam("job"),
        jobs.c.lease_owner == bindparam("owner"),
        jobs.c.status == "processing",
    )
    .values(lease_expires_at=bindparam("lease_expires"))
    .returning(jobs.c.next_index, jobs.c.completed_count, jobs.c.failed_count, jobs.c.errors)
)


def fence(conn: Connection, job: ClaimedJob, now: int, lease_us: int) -> bool:
    """Renew the lease if this worker still holds it, and reload the job's progress from the
    row: the database, not the worker's memory, says where the job stands (a batch whose
    commit outcome the worker never learned is then neither lost nor applied twice).

    Run first in every batch transaction; the UPDATE takes the job's row lock."""
    params = {"job": job.pk, "owner": job.owner, "lease_expires": now + lease_us}
    row = conn.execute(_FENCE, params).first()
    if row is None:
        return False
    job.next_index, job.completed_count, job.failed_count, errors = row
    job.errors = orjson.loads(errors)
    job.lease_expires_at = now + lease_us
    return True


_UPDATE_CACHE: dict[tuple[str, tuple[str, ...]], str] = {}


def _update_sql(paramstyle: str, columns: tuple[str, ...]) -> str:
    """``UPDATE … SET <columns>`` for the driver itself, in its own parameter style (on
    PostgreSQL it returns a row when the variant exists)."""
    sql = _UPDATE_CACHE.get((paramstyle, columns))
    if sql is None:
        mark = "?" if paramstyle == "qmark" else "%s"
        sets = "".join(f"{name} = {mark}, " for name in columns)  # names from a fixed set
        sql = (
            f"UPDATE catalog_variants SET {sets}updated = {mark}, "  # noqa: S608
            f"update_count = update_count + 1 WHERE account_id = {mark} AND external_id = {mark}"
        )
        if mark == "%s":
            sql += " RETURNING 1"
        _UPDATE_CACHE[(paramstyle, columns)] = sql
    return sql


def apply_variant_changes(
    conn: Connection, account: AccountId, changes: Sequence[tuple[str, dict[str, Any]]], now: int
) -> list[bool]:
    """Apply partial updates in order; for each, whether its variant exists (and so was
    updated). Consecutive updates that set the same attributes share one ``executemany``,
    handed to the driver as tuples (SQLAlchemy's per-row parameter processing cost more than
    the statement here).

    PostgreSQL: each UPDATE returns a row when it found its variant, so nothing can slip
    between a check and the write. SQLite: one query finds the variants first (one writer at
    a time: none can vanish before the writes)."""
    postgres = conn.dialect.name == "postgresql"
    present = None if postgres else _existing(conn, account, changes)
    style = conn.dialect.paramstyle
    found: list[bool] = []
    run: list[tuple[Any, ...]] = []
    run_columns: tuple[str, ...] = ()
    for external, attributes in changes:
        if present is not None and external not in present:
            found.append(False)
            continue
        columns = tuple(attributes)
        if columns != run_columns and run:
            found += _execute_run(conn, postgres, _update_sql(style, run_columns), run)
            run = []
        run_columns = columns
        run.append((*_column_values(attributes), now, account, external))
        if present is not None:
            found.append(True)
    if run:
        found += _execute_run(conn, postgres, _update_sql(style, run_columns), run)
    return found


def _column_values(attributes: dict[str, Any]) -> list[Any]:
    """``encode_columns`` for values validated at acceptance (numbers are floats already)."""
    return [
        msgspec.json.encode(value).decode() if name in JSON_COLUMNS and value is not None else value
        for name, value in attributes.items()
    ]


def _existing(
    conn: Connection, account: AccountId, changes: Sequence[tuple[str, dict[str, Any]]]
) -> set[str]:
    """Straight to the driver: SQLAlchemy's expanding ``IN`` costs more than the query."""
    externals = list({external for external, _ in changes})
    marks = ", ".join("?" * len(externals))
    sql = f"SELECT external_id FROM catalog_variants WHERE account_id = ? AND external_id IN ({marks})"  # noqa: S608, E501
    driver: Any = conn.connection.driver_connection
    return {row[0] for row in driver.execute(sql, (account, *externals))}


def _execute_run(
    conn: Connection, postgres: bool, sql: str, rows: list[tuple[Any, ...]]
) -> list[bool]:
    if not postgres:
        conn.exec_driver_sql(sql, rows)
        return []
    driver: Any = conn.connection.driver_connection
    with driver.cursor() as cursor:
        cursor.executemany(sql, rows, returning=True)
        found = [cursor.fetchone() is not None]
        while cursor.nextset():
            found.append(cursor.fetchone() is not None)
    return found


_PROGRESS = (
    update(jobs)
    .where(jobs.c.pk == bindparam("job"))
    .values(
        next_index=bindparam("end"),
        completed_count=jobs.c.completed_count + bindparam("completed"),
        failed_count=jobs.c.failed_count + bindparam("failed"),
        errors=bindparam("errors"),
        status=bindparam("status"),
        completed_at=bindparam("completed_at"),
        expires_at=bindparam("expires_at"),
        lease_owner=bindparam("owner"),
        lease_expires_at=bindparam("lease_expires"),
    )
)
_FREE_SLOT = (
    update(accounts)
    .where(accounts.c.id == bindparam("account"))
    .values(open_jobs=accounts.c.open_jobs - 1)
)


# PostgreSQL: the last batch's progress and the freed slot in one round trip (a data-modifying
# WITH runs whether or not the statement reads it).
_COMPLETE_POSTGRES = text("""
WITH progress AS (
    UPDATE jobs
       SET next_index = :end, completed_count = completed_count + :completed,
           failed_count = failed_count + :failed, errors = :errors, status = :status,
           completed_at = :completed_at, expires_at = :expires_at, lease_owner = :owner,
           lease_expires_at = :lease_expires
     WHERE pk = :job)
UPDATE accounts SET open_jobs = open_jobs - 1 WHERE id = :account
""")


def record_progress(
    conn: Connection,
    job: ClaimedJob,
    end: int,
    completed: int,
    errors: list[dict[str, Any]],
    now: int,
    retention_us: int,
) -> bool:
    """Move the job past a batch; completes it (and frees its slot) when it was the last."""
    done = end >= job.total_count
    params = {
        "job": job.pk, "end": end, "completed": completed, "failed": len(errors),
        "errors": orjson.dumps([*job.errors, *errors]).decode(),
        "status": "complete" if done else "processing",
        "completed_at": now if done else None,
        "expires_at": now + retention_us if done else None,
        "owner": None if done else job.owner,
        "lease_expires": None if done else job.lease_expires_at,
    }  # fmt: skip
    if done and conn.dialect.name == "postgresql":
        conn.execute(_COMPLETE_POSTGRES, params | {"account": job.account_id})
        return done
    conn.execute(_PROGRESS, params)
    if done:
        conn.execute(_FREE_SLOT, {"account": job.account_id})
    return done


def release_job(conn: Connection, job: ClaimedJob) -> None:
    """Hand a job back (graceful shutdown): queued again, at the position it reached."""
    conn.execute(
        update(jobs)
        .where(jobs.c.pk == job.pk, jobs.c.lease_owner == job.owner, jobs.c.status == "processing")
        .values(status="queued", lease_owner=None, lease_expires_at=None)
    )


def delete_expired_jobs(conn: Connection, now: int, limit: int = 1000) -> int:
    doomed = select(jobs.c.pk).where(jobs.c.expires_at < now).limit(limit).scalar_subquery()
    return conn.execute(delete(jobs).where(jobs.c.pk.in_(doomed))).rowcount


def next_lease_expiry(conn: Connection) -> int | None:
    """When the earliest lease of a processing job lapses (the worker's idle wake-up)."""
    query = select(func.min(jobs.c.lease_expires_at)).where(jobs.c.status == "processing")
    found = conn.execute(query).scalar()
    return None if found is None else int(found)


def new_error_id() -> str:
    return str(uuid.uuid4())
