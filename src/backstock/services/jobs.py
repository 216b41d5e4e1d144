"""Catalog-variant bulk update jobs: accepting them (the API) and running them (the worker)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from backstock.domain import bulk
from backstock.domain.clock import now_us
from backstock.domain.errors import BackstockError, NotFound, TooManyJobs
from backstock.domain.ids import ExternalId, compound_id, new_job_id
from backstock.domain.pagination import Page, PageRequest
from backstock.services import accounts
from backstock.services.accounts import Principal
from backstock.settings import Settings
from backstock.storage import catalog as catalog_store
from backstock.storage import jobs as store
from backstock.storage.database import Connection, Database
from backstock.storage.direct import Direct
from backstock.storage.jobs import ClaimedJob, JobRecord

log = logging.getLogger("backstock.worker")


class JobSignal:
    """Wakes this process's workers when this process accepts a job (the SQLite path; on
    PostgreSQL the ``NOTIFY`` sent with the job wakes every worker everywhere)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._pending = False

    def notify(self) -> None:
        with self._condition:
            self._pending = True
            self._condition.notify_all()

    def wait(self, timeout: float) -> bool:
        with self._condition:
            if not self._pending:
                self._condition.wait(timeout)
            woken, self._pending = self._pending, False
            return woken


class GroupCommit:
    """SQLite: jobs accepted by concurrent requests are committed together, in one transaction
    on one thread at a time, so they share the commit's fsync; the event loop serves other
    requests meanwhile. A job submitted while a commit is under way goes in the next one, so
    an idle service commits each job at once and a busy one in groups. Each request awaits
    its own outcome: its job (the 202 comes after the commit), its own 429, or the group's
    failure (a 503 when the database cannot be written)."""

    def __init__(self, commit: Callable[[list[store.NewJob]], list[JobRecord | BackstockError]]):
        self._commit = commit
        self._ready = threading.Condition()
        self._pending: list[tuple[store.NewJob, asyncio.Future[JobRecord]]] = []
        self._thread: threading.Thread | None = None
        self._closing = False

    async def submit(self, new: store.NewJob) -> JobRecord:
        outcome: asyncio.Future[JobRecord] = asyncio.get_running_loop().create_future()
        with self._ready:
            self._pending.append((new, outcome))
            if self._thread is None:  # started on first use, stopped by ``close``
                self._thread = threading.Thread(
                    target=self._run, name="backstock-group-commit", daemon=True
                )
                self._thread.start()
            self._ready.notify()
        return await outcome

    def close(self) -> None:
        """Stop the committer once it has committed what is pending (a later ``submit``
        starts another)."""
        with self._ready:
            thread, self._closing = self._thread, True
            self._ready.notify_all()
        if thread is not None:
            thread.join()
        with self._ready:
            self._closing = False

    def _run(self) -> None:
        try:
            self._commit_until_closed()
        except BaseException:
            # Not expected (``_commit`` turns failures into outcomes): let the next submit
            # start a committer rather than wait for this one.
            with self._ready:
                if self._thread is threading.current_thread():
                    self._thread = None
            raise

    def _commit_until_closed(self) -> None:
        while True:
            with self._ready:
                while not self._pending and not self._closing:
                    self._ready.wait()
                if not self._pending:  # closing, with nothing left to commit
                    if self._thread is threading.current_thread():
                        self._thread = None
                    return
                group, self._pending = self._pending, []
            outcomes: list[JobRecord | BaseException]
            try:
                outcomes = [*self._commit([new for new, _ in group])]
            except Exception as exc:  # noqa: BLE001 - every request of the group gets it
                outcomes = [exc] * len(group)
            for (_, future), outcome in zip(group, outcomes, strict=True):
                with contextlib.suppress(RuntimeError):  # its event loop has closed: no one waits
                    future.get_loop().call_soon_threadsafe(_settle, future, outcome)


def _settle(future: asyncio.Future[JobRecord], outcome: JobRecord | BaseException) -> None:
    if future.cancelled():  # the client went away; the job stands if it was committed
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


@dataclass(frozen=True, slots=True)
class JobService:
    db: Database
    direct: Direct
    settings: Settings
    signal: JobSignal
    _group: GroupCommit = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_group", GroupCommit(self._insert))

    def close(self) -> None:
        self._group.close()

    # ---- the API's side ----------------------------------------------------------------------

    def spawn_update_job(self, who: Principal, body: bytes) -> JobRecord:
        """Validate the body and commit the job, queued, in one transaction."""
        outcome = self._insert([self._new_job(who, body)])[0]
        if isinstance(outcome, BackstockError):
            raise outcome
        return outcome

    def _insert(self, batch: list[store.NewJob]) -> list[JobRecord | BackstockError]:
        """Commit the jobs in one transaction, each taking its account's slot (or refused)."""
        outcomes: list[JobRecord | BackstockError] = []
        with self.db.write() as conn:
            for new in batch:
                try:
                    outcomes.append(store.insert_job(conn, new, self.settings.max_jobs_in_progress))
                except TooManyJobs as exc:  # nothing of it was written
                    outcomes.append(exc)
        self.signal.notify()
        return outcomes

    async def spawn(
        self, authorization: str | None, body: bytes, admit: Callable[[Principal], Awaitable[None]]
    ) -> JobRecord:
        """``spawn_update_job`` for a request: authenticate, ``admit`` (scope, rate limit),
        then accept. On PostgreSQL acceptance is one autocommitted statement on the event loop;
        on SQLite a group commit on a thread (``GroupCommit``)."""
        who = await accounts.authenticate_direct(self.direct, authorization)
        await admit(who)
        new = self._new_job(who, body)
        if self.db.is_sqlite:
            return await self._group.submit(new)
        return await store.accept_job(self.direct, new, self.settings.max_jobs_in_progress)

    @staticmethod
    def _new_job(who: Principal, body: bytes) -> store.NewJob:
        request = bulk.parse_bulk_update(body)
        return store.NewJob(
            who.account_id, new_job_id(), request.shape, len(request.external_ids),
            request.payload, request.linkage, now_us(),
        )  # fmt: skip

    async def poll(
        self, authorization: str | None, job_id: str, admit: Callable[[Principal], Awaitable[None]]
    ) -> tuple[Principal, JobRecord]:
        """Authenticate and get the job in one statement: what clients do most. ``admit``
        (the scope and rate-limit checks) runs before anything of the job shows, even a 404."""
        key_id, secret = accounts.parse_key(authorization)
        record, job = await store.find_key_and_job(self.direct, key_id, job_id, now_us())
        who = accounts.verify(record, secret)
        await admit(who)
        if job is None:
            raise NotFound(f"No catalog-variant-bulk-update-job with id '{job_id}'")
        return who, job

    async def job_variants(self, who: Principal, job: JobRecord) -> list[dict[str, Any]]:
        """The job's variants that exist, in the order the request named them."""
        external_ids = bulk.linked_external_ids(job.variant_linkage)
        records = await catalog_store.get_variants_direct(self.direct, who.account_id, external_ids)
        found = {record["external_id"]: record for record in records}
        return [found[external] for external in dict.fromkeys(external_ids) if external in found]

    def list_jobs(
        self, who: Principal, statuses: frozenset[str], page: PageRequest
    ) -> Page[JobRecord]:
        """The account's jobs, newest first; those with every status in ``statuses`` (AND-ed
        filter conditions: two different statuses match nothing)."""
        if len(statuses) > 1:
            return Page([], None, None)
        status = next(iter(statuses), None)
        with self.db.read() as conn:
            return store.list_jobs(conn, who.account_id, status, page, now_us())

    # ---- the worker's side -------------------------------------------------------------------

    def claim(self, owner: str, first_batch: bool = True) -> tuple[ClaimedJob, bool] | None:
        """Claim the next job and apply its first batch in the same transaction (one commit
        for a job of one batch). Returns the job and whether it is complete."""
        with self.db.write() as conn:
            now = now_us()
            job = store.claim_next_job(conn, owner, now, self._lease_us)
            if job is None:
                return None
            return job, first_batch and self._apply_batch(conn, job, now)

    def fail_batch(self, job: ClaimedJob) -> bool | None:
        """Give up on the batch at ``next_index`` after repeated unexpected failures (a bug,
        not an unreachable database): its items fail with ``internal_error``, nothing of it
        having been applied, and the job moves on instead of holding its account's queue."""
        with self.db.write() as conn:
            now = now_us()
            if not store.fence(conn, job, now, self._lease_us):
                return None
            start = job.next_index
            end = min(start + self.settings.worker_batch_size, job.total_count)
            base = bulk.variants_pointer("array" if job.shape == "array" else "data")
            errors = [
                _internal_error(ext, f"{base}/{index}")
                for index, (ext, _) in enumerate(bulk.load_changes(job.payload)[start:end], start)
            ]
            log.error(
                "job %s: items %d-%d failed repeatedly; marked failed", job.id, start, end - 1
            )
            return store.record_progress(conn, job, end, 0, errors, now, self._retention_us)

    def run_batch(self, job: ClaimedJob) -> bool | None:
        """Apply the next batch of ``job``; ``True`` when the job is complete, ``False`` when
        more remain, ``None`` when the lease was lost (another worker has the job now)."""
        with self.db.write() as conn:
            now = now_us()
            if not store.fence(conn, job, now, self._lease_us):
                return None
            return self._apply_batch(conn, job, now)

    def _apply_batch(self, conn: Connection, job: ClaimedJob, now: int) -> bool:
        """Apply the batch at ``job.next_index`` and count it; the caller holds the job."""
        start = job.next_index
        end = min(start + self.settings.worker_batch_size, job.total_count)
        batch = bulk.load_changes(job.payload)[start:end]
        found = store.apply_variant_changes(conn, job.account_id, batch, now)
        base = bulk.variants_pointer("array" if job.shape == "array" else "data")
        errors = [
            _missing_variant(ext, f"{base}/{index}")
            for index, ((ext, _), exists) in enumerate(zip(batch, found, strict=True), start)
            if not exists
        ]
        completed = len(batch) - len(errors)
        return store.record_progress(conn, job, end, completed, errors, now, self._retention_us)

    def release(self, job: ClaimedJob) -> None:
        with self.db.write() as conn:
            store.release_job(conn, job)

    def delete_expired(self) -> int:
        with self.db.write() as conn:
            return store.delete_expired_jobs(conn, now_us())

    def seconds_to_next_lapse(self) -> float | None:
        with self.db.read() as conn:
            expiry = store.next_lease_expiry(conn)
        return None if expiry is None else max(0.0, (expiry - now_us()) / 1_000_000)

    @property
    def _lease_us(self) -> int:
        return int(self.settings.lease_seconds * 1_000_000)

    @property
    def _retention_us(self) -> int:
        return int(self.settings.job_retention.total_seconds() * 1_000_000)


def _item_error(code: str, title: str, detail: str, pointer: str) -> dict[str, Any]:
    """One entry of a job's ``errors``: a failed item, pointed at in the request."""
    return {
        "id": store.new_error_id(),
        "code": code,
        "title": title,
        "detail": detail,
        "source": {"pointer": pointer},
    }


def _internal_error(external: str, pointer: str) -> dict[str, Any]:
    detail = f"Updating '{compound_id(external)}' failed repeatedly; it was not applied."
    return _item_error("internal_error", "The update could not be applied.", detail, pointer)


def _missing_variant(external: ExternalId | str, pointer: str) -> dict[str, Any]:
    detail = f"The catalog variant '{compound_id(external)}' does not exist."
    return _item_error("not_found", "Catalog variant not found.", detail, pointer)
