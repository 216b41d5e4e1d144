"""Catalog-variant bulk update jobs: spawn (202), get, list."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from backstock.domain.filters import JOB_FILTERS, parse_filter
from backstock.domain.pagination import PageRequest, decode_cursor
from backstock.http import conventions
from backstock.http.calls import READ, WRITE, begin
from backstock.http.jsonapi import JOB_FIELDS, JOB_TYPE, VARIANT_FIELDS, document

router = APIRouter()

PATH = "/api/catalog-variant-bulk-update-jobs"
_JOB_FIELDS = {JOB_TYPE: JOB_FIELDS}
_GET_FIELDS = {JOB_TYPE: JOB_FIELDS, "catalog-variant": VARIANT_FIELDS}


@router.post(PATH)
async def spawn_update_variants_job(request: Request) -> Response:
    call = begin(request, "spawn_update_variants_job", WRITE, (f"fields[{JOB_TYPE}]",), _JOB_FIELDS)
    body = await call.body()
    job = await call.services.jobs.spawn(call.authorization, body, call.admit_async)
    resource = call.render.job(job)
    return document({"data": resource, "links": {"self": call.render.url(PATH)}}, 202)


@router.get(PATH + "/{job_id}")
async def get_update_variants_job(request: Request, job_id: str) -> Response:
    allowed = (f"fields[{JOB_TYPE}]", "fields[catalog-variant]", "include")
    call = begin(request, "get_update_variants_job", READ, allowed, _GET_FIELDS)
    include = "variants" in conventions.include(call.query, ("variants",))
    jobs = call.services.jobs
    who, job = await jobs.poll(call.authorization, job_id, call.admit_async)
    body: dict[str, Any] = {
        "data": call.render.job(job),
        "links": {"self": call.render.url(f"{PATH}/{job.id}")},
    }
    if include:
        body["included"] = [call.render.variant(v) for v in await jobs.job_variants(who, job)]
    return document(body)


@router.get(PATH)
async def get_update_variants_jobs(request: Request) -> Response:
    allowed = (f"fields[{JOB_TYPE}]", "filter", "page[cursor]")
    call = begin(request, "get_update_variants_jobs", READ, allowed, _JOB_FIELDS)
    statuses: frozenset[str] = frozenset()
    if "filter" in call.query:
        conditions = parse_filter(call.query["filter"], JOB_FILTERS)
        statuses = frozenset(str(condition.value) for condition in conditions)
    cursor = decode_cursor(call.query["page[cursor]"]) if "page[cursor]" in call.query else None
    page = PageRequest(100, cursor, descending=True)
    result = await call.run(call.services.jobs.list_jobs, statuses, page)
    return document({
        "data": [call.render.job(job) for job in result.rows],
        "links": call.render.page_links(PATH, call.query, result),
    })  # fmt: skip
