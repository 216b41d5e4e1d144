"""Whole-database upkeep: ``reset`` empties every account's catalog and job queue at once,
keeping the accounts and their API keys (``backstock.testing`` resets a test server with it;
production never calls it).

Each statement names its table: ``tests/testing/test_server.py`` checks that, with ``KEPT``,
they cover every table, so a table added later cannot escape a reset unnoticed.
"""

from __future__ import annotations

from backstock.storage.database import Database
from backstock.storage.sql import Conn, Statement

KEPT = frozenset({"accounts", "account_slots", "api_keys", "webhooks"})
"""Tables a reset does not empty: who may call (accounts, keys) and where they are told (their
webhook, set by an operator like a key); each account's slots row stays, set back to zero."""

# Children before their parents (foreign keys are enforced on SQLite too).
_EMPTY = (
    Statement("empty_account_turns", "DELETE FROM account_turns"),
    Statement("empty_job_payloads", "DELETE FROM job_payloads"),
    Statement("empty_jobs", "DELETE FROM jobs"),
    Statement("empty_webhook_deliveries", "DELETE FROM webhook_deliveries"),
    Statement("empty_item_categories", "DELETE FROM item_categories"),
    Statement("empty_catalog_variants", "DELETE FROM catalog_variants"),
    Statement("empty_catalog_items", "DELETE FROM catalog_items"),
    Statement("empty_catalog_categories", "DELETE FROM catalog_categories"),
)
EMPTIED = tuple(statement.name.removeprefix("empty_") for statement in _EMPTY)

# No job is open any more: every account's slots and queued bytes are free, and the fair
# queue's memory of whom it served last starts over.
_FREE_SLOTS = Statement("free_every_slot", "UPDATE account_slots SET open_jobs = 0, open_bytes = 0")


async def reset(conn: Conn) -> int:
    """Empty the catalogs, jobs and webhook deliveries of every account, in one transaction;
    the number of rows deleted. A job a worker is applying meanwhile is lost to it at its next
    batch (its fence finds no job), as after a cancel."""
    deleted = 0
    for statement in _EMPTY:
        deleted += await conn.run(statement)
    await conn.run(_FREE_SLOTS)
    return deleted


class MaintenanceStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def reset(self) -> int:
        return await self.db.write(reset)
