"""Every way a write can be refused: status, code, exact ``source``, and nothing written."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.support import (
    Api,
    all_item_ids,
    all_variant_ids,
    assert_error,
    cid,
    item_body,
    item_path,
    ok,
    variant_body,
    variant_path,
)

BIG_METADATA = {"blob": "x" * (100 * 1024)}

BAD_VARIANT_ATTRIBUTES = [
    ("price", "9.5"),
    ("price", True),
    ("price", [1]),
    ("inventory_quantity", "3"),
    ("inventory_quantity", False),
    ("inventory_policy", 3),
    ("inventory_policy", -1),
    ("inventory_policy", 1.5),
    ("inventory_policy", True),
    ("inventory_policy", "1"),
    ("images", "https://cdn.example/1.png"),
    ("images", [1, 2]),
    ("images", [["nested"]]),
    ("images", {"0": "x"}),
    ("custom_metadata", {"nested": {"a": 1}}),
    ("custom_metadata", {"list_of_objects": [{"a": 1}]}),
    ("custom_metadata", BIG_METADATA),
    ("custom_metadata", ["not", "an", "object"]),
    ("custom_metadata", "{}"),
    ("published", "true"),
    ("published", 1),
    ("title", 5),
    ("title", None),
    ("sku", None),
    ("price", None),
    ("url", {"href": "x"}),
    ("external_id", ""),
    ("external_id", 7),
    ("external_id", "x" * 513),
    ("integration_type", "$shopify"),
    ("catalog_type", "other"),
    ("color", "red"),
    ("id", "x"),
]


def _item(api: Api, external: str = "I") -> None:
    ok(api.post("/api/catalog-items", item_body(external)), 201)


def test_bad_variant_attribute_on_create(api: Api, subtests: pytest.Subtests) -> None:
    _item(api)
    for name, value in BAD_VARIANT_ATTRIBUTES:
        with subtests.test(name=name, value=value):
            response = api.post("/api/catalog-variants", variant_body("V", "I", **{name: value}))
            assert_error(response, 400, "invalid", pointer=f"/data/attributes/{name}")
    assert all_variant_ids(api) == []


def test_bad_variant_attribute_on_patch(api: Api, subtests: pytest.Subtests) -> None:
    _item(api)
    before = ok(api.post("/api/catalog-variants", variant_body("V", "I")), 201)["data"]
    for name, value in BAD_VARIANT_ATTRIBUTES:
        if value is None and name not in ("external_id", "integration_type", "catalog_type"):
            continue  # null is a valid update of every updatable attribute
        with subtests.test(name=name, value=value):
            body = {
                "data": {"type": "catalog-variant", "id": cid("V"), "attributes": {name: value}}
            }
            response = api.patch(variant_path(cid("V")), body)
            assert_error(response, 400, "invalid", pointer=f"/data/attributes/{name}")
    assert ok(api.get(variant_path(cid("V"))))["data"] == before


VARIANT_REQUIRED = [
    "external_id",
    "title",
    "description",
    "sku",
    "inventory_quantity",
    "price",
    "url",
]


def test_missing_required_variant_attribute(api: Api, subtests: pytest.Subtests) -> None:
    _item(api)
    for name in VARIANT_REQUIRED:
        with subtests.test(name=name):
            body = variant_body("V", "I")
            del body["data"]["attributes"][name]
            response = api.post("/api/catalog-variants", body)
            errors = assert_error(response, 400, "invalid", pointer=f"/data/attributes/{name}")
            assert name in errors[0]["detail"]
            assert all_variant_ids(api) == []


def test_missing_required_item_attribute(api: Api, subtests: pytest.Subtests) -> None:
    for name in ["external_id", "title", "description", "url"]:
        with subtests.test(name=name):
            body = item_body("I")
            del body["data"]["attributes"][name]
            response = api.post("/api/catalog-items", body)
            assert_error(response, 400, "invalid", pointer=f"/data/attributes/{name}")
            assert all_item_ids(api) == []


BAD_ITEM_ATTRIBUTES = [
    ("price", "42"),
    ("price", False),
    ("images", "x"),
    ("custom_metadata", {"a": {"b": 1}}),
    ("custom_metadata", BIG_METADATA),
    ("published", "no"),
    ("sku", "S"),
    ("inventory_policy", 0),
    ("inventory_quantity", 1),
    ("title", None),
    ("external_id", ""),
    ("color", "red"),
]


def test_bad_item_attribute_on_create(api: Api, subtests: pytest.Subtests) -> None:
    for name, value in BAD_ITEM_ATTRIBUTES:
        with subtests.test(name=name, value=value):
            response = api.post("/api/catalog-items", item_body("I", **{name: value}))
            assert_error(response, 400, "invalid", pointer=f"/data/attributes/{name}")
            assert all_item_ids(api) == []


def test_bad_item_attribute_on_patch(api: Api, subtests: pytest.Subtests) -> None:
    before = ok(api.post("/api/catalog-items", item_body("I")), 201)["data"]
    for name, value in BAD_ITEM_ATTRIBUTES:
        if value is None:
            continue
        with subtests.test(name=name, value=value):
            body = {"data": {"type": "catalog-item", "id": cid("I"), "attributes": {name: value}}}
            response = api.patch(item_path(cid("I")), body)
            assert_error(response, 400, "invalid", pointer=f"/data/attributes/{name}")
            assert ok(api.get(item_path(cid("I"))))["data"] == before


def test_every_problem_is_reported_at_once(api: Api) -> None:
    _item(api)
    body = variant_body("V", "I", price="1", inventory_policy=7, color="red")
    del body["data"]["attributes"]["sku"]
    response = api.post("/api/catalog-variants", body)
    assert_error(
        response,
        400,
        "invalid",
        pointer=[
            "/data/attributes/price",
            "/data/attributes/inventory_policy",
            "/data/attributes/color",
            "/data/attributes/sku",
        ],
    )


def test_metadata_just_under_the_limit_is_accepted(api: Api) -> None:
    _item(api)
    overhead = len(orjson.dumps({"blob": ""}))
    metadata = {"blob": "x" * (100 * 1024 - overhead)}
    body = variant_body("V", "I", custom_metadata=metadata)
    data = ok(api.post("/api/catalog-variants", body), 201)["data"]
    assert data["attributes"]["custom_metadata"] == metadata


# ---- the document around the attributes ------------------------------------------------------


MALFORMED_VARIANT_DOCUMENTS: list[tuple[Any, str]] = [
    (lambda d: d["data"].update(type="catalog-item"), "/data/type"),
    (lambda d: d["data"].update(type="catalog-variants"), "/data/type"),
    (lambda d: d["data"].pop("type"), "/data/type"),
    (lambda d: d["data"].pop("attributes"), "/data/attributes"),
    (lambda d: d["data"].update(attributes=[]), "/data/attributes"),
    (lambda d: d["data"].update(id=cid("V")), "/data/id"),
    (lambda d: d["data"].pop("relationships"), "/data/relationships"),
    (lambda d: d["data"].update(relationships={}), "/data/relationships/item"),
    (lambda d: d["data"]["relationships"].update(other={}), "/data/relationships/other"),
    (lambda d: d["data"]["relationships"]["item"].pop("data"), "/data/relationships/item/data"),
    (
        lambda d: d["data"]["relationships"]["item"]["data"].update(type="catalog-variant"),
        "/data/relationships/item/data/type",
    ),
    (
        lambda d: d["data"]["relationships"]["item"]["data"].update(id="I"),
        "/data/relationships/item/data/id",
    ),
    (lambda d: d.update(data=[]), "/data"),
    (lambda d: d.pop("data"), "/data"),
]


def test_malformed_variant_document(api: Api, subtests: pytest.Subtests) -> None:
    _item(api)
    for mutate, pointer in MALFORMED_VARIANT_DOCUMENTS:
        with subtests.test(pointer=pointer):
            body = variant_body("V", "I")
            mutate(body)
            response = api.post("/api/catalog-variants", body)
            assert_error(response, 400, "invalid", pointer=pointer)
            assert all_variant_ids(api) == []


def test_wrong_type_on_item_create(api: Api) -> None:
    body = item_body("I")
    body["data"]["type"] = "catalog-variant"
    assert_error(api.post("/api/catalog-items", body), 400, "invalid", pointer="/data/type")
    assert all_item_ids(api) == []


MALFORMED_PATCHES: list[tuple[dict[str, Any], str]] = [
    ({"type": "catalog-variant", "id": cid("OTHER"), "attributes": {"price": 1}}, "/data/id"),
    ({"type": "catalog-variant", "id": "OTHER", "attributes": {"price": 1}}, "/data/id"),
    ({"type": "catalog-variant", "attributes": {"price": 1}}, "/data/id"),
    ({"type": "catalog-item", "id": cid("V"), "attributes": {"price": 1}}, "/data/type"),
    ({"id": cid("V"), "attributes": {"price": 1}}, "/data/type"),
    ({"type": "catalog-variant", "id": cid("V")}, "/data/attributes"),
    ({"type": "catalog-variant", "id": cid("V"), "attributes": None}, "/data/attributes"),
]


def test_malformed_variant_patch(api: Api, subtests: pytest.Subtests) -> None:
    _item(api)
    ok(api.post("/api/catalog-variants", variant_body("OTHER", "I")), 201)
    before = ok(api.post("/api/catalog-variants", variant_body("V", "I")), 201)["data"]
    for data, pointer in MALFORMED_PATCHES:
        with subtests.test(data=data):
            response = api.patch(variant_path(cid("V")), {"data": data})
            assert_error(response, 400, "invalid", pointer=pointer)
            assert ok(api.get(variant_path(cid("V"))))["data"] == before
            assert ok(api.get(variant_path(cid("OTHER"))))["data"]["attributes"]["price"] == 9.5


def test_item_patch_id_mismatch(api: Api) -> None:
    _item(api, "A")
    before = ok(api.get(item_path(cid("A"))))["data"]
    body = {"data": {"type": "catalog-item", "id": cid("B"), "attributes": {"title": "x"}}}
    assert_error(api.patch(item_path(cid("A")), body), 400, "invalid", pointer="/data/id")
    assert ok(api.get(item_path(cid("A"))))["data"] == before


@pytest.mark.parametrize("shape", ["item", "items"])
def test_missing_parent_item_is_404(api: Api, shape: str) -> None:
    body = variant_body("V", "NOPE")
    if shape == "items":
        body["data"]["relationships"] = {
            "items": {"data": [{"type": "catalog-item", "id": cid("NOPE")}]}
        }
    pointer = f"/data/relationships/{shape}/data" + ("/0" if shape == "items" else "") + "/id"
    assert_error(api.post("/api/catalog-variants", body), 404, "not_found", pointer=pointer)
    assert all_variant_ids(api) == []


def test_duplicate_variant_is_409(api: Api) -> None:
    _item(api)
    ok(api.post("/api/catalog-variants", variant_body("V", "I", title="first")), 201)
    response = api.post("/api/catalog-variants", variant_body("V", "I", title="second"))
    assert_error(response, 409, "duplicate", pointer="/data/attributes/external_id")
    assert all_variant_ids(api) == [cid("V")]
    assert ok(api.get(variant_path(cid("V"))))["data"]["attributes"]["title"] == "first"


def test_duplicate_item_is_409(api: Api) -> None:
    ok(api.post("/api/catalog-items", item_body("I", title="first")), 201)
    response = api.post("/api/catalog-items", item_body("I", title="second"))
    assert_error(response, 409, "duplicate", pointer="/data/attributes/external_id")
    assert all_item_ids(api) == [cid("I")]
    assert ok(api.get(item_path(cid("I"))))["data"]["attributes"]["title"] == "first"


def test_an_item_and_a_variant_may_share_an_external_id(api: Api) -> None:
    _item(api, "SAME")
    ok(api.post("/api/catalog-variants", variant_body("SAME", "SAME")), 201)


# ---- the body as bytes -------------------------------------------------------------------------


MALFORMED_JSON = [
    b"{", b"not json", b'{"data": NaN}', b"\xff\xfe", b'{"data": "\xff"}', b"", b"   ",
    b'{"data": {}} trailing', b"[" * 5000 + b"]" * 5000, b'{"data": 1e400}',
]  # fmt: skip


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_malformed_json_is_400(api: Api, method: str, subtests: pytest.Subtests) -> None:
    before = ok(api.post("/api/catalog-items", item_body("I")), 201)["data"]
    path = "/api/catalog-variants" if method == "POST" else item_path(cid("I"))
    for content in MALFORMED_JSON:
        with subtests.test(content=content[:40]):
            response = api.client.request(method, path, content=content, headers=api._headers(None))
            assert_error(response, 400, "invalid", pointer="")
    assert all_variant_ids(api) == []
    assert ok(api.get(item_path(cid("I"))))["data"] == before


def test_json_that_is_not_an_object_is_400(api: Api, subtests: pytest.Subtests) -> None:
    for content in [b"[]", b"null", b'"data"', b"1", b"{}", b'{"data": null}']:
        with subtests.test(content=content):
            response = api.post("/api/catalog-items", content=content)
            assert_error(response, 400, "invalid")
            assert all_item_ids(api) == []


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_wrong_content_type_is_415(api: Api, content_type: str) -> None:
    _item(api)
    headers = {"Content-Type": content_type}
    response = api.post("/api/catalog-variants", variant_body("V", "I"), headers=headers)
    assert_error(response, 415, "unsupported_media_type")
    body = {"data": {"type": "catalog-item", "id": cid("I"), "attributes": {"title": "x"}}}
    assert_error(api.patch(item_path(cid("I")), body, headers=headers), 415)
    assert all_variant_ids(api) == []
    assert ok(api.get(item_path(cid("I"))))["data"]["attributes"]["title"] == "Item I"


@pytest.mark.parametrize(
    "content_type",
    ["application/vnd.api+json", "application/json", "application/json; charset=utf-8"],
)
def test_both_media_types_are_accepted(api: Api, content_type: str) -> None:
    response = api.post(
        "/api/catalog-items", item_body("I"), headers={"Content-Type": content_type}
    )
    ok(response, 201)


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/api/catalog-items"), ("POST", "/api/catalog-items")]
)
def test_unacceptable_accept_is_406(api: Api, method: str, path: str) -> None:
    response = api.client.request(
        method, path, json=item_body("I"), headers=api._headers({"Accept": "text/html"})
    )
    assert_error(response, 406, "not_acceptable")
    assert all_item_ids(api) == []


@pytest.mark.parametrize(
    "accept", ["application/json", "*/*", "application/*", "text/html, application/vnd.api+json"]
)
def test_acceptable_accept(api: Api, accept: str) -> None:
    ok(api.get("/api/catalog-items", headers={"Accept": accept}))


def test_body_over_4_mb_is_413(api: Api) -> None:
    _item(api)
    body = variant_body("V", "I", description="x" * (4 * 1024 * 1024))
    response = api.post("/api/catalog-variants", body)
    assert_error(response, 413, "payload_too_large")
    assert all_variant_ids(api) == []


def test_streamed_body_over_4_mb_is_413(api: Api) -> None:
    chunk = b"x" * (1024 * 1024)

    def stream() -> Any:
        yield b'{"data": "'
        for _ in range(5):
            yield chunk
        yield b'"}'

    response = api.post("/api/catalog-items", content=stream())
    assert_error(response, 413, "payload_too_large")


UNKNOWN_PARAMETERS = [
    ("/api/catalog-variants?foo=1", "foo"),
    ("/api/catalog-variants?page[number]=2", "page[number]"),
    ("/api/catalog-variants?include=item", "include"),
    ("/api/catalog-variants?fields[catalog-item]=title", "fields[catalog-item]"),
    ("/api/catalog-items?fields[catalog-items]=title", "fields[catalog-items]"),
    ("/api/catalog-items?Filter=x", "Filter"),
    (f"{variant_path(cid('V'))}?include=variants", "include"),
    (f"{item_path(cid('I'))}?sort=created", "sort"),
    (
        f"{item_path(cid('I'))}/relationships/variants?fields[catalog-variant]=sku",
        "fields[catalog-variant]",
    ),
    ("/api/catalog-variants?page%5Bnumber%5D=2", "page[number]"),
]


def test_unknown_query_parameter_is_400_naming_it(api: Api, subtests: pytest.Subtests) -> None:
    for path, parameter in UNKNOWN_PARAMETERS:
        with subtests.test(path=path):
            errors = assert_error(api.get(path), 400, "invalid", parameter=parameter)
            assert parameter in errors[0]["detail"]


def test_unknown_query_parameter_on_write_writes_nothing(api: Api) -> None:
    response = api.post("/api/catalog-items?dry_run=1", item_body("I"))
    assert_error(response, 400, "invalid", parameter="dry_run")
    assert all_item_ids(api) == []
    response = api.delete(item_path(cid("X")) + "?force=true")
    assert_error(response, 400, "invalid", parameter="force")


# ---- NUL characters: PostgreSQL text cannot hold them; refused alike on both databases ----------


@pytest.mark.parametrize(
    ("name", "value"),
    [("title", "a\x00b"), ("external_id", "V\x00"), ("sku", "\x00"), ("images", ["ok", "b\x00"])],
)
def test_nul_in_text_attributes_is_400(api: Api, name: str, value: Any) -> None:
    _item(api)
    response = api.post("/api/catalog-variants", variant_body("V", "I", **{name: value}))
    assert_error(response, 400, "invalid", pointer=f"/data/attributes/{name}")
    assert all_variant_ids(api) == []
    on_item = "external_id" if name == "sku" else name  # items have no sku
    response = api.post("/api/catalog-items", item_body("J", **{on_item: value}))
    assert_error(response, 400, "invalid", pointer=f"/data/attributes/{on_item}")
    assert all_item_ids(api) == [cid("I")]


def test_nul_in_a_patch_is_400(api: Api) -> None:
    _item(api)
    ok(api.post("/api/catalog-variants", variant_body("V", "I")), 201)
    body = {"data": {"type": "catalog-variant", "id": cid("V"), "attributes": {"url": "\x00"}}}
    assert_error(
        api.patch(variant_path(cid("V")), body), 400, "invalid", pointer="/data/attributes/url"
    )
    body = {"data": {"type": "catalog-item", "id": cid("I"), "attributes": {"title": "\x00"}}}
    assert_error(
        api.patch(item_path(cid("I")), body), 400, "invalid", pointer="/data/attributes/title"
    )
    assert ok(api.get(item_path(cid("I"))))["data"]["attributes"]["title"] == "Item I"


def test_nul_in_the_parent_item_id_is_400(api: Api) -> None:
    _item(api)
    response = api.post("/api/catalog-variants", variant_body("V", "I\x00"))
    assert_error(response, 400, "invalid", pointer="/data/relationships/item/data/id")


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
def test_nul_in_a_path_id_is_404(api: Api, method: str) -> None:
    _item(api)
    body = {"data": {"type": "catalog-item", "id": cid("I\x00"), "attributes": {}}}
    response = api.client.request(
        method, item_path(cid("I\x00")), json=body, headers=api._headers(None)
    )
    assert_error(response, 404, "not_found")
    assert_error(api.get(variant_path(cid("V\x00"))), 404, "not_found")
    assert_error(api.get(item_path(cid("I\x00")) + "/variants"), 404, "not_found")


def test_nul_inside_custom_metadata_is_kept(api: Api) -> None:
    _item(api)
    metadata = {"k\x00": "v\x00"}
    body = variant_body("V", "I", custom_metadata=metadata)
    assert (
        ok(api.post("/api/catalog-variants", body), 201)["data"]["attributes"]["custom_metadata"]
        == metadata
    )
    assert ok(api.get(variant_path(cid("V"))))["data"]["attributes"]["custom_metadata"] == metadata


def test_integers_beyond_64_bits(api: Api) -> None:
    _item(api)
    body = variant_body(
        "V", "I", price=10**20, inventory_quantity=2**64, custom_metadata={"n": 2**70}
    )
    attributes = ok(api.post("/api/catalog-variants", body), 201)["data"]["attributes"]
    assert attributes["price"] == 1e20
    assert attributes["inventory_quantity"] == float(2**64)
    assert attributes["custom_metadata"] == {"n": 2**70}
    response = api.post("/api/catalog-variants", variant_body("W", "I", price=10**400))
    assert_error(response, 400, "invalid", pointer="/data/attributes/price")
