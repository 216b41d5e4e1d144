"""The ASGI application: routes, one error renderer for every failure, health endpoints."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

from backstock.domain.errors import (
    BackstockError,
    BadRequest,
    MethodNotAllowed,
    NotFound,
)
from backstock.http import catalog_routes, job_routes, openapi
from backstock.http.jsonapi import document, error_response
from backstock.services.container import Services

log = logging.getLogger("backstock.http")

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


def create_app(
    services: Services,
    on_startup: Callable[[], None] | None = None,
    on_shutdown: Callable[[], None] | None = None,
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if on_startup:
            on_startup()
        try:
            yield
        finally:
            if on_shutdown:
                on_shutdown()
            await services.jobs.direct.close()  # its connections belong to this event loop

    app = _BackstockAPI(
        title="Backstock",
        version="0.1.0",
        lifespan=lifespan,
        redirect_slashes=False,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # our own document instead (http/openapi.py): FastAPI cannot see bodies
    )
    app.state.services = services
    app.include_router(catalog_routes.router)
    app.include_router(job_routes.router)
    app.add_api_route(openapi.PATH, openapi.serve, methods=["GET"], include_in_schema=False)
    _health_routes(app, services)
    _error_handlers(app)
    return app


class _BackstockAPI(FastAPI):
    """FastAPI with ``EdgeMiddleware`` outermost, in front of even Starlette's error and
    FastAPI's telemetry layers (it renders unhandled errors itself), and the two hottest
    operations served before FastAPI's own ``__call__`` (see ``_fast_route``)."""

    def build_middleware_stack(self) -> ASGIApp:
        return EdgeMiddleware(super().build_middleware_stack())

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and (fast := _fast_route(scope["method"], _path(scope))):
            scope["app"] = self
            await _serve(fast[0], fast[1], scope, receive, send)
            return
        await super().__call__(scope, receive, send)


Handler = Callable[..., Awaitable[Response]]
_JOBS = job_routes.PATH
_JOB = _JOBS + "/"


def _path(scope: Scope) -> str:
    """The path to route on: the raw one (so an id's ``%2F`` is not taken for a separator),
    without one trailing slash (so both spellings of every path are served directly)."""
    raw = scope.get("raw_path")
    path: str = raw.decode("latin-1").partition("?")[0] if raw else scope["path"]
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    scope["path"] = path
    return path


def _fast_route(method: str, path: str) -> tuple[Handler, tuple[str, ...]] | None:
    """The two hottest operations, spawn and get job, go straight to their handlers: FastAPI's
    routing, dependency and middleware layers cost more than everything else they do."""
    if path == _JOBS and method == "POST":
        return job_routes.spawn_update_variants_job, ()
    if method == "GET" and path.startswith(_JOB) and "/" not in (job_id := path[len(_JOB) :]):
        return job_routes.get_update_variants_job, (job_id,)
    return None


class EdgeMiddleware:
    """Adds the ``RateLimit-*`` headers of the request's tightest window to the response,
    and turns any unhandled exception into a JSON:API 500 without a stack trace."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":  # its path is normalized already (``_path``)
            send = _with_limit_headers(scope, send)
        started = False

        async def tracking_send(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            # Logged here, once, and not re-raised; the client gets a JSON:API 500 without a
            # stack trace (Starlette's error layer inside has sent it already, if started).
            if scope["type"] != "http":
                raise
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await error_response(BackstockError())(scope, receive, send)


async def _serve(
    handler: Handler, args: tuple[str, ...], scope: Scope, receive: Any, send: Any
) -> None:
    """Run one handler the way the app would: same errors, same headers."""
    try:
        response = await handler(Request(scope, receive), *args)
    except BackstockError as exc:
        response = error_response(exc)
    except Exception:
        log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
        response = error_response(BackstockError())
    state = scope.get("state", {}).get("limit")
    if state is not None:
        response.headers.update(state.headers())
    await response(scope, receive, send)


def _with_limit_headers(scope: Scope, send: Any) -> Any:
    async def sender(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            state = scope.get("state", {}).get("limit")
            if state is not None:
                extra = [(k.encode(), v.encode()) for k, v in state.headers().items()]
                message["headers"] = [*message.get("headers", []), *extra]
        await send(message)

    return sender


def _health_routes(app: FastAPI, services: Services) -> None:
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return document({"status": "ok"})

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> Response:
        checks: dict[str, str] = {}
        try:
            with services.db.read() as conn:
                conn.exec_driver_sql("SELECT 1")
            checks["database"] = "ok"
        except Exception as exc:  # noqa: BLE001
            checks["database"] = f"unavailable: {type(exc).__name__}"
        if services.limiter.enabled and services.settings.redis_url:
            ok = services.limiter.check()
            checks["rate_limits"] = "ok" if ok else "redis unreachable: failing open"
        ready = checks["database"] == "ok"
        return document(
            {"status": "ready" if ready else "unavailable", "checks": checks}, 200 if ready else 503
        )


_API_ROUTES = [*catalog_routes.router.routes, *job_routes.router.routes]


def _allowed_methods(request: Request) -> str:
    """Every method some route serves on this path (Starlette's own ``Allow`` names only the
    methods of the first route that matched the path), health and /openapi.json included."""
    methods: set[str] = set()
    for route in (*_API_ROUTES, *request.app.router.routes):
        if isinstance(route, APIRoute) and route.matches(request.scope)[0] is not Match.NONE:
            methods |= route.methods or set()
    return ", ".join(sorted(methods))


def _error_handlers(app: FastAPI) -> None:
    async def backstock_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BackstockError)
        return error_response(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return error_response(NotFound("No such endpoint."))
        if exc.status_code == 405:
            allowed = _allowed_methods(request)
            detail = f"This path allows {allowed}."
            return error_response(MethodNotAllowed(detail), {"Allow": allowed})
        error = BackstockError(str(exc.detail))
        error.status = exc.status_code  # type: ignore[misc]
        return error_response(error)

    async def validation_error(_request: Request, exc: Exception) -> Response:
        return error_response(BadRequest(str(exc)))

    async def unhandled(_request: Request, _exc: Exception) -> Response:
        return error_response(BackstockError())  # EdgeMiddleware logs it

    app.add_exception_handler(BackstockError, backstock_error)
    app.add_exception_handler(Exception, unhandled)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
