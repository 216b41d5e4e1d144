"""The get floor: a raw ASGI app (no framework) that answers ``GET /jobs/{id}`` and
``GET /jobs/{id}?include=variants`` from Backstock's own tables: the job row by its unique id
and, for ``include``, the job's variants (with their item's id) by their unique key, then the
same JSON:API document Backstock writes (resource, linkage, links, ISO timestamps), by orjson.

SQLite: one connection, queries on the event loop (a read by index takes microseconds).
PostgreSQL: psycopg's asyncio connections, one per client connection.

Configured by environment: ``BENCH_FLOOR_DB`` and ``BENCH_FLOOR_CONNECTIONS``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import orjson

from bench.floor_spawn import sqlite_connect
from bench.pgpool import FloorPool
from bench.rawasgi import App, Receive, Scope, Send, lifespan, nothing, respond

PREFIX = "$custom:::$default:::"
JOB_TYPE = "catalog-variant-bulk-update-job"
JOB_SQL = (
    "SELECT id, account_id, status, total_count, completed_count, failed_count, created_at, "
    "completed_at, expires_at, errors, linkage FROM jobs WHERE id = {p}"
)
ATTRIBUTES = (
    "external_id", "title", "description", "sku", "inventory_policy", "inventory_quantity",
    "price", "url", "image_full_url", "image_thumbnail_url", "images", "custom_metadata",
    "published",
)  # fmt: skip
VARIANTS_SQL = (
    "SELECT " + ", ".join(f"v.{name}" for name in ATTRIBUTES) + ", v.created, v.updated, "
    "i.external_id FROM catalog_variants AS v JOIN catalog_items AS i ON i.pk = v.item_pk "
    "WHERE v.account_id = {p} AND v.external_id {ids}"
)
_JSON = frozenset({"images", "custom_metadata"})
_NOT_FOUND = b'{"errors":[{"status":404,"code":"not_found","title":"Not found"}]}'


def iso(us: int | None) -> str | None:
    if us is None:
        return None
    return datetime.fromtimestamp(us / 1_000_000, UTC).isoformat(timespec="microseconds")


def render(base: str, job: Sequence[Any], variants: list[Sequence[Any]] | None) -> bytes:
    job_id, _account, status, total, done, failed, created, completed, expires, errors, linkage = (
        job
    )
    self_url = f"{base}/api/catalog-variant-bulk-update-jobs/{job_id}"
    body: dict[str, Any] = {
        "data": {
            "type": JOB_TYPE,
            "id": job_id,
            "attributes": {
                "job_id": job_id,
                "status": status,
                "created_at": iso(created),
                "total_count": total,
                "completed_count": done,
                "failed_count": failed,
                "completed_at": iso(completed),
                "expires_at": iso(expires),
                "errors": orjson.Fragment(errors),
            },
            "relationships": {"variants": {"data": orjson.Fragment(linkage)}},
            "links": {"self": self_url},
        },
        "links": {"self": self_url},
    }
    if variants is not None:
        ids = [entry["id"][len(PREFIX) :] for entry in orjson.loads(linkage)]
        by_id = {row[0]: row for row in variants}
        body["included"] = [_variant(base, by_id[i]) for i in dict.fromkeys(ids) if i in by_id]
    return orjson.dumps(body)


def _variant(base: str, row: Sequence[Any]) -> dict[str, Any]:
    attributes = dict(zip(ATTRIBUTES, row, strict=False))
    for name in _JSON:
        if attributes[name] is not None:
            attributes[name] = orjson.Fragment(attributes[name])
    if attributes["published"] is not None:
        attributes["published"] = bool(attributes["published"])
    attributes["created"] = iso(row[-3])
    attributes["updated"] = iso(row[-2])
    vid = PREFIX + row[0]
    self_url = f"{base}/api/catalog-variants/{quote(vid, safe='')}"
    return {
        "type": "catalog-variant",
        "id": vid,
        "attributes": attributes,
        "relationships": {"item": {"data": {"type": "catalog-item", "id": PREFIX + row[-1]}}},
        "links": {"self": self_url},
    }


def create() -> App:
    url = os.environ["BENCH_FLOOR_DB"]

    if url.startswith("sqlite"):
        conn = sqlite_connect(url.removeprefix("sqlite:///"))
        job_sql = JOB_SQL.format(p="?")

        async def fetch(job_id: str, include: bool) -> tuple[Any, list[Any] | None]:
            job = conn.execute(job_sql, (job_id,)).fetchone()
            if job is None or not include:
                return job, None
            ids = [entry["id"][len(PREFIX) :] for entry in orjson.loads(job[10])]
            marks = ", ".join("?" * len(ids))
            sql = VARIANTS_SQL.format(p="?", ids=f"IN ({marks})")
            return job, conn.execute(sql, (job[1], *ids)).fetchall()

        startup = nothing

        async def shutdown() -> None:
            conn.close()

    else:
        pool = FloorPool(url)
        pg_job = JOB_SQL.format(p="%s")
        pg_variants = VARIANTS_SQL.format(p="%s", ids="= ANY(%s)")
        startup, shutdown = pool.open, pool.close

        async def fetch(job_id: str, include: bool) -> tuple[Any, list[Any] | None]:
            async with pool.connection() as conn:
                job = await (await conn.execute(pg_job, (job_id,))).fetchone()
                if job is None or not include:
                    return job, None
                ids = [entry["id"][len(PREFIX) :] for entry in orjson.loads(job[10])]
                cursor = await conn.execute(pg_variants, (job[1], ids))
                return job, await cursor.fetchall()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send, startup, shutdown)
            return
        path: str = scope["path"]
        if not path.startswith("/jobs/"):
            await respond(send, 200, b'{"status":"ok"}')
            return
        include = b"include=variants" in scope["query_string"]
        job, variants = await fetch(path[6:], include)
        if job is None:
            await respond(send, 404, _NOT_FOUND)
            return
        host, port = scope["server"]
        await respond(send, 200, render(f"http://{host}:{port}", job, variants))

    return app
