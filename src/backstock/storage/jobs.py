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
that completes frees its account's slot and drops its payload (all but its failed items, kept
for a retry until the job expires, and counted in the account's bytes quota) in the same
transaction,
which also writes the account's webhook delivery, if it has a webhook (the outbox). On
PostgreSQL each batch also ``NOTIFY``s ``backstock_job_events`` with the job's id, for event
streams in other processes. ``storage.engine`` applies the batches.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import msgspec
import orjson
from sqlalchemy import ColumnElement, Select, and_, bindparam, case, null, or_, select

from backstock.domain import jobs as domain
from backstock.domain.bodies import compress_payload, load_payload
from backstock.domain.clock import now_us
from backstock.domain.errors import IdempotencyMismatch, JobFinished, QuotaExceeded, TooManyJobs
from backstock.domain.ids import AccountId, JobId, compound_id
from backstock.domain.jobs import ClaimedJob, JobRecord, NewJob, finished_event
from backstock.domain.keys import ApiKey, KeyRecord
from backstock.domain.pagination import Page, PageRequest
from backstock.storage import pages
from backstock.storage.accounts import KEY_COLUMNS, KEY_WIDTH, KEYS, key_record
from backstock.storage.schema import HELD, PROCESSING, accounts, api_keys, jobs
from backstock.storage.sql import Conn, Statement, asked, asks_json, asks_table, composed

NOTIFY_CHANNEL = "backstock_jobs"  # also spelled out in _ACCEPT's PostgreSQL form
EVENTS_CHANNEL = "backstock_job_events"  # a job's progress: its id, after each batch


_JOB_COLUMNS = (
    "pk", "id", "kind", "status", "shape", "total_count", "completed_count", "failed_count",
    "created_at", "completed_at", "expires_at", "errors", "linkage", "retry_of",
)  # fmt: skip


_TAKE_SLOT = Statement(
    "take_slot",
    """UPDATE account_slots SET open_jobs = open_jobs + 1, open_bytes = open_bytes + :size
        WHERE account_id = :account AND open_jobs < :max_open
          AND open_bytes + :size <= :max_bytes""",
)
_OPEN = Statement(
    "open_of", "SELECT open_jobs, open_bytes FROM account_slots WHERE account_id = :account"
)
_INSERT_JOB = Statement(
    "insert_job",
    """INSERT INTO jobs (id, account_id, kind, status, shape, total_count, linkage, errors,
                         created_at, idempotency_key, request_hash, retry_of, not_before)
       VALUES (:id, :account, :kind, 'queued', :shape, :total, :linkage, '[]', :now,
               :idempotency_key, :request_hash, :retry_of, :not_before)
    RETURNING pk""",
)
_INSERT_PAYLOAD = Statement(
    "insert_payload", "INSERT INTO job_payloads (job_pk, payload) VALUES (:pk, :payload)"
)
# PostgreSQL: the same steps in one statement, its own transaction. The slot is taken (the
# account's slots row stays locked to the end, which also orders one account's jobs), the job
# and its payload inserted only if it was, and the NOTIFY delivered at commit to every
# LISTENing worker.
_ACCEPT_POSTGRES = Statement(
    "accept_job",
    """
WITH slot AS (
    UPDATE account_slots SET open_jobs = open_jobs + 1, open_bytes = open_bytes + :size
     WHERE account_id = :account AND open_jobs < :max_open AND open_bytes + :size <= :max_bytes
 RETURNING account_id),
job AS (
    INSERT INTO jobs (id, account_id, kind, status, shape, total_count, linkage, errors,
                      created_at, idempotency_key, request_hash, retry_of, not_before)
    SELECT :id, slot.account_id, :kind, 'queued', :shape, :total, :linkage, '[]', :now,
           :idempotency_key, :request_hash, :retry_of, CAST(:not_before AS BIGINT)
      FROM slot
 RETURNING pk),
payload AS (
    INSERT INTO job_payloads (job_pk, payload) SELECT pk, :payload FROM job)
SELECT job.pk, pg_notify('backstock_jobs', '') FROM job
""",
)


_LOCK = Statement("advisory_lock", "SELECT pg_advisory_xact_lock(:lock)")
_BY_KEY = Statement(
    "job_by_idempotency_key",
    """SELECT request_hash, pk, id, kind, status, shape, total_count, completed_count,
              failed_count, created_at, completed_at, expires_at, errors, linkage, retry_of
         FROM jobs WHERE account_id = :account AND idempotency_key = :key""",
)


async def serialize(conn: Conn, *names: object) -> None:
    """PostgreSQL: hold, until the transaction ends, a lock named by ``names`` (concurrent
    spawns with one Idempotency-Key, or retries of one job, then take turns). SQLite has one
    writer: its transactions take turns anyway."""
    if conn.postgres:
        digest = hashlib.sha256(repr(names).encode()).digest()
        await conn.run(_LOCK, {"lock": int.from_bytes(digest[:8], "big", signed=True)})


async def accept(conn: Conn, new: NewJob, max_open: int, max_bytes: int) -> JobRecord:
    """Queue the job, if the account has fewer than ``max_open`` open jobs and its open jobs'
    payloads would stay within ``max_bytes`` (else 429). With an idempotency key already
    used for the same request, the job accepted then (never a second one); for another
    request, a 422."""
    if new.idempotency_key is not None:
        await serialize(conn, "idempotency", new.account, new.idempotency_key)
        found = await conn.one(_BY_KEY, {"account": new.account, "key": new.idempotency_key})
        if found is not None:
            if found[0] != new.request_hash:
                raise IdempotencyMismatch()
            return _job(found[1:])
    params = {
        "account": new.account, "max_open": max_open, "max_bytes": max_bytes, "id": new.id,
        "kind": new.kind, "shape": new.shape, "total": new.total, "linkage": new.linkage,
        "now": new.created_at, "payload": new.payload, "size": len(new.payload),
        "idempotency_key": new.idempotency_key, "request_hash": new.request_hash,
        "retry_of": new.retry_of, "not_before": new.not_before,
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
            f"This account's queued jobs and the failed items kept for retries already hold "
            f"close to {max_bytes // 2**20} MB (BACKSTOCK_MAX_QUEUED_BYTES); wait for jobs to "
            "complete, retry failed items, or let finished jobs expire.",
            retry_after=5,
        )
    return new.record(pk)


def _live_job(
    account: ColumnElement[Any],
    job_id: ColumnElement[Any] | None = None,
    kind: ColumnElement[Any] | None = None,
) -> ColumnElement[bool]:
    """The job ``job_id`` (``:id``) of ``account``, of the kind ``kind`` (``:kind``), not
    expired (expired ones await the reaper)."""
    job_id = bindparam("id") if job_id is None else job_id
    kind = bindparam("kind") if kind is None else kind
    return and_(
        jobs.c.account_id == account,
        jobs.c.id == job_id,
        jobs.c.kind == kind,
        or_(jobs.c.expires_at.is_(None), jobs.c.expires_at > bindparam("now")),
    )


_JOB = tuple(jobs.c[name] for name in _JOB_COLUMNS)
_GET_JOB = Statement("get_job", select(*_JOB).where(_live_job(bindparam("account"))))
# The poll: the key and the job it asks for, in one statement (one round trip). The job comes
# back only through a key whose secret matches and that is not revoked (a lookup by its unique
# id); the key's row comes back either way, for the caller to refuse (``keys.principal``).
_POLL = Statement(
    "poll",
    select(*KEY_COLUMNS, *_JOB)
    .select_from(
        KEYS.outerjoin(
            jobs,
            and_(
                api_keys.c.secret_hash == bindparam("secret_hash"),
                api_keys.c.revoked_at.is_(None),
                _live_job(api_keys.c.account_id),
            ),
        )
    )
    .where(api_keys.c.id == bindparam("key")),
)


# Polls read together (``Database.read_together``), on PostgreSQL: the asks as one table, each
# row numbered, and the same joins as ``_POLL`` for each; a job's linkage only if not ``kept``.
_ASKS = asks_table("asks", ("key", "secret_hash", "id", "kind"), flags=("kept",))
_LINKAGE = _JOB_COLUMNS.index("linkage")
_POLLED = tuple(
    case((_ASKS.c.kept, null()), else_=column).label("linkage")
    if column.name == "linkage"
    else column
    for column in _JOB
)
_POLLS = Statement(
    "polls",
    "SELECT NULL",  # never run: SQLite polls one at a time
    select(_ASKS.c.n, *KEY_COLUMNS, *_POLLED).select_from(
        _ASKS.join(api_keys, api_keys.c.id == _ASKS.c.key)
        .join(accounts, accounts.c.id == api_keys.c.account_id)
        .outerjoin(
            jobs,
            and_(
                api_keys.c.secret_hash == _ASKS.c.secret_hash,
                api_keys.c.revoked_at.is_(None),
                _live_job(api_keys.c.account_id, _ASKS.c.id, _ASKS.c.kind),
            ),
        )
    ),
)
Ask = tuple[ApiKey, str, str]
"""A poll's key, the kind of job and its id."""

LINKAGES_KEPT = 16 * 1024 * 1024
"""About the bytes a ``Linkages`` keeps: some thousand 100-resource jobs'."""


class Linkages:
    """The linkage of the jobs polled lately, by job id, oldest out first past ``budget``
    (characters, and ``ENTRY`` for each job kept). A job's linkage never changes: polls read
    together ask PostgreSQL for it only when it is not kept here. A 100-variant job's is ~8 KB
    of its ~8.5 KB row, which PostgreSQL sends and psycopg reads in 8 KB parts, each a wake-up
    of the event loop."""

    ENTRY = 200
    """What a job kept costs besides its linkage's characters: its id, the strings' headers,
    the dictionary's slot."""

    __slots__ = ("_budget", "_kept", "_size")

    def __init__(self, budget: int = LINKAGES_KEPT) -> None:
        self._kept: OrderedDict[str, str] = OrderedDict()
        self._size = 0
        self._budget = budget

    def get(self, job_id: str) -> str | None:
        return self._kept.get(job_id)

    def keep(self, job_id: str, linkage: str) -> None:
        size = len(linkage) + self.ENTRY
        if job_id in self._kept or size > self._budget:
            return
        self._kept[job_id] = linkage
        self._size += size
        while self._size > self._budget:
            _, dropped = self._kept.popitem(last=False)
            self._size -= len(dropped) + self.ENTRY


def _job(row: Any) -> JobRecord:
    return JobRecord(*row)


async def get_job(
    conn: Conn, account: AccountId, kind: str, job_id: str, now: int
) -> JobRecord | None:
    """A job of the account, of this kind, not expired (expired ones await the reaper)."""
    params = {"account": account, "id": asked(job_id), "kind": kind, "now": now}
    row = await conn.one(_GET_JOB, params)
    return None if row is None else _job(row)


async def poll(
    conn: Conn, key: ApiKey, kind: str, job_id: str, now: int
) -> tuple[KeyRecord | None, JobRecord | None]:
    """The key ``key`` names, and, if ``key`` is that key and it is not revoked, its account's
    job ``job_id`` of this kind (as ``get_job`` finds it)."""
    params: dict[str, object] = {
        "key": asked(key.key_id), "secret_hash": key.secret_hash, "id": asked(job_id),
        "kind": kind, "now": now,
    }  # fmt: skip
    row = await conn.one(_POLL, params)
    if row is None:
        return None, None
    job = row[KEY_WIDTH:]
    return key_record(row), None if job[0] is None else _job(job)


async def polls(
    conn: Conn, asks: Sequence[Ask], now: int, linkages: Linkages
) -> list[tuple[KeyRecord | None, JobRecord | None]]:
    """``poll`` for each ask, in order; on PostgreSQL, several in one statement, which reads
    the linkage only of jobs not in ``linkages`` (and keeps those it reads there)."""
    if len(asks) == 1 or not conn.postgres:
        return [await poll(conn, key, kind, job_id, now) for key, kind, job_id in asks]
    kept = {job_id: linkage for _, _, job_id in asks if (linkage := linkages.get(job_id))}
    values = [
        (asked(key.key_id), key.secret_hash, asked(job_id), kind, job_id in kept)
        for key, kind, job_id in asks
    ]
    params = {"asks": asks_json(_ASKS, values), "now": now}
    found: list[tuple[KeyRecord | None, JobRecord | None]] = [(None, None)] * len(asks)
    for row in await conn.all(_POLLS, params):
        job = row[1 + KEY_WIDTH :]
        record = None
        if job[0] is not None:
            if job[_LINKAGE] is None:  # kept: the ask's job id is the job's
                job = (*job[:_LINKAGE], kept[job[1]], *job[_LINKAGE + 1 :])
            record = _job(job)
            linkages.keep(record.id, record.linkage)
        found[row[0] - 1] = key_record(row[1:]), record
    return found


async def list_jobs(
    conn: Conn, account: AccountId, kind: str, status: str | None, page: PageRequest, now: int
) -> Page[JobRecord]:
    """Keyset-paginated on ``pk`` (newest first when ``page.descending``)."""

    def build() -> Select[Any]:
        query = select(*_JOB).where(
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


def _claimable(table: str) -> str:
    """A job is claimable when queued, or processing with its lease lapsed (recovery is the
    claim), or processing and held by the claimer: an owner is one worker task, which claims
    only when it runs no job, so it holds that lease only because its claim committed and the
    answer was lost (a connection cut): it takes the job again at once, rather than waiting
    out its own lease. (A finished job keeps its last lease: never claimable.)

    The status is read through ``COALESCE`` (it is never NULL: the same test) so that
    PostgreSQL's planner cannot match it to the open jobs' partial index: a claim finds its
    job by primary key. With statistics taken when the queue was emptier (before a burst,
    whatever autovacuum does), the planner believed that index held a few rows and read all
    of it to find the head among them: 3.7 ms a claim at 11,000 queued jobs, a quarter of a
    core in ``make bench-peers`` (bench/README.md, session 17)."""
    status = f"COALESCE({table}status, '')"
    return (
        f"({status} = 'queued' OR ({status} = 'processing' AND "
        f"({table}lease_expires_at < :now OR {table}lease_owner = :owner)))"
    )


_CLAIM = f"""
UPDATE jobs
   SET status = 'processing', lease_owner = :owner, lease_expires_at = :expires,
       attempts = attempts + 1
 WHERE pk = ({{pick}})
   -- still claimable (PostgreSQL rechecks this on a row another worker just changed)
   AND {_claimable("")}
RETURNING pk, id, account_id, kind, shape, total_count, completed_count, failed_count,
          next_index, errors
"""  # noqa: S608 - constant pieces
_CLAIMABLE = f"""{_claimable("j.")}
          AND (j.not_before IS NULL OR j.not_before <= :now)"""
# SQLite (BEGIN IMMEDIATE: one writer at a time): the head of each account's queue (its
# oldest unfinished job, whatever its kind), one lookup in the open jobs' index per account
# with open jobs, however many are queued (INDEXED BY: not by walking an account's finished
# jobs, kept for days, in the index of all its jobs); fair queues: the account whose job was
# claimed least recently goes first.
_PICK_SQLITE = f"""
       SELECT j.pk FROM account_slots AS a
         JOIN jobs AS j ON j.pk = (SELECT min(e.pk) FROM jobs AS e INDEXED BY ix_jobs_open
                                    WHERE e.account_id = a.account_id
                                      AND e.status IN ('queued', 'processing'))
         LEFT JOIN account_turns AS t ON t.account_id = a.account_id
        WHERE a.open_jobs > 0 AND {_CLAIMABLE}
        ORDER BY COALESCE(t.last_claim, 0), j.pk
        LIMIT 1"""  # noqa: S608 - constant pieces
# PostgreSQL: the same, with the heads found first and the jobs then read by primary key. Joined
# the way SQLite's is, the planner may hash every queued job to find the heads (it did, with a
# backlog of 10,000 jobs its statistics had not seen yet: 4 ms a claim, growing with the
# backlog); the head another worker is claiming this instant is skipped, not waited for.
_PICK_POSTGRES = f"""
       SELECT j.pk FROM jobs AS j
        WHERE j.pk = ANY(ARRAY(SELECT pk FROM heads)) AND {_CLAIMABLE}
        ORDER BY (SELECT h.turn FROM heads AS h WHERE h.pk = j.pk), j.pk
        LIMIT 1 FOR UPDATE OF j SKIP LOCKED"""  # noqa: S608 - constant pieces
_HEADS_POSTGRES = """
heads AS MATERIALIZED (
    SELECT (SELECT min(e.pk) FROM jobs AS e
             WHERE e.account_id = a.account_id AND e.status IN ('queued', 'processing')) AS pk,
           COALESCE(t.last_claim, 0) AS turn
      FROM account_slots AS a LEFT JOIN account_turns AS t ON t.account_id = a.account_id
     WHERE a.open_jobs > 0)"""
# The account's turn: its row in account_turns (never its slots, which every acceptance of
# the account updates).
_SERVED_SQL = """INSERT INTO account_turns (account_id, last_claim) {rows}
ON CONFLICT (account_id) DO UPDATE SET last_claim = excluded.last_claim"""
_CLAIM_NEXT = Statement(
    "claim_next_job",
    _CLAIM.format(pick=_PICK_SQLITE),
    # PostgreSQL, in one round trip: the claim, the account's turn taken, and the payload.
    f"""WITH {_HEADS_POSTGRES},
claimed AS ({_CLAIM.format(pick=_PICK_POSTGRES)}),
served AS ({_SERVED_SQL.format(rows="SELECT account_id, :now FROM claimed")})
SELECT claimed.*, p.payload FROM claimed LEFT JOIN job_payloads AS p ON p.job_pk = claimed.pk""",  # noqa: S608 - constant pieces
)
_PAYLOAD = Statement("job_payload", "SELECT payload FROM job_payloads WHERE job_pk = :pk")
_SERVED = Statement("served", _SERVED_SQL.format(rows="VALUES (:account, :now)"))


async def claim_next_job(conn: Conn, owner: str, now: int, lease_us: int) -> ClaimedJob | None:
    params = {"owner": owner, "now": now, "expires": now + lease_us}
    row = await conn.one(_CLAIM_NEXT, params)
    if row is None:
        return None
    pk, job_id, account, kind, shape, total, done, failed, next_index, errors = row[:10]
    job = ClaimedJob(
        pk, JobId(job_id), AccountId(account), kind, shape, total, done, failed, next_index,
        orjson.loads(errors), owner, lease_expires_at=now + lease_us,
    )  # fmt: skip
    if conn.postgres:
        payload = row[10]
    else:
        await conn.run(_SERVED, {"now": now, "account": account})
        found = await conn.one(_PAYLOAD, {"pk": pk})
        payload = None if found is None else found[0]
    job.payload = b"" if payload is None else bytes(payload)
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


_PROGRESS_SQL = """UPDATE jobs
          SET next_index = :end, completed_count = completed_count + :completed,
              failed_count = failed_count + :failed, errors = :errors, status = :status,
              completed_at = :completed_at, expires_at = :expires_at, lease_owner = :owner,
              lease_expires_at = :lease_expires
        WHERE pk = :job"""
_PROGRESS = Statement("record_progress", _PROGRESS_SQL)
# PostgreSQL: a batch that leaves the job unfinished also tells the API processes (a client
# may be watching the job's events).
_PROGRESS_POSTGRES = Statement(
    "record_progress_and_notify",
    f"WITH progress AS ({_PROGRESS_SQL}) SELECT pg_notify('backstock_job_events', :job_id)",
)
_ENQUEUE_DELIVERY = Statement(
    "enqueue_delivery",
    """INSERT INTO webhook_deliveries (account_id, job_id, event, payload, next_attempt_at,
                                       created_at)
       SELECT account_id, :job_id, :event, :hook, :now, :now FROM webhooks
        WHERE account_id = :account""",
)
_NOTIFY_EVENT = Statement("notify_job_event", "SELECT pg_notify('backstock_job_events', :job_id)")
_FREE_SLOT = Statement(
    "free_slot",
    """UPDATE account_slots
          SET open_jobs = open_jobs - 1,
              open_bytes = open_bytes + :kept - COALESCE(
                  (SELECT LENGTH(payload) FROM job_payloads WHERE job_pk = :job), 0)
        WHERE account_id = :account""",
)
_KEEP_PAYLOAD = Statement(
    "keep_failed_items", "UPDATE job_payloads SET payload = :retained WHERE job_pk = :job"
)
_DROP_PAYLOAD = Statement("drop_payload", "DELETE FROM job_payloads WHERE job_pk = :job")
# PostgreSQL: the last batch's progress, the payload (dropped, or cut down to the failed
# items), the webhook delivery and the event in one round trip (a data-modifying WITH runs
# whether or not the statement reads it). The account's slot is freed by free_slots.
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
kept AS (
    UPDATE job_payloads SET payload = CAST(:retained AS BYTEA)
     WHERE job_pk = :job AND CAST(:retained AS BYTEA) IS NOT NULL),
gone AS (
    DELETE FROM job_payloads WHERE job_pk = :job AND CAST(:retained AS BYTEA) IS NULL),
hook AS (
    INSERT INTO webhook_deliveries (account_id, job_id, event, payload, next_attempt_at,
                                    created_at)
    SELECT account_id, :job_id, :event, :hook, :now, :now FROM webhooks
     WHERE account_id = :account)
SELECT pg_notify('backstock_job_events', :job_id)""",
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
    """Move the job past a batch; completes it when it was the last, cutting its payload down
    to the items that failed (kept for a retry until the job expires). The caller frees its
    account's slot at the end of the transaction (``free_slots``)."""
    done = end >= job.total_count
    every_error = [*job.errors, *errors]
    retained = _failed_items(job.payload, every_error) if done else None
    params = {
        "job": job.pk, "end": end, "completed": completed, "failed": len(errors),
        "errors": orjson.dumps(every_error).decode(),
        "status": "complete" if done else "processing",
        "completed_at": now if done else None,
        "expires_at": now + retention_us if done else None,
        "owner": None if done else job.owner,
        "lease_expires": None if done else job.lease_expires_at,
        "account": job.account_id,
        "retained": retained, "job_id": job.id, "now": now,
    }  # fmt: skip
    if done:
        counts = (job.total_count, job.completed_count + completed, job.failed_count + len(errors))
        params |= {
            "event": "job.complete",
            "hook": finished_event(job.kind, job.id, "complete", counts, now),
        }
    if conn.postgres:
        await conn.later(_COMPLETE_POSTGRES if done else _PROGRESS_POSTGRES, params)
    else:
        await conn.later(_PROGRESS, params)
        if done:
            await conn.later(_KEEP_PAYLOAD if retained else _DROP_PAYLOAD, params)
            await conn.later(_ENQUEUE_DELIVERY, params)
    job.bytes_kept = len(retained or b"")
    job.next_index = end
    job.completed_count += completed
    job.failed_count += len(errors)
    job.applied_now, job.failed_now = completed, len(errors)
    return done


_FREE_SLOTS = Statement(
    "free_slots",
    """UPDATE account_slots SET open_jobs = open_jobs - :ended, open_bytes = open_bytes - :freed
        WHERE account_id = :account""",
)


async def free_slots(conn: Conn, ended: Sequence[ClaimedJob]) -> None:
    """The worker's last statements in a transaction: the accounts of the jobs that ``ended``
    in it get their slots back, with their payloads' bytes but those kept for a retry. Last,
    because the account's slots row is what every acceptance of the account updates: taken
    here, its lock is held for the commit only, not while the batches apply (on PostgreSQL, the
    account's spawns would wait for them). Accounts in id order, as any two transactions of
    the worker lock them."""
    for account in sorted({job.account_id for job in ended}):
        done = [job for job in ended if job.account_id == account]
        freed = sum(len(job.payload) - job.bytes_kept for job in done)
        await conn.later(_FREE_SLOTS, {"account": account, "ended": len(done), "freed": freed})


def _failed_items(payload: bytes, errors: list[dict[str, Any]]) -> bytes | None:
    """The payload of a job's failed items, in order (None: none failed), kept as a job's
    payload is (``compress_payload``)."""
    failed = domain.failed_indexes(errors)
    if not failed:
        return None
    entries = load_payload(payload)
    return compress_payload(msgspec.json.encode([entries[index] for index in failed]))


_RELEASE = Statement(
    "release_job",
    """UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL
        WHERE pk = :job AND lease_owner = :owner AND status = 'processing'""",
)


async def release_job(conn: Conn, job: ClaimedJob) -> None:
    """Hand a job back (graceful shutdown): queued again, at the position it reached."""
    await conn.later(_RELEASE, {"job": job.pk, "owner": job.owner})


# An expired job's kept failed items leave its account's quota with it.
_RELEASE_EXPIRED_BYTES = Statement(
    "release_expired_bytes",
    """UPDATE account_slots
          SET open_bytes = open_bytes - COALESCE(
              (SELECT SUM(LENGTH(p.payload)) FROM job_payloads AS p
                 JOIN jobs AS j ON j.pk = p.job_pk
                WHERE j.account_id = account_slots.account_id AND j.expires_at < :now), 0)
        WHERE account_id IN (SELECT j.account_id FROM jobs AS j JOIN job_payloads AS p
                        ON p.job_pk = j.pk WHERE j.expires_at < :now)""",
)
_DELETE_EXPIRED_PAYLOADS = Statement(
    "delete_expired_payloads",
    "DELETE FROM job_payloads WHERE job_pk IN (SELECT pk FROM jobs WHERE expires_at < :now)",
)
_DELETE_EXPIRED = Statement(
    "delete_expired_jobs",
    "DELETE FROM jobs WHERE pk IN (SELECT pk FROM jobs WHERE expires_at < :now LIMIT :limit)",
)


_DELETE_OLD_DELIVERIES = Statement(
    "delete_old_deliveries",
    "DELETE FROM webhook_deliveries WHERE status <> 'pending' AND created_at < :before",
)


async def delete_expired_jobs(conn: Conn, now: int, retention_us: int, limit: int = 1000) -> int:
    """Delete expired jobs (and webhook deliveries settled as long ago)."""
    params = {"now": now, "limit": limit, "before": now - retention_us}
    await conn.run(_RELEASE_EXPIRED_BYTES, params)
    await conn.run(_DELETE_EXPIRED_PAYLOADS, params)
    await conn.run(_DELETE_OLD_DELIVERIES, params)
    return await conn.run(_DELETE_EXPIRED, params)


# ---- cancel and retry (Backstock's extensions) ---------------------------------------------

_CANCEL = Statement(
    "cancel_job",
    """UPDATE jobs SET status = 'cancelled', completed_at = :now, expires_at = :expires,
                       lease_owner = NULL, lease_expires_at = NULL
        WHERE account_id = :account AND id = :id AND kind = :kind
          AND status IN ('queued', 'processing')
    RETURNING pk""",
)


async def cancel_job(
    conn: Conn, account: AccountId, kind: str, job_id: str, now: int, retention_us: int
) -> JobRecord | None:
    """Cancel an open job at once: a queued one before anything of it is applied, a processing
    one right after the batch its worker is applying (on PostgreSQL the UPDATE waits for that
    batch's row lock; on SQLite there is one writer). Its worker's next fence then fails, so
    nothing more of it is ever applied. A job cancelled already stays so; a complete one is a
    409. None: no such job."""
    params = {"account": account, "id": asked(job_id), "kind": kind, "now": now}
    row = await conn.one(_CANCEL, params | {"expires": now + retention_us})
    found = await get_job(conn, account, kind, job_id, now)
    if row is not None and found is not None:
        counts = (found.total_count, found.completed_count, found.failed_count)
        ended = {
            "job": row[0], "account": account, "kept": 0, "job_id": found.id, "now": now,
            "event": "job.cancelled",
            "hook": finished_event(kind, found.id, "cancelled", counts, now),
        }  # fmt: skip
        await conn.run(_FREE_SLOT, ended)
        await conn.run(_DROP_PAYLOAD, ended)
        await conn.run(_ENQUEUE_DELIVERY, ended)
        if conn.postgres:
            await conn.run(_NOTIFY_EVENT, ended)
    if found is not None and found.status == "complete":
        raise JobFinished(f"Job '{job_id}' is complete: there is nothing left to cancel.")
    return found


_RETRY_OF = Statement(
    "retry_of",
    """SELECT pk, id, kind, status, shape, total_count, completed_count, failed_count,
              created_at, completed_at, expires_at, errors, linkage, retry_of
         FROM jobs WHERE account_id = :account AND retry_of = :id""",
)
_KEPT = Statement("kept_items", "SELECT payload FROM job_payloads WHERE job_pk = :job")
_RELEASE_KEPT = Statement(
    "release_kept",
    """UPDATE account_slots SET open_bytes = open_bytes - COALESCE(
              (SELECT LENGTH(payload) FROM job_payloads WHERE job_pk = :job), 0)
        WHERE account_id = :account""",
)


async def retry_job(
    conn: Conn, source: JobRecord, new: NewJob, max_open: int, max_bytes: int
) -> JobRecord:
    """A job of exactly the failed items of ``source``, in their order (once: a second retry
    of the same job is the first one). The kept items move to the new job."""
    await serialize(conn, "retry", new.account, source.id)
    existing = await conn.one(_RETRY_OF, {"account": new.account, "id": source.id})
    if existing is not None:
        return _job(existing)
    kept = await conn.one(_KEPT, {"job": source.pk})
    if source.status != "complete" or source.failed_count == 0 or kept is None:
        raise JobFinished(
            f"Job '{source.id}' has no failed items to retry (it must be complete with "
            "failures, and not expired)."
        )
    payload = bytes(kept[0])
    externals = [entry[0] for entry in load_payload(payload)]
    res = domain.kind(source.kind).resource
    linkage = msgspec.json.encode([{"type": res.type, "id": compound_id(e)} for e in externals])
    retry = replace(new, payload=payload, total=len(externals), linkage=linkage.decode())
    await conn.run(_RELEASE_KEPT, {"job": source.pk, "account": new.account})
    await conn.run(_DROP_PAYLOAD, {"job": source.pk})
    return await accept(conn, retry, max_open, max_bytes)


# Each branch reads a partial index of a few rows (``ix_jobs_leases``: the processing jobs;
# ``ix_jobs_held``: the held jobs' times, the first entry past :now). Until migration 0006
# both scanned the whole table, finished jobs included, after every wake-up. Each branch is
# written with its index's own condition (schema.PROCESSING, schema.HELD: the status tested
# through COALESCE, migration 0009), so that PostgreSQL's planner cannot read the open jobs'
# index instead: with statistics taken when the queue was emptier it did, all of it (1.8 ms a
# wake-up at 11,000 queued jobs), and idle workers wake at every acceptance.
_NEXT_LAPSE = Statement(
    "next_lease_expiry",
    f"""SELECT min(at) FROM (
           SELECT min(lease_expires_at) AS at FROM jobs WHERE {PROCESSING}
           UNION ALL
           SELECT min(not_before) FROM jobs WHERE {HELD} AND not_before > :now
       ) AS wakes""",  # noqa: S608 - constant pieces
)


async def next_lease_expiry(conn: Conn) -> int | None:
    """When the earliest lease of a processing job lapses, or a held job may be claimed (the
    worker's idle wake-up)."""
    row = await conn.one(_NEXT_LAPSE, {"now": now_us()})
    return None if row is None or row[0] is None else int(row[0])


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
              j.failed_count, j.created_at, j.completed_at, j.expires_at, j.errors, j.linkage,
              j.retry_of
         FROM jobs AS j JOIN accounts AS a ON a.id = j.account_id
        WHERE j.id = :id""",
)


async def admin_job(conn: Conn, job_id: str) -> tuple[str, JobRecord] | None:
    row = await conn.one(_ADMIN_JOB, {"id": asked(job_id)})
    return None if row is None else (row[0], _job(row[1:]))


async def admin_jobs(
    conn: Conn, account: str | None, status: str | None, kind: str | None, limit: int
) -> list[tuple[str, JobRecord]]:
    """The newest jobs of every account (or one), optionally of a status and a kind."""

    def build() -> Select[Any]:
        query = select(accounts.c.name, *_JOB).join(accounts, accounts.c.id == jobs.c.account_id)
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
