"""Catalog categories: create, get, list (filter, sort, pages), update, delete; and the
item-category relationships from both sides, as a real many-to-many relation."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import (
    BASE,
    Api,
    assert_error,
    category_body,
    category_path,
    cid,
    ids,
    item_body,
    item_path,
    ok,
)


def _create(api: Api, external: str, **attributes: Any) -> dict[str, Any]:
    return ok(api.post("/api/catalog-categories", category_body(external, **attributes)), 201)


def test_create_get_update_delete(api: Api) -> None:
    created = _create(api, "SHOES", name="Shoes")["data"]
    assert created["type"] == "catalog-category"
    assert created["id"] == cid("SHOES")
    assert created["attributes"].keys() == {"external_id", "name", "updated"}
    assert created["attributes"]["name"] == "Shoes"
    assert created["links"]["self"] == BASE + category_path(cid("SHOES"))
    items = created["relationships"]["items"]["links"]
    assert items["related"] == BASE + category_path(cid("SHOES")) + "/items"
    assert items["self"] == BASE + category_path(cid("SHOES")) + "/relationships/items"
    assert ok(api.get(category_path(cid("SHOES"))))["data"] == created

    patch = {
        "data": {"type": "catalog-category", "id": cid("SHOES"), "attributes": {"name": "Boots"}}
    }
    updated = ok(api.patch(category_path(cid("SHOES")), patch))["data"]
    assert updated["attributes"]["name"] == "Boots"
    assert updated["attributes"]["updated"] >= created["attributes"]["updated"]

    assert api.delete(category_path(cid("SHOES"))).status_code == 204
    assert_error(api.get(category_path(cid("SHOES"))), 404, "not_found")
    assert_error(api.delete(category_path(cid("SHOES"))), 404, "not_found")


def test_duplicate_is_409_and_bad_attributes_are_400(api: Api) -> None:
    _create(api, "A")
    assert_error(
        api.post("/api/catalog-categories", category_body("A")), 409, "duplicate",
        pointer="/data/attributes/external_id",
    )  # fmt: skip
    body = category_body("B")
    del body["data"]["attributes"]["name"]
    assert_error(
        api.post("/api/catalog-categories", body), 400, "invalid", pointer="/data/attributes/name"
    )
    assert_error(
        api.post("/api/catalog-categories", category_body("B", title="x")), 400, "invalid",
        pointer="/data/attributes/title",
    )  # fmt: skip
    assert ids(api.get("/api/catalog-categories")) == [cid("A")]


def test_list_filters_sort_and_pages(api: Api) -> None:
    for name in ("Shoes", "Shirts", "Hats"):
        _create(api, name.upper(), name=name)
    listed = ok(api.get("/api/catalog-categories", params={"sort": "-created", "page[size]": 2}))
    assert [c["id"] for c in listed["data"]] == [cid("HATS"), cid("SHIRTS")]
    rest = ok(api.get(listed["links"]["next"].removeprefix(BASE)))
    assert [c["id"] for c in rest["data"]] == [cid("SHOES")]
    by_name = api.get("/api/catalog-categories", params={"filter": 'contains(name,"Sh")'})
    assert ids(by_name) == [cid("SHOES"), cid("SHIRTS")]
    by_ids = api.get(
        "/api/catalog-categories", params={"filter": f"any(ids,['{cid('HATS')}','{cid('X')}'])"}
    )
    assert ids(by_ids) == [cid("HATS")]
    sparse = ok(api.get("/api/catalog-categories", params={"fields[catalog-category]": "name"}))
    assert all(c["attributes"].keys() == {"name"} for c in sparse["data"])
    assert_error(
        api.get("/api/catalog-categories", params={"filter": "equals(title,'x')"}), 400,
        parameter="filter",
    )  # fmt: skip


def _items_in(api: Api, category: str) -> list[str]:
    return ids(api.get(category_path(cid(category)) + "/items"))


def _categories_of(api: Api, item: str) -> list[str]:
    return ids(api.get(item_path(cid(item)) + "/categories"))


def _linkage(type_: str, *externals: str) -> dict[str, Any]:
    return {"data": [{"type": type_, "id": cid(e)} for e in externals]}


def test_relationships_from_both_sides(api: Api) -> None:
    for category in ("SHOES", "SALE", "KIDS"):
        _create(api, category)
    for item in ("A", "B", "C"):
        ok(api.post("/api/catalog-items", item_body(item)), 201)
    rel = category_path(cid("SHOES")) + "/relationships/items"

    assert api.post(rel, _linkage("catalog-item", "A", "B")).status_code == 204
    assert api.post(rel, _linkage("catalog-item", "B")).status_code == 204  # adding twice: once
    assert _items_in(api, "SHOES") == [cid("A"), cid("B")]
    assert ids(api.get(rel)) == [cid("A"), cid("B")]
    assert _categories_of(api, "A") == [cid("SHOES")]

    assert api.patch(rel, _linkage("catalog-item", "C")).status_code == 204  # replace
    assert _items_in(api, "SHOES") == [cid("C")]
    assert _categories_of(api, "A") == []

    item_rel = item_path(cid("C")) + "/relationships/categories"
    assert api.post(item_rel, _linkage("catalog-category", "SALE", "KIDS")).status_code == 204
    assert _categories_of(api, "C") == [cid("SHOES"), cid("SALE"), cid("KIDS")]
    assert ids(api.get(item_rel)) == [cid("SHOES"), cid("SALE"), cid("KIDS")]
    assert api.delete(item_rel, _linkage("catalog-category", "SHOES")).status_code == 204
    assert _categories_of(api, "C") == [cid("SALE"), cid("KIDS")]
    assert _items_in(api, "SHOES") == []

    assert api.patch(item_rel, {"data": []}).status_code == 204  # replace with nothing
    assert _categories_of(api, "C") == []


def test_items_take_categories_on_create_and_update(api: Api) -> None:
    for category in ("SHOES", "SALE"):
        _create(api, category)
    body = item_body("A")
    body["data"]["relationships"] = {"categories": _linkage("catalog-category", "SHOES")}
    ok(api.post("/api/catalog-items", body), 201)
    assert _categories_of(api, "A") == [cid("SHOES")]
    patch = {"data": {"type": "catalog-item", "id": cid("A"), "attributes": {},
                      "relationships": {"categories": _linkage("catalog-category", "SALE")}}}  # fmt: skip
    ok(api.patch(item_path(cid("A")), patch))
    assert _categories_of(api, "A") == [cid("SALE")]
    untouched = {"data": {"type": "catalog-item", "id": cid("A"), "attributes": {"title": "t"}}}
    ok(api.patch(item_path(cid("A")), untouched))  # no relationships: the links stay
    assert _categories_of(api, "A") == [cid("SALE")]


def test_a_missing_category_or_item_is_404_with_its_pointer_and_changes_nothing(api: Api) -> None:
    _create(api, "SHOES")
    ok(api.post("/api/catalog-items", item_body("A")), 201)
    body = item_body("B")
    body["data"]["relationships"] = {"categories": _linkage("catalog-category", "SHOES", "NOPE")}
    assert_error(
        api.post("/api/catalog-items", body), 404, "not_found",
        pointer="/data/relationships/categories/data/1/id",
    )  # fmt: skip
    assert_error(api.get(item_path(cid("B"))), 404)
    rel = category_path(cid("SHOES")) + "/relationships/items"
    assert_error(api.post(rel, _linkage("catalog-item", "A", "GHOST")), 404, pointer="/data/1/id")
    assert _items_in(api, "SHOES") == []
    assert_error(
        api.post(
            category_path(cid("NOPE")) + "/relationships/items", _linkage("catalog-item", "A")
        ),
        404,
    )
    assert_error(api.get(category_path(cid("NOPE")) + "/items"), 404)
    assert_error(api.get(item_path(cid("NOPE")) + "/relationships/categories"), 404)


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"data": {"type": "catalog-item", "id": cid("A")}}, "/data"),
        ({"data": [{"type": "catalog-category", "id": cid("A")}]}, "/data/0/type"),
        ({"data": [{"type": "catalog-item", "id": "A"}]}, "/data/0/id"),
        ({"data": [{"type": "catalog-item"}]}, "/data/0/id"),
        ({}, "/data"),
    ],
)
def test_bad_relationship_bodies_are_400(api: Api, body: dict[str, Any], pointer: str) -> None:
    _create(api, "SHOES")
    rel = category_path(cid("SHOES")) + "/relationships/items"
    for method in ("POST", "PATCH", "DELETE"):
        response = api.client.request(method, rel, json=body, headers=api._headers(None))
        assert_error(response, 400, "invalid", pointer=pointer)


def test_deleting_a_category_or_an_item_removes_its_links_and_nothing_else(api: Api) -> None:
    _create(api, "SHOES")
    _create(api, "SALE")
    for item in ("A", "B"):
        body = item_body(item)
        body["data"]["relationships"] = {
            "categories": _linkage("catalog-category", "SHOES", "SALE")
        }
        ok(api.post("/api/catalog-items", body), 201)
    assert api.delete(category_path(cid("SHOES"))).status_code == 204
    assert _categories_of(api, "A") == [cid("SALE")]
    assert ids(api.get("/api/catalog-items")) == [cid("A"), cid("B")]
    assert api.delete(item_path(cid("A"))).status_code == 204
    assert _items_in(api, "SALE") == [cid("B")]
    assert ids(api.get("/api/catalog-categories")) == [cid("SALE")]


def test_the_category_filter_matches_exactly_and_cannot_be_fooled(api: Api) -> None:
    """Ids are matched through the relation, never as text: an id holding quotes, commas or
    another id inside it matches only itself."""
    crafted = ['X","SHOES', "SHOES%", "SHOES\\", "SHO", 'X"]', "SHOES "]
    for category in ("SHOES", *crafted):
        _create(api, category)
    for index, category in enumerate(crafted):
        body = item_body(f"I{index}")
        body["data"]["relationships"] = {"categories": _linkage("catalog-category", category)}
        ok(api.post("/api/catalog-items", body), 201)
    plain = item_body("PLAIN")
    plain["data"]["relationships"] = {"categories": _linkage("catalog-category", "SHOES")}
    ok(api.post("/api/catalog-items", plain), 201)
    for spelled in ("category.id", "category"):
        found = api.get(
            "/api/catalog-items", params={"filter": f"equals({spelled},'{cid('SHOES')}')"}
        )
        assert ids(found) == [cid("PLAIN")]
    for index, category in enumerate(crafted):
        escaped = category.replace("\\", "\\\\").replace('"', '\\"')
        found = api.get(
            "/api/catalog-items", params={"filter": f'equals(category.id,"{cid(escaped)}")'}
        )
        assert ids(found) == [cid(f"I{index}")], category
    items_filter = api.get(
        "/api/catalog-categories", params={"filter": f"equals(item.id,'{cid('PLAIN')}')"}
    )
    assert ids(items_filter) == [cid("SHOES")]


def test_categories_of_another_account_are_invisible(api: Api, key_for: Any) -> None:
    _create(api, "SHOES")
    ok(api.post("/api/catalog-items", item_body("A")), 201)
    stranger = api.as_key(key_for("globex"))
    _create(stranger, "SHOES")  # the same external id in another account
    ok(stranger.post("/api/catalog-items", item_body("A")), 201)
    rel = category_path(cid("SHOES")) + "/relationships/items"
    assert stranger.post(rel, _linkage("catalog-item", "A")).status_code == 204
    assert _items_in(api, "SHOES") == []  # the stranger linked its own A to its own SHOES
    assert _items_in(stranger, "SHOES") == [cid("A")]
