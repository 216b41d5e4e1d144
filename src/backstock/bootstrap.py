"""The composition root: settings in, services, app and worker out. No import-time effects."""

from __future__ import annotations

import logging
import threading

from fastapi import FastAPI

from backstock.http.app import create_app
from backstock.services.container import Services
from backstock.services.jobs import JobService, JobSignal
from backstock.services.limits import Limiter
from backstock.settings import Settings
from backstock.storage.database import Database
from backstock.storage.direct import Direct
from backstock.storage.notify import listen_for_jobs
from backstock.worker import Worker

log = logging.getLogger("backstock")


def build_services(settings: Settings) -> Services:
    db = Database(settings)
    jobs = JobService(db, Direct(settings), settings, JobSignal())
    return Services(settings, db, jobs, Limiter(settings))


def migrate_database(settings: Settings) -> None:
    # Imported here: Alembic and Mako cost every API process ~11 MB it would never use.
    from backstock.storage import migrate

    migrate.upgrade(settings.database_url)


class Runtime:
    """A worker plus, on PostgreSQL, the LISTEN thread that wakes it."""

    def __init__(self, services: Services, concurrency: int) -> None:
        self.services = services
        self.worker = Worker(services.jobs, concurrency)
        self._listener: threading.Thread | None = None

    def start(self) -> None:
        settings = self.services.settings
        if not settings.is_sqlite:
            self._listener = threading.Thread(
                target=listen_for_jobs,
                args=(settings.database_url, self.services.jobs.signal.notify, self.worker.stop),
                name="backstock-listen",
                daemon=True,
            )
            self._listener.start()
        self.worker.start()

    def stop(self) -> None:
        self.worker.shutdown()
        if self._listener is not None:
            self._listener.join(2.0)


def build_app(settings: Settings) -> FastAPI:
    """The API, with an in-process worker unless ``run_worker`` is off."""
    services = build_services(settings)
    runtime = Runtime(services, settings.worker_concurrency) if settings.run_worker else None

    def startup() -> None:
        if runtime is not None:
            runtime.start()

    def shutdown() -> None:
        if runtime is not None:
            runtime.stop()
        services.close()

    return create_app(services, startup, shutdown)


def app_from_environment() -> FastAPI:
    """The ASGI factory the server processes import (settings from ``BACKSTOCK_*``)."""
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return build_app(settings)
