"""Request conventions checked before any work: revision, media types, body size, query."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Collection, Mapping
from datetime import date
from functools import lru_cache

from starlette.requests import Request

from backstock.domain.errors import (
    BackstockError,
    InvalidParameter,
    NotAcceptable,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)

OLDEST_REVISION = date(2023, 2, 22)
NEWEST_REVISION = date(2026, 10, 15)
NULLABLE_SINCE = date(2024, 2, 15)
"""Before this revision Klaviyo's schemas declared nothing nullable: omit nulls for them."""

_REVISION = re.compile(r"(\d{4})-(\d{2})-(\d{2})(\.[A-Za-z0-9_-]+)?")
_MEDIA_TYPES = ("application/json", "application/vnd.api+json")
_ACCEPTABLE = ("*/*", "application/*", *_MEDIA_TYPES)


def revision(request: Request) -> date:
    value = request.headers.get("revision")
    if value is None:
        raise InvalidParameter("revision", "The 'revision' header is required (YYYY-MM-DD).")
    return _revision(value)


@lru_cache(maxsize=256)
def _revision(value: str) -> date:
    """Clients send one or two values over and over: each good one is parsed once."""
    match = _REVISION.fullmatch(value.strip())
    try:
        day = date(int(match[1]), int(match[2]), int(match[3])) if match else None
    except ValueError:
        day = None
    if day is None:
        raise InvalidParameter(
            "revision", f"'{value}' is not a revision; use the format YYYY-MM-DD[.suffix]."
        )
    if not OLDEST_REVISION <= day <= NEWEST_REVISION:
        raise InvalidParameter(
            "revision",
            f"Revision {value} is not supported; use {OLDEST_REVISION} through {NEWEST_REVISION}.",
        )
    return day


def check_accept(request: Request) -> None:
    accept = request.headers.get("accept")
    if accept and not _acceptable(accept):
        raise NotAcceptable()


@lru_cache(maxsize=256)
def _acceptable(accept: str) -> bool:
    types = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    return any(kind in _ACCEPTABLE for kind in types)


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The body, refusing (413) as soon as it is known to pass ``limit`` bytes, and (408) once
    it has taken more than ``timeout`` seconds: a slow sender holds no more than that."""
    content_type = request.headers.get("content-type")
    if content_type is not None:
        kind = content_type.split(";")[0].strip().lower()
        if kind not in _MEDIA_TYPES:
            raise UnsupportedMediaType(
                f"Content-Type '{kind}' is not supported; send application/vnd.api+json."
            )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(
            f"The request body did not arrive within {timeout:g} seconds.",
            headers={"Connection": "close"},
        ) from None
    return b"".join(chunks)


def _too_large(limit: int) -> BackstockError:
    return PayloadTooLarge(f"The request body is larger than {limit // (1024 * 1024)} MB.")


def check_query(query: Mapping[str, str], allowed: Collection[str]) -> None:
    for name in query:
        if name not in allowed:
            raise InvalidParameter(name, f"Unknown query parameter '{name}'.")


def include(query: Mapping[str, str], allowed: Collection[str]) -> frozenset[str]:
    text = query.get("include")
    if text is None:
        return frozenset()
    wanted = frozenset(part.strip() for part in text.split(","))
    unknown = wanted - set(allowed)
    if unknown:
        raise InvalidParameter(
            "include",
            f"Cannot include {', '.join(sorted(unknown))}; allowed: {', '.join(allowed)}.",
        )
    return wanted
