"""Routing cost: Backstock's route trie (``http.app.Router``) against Starlette's router (what
FastAPI routes with) on the same 81 operations, matching the paths clients send most. The
measurement behind serving the API from a plain ASGI app instead of a framework.

    .venv/bin/python -m bench.routing

Each side matches the same requests (a job poll, a spawn, a variant read, an item's variants,
and an unknown path) many times; the table gives microseconds per match and the ratio
Starlette / Backstock.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from starlette.routing import Match, Route
from starlette.routing import Router as StarletteRouter

from backstock.domain.errors import NotFound
from backstock.http.app import Router
from backstock.http.routes import operations

JOB = "/api/catalog-variant-bulk-update-jobs/01M8SZC17JZSZ9PP5WT7J9XKV3"
REQUESTS = [
    ("GET", JOB, "poll a job"),
    ("POST", "/api/catalog-variant-bulk-update-jobs", "spawn a job"),
    ("GET", "/api/catalog-variants/%24custom%3A%3A%3A%24default%3A%3A%3AV-1", "read a variant"),
    ("GET", "/api/catalog-items/%24custom%3A%3A%3A%24default%3A%3A%3AI-1/variants", "variants"),
    ("GET", "/api/nothing/here", "unknown path"),
]


async def _endpoint(_request: object) -> None:  # never called: matching only
    return None


def _ours() -> Callable[[str, str], object]:
    router = Router(operations())

    def match(method: str, path: str) -> object:
        try:
            return router.match(method, path)
        except NotFound:
            return None

    return match


def _starlette() -> Callable[[str, str], object]:
    routes = [Route(op.path, _endpoint, methods=[op.method]) for op in operations()]
    router = StarletteRouter(routes)

    def match(method: str, path: str) -> object:
        scope = {"type": "http", "method": method, "path": path, "root_path": ""}
        partial = None
        for route in router.routes:
            found, child = route.matches(scope)
            if found == Match.FULL:
                return child
            if found == Match.PARTIAL and partial is None:
                partial = child
        return partial

    return match


def _per_match(match: Callable[[str, str], object], method: str, path: str) -> float:
    rounds = []
    for _ in range(7):
        started = time.perf_counter()
        for _ in range(2000):
            match(method, path)
        rounds.append((time.perf_counter() - started) / 2000)
    return statistics.median(rounds)


def main() -> None:
    ours, theirs = _ours(), _starlette()
    print(f"{len(operations())} operations")
    print(f"{'request':16} {'Backstock':>12} {'Starlette':>12} {'ratio':>7}")
    for method, path, name in REQUESTS:
        mine = _per_match(ours, method, path)
        other = _per_match(theirs, method, path)
        print(f"{name:16} {mine * 1e6:>9.2f} us {other * 1e6:>9.2f} us {other / mine:>6.1f}x")


if __name__ == "__main__":
    main()
