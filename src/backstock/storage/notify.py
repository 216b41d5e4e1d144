"""PostgreSQL ``LISTEN``: wakes this process's workers when any process accepts a job."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg

from backstock.storage.jobs import NOTIFY_CHANNEL

log = logging.getLogger("backstock.worker")


def listen_for_jobs(dsn: str, on_job: Callable[[], None], stop: threading.Event) -> None:
    """Call ``on_job`` for every notification until ``stop`` is set; reconnect on failure
    (and call ``on_job`` after each reconnect: notifications sent meanwhile were lost)."""
    dsn = dsn.replace("postgresql+psycopg://", "postgresql://", 1)
    while not stop.is_set():
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                on_job()
                while not stop.is_set():
                    for _ in conn.notifies(timeout=0.25):  # also how soon stop is seen
                        on_job()
        except psycopg.Error as exc:
            log.warning("LISTEN connection lost (%s); reconnecting", exc)
            stop.wait(1.0)
