"""Webhooks (Backstock's extension): each account's URL and secret, set by the operator, and
the delivery of the outbox ``storage`` fills as jobs end. Workers call ``deliver_due``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from backstock.domain import webhooks
from backstock.domain.clock import now_us
from backstock.domain.errors import NotFound
from backstock.domain.webhooks import Delivery, Due, Webhook
from backstock.services.stores import WebhookStore

Post = Callable[[Due], Awaitable[tuple[int | None, str | None]]]
"""Send one delivery: the response's status (None: none came) and what went wrong, if anything."""

HOLD_US = int((webhooks.TIMEOUT_SECONDS + 20) * 1_000_000)
"""How long a worker holds a delivery for one attempt, beyond which another may try it."""


class Webhooks:
    def __init__(self, store: WebhookStore, backoff_seconds: float, max_attempts: int) -> None:
        self.store = store
        self.backoff_seconds = backoff_seconds
        self.max_attempts = max_attempts

    # ---- the operator's side (the CLI) -------------------------------------------------------

    async def set(self, account: str, url: str, secret: str | None = None) -> Webhook:
        """Point the account's webhook at ``url``, signed with ``secret`` (a new one if not
        given)."""
        secret = secret or webhooks.new_secret()
        if not await self.store.set(account, webhooks.check_url(url), secret, now_us()):
            raise NotFound(f"No account named '{account}'")
        found = await self.store.get(account)
        assert found is not None
        return found

    async def get(self, account: str) -> Webhook:
        found = await self.store.get(account)
        if found is None:
            raise NotFound(f"The account '{account}' has no webhook.")
        return found

    async def remove(self, account: str) -> None:
        if not await self.store.remove(account):
            raise NotFound(f"The account '{account}' has no webhook.")

    async def deliveries(self, account: str, limit: int = 50) -> list[Delivery]:
        return await self.store.deliveries(account, limit)

    # ---- the worker's side -------------------------------------------------------------------

    async def deliver_due(self, post: Post, limit: int = 20) -> int:
        """Try the deliveries that are due (up to ``limit``, at once): a 2xx delivers one; any
        other answer, or none, tries it again after a backoff, up to ``max_attempts`` tries."""
        now = now_us()
        due = await self.store.take_due(now, now + HOLD_US, limit)
        outcomes = await asyncio.gather(*(post(delivery) for delivery in due))
        for delivery, (code, error) in zip(due, outcomes, strict=True):
            now = now_us()
            if code is not None and 200 <= code < 300:
                await self.store.settle(delivery.pk, "delivered", code, None, None, now)
            elif delivery.attempts >= self.max_attempts:
                await self.store.settle(delivery.pk, "failed", code, error, None, now)
            else:
                backoff = webhooks.backoff_seconds(delivery.attempts, self.backoff_seconds)
                wait = int(backoff * 1_000_000)
                await self.store.settle(delivery.pk, "pending", code, error, now + wait, now)
        return len(due)

    async def seconds_to_next(self) -> float | None:
        due = await self.store.next_due()
        return None if due is None else max(0.0, (due - now_us()) / 1_000_000)
