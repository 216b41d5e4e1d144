"""The one job engine, generic over the kind of job: a batch of a job's entries applied with
its kind's applier (``storage.catalog``), each entry's outcome written with its change
(``storage.jobs.record_progress``); and ``JobStore``, the queue and the engine as the services
see them (every method one read or one write)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from backstock.domain import jobs as domain
from backstock.domain.bodies import PayloadItem, Shape, entries_pointer, load_payload
from backstock.domain.catalog import Outcome, Refusal
from backstock.domain.clock import now_us
from backstock.domain.ids import AccountId
from backstock.domain.jobs import ClaimedJob, JobKind, JobRecord, NewJob
from backstock.domain.keys import ApiKey, KeyRecord
from backstock.domain.pagination import Page, PageRequest
from backstock.domain.resources import Resource
from backstock.storage import catalog
from backstock.storage import jobs as queue
from backstock.storage.database import Database
from backstock.storage.sql import Conn


async def apply_batch(
    conn: Conn,
    job: ClaimedJob,
    now: int,
    batch_size: int,
    retention_us: int,
    forced: Mapping[str, str] | None = None,
    entries: list[PayloadItem] | None = None,
) -> bool:
    """Apply the batch at ``job.next_index`` and count it (the caller holds the job); each
    item's outcome is written with its change. Whether the job is complete. ``forced``: the
    external ids a test fault fails, with their error codes (they are not applied).
    ``entries``: the batch's, when the caller has them already (``batch_entries``)."""
    kind = domain.kind(job.kind)
    start = job.next_index
    end = min(start + batch_size, job.total_count)
    if entries is None:
        entries = batch_entries(job, batch_size)
    if forced:
        outcomes = await _apply_except(conn, kind, job.account_id, entries, forced, now)
    else:
        outcomes = await catalog.apply(
            conn, kind.action, kind.resource, job.account_id, entries, now
        )
    errors = item_errors(kind.resource, job.shape, start, entries, outcomes)  # type: ignore[arg-type]
    completed = len(entries) - len(errors)
    return await queue.record_progress(conn, job, end, completed, errors, now, retention_us)


def batch_entries(job: ClaimedJob, batch_size: int) -> list[PayloadItem]:
    """The entries of the batch at ``job.next_index``."""
    return load_payload(job.payload)[job.next_index : job.next_index + batch_size]


async def _apply_except(
    conn: Conn,
    kind: JobKind,
    account: AccountId,
    entries: list[PayloadItem],
    forced: Mapping[str, str],
    now: int,
) -> list[Outcome]:
    applied = [entry for entry in entries if entry[0] not in forced]
    found = iter(await catalog.apply(conn, kind.action, kind.resource, account, applied, now))
    return [
        Refusal("forced", code=forced[entry[0]]) if entry[0] in forced else next(found)
        for entry in entries
    ]


def item_errors(
    res: Resource, shape: Shape, start: int, entries: list[PayloadItem], outcomes: list[Outcome]
) -> list[dict[str, Any]]:
    """The ``errors`` entries of the refused items of a batch starting at ``start``."""
    base = entries_pointer(res.plural, shape)
    return [
        domain.refused(res, refusal, entry[0], f"{base}/{index}")
        for index, (entry, refusal) in enumerate(zip(entries, outcomes, strict=True), start)
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
        for index, entry in enumerate(batch_entries(job, batch_size), start)
    ]
    return await queue.record_progress(conn, job, end, 0, errors, now, retention_us)


class _Simulated(Exception):
    """Ends a dry run's transaction: what it found, and everything it wrote rolled back."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("dry run")
        self.errors = errors


class _Changed:
    """PostgreSQL: the rows a claim's transaction has changed (by account, resource and
    external id), and how many changes fell on rows it had changed already."""

    def __init__(self) -> None:
        self.rows: set[tuple[int, str, str]] = set()
        self.again = 0

    def admits(self, job: ClaimedJob, entries: list[PayloadItem], limit: int) -> bool:
        """Whether ``entries`` may be applied in the transaction: its changes of rows it has
        changed already stay under ``limit``. If so, they are counted."""
        account, resource = job.account_id, domain.kind(job.kind).resource.table
        rows = {(account, resource, entry[0]) for entry in entries}
        again = self.again + len(rows & self.rows)
        if again >= limit:
            return False
        self.rows |= rows
        self.again = again
        return True


class JobStore:
    """The queue and the engine, as the services see them."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._linkages = queue.Linkages()  # of the jobs polled lately (``queue.polls``)

    async def accept(self, new: NewJob, max_open: int, max_bytes: int) -> JobRecord:
        # One statement on PostgreSQL, committed with the others pending (``Database.write``,
        # ``single``); an idempotent spawn looks for its key first, in a transaction. The
        # payload comes compressed (``bodies.decode_job``), as the database keeps it.
        single = new.idempotency_key is None
        return await self.db.write(
            lambda conn: queue.accept(conn, new, max_open, max_bytes), single=single
        )

    async def dry_run(self, kind: JobKind, new: NewJob) -> list[dict[str, Any]]:
        """What the job would report if it ran now: each entry applied to the catalog in a
        transaction that is then rolled back (nothing is written, no slot is taken)."""

        async def unit(conn: Conn) -> None:
            entries = load_payload(new.payload)
            outcomes = await catalog.apply(
                conn, kind.action, kind.resource, new.account, entries, now_us()
            )
            raise _Simulated(item_errors(kind.resource, new.shape, 0, entries, outcomes))  # type: ignore[arg-type]

        try:
            await self.db.write(unit)
        except _Simulated as result:
            return result.errors
        raise AssertionError("a dry run always rolls back")  # pragma: no cover

    async def get(self, account: AccountId, kind: str, job_id: str) -> JobRecord | None:
        return await self.db.read(lambda conn: queue.get_job(conn, account, kind, job_id, now_us()))

    async def poll(
        self, key: ApiKey, kind: str, job_id: str
    ) -> tuple[KeyRecord | None, JobRecord | None]:
        return await self.db.read_together(self._polls, (key, kind, job_id))

    async def _polls(
        self, conn: Conn, asks: list[queue.Ask]
    ) -> list[tuple[KeyRecord | None, JobRecord | None]]:
        return await queue.polls(conn, asks, now_us(), self._linkages)

    async def list_jobs(
        self, account: AccountId, kind: str, status: str | None, page: PageRequest
    ) -> Page[JobRecord]:
        return await self.db.read(
            lambda conn: queue.list_jobs(conn, account, kind, status, page, now_us())
        )

    async def cancel(
        self, account: AccountId, kind: str, job_id: str, retention_us: int
    ) -> JobRecord | None:
        return await self.db.write(
            lambda conn: queue.cancel_job(conn, account, kind, job_id, now_us(), retention_us)
        )

    async def retry(
        self, source: JobRecord, new: NewJob, max_open: int, max_bytes: int
    ) -> JobRecord:
        return await self.db.write(
            lambda conn: queue.retry_job(conn, source, new, max_open, max_bytes)
        )

    async def claim(
        self,
        owner: str,
        lease_us: int,
        batch_size: int,
        retention_us: int,
        first_batch: bool,
        items: int = 1,
    ) -> list[tuple[ClaimedJob, bool]]:
        """Claim the next job and, with ``first_batch``, apply its first batch in the same
        transaction (one commit for a job of one batch); while the jobs claimed are complete
        and hold fewer than ``items`` items, claim and apply the next in it too. Each job, and
        whether it is complete (only the last may not be).

        On PostgreSQL a transaction changes rows it has changed already fewer than
        ``batch_size`` times: a job that would take it there is claimed, and its batches left
        to transactions of their own (``run_batch``). Every version of a row a transaction
        writes stays until it commits (MVCC), so jobs updating the same rows, applied
        together, left no room on the rows' pages for updates in place and grew the table by
        a copy of each row a job, with an entry in each of its indexes (bench/README.md, "Jobs
        per transaction"). SQLite updates a row in place: there, jobs go together up to
        ``items``."""
        postgres = not self.db.is_sqlite

        async def unit(conn: Conn) -> list[tuple[ClaimedJob, bool]]:
            now = now_us()
            claimed: list[tuple[ClaimedJob, bool]] = []
            held = 0
            changed = _Changed()
            while held < items:
                job = await queue.claim_next_job(conn, owner, now, lease_us)
                if job is None:
                    break
                # The clock read again: the job may have been accepted (its created_at read)
                # after ``now``, and committed just before the claim saw it.
                applied_at = max(now, now_us())
                done = False
                if first_batch:
                    entries = batch_entries(job, batch_size)
                    if postgres and not changed.admits(job, entries, batch_size):
                        claimed.append((job, False))  # its batches in transactions of their own
                        break
                    done = await apply_batch(
                        conn, job, applied_at, batch_size, retention_us, entries=entries
                    )
                claimed.append((job, done))
                held += job.total_count
                if not done:
                    break
            await queue.free_slots(conn, [job for job, done in claimed if done])
            return claimed

        return await self.db.write(unit)

    async def run_batch(
        self,
        job: ClaimedJob,
        lease_us: int,
        batch_size: int,
        retention_us: int,
        *,
        fail: bool,
        forced: Mapping[str, str] | None = None,
    ) -> bool | None:
        """Apply (or, with ``fail``, give up on) the next batch of a held job: whether the job
        is complete, or None when it is no longer this worker's (its lease was lost, or it was
        cancelled)."""

        async def unit(conn: Conn) -> bool | None:
            now = now_us()
            if not await queue.fence(conn, job, now, lease_us):
                return None
            if fail:
                done = await fail_batch(conn, job, now, batch_size, retention_us)
            else:
                done = await apply_batch(conn, job, now, batch_size, retention_us, forced)
            if done:
                await queue.free_slots(conn, (job,))
            return done

        return await self.db.write(unit)

    async def release(self, job: ClaimedJob) -> None:
        await self.db.write(lambda conn: queue.release_job(conn, job))

    async def delete_expired(self, retention_us: int) -> int:
        return await self.db.write(
            lambda conn: queue.delete_expired_jobs(conn, now_us(), retention_us)
        )

    async def next_lease_expiry(self) -> int | None:
        return await self.db.read(queue.next_lease_expiry)

    async def queue_stats(self) -> tuple[int, int, int | None]:
        return await self.db.read(queue.queue_stats)

    async def admin_job(self, job_id: str) -> tuple[str, JobRecord] | None:
        return await self.db.read(lambda conn: queue.admin_job(conn, job_id))

    async def admin_jobs(
        self, account: str | None, status: str | None, kind: str | None, limit: int
    ) -> list[tuple[str, JobRecord]]:
        return await self.db.read(lambda conn: queue.admin_jobs(conn, account, status, kind, limit))
