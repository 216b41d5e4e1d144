"""Catalog items, variants and categories: every statement, generic over the resource
descriptions, each filtered by account.

Records come back as dicts of the stored attributes plus ``pk``, ``external_id``, ``created``
and ``updated`` (microseconds), and for a variant ``item_external_id``. JSON attributes stay the
JSON text they are stored as, wrapped so that orjson writes them into a response as they are.

The appliers (``create_many``, ``update_many``, ``delete_many``) take a batch of validated
entries and report, for each, ``None`` (applied) or a ``Refusal``: the single-resource requests
and the job worker share them, so a resource is written the same way whichever way it arrives.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from functools import cache, lru_cache
from typing import Any, Literal

import msgspec
import orjson
from sqlalchemy import (
    ColumnElement,
    Select,
    any_,
    bindparam,
    delete,
    false,
    func,
    insert,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert

from backstock.domain.bodies import PayloadItem
from backstock.domain.catalog import EXISTS, MISSING, Outcome, Record, Refusal, Scope
from backstock.domain.clock import now_us
from backstock.domain.filters import Condition
from backstock.domain.ids import AccountId, InvalidCompoundId, parse_compound_id
from backstock.domain.pagination import Page, PageRequest
from backstock.domain.resources import ITEM, Attribute, Relation, Resource, resource
from backstock.storage import pages
from backstock.storage.database import Database
from backstock.storage.schema import JSON_KINDS, TABLES, item_categories
from backstock.storage.sql import Conn, Row, Statement, composed, rows_json, rows_table

_ENCODE = msgspec.json.Encoder().encode


_LINK_COLUMN = {"catalog-item": "item_pk", "catalog-category": "category_pk"}
"""The column of ``item_categories`` holding each side's key."""


def _in(column: Any, dialect: str, name: str) -> ColumnElement[bool]:
    """``column`` is one of the values of parameter ``name`` (see ``Conn.array``)."""
    if dialect == "postgresql":
        return column == any_(bindparam(name))  # type: ignore[no-any-return]
    values: Select[Any] = select(literal_column("value")).select_from(
        func.json_each(bindparam(name))
    )
    return column.in_(values)  # type: ignore[no-any-return]


class _Shape:
    """One resource's table, columns and statements, derived from its description."""

    def __init__(self, res: Resource) -> None:
        self.res = res
        table = self.table = TABLES[res.type]
        self.attributes = tuple(a for a in res.stored if a.kind != "identity")
        self.stored = {a.name: (f"v_{a.name}", a) for a in self.attributes}
        """Each attribute column by name: its parameter's name, and its description."""
        self.parent: Relation | None = res.parent
        self.parent_column = f"{self.parent.name}_pk" if self.parent else ""
        columns: list[Any] = [table.c.pk, table.c.external_id]
        columns += [table.c[a.name] for a in self.attributes]
        columns += [table.c.created, table.c.updated]
        self.names = ["pk", "external_id", *(a.name for a in self.attributes), "created", "updated"]
        source: Any = table
        if self.parent is not None:
            owner = TABLES[self.parent.target]
            columns.append(owner.c.external_id)
            self.names.append(f"{self.parent.name}_external_id")
            source = table.join(owner, owner.c.pk == table.c[self.parent_column])
        self.select: Select[Any] = select(*columns).select_from(source)
        self.json = frozenset(a.name for a in self.attributes if a.kind in JSON_KINDS)
        self.booleans = tuple(a.name for a in self.attributes if a.kind == "boolean")
        mine = table.c.account_id == bindparam("account")
        self.mine = mine
        self.get = Statement(
            f"get_{res.noun}", self.select.where(mine, table.c.external_id == bindparam("external"))
        )
        self.get_many = Statement(
            f"get_{res.plural}",
            self.select.where(mine, _in(table.c.external_id, "sqlite", "externals")),
            self.select.where(mine, _in(table.c.external_id, "postgresql", "externals")),
        )
        keys = select(table.c.external_id, table.c.pk)
        on_sqlite = keys.where(mine, _in(table.c.external_id, "sqlite", "externals"))
        on_postgres = keys.where(mine, _in(table.c.external_id, "postgresql", "externals"))
        # PostgreSQL: what a write names stays until it commits (a row it links to or under
        # cannot be deleted meanwhile: FOR SHARE), and what it deletes is its own (FOR UPDATE).
        self.keys = Statement(f"{res.noun}_keys", on_sqlite, on_postgres.with_for_update(read=True))
        self.keys_to_delete = Statement(
            f"{res.noun}_keys_to_delete", on_sqlite, on_postgres.with_for_update()
        )
        values: dict[str, Any] = {a.name: bindparam(f"v_{a.name}") for a in self.attributes}
        values |= {
            "account_id": bindparam("account"),
            "external_id": bindparam("external"),
            "created": bindparam("now"),
            "updated": bindparam("now"),
        }
        if self.parent is not None:
            values[self.parent_column] = bindparam("parent")
        # PostgreSQL: the batch's rows at once, from ``rows`` (see ``rows_table``)
        per_row = {"external_id": "external"} | {a.name: f"v_{a.name}" for a in self.attributes}
        if self.parent is not None:
            per_row[self.parent_column] = "parent"
        given = rows_table(
            "given", "rows", {param: table.c[name].type for name, param in per_row.items()}
        )
        from_rows = {name: given.c[param] for name, param in per_row.items()}
        from_rows |= {name: values[name] for name in ("account_id", "created", "updated")}
        self.insert = Statement(
            f"insert_{res.plural}",
            insert(table).values(values),
            pg_insert(table)
            .from_select(list(from_rows), select(*from_rows.values()))
            .on_conflict_do_nothing(index_elements=["account_id", "external_id"])
            .returning(table.c.external_id),
        )
        self.delete = Statement(
            f"delete_{res.plural}",
            delete(table).where(mine, _in(table.c.pk, "sqlite", "pks")),
            delete(table).where(mine, _in(table.c.pk, "postgresql", "pks")),
        )

    @lru_cache(maxsize=256)  # noqa: B019 - one per shape, for the life of the process
    def update(self, columns: tuple[str, ...]) -> Statement:
        """``UPDATE … SET`` these columns of a run of resources. SQLite: of one, run once per
        resource (``executemany``). PostgreSQL: of them all at once, from ``rows`` (``rows_table``;
        no external id twice), returning the external id of each found."""
        table = self.table
        values: dict[str, Any] = {name: bindparam(f"v_{name}") for name in columns}
        values["updated"] = bindparam("now")
        values["update_count"] = table.c.update_count + literal_column("1")
        one = update(table).where(self.mine, table.c.external_id == bindparam("external"))
        per_row = {"external": table.c.external_id.type}
        given = rows_table(
            "given", "rows", per_row | {f"v_{name}": table.c[name].type for name in columns}
        )
        every = (
            update(table)
            .where(self.mine, table.c.external_id == given.c.external)
            .values(values | {name: given.c[f"v_{name}"] for name in columns})
            .returning(table.c.external_id)
        )
        return Statement(f"update_{self.res.plural}", one.values(values), every)

    def record(self, row: Row, sqlite: bool) -> Record:
        """A row as a record (see the module's docstring)."""
        found = dict(zip(self.names, row, strict=True))
        for name in self.json:
            if found[name] is not None:
                found[name] = orjson.Fragment(found[name])
        if sqlite:  # SQLite stores a boolean as 0 or 1
            for name in self.booleans:
                if found[name] is not None:
                    found[name] = bool(found[name])
        return found

    def columns(self, attributes: dict[str, Any], defaults: bool) -> dict[str, Any]:
        """The parameters of the attribute columns; with ``defaults``, every column (a create),
        else only those ``attributes`` names (an update)."""
        if not defaults:  # an update: only what it sets (the worker's hot loop)
            stored = self.stored
            return {
                stored[name][0]: _column_value(stored[name][1], value)
                for name, value in attributes.items()
                if name in stored
            }
        values: dict[str, Any] = {}
        for attribute in self.attributes:
            name = attribute.name
            if name in attributes:
                value = attributes[name]
            elif defaults:
                value = None
            else:
                continue
            if value is None and defaults:
                value = attribute.default
            values[f"v_{name}"] = _column_value(attribute, value)
        return values


async def _written(
    conn: Conn, statement: Statement, account: AccountId, now: int, rows: list[dict[str, Any]]
) -> set[str]:
    """PostgreSQL: run a statement over a batch's ``rows`` at once (``rows_table``); the external
    ids of the resources it wrote."""
    params = {"account": account, "now": now, "rows": rows_json(rows)}
    return {row[0] for row in await conn.all(statement, params)}


def _column_value(attribute: Attribute, value: Any) -> Any:
    if value is None:
        return None
    if attribute.kind in JSON_KINDS:
        # msgspec, not orjson: JSON allows integers beyond 64 bits and so do we
        return _ENCODE(value).decode()
    if attribute.kind == "number":
        return float(value)  # SQLite cannot bind an integer beyond 64 bits, even to REAL
    return value


@cache
def shape(type_: str) -> _Shape:
    return _Shape(resource(type_))


# ---- reads -------------------------------------------------------------------------------------


async def get(conn: Conn, res: Resource, account: AccountId, external: str) -> Record | None:
    found = shape(res.type)
    row = await conn.one(found.get, {"account": account, "external": external})
    return None if row is None else found.record(row, not conn.postgres)


async def get_many(
    conn: Conn, res: Resource, account: AccountId, externals: Iterable[str]
) -> list[Record]:
    """The resources among ``externals`` that exist, in no particular order."""
    unique = sorted(set(externals))
    if not unique:
        return []
    found = shape(res.type)
    params = {"account": account, "externals": conn.array(unique)}
    return [found.record(row, not conn.postgres) for row in await conn.all(found.get_many, params)]


async def keys(
    conn: Conn,
    res: Resource,
    account: AccountId,
    externals: Iterable[str],
    *,
    to_delete: bool = False,
) -> dict[str, int]:
    """The keys of the resources among ``externals`` that exist (on PostgreSQL locked until the
    transaction ends: see ``_Shape.keys``)."""
    unique = sorted(set(externals))
    if not unique:
        return {}
    found = shape(res.type)
    statement = found.keys_to_delete if to_delete else found.keys
    params = {"account": account, "externals": conn.array(unique)}
    return dict(await conn.all(statement, params))


async def list_records(
    conn: Conn,
    res: Resource,
    account: AccountId,
    conditions: Sequence[Condition],
    page: PageRequest,
    scope: Scope | None = None,
) -> Page[Record]:
    found = shape(res.type)
    params: dict[str, Any] = {"account": account, **pages.params(page)}
    if scope is not None:
        params["scope"] = scope.owner_pk
    tests: list[tuple[str, str]] = []  # (field, how) per condition: the query's shape
    for index, condition in enumerate(conditions):
        how, value = _condition_value(res, condition)
        tests.append((condition.field, how))
        if how != "never":
            params[f"f{index}"] = conn.array(value) if how == "list" else value
    key: Hashable = (res.type, scope and scope.relation.name, tuple(tests), pages.shape(page))

    def build() -> Select[Any]:
        query = found.select.where(found.mine)
        if scope is not None:
            query = query.where(_scope_clause(found, scope))
        for index, (field, how) in enumerate(tests):
            query = query.where(_filter_clause(found, field, how, f"f{index}", conn.dialect))
        return pages.paged(query, found.table.c.pk, page)

    rows = await conn.query(composed(key, conn.dialect, build), params)
    records = [found.record(row, not conn.postgres) for row in rows]
    return pages.page_of(records, page, _pk)


def _pk(record: Record) -> int:
    return int(record["pk"])


def _condition_value(res: Resource, condition: Condition) -> tuple[str, Any]:
    """How a condition is tested (``list``, ``value``, ``never``) and the value it binds."""
    target = next(f.target for f in res.filters if f.name == condition.field)
    if target == "id":
        return "list", _external_ids(condition.value)
    if target in res.by_name:
        value = condition.value
        if isinstance(value, str) and not _storable(value):
            return "never", None
        return "value", value
    ids = _external_ids(condition.value)
    return ("value", ids[0]) if ids else ("never", None)


def _filter_clause(
    found: _Shape, field: str, how: str, name: str, dialect: str
) -> ColumnElement[bool]:
    if how == "never":
        return false()
    res, table = found.res, found.table
    spec = next(f for f in res.filters if f.name == field)
    if spec.target == "id":
        return _in(table.c.external_id, dialect, name)
    if spec.target in res.by_name:
        column = table.c[spec.target]
        if spec.operator == "contains":
            # exact, case-sensitive substring on both databases (SQLite's LIKE ignores case)
            position = func.instr if dialect == "sqlite" else func.strpos
            return position(column, bindparam(name)) > 0
        return column == bindparam(name)
    relation = res.relation(spec.target)
    related = TABLES[relation.target]
    if relation.storage == "parent":
        return related.c.external_id == bindparam(name)
    # many-to-many: through the links, to the related resource of that id (of this account)
    mine, theirs = _LINK_COLUMN[res.type], _LINK_COLUMN[relation.target]
    linked = (
        select(item_categories.c[mine])
        .join(related, related.c.pk == item_categories.c[theirs])
        .where(related.c.account_id == bindparam("account"))
        .where(related.c.external_id == bindparam(name))
    )
    return table.c.pk.in_(linked)


def _scope_clause(found: _Shape, scope: Scope) -> ColumnElement[bool]:
    table = found.table
    if scope.relation.storage == "children":  # an item's variants
        return table.c[found.parent_column] == bindparam("scope")
    mine, theirs = _LINK_COLUMN[found.res.type], _LINK_COLUMN[scope.owner.type]
    linked = select(item_categories.c[mine]).where(item_categories.c[theirs] == bindparam("scope"))
    return table.c.pk.in_(linked)


def _external_ids(value: object) -> list[str]:
    """The external ids of the compound ids in a filter value; others can match nothing."""
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
    NUL in a query parameter fails on PostgreSQL and cuts patterns short on SQLite."""
    return "\x00" not in text


_CHILDREN: dict[tuple[str, str], Statement] = {}


async def children(
    conn: Conn,
    owner: Resource,
    relation: Relation,
    account: AccountId,
    owner_pks: list[int],
    limit: int,
) -> list[Record]:
    """The related resources of several owners at once, the ``limit`` oldest (``include``)."""
    res = resource(relation.target)
    found = shape(res.type)
    if not owner_pks:
        return []
    key = (owner.type, relation.name)
    statement = _CHILDREN.get(key)
    if statement is None:

        def clause(dialect: str) -> Any:
            if relation.storage == "children":
                match = _in(found.table.c[found.parent_column], dialect, "owners")
            else:
                mine, theirs = _LINK_COLUMN[res.type], _LINK_COLUMN[owner.type]
                linked = select(item_categories.c[mine]).where(
                    _in(item_categories.c[theirs], dialect, "owners")
                )
                match = found.table.c.pk.in_(linked)
            query = found.select.where(found.mine, match)
            return query.order_by(found.table.c.pk).limit(bindparam("limit"))

        statement = _CHILDREN[key] = Statement(
            f"{owner.noun}_{relation.name}", clause("sqlite"), clause("postgresql")
        )
    params = {"account": account, "owners": conn.array(owner_pks), "limit": limit}
    return [found.record(row, not conn.postgres) for row in await conn.all(statement, params)]


# ---- the appliers: one batch of entries each ---------------------------------------------------


async def create_many(
    conn: Conn, res: Resource, account: AccountId, entries: Sequence[PayloadItem], now: int
) -> list[Outcome]:
    """Insert each entry unless its external id exists (or came earlier in the batch), or a
    related resource it names does not exist."""
    found = shape(res.type)
    related = await _related_keys(conn, res, account, [links for _, _, links in entries])
    existing = set() if conn.postgres else set(await keys(conn, res, account, _firsts(entries)))
    outcomes: list[Outcome] = []
    rows: list[dict[str, Any]] = []
    for external, attributes, links in entries:
        refusal = _related_refusal(res, links, related)
        if refusal is None and external in existing:
            refusal = EXISTS
        outcomes.append(refusal)
        if refusal is not None:
            continue
        existing.add(external)
        row = found.columns(attributes, defaults=True)
        row |= {"account": account, "external": external, "now": now}
        if found.parent is not None:
            row["parent"] = related[found.parent.target][links[found.parent.name][0]]
        rows.append(row)
    if not conn.postgres:
        await conn.many(found.insert, rows)
    elif rows:  # in order, no external id twice (``existing``)
        inserted = await _written(conn, found.insert, account, now, rows)
        outcomes = [
            EXISTS if o is None and entry[0] not in inserted else o
            for entry, o in zip(entries, outcomes, strict=True)
        ]
    applied = [e for e, o in zip(entries, outcomes, strict=True) if o is None]
    await _link(conn, res, account, applied, related, replace=False)
    return outcomes


async def update_many(
    conn: Conn, res: Resource, account: AccountId, entries: Sequence[PayloadItem], now: int
) -> list[Outcome]:
    """Apply partial updates in order: each entry's attributes, and the complete new set of
    each relation it names. Consecutive entries setting the same attributes, none of them
    twice, share one statement (``_Shape.update``).

    PostgreSQL: the UPDATE returns the external id of each resource it found, so nothing can
    slip between a check and the write. SQLite: the statements count the rows they changed,
    and only when some entry changed none does a query find which are missing (one writer at
    a time: none can appear or vanish meanwhile, and a missing one's update changed nothing).
    """
    found = shape(res.type)
    related = await _related_keys(conn, res, account, [links for _, _, links in entries])
    outcomes: list[Outcome] = []
    run: list[dict[str, Any]] = []
    run_columns: tuple[str, ...] = ()
    pending: list[int] = []  # PostgreSQL: the entries of ``run``, whose outcome it tells
    in_run: set[str] = set()  # their external ids (PostgreSQL updates them all at once)
    changed = 0  # SQLite: the rows the statements changed

    async def flush() -> None:
        nonlocal changed
        statement = found.update(run_columns)
        if conn.postgres:
            hits = await _written(conn, statement, account, now, run)
            for index in pending:
                outcomes[index] = None if entries[index][0] in hits else MISSING
        else:
            changed += await conn.many(statement, run)
        run.clear()
        pending.clear()
        in_run.clear()

    for external, attributes, links in entries:
        refusal = _related_refusal(res, links, related)
        outcomes.append(refusal)
        if refusal is not None:
            continue
        columns = tuple(name for name in attributes if name in found.stored)
        if run and (columns != run_columns or external in in_run):
            await flush()
        run_columns = columns
        run.append(
            found.columns(attributes, False)
            | {"account": account, "external": external, "now": now}
        )
        in_run.add(external)
        pending.append(len(outcomes) - 1)
    if run:
        await flush()
    if not conn.postgres:  # every entry not refused was written, and a missing one changed none
        written = [index for index, outcome in enumerate(outcomes) if outcome is None]
        if changed < len(written):
            present = await keys(conn, res, account, [entries[index][0] for index in written])
            for index in written:
                if entries[index][0] not in present:
                    outcomes[index] = MISSING
    applied = [e for e, o in zip(entries, outcomes, strict=True) if o is None]
    await _link(conn, res, account, applied, related, replace=True)
    return outcomes


async def delete_many(
    conn: Conn, res: Resource, account: AccountId, externals: Sequence[str]
) -> list[Outcome]:
    """Delete each resource that exists, with what depends on it: an item's variants, and the
    links of items and categories."""
    found = shape(res.type)
    present = await keys(conn, res, account, externals, to_delete=True)
    pks = sorted(set(present.values()))
    if pks:
        await _delete_dependents(conn, res, account, pks)
        await conn.run(found.delete, {"account": account, "pks": conn.array(pks)})
    outcomes: list[Outcome] = []
    for external in externals:
        outcomes.append(None if present.pop(external, None) is not None else MISSING)
    return outcomes


_UNLINK = {
    side: Statement(
        f"unlink_{side}",
        delete(item_categories).where(
            item_categories.c.account_id == bindparam("account"),
            _in(item_categories.c[column], "sqlite", "pks"),
        ),
        delete(item_categories).where(
            item_categories.c.account_id == bindparam("account"),
            _in(item_categories.c[column], "postgresql", "pks"),
        ),
    )
    for side, column in _LINK_COLUMN.items()
}
_LINK = Statement(
    "link",
    insert(item_categories)
    .values(
        account_id=bindparam("account"),
        item_pk=bindparam("item_pk"),
        category_pk=bindparam("category_pk"),
    )
    .prefix_with("OR IGNORE", dialect="sqlite"),
    pg_insert(item_categories)
    .values(
        account_id=bindparam("account"),
        item_pk=bindparam("item_pk"),
        category_pk=bindparam("category_pk"),
    )
    .on_conflict_do_nothing(),
)
_UNLINK_ONE = Statement(
    "unlink_one",
    delete(item_categories).where(
        item_categories.c.account_id == bindparam("account"),
        item_categories.c.item_pk == bindparam("item_pk"),
        item_categories.c.category_pk == bindparam("category_pk"),
    ),
)


async def _delete_dependents(conn: Conn, res: Resource, account: AccountId, pks: list[int]) -> None:
    params = {"account": account, "pks": conn.array(pks)}
    if res.type in _LINK_COLUMN:
        await conn.run(_UNLINK[res.type], params)
    for relation in res.relations:
        if relation.storage == "children":
            await conn.run(_delete_owned(res.type, relation.name), params)


@cache
def _delete_owned(owner: str, relation: str) -> Statement:
    """``DELETE`` the children (an item's variants) of the owners ``pks``."""
    child = shape(resource(owner).relation(relation).target)

    def clause(dialect: str) -> Any:
        owned = _in(child.table.c[child.parent_column], dialect, "pks")
        return delete(child.table).where(child.mine, owned)

    return Statement(f"delete_{owner}_{relation}", clause("sqlite"), clause("postgresql"))


def _firsts(entries: Sequence[PayloadItem]) -> list[str]:
    return [external for external, _, _ in entries]


async def _related_keys(
    conn: Conn, res: Resource, account: AccountId, links: Sequence[dict[str, list[str]]]
) -> dict[str, dict[str, int]]:
    """The keys of every related resource the entries name, by resource type."""
    wanted: dict[str, set[str]] = {}
    for entry_links in links:
        for name, ids in entry_links.items():
            wanted.setdefault(res.relation(name).target, set()).update(ids)
    return {
        target: await keys(conn, resource(target), account, ids) for target, ids in wanted.items()
    }


def _related_refusal(
    res: Resource, links: dict[str, list[str]], related: dict[str, dict[str, int]]
) -> Outcome:
    for name, ids in links.items():
        known = related[res.relation(name).target]
        for index, external in enumerate(ids):
            if external not in known:
                return Refusal("related", name, index, external)
    return None


async def _link(
    conn: Conn,
    res: Resource,
    account: AccountId,
    applied: Sequence[PayloadItem],
    related: dict[str, dict[str, int]],
    *,
    replace: bool,
) -> None:
    """Write the many-to-many links the applied entries name (replacing, on update, the whole
    set of each relation named)."""
    named = [(e, links) for e, _, links in applied if any(n in links for n in _many(res))]
    if not named:
        return
    own = await keys(conn, res, account, [external for external, _ in named])
    for relation in _many(res):
        with_links = [(own[e], links[relation]) for e, links in named if relation in links]
        if replace and with_links:
            pks = [pk for pk, _ in with_links]
            await conn.run(_UNLINK[res.type], {"account": account, "pks": conn.array(pks)})
        target = related.get(res.relation(relation).target, {})
        rows = [
            _link_row(res, account, pk, target[external])
            for pk, ids in with_links
            for external in ids
        ]
        await conn.many(_LINK, rows)


def _many(res: Resource) -> list[str]:
    return [r.name for r in res.relations if r.storage == "links"]


def _link_row(res: Resource, account: AccountId, own: int, other: int) -> dict[str, Any]:
    if res.type == ITEM.type:
        return {"account": account, "item_pk": own, "category_pk": other}
    return {"account": account, "item_pk": other, "category_pk": own}


async def change_links(
    conn: Conn,
    res: Resource,
    relation: Relation,
    account: AccountId,
    owner_pk: int,
    related_pks: Sequence[int],
    how: Literal["add", "replace", "remove"],
) -> None:
    """A relationship request: add, replace or remove links of one resource."""
    if how == "replace":
        await conn.run(_UNLINK[res.type], {"account": account, "pks": conn.array([owner_pk])})
    rows = [_link_row(res, account, owner_pk, pk) for pk in related_pks]
    await conn.many(_UNLINK_ONE if how == "remove" else _LINK, rows)


# ---- the store: each operation one unit of work -------------------------------------------------

Action = Literal["create", "update", "delete"]


async def apply(
    conn: Conn,
    action: Action,
    res: Resource,
    account: AccountId,
    entries: Sequence[PayloadItem],
    now: int,
) -> list[Outcome]:
    """Apply a batch of entries of one kind of change (the job worker's and a single
    request's way in)."""
    if action == "create":
        return await create_many(conn, res, account, entries, now)
    if action == "update":
        return await update_many(conn, res, account, entries, now)
    return await delete_many(conn, res, account, _firsts(entries))


class CatalogStore:
    """The catalog, as the services see it: every method one read or one write."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, res: Resource, account: AccountId, external: str) -> Record | None:
        return await self.db.read(lambda conn: get(conn, res, account, external))

    async def get_many(
        self, res: Resource, account: AccountId, externals: Sequence[str]
    ) -> list[Record]:
        return await self.db.read(lambda conn: get_many(conn, res, account, externals))

    async def list_records(
        self,
        res: Resource,
        account: AccountId,
        conditions: Sequence[Condition],
        page: PageRequest,
        owner: tuple[Resource, str, str] | None = None,
    ) -> Page[Record] | None:
        """A page of the resources; with ``owner`` (its resource, the relation, its external
        id), of those it relates to, or None when it does not exist."""

        async def unit(conn: Conn) -> Page[Record] | None:
            scope = None
            if owner is not None:
                owner_res, relation, external = owner
                found = await get(conn, owner_res, account, external)
                if found is None:
                    return None
                scope = Scope(owner_res, owner_res.relation(relation), found["pk"])
            return await list_records(conn, res, account, conditions, page, scope)

        return await self.db.read(unit)

    async def related(
        self, owner: Resource, relation: str, account: AccountId, owner_pks: list[int], limit: int
    ) -> list[Record]:
        spec = owner.relation(relation)
        return await self.db.read(
            lambda conn: children(conn, owner, spec, account, owner_pks, limit)
        )

    async def write_one(
        self, action: Action, res: Resource, account: AccountId, entry: PayloadItem
    ) -> tuple[Outcome, Record | None]:
        """Apply one entry; its outcome and, when applied (and not deleted), the record."""

        async def unit(conn: Conn) -> tuple[Outcome, Record | None]:
            outcome = (await apply(conn, action, res, account, [entry], now_us()))[0]
            if outcome is not None or action == "delete":
                return outcome, None
            return outcome, await get(conn, res, account, entry[0])

        return await self.db.write(unit)

    async def change_links(
        self,
        res: Resource,
        relation: str,
        account: AccountId,
        external: str,
        related: Sequence[str],
        how: Literal["add", "replace", "remove"],
    ) -> Outcome:
        """Add, replace or remove links of one resource: ``MISSING`` when it does not exist, a
        ``related`` refusal when one of ``related`` does not."""

        async def unit(conn: Conn) -> Outcome:
            spec = res.relation(relation)
            owner = await keys(conn, res, account, [external])
            if not owner:
                return MISSING
            known = await keys(conn, resource(spec.target), account, related)
            for index, other in enumerate(related):
                if other not in known:
                    return Refusal("related", relation, index, other)
            pks = [known[other] for other in dict.fromkeys(related)]
            await change_links(conn, res, spec, account, owner[external], pks, how)
            return None

        return await self.db.write(unit)
