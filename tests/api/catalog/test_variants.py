"""Variant CRUD: POST 201, GET 200, list 200, PATCH 200, DELETE 204, both create shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from tests.support import (
    BASE,
    Api,
    all_variant_ids,
    assert_error,
    cid,
    enc,
    item_body,
    ok,
    variant_body,
    variant_path,
)

FULL = {
    "external_id": "SHIRT-M",
    "title": "Ocean Blue Shirt M",
    "description": "Medium",
    "sku": "OBS-MD",
    "inventory_policy": 1,
    "inventory_quantity": 25,
    "price": 42.5,
    "url": "https://shop.example/shirt/m",
    "image_full_url": "https://cdn.example/full.png",
    "image_thumbnail_url": "https://cdn.example/thumb.png",
    "images": ["https://cdn.example/1.png", "https://cdn.example/2.png"],
    "custom_metadata": {"color": "blue", "tags": ["a", "b"], "weight": 1.5},
    "published": False,
}


def _item(api: Api, external: str = "SHIRT") -> None:
    ok(api.post("/api/catalog-items", item_body(external)), 201)


def _aware(text: str) -> datetime:
    parsed = datetime.fromisoformat(text)
    assert parsed.utcoffset() is not None, text
    return parsed


def test_create_returns_the_full_resource(api: Api) -> None:
    _item(api)
    body = ok(api.post("/api/catalog-variants", variant_body("SHIRT-M", "SHIRT", **FULL)), 201)
    data = body["data"]
    vid = cid("SHIRT-M")
    assert data["type"] == "catalog-variant"
    assert data["id"] == "$custom:::$default:::SHIRT-M"
    assert data["links"] == {"self": f"{BASE}/api/catalog-variants/{enc(vid)}"}
    attributes = data["attributes"]
    assert {k: attributes[k] for k in FULL} == FULL
    assert _aware(attributes["created"]) == _aware(attributes["updated"])
    assert set(attributes) == {*FULL, "created", "updated"}
    assert data["relationships"]["item"]["data"] == {"type": "catalog-item", "id": cid("SHIRT")}


def test_create_fills_defaults_and_nulls(api: Api) -> None:
    _item(api)
    body = ok(api.post("/api/catalog-variants", variant_body("V", "SHIRT")), 201)
    attributes = body["data"]["attributes"]
    assert attributes["published"] is True
    assert attributes["inventory_policy"] == 0
    for name in ("image_full_url", "image_thumbnail_url", "images", "custom_metadata"):
        assert attributes[name] is None


def test_explicit_nulls_on_create_take_the_defaults(api: Api) -> None:
    _item(api)
    body = variant_body("V", "SHIRT", published=None, inventory_policy=None, images=None)
    attributes = ok(api.post("/api/catalog-variants", body), 201)["data"]["attributes"]
    assert (attributes["published"], attributes["inventory_policy"]) == (True, 0)
    assert attributes["images"] is None


def test_get_and_list_return_what_create_returned(api: Api) -> None:
    _item(api)
    created = ok(api.post("/api/catalog-variants", variant_body("SHIRT-M", "SHIRT", **FULL)), 201)
    got = ok(api.get(variant_path(cid("SHIRT-M"))))
    assert got["data"] == created["data"]
    listed = ok(api.get("/api/catalog-variants"))
    assert listed["data"] == [created["data"]]
    assert listed["links"]["self"] == f"{BASE}/api/catalog-variants"
    assert "next" not in listed["links"]
    assert "prev" not in listed["links"]


def test_list_is_empty_for_a_new_account(api: Api) -> None:
    body = ok(api.get("/api/catalog-variants"))
    assert body["data"] == []


def test_patch_changes_only_what_is_sent(api: Api) -> None:
    _item(api)
    created = ok(api.post("/api/catalog-variants", variant_body("SHIRT-M", "SHIRT", **FULL)), 201)
    vid = cid("SHIRT-M")
    patch = {"price": 50, "sku": "OBS-MD-2", "inventory_policy": 2, "published": True}
    body = {"data": {"type": "catalog-variant", "id": vid, "attributes": patch}}
    data = ok(api.patch(variant_path(vid), body))["data"]
    expected = created["data"]["attributes"] | patch
    got = data["attributes"]
    assert {k: got[k] for k in FULL} == {k: expected[k] for k in FULL}
    assert got["created"] == created["data"]["attributes"]["created"]
    assert _aware(got["updated"]) > _aware(got["created"])
    assert ok(api.get(variant_path(vid)))["data"] == data


@pytest.mark.parametrize(
    "name",
    [
        "title", "description", "sku", "inventory_policy", "inventory_quantity", "price", "url",
        "image_full_url", "image_thumbnail_url", "images", "custom_metadata", "published",
    ],
)  # fmt: skip
def test_patch_accepts_null_on_every_attribute(api: Api, name: str) -> None:
    _item(api)
    ok(
        api.post(
            "/api/catalog-variants", variant_body("V", "SHIRT", **FULL | {"external_id": "V"})
        ),
        201,
    )
    vid = cid("V")
    body = {"data": {"type": "catalog-variant", "id": vid, "attributes": {name: None}}}
    assert ok(api.patch(variant_path(vid), body))["data"]["attributes"][name] is None
    stored = ok(api.get(variant_path(vid)))["data"]["attributes"]
    assert stored[name] is None
    assert stored["title" if name != "title" else "sku"] is not None


def test_patch_with_empty_attributes_changes_nothing_but_updated(api: Api) -> None:
    _item(api)
    created = ok(api.post("/api/catalog-variants", variant_body("V", "SHIRT")), 201)["data"]
    body = {"data": {"type": "catalog-variant", "id": cid("V"), "attributes": {}}}
    data = ok(api.patch(variant_path(cid("V")), body))["data"]
    strip = ("updated",)
    assert {k: v for k, v in data["attributes"].items() if k not in strip} == {
        k: v for k, v in created["attributes"].items() if k not in strip
    }


def test_delete_returns_204_and_the_variant_is_gone(api: Api) -> None:
    _item(api)
    for external in ("A", "B"):
        ok(api.post("/api/catalog-variants", variant_body(external, "SHIRT")), 201)
    response = api.delete(variant_path(cid("A")))
    assert response.status_code == 204
    assert response.content == b""
    assert_error(api.get(variant_path(cid("A"))), 404, "not_found")
    assert all_variant_ids(api) == [cid("B")]
    assert_error(api.delete(variant_path(cid("A"))), 404, "not_found")
    body = {"data": {"type": "catalog-variant", "id": cid("A"), "attributes": {"price": 1}}}
    assert_error(api.patch(variant_path(cid("A")), body), 404, "not_found")


def test_missing_variant_is_404(api: Api) -> None:
    errors = assert_error(api.get(variant_path(cid("NOPE"))), 404, "not_found")
    assert cid("NOPE") in errors[0]["detail"]


@pytest.mark.parametrize(
    "path_id", ["NOPE", "$custom:::NOPE", "$shopify:::$default:::X", "$custom:::$default:::"]
)
def test_malformed_variant_id_in_path_is_404(api: Api, path_id: str) -> None:
    assert_error(api.get(variant_path(path_id)), 404, "not_found")


# ---- the two revisions' create shapes --------------------------------------------------------


def _seed_era_body(external: str, items: list[str]) -> dict[str, Any]:
    body = variant_body(external, "unused")
    body["data"]["relationships"] = {
        "items": {"data": [{"type": "catalog-item", "id": cid(i)} for i in items]}
    }
    return body


def test_create_with_the_current_item_relationship(api: Api) -> None:
    _item(api, "PARENT")
    body = variant_body("V", "PARENT")
    assert body["data"]["relationships"]["item"]["data"]["id"] == cid("PARENT")
    data = ok(api.post("/api/catalog-variants", body), 201)["data"]
    assert data["relationships"]["item"]["data"] == {"type": "catalog-item", "id": cid("PARENT")}
    assert ids_of_item(api, "PARENT") == [cid("V")]


def test_create_with_the_seed_era_items_array(api: Api) -> None:
    """2023-02-22 clients: ``relationships.items.data`` is an array, media type
    application/json, trailing-slash paths."""
    _item(api, "PARENT")
    api.revision = "2023-02-22"
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    response = api.post("/api/catalog-variants/", _seed_era_body("V", ["PARENT"]), headers=headers)
    data = ok(response, 201)["data"]
    assert data["id"] == cid("V")
    assert ids_of_item(api, "PARENT") == [cid("V")]


def test_seed_era_items_array_must_name_one_item(api: Api) -> None:
    _item(api, "P1")
    _item(api, "P2")
    response = api.post("/api/catalog-variants", _seed_era_body("V", ["P1", "P2"]))
    assert_error(response, 400, "invalid", pointer="/data/relationships/items/data")
    response = api.post("/api/catalog-variants", _seed_era_body("V", []))
    assert_error(response, 400, "invalid", pointer="/data/relationships/items/data")
    assert all_variant_ids(api) == []


def test_seed_era_revision_omits_null_attributes(api: Api) -> None:
    _item(api)
    ok(api.post("/api/catalog-variants", variant_body("V", "SHIRT")), 201)
    api.revision = "2023-02-22"
    attributes = ok(api.get(variant_path(cid("V"))))["data"]["attributes"]
    assert "images" not in attributes
    assert "image_full_url" not in attributes
    assert attributes["sku"] == "SKU-V"


def test_patch_cannot_move_a_variant(api: Api) -> None:
    _item(api, "P1")
    _item(api, "P2")
    ok(api.post("/api/catalog-variants", variant_body("V", "P1")), 201)
    body = variant_body("V", "P2")
    body["data"] = {
        "type": "catalog-variant",
        "id": cid("V"),
        "attributes": {},
        "relationships": body["data"]["relationships"],
    }
    assert_error(
        api.patch(variant_path(cid("V")), body), 400, "invalid", pointer="/data/relationships"
    )
    assert ids_of_item(api, "P1") == [cid("V")]


def ids_of_item(api: Api, item: str) -> list[str]:
    body = ok(api.get(f"/api/catalog-items/{enc(cid(item))}/variants"))
    return [resource["id"] for resource in body["data"]]
