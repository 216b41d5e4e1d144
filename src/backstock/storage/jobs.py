"""The job table is the queue.

Acceptance inserts the job's row and, beside it, its validated payload, in the same
transaction as the account's open-job counter (the 500-jobs cap) and, on PostgreSQL, a
``NOTIFY``.

A worker claims the *head* of an account's queue: the oldest unfinished job of that account,
whatever its kind, when it is queued or its lease has lapsed. So jobs of one account run one at
a time, in acceptance order, whichever worker runs them; jobs of different accounts run in
parallel.

Each batch of items is applied in one transaction that first fences on the lease (owner and
``next_index``), then writes the catalog, then moves ``next_index`` and the counters. A batch
commits whole or not at all, so a resumed job never applies or counts an item twice. The job
that completes frees its account's slot and drops its payload in the same transaction.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Select, bindparam, select

from backstock.domain import jobs as domain
from backstock.domain.bodies import entries_pointer, load_payload
from backstock.domain.catalog import Outcome
from backstock.domain.clock import now_us
from backstock.domain.errors import QuotaExceeded, TooManyJobs
from backstock.domain.ids import AccountId, JobId
from backstock.domain.jobs import ClaimedJob, JobRecord, NewJob
from backstock.domain.pagination import Page, PageRequest
from backstock.domain.resources import Resource
from backstock.storage import catalog, pages
from backstock.storage.database import Database
from backstock.storage.schema import accounts, jobs
from backstock.storage.sql import Conn, Statement, composed

NOTIFY_CHANNEL = "backstock_jobs"  # also spelled out in _ACCEPT's PostgreSQL form


_JOB_COLUMNS = (
    "pk", "id", "kind", "status", "shape", "total_count", "completed_count", "failed_count",
    "created_at", "completed_at", "expires_at", "errors", "linkage",
)  # fmt: skip


_TAKE_SLOT = Statement(
    "take_slot",
    """UPDATE accounts SET open_jobs = open_jobs + 1, open_bytes = open_bytes + :size
        WHERE id = :account AND open_jobs < :max_open AND open_bytes + :size <= :max_bytes""",
)
_OPEN = Statement("open_of", "SELECT open_jobs, open_bytes FROM accounts WHERE id = :account")
_INSERT_JOB = Statement(
    "insert_job",
    """INSERT INTO jobs (id, account_id, kind, status, shape, total_count, linkage, errors,
                         created_at)
       VALUES (:id, :account, :kind, 'queued', :shape, :total, :linkage, '[]', :now)
    RETURNING pk""",
)
_INSERT_PAYLOAD = Statement(
    "insert_payload", "INSERT INTO job_payloads (job_pk, payload) VALUES (:pk, :payload)"
)
# PostgreSQL: the same steps in one statement, its own transaction. The slot is taken (the
# account row stays locked to the end, which also orders one account's jobs), the job and its
# payload inserted only if it was, and the NOTIFY delivered at commit to every LISTENing worker.
_ACCEPT_POSTGRES = Statement(
    "accept_job",
    """
WITH slot AS (
    UPDATE accounts SET open_jobs = open_jobs + 1, open_bytes = open_bytes + :size
     WHERE id = :account AND open_jobs < :max_open AND open_bytes + :size <= :max_bytes
 RETURNING id),
job AS (
    INSERT INTO jobs (id, account_id, kind, status, shape, total_count, linkage, errors,
                      created_at)
    SELECT :id, slot.id, :kind, 'queued', :shape, :total, :linkage, '[]', :now
      FROM slot
 RETURNING pk),
payload AS (
    INSERT INTO job_payloads (job_pk, payload) SELECT pk, :payload FROM job)
SELECT job.pk, pg_notify('backstock_jobs', '') FROM job
""",
)


async def accept(conn: Conn, new: NewJob, max_open: int, max_bytes: int) -> JobRecord:
    """Queue the job, if the account has fewer than ``max_open`` open jobs and its open jobs'
    payloads would stay within ``max_bytes`` (else 429)."""
    params = {
        "account": new.account, "max_open": max_open, "max_bytes": max_bytes, "id": new.id,
        "kind": new.kind, "shape": new.shape, "total": new.total, "linkage": new.linkage,
        "now": new.created_at, "payload": new.payload, "size": len(new.payload),
    }  # fmt: skip
    if conn.postgres:
        row = await conn.one(_ACCEPT_POSTGRES, params)
        pk = None if row is None else row[0]
    elif await conn.run(_TAKE_SLOT, params):
        row = await conn.one(_INSERT_JOB, params)
        assert row is not None
        pk = row[0]
        await conn.run(_INSERT_PAYLOAD, {"pk": pk, "payload": new.payload})
    else:
        pk = None
    if pk is None:
        open_jobs, _ = await conn.one(_OPEN, params) or (0, 0)
        if open_jobs >= max_open:
            raise TooManyJobs(
                f"This account already has {max_open} jobs queued or processing; "
                "wait for some to complete.",
                retry_after=1,
            )
        raise QuotaExceeded(
            f"This account's queued jobs already hold close to {max_bytes // 2**20} MB of "
            "requests (BACKSTOCK_MAX_QUEUED_BYTES); wait for some to complete.",
            retry_after=5,
        )
    return new.record(pk)


_GET_JOB = Statement(
    "get_job",
    """SELECT pk, id, kind, status, shape, total_count, completed_count, failed_count,
              created_at, completed_at, expires_at, errors, linkage
         FROM jobs
        WHERE account_id = :account AND id = :id AND kind = :kind
          AND (expires_at IS NULL OR expires_at > :now)""",
)


def _job(row: Any) -> JobRecord:
    return JobRecord(*row)


async def get_job(
    conn: Conn, account: AccountId, kind: str, job_id: str, now: int
) -> JobRecord | None:
    """A job of the account, of this kind, not expired (expired ones await the reaper)."""
    params = {"account": account, "id": job_id, "kind": kind, "now": now}
    row = await conn.one(_GET_JOB, params)
    return None if row is None else _job(row)


async def list_jobs(
    conn: Conn, account: AccountId, kind: str, status: str | None, page: PageRequest, now: int
) -> Page[JobRecord]:
    """Keyset-paginated on ``pk`` (newest first when ``page.descending``)."""

    def build() -> Select[Any]:
        query = select(*(jobs.c[name] for name in _JOB_COLUMNS)).where(
            jobs.c.account_id == bindparam("account"),
            jobs.c.kind == bindparam("kind"),
            jobs.c.expires_at.is_(None) | (jobs.c.expires_at > bindparam("now")),
        )
        if status is not None:
            query = query.where(jobs.c.status == bindparam("status"))
        return pages.paged(query, jobs.c.pk, page)

    params = {"account": account, "kind": kind, "now": now, "status": status}
    compiled = composed(("jobs", status is not None, pages.shape(page)), conn.dialect, build)
    rows = [_job(row) for row in await conn.query(compiled, params | pages.params(page))]
    return pages.page_of(rows, page, lambda job: job.pk)


# ---- the worker's side -----------------------------------------------------------------------


_CLAIM = """
UPDATE jobs
   SET status = 'processing', lease_owner = :owner, lease_expires_at = :expires,
       attempts = attempts + 1
 WHERE pk = (
       SELECT j.pk FROM jobs AS j
        WHERE j.status IN ('queued', 'processing')
          AND (j.status = 'queued' OR j.lease_expires_at < :now)
          -- only the head of its account's queue: ordering per account, across kinds
          AND NOT EXISTS (SELECT 1 FROM jobs AS e
                           WHERE e.account_id = j.account_id
                             AND e.status IN ('queued', 'processing') AND e.pk < j.pk)
        -- fair queues: the account whose job was claimed least recently goes first
        ORDER BY (SELECT a.last_claim FROM accounts AS a WHERE a.id = j.account_id), j.pk
        LIMIT 1 {lock})
   AND status IN ('queued', 'processing')
RETURNING pk, id, account_id, kind, shape, total_count, completed_count, failed_count,
          next_index, errors
"""
_CLAIM_NEXT = Statement(
    "claim_next_job",
    _CLAIM.replace("{lock}", ""),  # SQLite: BEGIN IMMEDIATE, one writer at a time
    # PostgreSQL: a head another worker is claiming right now is skipped, not waited for.
    _CLAIM.replace("{lock}", "FOR UPDATE SKIP LOCKED"),
)
_PAYLOAD = Statement("job_payload", "SELECT payload FROM job_payloads WHERE job_pk = :pk")


_SERVED = Statement("served", "UPDATE accounts SET last_claim = :now WHERE id = :account")


async def claim_next_job(conn: Conn, owner: str, now: int, lease_us: int) -> ClaimedJob | None:
    params = {"owner": owner, "now": now, "expires": now + lease_us}
    row = await conn.one(_CLAIM_NEXT, params)
    if row is None:
        return None
    await conn.run(_SERVED, {"now": now, "account": row[2]})
    pk, job_id, account, kind, shape, total, done, failed, next_index, errors = row
    job = ClaimedJob(
        pk, JobId(job_id), AccountId(account), kind, shape, total, done, failed, next_index,
        orjson.loads(errors), owner, lease_expires_at=now + lease_us,
    )  # fmt: skip
    payload = await conn.one(_PAYLOAD, {"pk": pk})
    job.payload = b"" if payload is None else bytes(payload[0])
    return job


_FENCE = Statement(
    "fence",
    """UPDATE jobs SET lease_expires_at = :lease_expires
        WHERE pk = :job AND lease_owner = :owner AND status = 'processing'
    RETURNING next_index, completed_count, failed_count, errors""",
)


async def fence(conn: Conn, job: ClaimedJob, now: int, lease_us: int) -> bool:
    """Renew the lease if this worker still holds it, and reload the job's progress from the
    row: the database, not the worker's memory, says where the job stands (a batch whose
    commit outcome the worker never learned is then neither lost nor applied twice).

    Run first in every batch transaction; the UPDATE takes the job's row lock."""
    params = {"job": job.pk, "owner": job.owner, "lease_expires": now + lease_us}
    row = await conn.one(_FENCE, params)
    if row is None:
        return False
    job.next_index, job.completed_count, job.failed_count, errors = row
    job.errors = orjson.loads(errors)
    job.lease_expires_at = now + lease_us
    return True


_PROGRESS = Statement(
    "record_progress",
    """UPDATE jobs
          SET next_index = :end, completed_count = completed_count + :completed,
              failed_count = failed_count + :failed, errors = :errors, status = :status,
              completed_at = :completed_at, expires_at = :expires_at, lease_owner = :owner,
              lease_expires_at = :lease_expires
        WHERE pk = :job""",
)
_FREE_SLOT = Statement(
    "free_slot",
    """UPDATE accounts
          SET open_jobs = open_jobs - 1,
              open_bytes = open_bytes - COALESCE(
                  (SELECT LENGTH(payload) FROM job_payloads WHERE job_pk = :job), 0)
        WHERE id = :account""",
)
_DROP_PAYLOAD = Statement("drop_payload", "DELETE FROM job_payloads WHERE job_pk = :job")
# PostgreSQL: the last batch's progress, the freed slot and the dropped payload in one round
# trip (a data-modifying WITH runs whether or not the statement reads it).
_COMPLETE_POSTGRES = Statement(
    "complete_job",
    """
WITH progress AS (
    UPDATE jobs
       SET next_index = :end, completed_count = completed_count + :completed,
           failed_count = failed_count + :failed, errors = :errors, status = :status,
           completed_at = :completed_at, expires_at = :expires_at, lease_owner = :owner,
           lease_expires_at = :lease_expires
     WHERE pk = :job),
payload AS (DELETE FROM job_payloads WHERE job_pk = :job)
UPDATE accounts
   SET open_jobs = open_jobs - 1,
       open_bytes = open_bytes - COALESCE(
           (SELECT LENGTH(payload) FROM job_payloads WHERE job_pk = :job), 0)
 WHERE id = :account
""",
)


async def record_progress(
    conn: Conn,
    job: ClaimedJob,
    end: int,
    completed: int,
    errors: list[dict[str, Any]],
    now: int,
    retention_us: int,
) -> bool:
    """Move the job past a batch; completes it (frees its slot, drops its payload) when it was
    the last."""
    done = end >= job.total_count
    params = {
        "job": job.pk, "end": end, "completed": completed, "failed": len(errors),
        "errors": orjson.dumps([*job.errors, *errors]).decode(),
        "status": "complete" if done else "processing",
        "completed_at": now if done else None,
        "expires_at": now + retention_us if done else None,
        "owner": None if done else job.owner,
        "lease_expires": None if done else job.lease_expires_at,
        "account": job.account_id,
    }  # fmt: skip
    if done and conn.postgres:
        await conn.run(_COMPLETE_POSTGRES, params)
    else:
        await conn.run(_PROGRESS, params)
        if done:
            await conn.run(_FREE_SLOT, params)
            await conn.run(_DROP_PAYLOAD, params)
    job.next_index = end
    job.completed_count += completed
    job.failed_count += len(errors)
    job.applied_now, job.failed_now = completed, len(errors)
    return done


_RELEASE = Statement(
    "release_job",
    """UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL
        WHERE pk = :job AND lease_owner = :owner AND status = 'processing'""",
)


async def release_job(conn: Conn, job: ClaimedJob) -> None:
    """Hand a job back (graceful shutdown): queued again, at the position it reached."""
    await conn.run(_RELEASE, {"job": job.pk, "owner": job.owner})


_DELETE_EXPIRED = Statement(
    "delete_expired_jobs",
    "DELETE FROM jobs WHERE pk IN (SELECT pk FROM jobs WHERE expires_at < :now LIMIT :limit)",
)


async def delete_expired_jobs(conn: Conn, now: int, limit: int = 1000) -> int:
    return await conn.run(_DELETE_EXPIRED, {"now": now, "limit": limit})


_NEXT_LAPSE = Statement(
    "next_lease_expiry",
    "SELECT min(lease_expires_at) FROM jobs WHERE status = 'processing'",
)


async def next_lease_expiry(conn: Conn) -> int | None:
    """When the earliest lease of a processing job lapses (the worker's idle wake-up)."""
    row = await conn.one(_NEXT_LAPSE)
    return None if row is None or row[0] is None else int(row[0])


# ---- applying a batch: the one engine, generic over the kind of job -------------------------


async def apply_batch(
    conn: Conn, job: ClaimedJob, now: int, batch_size: int, retention_us: int
) -> bool:
    """Apply the batch at ``job.next_index`` and count it (the caller holds the job); each
    item's outcome is written with its change. Whether the job is complete."""
    kind = domain.kind(job.kind)
    start = job.next_index
    end = min(start + batch_size, job.total_count)
    entries = load_payload(job.payload)[start:end]
    outcomes = await catalog.apply(conn, kind.action, kind.resource, job.account_id, entries, now)
    errors = _errors(kind.resource, job, start, [e[0] for e in entries], outcomes)
    completed = len(entries) - len(errors)
    return await record_progress(conn, job, end, completed, errors, now, retention_us)


def _errors(
    res: Resource, job: ClaimedJob, start: int, externals: list[str], outcomes: list[Outcome]
) -> list[dict[str, Any]]:
    base = entries_pointer(res.plural, job.shape)  # type: ignore[arg-type]
    return [
        domain.refused(res, refusal, external, f"{base}/{index}")
        for index, (external, refusal) in enumerate(zip(externals, outcomes, strict=True), start)
        if refusal is not None
    ]


async def fail_batch(
    conn: Conn, job: ClaimedJob, now: int, batch_size: int, retention_us: int
) -> bool:
    """Give up on the batch at ``next_index``: its items fail with ``internal_error``, nothing
    of it applied, and the job moves on instead of holding its account's queue."""
    kind = domain.kind(job.kind)
    start = job.next_index
    end = min(start + batch_size, job.total_count)
    base = entries_pointer(kind.resource.plural, job.shape)  # type: ignore[arg-type]
    errors = [
        domain.internal_error(kind.resource, entry[0], f"{base}/{index}")
        for index, entry in enumerate(load_payload(job.payload)[start:end], start)
    ]
    return await record_progress(conn, job, end, 0, errors, now, retention_us)


class JobStore:
    """The queue, as the services see it: every method one read or one write."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def accept(self, new: NewJob, max_open: int, max_bytes: int) -> JobRecord:
        return await self.db.write(
            lambda conn: accept(conn, new, max_open, max_bytes), single=True
        )

    async def get(self, account: AccountId, kind: str, job_id: str) -> JobRecord | None:
        return await self.db.read(lambda conn: get_job(conn, account, kind, job_id, now_us()))

    async def list_jobs(
        self, account: AccountId, kind: str, status: str | None, page: PageRequest
    ) -> Page[JobRecord]:
        return await self.db.read(
            lambda conn: list_jobs(conn, account, kind, status, page, now_us())
        )

    async def claim(
        self, owner: str, lease_us: int, batch_size: int, retention_us: int, first_batch: bool
    ) -> tuple[ClaimedJob, bool] | None:
        """Claim the next job and, with ``first_batch``, apply its first batch in the same
        transaction (one commit for a job of one batch). The job, and whether it is complete."""

        async def unit(conn: Conn) -> tuple[ClaimedJob, bool] | None:
            now = now_us()
            job = await claim_next_job(conn, owner, now, lease_us)
            if job is None:
                return None
            done = first_batch and await apply_batch(conn, job, now, batch_size, retention_us)
            return job, done

        return await self.db.write(unit)

    async def run_batch(
        self, job: ClaimedJob, lease_us: int, batch_size: int, retention_us: int, *, fail: bool
    ) -> bool | None:
        """Apply (or, with ``fail``, give up on) the next batch of a held job: whether the job
        is complete, or None when the lease was lost (another worker has the job now)."""
        step = fail_batch if fail else apply_batch

        async def unit(conn: Conn) -> bool | None:
            now = now_us()
            if not await fence(conn, job, now, lease_us):
                return None
            return await step(conn, job, now, batch_size, retention_us)

        return await self.db.write(unit)

    async def release(self, job: ClaimedJob) -> None:
        await self.db.write(lambda conn: release_job(conn, job))

    async def delete_expired(self) -> int:
        return await self.db.write(lambda conn: delete_expired_jobs(conn, now_us()))

    async def next_lease_expiry(self) -> int | None:
        return await self.db.read(next_lease_expiry)

    async def queue_stats(self) -> tuple[int, int, int | None]:
        return await self.db.read(queue_stats)

    async def admin_job(self, job_id: str) -> tuple[str, JobRecord] | None:
        return await self.db.read(lambda conn: admin_job(conn, job_id))

    async def admin_jobs(
        self, account: str | None, status: str | None, kind: str | None, limit: int
    ) -> list[tuple[str, JobRecord]]:
        return await self.db.read(lambda conn: admin_jobs(conn, account, status, kind, limit))


_QUEUE = Statement(
    "queue_stats",
    """SELECT count(*) FILTER (WHERE status = 'queued'),
              count(*) FILTER (WHERE status = 'processing'),
              min(created_at) FILTER (WHERE status = 'queued')
         FROM jobs WHERE status IN ('queued', 'processing')""",
)


async def queue_stats(conn: Conn) -> tuple[int, int, int | None]:
    """Jobs queued, jobs processing, and when the oldest queued job was accepted."""
    row = await conn.one(_QUEUE)
    assert row is not None
    return int(row[0] or 0), int(row[1] or 0), None if row[2] is None else int(row[2])


# ---- the operator's view (the CLI): across accounts ----------------------------------------------

_ADMIN_JOB = Statement(
    "admin_job",
    """SELECT a.name, j.pk, j.id, j.kind, j.status, j.shape, j.total_count, j.completed_count,
              j.failed_count, j.created_at, j.completed_at, j.expires_at, j.errors, j.linkage
         FROM jobs AS j JOIN accounts AS a ON a.id = j.account_id
        WHERE j.id = :id""",
)


async def admin_job(conn: Conn, job_id: str) -> tuple[str, JobRecord] | None:
    row = await conn.one(_ADMIN_JOB, {"id": job_id})
    return None if row is None else (row[0], _job(row[1:]))


async def admin_jobs(
    conn: Conn, account: str | None, status: str | None, kind: str | None, limit: int
) -> list[tuple[str, JobRecord]]:
    """The newest jobs of every account (or one), optionally of a status and a kind."""

    def build() -> Select[Any]:
        query = select(accounts.c.name, *(jobs.c[name] for name in _JOB_COLUMNS)).join(
            accounts, accounts.c.id == jobs.c.account_id
        )
        if account is not None:
            query = query.where(accounts.c.name == bindparam("account"))
        if status is not None:
            query = query.where(jobs.c.status == bindparam("status"))
        if kind is not None:
            query = query.where(jobs.c.kind == bindparam("kind"))
        return query.order_by(jobs.c.pk.desc()).limit(bindparam("limit"))

    key = ("admin_jobs", account is not None, status is not None, kind is not None)
    params = {"account": account, "status": status, "kind": kind, "limit": limit}
    rows = await conn.query(composed(key, conn.dialect, build), params)
    return [(row[0], _job(row[1:])) for row in rows]
