"""Accounts, API keys and authentication.

A key reads ``pk_<key id>_<secret>``. Only a SHA-256 of the secret is stored; the key id finds
the row and the hashes are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from backstock.domain.clock import now_us
from backstock.domain.errors import BadRequest, NotAuthenticated, NotFound, PermissionDenied
from backstock.domain.ids import AccountId
from backstock.storage import accounts as store
from backstock.storage.database import Database
from backstock.storage.direct import Direct

SCOPES = frozenset({"catalogs:read", "catalogs:write"})
KEY_PREFIX = "pk_"
_KEY_ID_LENGTH = 12


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the account a key belongs to and what it may do."""

    account_id: AccountId
    key_id: str
    scopes: frozenset[str]

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise PermissionDenied(f"This API key lacks the '{scope}' scope.")


@dataclass(frozen=True, slots=True)
class NewKey:
    key_id: str
    account: str
    scopes: frozenset[str]
    key: str


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_account(db: Database, name: str) -> AccountId:
    with db.write() as conn:
        return store.insert_account(conn, name, now_us())


def create_key(db: Database, account: str, scopes: Iterable[str]) -> NewKey:
    """Create a key (and the account when it is new); the key is shown here and never again."""
    wanted = frozenset(scopes)
    if not wanted or not wanted <= SCOPES:
        raise BadRequest(f"Scopes must be among {', '.join(sorted(SCOPES))}")
    key_id = secrets.token_hex(_KEY_ID_LENGTH // 2)
    secret = secrets.token_urlsafe(32)
    with db.write() as conn:
        account_id = store.find_account(conn, account)
        if account_id is None:
            account_id = store.insert_account(conn, account, now_us())
        store.insert_key(
            conn, key_id, account_id, _hash(secret), " ".join(sorted(wanted)), now_us()
        )
    return NewKey(key_id, account, wanted, f"{KEY_PREFIX}{key_id}_{secret}")


def list_keys(db: Database, account: str) -> list[store.KeyRecord]:
    with db.read() as conn:
        account_id = store.find_account(conn, account)
        if account_id is None:
            raise NotFound(f"No account named '{account}'")
        return store.list_keys(conn, account_id)


def revoke_key(db: Database, key_id: str) -> None:
    with db.write() as conn:
        if not store.revoke_key(conn, key_id, now_us()):
            raise NotFound(f"No active key with id '{key_id}'")


def authenticate(db: Database, authorization: str | None) -> Principal:
    """``Authorization: Klaviyo-API-Key pk_…`` → the principal; 401 for anything else."""
    key_id, secret = parse_key(authorization)
    with db.read() as conn:
        return verify(store.find_key(conn, key_id), secret)


async def authenticate_direct(direct: Direct, authorization: str | None) -> Principal:
    """``authenticate`` in one statement straight to the driver (the hot paths)."""
    key_id, secret = parse_key(authorization)
    return verify(await store.find_key_direct(direct, key_id), secret)


def parse_key(authorization: str | None) -> tuple[str, str]:
    """The key id and secret of an ``Authorization`` header; 401 if it holds no key."""
    if not authorization:
        raise NotAuthenticated("Send 'Authorization: Klaviyo-API-Key <your private key>'.")
    scheme, _, key = authorization.partition(" ")
    if scheme != "Klaviyo-API-Key" or not key.startswith(KEY_PREFIX):
        raise NotAuthenticated("The Authorization header must read 'Klaviyo-API-Key <key>'.")
    key_id, _, secret = key[len(KEY_PREFIX) :].partition("_")
    if len(key_id) != _KEY_ID_LENGTH or not secret:
        raise NotAuthenticated("The API key is not valid.")
    return key_id, secret


def verify(record: store.KeyRecord | None, secret: str) -> Principal:
    """The principal of the key found by its id, if ``secret`` is its secret (compared in
    constant time) and it is not revoked; 401 otherwise."""
    if record is None or not hmac.compare_digest(record.secret_hash, _hash(secret)):
        raise NotAuthenticated("The API key is not valid.")
    if record.revoked_at is not None:
        raise NotAuthenticated("The API key has been revoked.")
    return Principal(record.account_id, record.id, record.scopes)
