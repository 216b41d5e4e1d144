"""What operators see: Prometheus metrics, one access-log line per request, request ids that
follow a request through every log line, and the log format.

Metrics use prometheus-client's default registry; with ``serve --workers N`` every process
writes to the directory ``PROMETHEUS_MULTIPROC_DIR`` names (``serve`` sets it up) and
``/metrics`` adds them up. Labels are bounded: operations and job kinds are fixed sets, statuses
and error codes too. Per-account counts are off unless ``BACKSTOCK_METRICS_TOP_ACCOUNTS`` asks
for the busiest N (kept in memory, one process's view).
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import os
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


@functools.cache
def _request_metrics(operation: str, status: int) -> tuple[Any, Any]:
    """The counter and the histogram of one operation and status (label sets are bounded:
    ``labels`` looks them up on every call, this once)."""
    return REQUESTS.labels(operation, str(status)), LATENCY.labels(operation)


def observe_request(operation: str, status: int, seconds: float) -> None:
    counter, latency = _request_metrics(operation, status)
    counter.inc()
    latency.observe(seconds)


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
