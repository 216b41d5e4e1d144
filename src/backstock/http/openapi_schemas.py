"""The schemas of ``/openapi.json`` (``http.openapi``), derived from the resource descriptions
(``domain.resources``: attribute kinds, requiredness and nullability on create and update,
relations) and ``domain.jobs``, for the documents the route table names (``Operation.body``,
``Operation.response``): resource objects, job resources, request bodies (both bulk shapes),
response documents, and the error document."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from backstock.domain import jobs
from backstock.domain.bodies import MAX_ENTRIES
from backstock.domain.ids import CATALOG, INTEGRATION, MAX_EXTERNAL_ID, PREFIX
from backstock.domain.jobs import KINDS
from backstock.domain.pagination import MAX_PAGE_SIZE
from backstock.domain.resources import RESOURCES, Attribute, Relation, Resource
from backstock.http.requests import NULLABLE_SINCE
from backstock.http.routes import Operation

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
_TEXT: Schema = {"type": "string", "pattern": "^[^\\x00]*$"}
_SCALAR: Schema = {"type": ["string", "number", "boolean", "null"]}
_FLAT: Schema = {"anyOf": [_SCALAR, {"type": "array", "items": _SCALAR}]}
_TIME: Schema = {"type": "string", "format": "date-time"}
_URL: Schema = {"type": "string", "format": "uri"}
COUNT: Schema = {"type": "integer", "minimum": 0}
_JOB_ID: Schema = {"type": "string", "pattern": "^[0-9A-HJKMNP-TV-Z]{26}$", "description": "ULID"}


def ref(name: str, kind: str = "schemas") -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def schema_name(key: str) -> str:
    """``catalog-item-bulk-update-job:create`` → ``CatalogItemBulkUpdateJobCreate``."""
    return "".join(part.capitalize() for part in re.split(r"[-:]", key))


def _nullable(schema: Schema) -> Schema:
    """``schema`` or ``null`` (JSON Schema 2020-12, as OpenAPI 3.1 uses it)."""
    types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    enum = {"enum": [*schema["enum"], None]} if "enum" in schema else {}
    return {**schema, "type": [*types, "null"], **enum}


def _object(properties: Mapping[str, Schema], required: Iterable[str] = (), **extra: Any) -> Schema:
    """An object with exactly these members: Backstock refuses unknown members, and renders
    none it does not list."""
    closed = {"type": "object", "properties": dict(properties), "additionalProperties": False}
    return closed | ({"required": sorted(required)} if required else {}) | extra


def array(items: Schema, min_items: int = 0, max_items: int | None = None) -> Schema:
    bounds = {"minItems": min_items, "maxItems": max_items}
    return {"type": "array", "items": items} | {k: v for k, v in bounds.items() if v}


def example_external(res: Resource) -> str:
    """The external id the document's examples name (``tests/contract`` seeds them)."""
    return f"EXAMPLE-{res.noun.upper()}"


def compound_id(res: Resource) -> Schema:
    pattern = f"^{re.escape(PREFIX)}[^\\x00]{{1,{MAX_EXTERNAL_ID}}}$"
    return {"type": "string", "pattern": pattern, "examples": [PREFIX + example_external(res)]} | {
        "description": f"`{PREFIX}EXTERNAL_ID`; the external id is 1 to {MAX_EXTERNAL_ID} "
        "characters, any but NUL (`/` and `:::` included)."
    }


# ---- resources, from their descriptions ------------------------------------------------------


def value_schema(attribute: Attribute) -> Schema:
    """What an attribute holds, as ``domain.bodies`` checks it."""
    kinds: dict[str, Schema] = {
        "text": _TEXT, "number": {"type": "number"}, "boolean": {"type": "boolean"},
        "policy": {"type": "integer", "enum": [0, 1, 2]}, "strings": array(_TEXT),
        "metadata": {"type": "object", "additionalProperties": _FLAT},
        "identity": {**_TEXT, "minLength": 1, "maxLength": MAX_EXTERNAL_ID},
        "integration": {"type": "string", "enum": [INTEGRATION]},
        "catalog": {"type": "string", "enum": [CATALOG]},
    }  # fmt: skip
    return {**kinds[attribute.kind], "description": attribute.summary}


def may_be_null(attribute: Attribute) -> bool:
    """Null once stored: cleared by an update, or left null on create without a default."""
    return attribute.update or (attribute.create == "optional" and attribute.default is None)


def _linkage(target: str) -> Schema:
    members = {"type": {"const": target}, "id": compound_id(RESOURCES[target])}
    return _object(members, members)


def _rendered_relationships(res: Resource) -> Schema | None:
    found: dict[str, Schema] = {}
    for relation in res.relations:
        if relation.rendered == "data":
            found[relation.name] = _object({"data": _linkage(relation.target)}, ["data"])
        elif relation.rendered == "links":
            data = array(_linkage(relation.target)) | {"description": "With `include` only."}
            links = {"links": ref("RelationshipLinks"), "data": data}
            found[relation.name] = _object(links, ["links"])
    return _object(found, found) if found else None


def _resource_object(res: Resource) -> Schema:
    """A resource as rendered: any attribute may be left out (sparse fieldsets; nulls are
    omitted for revisions before the ones that declare them nullable)."""
    attributes = {a.name: _nullable(value_schema(a)) if may_be_null(a) else value_schema(a)
                  for a in res.stored} | dict.fromkeys(res.rendered_times, _TIME)  # fmt: skip
    properties = {"type": {"const": res.type}, "id": compound_id(res)}
    nulls = f"Null ones are left out for revisions before {NULLABLE_SINCE}."
    properties["attributes"] = _object(attributes, description=nulls)
    if (relationships := _rendered_relationships(res)) is not None:
        properties["relationships"] = relationships
    properties["links"] = ref("ResourceLinks")
    return _object(properties, properties)


def request_attributes(res: Resource, action: str) -> Schema:
    """The attributes a create or update accepts: required ones may not be null, the others
    may (null clears on update; on create it means the default)."""
    creating = action == "create"
    accepted = [a for a in res.attributes if (a.create != "absent" if creating else a.update)]
    required = [a.name for a in accepted if creating and a.create == "required"]
    schemas = {a.name: value_schema(a) for a in accepted}
    return _object({k: v if k in required else _nullable(v) for k, v in schemas.items()}, required)


def _relations(res: Resource, action: str) -> list[Relation]:
    if action == "create":
        return [r for r in res.relations if r.create != "absent"]
    return [r for r in res.relations if r.update and action == "update"]


def _relationship_body(relation: Relation, legacy: bool) -> Schema:
    """A relationship in a request (2023-02-22's name: an array of one); ``links`` is accepted
    and ignored."""
    linkage = _linkage(relation.target)
    data = array(linkage, 1, 1) if legacy else array(linkage) if relation.many else linkage
    return _object({"data": data, "links": {}}, ["data"])


def _request_relationships(res: Resource, action: str) -> tuple[Schema, bool]:
    """The ``relationships`` a request may carry, and whether it must."""
    properties: dict[str, Schema] = {}
    needed: list[Schema] = []
    for relation in _relations(res, action):
        names = [relation.name, *([relation.legacy_name] if relation.legacy_name else [])]
        for name in names:
            properties[name] = _relationship_body(relation, legacy=name != relation.name)
        if action == "create" and relation.create == "required":
            needed.append({"anyOf": [{"required": [name]} for name in names]})
    return _object(properties) | ({"allOf": needed} if needed else {}), bool(needed)


def _request_object(res: Resource, action: str) -> Schema:
    properties: dict[str, Schema] = {"type": {"const": res.type}}
    if action != "create":
        properties["id"] = compound_id(res)
    if action != "delete":
        properties["attributes"] = request_attributes(res, action)
    required = list(properties)
    if _relations(res, action):
        properties["relationships"], needed = _request_relationships(res, action)
        required += ["relationships"] if needed else []
    return _object(properties, required)


# ---- jobs --------------------------------------------------------------------------------------

JOB_ATTRIBUTES: dict[str, Schema] = {
    "job_id": {**_JOB_ID, "description": "The job id again, for 2023-02-22 clients."},
    "status": {"type": "string", "enum": list(jobs.STATUSES)}, "created_at": _TIME,
    "total_count": {"type": "integer", "minimum": 1, "maximum": MAX_ENTRIES},
    "completed_count": COUNT, "failed_count": COUNT, "errors": array(ref("JobError")),
    "completed_at": _nullable(_TIME), "expires_at": _nullable(_TIME),
    "retry_of": {**_JOB_ID, "description": "Backstock's extension: the job this one retries."},
}  # fmt: skip
"""The job resource's attributes (``jobs.FIELDS``, as ``tests/unit`` checks); a sparse
fieldset may leave any out, and revisions before nulls were declared the null ones."""


def _job_object(type_: str) -> Schema:
    res = KINDS[type_].resource
    linkage = array(_linkage(res.type)) | {"description": "The request's, in its order."}
    properties = {
        "type": {"const": type_},
        "id": _JOB_ID,
        "attributes": _object(JOB_ATTRIBUTES),
        "relationships": _object({res.plural: _object({"data": linkage}, ["data"])}, [res.plural]),
        "links": ref("ResourceLinks"),
    }
    return _object(properties, properties)


def _job_request(type_: str) -> Schema:
    """Both shapes of a bulk body: ``<plural>: [...]`` (2023-02-22) or ``{data: [...]}``."""
    plural = KINDS[type_].resource.plural
    entries = array(ref(schema_name(f"{type_}:entry")), 1, MAX_ENTRIES)
    shapes = [entries | {"title": "2023-02-22"}, _object({"data": entries}, ["data"])]
    attributes = _object({plural: {"oneOf": shapes}}, [plural])
    data = _object({"type": {"const": type_}, "attributes": attributes}, ["type", "attributes"])
    return _object({"data": data}, ["data"])


# ---- documents, by the names the route table gives them ----------------------------------------


def _document(key: str, included: str | None) -> Schema:
    """A response document: ``TYPE:document``, ``TYPE:collection`` or ``TYPE:identifiers``."""
    type_, role = key.split(":")
    item = _linkage(type_) if role == "identifiers" else ref(schema_name(type_))
    if role == "document":
        links = {"links": ref("ResourceLinks")} if type_ in KINDS else {}
        properties: dict[str, Schema] = {"data": item, **links}
    else:
        properties = {"data": array(item, max_items=MAX_PAGE_SIZE)}
        properties["links"] = ref("CollectionLinks")
    required = list(properties)
    if included is not None:
        properties["included"] = array(ref(schema_name(included)))
    return _object(properties, required)


def _request(key: str) -> Schema:
    type_, role = key.split(":")
    if type_ in KINDS:
        return _job_request(type_)
    if role == "identifiers":
        return _object({"data": array(_linkage(type_))}, ["data"])
    return _object({"data": _request_object(RESOURCES[type_], role)}, ["data"])


def _included(op: Operation) -> str:
    """The type of what ``include`` adds to an operation's document."""
    type_ = str(op.response).split(":")[0]
    if type_ in KINDS:
        return KINDS[type_].resource.type
    return RESOURCES[type_].relation(str(op.include)).target


def component_schemas(ops: list[Operation]) -> dict[str, Schema]:
    """Every schema the operations' documents name, and those they share."""
    schemas = {schema_name(res.type): _resource_object(res) for res in RESOURCES.values()}
    schemas |= {schema_name(type_): _job_object(type_) for type_ in KINDS}
    schemas |= {
        schema_name(f"{t}:entry"): _request_object(k.resource, k.action) for t, k in KINDS.items()
    }
    included = {op.response: _included(op) for op in ops if op.include and op.response}
    documents = dict.fromkeys(op.response for op in ops if op.response is not None)
    schemas |= {schema_name(key): _document(key, included.get(key)) for key in documents}
    schemas |= {
        schema_name(f"{op.body}-request"): _request(op.body) for op in ops if op.body is not None
    }
    for op in ops:
        if "dry_run" in op.query:
            schemas[schema_name(f"{op.response}-dry-run")] = _dry_run(str(op.response))
    return schemas | _FIXED_SCHEMAS


def _dry_run(key: str) -> Schema:
    """``dry_run=true``'s answer: the job as it would end, named by no id and linked nowhere."""
    job = _job_object(key.partition(":")[0])["properties"]
    attributes = _object({**JOB_ATTRIBUTES, "job_id": STRING})
    data = {k: v for k, v in job.items() if k != "links"} | {"id": STRING, "attributes": attributes}
    meta = _object({"dry_run": {"const": True}}, ["dry_run"])
    return _object({"data": _object(data, data), "meta": meta}, ["data", "meta"])


_ERROR: Schema = dict.fromkeys(("code", "title", "detail"), STRING)
_ERROR = {"id": {**STRING, "format": "uuid"}, **_ERROR}
_FIXED_SCHEMAS: dict[str, Schema] = {
    "ResourceLinks": _object({"self": _URL}, ["self"]),
    "RelationshipLinks": _object({"self": _URL, "related": _URL}, ["self", "related"]),
    "CollectionLinks": _object(
        {"self": _URL, "next": _URL, "prev": _URL}, ["self"],
        description="`next` and `prev` are present only when that page exists.",
    ),
    "JobError": _object(
        _ERROR | {"source": _object({"pointer": STRING}, ["pointer"])}, [*_ERROR, "source"],
        description="A resource the job could not apply; `source.pointer` names it in the request.",
    ),
    "Error": _object(
        _ERROR | {"status": {"type": "string", "pattern": "^[45][0-9][0-9]$"},
                  "source": _object({"pointer": STRING, "parameter": STRING}, minProperties=1)},
        [*_ERROR, "status"],
    ),
    "ErrorDocument": _object({"errors": array(ref("Error"), 1)}, ["errors"]),
    "Health": {"type": "object", "required": ["status"], "properties": {
        "status": {"type": "string", "enum": ["ok", "ready", "unavailable"]},
        "checks": {"type": "object", "additionalProperties": STRING},
    }},
}  # fmt: skip
