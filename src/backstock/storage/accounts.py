"""Accounts and API keys."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Join, bindparam, select

from backstock.domain.clock import now_us
from backstock.domain.errors import Conflict, NotFound
from backstock.domain.ids import AccountId
from backstock.domain.keys import AccountRecord, KeyRecord
from backstock.storage.database import Database
from backstock.storage.schema import accounts, api_keys
from backstock.storage.sql import Conn, Statement, asked, asks_json, asks_table

_INSERT_ACCOUNT = Statement(
    "insert_account",
    "INSERT INTO accounts (name, created_at, cursor_key) VALUES (:name, :now, :cursor_key) "
    "ON CONFLICT (name) DO NOTHING RETURNING id",
)
# Its open jobs and bytes (schema.account_slots), none yet.
_INSERT_SLOTS = Statement(
    "insert_account_slots", "INSERT INTO account_slots (account_id) VALUES (:account)"
)
_FIND_ACCOUNT = Statement("find_account", "SELECT id FROM accounts WHERE name = :name")
_LIST_ACCOUNTS = Statement(
    "list_accounts",
    """SELECT a.id, a.name, a.created_at, COALESCE(s.open_jobs, 0)
         FROM accounts AS a LEFT JOIN account_slots AS s ON s.account_id = a.id
        ORDER BY a.id""",
)
_INSERT_KEY = Statement(
    "insert_key",
    "INSERT INTO api_keys (id, account_id, secret_hash, scopes, created_at) "
    "VALUES (:key, :account, :secret_hash, :scopes, :now)",
)
KEY_COLUMNS = (
    api_keys.c.id, api_keys.c.account_id, accounts.c.name, api_keys.c.secret_hash,
    api_keys.c.scopes, api_keys.c.created_at, api_keys.c.revoked_at, accounts.c.cursor_key,
)  # fmt: skip
"""A key's row as ``key_record`` reads it (other statements select them first, then more)."""
KEY_WIDTH = len(KEY_COLUMNS)
KEYS: Join = api_keys.join(accounts, accounts.c.id == api_keys.c.account_id)

_FIND_KEY = Statement(
    "find_key", select(*KEY_COLUMNS).select_from(KEYS).where(api_keys.c.id == bindparam("key"))
)
# Keys read together (``Database.read_together``), on PostgreSQL: the asked ids as a table.
_ASKED_KEYS = asks_table("asked", ("key",))
_FIND_KEYS = Statement(
    "find_keys",
    "SELECT NULL",  # never run: SQLite reads each key alone
    select(_ASKED_KEYS.c.n, *KEY_COLUMNS).select_from(
        _ASKED_KEYS.join(KEYS, api_keys.c.id == _ASKED_KEYS.c.key)
    ),
)
_LIST_KEYS = Statement(
    "list_keys",
    select(*KEY_COLUMNS)
    .select_from(KEYS)
    .where(api_keys.c.account_id == bindparam("account"))
    .order_by(api_keys.c.created_at),
)
_REVOKE_KEY = Statement(
    "revoke_key",
    "UPDATE api_keys SET revoked_at = :now WHERE id = :key AND revoked_at IS NULL",
)


async def insert_account(conn: Conn, name: str, now: int) -> AccountId:
    params = {"name": name, "now": now, "cursor_key": os.urandom(16)}
    row = await conn.one(_INSERT_ACCOUNT, params)
    if row is None:
        raise Conflict(f"An account named '{name}' already exists")
    await conn.run(_INSERT_SLOTS, {"account": row[0]})
    return AccountId(row[0])


async def find_account(conn: Conn, name: str) -> AccountId | None:
    row = await conn.one(_FIND_ACCOUNT, {"name": name})
    return None if row is None else AccountId(row[0])


async def list_accounts(conn: Conn) -> list[AccountRecord]:
    return [AccountRecord(AccountId(r[0]), *r[1:]) for r in await conn.all(_LIST_ACCOUNTS)]


async def insert_key(
    conn: Conn, key_id: str, account: AccountId, secret_hash: str, scopes: str, now: int
) -> None:
    params = {"key": key_id, "account": account, "secret_hash": secret_hash, "scopes": scopes}
    await conn.run(_INSERT_KEY, params | {"now": now})


def key_record(row: Sequence[Any]) -> KeyRecord:
    """The key of a row that starts with ``KEY_COLUMNS``."""
    key_id, account, name, secret_hash, scopes, created, revoked, cursor_key = row[:KEY_WIDTH]
    return KeyRecord(
        key_id, AccountId(account), name, secret_hash, frozenset(scopes.split()), created,
        revoked, bytes(cursor_key),
    )  # fmt: skip


async def find_key(conn: Conn, key_id: str) -> KeyRecord | None:
    """Run on every request (but a job's poll, which reads its key with the job)."""
    row = await conn.one(_FIND_KEY, {"key": asked(key_id)})
    return None if row is None else key_record(row)


async def find_keys(conn: Conn, key_ids: list[str]) -> list[KeyRecord | None]:
    """``find_key`` for each id, in order; on PostgreSQL, several in one statement."""
    if len(key_ids) == 1 or not conn.postgres:
        return [await find_key(conn, key_id) for key_id in key_ids]
    found: list[KeyRecord | None] = [None] * len(key_ids)
    for row in await conn.all(
        _FIND_KEYS, {"asks": asks_json(_ASKED_KEYS, [(asked(key_id),) for key_id in key_ids])}
    ):
        found[row[0] - 1] = key_record(row[1:])
    return found


async def list_keys(conn: Conn, account: AccountId) -> list[KeyRecord]:
    return [key_record(row) for row in await conn.all(_LIST_KEYS, {"account": account})]


async def revoke_key(conn: Conn, key_id: str, now: int) -> bool:
    return await conn.run(_REVOKE_KEY, {"key": key_id, "now": now}) == 1


class AccountStore:
    """Accounts and keys, as the services see them: every method one read or one write."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def find_key(self, key_id: str) -> KeyRecord | None:
        return await self.db.read_together(find_keys, key_id)

    async def create_account(self, name: str) -> AccountId:
        return await self.db.write(lambda conn: insert_account(conn, name, now_us()))

    async def list_accounts(self) -> list[AccountRecord]:
        return await self.db.read(list_accounts)

    async def create_key(self, account: str, key_id: str, secret_hash: str, scopes: str) -> None:
        """Store a key of ``account``, creating the account when it is new."""

        async def unit(conn: Conn) -> None:
            account_id = await find_account(conn, account)
            if account_id is None:
                account_id = await insert_account(conn, account, now_us())
            await insert_key(conn, key_id, account_id, secret_hash, scopes, now_us())

        await self.db.write(unit)

    async def list_keys(self, account: str) -> list[KeyRecord]:
        async def unit(conn: Conn) -> list[KeyRecord]:
            account_id = await find_account(conn, account)
            if account_id is None:
                raise NotFound(f"No account named '{account}'")
            return await list_keys(conn, account_id)

        return await self.db.read(unit)

    async def revoke_key(self, key_id: str) -> bool:
        return await self.db.write(lambda conn: revoke_key(conn, key_id, now_us()))
