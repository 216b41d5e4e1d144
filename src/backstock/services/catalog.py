"""Catalog items and variants: one function per operation, each one transaction."""

from __future__ import annotations

from typing import Any

from backstock.domain import documents
from backstock.domain.clock import now_us
from backstock.domain.errors import NotFound
from backstock.domain.filters import Condition
from backstock.domain.ids import ExternalId, compound_id
from backstock.domain.pagination import Page, PageRequest
from backstock.services.accounts import Principal
from backstock.storage import catalog as store
from backstock.storage.database import Database

Record = dict[str, Any]


def _missing(kind: str, external: str) -> NotFound:
    return NotFound(f"No catalog {kind} with id '{compound_id(external)}'")


# ---- items -----------------------------------------------------------------------------------


def create_item(db: Database, who: Principal, document: Any) -> Record:
    draft = documents.parse_item_create(document)
    with db.write() as conn:
        return store.insert_item(
            conn, who.account_id, draft.external_id, draft.attributes, draft.category_ids, now_us()
        )


def get_item(db: Database, who: Principal, external: ExternalId) -> Record:
    with db.read() as conn:
        found = store.get_item(conn, who.account_id, external)
        if found is None:
            raise _missing("item", external)
        return found


def list_items(
    db: Database, who: Principal, conditions: list[Condition], page: PageRequest
) -> Page[Record]:
    with db.read() as conn:
        return store.list_items(conn, who.account_id, conditions, page)


def item_variant_ids(db: Database, who: Principal, items: list[Record]) -> dict[int, list[str]]:
    """The external ids of each item's variants, keyed by the item's ``pk``."""
    with db.read() as conn:
        return {
            item["pk"]: store.variant_ids_of_item(conn, who.account_id, item["pk"])
            for item in items
        }


def update_item(db: Database, who: Principal, external: ExternalId, document: Any) -> Record:
    attributes, categories = documents.parse_item_update(document, compound_id(external))
    with db.write() as conn:
        found = store.update_item(conn, who.account_id, external, attributes, categories, now_us())
    if found is None:
        raise _missing("item", external)
    return found


def delete_item(db: Database, who: Principal, external: ExternalId) -> None:
    with db.write() as conn:
        if not store.delete_item(conn, who.account_id, external):
            raise _missing("item", external)


# ---- variants --------------------------------------------------------------------------------


def create_variant(db: Database, who: Principal, document: Any) -> Record:
    draft = documents.parse_variant_create(document)
    with db.write() as conn:
        parent = store.item_pk(conn, who.account_id, draft.item_external_id, hold=True)
        if parent is None:
            raise NotFound(
                f"No catalog item with id '{compound_id(draft.item_external_id)}'",
                pointer=draft.item_pointer,
            )
        return store.insert_variant(
            conn, who.account_id, draft.external_id, parent, draft.attributes, now_us()
        )


def get_variant(db: Database, who: Principal, external: ExternalId) -> Record:
    with db.read() as conn:
        found = store.get_variant(conn, who.account_id, external)
    if found is None:
        raise _missing("variant", external)
    return found


def list_variants(
    db: Database,
    who: Principal,
    conditions: list[Condition],
    page: PageRequest,
    item: ExternalId | None = None,
) -> Page[Record]:
    with db.read() as conn:
        parent = None
        if item is not None:
            parent = store.item_pk(conn, who.account_id, item)
            if parent is None:
                raise _missing("item", item)
        return store.list_variants(conn, who.account_id, conditions, page, parent)


def update_variant(db: Database, who: Principal, external: ExternalId, document: Any) -> Record:
    attributes = documents.parse_update(document, "catalog-variant", compound_id(external))
    with db.write() as conn:
        found = store.update_variant(conn, who.account_id, external, attributes, now_us())
    if found is None:
        raise _missing("variant", external)
    return found


def delete_variant(db: Database, who: Principal, external: ExternalId) -> None:
    with db.write() as conn:
        if not store.delete_variant(conn, who.account_id, external):
            raise _missing("variant", external)


def variants_by_ids(db: Database, who: Principal, externals: list[str]) -> list[Record]:
    with db.read() as conn:
        return store.get_variants(conn, who.account_id, externals)
