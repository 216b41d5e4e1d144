"""The composition root: settings in; the database, its stores, the services, the app and the
worker out. The one module that wires storage into the services. No import-time effects."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from backstock import faults, telemetry
from backstock.http.app import App
from backstock.services.accounts import Accounts
from backstock.services.catalog import Catalog
from backstock.services.container import Services
from backstock.services.jobs import Jobs, Signal
from backstock.services.limits import Limiter
from backstock.services.webhooks import Webhooks
from backstock.settings import Settings
from backstock.storage.accounts import AccountStore
from backstock.storage.catalog import CatalogStore
from backstock.storage.database import Database
from backstock.storage.engine import JobStore
from backstock.storage.jobs import EVENTS_CHANNEL, NOTIFY_CHANNEL
from backstock.storage.notify import FileBus, listen
from backstock.storage.webhooks import WebhookStore
from backstock.worker import Worker

log = logging.getLogger("backstock")
T = TypeVar("T")


def build_services(settings: Settings) -> Services:
    db = Database(settings)
    catalog = CatalogStore(db)
    bus = FileBus(settings.sqlite_file) if settings.is_sqlite and not settings.in_memory else None
    signal = Signal(bus.send if bus is not None else None)
    listen_events = None
    if not settings.is_sqlite:
        listen_events = functools.partial(listen, settings.database_url, EVENTS_CHANNEL)
    hooks = faults.Hooks(faults.RuleBook.of(settings)) if settings.test_faults == "on" else None
    jobs = Jobs(JobStore(db), catalog, settings, signal, listen_events, hooks)

    async def close_loop() -> None:
        await jobs.stop_listening()
        await db.close_loop()

    def hear_others() -> None:
        if bus is not None:
            bus.listen(signal.wake_here)

    def close() -> None:
        if bus is not None:
            bus.close()
        db.close()

    return Services(
        settings=settings,
        accounts=Accounts(AccountStore(db)),
        catalog=Catalog(catalog),
        jobs=jobs,
        webhooks=Webhooks(
            WebhookStore(db), settings.webhook_backoff_seconds, settings.webhook_max_attempts
        ),
        limiter=Limiter(settings),
        signal=signal,
        ping=db.ping,
        hear_others=hear_others,
        close_loop=close_loop,
        close=close,
    )


def worker_hears_other_processes(settings: Settings) -> bool:
    """Whether a worker in a process of its own hears of jobs the API processes accept at
    once: on PostgreSQL (LISTEN), and on a SQLite file where the ``FileBus`` works (Linux);
    not on an in-memory SQLite database, which no other process can open."""
    if not settings.is_sqlite:
        return True
    return not settings.in_memory and FileBus.works_here()


def build_worker(services: Services, concurrency: int) -> Worker:
    """A worker; it hears of jobs accepted by any process (PostgreSQL: LISTEN; SQLite: the
    file's ``FileBus``)."""
    settings = services.settings
    services.hear_others()
    on_job = None
    if not settings.is_sqlite:
        listen_jobs = functools.partial(listen, settings.database_url, NOTIFY_CHANNEL)

        async def on_job(wake: Callable[[], None], stopping: asyncio.Event) -> None:
            await listen_jobs(lambda _payload: wake(), stopping)

    return Worker(services, concurrency, on_job)


def migrate_database(settings: Settings) -> None:
    # Imported here: Alembic and Mako cost every API process ~11 MB it would never use.
    from backstock.storage import migrate

    migrate.upgrade(settings.database_url)


class NotMigrated(Exception):
    """The database's schema is not the one this version needs."""


def prepare_database(settings: Settings, *, migrate: bool = False) -> None:
    """Make sure the schema is current before anything uses the database: SQLite (an embedded
    file) and ``migrate`` migrate it; otherwise an outdated one is refused (``NotMigrated``),
    rather than each request and the worker failing on a missing table."""
    if settings.is_sqlite or migrate:
        migrate_database(settings)
        return
    from backstock.storage import migrate as migrations

    current, head = migrations.pending(settings.database_url)
    if current != head:
        raise NotMigrated(
            f"The database is at schema {current or 'none'}; this Backstock needs {head}. "
            "Run `backstock migrate` first (or `backstock serve --migrate`)."
        )


def cautions(settings: Settings) -> list[str]:
    """What an operator starting a server or a worker should hear about the database server."""
    from backstock.storage import migrate as migrations

    if migrations.autovacuum_is_off(settings.database_url):
        return [
            "PostgreSQL runs with autovacuum off: the job tables and account counters are "
            "rewritten on every acceptance and batch, and their dead row versions will slow "
            "every lookup until a VACUUM (docs/deploy.md)."
        ]
    return []


def run(services: Services, work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work`` to completion from synchronous code (the CLI, tests), closing the
    connections of its event loop afterwards."""

    async def main() -> T:
        try:
            return await work()
        finally:
            await services.close_loop()

    return asyncio.run(main())


def build_app(settings: Settings) -> App:
    """The API, with an in-process worker unless ``run_worker`` is off."""
    services = build_services(settings)
    worker = build_worker(services, settings.worker_concurrency) if settings.run_worker else None

    def startup() -> None:
        services.hear_others()  # its event streams hear of batches other processes commit
        if worker is not None:
            worker.start()

    def shutdown() -> None:
        if worker is not None:
            worker.shutdown()
        services.close()

    if settings.test_faults == "on":
        log.warning("BACKSTOCK_TEST_FAULTS is on: faults on demand (docs/testing.md)")
        return faults.FaultyApp(services, startup, shutdown)
    return App(services, startup, shutdown)


def app_from_environment() -> App:
    """The ASGI factory the server processes import (settings from ``BACKSTOCK_*``)."""
    settings = Settings()
    telemetry.configure_logging(settings.log_level, settings.log_format)
    app = build_app(settings)
    settle_heap()
    return app


def settle_heap() -> None:
    """Take what a server or worker process has built to run (its modules, tables, statements,
    routes: ~80k objects, all kept for its life) out of the garbage collector's scans. A full
    collection walked them all: 55-60 ms here, every few seconds under load, each a pause of
    every request in flight (bench/README.md, "Pauses of the garbage collector")."""
    gc.collect()
    gc.freeze()
