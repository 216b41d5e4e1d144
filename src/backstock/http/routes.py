"""The route table: every operation of Klaviyo's Catalogs API, derived from the resource
descriptions and the job kinds, each with its Klaviyo ``operationId``, scope, rate limits,
parameters and handler. Dispatch (``http.app``), ``Allow`` on a 405 and ``/openapi.json``'s
operation list all come from this one table."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from backstock import telemetry
from backstock.domain import jobs
from backstock.domain.catalog import Record
from backstock.domain.errors import InvalidParameter
from backstock.domain.filters import Condition, parse_filter, rules_for
from backstock.domain.jobs import KINDS, JobKind, JobRecord
from backstock.domain.keys import READ, WRITE, ApiKey, Principal
from backstock.domain.pagination import Cursor, PageRequest, decode_cursor, parse_page_size
from backstock.domain.resources import CATEGORY, ITEM, RESOURCES, Relation, Resource, resource
from backstock.http import requests
from backstock.http.render import Renderer, dumps, linkage
from backstock.http.requests import Request, path_id
from backstock.services.container import Services

READ_LIMITS = "350/second;3500/minute"
EVENT_STREAM = "text/event-stream"
_EXTENSIONS = "Backstock extensions"
WRITE_LIMITS = "75/second;750/minute"
LIST = ("filter", "sort", "page[cursor]", "page[size]")


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    stream: AsyncGenerator[bytes, None] | None = None
    """A streamed body (``text/event-stream``), sent chunk by chunk instead of ``body``."""


def document(body: Any, status: int = 200) -> Response:
    return Response(status, dumps(body))


@dataclass(slots=True)
class Call:
    """One request to an operation, after its key was checked: what a handler works with."""

    request: Request
    services: Services
    who: Principal
    params: tuple[str, ...]
    """The path's parameters, still percent-encoded."""
    query: dict[str, str]
    render: Renderer
    fetched: Any = None
    """What the operation's ``fetch`` read with the key."""

    async def body(self) -> bytes:
        settings = self.services.settings
        return await self.request.body(settings.max_body_bytes, settings.body_timeout_seconds)

    @property
    def external(self) -> Any:
        return path_id(self.params[0])


Handler = Callable[[Call], Awaitable[Response]]
Fetch = Callable[[Services, ApiKey, tuple[str, ...]], Awaitable[tuple[Principal, Any]]]


@dataclass(frozen=True, slots=True)
class Operation:
    id: str
    """Klaviyo's ``operationId``: the name of the rate-limit counter and of the log line."""
    method: Literal["GET", "POST", "PATCH", "DELETE"]
    path: str
    handler: Handler
    scope: str
    limits: str
    """Klaviyo's ``x-klaviyo-ratelimit`` for it: burst per second; steady per minute."""
    status: int
    query: tuple[str, ...] = ()
    fields: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """The sparse fieldsets it takes, by type."""
    summary: str = ""
    tag: str = ""
    body: str | None = None
    """The name of its request document in ``/openapi.json``, if it takes one."""
    response: str | None = None
    """The name of its response document in ``/openapi.json``."""
    errors: tuple[int, ...] = ()
    """Statuses beyond those every operation can answer."""
    filters: str | None = None
    """The filter fields it takes: a resource type, or ``job``."""
    include: str | None = None
    extension: bool = False
    """Backstock's own (docs/extensions.md), not Klaviyo's; an unmodified Klaviyo client
    never calls it."""
    media_type: str | None = None
    """What it answers with instead of JSON (an event stream)."""
    fetch: Fetch | None = None
    """Checks the key and reads what the operation addresses in one statement (one round
    trip), in place of the key's own lookup: the handler finds it in ``Call.fetched``."""


# ---- query parameters shared by lists ---------------------------------------------------------


def _conditions(call: Call, rules: Mapping[str, Any]) -> list[Condition]:
    text = call.query.get("filter")
    return parse_filter(text, rules) if text is not None else []


def _page(call: Call) -> PageRequest:
    query = call.query
    sort = query.get("sort", "created")
    if sort not in ("created", "-created"):
        raise InvalidParameter("sort", "sort must be 'created' or '-created'.")
    cursor = _cursor(call)
    return PageRequest(parse_page_size(query.get("page[size]")), cursor, sort == "-created")


def _cursor(call: Call) -> Cursor | None:
    given = call.query.get("page[cursor]")
    return None if given is None else decode_cursor(given, call.who.cursor_key)


def _fields(*resources: Resource) -> dict[str, frozenset[str]]:
    return {res.type: res.fields for res in resources}


# ---- catalog resources --------------------------------------------------------------------------


def _includable(res: Resource) -> Relation | None:
    """What ``include`` can add to a resource (an item's variants)."""
    return next((r for r in res.relations if r.storage == "children"), None)


async def _render_many(call: Call, res: Resource, records: list[Record]) -> dict[str, Any]:
    relation = _includable(res)
    if relation is None or not requests.include(call.query, relation.name):
        return {"data": [call.render.resource(res, r) for r in records]}
    ids, related = await call.services.catalog.included(call.who, res, relation.name, records)
    target = resource(relation.target)
    return {
        "data": [call.render.resource(res, r, ids[r["external_id"]]) for r in records],
        "included": [call.render.resource(target, r) for r in related],
    }


def _list(res: Resource) -> Handler:
    async def handler(call: Call) -> Response:
        conditions, page = _conditions(call, rules_for(res)), _page(call)
        result = await call.services.catalog.list_resources(call.who, res, conditions, page)
        body = await _render_many(call, res, result.rows)
        body["links"] = call.render.page_links(res.path, call.query, result)
        return document(body)

    return handler


def _create(res: Resource) -> Handler:
    async def handler(call: Call) -> Response:
        record = await call.services.catalog.create(call.who, res, await call.body())
        return document({"data": call.render.resource(res, record)}, 201)

    return handler


def _get(res: Resource) -> Handler:
    async def handler(call: Call) -> Response:
        record = await call.services.catalog.get(call.who, res, call.external)
        body = await _render_many(call, res, [record])
        body["data"] = body["data"][0]
        return document(body)

    return handler


def _update(res: Resource) -> Handler:
    async def handler(call: Call) -> Response:
        external = call.external
        record = await call.services.catalog.update(call.who, res, external, await call.body())
        return document({"data": call.render.resource(res, record)})

    return handler


def _delete(res: Resource) -> Handler:
    async def handler(call: Call) -> Response:
        await call.services.catalog.delete(call.who, res, call.external)
        return Response(204)

    return handler


def _related(owner: Resource, relation: Relation, ids_only: bool) -> Handler:
    target = resource(relation.target)

    async def handler(call: Call) -> Response:
        external = call.external
        conditions, page = _conditions(call, rules_for(target)), _page(call)
        result = await call.services.catalog.related(
            call.who, owner, relation.name, external, conditions, page
        )
        path = call.request.path
        if ids_only:
            body: dict[str, Any] = {
                "data": linkage(target.type, [r["external_id"] for r in result.rows])
            }
        else:
            body = await _render_many(call, target, result.rows)
        body["links"] = call.render.page_links(path, call.query, result)
        return document(body)

    return handler


def _links(
    owner: Resource, relation: Relation, how: Literal["add", "replace", "remove"]
) -> Handler:
    async def handler(call: Call) -> Response:
        external = call.external
        body = await call.body()
        await call.services.catalog.change_links(
            call.who, owner, relation.name, external, body, how
        )
        return Response(204)

    return handler


def _resource_operations(res: Resource) -> list[Operation]:
    item, collection = f"{res.path}/{{id}}", res.path
    noun, plural, tag = res.noun, res.plural, f"Catalog {res.plural}"
    mine = _fields(res)
    shown = _fields(res, *(resource(r.target) for r in res.relations if r.storage == "children"))
    include = _includable(res)
    take_include = ("include",) if include else ()
    return [
        Operation(
            f"get_catalog_{plural}", "GET", collection, _list(res), READ, READ_LIMITS, 200,
            (*LIST, *(f"fields[{t}]" for t in shown), *take_include), shown,
            f"List {plural}", tag, response=f"{res.type}:collection", filters=res.type,
            include=include.name if include else None,
        ),
        Operation(
            f"create_catalog_{noun}", "POST", collection, _create(res), WRITE, WRITE_LIMITS, 201,
            (f"fields[{res.type}]",), mine, f"Create a {noun}", tag,
            body=f"{res.type}:create", response=f"{res.type}:document", errors=(404, 409),
        ),
        Operation(
            f"get_catalog_{noun}", "GET", item, _get(res), READ, READ_LIMITS, 200,
            (*(f"fields[{t}]" for t in shown), *take_include), shown, f"Get a {noun}", tag,
            response=f"{res.type}:document", errors=(404,),
            include=include.name if include else None,
        ),
        Operation(
            f"update_catalog_{noun}", "PATCH", item, _update(res), WRITE, WRITE_LIMITS, 200,
            (f"fields[{res.type}]",), mine, f"Update a {noun}", tag,
            body=f"{res.type}:update", response=f"{res.type}:document", errors=(404,),
        ),
        Operation(
            f"delete_catalog_{noun}", "DELETE", item, _delete(res), WRITE, WRITE_LIMITS, 204,
            summary=f"Delete a {noun}" + (" and its variants" if res is ITEM else ""), tag=tag,
            errors=(404,),
        ),
    ]  # fmt: skip


def _relation_operations(owner: Resource, relation: Relation) -> list[Operation]:
    target = resource(relation.target)
    base = f"{owner.path}/{{id}}"
    of = f"catalog_{owner.noun}"
    tag = f"Catalog {owner.plural}"
    shown = _fields(
        target, *(resource(r.target) for r in target.relations if r.storage == "children")
    )
    include = _includable(target)
    take_include = ("include",) if include else ()
    operations = [
        Operation(
            f"get_{target.plural}_for_{of}", "GET", f"{base}/{relation.name}",
            _related(owner, relation, False), READ, READ_LIMITS, 200,
            (*LIST, *(f"fields[{t}]" for t in shown), *take_include), shown,
            f"List a {owner.noun}'s {target.plural}", tag,
            response=f"{target.type}:collection", errors=(404,), filters=target.type,
            include=include.name if include else None,
        ),
        Operation(
            f"get_{target.noun}_ids_for_{of}", "GET", f"{base}/relationships/{relation.name}",
            _related(owner, relation, True), READ, READ_LIMITS, 200, LIST,
            summary=f"List the ids of a {owner.noun}'s {target.plural}", tag=tag,
            response=f"{target.type}:identifiers", errors=(404,), filters=target.type,
        ),
    ]  # fmt: skip
    if relation.storage == "links":
        changes: list[tuple[Literal["POST", "PATCH", "DELETE"], str, Any, str]] = [
            ("POST", "add_{}_to_{}", "add", "Add {} to a {}"),
            ("PATCH", "update_{}_for_{}", "replace", "Replace the {} of a {}"),
            ("DELETE", "remove_{}_from_{}", "remove", "Remove {} from a {}"),
        ]
        operations += [
            Operation(
                name.format(target.plural, of), method, f"{base}/relationships/{relation.name}",
                _links(owner, relation, how), WRITE, WRITE_LIMITS, 204,
                summary=summary.format(target.plural, owner.noun), tag=tag,
                body=f"{target.type}:identifiers", errors=(404,),
            )
            for method, name, how, summary in changes
        ]  # fmt: skip
    return operations


# ---- bulk jobs ----------------------------------------------------------------------------------

_JOB_NAMES = {
    "catalog-item": "catalog_items",
    "catalog-variant": "variants",
    "catalog-category": "categories",
}
"""Klaviyo's name for a resource in its job operations' ids (``get_bulk_update_variants_job``)."""
_SLOW_JOB_READS = frozenset(
    f"{type_}-bulk-{action}-job"
    for type_ in ("catalog-item", "catalog-variant")
    for action in ("create", "update")
)
"""Job reads Klaviyo limits like writes (75/s, 750/m) since revision 2026-04-15."""


def _spawn(kind: JobKind) -> Handler:
    async def handler(call: Call) -> Response:
        service = call.services.jobs
        if requests.flag(call.query, "dry_run"):
            would_be = await service.dry_run(call.who, kind, await call.body())
            data = call.render.job(kind, would_be)
            del data["links"]
            return document({"data": data, "meta": {"dry_run": True}})
        key = jobs.idempotency_key(call.request.headers.get("idempotency-key"))
        job = await service.spawn(call.who, kind, await call.body(), key)
        telemetry.JOBS_ACCEPTED.labels(kind.type).inc()
        # As Klaviyo's spawn answers: the document's own link is the collection's.
        return _job_document(call, kind, job, 202, kind.path)

    return handler


def _job_document(
    call: Call, kind: JobKind, job: JobRecord, status: int = 200, path: str | None = None
) -> Response:
    self_url = call.render.url(path or f"{kind.path}/{job.id}")
    return document({"data": call.render.job(kind, job), "links": {"self": self_url}}, status)


def _poll(kind: JobKind) -> Fetch:
    async def fetch(
        services: Services, key: ApiKey, params: tuple[str, ...]
    ) -> tuple[Principal, Any]:
        return await services.jobs.poll(key, kind, params[0])

    return fetch


def _get_job(kind: JobKind) -> Handler:
    async def handler(call: Call) -> Response:
        wants = requests.include(call.query, kind.include)
        service = call.services.jobs
        job = service.require(kind, call.params[0], call.fetched)  # read with the key: _poll
        body: dict[str, Any] = {
            "data": call.render.job(kind, job),
            "links": {"self": call.render.url(f"{kind.path}/{job.id}")},
        }
        if wants:
            records = await service.resources(call.who, kind, job)
            body["included"] = [call.render.resource(kind.resource, r) for r in records]
        return document(body)

    return handler


def _list_jobs(kind: JobKind) -> Handler:
    async def handler(call: Call) -> Response:
        conditions = _conditions(call, jobs.FILTERS)
        statuses = frozenset(str(condition.value) for condition in conditions)
        cursor = _cursor(call)
        page = PageRequest(100, cursor, descending=True)
        result = await call.services.jobs.list_jobs(call.who, kind, statuses, page)
        return document({
            "data": [call.render.job(kind, job) for job in result.rows],
            "links": call.render.page_links(kind.path, call.query, result),
        })  # fmt: skip

    return handler


def _cancel(kind: JobKind) -> Handler:
    async def handler(call: Call) -> Response:
        return _job_document(
            call, kind, await call.services.jobs.cancel(call.who, kind, call.params[0])
        )

    return handler


def _retry(kind: JobKind) -> Handler:
    async def handler(call: Call) -> Response:
        job = await call.services.jobs.retry(call.who, kind, call.params[0])
        telemetry.JOBS_ACCEPTED.labels(kind.type).inc()
        return _job_document(call, kind, job, 202)

    return handler


def _events(kind: JobKind) -> Handler:
    async def handler(call: Call) -> Response:
        updates = call.services.jobs.watch(call.who, kind, call.params[0])
        first = await anext(updates)  # a 404 (or 429) is an ordinary error response
        assert first is not None
        render = call.render

        async def stream() -> AsyncGenerator[bytes, None]:
            try:
                job: JobRecord | None = first
                while True:
                    if job is None:
                        yield b": heartbeat\n\n"
                    else:
                        url = render.url(f"{kind.path}/{job.id}")
                        body = dumps({"data": render.job(kind, job), "links": {"self": url}})
                        yield b"event: %s\ndata: %s\n\n" % (job.status.encode(), body)
                    job = await anext(updates, _END)
                    if job is _END:
                        return
            finally:
                await updates.aclose()

        return Response(200, headers={"Cache-Control": "no-store"}, stream=stream())

    return handler


_END: Any = object()


def _job_operations(kind: JobKind) -> list[Operation]:
    res, action = kind.resource, kind.action
    name = _JOB_NAMES[res.type]
    reads = WRITE_LIMITS if kind.type in _SLOW_JOB_READS else READ_LIMITS
    own = {kind.type: jobs.FIELDS}
    shown = own | (_fields(res) if kind.include else {})
    tag = "Bulk jobs"
    return [
        Operation(
            f"bulk_{action}_catalog_{res.plural}", "POST", kind.path, _spawn(kind), WRITE,
            WRITE_LIMITS, 202, (f"fields[{kind.type}]", "dry_run"), own,
            f"Spawn a job that {action}s 1 to 100 {res.plural}; 202 means it is committed", tag,
            body=f"{kind.type}:create", response=f"{kind.type}:document",
        ),
        Operation(
            f"get_bulk_{action}_{name}_job", "GET", f"{kind.path}/{{job_id}}", _get_job(kind),
            READ, reads, 200,
            (*(f"fields[{t}]" for t in shown), *(("include",) if kind.include else ())), shown,
            f"Get a bulk {action} job of {res.plural}", tag,
            response=f"{kind.type}:document", errors=(404,), include=kind.include,
            fetch=_poll(kind),
        ),
        Operation(
            f"get_bulk_{action}_{name}_jobs", "GET", kind.path, _list_jobs(kind), READ, reads,
            200, (f"fields[{kind.type}]", "filter", "page[cursor]"), own,
            f"List bulk {action} jobs of {res.plural}, newest first", tag,
            response=f"{kind.type}:collection", filters="job",
        ),
        Operation(
            f"cancel_bulk_{action}_{name}_job", "POST", f"{kind.path}/{{job_id}}/cancel",
            _cancel(kind), WRITE, WRITE_LIMITS, 200, (f"fields[{kind.type}]",), own,
            f"Cancel a bulk {action} job of {res.plural}: nothing more of it is applied",
            _EXTENSIONS, response=f"{kind.type}:document", errors=(404, 409), extension=True,
        ),
        Operation(
            f"retry_bulk_{action}_{name}_job", "POST", f"{kind.path}/{{job_id}}/retry",
            _retry(kind), WRITE, WRITE_LIMITS, 202, (f"fields[{kind.type}]",), own,
            f"Spawn a job of exactly the {res.plural} a completed job failed", _EXTENSIONS,
            response=f"{kind.type}:document", errors=(404, 409, 429), extension=True,
        ),
        Operation(
            f"watch_bulk_{action}_{name}_job", "GET", f"{kind.path}/{{job_id}}/events",
            _events(kind), READ, reads, 200, (f"fields[{kind.type}]",), own,
            f"Stream a bulk {action} job's progress as Server-Sent Events", _EXTENSIONS,
            errors=(404, 429), extension=True,
            media_type=EVENT_STREAM,
        ),
    ]  # fmt: skip


def operations() -> list[Operation]:
    """Every operation of the API."""
    found: list[Operation] = []
    for res in (ITEM, resource("catalog-variant"), CATEGORY):
        found += _resource_operations(res)
    for owner in RESOURCES.values():
        for relation in owner.relations:
            if relation.storage != "parent":
                found += _relation_operations(owner, relation)
    for kind in KINDS.values():
        found += _job_operations(kind)
    return found
