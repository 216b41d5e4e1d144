"""A request's key is read with ``Database.read_together``: on PostgreSQL the keys of requests
that arrive while one is being read are read together, in one statement. Each request gets the
key it would get alone, or none."""

from __future__ import annotations

import asyncio

import pytest

from backstock.domain.keys import KeyRecord, from_authorization
from backstock.services.container import Services
from backstock.storage import accounts as accounts_store
from backstock.storage.sql import Conn
from tests.support import call, make_key


def test_keys_asked_together_are_each_answered_as_alone(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = from_authorization(f"Klaviyo-API-Key {make_key(services)}")
    theirs = from_authorization(f"Klaviyo-API-Key {make_key(services, 'other-account')}")
    revoked = from_authorization(f"Klaviyo-API-Key {make_key(services)}")
    call(services, lambda: services.accounts.revoke_key(revoked.key_id))
    store = services.accounts.store
    asks = [
        good.key_id,
        "nosuchkey",
        theirs.key_id,
        revoked.key_id,
        good.key_id,
        "no\x00key",
        'k"\\\u00e9\x01',
    ]

    async def together() -> list[KeyRecord | None]:
        return await asyncio.gather(*(store.find_key(key_id) for key_id in asks))

    async def in_one_statement() -> list[KeyRecord | None]:  # on PostgreSQL; SQLite: each alone
        return await store.db.read(lambda conn: accounts_store.find_keys(conn, asks))

    reads: list[int] = []  # how many asks each read took
    find_keys = accounts_store.find_keys

    async def counted(conn: Conn, key_ids: list[str]) -> list[KeyRecord | None]:
        reads.append(len(key_ids))
        return await find_keys(conn, key_ids)

    monkeypatch.setattr(accounts_store, "find_keys", counted)
    answers = call(services, together)
    assert sum(reads) == len(asks)
    if services.settings.is_sqlite:
        assert reads == [1] * len(asks)  # each in-thread, alone
    else:
        assert len(reads) < len(asks)  # asks that arrived together, read together
    monkeypatch.undo()
    alone = [call(services, lambda k=k: store.find_key(k)) for k in asks]  # type: ignore[misc]
    assert answers == alone
    assert call(services, in_one_statement) == alone
    found = [(r.id, r.account_name, r.revoked_at is not None) if r else None for r in answers]
    assert found == [
        (good.key_id, "acme", False),
        None,
        (theirs.key_id, "other-account", False),
        (revoked.key_id, "acme", True),
        (good.key_id, "acme", False),  # the same key twice
        None,  # an id PostgreSQL could not take as a parameter fails no other ask
        None,  # one with what JSON escapes (the asks go as one JSON parameter)
    ]
