"""Catalog items, variants and categories: one function per operation, generic over the
resource descriptions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from backstock.domain import bodies
from backstock.domain.catalog import Outcome, Record, Refusal
from backstock.domain.errors import Conflict, NotFound
from backstock.domain.filters import Condition
from backstock.domain.ids import ExternalId, compound_id
from backstock.domain.keys import Principal
from backstock.domain.pagination import Page, PageRequest
from backstock.domain.resources import Resource, resource
from backstock.services.offload import decoded
from backstock.services.stores import CatalogStore

MAX_INCLUDED = 100
"""``include`` adds at most this many resources to a document (one page's worth): one request
cannot make the server render an unbounded document."""


def missing(res: Resource, external: str) -> NotFound:
    return NotFound(f"No catalog {res.noun} with id '{compound_id(external)}'")


def _refused(
    res: Resource, refusal: Refusal, external: str, pointers: dict[str, list[str]]
) -> Exception:
    if refusal.reason == "exists":
        detail = f"A catalog {res.noun} with external_id '{external}' already exists"
        return Conflict(detail, pointer="/data/attributes/external_id")
    if refusal.reason == "missing":
        return missing(res, external)
    target = resource(res.relation(refusal.relation).target)
    pointer = pointers.get(refusal.relation, [None] * (refusal.index + 1))[refusal.index]
    return NotFound(
        f"No catalog {target.noun} with id '{compound_id(refusal.external)}'", pointer=pointer
    )


class Catalog:
    def __init__(self, store: CatalogStore) -> None:
        self.store = store

    async def create(self, who: Principal, res: Resource, body: bytes) -> Record:
        entry = await decoded(lambda: bodies.decode_create(res, body), body)
        item = (entry.external_id, entry.attributes, entry.links)
        outcome, record = await self.store.write_one("create", res, who.account_id, item)
        if outcome is not None:
            raise _refused(res, outcome, entry.external_id, entry.pointers)
        assert record is not None
        return record

    async def get(self, who: Principal, res: Resource, external: ExternalId) -> Record:
        found = await self.store.get(res, who.account_id, external)
        if found is None:
            raise missing(res, external)
        return found

    async def list_resources(
        self, who: Principal, res: Resource, conditions: Sequence[Condition], page: PageRequest
    ) -> Page[Record]:
        found = await self.store.list_records(res, who.account_id, conditions, page)
        assert found is not None
        return found

    async def related(
        self,
        who: Principal,
        owner: Resource,
        relation: str,
        external: ExternalId,
        conditions: Sequence[Condition],
        page: PageRequest,
    ) -> Page[Record]:
        """A page of what ``owner`` ``external`` relates to (an item's variants, a category's
        items, an item's categories); 404 when it does not exist."""
        target = resource(owner.relation(relation).target)
        found = await self.store.list_records(
            target, who.account_id, conditions, page, (owner, relation, external)
        )
        if found is None:
            raise missing(owner, external)
        return found

    async def included(
        self, who: Principal, owner: Resource, relation: str, records: Sequence[Record]
    ) -> tuple[dict[str, list[str]], list[Record]]:
        """What ``include`` adds to ``records``: at most ``MAX_INCLUDED`` related resources
        (the oldest first), and the external ids of those each record relates to (by its
        external id). An item's ``links.related`` pages through all of its variants."""
        children = await self.store.related(
            owner, relation, who.account_id, [r["pk"] for r in records], MAX_INCLUDED
        )
        parent = resource(owner.relation(relation).target).parent
        assert parent is not None  # include follows a parent's children (an item's variants)
        ids: dict[str, list[str]] = {r["external_id"]: [] for r in records}
        for child in children:
            ids[child[f"{parent.name}_external_id"]].append(child["external_id"])
        return ids, children

    async def update(
        self, who: Principal, res: Resource, external: ExternalId, body: bytes
    ) -> Record:
        entry = await decoded(lambda: bodies.decode_update(res, body, external), body)
        item = (entry.external_id, entry.attributes, entry.links)
        outcome, record = await self.store.write_one("update", res, who.account_id, item)
        if outcome is not None:
            raise _refused(res, outcome, external, entry.pointers)
        assert record is not None
        return record

    async def delete(self, who: Principal, res: Resource, external: ExternalId) -> None:
        outcome, _ = await self.store.write_one("delete", res, who.account_id, (external, {}, {}))
        if outcome is not None:
            raise missing(res, external)

    async def change_links(
        self,
        who: Principal,
        res: Resource,
        relation: str,
        external: ExternalId,
        body: bytes,
        how: Literal["add", "replace", "remove"],
    ) -> None:
        """A relationship request: add, replace or remove links of ``res`` ``external``."""
        target = resource(res.relation(relation).target)
        related = await decoded(lambda: bodies.decode_linkage(target, body), body)
        outcome: Outcome = await self.store.change_links(
            res, relation, who.account_id, external, related, how
        )
        if outcome is not None:
            pointers = {relation: [f"/data/{index}/id" for index in range(len(related))]}
            raise _refused(res, outcome, external, pointers)
