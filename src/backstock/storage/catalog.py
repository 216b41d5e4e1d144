"""Catalog items and variants. Every statement filters by account.

Records come back as plain dicts of their attributes plus ``external_id``, ``created`` and
``updated`` (microseconds), and for variants ``item_external_id``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    bindparam,
    delete,
    false,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from backstock.domain.errors import BadRequest, Conflict
from backstock.domain.filters import Condition
from backstock.domain.ids import AccountId, ExternalId, InvalidCompoundId, parse_compound_id
from backstock.domain.pagination import Page, PageRequest
from backstock.storage.database import DriverQuery
from backstock.storage.direct import Direct
from backstock.storage.pages import paginate
from backstock.storage.schema import catalog_items, catalog_variants

JSON_COLUMNS = frozenset({"images", "custom_metadata"})
FLOAT_COLUMNS = frozenset({"price", "inventory_quantity"})
Record = dict[str, Any]

_ITEM_ATTRS = (
    "title",
    "description",
    "url",
    "price",
    "image_full_url",
    "image_thumbnail_url",
    "images",
    "custom_metadata",
    "published",
)
_VARIANT_ATTRS = (*_ITEM_ATTRS, "sku", "inventory_policy", "inventory_quantity")


def encode_columns(attributes: dict[str, Any]) -> dict[str, Any]:
    return {name: _column_value(name, value) for name, value in attributes.items()}


def _column_value(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in JSON_COLUMNS:
        # msgspec, not orjson: JSON allows integers beyond 64 bits and so do we
        return msgspec.json.encode(value).decode()
    if name in FLOAT_COLUMNS:
        return float(value)  # SQLite cannot bind an integer beyond 64 bits, even to REAL
    return value


def _decode(row: Any, names: Sequence[str]) -> Record:
    """A row as a record; JSON members stay the JSON text they are stored as, wrapped so that
    orjson writes them into a response as they are (no parse and re-encode per read)."""
    record = dict(zip(names, row, strict=True))
    for name in JSON_COLUMNS:
        if record.get(name) is not None:
            record[name] = orjson.Fragment(record[name])
    return record


_ITEM_NAMES = ("pk", "external_id", *_ITEM_ATTRS, "categories", "created", "updated")
_ITEM_SELECT = select(*(catalog_items.c[name] for name in _ITEM_NAMES))

_V = catalog_variants
_VARIANT_NAMES = ("pk", "external_id", *_VARIANT_ATTRS, "created", "updated", "item_external_id")
_VARIANT_SELECT = select(
    *(_V.c[name] for name in _VARIANT_NAMES[:-1]),
    catalog_items.c.external_id.label("item_external_id"),
).join(catalog_items, catalog_items.c.pk == _V.c.item_pk)


_VARIANTS_SQL = (
    f"SELECT {', '.join(f'v.{name}' for name in _VARIANT_NAMES[:-1])}, i.external_id"  # noqa: S608
    " FROM catalog_variants AS v JOIN catalog_items AS i ON i.pk = v.item_pk"
    " WHERE v.account_id = ? AND v.external_id "
)
_VARIANTS_ANY = DriverQuery(_VARIANTS_SQL + "= ANY(?)")  # PostgreSQL: the ids as one array


async def get_variants_direct(
    direct: Direct, account: AccountId, externals: Sequence[str]
) -> list[Record]:
    """``get_variants`` straight through the driver (a job's ``include=variants``)."""
    unique = sorted(set(externals))
    if not unique:
        return []
    if direct.is_sqlite:
        query = DriverQuery(_VARIANTS_SQL + f"IN ({', '.join('?' * len(unique))})")
        rows = await direct.all(query, account, *unique)
    else:
        rows = await direct.all(_VARIANTS_ANY, account, unique)
    records = [_variant(row) for row in rows]
    for record in records:  # SQLite stores a boolean as 0 or 1; SQLAlchemy would convert it
        if record["published"] is not None:
            record["published"] = bool(record["published"])
    return records


def _pk(record: Record) -> int:
    return int(record["pk"])


def _item(row: Any) -> Record:
    record = _decode(row, _ITEM_NAMES)
    record["categories"] = orjson.loads(record["categories"])
    return record


def _variant(row: Any) -> Record:
    return _decode(row, _VARIANT_NAMES)


# ---- items -----------------------------------------------------------------------------------


def insert_item(
    conn: Connection,
    account: AccountId,
    external: ExternalId,
    attributes: dict[str, Any],
    categories: list[str],
    now: int,
) -> Record:
    values = encode_columns(attributes) | {"categories": orjson.dumps(categories).decode()}
    try:
        conn.execute(
            insert(catalog_items).values(
                account_id=account, external_id=external, created=now, updated=now, **values
            )
        )
    except IntegrityError as exc:
        raise Conflict(
            f"A catalog item with external_id '{external}' already exists",
            pointer="/data/attributes/external_id",
        ) from exc
    found = get_item(conn, account, external)
    assert found is not None
    return found


def get_item(conn: Connection, account: AccountId, external: str) -> Record | None:
    row = conn.execute(_ITEM_SELECT.where(_item_key(account, external))).first()
    return None if row is None else _item(row)


def _item_key(account: AccountId, external: str) -> ColumnElement[bool]:
    return and_(catalog_items.c.account_id == account, catalog_items.c.external_id == external)


def item_pk(
    conn: Connection, account: AccountId, external: str, *, hold: bool = False
) -> int | None:
    """The item's key; with ``hold``, the row stays locked (FOR SHARE on PostgreSQL) until the
    transaction ends, so a concurrent delete cannot orphan what the caller inserts under it."""
    query = select(catalog_items.c.pk).where(_item_key(account, external))
    if hold and conn.dialect.name == "postgresql":
        query = query.with_for_update(read=True)
    found = conn.execute(query).scalar()
    return None if found is None else int(found)


def update_item(
    conn: Connection,
    account: AccountId,
    external: str,
    attributes: dict[str, Any],
    categories: list[str] | None,
    now: int,
) -> Record | None:
    values = encode_columns(attributes) | {"updated": now}
    if categories is not None:
        values["categories"] = orjson.dumps(categories).decode()
    result = conn.execute(update(catalog_items).where(_item_key(account, external)).values(values))
    return get_item(conn, account, external) if result.rowcount else None


def delete_item(conn: Connection, account: AccountId, external: str) -> bool:
    """Delete an item and, with it, its variants."""
    pk = item_pk(conn, account, external)
    if pk is None:
        return False
    conn.execute(delete(_V).where(_V.c.account_id == account, _V.c.item_pk == pk))
    conn.execute(delete(catalog_items).where(catalog_items.c.pk == pk))
    return True


def list_items(
    conn: Connection, account: AccountId, conditions: Iterable[Condition], page: PageRequest
) -> Page[Record]:
    query = _ITEM_SELECT.where(catalog_items.c.account_id == account)
    for condition in conditions:
        query = query.where(_item_condition(condition, conn.dialect.name))
    return paginate(conn, query, catalog_items.c.pk, page, _item, _pk)


def _item_condition(condition: Condition, dialect: str) -> ColumnElement[bool]:
    c = catalog_items.c
    if condition.field == "ids":
        return c.external_id.in_(_external_ids(condition.value))
    if condition.field in ("category.id", "category"):
        return _contains(c.categories, orjson.dumps(condition.value).decode(), dialect)
    if condition.field == "title":
        return _contains(c.title, str(condition.value), dialect)
    if condition.field == "published":
        return c.published == condition.value
    raise BadRequest(f"Unsupported filter field '{condition.field}'", parameter="filter")


def _external_ids(value: object) -> list[str]:
    values = value if isinstance(value, tuple) else (value,)
    found: list[str] = []
    for compound in values:
        try:
            external = parse_compound_id(str(compound))
        except InvalidCompoundId:
            continue
        if _storable(external):
            found.append(external)
    return found


def _storable(text: str) -> bool:
    """No stored text holds NUL (PostgreSQL cannot; the API refuses it on SQLite too), and a
    NUL in a query parameter fails on PostgreSQL and cuts LIKE patterns short on SQLite."""
    return "\x00" not in text


def _equals(column: Any, text: str) -> ColumnElement[bool]:
    return column == text if _storable(text) else false()


def _contains(column: Any, text: str, dialect: str) -> ColumnElement[bool]:
    """Exact, case-sensitive substring on both databases (SQLite's LIKE ignores ASCII case)."""
    if not _storable(text):
        return false()
    position = func.instr(column, text) if dialect == "sqlite" else func.strpos(column, text)
    return position > 0


def variant_ids_of_item(conn: Connection, account: AccountId, pk: int) -> list[str]:
    rows = conn.execute(
        select(_V.c.external_id)
        .where(_V.c.account_id == account, _V.c.item_pk == pk)
        .order_by(_V.c.pk)
    )
    return [row[0] for row in rows]


# ---- variants --------------------------------------------------------------------------------


def insert_variant(
    conn: Connection,
    account: AccountId,
    external: ExternalId,
    parent_pk: int,
    attributes: dict[str, Any],
    now: int,
) -> Record:
    try:
        conn.execute(
            insert(_V).values(
                account_id=account,
                external_id=external,
                item_pk=parent_pk,
                created=now,
                updated=now,
                **encode_columns(attributes),
            )
        )
    except IntegrityError as exc:
        raise Conflict(
            f"A catalog variant with external_id '{external}' already exists",
            pointer="/data/attributes/external_id",
        ) from exc
    found = get_variant(conn, account, external)
    assert found is not None
    return found


def _variant_key(account: AccountId, external: str) -> ColumnElement[bool]:
    return and_(_V.c.account_id == account, _V.c.external_id == external)


def get_variant(conn: Connection, account: AccountId, external: str) -> Record | None:
    row = conn.execute(_VARIANT_SELECT.where(_variant_key(account, external))).first()
    return None if row is None else _variant(row)


def get_variants(conn: Connection, account: AccountId, externals: Sequence[str]) -> list[Record]:
    """The variants among ``externals`` that exist, in no particular order."""
    if not externals:
        return []
    params = {"account": account, "externals": sorted(set(externals))}
    return [_variant(row) for row in conn.execute(_GET_VARIANTS, params)]


_GET_VARIANTS = _VARIANT_SELECT.where(
    _V.c.account_id == bindparam("account"),
    _V.c.external_id.in_(bindparam("externals", expanding=True)),
)


def update_variant(
    conn: Connection, account: AccountId, external: str, attributes: dict[str, Any], now: int
) -> Record | None:
    values = encode_columns(attributes) | {"updated": now}
    result = conn.execute(update(_V).where(_variant_key(account, external)).values(values))
    return get_variant(conn, account, external) if result.rowcount else None


def delete_variant(conn: Connection, account: AccountId, external: str) -> bool:
    return bool(conn.execute(delete(_V).where(_variant_key(account, external))).rowcount)


def list_variants(
    conn: Connection,
    account: AccountId,
    conditions: Iterable[Condition],
    page: PageRequest,
    parent_pk: int | None = None,
) -> Page[Record]:
    query = _VARIANT_SELECT.where(_V.c.account_id == account)
    if parent_pk is not None:
        query = query.where(_V.c.item_pk == parent_pk)
    for condition in conditions:
        query = query.where(_variant_condition(condition, conn.dialect.name))
    return paginate(conn, query, _V.c.pk, page, _variant, _pk)


def _variant_condition(condition: Condition, dialect: str) -> ColumnElement[bool]:
    if condition.field == "ids":
        return _V.c.external_id.in_(_external_ids(condition.value))
    if condition.field in ("item.id", "item"):
        ids = _external_ids(condition.value)
        return catalog_items.c.external_id == ids[0] if ids else false()
    if condition.field == "sku":
        return _equals(_V.c.sku, str(condition.value))
    if condition.field == "title":
        return _contains(_V.c.title, str(condition.value), dialect)
    if condition.field == "published":
        return _V.c.published == condition.value
    raise BadRequest(f"Unsupported filter field '{condition.field}'", parameter="filter")


# ---- pagination ------------------------------------------------------------------------------
