"""Every artifact derived from the resource descriptions (``domain.resources``) agrees with
them, for every resource: the table columns, the msgspec body structs, the rendered fields, the
filter rules and ``/openapi.json`` (its schemas, its operations, and its error statuses, which
come from the error tree)."""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
import pytest

from backstock.domain import bodies, jobs
from backstock.domain.errors import BackstockError, InvalidBody
from backstock.domain.filters import rules_for
from backstock.domain.ids import compound_id
from backstock.domain.resources import RESOURCES, Attribute, Resource
from backstock.http import openapi_schemas as openapi
from backstock.http.app import _openapi_document
from backstock.http.render import Renderer
from backstock.http.routes import operations
from backstock.storage.schema import COLUMN_TYPES, TABLES

DOCUMENT = orjson.loads(_openapi_document())
SCHEMAS = DOCUMENT["components"]["schemas"]
EVERY = pytest.mark.parametrize("res", list(RESOURCES.values()), ids=list(RESOURCES))
BOOKKEEPING = {"pk", "account_id", "created", "updated", "update_count"}
"""Columns every catalog table has besides the attributes."""

# JSON types and valid sample values of each kind of attribute.
JSON_TYPE = {
    "text": "string", "number": "number", "policy": "integer", "boolean": "boolean",
    "strings": "array", "metadata": "object", "identity": "string", "integration": "string",
    "catalog": "string",
}  # fmt: skip
SAMPLE = {
    "text": "t", "number": 1.5, "policy": 1, "boolean": True, "strings": ["a"],
    "metadata": {"k": "v"}, "identity": "X-1", "integration": "$custom", "catalog": "$default",
}  # fmt: skip


def accepted(res: Resource, action: str) -> dict[str, Attribute]:
    if action == "create":
        return {a.name: a for a in res.attributes if a.create != "absent"}
    return {a.name: a for a in res.attributes if a.update}


def required(res: Resource, action: str) -> set[str]:
    return {a.name for a in res.attributes if action == "create" and a.create == "required"}


# ---- storage ---------------------------------------------------------------------------------


@EVERY
def test_stored_attributes_are_exactly_the_tables_attribute_columns(res: Resource) -> None:
    table = TABLES[res.type]
    parents = {f"{r.name}_pk" for r in res.relations if r.storage == "parent"}
    columns = {c.name: c for c in table.columns if c.name not in BOOKKEEPING | parents}
    assert set(columns) == {a.name for a in res.stored}
    for attribute in res.stored:
        if attribute.kind != "identity":
            assert isinstance(columns[attribute.name].type, COLUMN_TYPES[attribute.kind])
    assert {c.name for c in table.columns} >= BOOKKEEPING | parents


# ---- request bodies --------------------------------------------------------------------------


def _struct_fields(type_: str, action: str) -> dict[str, msgspec.structs.FieldInfo]:
    document = bodies._single_decoder(type_, action).type
    data = {f.name: f for f in msgspec.structs.fields(document)}["data"].type
    attributes = {f.name: f for f in msgspec.structs.fields(data)}["attributes"].type
    return {f.name: f for f in msgspec.structs.fields(attributes)}


@EVERY
@pytest.mark.parametrize("action", ["create", "update"])
def test_body_structs_accept_exactly_the_described_attributes(res: Resource, action: str) -> None:
    fields = _struct_fields(res.type, action)
    assert set(fields) == set(accepted(res, action))
    assert {name for name, f in fields.items() if f.required} == required(res, action)


def _create(res: Resource, attributes: dict[str, Any]) -> bytes:
    data: dict[str, Any] = {"type": res.type, "attributes": attributes}
    needed = [r for r in res.relations if r.create == "required"]
    if needed:
        data["relationships"] = {
            r.name: {"data": {"type": r.target, "id": compound_id("P")}} for r in needed
        }
    return orjson.dumps({"data": data})


@EVERY
def test_creates_need_the_required_attributes_and_take_no_others(res: Resource) -> None:
    given = {name: SAMPLE[a.kind] for name, a in accepted(res, "create").items()}
    entry = bodies.decode_create(res, _create(res, given))
    assert set(entry.attributes) == set(given)
    minimal = {name: given[name] for name in required(res, "create")}
    bodies.decode_create(res, _create(res, minimal))
    for name in required(res, "create"):
        with pytest.raises(InvalidBody):
            bodies.decode_create(res, _create(res, {k: v for k, v in minimal.items() if k != name}))
    for name in {a.name for a in res.attributes} - set(given) | {"unknown"}:
        with pytest.raises(InvalidBody):
            bodies.decode_create(res, _create(res, {**minimal, name: "x"}))


# ---- rendering and filters -------------------------------------------------------------------


@EVERY
def test_fields_are_the_rendered_attribute_names(res: Resource) -> None:
    record: dict[str, Any] = {a.name: SAMPLE[a.kind] for a in res.stored}
    record |= {"pk": 1, "external_id": "X", "created": 0, "updated": 0}
    record |= {f"{r.name}_external_id": "P" for r in res.relations if r.rendered == "data"}
    rendered = Renderer("http://testserver", {}).resource(res, record)
    assert set(rendered["attributes"]) == res.fields
    assert rendered["id"] == compound_id("X")


@EVERY
def test_filter_rules_are_the_described_filters(res: Resource) -> None:
    rules = rules_for(res)
    assert set(rules) == {f.name for f in res.filters}
    for described in res.filters:
        assert rules[described.name].operators == {described.operator}
        assert rules[described.name].kind == described.kind


# ---- /openapi.json -----------------------------------------------------------------------------


def _types(schema: dict[str, Any]) -> set[str]:
    found = schema["type"]
    return set(found) if isinstance(found, list) else {found}


def _request_attributes(key: str) -> dict[str, Any]:
    schema: dict[str, Any] = SCHEMAS[openapi.schema_name(f"{key}-request")]
    attributes: dict[str, Any] = schema["properties"]["data"]["properties"]["attributes"]
    return attributes


@EVERY
@pytest.mark.parametrize("action", ["create", "update"])
def test_request_schemas_list_each_attribute_with_its_type_and_requiredness(
    res: Resource, action: str
) -> None:
    attributes = _request_attributes(f"{res.type}:{action}")
    entry = SCHEMAS[openapi.schema_name(f"{res.type}-bulk-{action}-job:entry")]
    assert entry["properties"]["attributes"] == attributes  # single and bulk bodies agree
    assert set(attributes["properties"]) == set(accepted(res, action))
    assert set(attributes.get("required", [])) == required(res, action)
    assert attributes["additionalProperties"] is False
    for name, attribute in accepted(res, action).items():
        types = _types(attributes["properties"][name])
        assert JSON_TYPE[attribute.kind] in types, name
        assert ("null" in types) == (name not in required(res, action)), name


@EVERY
def test_response_schemas_list_each_rendered_attribute(res: Resource) -> None:
    rendered = SCHEMAS[openapi.schema_name(res.type)]["properties"]["attributes"]
    assert set(rendered["properties"]) == res.fields
    assert "required" not in rendered  # a sparse fieldset may leave any out
    for attribute in res.stored:
        types = _types(rendered["properties"][attribute.name])
        assert JSON_TYPE[attribute.kind] in types
        assert ("null" in types) == openapi.may_be_null(attribute), attribute.name


def test_job_schemas_list_the_job_fields() -> None:
    # Every name a fieldset may list, and those rendered only when set (``retry_of``).
    assert set(openapi.JOB_ATTRIBUTES) >= jobs.FIELDS
    for type_, kind in jobs.KINDS.items():
        job = SCHEMAS[openapi.schema_name(type_)]["properties"]
        assert set(job["attributes"]["properties"]) == set(openapi.JOB_ATTRIBUTES)
        assert job["attributes"]["properties"]["status"]["enum"] == list(jobs.STATUSES)
        assert list(job["relationships"]["properties"]) == [kind.resource.plural]
        shapes = SCHEMAS[openapi.schema_name(f"{type_}:create-request")]["properties"]["data"]
        member = shapes["properties"]["attributes"]["properties"][kind.resource.plural]
        assert [s["type"] for s in member["oneOf"]] == ["array", "object"]
        assert member["oneOf"][0]["maxItems"] == bodies.MAX_ENTRIES


def test_every_route_is_documented_with_its_scope_and_status() -> None:
    ops = operations()
    assert len([op for op in ops if not op.extension]) == 54  # Klaviyo's, every one
    for op in ops:
        for path, suffix in ((op.path, ""), (op.path + "/", "_slash")):
            documented = DOCUMENT["paths"][path][op.method.lower()]
            assert documented["operationId"] == op.id + suffix
            assert documented["security"] == [{"Klaviyo-API-Key": [op.scope]}]
            assert str(op.status) in documented["responses"]
            assert ("requestBody" in documented) == (op.body is not None)
            query = {p["name"] for p in documented["parameters"] if p.get("in") == "query"}
            assert query == set(op.query)
            for name in op.query:
                if name.startswith("fields["):
                    parameter = next(p for p in documented["parameters"] if p.get("name") == name)
                    names = set(parameter["schema"]["items"]["enum"])
                    assert names == op.fields[name[7:-1]] | {"id"}
    documented_ops = {
        operation["operationId"]
        for item in DOCUMENT["paths"].values()
        for operation in item.values()
    }
    assert {op.id for op in ops} <= documented_ops


def _classes() -> list[type[BackstockError]]:
    found: list[type[BackstockError]] = [BackstockError]
    for cls in found:
        found.extend(cls.__subclasses__())
    return found


def test_every_documented_error_status_comes_from_the_error_tree() -> None:
    tree: dict[int, set[str]] = {}
    for cls in _classes():
        tree.setdefault(cls.status, set()).add(cls.code)
    responses = DOCUMENT["components"]["responses"]
    assert set(responses) == {f"Error{status}" for status in tree}
    for status, codes in tree.items():
        schema = responses[f"Error{status}"]["content"]["application/vnd.api+json"]["schema"]
        error = schema["allOf"][1]["properties"]["errors"]["items"]["properties"]
        assert error["status"] == {"const": str(status)}
        assert set(error["code"]["enum"]) == codes
    assert "Allow" in responses["Error405"]["headers"]
    assert "Retry-After" in responses["Error429"]["headers"]
    for item in DOCUMENT["paths"].values():
        for operation in item.values():
            for status, response in operation["responses"].items():
                if int(status) >= 400 and not operation["operationId"].startswith("readyz"):
                    assert response == {"$ref": f"#/components/responses/Error{status}"}
                    assert int(status) in tree
    for op in operations():
        documented = DOCUMENT["paths"][op.path][op.method.lower()]["responses"]
        statuses = {int(s) for s in documented if int(s) >= 400}
        assert set(op.errors) <= statuses
        assert ({408, 413, 415} <= statuses) == (op.body is not None)
        assert 405 not in statuses  # a path's, documented once (components/responses)
