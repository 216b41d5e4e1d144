"""The pages Backstock serves besides its API: the job dashboard (``/ui``) and the API's own
documentation (``/docs``: Swagger UI over ``/openapi.json``).

Both are static files shipped in the package (``http/static/``; Swagger UI's from the
``swagger_ui_bundle`` package), nothing from a CDN. Each file is a route of its own (``routes()``,
public: no key), so ``/openapi.json`` lists exactly what is served and no path names a file
that is not one of them. The pages run no inline script or style: their Content-Security-Policy
allows only this origin. Every answer carries ``X-Content-Type-Options: nosniff`` and an
``ETag`` with ``Cache-Control: no-cache`` (a browser revalidates and gets a 304 while the file
is unchanged, and a new release is picked up at once); text is gzipped for clients that take it.

The dashboard is a client of the API like any other: it signs in with a key typed into the page
(kept in the tab's ``sessionStorage``) and calls the JSON:API endpoints with it.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

from backstock.http.requests import Request
from backstock.http.routes import Response
from backstock.services.container import Services

Handler = Callable[[Request, Services], Awaitable[Response]]

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_COMPRESSIBLE = (".html", ".js", ".css", ".svg")

_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'{img}; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
UI_POLICY = _POLICY.format(img="")
DOCS_POLICY = _POLICY.format(img=" data:")
"""Swagger UI's stylesheet draws its icons as ``data:`` SVG images; nothing else differs."""

SWAGGER_PACKAGE = "swagger_ui_bundle"


@dataclass(frozen=True, slots=True)
class Page:
    """One file, one public route."""

    id: str
    path: str
    content_type: str
    handler: Handler


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    etag: str
    gzipped: bytes | None


def _own(folder: str, name: str) -> Traversable:
    return resources.files("backstock.http").joinpath("static", folder, name)


def _swagger(name: str) -> Traversable:
    """A file of the Swagger UI that ``swagger_ui_bundle`` ships (``vendor/swagger-ui-X.Y.Z``)."""
    vendor = resources.files(SWAGGER_PACKAGE).joinpath("vendor")
    folders = sorted(f.name for f in vendor.iterdir() if f.name.startswith("swagger-ui-"))
    if not folders:
        raise FileNotFoundError(f"{SWAGGER_PACKAGE} ships no Swagger UI")
    return vendor.joinpath(folders[-1], name)


def _load(source: Callable[[], Traversable], compress: bool) -> _Asset:
    body = source().read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    gzipped = gzip.compress(body, 6, mtime=0) if compress and len(body) > 1024 else None
    return _Asset(body, etag, gzipped)


def _accepts_gzip(header: str) -> bool:
    for part in header.split(","):
        coding, _, params = part.partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            quality = params.strip().lower().removeprefix("q=")
            try:
                return not params.strip() or float(quality) > 0
            except ValueError:
                return False
    return False


def _matches(header: str | None, etag: str) -> bool:
    if header is None:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return "*" in tags or etag in tags


def _file(source: Callable[[], Traversable], suffix: str, policy: str) -> Handler:
    loaded: list[_Asset] = []
    compress = suffix in _COMPRESSIBLE

    async def handler(request: Request, _services: Services) -> Response:
        if not loaded:  # read (and gzip) once, off the event loop
            loaded.append(await asyncio.to_thread(_load, source, compress))
        asset = loaded[0]
        use_gzip = asset.gzipped is not None and _accepts_gzip(
            request.headers.get("accept-encoding", "")
        )
        etag = asset.etag[:-1] + '-gz"' if use_gzip else asset.etag
        headers = {
            "Cache-Control": "no-cache",
            "ETag": etag,
            "Content-Security-Policy": policy,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY",
            "Cross-Origin-Opener-Policy": "same-origin",
        }
        if asset.gzipped is not None:
            headers["Vary"] = "Accept-Encoding"
        if _matches(request.headers.get("if-none-match"), etag):
            return Response(304, b"", headers)
        if use_gzip:
            headers["Content-Encoding"] = "gzip"
            return Response(200, asset.gzipped or b"", headers)
        return Response(200, asset.body, headers)

    return handler


def _route_id(prefix: str, name: str) -> str:
    return (
        prefix if name == "index.html" else f"{prefix}_" + name.replace("-", "_").replace(".", "_")
    )


def routes() -> list[Page]:
    """``/ui`` (the dashboard) and ``/docs`` (Swagger UI), each file its own route."""
    found: list[Page] = []
    own = {
        "ui": ("index.html", "app.js", "app.css", "favicon.svg"),
        "docs": ("index.html", "docs.js"),
    }
    for prefix, names in own.items():
        policy = UI_POLICY if prefix == "ui" else DOCS_POLICY
        for name in names:
            path = f"/{prefix}" if name == "index.html" else f"/{prefix}/{name}"
            suffix = name[name.rfind(".") :]

            def source(prefix: str = prefix, name: str = name) -> Traversable:
                return _own(prefix, name)

            handler = _file(source, suffix, policy)
            found.append(Page(_route_id(prefix, name), path, _TYPES[suffix], handler))
    for name in ("swagger-ui.css", "swagger-ui-bundle.js"):
        suffix = name[name.rfind(".") :]

        def vendored(name: str = name) -> Traversable:
            return _swagger(name)

        handler = _file(vendored, suffix, DOCS_POLICY)
        found.append(Page(_route_id("docs", name), f"/docs/{name}", _TYPES[suffix], handler))
    return found
