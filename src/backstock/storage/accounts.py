"""Accounts and API keys."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from backstock.domain.errors import Conflict
from backstock.domain.ids import AccountId
from backstock.storage.database import DriverQuery
from backstock.storage.direct import Direct
from backstock.storage.schema import accounts, api_keys


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    account_id: AccountId
    account_name: str
    secret_hash: str
    scopes: frozenset[str]
    created_at: int
    revoked_at: int | None


def insert_account(conn: Connection, name: str, now: int) -> AccountId:
    try:
        result = conn.execute(
            insert(accounts).values(name=name, created_at=now).returning(accounts.c.id)
        )
    except IntegrityError as exc:
        raise Conflict(f"An account named '{name}' already exists") from exc
    return AccountId(result.scalar_one())


def find_account(conn: Connection, name: str) -> AccountId | None:
    found = conn.execute(select(accounts.c.id).where(accounts.c.name == name)).scalar()
    return None if found is None else AccountId(found)


def insert_key(
    conn: Connection, key_id: str, account: AccountId, secret_hash: str, scopes: str, now: int
) -> None:
    conn.execute(
        insert(api_keys).values(
            id=key_id, account_id=account, secret_hash=secret_hash, scopes=scopes, created_at=now
        )
    )


_KEY_COLUMNS = (
    api_keys.c.id,
    api_keys.c.account_id,
    accounts.c.name,
    api_keys.c.secret_hash,
    api_keys.c.scopes,
    api_keys.c.created_at,
    api_keys.c.revoked_at,
)
_KEYS = select(*_KEY_COLUMNS).join(accounts, accounts.c.id == api_keys.c.account_id)


def key_record(row: Sequence[Any]) -> KeyRecord:
    key_id, account, name, secret_hash, scopes, created, revoked = row[:KEY_WIDTH]
    return KeyRecord(
        key_id, AccountId(account), name, secret_hash, frozenset(scopes.split()), created, revoked
    )


KEY_COLUMNS = "k.id, k.account_id, a.name, k.secret_hash, k.scopes, k.created_at, k.revoked_at"
KEY_FROM = " FROM api_keys AS k JOIN accounts AS a ON a.id = k.account_id"
"""``KeyRecord``'s columns, and where they come from, for statements that find a key."""
KEY_WIDTH = 7
_FIND_KEY = DriverQuery("SELECT " + KEY_COLUMNS + KEY_FROM + " WHERE k.id = ?")


def find_key(conn: Connection, key_id: str) -> KeyRecord | None:
    """Run on every request: straight to the driver."""
    row = _FIND_KEY.fetch_one(conn, key_id)
    return None if row is None else key_record(row)


async def find_key_direct(direct: Direct, key_id: str) -> KeyRecord | None:
    row = await direct.one(_FIND_KEY, key_id)
    return None if row is None else key_record(row)


def list_keys(conn: Connection, account: AccountId) -> list[KeyRecord]:
    rows = conn.execute(
        _KEYS.where(api_keys.c.account_id == account).order_by(api_keys.c.created_at)
    )
    return [key_record(row) for row in rows]


def revoke_key(conn: Connection, key_id: str, now: int) -> bool:
    result = conn.execute(
        update(api_keys)
        .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return result.rowcount == 1
