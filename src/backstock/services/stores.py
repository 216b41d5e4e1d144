"""What the services need of storage, in domain terms. ``storage`` implements these
(``AccountStore``, ``CatalogStore``, ``JobStore``, ``WebhookStore``) and ``bootstrap`` hands
them in: the services never import storage, so nothing above storage can reach SQL, even
indirectly."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Literal, Protocol

from backstock.domain.bodies import Action, PayloadItem
from backstock.domain.catalog import Outcome, Record
from backstock.domain.filters import Condition
from backstock.domain.ids import AccountId
from backstock.domain.jobs import ClaimedJob, JobKind, JobRecord, NewJob
from backstock.domain.keys import AccountRecord, ApiKey, KeyRecord
from backstock.domain.pagination import Page, PageRequest
from backstock.domain.resources import Resource
from backstock.domain.webhooks import Delivery, Due, Webhook


class AccountStore(Protocol):
    async def find_key(self, key_id: str) -> KeyRecord | None: ...
    async def create_account(self, name: str) -> AccountId: ...
    async def list_accounts(self) -> list[AccountRecord]: ...
    async def create_key(
        self, account: str, key_id: str, secret_hash: str, scopes: str
    ) -> None: ...
    async def list_keys(self, account: str) -> list[KeyRecord]: ...
    async def revoke_key(self, key_id: str) -> bool: ...


class CatalogStore(Protocol):
    async def get(self, res: Resource, account: AccountId, external: str) -> Record | None: ...
    async def get_many(
        self, res: Resource, account: AccountId, externals: Sequence[str]
    ) -> list[Record]: ...
    async def list_records(
        self,
        res: Resource,
        account: AccountId,
        conditions: Sequence[Condition],
        page: PageRequest,
        owner: tuple[Resource, str, str] | None = None,
    ) -> Page[Record] | None: ...
    async def related(
        self, owner: Resource, relation: str, account: AccountId, owner_pks: list[int], limit: int
    ) -> list[Record]: ...
    async def write_one(
        self, action: Action, res: Resource, account: AccountId, entry: PayloadItem
    ) -> tuple[Outcome, Record | None]: ...
    async def change_links(
        self,
        res: Resource,
        relation: str,
        account: AccountId,
        external: str,
        related: Sequence[str],
        how: Literal["add", "replace", "remove"],
    ) -> Outcome: ...


class JobStore(Protocol):
    async def accept(self, new: NewJob, max_open: int, max_bytes: int) -> JobRecord: ...
    async def dry_run(self, kind: JobKind, new: NewJob) -> list[dict[str, Any]]: ...
    async def cancel(
        self, account: AccountId, kind: str, job_id: str, retention_us: int
    ) -> JobRecord | None: ...
    async def retry(
        self, source: JobRecord, new: NewJob, max_open: int, max_bytes: int
    ) -> JobRecord: ...
    async def get(self, account: AccountId, kind: str, job_id: str) -> JobRecord | None: ...
    async def poll(
        self, key: ApiKey, kind: str, job_id: str
    ) -> tuple[KeyRecord | None, JobRecord | None]: ...
    async def list_jobs(
        self, account: AccountId, kind: str, status: str | None, page: PageRequest
    ) -> Page[JobRecord]: ...
    async def claim(
        self,
        owner: str,
        lease_us: int,
        batch_size: int,
        retention_us: int,
        first_batch: bool,
        items: int = 1,
    ) -> list[tuple[ClaimedJob, bool]]: ...
    async def run_batch(
        self,
        job: ClaimedJob,
        lease_us: int,
        batch_size: int,
        retention_us: int,
        *,
        fail: bool,
        forced: Mapping[str, str] | None = None,
    ) -> bool | None: ...
    async def release(self, job: ClaimedJob) -> None: ...
    async def delete_expired(self, retention_us: int) -> int: ...
    async def next_lease_expiry(self) -> int | None: ...
    async def queue_stats(self) -> tuple[int, int, int | None]: ...
    async def admin_job(self, job_id: str) -> tuple[str, JobRecord] | None: ...
    async def admin_jobs(
        self, account: str | None, status: str | None, kind: str | None, limit: int
    ) -> list[tuple[str, JobRecord]]: ...


class WebhookStore(Protocol):
    async def set(self, account: str, url: str, secret: str, now: int) -> bool: ...
    async def get(self, account: str) -> Webhook | None: ...
    async def remove(self, account: str) -> bool: ...
    async def deliveries(self, account: str, limit: int) -> list[Delivery]: ...
    async def take_due(self, now: int, until: int, limit: int) -> list[Due]: ...
    async def settle(
        self,
        pk: int,
        status: str,
        code: int | None,
        error: str | None,
        next_at: int | None,
        now: int,
    ) -> None: ...
    async def next_due(self) -> int | None: ...


Listen = Callable[[Callable[[str], None], asyncio.Event], Coroutine[Any, Any, None]]
"""Call back with each notification's payload until the event is set (PostgreSQL ``LISTEN``
on one channel)."""


class Database(Protocol):
    async def ping(self) -> None: ...
