"""The services one process needs, built once by the composition root (``bootstrap``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from backstock.services.accounts import Accounts
from backstock.services.catalog import Catalog
from backstock.services.jobs import Jobs, Signal
from backstock.services.limits import Limiter
from backstock.services.webhooks import Webhooks
from backstock.settings import Settings


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    accounts: Accounts
    catalog: Catalog
    jobs: Jobs
    webhooks: Webhooks
    limiter: Limiter
    signal: Signal
    ping: Callable[[], Awaitable[None]]
    """Raise ``Unavailable`` unless the database answers (``/readyz``)."""
    hear_others: Callable[[], None]
    """From now on, the wake-ups other processes on the same SQLite file send reach this one
    (an API or a worker about to start calls it; a no-op on PostgreSQL, which LISTENs)."""
    close_loop: Callable[[], Awaitable[None]]
    """Close the connections of the running event loop (at its end)."""
    close: Callable[[], None]
    """Close everything else (the process is done with the database)."""
