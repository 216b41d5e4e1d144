"""Accounts, API keys and authentication: who a request is from, from its key alone."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from backstock.domain import keys
from backstock.domain.errors import BadRequest, NotFound
from backstock.domain.ids import AccountId
from backstock.domain.keys import AccountRecord, ApiKey, KeyRecord, Principal
from backstock.services.stores import AccountStore


@dataclass(frozen=True, slots=True)
class NewKey:
    key_id: str
    account: str
    scopes: frozenset[str]
    key: str
    """The key to give its owner: shown once, never stored."""


class Accounts:
    def __init__(self, store: AccountStore) -> None:
        self.store = store

    async def authenticate(self, key: ApiKey) -> Principal:
        """The principal of ``key`` (``domain.keys.principal``): 401 unless it is valid."""
        return keys.principal(await self.store.find_key(key.key_id), key)

    async def create_account(self, name: str) -> AccountId:
        return await self.store.create_account(name)

    async def list_accounts(self) -> list[AccountRecord]:
        return await self.store.list_accounts()

    async def create_key(self, account: str, scopes: Iterable[str]) -> NewKey:
        """A key for ``account`` (created when new)."""
        wanted = frozenset(scopes)
        if not wanted or not wanted <= keys.SCOPES:
            raise BadRequest(f"Scopes must be among {', '.join(sorted(keys.SCOPES))}")
        key, text = keys.new_key()
        await self.store.create_key(account, key.key_id, key.secret_hash, " ".join(sorted(wanted)))
        return NewKey(key.key_id, account, wanted, text)

    async def list_keys(self, account: str) -> list[KeyRecord]:
        return await self.store.list_keys(account)

    async def revoke_key(self, key_or_id: str) -> str:
        """Revoke a key, named by its id or by the whole key; returns the key id."""
        key_id = keys.key_id_of(key_or_id)
        if not await self.store.revoke_key(key_id):
            raise NotFound(f"No active key with id '{key_id}'")
        return key_id
