"""Keyset pagination, shared by every list: the page's clauses on a composed query, its
parameters, and the page made of the rows."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from sqlalchemy import Select, bindparam

from backstock.domain.pagination import Cursor, Page, PageRequest

T = TypeVar("T")


def paged(query: Select[Any], key: Any, page: PageRequest) -> Select[Any]:
    """``query`` ordered on ``key`` (an increasing column) from the page's cursor; one row more
    than asked is fetched to know whether a page follows."""
    cursor = page.cursor
    if cursor is not None:
        after = cursor.direction == "after"
        position: Any = bindparam("cursor")
        query = query.where(key < position if after == page.descending else key > position)
    descending = page.descending != _backwards(page)
    return query.order_by(key.desc() if descending else key.asc()).limit(bindparam("limit"))


def shape(page: PageRequest) -> Hashable:
    """What ``paged`` varies on (a composed query's cache key)."""
    return (None if page.cursor is None else page.cursor.direction, page.descending)


def params(page: PageRequest) -> dict[str, Any]:
    values: dict[str, Any] = {"limit": page.size + 1}
    if page.cursor is not None:
        values["cursor"] = page.cursor.position
    return values


def page_of(rows: list[T], page: PageRequest, position: Callable[[T], int]) -> Page[T]:
    backwards = _backwards(page)
    more = len(rows) > page.size
    rows = rows[: page.size]
    if backwards:
        rows.reverse()
    if not rows:
        return Page(rows, None, None)
    has_next = True if backwards else more
    has_prev = more if backwards else page.cursor is not None
    return Page(
        rows,
        Cursor("after", position(rows[-1])) if has_next else None,
        Cursor("before", position(rows[0])) if has_prev else None,
    )


def _backwards(page: PageRequest) -> bool:
    return page.cursor is not None and page.cursor.direction == "before"
