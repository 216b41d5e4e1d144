"""Keyset pagination, shared by every list."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, Select

from backstock.domain.pagination import Cursor, Page, PageRequest

T = TypeVar("T")


def paginate(
    conn: Connection,
    query: Select[Any],
    key: Any,
    page: PageRequest,
    decode: Callable[[Any], T],
    position: Callable[[T], int],
) -> Page[T]:
    """Rows of ``query`` ordered on ``key`` (an increasing column) from the page's cursor;
    one row more than asked is fetched to know whether a page follows."""
    cursor = page.cursor
    backwards = cursor is not None and cursor.direction == "before"
    if cursor is not None:
        after = cursor.direction == "after"
        query = query.where(
            key < cursor.position if after == page.descending else key > cursor.position
        )
    descending = page.descending != backwards
    query = query.order_by(key.desc() if descending else key.asc()).limit(page.size + 1)
    rows = [decode(row) for row in conn.execute(query)]
    more = len(rows) > page.size
    rows = rows[: page.size]
    if backwards:
        rows.reverse()
    if not rows:
        return Page(rows, None, None)
    has_next = True if backwards else more
    has_prev = more if backwards else cursor is not None
    return Page(
        rows,
        Cursor("after", position(rows[-1])) if has_next else None,
        Cursor("before", position(rows[0])) if has_prev else None,
    )
