"""A request as the one request path sees it, and the conventions every operation checks
before doing any work: revision, media types, query parameters, body size and time."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Collection, Mapping, MutableMapping
from datetime import date
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, unquote

from backstock.domain.errors import (
    BackstockError,
    BadRequest,
    HeadersTooLarge,
    InvalidParameter,
    NotAcceptable,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    Unavailable,
    UnsupportedMediaType,
    UriTooLong,
)
from backstock.domain.ids import ExternalId, InvalidCompoundId, parse_compound_id

log = logging.getLogger("backstock.http")

Scope = MutableMapping[str, Any]

OLDEST_REVISION = date(2023, 2, 22)
NEWEST_REVISION = date(2026, 10, 15)
NULLABLE_SINCE = date(2024, 2, 15)
"""Before this revision Klaviyo's schemas declared nothing nullable: omit nulls for them."""

MEDIA_TYPES = ("application/json", "application/vnd.api+json")
_ACCEPTABLE = ("*/*", "application/*", *MEDIA_TYPES)
_REVISION = re.compile(r"(\d{4})-(\d{2})-(\d{2})(\.[A-Za-z0-9_-]+)?")


MAX_TARGET_BYTES = 8 * 1024
"""A longer path and query is a 414 (the SDK's longest, a filter of 100 ids, is under 6 KB)."""
MAX_HEADER_BYTES = 16 * 1024
"""Longer headers in all are a 431."""


class BodyGate:
    """A cap on the bytes of request bodies one process holds at once: beyond it a request is
    refused with 503 before its body is read (a flood of big uploads cannot exhaust memory).
    One event loop per process: no lock."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> None:
        if self.held + size > self.limit:
            raise Unavailable(
                "Too many request bodies are arriving at once; retry later.",
                retry_after=1,
                kind="bodies",
            )
        self.held += size

    def give(self, size: int) -> None:
        self.held -= size


class Request:
    """The parts of an ASGI HTTP request the service reads, parsed once."""

    __slots__ = (
        "_query", "body_pending", "gate", "headers", "method", "path", "receive", "scope",
    )  # fmt: skip

    def __init__(self, scope: Scope, receive: Any, gate: BodyGate | None = None) -> None:
        self.scope = scope
        self.receive = receive
        self.gate = gate
        self.method: str = scope["method"]
        # The raw path (an id's %2F is not a separator), without one trailing slash (both
        # spellings of every path are served directly).
        raw = scope.get("raw_path")
        path: str = raw.decode("latin-1").partition("?")[0] if raw else scope["path"]
        if len(path) > 1 and path.endswith("/"):
            path = path[:-1]
        self.path = path
        self.headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
        }
        self._query: dict[str, str] | None = None
        declared = self.headers.get("content-length")
        self.body_pending = declared not in (None, "0") or "transfer-encoding" in self.headers
        """A body was announced and not read yet: the connection is closed after the answer
        rather than read on (a request refused before its body, e.g. without a key)."""

    def check_size(self) -> None:
        """The request line and headers are within bounds (the server's own, larger limits
        refuse without a JSON:API body: see docs/security.md)."""
        raw = self.scope.get("raw_path") or b""
        if len(raw) + len(self.scope.get("query_string", b"")) > MAX_TARGET_BYTES:
            raise UriTooLong(f"The path and query are longer than {MAX_TARGET_BYTES} bytes.")
        size = sum(len(k) + len(v) for k, v in self.scope["headers"])
        if size > MAX_HEADER_BYTES:
            raise HeadersTooLarge(f"The headers are larger than {MAX_HEADER_BYTES} bytes in all.")

    @property
    def query(self) -> dict[str, str]:
        if self._query is None:
            raw: bytes = self.scope.get("query_string", b"")
            self._query = (
                dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True)) if raw else {}
            )
        return self._query

    @property
    def client(self) -> str:
        """The client's address (a proxy's, behind one)."""
        client = self.scope.get("client")
        return str(client[0]) if client else "unknown"

    @property
    def base_url(self) -> str:
        host = self.headers.get("host")
        if host is None:
            server = self.scope.get("server") or ("localhost", 80)
            host = f"{server[0]}:{server[1]}"
        scheme = self.scope.get("scheme", "http")
        return f"{scheme}://{host}{self.scope.get('root_path', '')}"

    async def body(self, limit: int, timeout: float) -> bytes:
        """The body, refusing (413) as soon as it is known to pass ``limit`` bytes, and (408)
        once it has taken more than ``timeout`` seconds: a slow sender holds no more than that.
        A client that goes away mid-body gets a 400 (nobody reads it) and one line of log."""
        content_type = self.headers.get("content-type")
        if content_type is not None:
            kind = content_type.split(";")[0].strip().lower()
            if kind not in MEDIA_TYPES:
                raise UnsupportedMediaType(
                    f"Content-Type '{kind[:80]}' is not supported; send "
                    "application/vnd.api+json or application/json."
                )
        declared = self.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        held = int(declared) if declared is not None and declared.isdigit() else limit
        if self.gate is not None:
            self.gate.take(held)
        try:
            return await self._read(limit, timeout)
        finally:
            if self.gate is not None:
                self.gate.give(held)

    async def _read(self, limit: int, timeout: float) -> bytes:
        chunks = []
        size = 0
        try:
            async with asyncio.timeout(timeout):
                while True:
                    message = await self.receive()
                    if message["type"] == "http.disconnect":
                        log.info(
                            "%s %s: the client went away before its body", self.method, self.path
                        )
                        raise BadRequest("The request body was cut short.")
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        raise _too_large(limit)
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise RequestTimeout(
                f"The request body did not arrive within {timeout:g} seconds.",
                headers={"Connection": "close"},
            ) from None
        self.body_pending = False
        return b"".join(chunks)


def _too_large(limit: int) -> BackstockError:
    return PayloadTooLarge(f"The request body is larger than {limit // (1024 * 1024)} MB.")


def revision(headers: Mapping[str, str]) -> date:
    value = headers.get("revision")
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
            "revision", f"'{value[:40]}' is not a revision; use the format YYYY-MM-DD[.suffix]."
        )
    if not OLDEST_REVISION <= day <= NEWEST_REVISION:
        raise InvalidParameter(
            "revision",
            f"Revision {value} is not supported; use {OLDEST_REVISION} through {NEWEST_REVISION}.",
        )
    return day


def check_accept(headers: Mapping[str, str], media_type: str | None = None) -> None:
    """``Accept`` allows JSON (or, given, the operation's own ``media_type``)."""
    accept = headers.get("accept")
    if accept and not _acceptable(accept, media_type):
        raise NotAcceptable()


@lru_cache(maxsize=256)
def _acceptable(accept: str, media_type: str | None) -> bool:
    types = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    return any(kind in _ACCEPTABLE or kind == media_type for kind in types)


def check_query(query: Mapping[str, str], allowed: Collection[str]) -> None:
    for name in query:
        if name not in allowed:
            raise InvalidParameter(name, f"Unknown query parameter '{name[:80]}'.")


def flag(query: Mapping[str, str], name: str) -> bool:
    """A ``true``/``false`` query parameter (absent: false)."""
    value = query.get(name)
    if value is None or value == "false":
        return False
    if value == "true":
        return True
    raise InvalidParameter(name, f"{name} must be 'true' or 'false'.")


def include(query: Mapping[str, str], allowed: str | None) -> bool:
    """Whether ``include`` names the one relationship this operation can include."""
    text = query.get("include")
    if text is None:
        return False
    wanted = frozenset(part.strip() for part in text.split(","))
    if allowed is None or wanted != {allowed}:
        unknown = ", ".join(sorted(part[:40] for part in wanted - {allowed})[:10])
        raise InvalidParameter(
            "include", f"Cannot include {unknown}; allowed: {allowed or 'nothing'}."
        )
    return True


def path_id(raw: str) -> ExternalId:
    """A compound id from the (still percent-encoded) path segment; 404 if it cannot exist."""
    compound = unquote(raw)
    shown = compound if len(compound) <= 120 else compound[:120] + "…"
    if "\x00" in compound:  # never stored (PostgreSQL text cannot hold NUL)
        raise NotFound(f"No catalog resource with id {shown!r}")
    try:
        return parse_compound_id(compound)
    except InvalidCompoundId as exc:
        raise NotFound(str(exc)[:200]) from exc
