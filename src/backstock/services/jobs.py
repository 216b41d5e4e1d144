"""Bulk jobs of every kind: accepting them (the API) and running them (the worker), on the
one job engine (``storage.jobs``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Set
from dataclasses import replace
from typing import Protocol

import msgspec

from backstock.domain import bodies, keys
from backstock.domain.catalog import Record
from backstock.domain.clock import now_us
from backstock.domain.errors import NotFound, Throttled
from backstock.domain.ids import AccountId, JobId, new_job_id
from backstock.domain.jobs import (
    FINAL,
    ClaimedJob,
    JobKind,
    JobRecord,
    NewJob,
    linked_external_ids,
    request_hash,
)
from backstock.domain.keys import ApiKey, Principal
from backstock.domain.pagination import Page, PageRequest
from backstock.services.offload import decoded
from backstock.services.stores import CatalogStore, JobStore, Listen
from backstock.settings import Settings

log = logging.getLogger("backstock.jobs")


class Signal:
    """Wake-ups on topics: ``""`` when a job is accepted, a job's id when a batch of it
    commits, ``DELIVERIES`` when a job ends. ``notify`` wakes the waiters of this process and,
    through the relay (SQLite's ``FileBus``), those of the other processes on the same file;
    on PostgreSQL the statements' ``NOTIFY`` does that. Each waiter waits on an
    ``asyncio.Event`` of its own event loop; ``notify`` may be called from any thread."""

    def __init__(self, relay: Callable[[str], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._relay = relay
        """Tells the other processes (SQLite; on PostgreSQL the statements ``NOTIFY``)."""

    def attach(self, topic: str = "") -> asyncio.Event:
        event = asyncio.Event()
        with self._lock:
            self._waiters.setdefault(topic, []).append((asyncio.get_running_loop(), event))
        return event

    def detach(self, event: asyncio.Event, topic: str = "") -> None:
        with self._lock:
            left = [(loop, e) for loop, e in self._waiters.get(topic, ()) if e is not event]
            if left:
                self._waiters[topic] = left
            else:
                self._waiters.pop(topic, None)

    def notify(self, topic: str = "") -> None:
        """Wake the waiters of ``topic`` here and, through the relay, in other processes."""
        self.wake_here(topic)
        if self._relay is not None:
            try:
                self._relay(topic)
            except Exception:  # a wake-up is never worth failing what was committed
                log.exception("could not tell other processes of %r", topic)

    def wake_here(self, topic: str = "") -> None:
        """Wake this process's waiters of ``topic`` (another process's notification)."""
        with self._lock:
            waiters = self._waiters.get(topic)
            if not waiters:
                return
            waiters = list(waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(event.set)


class FaultHooks(Protocol):
    """Test faults (``BACKSTOCK_TEST_FAULTS``, ``backstock.faults``): how a spawn and a batch
    are disturbed on purpose. Absent in production."""

    def on_spawn(self, new: NewJob) -> NewJob:
        """Raise to refuse the spawn, or return the job (held, perhaps)."""
        ...

    async def before_batch(self, job: ClaimedJob) -> tuple[int | None, Mapping[str, str]]:
        """Wait as the rules say; the batch size to use (None: the setting's), and the
        external ids to fail, with their error codes."""
        ...


DELIVERIES = "webhook-deliveries"
CLAIM_ITEMS = 500
"""About how many items a worker's claim applies in one transaction (whole jobs: five of 100)."""
HEARTBEAT_SECONDS = 15.0


class Jobs:
    def __init__(
        self,
        store: JobStore,
        catalog: CatalogStore,
        settings: Settings,
        signal: Signal,
        listen_events: Listen | None = None,
        faults: FaultHooks | None = None,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.settings = settings
        self.signal = signal
        self.listen_events = listen_events
        self.faults = faults
        """PostgreSQL: LISTEN for job events (SQLite: the signal alone)."""
        self._listeners: dict[
            asyncio.AbstractEventLoop, tuple[asyncio.Task[None], asyncio.Event]
        ] = {}
        self._streams: dict[AccountId, int] = {}

    # ---- the API's side ----------------------------------------------------------------------

    async def spawn(
        self, who: Principal, kind: JobKind, body: bytes, idempotency_key: str | None = None
    ) -> JobRecord:
        """Validate the body and commit the job, queued: the 202 comes after the commit. With
        an ``idempotency_key`` the account used before for the same request, the job that
        request made (a different request with that key: 422)."""
        new = await self._new_job(who, kind, body)
        if idempotency_key is not None:
            new = replace(
                new,
                idempotency_key=idempotency_key,
                request_hash=request_hash(kind.type, body),
            )
        if self.faults is not None:
            new = self.faults.on_spawn(new)
        settings = self.settings
        record = await self.store.accept(
            new, settings.max_jobs_in_progress, settings.max_queued_bytes
        )
        self.signal.notify()
        return record

    async def _new_job(self, who: Principal, kind: JobKind, body: bytes) -> NewJob:
        request = await decoded(lambda: bodies.decode_job(kind.resource, kind.action, body), body)
        return NewJob(
            who.account_id, new_job_id(), kind.type, request.shape, len(request.external_ids),
            request.payload, request.linkage, now_us(),
        )  # fmt: skip

    async def dry_run(self, who: Principal, kind: JobKind, body: bytes) -> JobRecord:
        """The job ``body`` would make, as if it had run now: its counts and ``errors`` (every
        item checked against the catalog in a transaction then rolled back). Nothing is
        written and no queue slot is taken; the record's id names no job."""
        new = await self._new_job(who, kind, body)
        errors = await self.store.dry_run(kind, new)
        now = now_us()
        failed = len(errors)
        return JobRecord(
            0, JobId("dry-run"), kind.type, "complete", new.shape, new.total,
            new.total - failed, failed, new.created_at, now, None,
            msgspec.json.encode(errors).decode(), new.linkage,
        )  # fmt: skip

    async def cancel(self, who: Principal, kind: JobKind, job_id: str) -> JobRecord:
        """Cancel a queued or processing job: nothing more of it is applied (409 once it is
        complete)."""
        found = self.require(
            kind, job_id,
            await self.store.cancel(who.account_id, kind.type, job_id, self._retention_us),
        )  # fmt: skip
        self.signal.notify(found.id)
        self.signal.notify(DELIVERIES)
        return found

    async def retry(self, who: Principal, kind: JobKind, job_id: str) -> JobRecord:
        """A new job of exactly the items ``job_id`` failed, in their order; the same one on
        every call for that job."""
        source = await self.get(who, kind, job_id)
        new = NewJob(
            who.account_id, new_job_id(), kind.type, source.shape, 0, b"", "[]", now_us(),
            retry_of=source.id,
        )  # fmt: skip
        settings = self.settings
        record = await self.store.retry(
            source, new, settings.max_jobs_in_progress, settings.max_queued_bytes
        )
        self.signal.notify()
        return record

    async def watch(
        self, who: Principal, kind: JobKind, job_id: str
    ) -> AsyncGenerator[JobRecord | None, None]:
        """The job now (404 if none), then again each time its status or counts change,
        until it is complete or cancelled; ``None`` when nothing changed for a while (a
        heartbeat). Changes are heard of at once from this process's worker and, on
        PostgreSQL, from any process's (``LISTEN``); the job is read again every few seconds
        besides, so a lost notification only delays an event."""
        account = who.account_id
        open_now = self._streams.get(account, 0)
        if open_now >= self.settings.max_event_streams:
            raise Throttled(
                f"This account already has {open_now} event streams open in this process.",
                retry_after=1,
            )
        self._streams[account] = open_now + 1
        self._listening()
        event = self.signal.attach(job_id)
        try:
            job = await self.get(who, kind, job_id)
            yield job
            poll = 1.0 if self.listen_events is None else 5.0
            quiet_since = time.monotonic()
            while job.status not in FINAL:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), poll)
                event.clear()
                latest = await self.store.get(account, kind.type, job.id)
                if latest is None:  # expired meanwhile
                    return
                if _progress(latest) != _progress(job):
                    job = latest
                    quiet_since = time.monotonic()
                    yield job
                elif time.monotonic() - quiet_since >= HEARTBEAT_SECONDS:
                    quiet_since = time.monotonic()
                    yield None
        finally:
            self.signal.detach(event, job_id)
            self._streams[account] -= 1
            if not self._streams[account]:
                del self._streams[account]

    def _listening(self) -> None:
        """On PostgreSQL: this event loop LISTENs for job events (once, from its first watch
        to ``stop_listening``)."""
        if self.listen_events is None:
            return
        loop = asyncio.get_running_loop()
        if loop in self._listeners:
            return
        stopping = asyncio.Event()
        task = loop.create_task(self.listen_events(self.signal.notify, stopping))
        self._listeners[loop] = (task, stopping)

    async def stop_listening(self) -> None:
        """End this event loop's LISTEN, if it has one."""
        found = self._listeners.pop(asyncio.get_running_loop(), None)
        if found is not None:
            task, stopping = found
            stopping.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 2.0)

    async def get(self, who: Principal, kind: JobKind, job_id: str) -> JobRecord:
        return self.require(kind, job_id, await self.store.get(who.account_id, kind.type, job_id))

    async def poll(
        self, key: ApiKey, kind: JobKind, job_id: str
    ) -> tuple[Principal, JobRecord | None]:
        """The principal of ``key`` (401 unless it is valid: ``domain.keys.principal``) and its
        account's job ``job_id``, if there is one, in one statement: a poll is one round trip.
        The job comes back only through a valid key; ``require`` makes the 404."""
        record, job = await self.store.poll(key, kind.type, job_id)
        return keys.principal(record, key), job

    @staticmethod
    def require(kind: JobKind, job_id: str, found: JobRecord | None) -> JobRecord:
        """``found``, or 404 when there is no such job."""
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
        claimed = await self.claim_many(owner, first_batch, items=1)
        return claimed[0] if claimed else None

    async def claim_many(
        self, owner: str, first_batch: bool = True, items: int = CLAIM_ITEMS
    ) -> list[tuple[ClaimedJob, bool]]:
        """Claim jobs and apply them in one transaction, up to about ``items`` items (jobs of
        one batch each; the last may be unfinished): one commit for several small jobs, so a
        worker keeps pace when commits are slow (a busy SQLite writer). On PostgreSQL a job
        whose rows the transaction changed already may be claimed without its first batch
        (``JobStore.claim`` says when and why). Each job, and whether it is complete."""
        if self.faults is not None:  # each batch as the account's rules say: none in the claim
            first_batch, items = False, 1
        claimed = await self.store.claim(
            owner, self._lease_us, self.settings.worker_batch_size, self._retention_us,
            first_batch, items if first_batch else 1,
        )  # fmt: skip
        for job, done in claimed:
            self._moved(job, done)
        return claimed

    async def run_batch(self, job: ClaimedJob, *, fail: bool = False) -> bool | None:
        """Apply the next batch of ``job`` (with ``fail``, give up on it after repeated
        unexpected failures: its items fail with ``internal_error``): ``True`` when the job is
        complete, ``False`` when more remain, ``None`` when the lease was lost."""
        size, forced = self.settings.worker_batch_size, None
        if self.faults is not None:
            chosen, forced = await self.faults.before_batch(job)
            size = chosen or size
        done = await self.store.run_batch(
            job, self._lease_us, size, self._retention_us, fail=fail, forced=forced
        )
        if done is not None:
            self._moved(job, done)
        return done

    def _moved(self, job: ClaimedJob, done: bool) -> None:
        """A batch of ``job`` committed: wake whoever watches it here, and this process's
        webhook deliveries when the job ended."""
        self.signal.notify(job.id)
        if done:
            self.signal.notify(DELIVERIES)

    async def release(self, job: ClaimedJob) -> None:
        await self.store.release(job)

    async def delete_expired(self) -> int:
        return await self.store.delete_expired(self._retention_us)

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


def _progress(job: JobRecord) -> tuple[str, int, int]:
    return job.status, job.completed_count, job.failed_count
