"""The job worker: claims jobs from the job table and applies them batch by batch."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

from backstock.domain.errors import BackstockError
from backstock.services.jobs import JobService
from backstock.storage.jobs import ClaimedJob

log = logging.getLogger("backstock.worker")

REAP_EVERY_SECONDS = 60.0
POISON_TRIES = 5
T = TypeVar("T")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    """``concurrency`` threads, each claiming and running one job at a time.

    A thread sleeps only when there was nothing to claim, until a signal says a job arrived
    or until the earliest lease of a running job lapses (capped at ``idle_check_seconds``).
    """

    def __init__(self, jobs: JobService, concurrency: int = 1) -> None:
        self.jobs = jobs
        self.concurrency = concurrency
        self.stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_reap = 0.0

    def start(self) -> None:
        for index in range(self.concurrency):
            thread = threading.Thread(
                target=self._loop, name=f"backstock-worker-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Finish the current batch, hand the job back, and return."""
        self.stop.set()
        self.jobs.signal.notify()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def run_forever(self) -> None:
        self.start()
        while not self.stop.wait(1.0):
            pass
        self.shutdown()

    def _loop(self) -> None:
        owner = worker_name()
        while not self.stop.is_set():
            claimed = self._retrying(
                lambda: self.jobs.claim(owner),
                # the first batch keeps failing: claim alone, and let _run deal with the batch
                on_poison=lambda: self.jobs.claim(owner, first_batch=False),
            )
            if claimed is None:
                self._retrying(self._idle)
            elif not claimed[1]:  # claimed, first batch applied, more to do
                self._run(claimed[0])

    def _run(self, job: ClaimedJob) -> None:
        """Run ``job`` batch by batch; a failed batch is retried (its transaction rolled back
        or its outcome unknown: the fence at the start of the next try sorts that out)."""
        log.debug("worker: running job %s", job.id)
        while not self.stop.is_set():
            done = self._retrying(
                lambda: self.jobs.run_batch(job), on_poison=lambda: self.jobs.fail_batch(job)
            )
            if done:
                return
            if done is None and not self.stop.is_set():
                log.info("worker: job %s is no longer ours (its lease was lost)", job.id)
                return
        self._hand_back(job)

    def _hand_back(self, job: ClaimedJob) -> None:
        """On shutdown: queue the job again at once, rather than after its lease lapses. A few
        tries only (the worker is stopping); if they fail, the lease still frees the job."""
        for attempt in range(3):
            try:
                self.jobs.release(job)
            except Exception:  # noqa: BLE001 - any failure: try again, then leave it to the lease
                time.sleep(0.1 * (attempt + 1))
            else:
                log.info("worker: handed job %s back", job.id)
                return
        log.warning("worker: could not hand job %s back; its lease will free it", job.id)

    def _retrying(
        self, action: Callable[[], T], on_poison: Callable[[], T] | None = None
    ) -> T | None:
        """Run ``action`` until it succeeds, backing off while the database is away (which
        may last); ``None`` if the worker is stopped meanwhile. After ``POISON_TRIES``
        unexpected failures in a row (a bug, which waiting will not cure) switch to
        ``on_poison``, retried the same way."""
        backoff = 0.05
        unexpected = 0
        while not self.stop.is_set():
            try:
                return action()
            except BackstockError as exc:
                log.warning("worker: %s; retrying in %.2f s", exc.detail, backoff)
            except Exception:
                log.exception("worker: unexpected error; retrying in %.2f s", backoff)
                unexpected += 1
                if on_poison is not None and unexpected >= POISON_TRIES:
                    action, on_poison, unexpected = on_poison, None, 0
            self.stop.wait(backoff)
            backoff = min(backoff * 2, 2.0)
        return None

    def _idle(self) -> None:
        now = time.monotonic()
        if now - self._last_reap > REAP_EVERY_SECONDS:
            self._last_reap = now
            deleted = self.jobs.delete_expired()
            if deleted:
                log.info("worker: deleted %d expired jobs", deleted)
        wait = self.jobs.settings.idle_check_seconds
        lapse = self.jobs.seconds_to_next_lapse()
        if lapse is not None:
            wait = min(wait, lapse + 0.01)
        self.jobs.signal.wait(wait)
