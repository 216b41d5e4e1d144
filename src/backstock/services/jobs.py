"""Bulk jobs of every kind: accepting them (the API) and running them (the worker), on the
one job engine (``storage.jobs``)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Set

from backstock.domain import bodies
from backstock.domain.catalog import Record
from backstock.domain.clock import now_us
from backstock.domain.errors import NotFound
from backstock.domain.ids import new_job_id
from backstock.domain.jobs import ClaimedJob, JobKind, JobRecord, NewJob, linked_external_ids
from backstock.domain.keys import Principal
from backstock.domain.pagination import Page, PageRequest
from backstock.services.offload import decoded
from backstock.services.stores import CatalogStore, JobStore
from backstock.settings import Settings


class JobSignal:
    """Wakes this process's workers when this process accepts a job (the SQLite path; on
    PostgreSQL the ``NOTIFY`` sent with the job wakes every worker everywhere). Each worker
    waits on an ``asyncio.Event`` of its own event loop; ``notify`` may be called from any
    thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def attach(self) -> asyncio.Event:
        event = asyncio.Event()
        with self._lock:
            self._waiters.append((asyncio.get_running_loop(), event))
        return event

    def detach(self, event: asyncio.Event) -> None:
        with self._lock:
            self._waiters = [(loop, e) for loop, e in self._waiters if e is not event]

    def notify(self) -> None:
        with self._lock:
            waiters = list(self._waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(event.set)


class Jobs:
    def __init__(
        self, store: JobStore, catalog: CatalogStore, settings: Settings, signal: JobSignal
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.settings = settings
        self.signal = signal

    # ---- the API's side ----------------------------------------------------------------------

    async def spawn(self, who: Principal, kind: JobKind, body: bytes) -> JobRecord:
        """Validate the body and commit the job, queued: the 202 comes after the commit."""
        request = await decoded(lambda: bodies.decode_job(kind.resource, kind.action, body), body)
        new = NewJob(
            who.account_id, new_job_id(), kind.type, request.shape, len(request.external_ids),
            request.payload, request.linkage, now_us(),
        )  # fmt: skip
        settings = self.settings
        record = await self.store.accept(
            new, settings.max_jobs_in_progress, settings.max_queued_bytes
        )
        self.signal.notify()
        return record

    async def get(self, who: Principal, kind: JobKind, job_id: str) -> JobRecord:
        found = await self.store.get(who.account_id, kind.type, job_id)
        if found is None:
            raise NotFound(f"No {kind.type} with id '{job_id[:40]}'")
        return found

    async def resources(self, who: Principal, kind: JobKind, job: JobRecord) -> list[Record]:
        """The job's resources that exist now, in the order the request named them."""
        externals = linked_external_ids(job.linkage)
        records = await self.catalog.get_many(kind.resource, who.account_id, externals)
        found = {record["external_id"]: record for record in records}
        return [found[external] for external in dict.fromkeys(externals) if external in found]

    async def list_jobs(
        self, who: Principal, kind: JobKind, statuses: Set[str], page: PageRequest
    ) -> Page[JobRecord]:
        """The account's jobs of a kind, newest first; those with every status in
        ``statuses`` (AND-ed filter conditions: two different statuses match nothing)."""
        if len(statuses) > 1:
            return Page([], None, None)
        status = next(iter(statuses), None)
        return await self.store.list_jobs(who.account_id, kind.type, status, page)

    # ---- the operator's side (the CLI): across accounts --------------------------------------

    async def find(self, job_id: str) -> tuple[str, JobRecord]:
        """A job of any account, and its account's name."""
        found = await self.store.admin_job(job_id)
        if found is None:
            raise NotFound(f"No job with id '{job_id[:40]}'")
        return found

    async def browse(
        self, account: str | None, status: str | None, kind: str | None, limit: int = 50
    ) -> list[tuple[str, JobRecord]]:
        """The newest jobs, of every account or one, of a status and a kind if given."""
        return await self.store.admin_jobs(account, status, kind, limit)

    # ---- the worker's side -------------------------------------------------------------------

    async def claim(self, owner: str, first_batch: bool = True) -> tuple[ClaimedJob, bool] | None:
        """Claim the next job and apply its first batch in the same transaction. Returns the
        job and whether it is complete."""
        return await self.store.claim(
            owner, self._lease_us, self.settings.worker_batch_size, self._retention_us, first_batch
        )

    async def run_batch(self, job: ClaimedJob, *, fail: bool = False) -> bool | None:
        """Apply the next batch of ``job`` (with ``fail``, give up on it after repeated
        unexpected failures: its items fail with ``internal_error``): ``True`` when the job is
        complete, ``False`` when more remain, ``None`` when the lease was lost."""
        return await self.store.run_batch(
            job, self._lease_us, self.settings.worker_batch_size, self._retention_us, fail=fail
        )

    async def release(self, job: ClaimedJob) -> None:
        await self.store.release(job)

    async def delete_expired(self) -> int:
        return await self.store.delete_expired()

    async def queue(self) -> tuple[int, int, float | None]:
        """Jobs queued, jobs processing, and the age in seconds of the oldest queued one."""
        queued, processing, oldest = await self.store.queue_stats()
        age = None if oldest is None else max(0.0, (now_us() - oldest) / 1_000_000)
        return queued, processing, age

    async def seconds_to_next_lapse(self) -> float | None:
        expiry = await self.store.next_lease_expiry()
        return None if expiry is None else max(0.0, (expiry - now_us()) / 1_000_000)

    @property
    def _lease_us(self) -> int:
        return int(self.settings.lease_seconds * 1_000_000)

    @property
    def _retention_us(self) -> int:
        return int(self.settings.job_retention.total_seconds() * 1_000_000)
