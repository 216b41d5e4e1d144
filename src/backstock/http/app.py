"""The ASGI application: one request path and one error boundary for every operation.

A request is routed on the route table (``http.routes``), then, in this order and before any
of its work: the revision and ``Accept`` headers, the query parameters, the key (from the
headers alone: no byte of the body is read for a request without a valid key), the scope and
the rate limit (an operation with a ``fetch`` checks the key and reads what it addresses in
one statement: a job's poll is one round trip, so a poll refused for its scope or its rate
limit has read its job, a lookup by unique id, and shows nothing of it). Then the operation's
handler reads the body, if it takes one, calls one service function and renders its result.
Any ``BackstockError`` becomes a JSON:API error document; any other exception is logged once
and becomes a 500 without a stack trace.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

from backstock import telemetry
from backstock.domain import keys
from backstock.domain.errors import (
    BackstockError,
    MethodNotAllowed,
    NotAuthenticated,
    NotFound,
    Unavailable,
    UntrustedHost,
)
from backstock.domain.keys import Principal
from backstock.http import openapi, pages, requests
from backstock.http.render import MEDIA_TYPE, Renderer, dumps, error_body, parse_fields
from backstock.http.requests import NULLABLE_SINCE, BodyGate, Request, Scope
from backstock.http.routes import EVENT_STREAM, Call, Operation, Response, document, operations
from backstock.services.container import Services
from backstock.services.limits import LimitState

log = logging.getLogger("backstock.http")


@dataclass(frozen=True, slots=True)
class Public:
    """A route that needs no key: health, this API's description."""

    id: str
    method: str
    path: str
    handler: Callable[[Request, Services], Awaitable[Response]]
    content_type: str = MEDIA_TYPE


Route = Operation | Public


class _Node:
    __slots__ = ("children", "routes", "wildcard")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.wildcard: _Node | None = None
        self.routes: dict[str, Route] = {}


class Router:
    """Routes on path segments: a ``{name}`` segment matches any non-empty segment, taken
    still percent-encoded (so an id's ``%2F`` is not a separator)."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.root = _Node()
        for route in routes:
            node = self.root
            for segment in route.path[1:].split("/"):
                if segment.startswith("{"):
                    node.wildcard = node.wildcard or _Node()
                    node = node.wildcard
                else:
                    node = node.children.setdefault(segment, _Node())
            node.routes[route.method] = route

    def match(self, method: str, path: str) -> tuple[Route, tuple[str, ...]]:
        node: _Node | None = self.root
        params: list[str] = []
        for segment in path[1:].split("/"):
            child = node.children.get(segment) if node else None
            if child is None and node is not None and node.wildcard is not None and segment:
                params.append(segment)
                child = node.wildcard
            node = child
            if node is None:
                break
        if node is None or not node.routes:
            raise NotFound("No such endpoint.")
        route = node.routes.get(method)
        if route is None:
            allowed = ", ".join(sorted(node.routes))
            raise MethodNotAllowed(f"This path allows {allowed}.", headers={"Allow": allowed})
        return route, tuple(params)


class App:
    def __init__(
        self,
        services: Services,
        on_startup: Callable[[], None] | None = None,
        on_shutdown: Callable[[], None] | None = None,
    ) -> None:
        self.services = services
        self.router = Router([*operations(), *_PUBLIC])
        self._on_startup = on_startup
        self._on_shutdown = on_shutdown
        self._count_on_thread = bool(services.settings.redis_url)
        self._gate = BodyGate(services.settings.max_body_bytes_in_flight)
        self._allowed_hosts = services.settings.allowed_host_set
        self._accounts = telemetry.AccountTally(services.settings.metrics_top_accounts)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "websocket":  # no WebSocket here
            await send({"type": "websocket.close", "code": 1008})

    async def _http(self, scope: Scope, receive: Any, send: Any) -> None:
        started = time.perf_counter()
        scope["app"] = self
        request = Request(scope, receive, self._gate)
        rid = _request_id(request.headers.get("x-request-id"))
        telemetry.request_id.set(rid)
        seen = _Seen()
        content_type = MEDIA_TYPE
        try:
            request.check_size()
            self._check_host(request)
            route, params = self.router.match(request.method, request.path)
            seen.route = route
            if isinstance(route, Public):
                content_type = route.content_type
                response = await route.handler(request, self.services)
            else:
                response = await self._operation(route, request, params, seen)
        except BackstockError as exc:
            response = error_response(exc)
            _count_refusal(exc)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            response = error_response(BackstockError())
        if seen.limit is not None:
            response.headers.update(seen.limit.headers())
        if request.body_pending:
            response.headers["Connection"] = "close"
        response.headers["X-Request-Id"] = rid
        if response.stream is None:
            await send_response(send, response, content_type)
            self._observe(request, seen, response.status, started, rid)
        else:  # observed as it starts: its length is the client's business
            self._observe(request, seen, response.status, started, rid)
            await _stream(send, receive, response)

    def _observe(
        self, request: Request, seen: _Seen, status: int, started: float, rid: str
    ) -> None:
        route = seen.route
        operation = route.id if route is not None else "unrouted"
        telemetry.observe_request(operation, status, time.perf_counter() - started)
        account = seen.who.account_id if seen.who is not None else "-"
        if seen.who is not None:
            self._accounts.count(account)
        template = route.path if route is not None else request.path[:200]
        telemetry.log_access(request.method, template, status, started, account, rid)

    def _check_host(self, request: Request) -> None:
        allowed = self._allowed_hosts
        if allowed is not None:
            host = request.headers.get("host", "").lower()
            if host not in allowed and host.rpartition(":")[0] not in allowed:
                raise UntrustedHost(host)

    async def _operation(
        self, op: Operation, request: Request, params: tuple[str, ...], seen: _Seen
    ) -> Response:
        headers = request.headers
        revision = requests.revision(headers)
        requests.check_accept(headers, op.media_type)
        query = request.query
        requests.check_query(query, op.query)
        fields = parse_fields(query, op.fields)
        services = self.services
        limiter = services.limiter
        address = request.client
        limiter.check_failures(address)
        fetched = None
        try:
            key = keys.from_authorization(headers.get("authorization"))
            if op.fetch is None:
                who = await services.accounts.authenticate(key)
            else:
                who, fetched = await op.fetch(services, key, params)
        except NotAuthenticated:
            limiter.count_failure(address)
            raise
        seen.who = who
        who.require(op.scope)
        if limiter.enabled:
            limits = limiter.limits(op.id, op.scope, op.limits)
            # A read costs by what it may return: an include adds up to a page of resources.
            cost = 2 if op.include and "include" in query else 1
            if self._count_on_thread:  # Redis round trips must not hold up the event loop
                state = await asyncio.to_thread(limiter.hit, who.account_id, op.id, limits, cost)
            else:
                state = limiter.hit(who.account_id, op.id, limits, cost)
            seen.limit = state
        base = services.settings.base_url or request.base_url
        render = Renderer(base, fields, revision < NULLABLE_SINCE, who.cursor_key)
        return await op.handler(Call(request, services, who, params, query, render, fetched))

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self._on_startup:
                    self._on_startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._on_shutdown:
                    self._on_shutdown()
                telemetry.flush_requests()  # the last requests' counts, before the loop ends
                await self.services.close_loop()  # its connections belong to this event loop
                await send({"type": "lifespan.shutdown.complete"})
                return


@dataclass(slots=True)
class _Seen:
    """What the request path learned about a request, for its headers, metrics and log."""

    route: Route | None = None
    who: Principal | None = None
    limit: LimitState | None = None


def _request_id(given: str | None) -> str:
    """The client's ``X-Request-Id`` when it is a sane one, else a new one."""
    if given and len(given) <= 128 and given.isascii() and given.isprintable():
        return given
    # 128 random bits, as a UUID4's hex, without its system call (a log's id, not a secret),
    # from a generator of its own: an embedded test server (backstock.testing) must not draw
    # from, nor repeat with, its host's seeded ``random``.
    return f"{_IDS.getrandbits(128):032x}"


_IDS = random.Random()
os.register_at_fork(after_in_child=_IDS.seed)  # forked server processes: ids of their own


def _count_refusal(exc: BackstockError) -> None:
    if isinstance(exc, Unavailable):
        if exc.kind == "bodies":
            telemetry.REFUSALS.labels("bodies_in_flight").inc()
        else:
            telemetry.DATABASE_ERRORS.labels(exc.kind).inc()
    elif exc.status == 429:
        telemetry.REFUSALS.labels(getattr(exc, "reason", exc.code)).inc()


def error_response(exc: BackstockError) -> Response:
    headers = dict(exc.headers)
    if exc.retry_after is not None:
        headers["Retry-After"] = str(int(exc.retry_after))
    return Response(exc.status, error_body(exc), headers)


async def send_response(send: Any, response: Response, content_type: str = MEDIA_TYPE) -> None:
    headers = [(b"content-length", str(len(response.body)).encode())]
    if response.status != 204:
        headers.append((b"content-type", content_type.encode()))
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


async def _stream(send: Any, receive: Any, response: Response) -> None:
    """Send a streamed body chunk by chunk until it ends, the client goes away (its
    ``http.disconnect``), or it fails (logged; the stream just ends)."""
    assert response.stream is not None
    chunks = response.stream
    headers = [(b"content-type", EVENT_STREAM.encode())]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    gone = asyncio.ensure_future(_disconnect(receive))
    try:
        while True:
            chunk = asyncio.ensure_future(anext(chunks))
            await asyncio.wait((chunk, gone), return_when=asyncio.FIRST_COMPLETED)
            if not chunk.done():  # the client went away
                chunk.cancel()
                return
            try:
                body = chunk.result()
            except StopAsyncIteration:
                break
            except Exception:
                log.exception("event stream failed")
                break
            await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        gone.cancel()
        await chunks.aclose()


async def _disconnect(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


# ---- routes that need no key ---------------------------------------------------------------------


async def _healthz(_request: Request, _services: Services) -> Response:
    return document({"status": "ok"})


async def _readyz(_request: Request, services: Services) -> Response:
    checks: dict[str, str] = {}
    try:
        await services.ping()
        checks["database"] = "ok"
    except Unavailable as exc:
        checks["database"] = f"unavailable: {exc.detail}"
    limiter = services.limiter
    if limiter.enabled and services.settings.redis_url:
        ok = await asyncio.to_thread(limiter.check)
        checks["rate_limits"] = "ok" if ok else "redis unreachable: failing open"
    ready = checks["database"] == "ok"
    status = {"status": "ready" if ready else "unavailable", "checks": checks}
    return document(status, 200 if ready else 503)


@cache
def _openapi_document() -> bytes:
    return dumps(openapi.build([*operations(), *_PUBLIC]))


async def _openapi(_request: Request, _services: Services) -> Response:
    return Response(200, _openapi_document())


async def _metrics(request: Request, services: Services) -> Response:
    """Prometheus' text format; the queue's gauges measured for this scrape."""
    queued, processing, age = await services.jobs.queue()
    gauges = [
        telemetry.gauge("backstock_jobs_queued", "Jobs waiting for a worker.", queued),
        telemetry.gauge("backstock_jobs_processing", "Jobs a worker holds.", processing),
        telemetry.gauge(
            "backstock_oldest_queued_job_seconds",
            "How long the oldest queued job has waited (0: none waits).",
            age or 0.0,
        ),
    ]
    app: App = request.scope["app"]
    if (family := app._accounts.family()) is not None:
        gauges.append(family)
    body, _ = telemetry.exposition(gauges)
    return Response(200, body)


_PUBLIC = (
    Public("healthz", "GET", "/healthz", _healthz),
    Public("readyz", "GET", "/readyz", _readyz),
    Public("openapi", "GET", openapi.PATH, _openapi, "application/json"),
    Public("metrics", "GET", "/metrics", _metrics, telemetry.CONTENT_TYPE),
    # The job dashboard (/ui) and the API's docs (/docs): static files, one route each.
    *(Public(p.id, "GET", p.path, p.handler, p.content_type) for p in pages.routes()),
)
