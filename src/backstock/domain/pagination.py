"""Keyset pagination: an opaque cursor names the row to continue after (or before).

A cursor only carries a position; every query that uses one is still filtered by the caller's
account, so a forged cursor can move within one's own rows and nowhere else.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar
from urllib.parse import parse_qs, urlsplit

from backstock.domain.errors import InvalidParameter

Direction = Literal["after", "before"]
T = TypeVar("T")
MAX_PAGE_SIZE = 100
MAX_POSITION = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Cursor:
    direction: Direction
    position: int


@dataclass(frozen=True, slots=True)
class PageRequest:
    size: int = MAX_PAGE_SIZE
    cursor: Cursor | None = None
    descending: bool = False


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    rows: list[T]
    next: Cursor | None
    prev: Cursor | None


def encode_cursor(cursor: Cursor) -> str:
    raw = f"{cursor.direction[0]}{cursor.position}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> Cursor:
    """Decode ``page[cursor]``, tolerating what Klaviyo's SDK sends: a leading ``=``, or a
    whole ``links.next`` URL."""
    text = _strip_sdk_quirks(text)
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
        direction: Direction = {"a": "after", "b": "before"}[raw[0]]  # type: ignore[assignment]
        position = int(raw[1:])
    except (binascii.Error, UnicodeDecodeError, KeyError, IndexError, ValueError):
        raise InvalidParameter("page[cursor]", "The page cursor is not valid") from None
    # Only ASCII digits, and no position past the largest key (it would overflow BIGINT).
    if not (raw[1:].isascii() and raw[1:].isdigit()) or position > MAX_POSITION:
        raise InvalidParameter("page[cursor]", "The page cursor is not valid")
    return Cursor(direction, position)


def _strip_sdk_quirks(text: str) -> str:
    if "page[cursor]" in text or "page%5Bcursor%5D" in text:
        query = urlsplit(text).query if "?" in text else text
        values = parse_qs(query.replace("page%5Bcursor%5D", "page[cursor]")).get("page[cursor]")
        text = values[0] if values else ""
    return text.lstrip("=")


def parse_page_size(text: str | None) -> int:
    if text is None:
        return MAX_PAGE_SIZE
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_PAGE_SIZE:
        raise InvalidParameter(
            "page[size]", f"page[size] must be an integer from 1 to {MAX_PAGE_SIZE}"
        )
    return int(text)
