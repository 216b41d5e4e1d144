"""Backstock's own OpenAPI 3.1 document, served at ``/openapi.json``: derived, not hand-kept.

Operations, parameters and statuses come from the route table (``http.routes``); schemas from
the resource descriptions and ``domain.jobs`` (``http.openapi_schemas``); error responses, their
statuses and codes, from the error tree (``domain.errors``). Every path is listed in both
spellings, without and with the trailing slash (``operationId`` suffixed ``_slash``), since both
are served. ``tests/contract`` fuzzes the service against this document with schemathesis.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from backstock.domain import errors, jobs
from backstock.domain.errors import BackstockError
from backstock.domain.filters import MAX_FILTER_LENGTH, FieldRule, rules_for
from backstock.domain.jobs import KINDS
from backstock.domain.pagination import MAX_PAGE_SIZE
from backstock.domain.resources import RESOURCES
from backstock.http.openapi_schemas import (
    COUNT,
    STRING,
    Schema,
    array,
    component_schemas,
    compound_id,
    ref,
    schema_name,
)
from backstock.http.render import MEDIA_TYPE
from backstock.http.requests import MEDIA_TYPES, NEWEST_REVISION, NULLABLE_SINCE, OLDEST_REVISION
from backstock.http.routes import Operation

PATH = "/openapi.json"
_SECONDS: Schema = {"type": "integer", "minimum": 1}
_JOB_EXAMPLE = "01JABCDEF0123456789XYZABCD"

# Where the branches of the error tree are answered (any other class: by every operation):
# only by operations that read a body; only by those whose ``Operation.errors`` lists the
# status; by a path, before any operation (with ``Allow``, never counted against a rate limit).
# And which carry ``Retry-After``.
_WITH_BODY = (errors.RequestTimeout, errors.PayloadTooLarge, errors.UnsupportedMediaType)
_NAMED = (errors.NotFound, errors.Conflict)
_PATH_LEVEL = (errors.MethodNotAllowed,)
_RETRIED = (errors.Throttled, errors.TooManyJobs, errors.Unavailable)
_SPAWNS = (errors.IdempotencyMismatch,)  # only by operations that take a job
_RATE_LIMIT_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
_PROBE_STATUSES: dict[str, tuple[int, ...]] = {"readyz": (200, 503)}  # else 200 (and 500)


# ---- errors, from the error tree ----------------------------------------------------------------
def error_classes() -> list[type[BackstockError]]:
    """Every class of the error tree, root first."""
    found: list[type[BackstockError]] = [BackstockError]
    for cls in found:  # grows while walked: breadth first
        found.extend(cls.__subclasses__())
    return found


def error_statuses(op: Operation) -> set[int]:
    """The error statuses an operation can answer."""
    never = (*_PATH_LEVEL, *(() if op.body else _WITH_BODY), *(() if _spawns(op) else _SPAWNS))
    found = [c for c in error_classes() if not issubclass(c, never)]
    return {c.status for c in found if c.status in op.errors or not issubclass(c, _NAMED)}


def _error_response(status: int, classes: list[type[BackstockError]]) -> Schema:
    details = {cls.code: cls.default_detail for cls in reversed(classes)}
    item = {"properties": {"status": {"const": str(status)}, "code": {"enum": sorted(details)}}}
    schema = {"allOf": [ref("ErrorDocument"), {"properties": {"errors": {"items": item}}}]}
    path_level = [issubclass(cls, _PATH_LEVEL) for cls in classes]
    names = [] if all(path_level) else list(_RATE_LIMIT_HEADERS)
    names += ["Retry-After"] if any(issubclass(cls, _RETRIED) for cls in classes) else []
    names += ["Allow"] if any(path_level) else []
    return {
        "description": " ".join(f"`{code}`: {text}" for code, text in sorted(details.items())),
        "headers": {name: ref(name, "headers") for name in names},
        "content": {MEDIA_TYPE: {"schema": schema}},
    }


def _error_responses() -> dict[str, Schema]:
    by_status: dict[int, list[type[BackstockError]]] = {}
    for cls in error_classes():
        by_status.setdefault(cls.status, []).append(cls)
    return {f"Error{s}": _error_response(s, by_status[s]) for s in sorted(by_status)}


_COUNTED = " Present once the request has been counted against the account's rate limit."
_ALLOW: Schema = {**STRING, "pattern": "^[A-Z]+(, [A-Z]+)*$"}
_HEADERS: dict[str, Schema] = {
    name: {"description": text, "required": bool(required), "schema": schema}
    for name, (text, schema, required) in {
        "RateLimit-Limit": ("Requests allowed in the tightest window." + _COUNTED, _SECONDS, 0),
        "RateLimit-Remaining": ("Requests left in that window." + _COUNTED, COUNT, 0),
        "RateLimit-Reset": ("Seconds until that window frees a request." + _COUNTED, _SECONDS, 0),
        "Retry-After": ("Whole seconds to wait before retrying.", _SECONDS, 1),
        "Allow": ("The methods the path serves.", _ALLOW, 1),
    }.items()
}


# ---- parameters and operations ------------------------------------------------------------------
def _filter_description(rules: Mapping[str, FieldRule]) -> str:
    def values(rule: FieldRule) -> str:
        return rule.kind + (f": {', '.join(sorted(rule.choices))}" if rule.choices else "")

    fields = "; ".join(f"`{k}`: {', '.join(sorted(r.operators))} ({values(r)})"
                       for k, r in rules.items())  # fmt: skip
    return "Klaviyo's syntax: `operator(field,value)`, commas and `and(…)` meaning AND; strings " \
        f"in single or double quotes. Fields and operators: {fields}."  # fmt: skip


_PAGING: dict[str, tuple[Schema, str]] = {
    "sort": ({"type": "string", "enum": ["created", "-created"]}, "Creation order."),
    "page[size]": ({"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE}, "Rows per page."),
    "page[cursor]": (STRING, "Opaque; from `links.next` or `links.prev` (a whole link, or a "
                     "leading `=`, as Klaviyo's SDK sends them, are accepted too)."),
    "dry_run": ({"type": "string", "enum": ["true", "false"]},
                "Backstock's extension: `true` checks the job against the catalog and answers "
                "200 with what it would report, writing nothing."),
}  # fmt: skip


def _query_parameter(op: Operation, name: str) -> Schema:
    """A query parameter; arrays are comma-separated (``style: form``, ``explode: false``)."""
    if name.startswith("fields["):
        type_ = name.removeprefix("fields[").removesuffix("]")
        schema = array({"type": "string", "enum": sorted({*op.fields[type_], "id"})}, 1)
        description = f"Sparse fieldset: what each `{type_}` renders."
    elif name == "include":
        schema = array({"type": "string", "enum": [op.include]}, 1)
        description = f"`{op.include}`: render them in `included`."
    elif name == "filter":
        rules = jobs.FILTERS if op.filters == "job" else rules_for(RESOURCES[str(op.filters)])
        schema = {"type": "string", "minLength": 1, "maxLength": MAX_FILTER_LENGTH}
        description = _filter_description(rules)
    else:
        schema, description = _PAGING[name]
    form = {"style": "form", "explode": False} if schema["type"] == "array" else {}
    return {"name": name, "in": "query", "description": description, "schema": schema, **form}


def _path_parameter(op: Operation, name: str) -> Schema:
    if name == "job_id":
        schema: Schema = {"type": "string", "minLength": 1, "examples": [_JOB_EXAMPLE]}
        description = "A job id."
    else:
        owner = next(r for r in RESOURCES.values() if op.path.startswith(f"{r.path}/{{"))
        schema, description = compound_id(owner), f"A catalog {owner.noun} id, percent-encoded."
    parameter = {"name": name, "in": "path", "required": True, "description": description}
    return parameter | {"schema": schema}


def _spawns(op: Operation) -> bool:
    """Whether it takes a job (and so an ``Idempotency-Key``)."""
    return op.body is not None and op.body.split(":")[0] in KINDS


def _idempotency(op: Operation) -> list[Schema]:
    key = {"type": "string", "pattern": f"^[\\x20-\\x7e]{{1,{jobs.MAX_IDEMPOTENCY_KEY}}}$"}
    return [{"name": "Idempotency-Key", "in": "header", "schema": key}] if _spawns(op) else []


def _event(op: Operation) -> Schema:
    """One Server-Sent Event of a job's stream: the job's status, and its document."""
    type_ = next(t for t, k in KINDS.items() if op.path.startswith(f"{k.path}/"))
    document = ref(schema_name(f"{type_}:document"))
    data = {"type": "string", "contentMediaType": MEDIA_TYPE, "contentSchema": document}
    status = {"type": "string", "enum": list(jobs.STATUSES)}
    return {"type": "object", "properties": {"event": status, "data": data}} | {
        "required": ["event", "data"]
    }


def _operation(op: Operation) -> Schema:
    ok: Schema = {"description": op.summary}
    ok["headers"] = {name: ref(name, "headers") for name in _RATE_LIMIT_HEADERS}
    if op.response is not None:
        ok["content"] = {MEDIA_TYPE: {"schema": ref(schema_name(op.response))}}
    elif op.media_type is not None:
        ok["content"] = {op.media_type: {"schema": _event(op)}}
    responses = {str(op.status): ok}
    if "dry_run" in op.query:
        dry = {MEDIA_TYPE: {"schema": ref(schema_name(f"{op.response}-dry-run"))}}
        responses["200"] = {"description": "`dry_run=true`: what it would report", "content": dry}
    responses |= {str(s): ref(f"Error{s}", "responses") for s in sorted(error_statuses(op))}
    path = [_path_parameter(op, name) for name in re.findall(r"\{(\w+)\}", op.path)]
    whose = (
        "Backstock's extension (docs/extensions.md); limits"
        if op.extension
        else ("Klaviyo's rate limits")
    )
    operation: Schema = {
        "operationId": op.id, "summary": op.summary, "tags": [op.tag], "responses": responses,
        "description": f"Scope `{op.scope}`. {whose}: {op.limits}.",
        "security": [{"Klaviyo-API-Key": [op.scope]}],
        "parameters": [ref("revision", "parameters"), *path, *_idempotency(op),
                       *(_query_parameter(op, name) for name in op.query)],
    }  # fmt: skip
    if op.body is not None:
        body = {"schema": ref(schema_name(f"{op.body}-request"))}
        operation["requestBody"] = {"required": True, "content": dict.fromkeys(MEDIA_TYPES, body)}
    if op.extension:
        operation["x-backstock-extension"] = True
    return operation


def _public(route: Any) -> Schema:
    """A route that needs no key: a health probe, this document, or plain text (metrics)."""
    schema = {"type": "object"} if route.path == PATH else ref("Health")
    schema = schema if route.content_type.endswith("json") else STRING
    statuses = _PROBE_STATUSES.get(route.id, (200,))
    content = {route.content_type: {"schema": schema}}
    responses = {str(s): {"description": f"{route.id}: {s}", "content": content} for s in statuses}
    responses["500"] = ref("Error500", "responses")
    tag = "Pages" if route.path.startswith(("/ui", "/docs")) else "Health"
    described = {"operationId": route.id, "summary": route.id, "tags": [tag]}
    return described | {"security": [], "responses": responses}


def _both_spellings(path: str, item: dict[str, Schema]) -> dict[str, dict[str, Schema]]:
    """The path and (but this document's) the trailing-slash spelling of 2023-02-22."""
    if path == PATH:
        return {path: item}
    slashed = {m: {**op, "operationId": op["operationId"] + "_slash"} for m, op in item.items()}
    return {path: item, path + "/": slashed}


def build(routes: Iterable[Any]) -> Schema:
    """The document, as Python objects, for the routes (``Operation``\\s and public ones)."""
    routes = list(routes)
    ops = [route for route in routes if isinstance(route, Operation)]
    paths: dict[str, dict[str, Schema]] = {}
    for route in routes:
        made = _operation(route) if isinstance(route, Operation) else _public(route)
        paths.setdefault(route.path, {})[route.method.lower()] = made
    return {
        "openapi": "3.1.0",
        "info": _INFO,
        "tags": [{"name": t} for t in dict.fromkeys([*(op.tag for op in ops), "Health", "Pages"])],
        "security": [{"Klaviyo-API-Key": []}],
        "paths": {k: v for p, item in paths.items() for k, v in _both_spellings(p, item).items()},
        "components": {
            "securitySchemes": {"Klaviyo-API-Key": _SECURITY},
            "parameters": {"revision": _REVISION},
            "headers": _HEADERS,
            "responses": _error_responses(),
            "schemas": component_schemas(ops),
        },
    }


_SECURITY: Schema = {"type": "apiKey", "in": "header", "name": "Authorization"} | {
    "description": "`Klaviyo-API-Key pk_…`; each operation names its scope."
}
_REVISION: Schema = {
    "name": "revision", "in": "header", "required": True,
    "description": f"`YYYY-MM-DD[.suffix]`, {OLDEST_REVISION} to {NEWEST_REVISION}; null "
    f"attributes are left out of responses before {NULLABLE_SINCE}.",
    "schema": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}(\\.[A-Za-z0-9_-]+)?$"},
}  # fmt: skip
_INFO: Schema = {
    "title": "Backstock", "version": "0.2.0", "license": {"name": "MIT", "identifier": "MIT"},
    "summary": "Klaviyo's Catalogs API, self-hosted.",
    "description": f"Bodies: {' or '.join(MEDIA_TYPES)}; answers: {MEDIA_TYPE}. Unknown query "
    "parameters and body members are a 400; an unknown method on a path a 405 (`Error405`, with "
    "`Allow`); an unknown path a 404. Counted requests' answers carry `RateLimit-*` headers.",
}  # fmt: skip
