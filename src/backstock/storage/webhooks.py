"""Webhooks: each account's URL and secret, and the delivery outbox.

``storage.jobs`` writes a delivery in the transaction that ends a job. A worker *takes* due
deliveries: it moves their ``next_attempt_at`` past its attempt's timeout in the same statement
(on PostgreSQL skipping rows another worker is taking), so a delivery is tried by one worker at
a time, and tried again by any worker if that one dies mid-attempt.
"""

from __future__ import annotations

from backstock.domain.webhooks import Delivery, Due, Webhook
from backstock.storage.database import Database
from backstock.storage.sql import Conn, Statement

_SET = Statement(
    "set_webhook",
    """INSERT INTO webhooks (account_id, url, secret, created_at)
       SELECT id, :url, :secret, :now FROM accounts WHERE name = :name
           ON CONFLICT (account_id) DO UPDATE SET url = :url, secret = :secret""",
)
_GET = Statement(
    "get_webhook",
    """SELECT a.name, w.url, w.secret, w.created_at
         FROM webhooks AS w JOIN accounts AS a ON a.id = w.account_id
        WHERE a.name = :name""",
)
_HOOK_OF = Statement("webhook_of", "SELECT url, secret FROM webhooks WHERE account_id = :account")
_REMOVE = Statement(
    "remove_webhook",
    "DELETE FROM webhooks WHERE account_id = (SELECT id FROM accounts WHERE name = :name)",
)
_DELIVERIES = Statement(
    "list_deliveries",
    """SELECT pk, account_id, job_id, event, status, attempts, created_at, next_attempt_at,
              delivered_at, last_status, last_error
         FROM webhook_deliveries WHERE account_id = (SELECT id FROM accounts WHERE name = :name)
        ORDER BY pk DESC LIMIT :limit""",
)
_TAKE = """
UPDATE webhook_deliveries
   SET attempts = attempts + 1, next_attempt_at = :until
 WHERE pk IN (SELECT pk FROM webhook_deliveries
               WHERE status = 'pending' AND next_attempt_at <= :now
               ORDER BY next_attempt_at LIMIT :limit {lock})
RETURNING pk, account_id, payload, attempts
"""
_TAKE_DUE = Statement(
    "take_due_deliveries",
    _TAKE.replace("{lock}", ""),
    _TAKE.replace("{lock}", "FOR UPDATE SKIP LOCKED"),
)
_SETTLE = Statement(
    "settle_delivery",
    """UPDATE webhook_deliveries
          SET status = :status, next_attempt_at = :next, last_status = :code,
              last_error = :error, delivered_at = :delivered
        WHERE pk = :pk""",
)
_NEXT_DUE = Statement(
    "next_delivery_due",
    "SELECT min(next_attempt_at) FROM webhook_deliveries WHERE status = 'pending'",
)


class WebhookStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def set(self, account: str, url: str, secret: str, now: int) -> bool:
        """Set the webhook of the account named ``account``: whether it exists."""
        params = {"name": account, "url": url, "secret": secret, "now": now}
        return bool(await self.db.write(lambda conn: conn.run(_SET, params)))

    async def get(self, account: str) -> Webhook | None:
        row = await self.db.read(lambda conn: conn.one(_GET, {"name": account}))
        return None if row is None else Webhook(*row)

    async def remove(self, account: str) -> bool:
        return bool(await self.db.write(lambda conn: conn.run(_REMOVE, {"name": account})))

    async def deliveries(self, account: str, limit: int) -> list[Delivery]:
        """The account's newest deliveries."""
        params = {"name": account, "limit": limit}
        rows = await self.db.read(lambda conn: conn.all(_DELIVERIES, params))
        return [Delivery(row[0], account, *row[2:]) for row in rows]

    async def take_due(self, now: int, until: int, limit: int) -> list[Due]:
        """Due deliveries, held until ``until`` for one attempt each, with where to send them
        (a delivery whose account has no webhook any more is given up)."""

        async def unit(conn: Conn) -> list[Due]:
            taken = await conn.all(_TAKE_DUE, {"now": now, "until": until, "limit": limit})
            due = []
            for pk, account, payload, attempts in taken:
                hook = await conn.one(_HOOK_OF, {"account": account})
                if hook is None:
                    await conn.run(_SETTLE, _settled(pk, "failed", None, "no webhook is set"))
                    continue
                due.append(Due(pk, hook[0], hook[1], bytes(payload), attempts))
            return due

        return await self.db.write(unit)

    async def settle(
        self,
        pk: int,
        status: str,
        code: int | None,
        error: str | None,
        next_at: int | None,
        now: int,
    ) -> None:
        """Record an attempt's outcome: ``delivered``, ``failed`` (given up), or ``pending``
        again at ``next_at``."""
        params = _settled(pk, status, code, error) | {
            "next": next_at, "delivered": now if status == "delivered" else None,
        }  # fmt: skip
        await self.db.write(lambda conn: conn.run(_SETTLE, params))

    async def next_due(self) -> int | None:
        row = await self.db.read(lambda conn: conn.one(_NEXT_DUE))
        return None if row is None else row[0]


def _settled(pk: int, status: str, code: int | None, error: str | None) -> dict[str, object]:
    return {
        "pk": pk, "status": status, "code": code, "error": error and error[:500],
        "next": None, "delivered": None,
    }  # fmt: skip
