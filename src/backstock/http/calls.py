"""What every API operation does around its service call: conventions, auth, scope, and the
hop to a worker thread for the (blocking) database work."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote

from anyio import to_thread
from starlette.requests import Request

from backstock.domain.errors import NotFound
from backstock.domain.ids import ExternalId, InvalidCompoundId, parse_compound_id
from backstock.http import conventions
from backstock.http.jsonapi import Renderer, parse_fields
from backstock.services.accounts import Principal, authenticate
from backstock.services.container import Services

READ = "catalogs:read"
WRITE = "catalogs:write"
T = TypeVar("T")


@dataclass(slots=True)
class Call:
    request: Request
    services: Services
    scope: str
    operation: str
    query: dict[str, str]
    render: Renderer

    async def run(self, operation: Callable[..., T], *args: Any) -> T:
        """Authenticate, check the scope and the rate limit, then run ``operation(who, *args)``.

        On PostgreSQL the blocking database work runs on a worker thread, so one process
        overlaps many requests' round trips. On SQLite a read runs right here on the event
        loop: it takes microseconds, and a thread hop (plus the GIL hand-offs) would cost more
        than it saves; a write goes to a thread, so that its commit's fsync, or a wait for
        another process's lock, never holds up the reads. A read operation shares one
        connection with the key check."""
        authorization = self.authorization
        db = self.services.db

        def work() -> T:
            who = authenticate(db, authorization)
            self.admit(who)
            return operation(who, *args)

        def read_work() -> T:
            with db.read():
                return work()

        if self.scope == READ:
            return read_work() if db.is_sqlite else await to_thread.run_sync(read_work)
        return await to_thread.run_sync(work)

    @property
    def authorization(self) -> str | None:
        return self.request.headers.get("authorization")

    def admit(self, who: Principal) -> None:
        """The scope, then the rate limit: after authentication, before any work."""
        who.require(self.scope)
        self.request.state.limit = self.services.limiter.hit(
            who.account_id, self.operation, self.scope
        )

    async def admit_async(self, who: Principal) -> None:
        """``admit`` from the event loop: counted in memory right here, in Redis on a thread
        (its round trips must not hold up the loop)."""
        if self.services.settings.redis_url and self.services.limiter.enabled:
            await to_thread.run_sync(self.admit, who)
        else:
            self.admit(who)

    async def body(self) -> bytes:
        settings = self.services.settings
        return await conventions.read_body(
            self.request, settings.max_body_bytes, settings.body_timeout_seconds
        )


def begin(
    request: Request,
    operation: str,
    scope: str,
    allowed: tuple[str, ...] = (),
    fields: Mapping[str, frozenset[str]] | None = None,
) -> Call:
    """Check the revision, the Accept header and the query before any work is done."""
    revision = conventions.revision(request)
    conventions.check_accept(request)
    query = dict(request.query_params) if request.scope["query_string"] else {}
    conventions.check_query(query, allowed)
    services: Services = request.app.state.services
    base = services.settings.base_url or _base_url(request)
    sparse = parse_fields(query, fields or {})
    render = Renderer(base, sparse, omit_nulls=revision < conventions.NULLABLE_SINCE)
    return Call(request, services, scope, operation, query, render)


def _base_url(request: Request) -> str:
    scope = request.scope
    host = request.headers.get("host")
    if host is None:
        server = scope.get("server") or ("localhost", 80)
        host = f"{server[0]}:{server[1]}"
    return f"{scope.get('scheme', 'http')}://{host}{scope.get('root_path', '')}"


def path_id(raw: str) -> ExternalId:
    """A compound id from the (still percent-encoded) path segment; 404 if it cannot exist."""
    compound = unquote(raw)
    if "\x00" in compound:  # never stored (PostgreSQL text cannot hold NUL)
        raise NotFound(f"No catalog resource with id {compound!r}")
    try:
        return parse_compound_id(compound)
    except InvalidCompoundId as exc:
        raise NotFound(str(exc)) from exc
