"""The services one process needs, built once by the composition root (``bootstrap``)."""

from __future__ import annotations

from dataclasses import dataclass

from backstock.services.jobs import JobService
from backstock.services.limits import Limiter
from backstock.settings import Settings
from backstock.storage.database import Database


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    db: Database
    jobs: JobService
    limiter: Limiter

    def close(self) -> None:
        self.jobs.close()
        self.db.dispose()
