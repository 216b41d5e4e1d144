"""What operators see: Prometheus metrics, one access-log line per request, request ids that
follow a request through every log line, and the log format.

Metrics use prometheus-client's default registry; with ``serve --workers N`` every process
writes to the directory ``PROMETHEUS_MULTIPROC_DIR`` names (``serve`` sets it up) and
``/metrics`` adds them up. Labels are bounded: operations and job kinds are fixed sets, statuses
and error codes too. Per-account counts are off unless ``BACKSTOCK_METRICS_TOP_ACCOUNTS`` asks
for the busiest N (kept in memory, one process's view).
"""

from __future__ import annotations

import asyncio
import bisect
import contextvars
import functools
import json
import logging
import os
import threading
import time
from collections import Counter as Tally
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

_PID = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))


def count_in_files(on: bool = True) -> None:
    """From now on, count in the files of ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client
    decides only when it is imported; ``serve`` names the directory later, before its server
    processes fork; every metric here has labels, so none holds a value before its first use).

    Each increment then checks whether the process forked. Its default check is os.getpid(), a
    system call (~3 µs here: a tenth of a job poll's CPU with the three increments a request
    makes); the pid kept up to date at each fork answers the same."""
    values.ValueClass = (
        values.MultiProcessValue(lambda: _PID[0])  # type: ignore[no-untyped-call]
        if on
        else values.MutexValue
    )


if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
    count_in_files()

CONTENT_TYPE = CONTENT_TYPE_LATEST

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
"""The id of the request being served (``X-Request-Id``), in every log line it writes."""

access = logging.getLogger("backstock.access")

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

REQUESTS = Counter(
    "backstock_requests", "Requests answered, by operation and status.", ["operation", "status"]
)
LATENCY = Histogram(
    "backstock_request_seconds", "Time to answer, by operation.", ["operation"], buckets=_SECONDS
)


FLUSH_SECONDS = 0.25
"""Longest a request waits in memory before it is counted in the metrics (see ``_Requests``)."""


@functools.cache
def _request_metrics(operation: str, status: int) -> tuple[Any, Any]:
    """The counter and the histogram of one operation and status (label sets are bounded:
    ``labels`` looks them up on every call, this once)."""
    return REQUESTS.labels(operation, str(status)), LATENCY.labels(operation)


class _Requests:
    """Requests tallied in memory, by operation and status, and added to ``REQUESTS`` and
    ``LATENCY`` at most ``FLUSH_SECONDS`` later, on the event loop that served them (at once
    without one), and before every scrape of this process: a counter increment and a histogram
    observation in the multiprocess files (a lock and an mmap write each, the bucket found by
    a linear scan) were 8 % of a job poll's instructions (24k of 294k, callgrind); a tally is
    a dict lookup, a bisect and two additions. Another process's scrape sees this one's
    requests once they are flushed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # event loops on several threads (embedded servers)
        self._pending: dict[tuple[str, int], list[float]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # the one a flush is due on
        self._thread = 0  # the thread that loop runs on

    def observe(self, operation: str, status: int, seconds: float) -> None:
        with self._lock:
            tally = self._pending.get((operation, status))
            if tally is None:  # [seconds in all, then a count per bucket, +Inf last]
                tally = self._pending[(operation, status)] = [0.0] * (len(_SECONDS) + 2)
            tally[0] += seconds
            tally[1 + bisect.bisect_left(_SECONDS, seconds)] += 1
            # A flush is due on this thread's running loop, the one this call is on: asking
            # asyncio which loop runs calls getpid() on Python 3.11, a system call a request.
            due = self._loop
            if due is not None and self._thread == threading.get_ident() and due.is_running():
                return
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            self._loop, self._thread = loop, threading.get_ident()
        if loop is None:
            self.flush()
        else:
            loop.call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        with self._lock:
            pending, self._pending, self._loop = self._pending, {}, None
        for (operation, status), tally in pending.items():
            counter, latency = _request_metrics(operation, status)
            counter.inc(sum(tally[1:]))
            latency._sum.inc(tally[0])  # a histogram's parts: prometheus-client has no bulk
            for bucket, count in zip(latency._buckets, tally[1:], strict=True):  # observe
                if count:
                    bucket.inc(count)

    def forget(self) -> None:
        """In a forked child: its parent's requests are not its own."""
        self._lock = threading.Lock()
        self._pending, self._loop = {}, None


_REQUESTS = _Requests()
os.register_at_fork(after_in_child=_REQUESTS.forget)
observe_request = _REQUESTS.observe
flush_requests = _REQUESTS.flush


REFUSALS = Counter(
    "backstock_refusals",
    "Requests refused by a limit: throttled (rate limit), too_many_jobs, quota, "
    "auth_failures, bodies_in_flight.",
    ["reason"],
)
DATABASE_ERRORS = Counter(
    "backstock_database_errors", "Database failures answered with 503, by kind.", ["kind"]
)
JOBS_ACCEPTED = Counter("backstock_jobs_accepted", "Jobs accepted (202), by kind.", ["kind"])
JOBS_COMPLETED = Counter(
    "backstock_jobs_completed",
    "Jobs completed, by kind and outcome (ok: every item applied; with_errors).",
    ["kind", "outcome"],
)
ITEMS = Counter(
    "backstock_job_items", "Job items, by kind and outcome (applied, failed).", ["kind", "outcome"]
)
BATCH_SECONDS = Histogram(
    "backstock_worker_batch_seconds", "Time to apply one batch, by kind.", ["kind"],
    buckets=_SECONDS,
)  # fmt: skip


class AccountTally:
    """The busiest accounts by requests, for the bounded per-account metric."""

    def __init__(self, top: int) -> None:
        self.top = top
        self._counts: Tally[str] = Tally()

    def count(self, account: object) -> None:
        if self.top:
            self._counts[str(account)] += 1
            if len(self._counts) > 100 * self.top:  # bounded: keep the leaders
                self._counts = Tally(dict(self._counts.most_common(10 * self.top)))

    def family(self) -> GaugeMetricFamily | None:
        if not self.top:
            return None
        family = GaugeMetricFamily(
            "backstock_account_requests",
            f"Requests of the {self.top} busiest accounts since this process started.",
            labels=["account"],
        )
        for account, count in self._counts.most_common(self.top):
            family.add_metric([account], count)
        return family


def exposition(gauges: Iterable[GaugeMetricFamily]) -> tuple[bytes, str]:
    """The text ``/metrics`` answers: every process's counters (one process's, or all of
    ``serve``'s from the multiprocess directory) and the gauges measured for this scrape."""
    flush_requests()
    registry = CollectorRegistry()
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    body = generate_latest(registry)
    extra = CollectorRegistry()
    families = list(gauges)
    extra.register(_Fixed(families))
    return body + generate_latest(extra), CONTENT_TYPE_LATEST


class _Fixed:
    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self.families = families

    def collect(self) -> list[GaugeMetricFamily]:
        return self.families


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def log_access(
    method: str, route: str, status: int, started: float, account: object, rid: str
) -> None:
    if access.isEnabledFor(logging.INFO):
        access.info(
            "%s %s %d %.1fms account=%s",
            method, route, status, (time.perf_counter() - started) * 1000, account,
            extra={
                "http": {"method": method, "route": route, "status": status,
                         "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                         "account": account},
                "request_id": rid,
            },
        )  # fmt: skip


class _RequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if hasattr(record, "http"):
            line["http"] = record.http
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(level: str, fmt: str) -> None:
    """``text``: one readable line each; ``json``: one JSON object each. Either way every line
    carries the request id of the request it was written for (``-`` outside requests)."""
    handler = logging.StreamHandler()
    handler.addFilter(_RequestId())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    handler.set_name("backstock")
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if h.get_name() != "backstock"] + [handler]
    root.setLevel(level.upper())
