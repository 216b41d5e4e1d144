"""API keys as Klaviyo's clients send them: ``Authorization: Klaviyo-API-Key pk_<id>_<secret>``.

Only a SHA-256 of the secret is stored; the key id finds the row and the hashes are compared in
constant time (``principal``)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Final

import msgspec

from backstock.domain.errors import NotAuthenticated, PermissionDenied
from backstock.domain.ids import AccountId

SCOPES: Final = frozenset({"catalogs:read", "catalogs:write"})
READ: Final = "catalogs:read"
WRITE: Final = "catalogs:write"
PREFIX: Final = "pk_"
KEY_ID_LENGTH: Final = 12
INVALID: Final = "The API key is not valid."


class ApiKey:
    """A key as presented: its id (which finds it) and its secret (which proves it), with the
    secret's SHA-256 made once (a poll both sends it to the database and compares it)."""

    __slots__ = ("key_id", "secret", "secret_hash")

    def __init__(self, key_id: str, secret: str) -> None:
        self.key_id = key_id
        self.secret = secret
        self.secret_hash = hash_secret(secret)

    def __repr__(self) -> str:  # never the secret
        return f"ApiKey({self.key_id!r})"


class Principal(msgspec.Struct, frozen=True):
    """Who is calling: the account a key belongs to and what it may do."""

    account_id: AccountId
    key_id: str
    scopes: frozenset[str]
    cursor_key: bytes = b""
    """The account's key for its page cursors (``domain.pagination``)."""

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise PermissionDenied(f"This API key lacks the '{scope}' scope.")


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def from_authorization(header: str | None) -> ApiKey:
    """The key of an ``Authorization`` header; 401 if it holds none. The keys of the last
    headers seen are kept (a client sends the same one on every request): parsing and hashing
    one was 3 % of a job poll's instructions (9k of 294k, callgrind). The table holds the
    headers, secrets included, in this process's memory only, as each request's own headers
    are while it is served; it is bounded and never written anywhere."""
    if not header:
        raise NotAuthenticated("Send 'Authorization: Klaviyo-API-Key <your private key>'.")
    key = _PRESENTED.get(header)
    if key is None:
        key = _parse(header)
        if len(_PRESENTED) >= _PRESENTED_MAX:  # bounded: a flood of keys just starts it over
            _PRESENTED.clear()
        _PRESENTED[header] = key
    return key


_PRESENTED: dict[str, ApiKey] = {}
_PRESENTED_MAX = 1024


def _parse(header: str) -> ApiKey:
    scheme, _, key = header.partition(" ")
    if scheme != "Klaviyo-API-Key" or not key.startswith(PREFIX):
        raise NotAuthenticated("The Authorization header must read 'Klaviyo-API-Key <key>'.")
    key_id, _, secret = key[len(PREFIX) :].partition("_")
    if len(key_id) != KEY_ID_LENGTH or not secret:
        raise NotAuthenticated(INVALID)
    return ApiKey(key_id, secret)


def principal(record: KeyRecord | None, key: ApiKey) -> Principal:
    """The principal of ``key``, given the stored key its id names: if it exists, its secret
    matches (compared in constant time) and it is not revoked; 401 otherwise."""
    if record is None or not hmac.compare_digest(record.secret_hash, key.secret_hash):
        raise NotAuthenticated(INVALID)
    if record.revoked_at is not None:
        raise NotAuthenticated("The API key has been revoked.")
    return Principal(record.account_id, record.id, record.scopes, record.cursor_key)


def key_id_of(text: str) -> str:
    """The key id of ``text``, whether it is a key id or a whole key (``pk_<id>_<secret>``):
    so that a pasted key is revoked by its id, and its secret never repeated."""
    if text.startswith(PREFIX):
        return text[len(PREFIX) :].partition("_")[0][:KEY_ID_LENGTH]
    return text[: KEY_ID_LENGTH * 4]


def new_key() -> tuple[ApiKey, str]:
    """A fresh key, and the text to give its owner (shown once, never stored)."""
    key = ApiKey(secrets.token_hex(KEY_ID_LENGTH // 2), secrets.token_urlsafe(32))
    return key, f"{PREFIX}{key.key_id}_{key.secret}"


class KeyRecord(msgspec.Struct, frozen=True):
    """A stored key: never its secret, only the secret's hash."""

    id: str
    account_id: AccountId
    account_name: str
    secret_hash: str
    scopes: frozenset[str]
    created_at: int
    revoked_at: int | None
    cursor_key: bytes = b""


@dataclass(frozen=True, slots=True)
class AccountRecord:
    id: AccountId
    name: str
    created_at: int
    open_jobs: int
