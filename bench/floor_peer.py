"""The floors of ``make bench``, as one server for ``make bench-peers``: the spawn floor answers
``POST /api/catalog-variant-bulk-update-jobs`` (reads the body, parses it with orjson, commits
it as one row with ``synchronous=FULL``, answers 202) and the get floor answers ``GET
/api/catalog-variant-bulk-update-jobs/{id}`` (the job row by its id, the same JSON:API document
Backstock writes), over a copy of a seeded Backstock SQLite file. What the parts Backstock is
built on (Python, granian, orjson, SQLite) serve with nothing else: no key, no validation, no
worker. SQLite only. Configured by ``BENCH_FLOOR_DB``, as the floors are."""

from __future__ import annotations

from bench import floor_get, floor_spawn
from bench.rawasgi import App, Receive, Scope, Send, lifespan, nothing, respond

JOBS = "/api/catalog-variant-bulk-update-jobs"


def create() -> App:
    spawn, get = floor_spawn.create(), floor_get.create()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # the SQLite floors open their files when created
            await lifespan(receive, send, nothing, nothing)
        elif scope["method"] == "POST":
            await spawn(scope, receive, send)
        elif scope["path"].startswith(f"{JOBS}/"):
            await get(scope | {"path": "/jobs/" + scope["path"][len(JOBS) + 1 :]}, receive, send)
        else:
            await respond(send, 200, b'{"status":"ok"}')

    return app
