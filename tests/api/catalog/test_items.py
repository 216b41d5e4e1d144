"""Item CRUD, the item-scoped variant reads and ``include=variants``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from tests.support import (
    BASE,
    Api,
    all_item_ids,
    all_variant_ids,
    assert_error,
    category_body,
    cid,
    enc,
    ids,
    item_body,
    item_path,
    ok,
    seed_catalog,
    variant_path,
)

FULL = {
    "external_id": "SHIRT",
    "title": "Ocean Blue Shirt",
    "description": "Cotton",
    "url": "https://shop.example/shirt",
    "price": 42.0,
    "image_full_url": "https://cdn.example/full.png",
    "image_thumbnail_url": "https://cdn.example/thumb.png",
    "images": ["https://cdn.example/1.png"],
    "custom_metadata": {"season": "summer"},
    "published": False,
}


def test_create_returns_the_full_resource(api: Api) -> None:
    body = ok(api.post("/api/catalog-items", item_body("SHIRT", **FULL)), 201)
    data = body["data"]
    iid = cid("SHIRT")
    self_url = f"{BASE}/api/catalog-items/{enc(iid)}"
    assert (data["type"], data["id"]) == ("catalog-item", "$custom:::$default:::SHIRT")
    assert data["links"] == {"self": self_url}
    attributes = data["attributes"]
    assert {k: attributes[k] for k in FULL} == FULL
    assert set(attributes) == {*FULL, "created", "updated"}
    assert datetime.fromisoformat(attributes["created"]).utcoffset() is not None
    assert data["relationships"]["variants"]["links"] == {
        "self": f"{self_url}/relationships/variants",
        "related": f"{self_url}/variants",
    }


def test_create_fills_defaults(api: Api) -> None:
    attributes = ok(api.post("/api/catalog-items", item_body("I")), 201)["data"]["attributes"]
    assert attributes["published"] is True
    assert attributes["price"] is None
    assert attributes["images"] is None
    assert "sku" not in attributes
    assert "inventory_policy" not in attributes


def test_create_accepts_the_identity_defaults_the_sdk_sends(api: Api) -> None:
    body = item_body("I", integration_type="$custom", catalog_type="$default")
    data = ok(api.post("/api/catalog-items", body), 201)["data"]
    assert data["id"] == cid("I")
    assert "integration_type" not in data["attributes"]


def test_get_and_list_return_what_create_returned(api: Api) -> None:
    created = ok(api.post("/api/catalog-items", item_body("SHIRT", **FULL)), 201)["data"]
    assert ok(api.get(item_path(cid("SHIRT"))))["data"] == created
    listed = ok(api.get("/api/catalog-items"))
    assert listed["data"] == [created]
    assert listed["links"] == {"self": f"{BASE}/api/catalog-items"}
    assert "included" not in listed


def test_patch_is_partial_and_accepts_nulls(api: Api) -> None:
    created = ok(api.post("/api/catalog-items", item_body("SHIRT", **FULL)), 201)["data"]
    iid = cid("SHIRT")
    patch = {"title": "New", "price": None, "images": None, "custom_metadata": None}
    body = {"data": {"type": "catalog-item", "id": iid, "attributes": patch}}
    data = ok(api.patch(item_path(iid), body))["data"]
    expected = {k: created["attributes"][k] for k in FULL} | patch
    assert {k: data["attributes"][k] for k in FULL} == expected
    assert ok(api.get(item_path(iid)))["data"] == data


@pytest.mark.parametrize("name", ["sku", "inventory_quantity", "external_id"])
def test_patch_rejects_attributes_items_do_not_have(api: Api, name: str) -> None:
    ok(api.post("/api/catalog-items", item_body("I")), 201)
    body = {"data": {"type": "catalog-item", "id": cid("I"), "attributes": {name: "x"}}}
    response = api.patch(item_path(cid("I")), body)
    assert_error(response, 400, "invalid", pointer=f"/data/attributes/{name}")


def test_delete_returns_204_and_the_item_is_gone(api: Api) -> None:
    ok(api.post("/api/catalog-items", item_body("A")), 201)
    ok(api.post("/api/catalog-items", item_body("B")), 201)
    response = api.delete(item_path(cid("A")))
    assert response.status_code == 204
    assert response.content == b""
    assert_error(api.get(item_path(cid("A"))), 404, "not_found")
    assert all_item_ids(api) == [cid("B")]
    assert_error(api.delete(item_path(cid("A"))), 404, "not_found")


def test_deleting_an_item_deletes_its_variants(api: Api) -> None:
    gone = seed_catalog(api, "GONE", 2)
    kept = seed_catalog(api, "KEPT", 2)
    assert api.delete(item_path(cid("GONE"))).status_code == 204
    for external in gone:
        assert_error(api.get(variant_path(cid(external))), 404, "not_found")
    assert all_variant_ids(api) == [cid(e) for e in kept]
    assert_error(api.get(item_path(cid("GONE")) + "/variants"), 404, "not_found")
    # The external id is free again, for the item and for its variants.
    seed_catalog(api, "GONE", 2)


def test_variants_of_an_item(api: Api) -> None:
    mine = seed_catalog(api, "MINE", 3)
    seed_catalog(api, "OTHER", 2)
    body = ok(api.get(item_path(cid("MINE")) + "/variants"))
    assert [r["id"] for r in body["data"]] == [cid(e) for e in mine]
    assert all(r["type"] == "catalog-variant" and r["links"]["self"] for r in body["data"])
    assert body["data"][0]["attributes"]["sku"] == f"SKU-{mine[0]}"
    assert body["links"]["self"] == f"{BASE}{item_path(cid('MINE'))}/variants"


def test_variant_ids_of_an_item(api: Api) -> None:
    mine = seed_catalog(api, "MINE", 3)
    seed_catalog(api, "OTHER", 1)
    body = ok(api.get(item_path(cid("MINE")) + "/relationships/variants"))
    assert body["data"] == [{"type": "catalog-variant", "id": cid(e)} for e in mine]
    assert body["links"]["self"] == f"{BASE}{item_path(cid('MINE'))}/relationships/variants"


@pytest.mark.parametrize("tail", ["/variants", "/relationships/variants"])
def test_item_scoped_reads_of_a_missing_item_are_404(api: Api, tail: str) -> None:
    assert_error(api.get(item_path(cid("NOPE")) + tail), 404, "not_found")


def test_item_scoped_reads_of_an_item_without_variants_are_empty(api: Api) -> None:
    ok(api.post("/api/catalog-items", item_body("EMPTY")), 201)
    assert ids(api.get(item_path(cid("EMPTY")) + "/variants")) == []
    assert ids(api.get(item_path(cid("EMPTY")) + "/relationships/variants")) == []


def test_include_variants_on_get(api: Api) -> None:
    mine = seed_catalog(api, "MINE", 2)
    seed_catalog(api, "OTHER", 1)
    body = ok(api.get(item_path(cid("MINE")), params={"include": "variants"}))
    linkage = [{"type": "catalog-variant", "id": cid(e)} for e in mine]
    assert body["data"]["relationships"]["variants"]["data"] == linkage
    included = sorted(body["included"], key=lambda r: r["id"])
    assert [r["id"] for r in included] == sorted(cid(e) for e in mine)
    for resource in included:
        assert resource["type"] == "catalog-variant"
        assert resource["links"]["self"] == f"{BASE}{variant_path(resource['id'])}"
        assert resource["attributes"]["sku"] == f"SKU-{resource['id'].rsplit(':', 1)[1]}"
    plain = ok(api.get(item_path(cid("MINE"))))
    assert "included" not in plain
    assert "data" not in plain["data"]["relationships"]["variants"]


def test_include_variants_on_list(api: Api) -> None:
    a = seed_catalog(api, "A", 2)
    b = seed_catalog(api, "B", 1)
    ok(api.post("/api/catalog-items", item_body("C")), 201)
    body = ok(api.get("/api/catalog-items", params={"include": "variants"}))
    by_id = {r["id"]: r for r in body["data"]}
    assert [r["id"] for r in body["data"]] == [cid("A"), cid("B"), cid("C")]
    assert [x["id"] for x in by_id[cid("A")]["relationships"]["variants"]["data"]] == [
        cid(e) for e in a
    ]
    assert by_id[cid("C")]["relationships"]["variants"]["data"] == []
    included = [r["id"] for r in body["included"]]
    assert sorted(included) == sorted(cid(e) for e in a + b)


def test_include_variants_with_no_variants_gives_an_empty_included(api: Api) -> None:
    ok(api.post("/api/catalog-items", item_body("I")), 201)
    assert ok(api.get(item_path(cid("I")), params={"include": "variants"}))["included"] == []
    assert ok(api.get("/api/catalog-items", params={"include": "variants"}))["included"] == []


@pytest.mark.parametrize("value", ["items", "variants,items", ""])
def test_include_of_anything_else_is_400(api: Api, value: str) -> None:
    ok(api.post("/api/catalog-items", item_body("I")), 201)
    response = api.get(item_path(cid("I")), params={"include": value})
    assert_error(response, 400, "invalid", parameter="include")
    response = api.get("/api/catalog-items", params={"include": value})
    assert_error(response, 400, "invalid", parameter="include")


def _with_categories(external: str, *categories: str) -> dict[str, Any]:
    body = item_body(external)
    body["data"]["relationships"] = {
        "categories": {"data": [{"type": "catalog-category", "id": cid(c)} for c in categories]}
    }
    return body


def test_categories_can_be_set_filtered_and_replaced(api: Api, subtests: pytest.Subtests) -> None:
    for category in ("SHOES", "SALE", "SHOES/KIDS", "BOOTS", "shoes", "SHOE"):
        ok(api.post("/api/catalog-categories", category_body(category)), 201)
    ok(api.post("/api/catalog-items", _with_categories("A", "SHOES", "SALE")), 201)
    ok(api.post("/api/catalog-items", _with_categories("B", "SHOES/KIDS")), 201)
    ok(api.post("/api/catalog-items", item_body("C")), 201)
    cases = [
        (f"equals(category.id,'{cid('SHOES')}')", ["A"]),
        (f'equals(category.id,"{cid("SHOES/KIDS")}")', ["B"]),
        (f"equals(category,'{cid('SALE')}')", ["A"]),  # 2023-02-22 spelling
        (f"equals(category.id,'{cid('shoes')}')", []),
        (f"equals(category.id,'{cid('SHOE')}')", []),
    ]
    for expression, expected in cases:
        with subtests.test(filter=expression):
            response = api.get("/api/catalog-items", params={"filter": expression})
            assert ids(response) == [cid(e) for e in expected]
    patch = _with_categories("A", "BOOTS")["data"]
    body = {"data": {"type": "catalog-item", "id": cid("A"), "attributes": {},
                     "relationships": patch["relationships"]}}  # fmt: skip
    ok(api.patch(item_path(cid("A")), body))
    sale = api.get("/api/catalog-items", params={"filter": f"equals(category.id,'{cid('SALE')}')"})
    assert ids(sale) == []
    boots = api.get(
        "/api/catalog-items", params={"filter": f"equals(category.id,'{cid('BOOTS')}')"}
    )
    assert ids(boots) == [cid("A")]


@pytest.mark.parametrize(
    "links", [{"self": "https://example.com/x", "related": None}, [[]] * 3, "anything", None]
)
def test_a_relationships_links_member_is_taken_and_ignored(api: Api, links: Any) -> None:
    """JSON:API lets a relationship carry ``links``; Backstock reads it as raw bytes, of any
    JSON value, and sets the categories from ``data`` alone."""
    ok(api.post("/api/catalog-categories", category_body("SHOES")), 201)
    body = _with_categories("A", "SHOES")
    body["data"]["relationships"]["categories"]["links"] = links
    ok(api.post("/api/catalog-items", body), 201)
    linked = ids(api.get(item_path(cid("A")) + "/relationships/categories"))
    assert linked == [cid("SHOES")]


@pytest.mark.parametrize(
    ("categories", "pointer"),
    [
        (
            {"data": {"type": "catalog-category", "id": cid("X")}},
            "/data/relationships/categories/data",
        ),
        (
            {"data": [{"type": "catalog-item", "id": cid("X")}]},
            "/data/relationships/categories/data/0/type",
        ),
        (
            {"data": [{"type": "catalog-category", "id": "X"}]},
            "/data/relationships/categories/data/0/id",
        ),
        ({"data": [{"type": "catalog-category"}]}, "/data/relationships/categories/data/0/id"),
        ({}, "/data/relationships/categories/data"),
    ],
)
def test_bad_categories_are_400(api: Api, categories: dict[str, Any], pointer: str) -> None:
    body = item_body("I")
    body["data"]["relationships"] = {"categories": categories}
    assert_error(api.post("/api/catalog-items", body), 400, "invalid", pointer=pointer)
    assert all_item_ids(api) == []
