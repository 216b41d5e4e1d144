"""The job worker: claims jobs from the job table and applies them batch by batch.

It runs its own event loop on a thread of its own (``start``), with ``concurrency`` tasks each
running one job at a time, so the API's event loop never waits for it. On PostgreSQL it also
LISTENs for new jobs; on SQLite the ``Signal`` wakes it, sent in its process or by another
process on the same file (``storage.notify.FileBus``). A task of its own sends
webhook deliveries (``worker.delivery``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from backstock import telemetry
from backstock.domain.errors import BackstockError
from backstock.domain.jobs import ClaimedJob
from backstock.services.container import Services
from backstock.services.jobs import DELIVERIES
from backstock.worker import delivery

log = logging.getLogger("backstock.worker")

REAP_EVERY_SECONDS = 60.0
POISON_TRIES = 5
T = TypeVar("T")


def _measured(job: ClaimedJob, seconds: float, done: bool) -> None:
    """A batch's metrics (the claim's first batch too)."""
    telemetry.BATCH_SECONDS.labels(job.kind).observe(seconds)
    telemetry.ITEMS.labels(job.kind, "applied").inc(job.applied_now)
    telemetry.ITEMS.labels(job.kind, "failed").inc(job.failed_now)
    if done:
        outcome = "ok" if job.failed_count == 0 else "with_errors"
        telemetry.JOBS_COMPLETED.labels(job.kind, outcome).inc()


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    """A sleeping task wakes when a signal says a job arrived, or when the earliest lease of
    a running job lapses (capped at ``idle_check_seconds``)."""

    def __init__(
        self,
        services: Services,
        concurrency: int = 1,
        listen: Callable[[Callable[[], None], asyncio.Event], Coroutine[Any, Any, None]]
        | None = None,
    ) -> None:
        self.services = services
        self.jobs = services.jobs
        self.concurrency = concurrency
        self.stop = threading.Event()
        """Set (from any thread) to stop: each task finishes its batch and hands its job back."""
        self._listen = listen
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._last_reap = 0.0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="backstock-worker", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Finish the current batches, hand the jobs back, and return."""
        self.stop.set()
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop has finished already
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(timeout)

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._wake = self.services.signal.attach()
        if self.stop.is_set():
            self._stopping.set()
        watcher = asyncio.create_task(self._watch_stop())
        tasks = [asyncio.create_task(self._loop_forever()) for _ in range(self.concurrency)]
        tasks.append(asyncio.create_task(self._deliver_forever()))
        if self._listen is not None:
            tasks.append(asyncio.create_task(self._listen(self._wake.set, self._stopping)))
        try:
            await asyncio.gather(*tasks)
        finally:
            watcher.cancel()
            self.services.signal.detach(self._wake)
            await self.services.close_loop()

    async def _watch_stop(self) -> None:
        """The threading ``stop`` (set by a signal handler) as the loop's ``_stopping``."""
        assert self._stopping is not None
        while not self.stop.is_set():
            await asyncio.sleep(0.1)
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self.stop.is_set() or (self._stopping is not None and self._stopping.is_set())

    async def _loop_forever(self) -> None:
        owner = worker_name()
        while not self.stopping:
            started = time.perf_counter()
            claimed = await self._retrying(
                lambda: self.jobs.claim_many(owner),
                # a first batch keeps failing: claim one alone, and let _run_job deal with it
                on_poison=lambda: self.jobs.claim_many(owner, first_batch=False),
            )
            if not claimed:
                await self._retrying(self._idle)
                continue
            # One transaction for all; a job claimed without its first batch (the poison
            # path's, or on PostgreSQL one whose rows the transaction had changed) has no batch
            # to measure yet.
            applied = [(job, done) for job, done in claimed if job.applied_now + job.failed_now]
            share = (time.perf_counter() - started) / max(len(applied), 1)
            for job, done in applied:
                _measured(job, share, done)
            job, done = claimed[-1]
            if not done:  # claimed, more to do (from its first batch or its next)
                await self._run_job(job)

    async def _run_job(self, job: ClaimedJob) -> None:
        """Run ``job`` batch by batch; a failed batch is retried (its transaction rolled back
        or its outcome unknown: the fence at the start of the next try sorts that out)."""
        while not self.stopping:
            started = time.perf_counter()
            done = await self._retrying(
                lambda: self.jobs.run_batch(job),
                on_poison=lambda: self.jobs.run_batch(job, fail=True),
            )
            if done is not None:
                _measured(job, time.perf_counter() - started, done)
            if done:
                return
            if done is None and not self.stopping:
                log.info("worker: job %s is no longer ours (its lease was lost)", job.id)
                return
        await self._hand_back(job)

    async def _hand_back(self, job: ClaimedJob) -> None:
        """On shutdown: queue the job again at once, rather than after its lease lapses. A few
        tries only (the worker is stopping); if they fail, the lease still frees the job."""
        for attempt in range(3):
            try:
                await self.jobs.release(job)
            except Exception:  # noqa: BLE001 - any failure: try again, then leave it to the lease
                await asyncio.sleep(0.1 * (attempt + 1))
            else:
                log.info("worker: handed job %s back", job.id)
                return
        log.warning("worker: could not hand job %s back; its lease will free it", job.id)

    async def _retrying(
        self,
        action: Callable[[], Awaitable[T]],
        on_poison: Callable[[], Awaitable[T]] | None = None,
    ) -> T | None:
        """Run ``action`` until it succeeds, backing off while the database is away (which
        may last); ``None`` if the worker is stopped meanwhile. After ``POISON_TRIES``
        unexpected failures in a row (a bug, which waiting will not cure) switch to
        ``on_poison``, retried the same way."""
        backoff = 0.05
        unexpected = 0
        while not self.stopping:
            try:
                return await action()
            except BackstockError as exc:
                log.warning("worker: %s; retrying in %.2f s", exc.detail, backoff)
            except Exception:
                log.exception("worker: unexpected error; retrying in %.2f s", backoff)
                unexpected += 1
                if on_poison is not None and unexpected >= POISON_TRIES:
                    action, on_poison, unexpected = on_poison, None, 0
            await self._sleep(backoff)
            backoff = min(backoff * 2, 2.0)
        return None

    async def _deliver_forever(self) -> None:
        """Send due webhook deliveries; sleep until the next is due, a job ends in this
        process, or ``idle_check_seconds`` pass (a job another process ended). Whether one is
        due is read first: taking them is a write, and every job's end wakes this loop, with
        deliveries queued or not (an account without a webhook queues none)."""
        webhooks = self.services.webhooks
        signal = self.services.signal
        ended = signal.attach(DELIVERIES)
        try:
            while not self.stopping:
                wait = await self._retrying(webhooks.seconds_to_next)
                if wait is not None and wait <= 0:
                    sent = await self._retrying(lambda: webhooks.deliver_due(delivery.post))
                    if sent == 0:  # another worker is taking them (SKIP LOCKED): not a spin
                        await self._until(ended, 0.05)
                    continue
                wait = min(
                    wait if wait is not None else 1e9, self.services.settings.idle_check_seconds
                )
                await self._until(ended, wait)
        finally:
            signal.detach(ended, DELIVERIES)

    async def _until(self, event: asyncio.Event, seconds: float) -> None:
        """Wait for ``event`` (then clear it), for stopping, or ``seconds``."""
        assert self._stopping is not None
        waits = (asyncio.create_task(event.wait()), asyncio.create_task(self._stopping.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
        event.clear()

    async def _sleep(self, seconds: float) -> None:
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _idle(self) -> None:
        now = time.monotonic()
        if now - self._last_reap > REAP_EVERY_SECONDS:
            self._last_reap = now
            deleted = await self.jobs.delete_expired()
            if deleted:
                log.info("worker: deleted %d expired jobs", deleted)
        wait = self.services.settings.idle_check_seconds
        lapse = await self.jobs.seconds_to_next_lapse()
        if lapse is not None:
            wait = min(wait, lapse + 0.01)
        assert self._wake is not None
        await self._until(self._wake, wait)
