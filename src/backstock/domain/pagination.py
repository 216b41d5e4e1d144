"""Keyset pagination: an opaque cursor names the row to continue after (or before).

A cursor carries a direction and a position (a row's key), the position enciphered with its
account's own key (a 64-bit Feistel permutation over HMAC-SHA256): a cursor reveals nothing of
the table it pages through (how many rows other accounts have written since), and one account's
cursor means nothing to another. Every query that uses one is still filtered by the caller's
account, so a forged cursor can move within one's own rows and nowhere else.
"""

from __future__ import annotations

import base64
import binascii
import hmac
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


_DIRECTIONS: dict[int, Direction] = {ord("a"): "after", ord("b"): "before"}
_ROUNDS = 4


def _round(key: bytes, number: int, half: int) -> int:
    digest = hmac.digest(key, bytes((number,)) + half.to_bytes(4, "big"), "sha256")
    return int.from_bytes(digest[:4], "big")


def _encipher(key: bytes, value: int) -> int:
    left, right = value >> 32, value & 0xFFFFFFFF
    for number in range(_ROUNDS):
        left, right = right, left ^ _round(key, number, right)
    return left << 32 | right


def _decipher(key: bytes, value: int) -> int:
    left, right = value >> 32, value & 0xFFFFFFFF
    for number in reversed(range(_ROUNDS)):
        left, right = right ^ _round(key, number, left), left
    return left << 32 | right


def _invalid() -> InvalidParameter:
    return InvalidParameter("page[cursor]", "The page cursor is not valid")


def encode_cursor(cursor: Cursor, key: bytes) -> str:
    """``key``: the account's cursor key."""
    if not 0 <= cursor.position < 2**64:
        raise _invalid()
    raw = cursor.direction[0].encode() + _encipher(key, cursor.position).to_bytes(8, "big")
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str, key: bytes) -> Cursor:
    """Decode ``page[cursor]``, tolerating what Klaviyo's SDK sends: a leading ``=``, or a
    whole ``links.next`` URL."""
    text = _strip_sdk_quirks(text)
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise _invalid() from None
    if len(raw) != 9 or raw[0] not in _DIRECTIONS:
        raise _invalid()
    position = _decipher(key, int.from_bytes(raw[1:], "big"))
    if position > MAX_POSITION:  # no key is past the largest BIGINT
        raise _invalid()
    return Cursor(_DIRECTIONS[raw[0]], position)


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
