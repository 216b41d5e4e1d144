"""Backstock's own OpenAPI 3.1 document, served at ``/openapi.json``.

Written by hand, because the routes decode their bodies from raw bytes (msgspec) and FastAPI
cannot see them: this document says what the service really accepts and answers. Names and
limits come from the code they describe (fieldsets, filters, revisions, sizes), and every path
is listed in both spellings, without and with the trailing slash, since both are served.
``tests/contract`` fuzzes the service against it with schemathesis.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from backstock.domain import attributes as rules
from backstock.domain.bulk import MAX_VARIANTS
from backstock.domain.filters import (
    ITEM_FILTERS,
    JOB_FILTERS,
    MAX_FILTER_LENGTH,
    VARIANT_FILTERS,
    FieldRule,
)
from backstock.domain.ids import MAX_EXTERNAL_ID
from backstock.domain.pagination import MAX_PAGE_SIZE
from backstock.http import job_routes
from backstock.http.conventions import NEWEST_REVISION, NULLABLE_SINCE, OLDEST_REVISION
from backstock.http.jsonapi import ITEM_FIELDS, JOB_FIELDS, JOB_TYPE, MEDIA_TYPE, VARIANT_FIELDS

PATH = "/openapi.json"
Schema = dict[str, Any]

_MEDIA_TYPES = (MEDIA_TYPE, "application/json")
_JOBS = job_routes.PATH


def _ref(kind: str, name: str) -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def _schema(name: str) -> Schema:
    return _ref("schemas", name)


def _nullable(schema: Schema) -> Schema:
    """``schema`` or ``null`` (JSON Schema 2020-12, as OpenAPI 3.1 uses it)."""
    nullable = {**schema, "type": [schema["type"], "null"]}
    if "enum" in schema:
        nullable["enum"] = [*schema["enum"], None]
    return nullable


def _object(properties: Mapping[str, Schema], required: Iterable[str] = (), **extra: Any) -> Schema:
    """An object with exactly these members: Backstock refuses unknown members, and renders
    none it does not list."""
    schema: Schema = {"type": "object", "properties": dict(properties)}
    if names := sorted(required):
        schema["required"] = names
    return schema | {"additionalProperties": False} | extra


# ---- shared schemas --------------------------------------------------------------------------

_NO_NUL = "^[^\\x00]*$"
_TEXT: Schema = {"type": "string", "pattern": _NO_NUL}
_SCALAR: Schema = {"type": ["string", "number", "boolean", "null"]}
_URL: Schema = {"type": "string", "format": "uri"}
_TIME: Schema = {"type": "string", "format": "date-time"}
_COMPOUND_ID: Schema = {
    "type": "string",
    "pattern": f"^\\$custom:::\\$default:::[^\\x00]{{1,{MAX_EXTERNAL_ID}}}$",
    "description": "`$custom:::$default:::EXTERNAL_ID`; the external id is 1 to "
    f"{MAX_EXTERNAL_ID} characters, any but NUL (`/` and `:::` included).",
}
_VARIANT_ID: Schema = {**_COMPOUND_ID, "examples": ["$custom:::$default:::SHIRT-M"]}
_ITEM_ID: Schema = {**_COMPOUND_ID, "examples": ["$custom:::$default:::SHIRT"]}

# What a catalog attribute holds, as the domain rules check it (domain/attributes.py).
_ATTRIBUTE_TYPES: dict[str, Schema] = {
    "external_id": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_EXTERNAL_ID,
        "pattern": _NO_NUL,
    },
    "title": _TEXT,
    "description": _TEXT,
    "sku": _TEXT,
    "inventory_policy": {
        "type": "integer",
        "enum": [0, 1, 2],
        "description": "1: hidden from product feeds when out of stock; 0 or 2: shown whatever "
        "the stock.",
    },
    "inventory_quantity": {"type": "number"},
    "price": {"type": "number"},
    "url": _TEXT,
    "image_full_url": _TEXT,
    "image_thumbnail_url": _TEXT,
    "images": {"type": "array", "items": _TEXT},
    "custom_metadata": {
        "type": "object",
        "description": "A flat object (scalars, or arrays of scalars), at most 100 KB as JSON.",
        "additionalProperties": {
            "anyOf": [_SCALAR, {"type": "array", "items": _SCALAR}],
        },
    },
    "published": {"type": "boolean"},
    "integration_type": {"type": "string", "enum": ["$custom"]},
    "catalog_type": {"type": "string", "enum": ["$default"]},
}


def _attributes(accepted: rules.AttributeRules) -> Schema:
    """Request attributes, as the domain's rules take them."""
    properties = {
        name: _nullable(_ATTRIBUTE_TYPES[name])
        if name in accepted.nullable
        else _ATTRIBUTE_TYPES[name]
        for name in accepted.checks
    }
    return _object(properties, accepted.required)


def _rendered_attributes(fields: frozenset[str]) -> Schema:
    """Response attributes: any may be left out (sparse fieldsets; nulls are omitted for
    revisions before the ones that declare them nullable)."""
    properties = {
        name: _nullable(kind) for name, kind in _ATTRIBUTE_TYPES.items() if name in fields
    }
    properties["external_id"] = _ATTRIBUTE_TYPES["external_id"]
    properties["created"] = _TIME
    properties["updated"] = _TIME
    return _object(properties)


def _linkage(kind: str, id_schema: Schema | None = None) -> Schema:
    return _object({"type": {"const": kind}, "id": id_schema or _COMPOUND_ID}, ["type", "id"])


def _to_one(kind: str, id_schema: Schema) -> Schema:
    """A relationship in a request: ``links`` is accepted and ignored."""
    return _object({"data": _linkage(kind, id_schema), "links": {}}, ["data"])


def _single(data: Schema, links: Schema | None = None, included: bool = False) -> Schema:
    properties: dict[str, Schema] = {"data": data}
    if links is not None:
        properties["links"] = links
    if included:
        properties["included"] = {"type": "array", "items": _schema("CatalogVariant")}
    return _object(properties, ["data", "links"] if links is not None else ["data"])


def _collection(item: Schema, included: bool = False) -> Schema:
    properties: dict[str, Schema] = {
        "data": {"type": "array", "maxItems": MAX_PAGE_SIZE, "items": item},
        "links": _schema("CollectionLinks"),
    }
    if included:
        properties["included"] = {"type": "array", "items": _schema("CatalogVariant")}
    return _object(properties, ["data", "links"])


def _request(resource: Schema) -> Schema:
    return _object({"data": resource}, ["data"])


def _schemas() -> dict[str, Schema]:
    categories = _object(
        {
            "data": {"type": "array", "items": _linkage("catalog-category")},
            "links": {},
        },
        ["data"],
    )
    item_links = _object({"self": _URL, "related": _URL}, ["self", "related"])
    return {
        # -- resources as rendered
        "CatalogVariant": _object(
            {
                "type": {"const": "catalog-variant"},
                "id": _VARIANT_ID,
                "attributes": _rendered_attributes(VARIANT_FIELDS),
                "relationships": _object(
                    {"item": _object({"data": _linkage("catalog-item", _ITEM_ID)}, ["data"])},
                    ["item"],
                ),
                "links": _schema("ResourceLinks"),
            },
            ["type", "id", "attributes", "relationships", "links"],
        ),
        "CatalogItem": _object(
            {
                "type": {"const": "catalog-item"},
                "id": _ITEM_ID,
                "attributes": _rendered_attributes(ITEM_FIELDS),
                "relationships": _object(
                    {
                        "variants": _object(
                            {
                                "data": {
                                    "type": "array",
                                    "items": _linkage("catalog-variant", _VARIANT_ID),
                                    "description": "With `include=variants` only.",
                                },
                                "links": item_links,
                            },
                            ["links"],
                        )
                    },
                    ["variants"],
                ),
                "links": _schema("ResourceLinks"),
            },
            ["type", "id", "attributes", "relationships", "links"],
        ),
        "BulkUpdateJob": _object(
            {
                "type": {"const": JOB_TYPE},
                "id": {"type": "string", "examples": ["01JABCDEF0123456789XYZABCD"]},
                "attributes": _object(
                    {
                        "job_id": {
                            "type": "string",
                            "description": "The job id again, for 2023-02-22 clients.",
                        },
                        "status": {
                            "type": "string",
                            "enum": ["queued", "processing", "complete", "cancelled"],
                        },
                        "created_at": _TIME,
                        "total_count": {"type": "integer", "minimum": 1, "maximum": MAX_VARIANTS},
                        "completed_count": {"type": "integer", "minimum": 0},
                        "failed_count": {"type": "integer", "minimum": 0},
                        "completed_at": _nullable(_TIME),
                        "expires_at": _nullable(_TIME),
                        "errors": {"type": "array", "items": _schema("JobError")},
                    }
                ),
                "relationships": _object(
                    {
                        "variants": _object(
                            {
                                "data": {
                                    "type": "array",
                                    "items": _linkage("catalog-variant"),
                                    "description": "Every variant the request named, in order.",
                                }
                            },
                            ["data"],
                        )
                    },
                    ["variants"],
                ),
                "links": _schema("ResourceLinks"),
            },
            ["type", "id", "attributes", "relationships", "links"],
        ),
        "JobError": _object(
            {
                "id": {"type": "string"},
                "code": {"type": "string", "enum": ["not_found", "internal_error"]},
                "title": {"type": "string"},
                "detail": {"type": "string"},
                "source": _object({"pointer": {"type": "string"}}, ["pointer"]),
            },
            ["id", "code", "title", "detail", "source"],
            description="A variant the job could not update; `source.pointer` names it in the "
            "request (`/data/attributes/variants/N`, or `…/variants/data/N`).",
        ),
        "ResourceLinks": _object({"self": _URL}, ["self"]),
        "CollectionLinks": _object(
            {"self": _URL, "next": _URL, "prev": _URL},
            ["self"],
            description="`next` and `prev` are present only when that page exists.",
        ),
        "VariantIdentifier": _linkage("catalog-variant", _VARIANT_ID),
        # -- documents answered
        "CatalogVariantDocument": _single(_schema("CatalogVariant")),
        "CatalogVariantCollection": _collection(_schema("CatalogVariant")),
        "CatalogItemDocument": _single(_schema("CatalogItem"), included=True),
        "CatalogItemCollection": _collection(_schema("CatalogItem"), included=True),
        "VariantIdentifierCollection": _collection(_schema("VariantIdentifier")),
        "BulkUpdateJobDocument": _single(
            _schema("BulkUpdateJob"), _schema("ResourceLinks"), included=True
        ),
        "BulkUpdateJobCollection": _collection(_schema("BulkUpdateJob")),
        # -- documents accepted
        "CatalogVariantCreate": _request(
            _object(
                {
                    "type": {"const": "catalog-variant"},
                    "attributes": _attributes(rules.VARIANT_CREATE),
                    "relationships": _object(
                        {
                            "item": _to_one("catalog-item", _ITEM_ID),
                            "items": _object(
                                {
                                    "data": {
                                        "type": "array",
                                        "items": _linkage("catalog-item", _ITEM_ID),
                                        "minItems": 1,
                                        "maxItems": 1,
                                    },
                                    "links": {},
                                },
                                ["data"],
                                description="The 2023-02-22 spelling of `item`.",
                            ),
                        },
                        minProperties=1,
                        description="The parent item, as `item` (2023-07-15 on) or `items` "
                        "(2023-02-22); `item` wins when both are sent.",
                    ),
                },
                ["type", "attributes", "relationships"],
            )
        ),
        "CatalogVariantUpdate": _request(
            _object(
                {
                    "type": {"const": "catalog-variant"},
                    "id": {**_VARIANT_ID, "description": "The id in the path."},
                    "attributes": _attributes(rules.VARIANT_UPDATE),
                },
                ["type", "id", "attributes"],
            )
        ),
        "CatalogItemCreate": _request(
            _object(
                {
                    "type": {"const": "catalog-item"},
                    "attributes": _attributes(rules.ITEM_CREATE),
                    "relationships": _object({"categories": categories}),
                },
                ["type", "attributes"],
            )
        ),
        "CatalogItemUpdate": _request(
            _object(
                {
                    "type": {"const": "catalog-item"},
                    "id": {**_ITEM_ID, "description": "The id in the path."},
                    "attributes": _attributes(rules.ITEM_UPDATE),
                    "relationships": _object({"categories": categories}),
                },
                ["type", "id", "attributes"],
            )
        ),
        "VariantChange": _object(
            {
                "type": {"const": "catalog-variant"},
                "id": _VARIANT_ID,
                "attributes": _attributes(rules.VARIANT_UPDATE),
            },
            ["type", "id", "attributes"],
        ),
        "BulkUpdateJobCreate": _request(
            _object(
                {
                    "type": {"const": JOB_TYPE},
                    "attributes": _object(
                        {
                            "variants": {
                                "oneOf": [
                                    {**_variant_changes(), "title": "2023-02-22 shape"},
                                    _object(
                                        {"data": _variant_changes()},
                                        ["data"],
                                        title="2023-07-15 shape",
                                    ),
                                ],
                            }
                        },
                        ["variants"],
                    ),
                },
                ["type", "attributes"],
            )
        ),
        # -- errors
        "Error": _object(
            {
                "id": {"type": "string", "format": "uuid"},
                "status": {"type": "string", "pattern": "^[45][0-9][0-9]$"},
                "code": {"type": "string"},
                "title": {"type": "string"},
                "detail": {"type": "string"},
                "source": _object(
                    {
                        "pointer": {
                            "type": "string",
                            "description": "JSON pointer into the request body.",
                        },
                        "parameter": {
                            "type": "string",
                            "description": "The query parameter or header at fault.",
                        },
                    },
                    minProperties=1,
                ),
            },
            ["id", "status", "code", "title", "detail"],
        ),
        "ErrorDocument": _object(
            {"errors": {"type": "array", "minItems": 1, "items": _schema("Error")}},
            ["errors"],
        ),
        "Health": {
            "type": "object",
            "properties": {
                "status": {"type": "string", "enum": ["ok", "ready", "unavailable"]},
                "checks": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            "required": ["status"],
        },
    }


def _variant_changes() -> Schema:
    return {
        "type": "array",
        "minItems": 1,
        "maxItems": MAX_VARIANTS,
        "items": _schema("VariantChange"),
    }


# ---- errors and headers ----------------------------------------------------------------------

_ERRORS: dict[int, tuple[str, tuple[str, ...]]] = {
    400: ("Invalid input: one error per problem, with `source.pointer` or `source.parameter`.",
          ("invalid",)),
    401: ("Missing, malformed, unknown or revoked API key.", ("not_authenticated",)),
    403: ("The key lacks the operation's scope.", ("permission_denied",)),
    404: ("No such resource in this account (another account's ids answer the same).",
          ("not_found",)),
    405: ("The path does not serve this method; `Allow` names the ones it does.",
          ("method_not_allowed",)),
    406: ("`Accept` allows neither `application/vnd.api+json` nor `application/json`.",
          ("not_acceptable",)),
    408: ("The body did not arrive within `BACKSTOCK_BODY_TIMEOUT_SECONDS`.",
          ("request_timeout",)),
    409: ("A resource with this external id already exists.", ("duplicate",)),
    413: ("The body is larger than `BACKSTOCK_MAX_BODY_BYTES` (4 MiB unless configured).",
          ("payload_too_large",)),
    415: ("`Content-Type` is neither `application/vnd.api+json` nor `application/json`.",
          ("unsupported_media_type",)),
    429: ("Rate limit exceeded (`throttled`), or too many jobs queued or processing for the "
          "account (`too_many_jobs`, spawn only). Retry after `Retry-After` seconds.",
          ("throttled", "too_many_jobs")),
    500: ("Unexpected error; the detail is generic and the cause is logged.", ("error",)),
    503: ("The database is unreachable or busy; retry after `Retry-After` seconds.",
          ("service_unavailable",)),
}  # fmt: skip
_RATE_LIMIT_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


def _headers() -> dict[str, Schema]:
    def header(description: str, schema: Schema, required: bool = False) -> Schema:
        return {"description": description, "required": required, "schema": schema}

    note = " Present once the request has been counted against the account's rate limit."
    return {
        "RateLimit-Limit": header(
            "Requests allowed in the tightest window." + note, {"type": "integer", "minimum": 1}
        ),
        "RateLimit-Remaining": header(
            "Requests left in that window." + note, {"type": "integer", "minimum": 0}
        ),
        "RateLimit-Reset": header(
            "Whole seconds until that window frees a request." + note,
            {"type": "integer", "minimum": 1},
        ),
        "Retry-After": header(
            "Whole seconds to wait before retrying.", {"type": "integer", "minimum": 1}, True
        ),
        "Allow": header(
            "The methods the path serves.", {"type": "string", "pattern": "^[A-Z]+(, [A-Z]+)*$"}
        ),
    }


def _error_response(status: int) -> Schema:
    description, codes = _ERRORS[status]
    schema = {
        "allOf": [
            _schema("ErrorDocument"),
            {
                "properties": {
                    "errors": {
                        "items": {
                            "properties": {
                                "status": {"const": str(status)},
                                "code": {"enum": list(codes)},
                            }
                        }
                    }
                }
            },
        ]
    }
    headers: dict[str, Schema] = {}
    if status != 405:  # a 405 is answered before any operation counts the request
        headers = {name: _ref("headers", name) for name in _RATE_LIMIT_HEADERS}
    if status in (429, 503):
        headers["Retry-After"] = _ref("headers", "Retry-After")
    if status == 405:
        headers["Allow"] = _ref("headers", "Allow")
    response: Schema = {"description": description, "content": {MEDIA_TYPE: {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


def _responses() -> dict[str, Schema]:
    return {f"Error{status}": _error_response(status) for status in _ERRORS}


# ---- parameters ------------------------------------------------------------------------------


def _filter_description(rules: Mapping[str, FieldRule]) -> str:
    fields = "; ".join(
        f"`{name}`: {', '.join(sorted(rule.operators))}"
        + (f" ({', '.join(sorted(rule.choices))})" if rule.choices else "")
        for name, rule in rules.items()
    )
    return (
        "Klaviyo's filter syntax: `operator(field,value)`, commas and `and(…)` meaning AND; "
        f"strings in single or double quotes. Fields and operators: {fields}."
    )


def _fields_parameter(kind: str, names: Iterable[str]) -> Schema:
    return {
        "name": f"fields[{kind}]",
        "in": "query",
        "description": f"Sparse fieldset: the attributes of each `{kind}` to render.",
        "style": "form",
        "explode": False,
        "schema": {
            "type": "array",
            "minItems": 1,
            "items": {"type": "string", "enum": sorted({*names, "id"})},
        },
    }


def _parameters() -> dict[str, Schema]:
    def query(name: str, schema: Schema, description: str) -> Schema:
        return {"name": name, "in": "query", "description": description, "schema": schema}

    def path(name: str, schema: Schema, description: str) -> Schema:
        return {
            "name": name,
            "in": "path",
            "required": True,
            "description": description,
            "schema": schema,
        }

    filter_schema = {"type": "string", "minLength": 1, "maxLength": MAX_FILTER_LENGTH}
    return {
        "revision": {
            "name": "revision",
            "in": "header",
            "required": True,
            "description": f"API revision, `YYYY-MM-DD[.suffix]`, from {OLDEST_REVISION} to "
            f"{NEWEST_REVISION}. Anything else is a 400 with `source.parameter: revision`. "
            f"Before {NULLABLE_SINCE} null attributes are left out of responses.",
            "schema": {
                "type": "string",
                "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}(\\.[A-Za-z0-9_-]+)?$",
                "examples": [str(NEWEST_REVISION), str(OLDEST_REVISION)],
            },
        },
        "VariantId": path(
            "id", {**_VARIANT_ID, "minLength": 1}, "A catalog variant id, percent-encoded."
        ),
        "ItemId": path("id", {**_ITEM_ID, "minLength": 1}, "A catalog item id, percent-encoded."),
        "JobId": path(
            "job_id",
            {"type": "string", "minLength": 1, "examples": ["01JABCDEF0123456789XYZABCD"]},
            "A bulk update job id.",
        ),
        "VariantFields": _fields_parameter("catalog-variant", VARIANT_FIELDS),
        "ItemFields": _fields_parameter("catalog-item", ITEM_FIELDS),
        "JobFields": _fields_parameter(JOB_TYPE, JOB_FIELDS),
        "IncludeVariants": {
            "name": "include",
            "in": "query",
            "description": "`variants`: render the related variants in `included`.",
            "style": "form",
            "explode": False,
            "schema": {"type": "array", "minItems": 1, "items": {"enum": ["variants"]}},
        },
        "VariantFilter": query("filter", filter_schema, _filter_description(VARIANT_FILTERS)),
        "ItemFilter": query("filter", filter_schema, _filter_description(ITEM_FILTERS)),
        "JobFilter": query("filter", filter_schema, _filter_description(JOB_FILTERS)),
        "Sort": query(
            "sort", {"type": "string", "enum": ["created", "-created"]}, "Creation order."
        ),
        "PageCursor": query(
            "page[cursor]",
            {"type": "string"},
            "Opaque; taken from `links.next` or `links.prev` (a whole link, or a leading `=`, "
            "as Klaviyo's SDK sends them, are accepted too).",
        ),
        "PageSize": query(
            "page[size]",
            {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
            f"Rows per page, {MAX_PAGE_SIZE} unless given.",
        ),
    }


# ---- operations ------------------------------------------------------------------------------


def _operation(
    operation_id: str,
    summary: str,
    tag: str,
    success: tuple[int, str | None],
    parameters: Iterable[str] = (),
    body: str | None = None,
    errors: Iterable[int] = (),
    scope: str = "catalogs:read",
) -> Schema:
    """An API operation: the revision header and the key always; ``errors`` beyond those
    every operation can answer."""
    status, document = success
    limit_headers = {name: _ref("headers", name) for name in _RATE_LIMIT_HEADERS}
    ok: Schema = {"description": summary, "headers": limit_headers}
    if document is not None:
        ok["content"] = {MEDIA_TYPE: {"schema": _schema(document)}}
    every = {400, 401, 403, 406, 429, 500, 503, *errors}
    if body is not None:
        every |= {408, 413, 415}
    operation: Schema = {
        "operationId": operation_id,
        "summary": summary,
        "tags": [tag],
        "description": f"Scope `{scope}`.",
        "parameters": [_ref("parameters", "revision")]
        + [_ref("parameters", name) for name in parameters],
        "responses": {str(status): ok}
        | {str(code): _ref("responses", f"Error{code}") for code in sorted(every)},
    }
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {kind: {"schema": _schema(body)} for kind in _MEDIA_TYPES},
        }
    return operation


_LIST = ("Sort", "PageCursor", "PageSize")
_VARIANTS, _ITEMS, _JOBS_TAG, _HEALTH = "Catalog variants", "Catalog items", "Bulk jobs", "Health"
_WRITE = "catalogs:write"


def _api_paths() -> dict[str, Schema]:
    return {
        "/api/catalog-variants": {
            "get": _operation(
                "get_catalog_variants", "List variants", _VARIANTS,
                (200, "CatalogVariantCollection"), ("VariantFields", "VariantFilter", *_LIST),
            ),
            "post": _operation(
                "create_catalog_variant", "Create a variant of an existing item", _VARIANTS,
                (201, "CatalogVariantDocument"), ("VariantFields",), "CatalogVariantCreate",
                (404, 409), _WRITE,
            ),
        },
        "/api/catalog-variants/{id}": {
            "parameters": [_ref("parameters", "VariantId")],
            "get": _operation(
                "get_catalog_variant", "Get a variant", _VARIANTS,
                (200, "CatalogVariantDocument"), ("VariantFields",), errors=(404,),
            ),
            "patch": _operation(
                "update_catalog_variant", "Update a variant", _VARIANTS,
                (200, "CatalogVariantDocument"), ("VariantFields",), "CatalogVariantUpdate",
                (404,), _WRITE,
            ),
            "delete": _operation(
                "delete_catalog_variant", "Delete a variant", _VARIANTS, (204, None),
                errors=(404,), scope=_WRITE,
            ),
        },
        "/api/catalog-items": {
            "get": _operation(
                "get_catalog_items", "List items", _ITEMS, (200, "CatalogItemCollection"),
                ("ItemFields", "VariantFields", "IncludeVariants", "ItemFilter", *_LIST),
            ),
            "post": _operation(
                "create_catalog_item", "Create an item", _ITEMS, (201, "CatalogItemDocument"),
                ("ItemFields",), "CatalogItemCreate", (409,), _WRITE,
            ),
        },
        "/api/catalog-items/{id}": {
            "parameters": [_ref("parameters", "ItemId")],
            "get": _operation(
                "get_catalog_item", "Get an item", _ITEMS, (200, "CatalogItemDocument"),
                ("ItemFields", "VariantFields", "IncludeVariants"), errors=(404,),
            ),
            "patch": _operation(
                "update_catalog_item", "Update an item", _ITEMS, (200, "CatalogItemDocument"),
                ("ItemFields",), "CatalogItemUpdate", (404,), _WRITE,
            ),
            "delete": _operation(
                "delete_catalog_item", "Delete an item and its variants", _ITEMS, (204, None),
                errors=(404,), scope=_WRITE,
            ),
        },
        "/api/catalog-items/{id}/variants": {
            "parameters": [_ref("parameters", "ItemId")],
            "get": _operation(
                "get_variants_for_catalog_item", "List an item's variants", _ITEMS,
                (200, "CatalogVariantCollection"), ("VariantFields", "VariantFilter", *_LIST),
                errors=(404,),
            ),
        },
        "/api/catalog-items/{id}/relationships/variants": {
            "parameters": [_ref("parameters", "ItemId")],
            "get": _operation(
                "get_variant_ids_for_catalog_item", "List the ids of an item's variants", _ITEMS,
                (200, "VariantIdentifierCollection"), ("VariantFilter", *_LIST), errors=(404,),
            ),
        },
        _JOBS: {
            "get": _operation(
                "get_bulk_update_variants_jobs", "List bulk update jobs, newest first",
                _JOBS_TAG, (200, "BulkUpdateJobCollection"),
                ("JobFields", "JobFilter", "PageCursor"),
            ),
            "post": _operation(
                "bulk_update_catalog_variants",
                f"Spawn a job updating 1 to {MAX_VARIANTS} variants; 202 means it is committed",
                _JOBS_TAG, (202, "BulkUpdateJobDocument"), ("JobFields",), "BulkUpdateJobCreate",
                scope=_WRITE,
            ),
        },
        _JOBS + "/{job_id}": {
            "parameters": [_ref("parameters", "JobId")],
            "get": _operation(
                "get_bulk_update_variants_job", "Get a bulk update job", _JOBS_TAG,
                (200, "BulkUpdateJobDocument"), ("JobFields", "VariantFields", "IncludeVariants"),
                errors=(404,),
            ),
        },
    }  # fmt: skip


def _health_paths() -> dict[str, Schema]:
    health = {MEDIA_TYPE: {"schema": _schema("Health")}}

    def probe(operation_id: str, summary: str, extra: dict[str, Schema]) -> dict[str, Schema]:
        return {
            "get": {
                "operationId": operation_id,
                "summary": summary,
                "tags": [_HEALTH],
                "security": [],
                "responses": {
                    "200": {"description": summary, "content": health},
                    "500": _ref("responses", "Error500"),
                }
                | extra,
            }
        }

    unavailable = {"503": {"description": "The database does not answer.", "content": health}}
    return {
        "/healthz": probe("healthz", "The process is up", {}),
        "/readyz": probe("readyz", "The database answers", unavailable),
    }


def _both_spellings(paths: dict[str, Schema]) -> dict[str, Schema]:
    """Every path again with a trailing slash (the 2023-02-22 spelling), served alike."""
    both: dict[str, Schema] = {}
    for path, item in paths.items():
        both[path] = item
        slashed = copy.deepcopy(item)
        for operation in slashed.values():
            if isinstance(operation, dict) and "operationId" in operation:
                operation["operationId"] += "_slash"
        both[path + "/"] = slashed
    return both


def build() -> Schema:
    """The document, as Python objects."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Backstock",
            "version": "0.1.0",
            "summary": "Klaviyo's Catalogs API, self-hosted: catalog items, variants and "
            "catalog-variant bulk update jobs.",
            "description": (
                "Every path answers with and without a trailing slash. Bodies may be "
                "`application/vnd.api+json` or `application/json` (or carry no Content-Type); "
                "answers are `application/vnd.api+json`. Unknown query parameters and unknown "
                "body members are a 400. Any path answers an unknown method with a 405 "
                "(`#/components/responses/Error405`, with `Allow`) and an unknown path with a "
                "404. With rate limits on, responses of counted requests carry "
                "`RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`."
            ),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": [{"name": tag} for tag in (_ITEMS, _VARIANTS, _JOBS_TAG, _HEALTH)],
        "security": [{"Klaviyo-API-Key": []}],
        "paths": _both_spellings(_api_paths())
        | _both_spellings(_health_paths())
        | {
            PATH: {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "tags": [_HEALTH],
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "This document",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            }
        },
        "components": {
            "securitySchemes": {
                "Klaviyo-API-Key": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`Authorization: Klaviyo-API-Key pk_…`; scopes "
                    "`catalogs:read` (GET) and `catalogs:write` (the rest).",
                }
            },
            "parameters": _parameters(),
            "headers": _headers(),
            "responses": _responses(),
            "schemas": _schemas(),
        },
    }


@cache
def encoded() -> bytes:
    return orjson.dumps(build())


async def serve(_request: Request) -> Response:
    """``GET /openapi.json``: no key needed."""
    return Response(encoded(), media_type="application/json")
