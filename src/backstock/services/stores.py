"""What the services need of storage, in domain terms. ``storage`` implements these
(``AccountStore``, ``CatalogStore``, ``JobStore``) and ``bootstrap`` hands them in: the services
never import storage, so nothing above storage can reach SQL, even indirectly."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

from backstock.domain.bodies import Action, PayloadItem
from backstock.domain.catalog import Outcome, Record
from backstock.domain.filters import Condition
from backstock.domain.ids import AccountId
from backstock.domain.jobs import ClaimedJob, JobRecord, NewJob
from backstock.domain.keys import AccountRecord, KeyRecord
from backstock.domain.pagination import Page, PageRequest
from backstock.domain.resources import Resource


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
    async def get(self, account: AccountId, kind: str, job_id: str) -> JobRecord | None: ...
    async def list_jobs(
        self, account: AccountId, kind: str, status: str | None, page: PageRequest
    ) -> Page[JobRecord]: ...
    async def claim(
        self, owner: str, lease_us: int, batch_size: int, retention_us: int, first_batch: bool
    ) -> tuple[ClaimedJob, bool] | None: ...
    async def run_batch(
        self, job: ClaimedJob, lease_us: int, batch_size: int, retention_us: int, *, fail: bool
    ) -> bool | None: ...
    async def release(self, job: ClaimedJob) -> None: ...
    async def delete_expired(self) -> int: ...
    async def next_lease_expiry(self) -> int | None: ...
    async def queue_stats(self) -> tuple[int, int, int | None]: ...
    async def admin_job(self, job_id: str) -> tuple[str, JobRecord] | None: ...
    async def admin_jobs(
        self, account: str | None, status: str | None, kind: str | None, limit: int
    ) -> list[tuple[str, JobRecord]]: ...


class Database(Protocol):
    async def ping(self) -> None: ...
