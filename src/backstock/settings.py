"""Typed settings, read from ``BACKSTOCK_*`` environment variables and validated at start-up."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

AUTO_MAX_PROCESSES = 4
"""``serve``'s most processes when it picks: on SQLite they share one writer, so more would only
queue on its lock."""
AUTO_POSTGRES_CONNECTIONS = 90
"""The connections ``auto`` may plan for on PostgreSQL: its default ``max_connections`` (100),
less what it reserves and room for a worker and the CLI. A process holds up to
``2 * pool_size + pool_max_overflow`` (docs/deploy.md)."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BACKSTOCK_", frozen=True, extra="ignore")

    database_url: str = "sqlite:///backstock.db"
    """``sqlite:///path`` (the default: a file in the working directory) or ``postgresql://…``."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: Literal["auto"] | Annotated[int, Field(ge=1, le=64)] = "auto"
    """API processes started by ``backstock serve``; ``auto``: see ``server_processes``."""

    run_worker: bool = True
    """Whether ``serve`` runs a job worker: a process of its own (``backstock worker``, started
    again if it dies), or a thread of the app where the app is built in process (the test
    server, an in-memory SQLite database)."""

    worker_concurrency: int = Field(default=1, ge=1, le=64)
    worker_nice: int = Field(default=10, ge=0, le=19)
    """How far a worker process lowers its CPU priority (``nice``) at start: where it shares
    the cores with API processes, their requests go first and jobs are applied in the time
    they leave (all of it when they are idle). 0 keeps the priority it was started with."""
    worker_batch_size: int = Field(default=100, ge=1, le=100)
    """Variant updates applied per transaction; progress counters move once per batch."""

    lease_seconds: float = Field(default=30.0, gt=0)
    """How long a claimed job stays with its worker without a renewal."""

    idle_check_seconds: float = Field(default=5.0, gt=0)
    """Longest an idle worker waits before it looks for lapsed leases and expired jobs."""

    job_retention_days: float = Field(default=7.0, gt=0)
    max_jobs_in_progress: int = Field(default=500, ge=1)
    max_queued_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    """Per account: the bytes the requests of its queued and processing jobs may hold, as the
    database keeps them (zstd-compressed; a job's request is dropped once it completes,
    but its failed items); beyond it a new job is refused with 429."""
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_body_bytes_in_flight: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Bytes of request bodies one API process holds at once; a request that would pass it is
    refused with 503 and ``Retry-After`` before its body is read."""
    body_timeout_seconds: float = Field(default=30.0, gt=0)
    """Longest a request body may take to arrive in full; a slower sender gets 408."""
    header_timeout_seconds: float = Field(default=10.0, ge=0.001, le=60)
    """Longest ``serve`` waits for a request's headers before it drops the connection."""
    stop_timeout_seconds: int = Field(default=15, ge=1, le=3600)
    """Longest a server process of ``serve`` may take to stop after SIGTERM (finishing its
    requests) before it is killed, and then a worker process (finishing its batch): a stop
    takes at most twice this. A killed worker's job comes back when its lease lapses."""

    pool_size: int = Field(default=10, ge=1)
    pool_max_overflow: int = Field(default=10, ge=0)
    pool_timeout_seconds: float = Field(default=10.0, gt=0)
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    """``FULL`` survives power loss; ``NORMAL`` (WAL) survives process crashes only."""

    rate_limits: str = "on"
    """``on`` or ``off``."""
    write_limits: str | None = None
    """Limits of every write operation (``75/second;750/minute``); unset: Klaviyo's, per
    operation."""
    read_limits: str | None = None
    """Limits of every read operation; unset: Klaviyo's, per operation."""
    operation_limits: str = ""
    """Limits of named operations (``OPERATION=LIMITS,…``), ahead of everything else."""
    redis_url: str | None = None
    """Shared rate-limit counters for several API processes (``redis://host:6379/0``)."""
    redis_key_prefix: str = "backstock"
    redis_timeout_seconds: float = Field(default=0.5, gt=0)
    """A Redis call slower than this fails open (requests are served, unlimited)."""

    base_url: str | None = None
    """Public base URL for ``links``; defaults to the URL of each request (its ``Host``)."""
    allowed_hosts: str = "*"
    """``Host`` values answered (comma-separated; ``*``: any); another gets a 400. ``serve``
    refuses to listen beyond loopback with ``*`` and no ``BACKSTOCK_BASE_URL``: links would
    copy whatever ``Host`` a client sends."""
    auth_failure_limits: str = "20/second;200/minute"
    """Failed authentications allowed per client address (with rate limits on); beyond them a
    request is refused with 429 before its key is looked up."""

    log_level: str = "info"
    log_format: Literal["text", "json"] = "text"
    """``text``: a readable line each; ``json``: one JSON object each (for a log pipeline)."""
    metrics_top_accounts: int = Field(default=0, ge=0, le=1000)
    """Per-account request counts in ``/metrics`` for the N busiest accounts (0: none; the
    label set stays bounded either way)."""
    max_event_streams: int = Field(default=20, ge=1, le=10_000)
    """Job event streams (``…/events``) one account may hold open in one API process."""
    webhook_backoff_seconds: float = Field(default=5.0, gt=0)
    """The wait after a webhook delivery's first failed try; it doubles with each (at most
    an hour)."""
    webhook_max_attempts: int = Field(default=12, ge=1, le=100)
    """Tries before a delivery is given up (12: about 2.4 hours with the default backoff)."""
    test_faults: Literal["on", "off"] = "off"
    """``on``: faults on demand for testing clients (``Prefer: code=429``, per-account rules:
    docs/testing.md). SQLite only; never in production."""

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:", "postgres:")):
            raise ValueError("BACKSTOCK_DATABASE_URL must be sqlite:///… or postgresql://…")
        return value

    @field_validator("rate_limits")
    @classmethod
    def _on_off(cls, value: str) -> str:
        if value not in ("on", "off"):
            raise ValueError("BACKSTOCK_RATE_LIMITS must be 'on' or 'off'")
        return value

    @field_validator("auth_failure_limits")
    @classmethod
    def _failure_limits(cls, value: str) -> str:
        _check_limits(value)
        return value

    @property
    def allowed_host_set(self) -> frozenset[str] | None:
        """None: any host."""
        hosts = frozenset(h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip())
        return None if "*" in hosts else hosts

    @field_validator("write_limits", "read_limits")
    @classmethod
    def _limits(cls, value: str | None) -> str | None:
        if value is not None:
            _check_limits(value)
        return value

    @field_validator("operation_limits")
    @classmethod
    def _operation_limits(cls, value: str) -> str:
        _limit_map(value)
        return value

    @property
    def operation_limit_map(self) -> dict[str, str]:
        return _limit_map(self.operation_limits)

    @model_validator(mode="after")
    def _faults_on_sqlite_only(self) -> Settings:
        if self.test_faults == "on" and not self.is_sqlite:
            raise ValueError(
                "BACKSTOCK_TEST_FAULTS=on is for testing clients against an embedded SQLite "
                "Backstock; it is refused with a PostgreSQL BACKSTOCK_DATABASE_URL"
            )
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def sqlite_file(self) -> str:
        """The SQLite database's path (``:memory:`` for none)."""
        return sqlite_path(self.database_url)

    @property
    def in_memory(self) -> bool:
        """An in-memory SQLite database: no other process can open it."""
        return self.is_sqlite and self.sqlite_file == ":memory:"

    def server_processes(self, cpus: int) -> tuple[int, str]:
        """How many API processes ``serve`` starts on a machine with ``cpus`` usable CPUs, and
        why. ``auto`` is one per CPU (at most ``AUTO_MAX_PROCESSES``, and on PostgreSQL as many
        as the default ``max_connections`` holds with this pool size), but only one while rate
        limits are counted in a process's own memory: N such processes would each admit the
        whole limit, N times what Klaviyo admits."""
        if self.workers != "auto":
            return self.workers, "as configured"
        if self.in_memory:
            return 1, "auto: one, as each process would have an in-memory database of its own"
        if self.rate_limits == "on" and not self.redis_url:
            return 1, (
                "auto: one, as rate limits are counted in a process's memory "
                "(BACKSTOCK_REDIS_URL shares them, and then one per CPU runs)"
            )
        most = AUTO_MAX_PROCESSES
        if not self.is_sqlite:
            per_process = 2 * self.pool_size + self.pool_max_overflow
            most = max(1, min(most, AUTO_POSTGRES_CONNECTIONS // per_process))
        return min(max(1, cpus), most), f"auto: one per CPU ({cpus}), at most {most}"

    @property
    def lease(self) -> timedelta:
        return timedelta(seconds=self.lease_seconds)

    @property
    def job_retention(self) -> timedelta:
        return timedelta(days=self.job_retention_days)


def _limit_map(text: str) -> dict[str, str]:
    found = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        operation, _, limits = entry.partition("=")
        if not operation.strip() or not limits:
            raise ValueError(f"'{entry}' is not OPERATION=LIMITS")
        _check_limits(limits)
        found[operation.strip()] = limits.strip()
    return found


def _check_limits(value: str) -> None:
    from limits import parse_many

    try:
        parse_many(value)
    except ValueError as exc:
        raise ValueError(f"'{value}' is not a rate limit such as 75/second;750/minute") from exc


def sqlite_path(url: str) -> str:
    return url.removeprefix("sqlite:///").removeprefix("sqlite://") or ":memory:"
