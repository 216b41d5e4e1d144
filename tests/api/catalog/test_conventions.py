"""Revision header, paths and ids, unknown routes and methods, health, error documents."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
from starlette.testclient import TestClient

from tests.support import (
    BASE,
    JSONAPI,
    Api,
    all_variant_ids,
    assert_error,
    cid,
    item_body,
    item_path,
    ok,
    seed_catalog,
    variant_body,
    variant_path,
)

BAD_REVISIONS = [
    None, "", "2023-2-22", "banana", "2023-02-30", "2023-02-21", "2022-10-17", "2026-10-16",
    "2027-01-15", "2024-10-15.", "2024-10-15 .pre", "20241015", "2024-10-15T00:00:00",
]  # fmt: skip


def test_bad_revision_is_400(api: Api, subtests: pytest.Subtests) -> None:
    ok(api.post("/api/catalog-items", item_body("I")), 201)
    before = ok(api.get(item_path(cid("I"))))["data"]
    requests = [
        ("GET", item_path(cid("I")), None),
        ("POST", "/api/catalog-items", item_body("NEW")),
        ("DELETE", item_path(cid("I")), None),
    ]
    for revision in BAD_REVISIONS:
        for method, path, body in requests:
            with subtests.test(revision=revision, method=method):
                headers = api._headers(None)
                if revision is None:
                    del headers["revision"]
                else:
                    headers["revision"] = revision
                response = api.client.request(method, path, headers=headers, json=body)
                assert_error(response, 400, "invalid", parameter="revision")
    assert ok(api.get("/api/catalog-items"))["data"] == [before]


@pytest.mark.parametrize(
    "revision", ["2023-02-22", "2024-10-15.pre", "2026-07-15", "2026-10-15", " 2025-01-15 "]
)
def test_supported_revisions(api: Api, revision: str) -> None:
    api.revision = revision
    ok(api.post("/api/catalog-items", item_body("I")), 201)
    ok(api.get(item_path(cid("I"))))


# ---- paths -----------------------------------------------------------------------------------


def _paths_and_methods() -> list[tuple[str, str, Any, int]]:
    v, i = variant_path(cid("V")), item_path(cid("I"))
    patch_v = {"data": {"type": "catalog-variant", "id": cid("V"), "attributes": {"price": 2}}}
    patch_i = {"data": {"type": "catalog-item", "id": cid("I"), "attributes": {"title": "t"}}}
    return [
        ("GET", "/api/catalog-variants", None, 200),
        ("GET", "/api/catalog-items", None, 200),
        ("POST", "/api/catalog-items", item_body("NEW"), 201),
        ("POST", "/api/catalog-variants", variant_body("NEW", "I"), 201),
        ("GET", v, None, 200),
        ("PATCH", v, patch_v, 200),
        ("GET", i, None, 200),
        ("PATCH", i, patch_i, 200),
        ("GET", i + "/variants", None, 200),
        ("GET", i + "/relationships/variants", None, 200),
        ("DELETE", v, None, 204),
        ("DELETE", i, None, 204),
    ]


@pytest.mark.parametrize("slash", ["", "/"])
def test_both_path_spellings_answer_directly(
    api: Api, slash: str, subtests: pytest.Subtests
) -> None:
    """Every operation in turn (the deletes last), on one spelling."""
    ok(api.post("/api/catalog-items", item_body("I")), 201)
    ok(api.post("/api/catalog-variants", variant_body("V", "I")), 201)
    for method, path, body, status in _paths_and_methods():
        with subtests.test(method=method, path=path + slash):
            kw: dict[str, Any] = {"headers": api._headers(None), "follow_redirects": False}
            if body is not None:
                kw["json"] = body
            response = api.client.request(method, path + slash, **kw)
            assert response.status_code == status, response.text
            assert "location" not in response.headers
    assert_error(api.get(variant_path(cid("V"))), 404)
    assert ok(api.get("/api/catalog-items"))["data"][0]["id"] == cid("NEW")


AWKWARD_IDS = ["SKU 1/a", "a/b/c", "100% cotton", "x:::y", "ünï?&#=+ \t", "~'\"()", "trail/"]


def test_awkward_external_ids_round_trip(api: Api, subtests: pytest.Subtests) -> None:
    for external in AWKWARD_IDS:
        with subtests.test(external=external):
            item, variant = f"I {external}", f"V {external}"
            ok(api.post("/api/catalog-items", item_body(item)), 201)
            created = ok(api.post("/api/catalog-variants", variant_body(variant, item)), 201)
            data = created["data"]
            assert data["id"] == cid(variant)
            assert data["attributes"]["external_id"] == variant
            self_path = urlsplit(data["links"]["self"]).path
            assert self_path == variant_path(cid(variant))
            assert ok(api.get(self_path))["data"] == data
            assert ok(api.get(item_path(cid(item)) + "/variants"))["data"] == [data]
            patch = {
                "data": {"type": "catalog-variant", "id": cid(variant), "attributes": {"price": 1}}
            }
            assert ok(api.patch(self_path, patch))["data"]["attributes"]["price"] == 1
            assert api.delete(self_path).status_code == 204
            assert all_variant_ids(api) == []
            assert api.delete(item_path(cid(item))).status_code == 204


def test_a_slash_in_an_id_is_not_a_path_separator(api: Api) -> None:
    ok(api.post("/api/catalog-items", item_body("A/variants")), 201)
    ok(api.post("/api/catalog-items", item_body("A")), 201)
    assert ok(api.get(item_path(cid("A/variants"))))["data"]["id"] == cid("A/variants")
    assert ok(api.get(item_path(cid("A")) + "/variants"))["data"] == []


def test_ids_are_decoded_exactly_once(api: Api) -> None:
    ok(api.post("/api/catalog-items", item_body("A%2FB")), 201)
    ok(api.post("/api/catalog-items", item_body("A/B")), 201)
    assert ok(api.get(item_path(cid("A%2FB"))))["data"]["id"] == cid("A%2FB")
    assert ok(api.get(item_path(cid("A/B"))))["data"]["id"] == cid("A/B")


UNKNOWN_ROUTES = [
    ("GET", "/api/nope"),
    ("GET", "/api/catalog-variant"),
    ("GET", "/api/catalog-items/x/y/z"),
    ("POST", "/api/catalog-tags"),  # catalog-categories is served since issue 12
    ("GET", "/"),
    ("GET", "/api/catalog-variants/a/b"),
    ("GET", "/api/catalog-variants//"),
]


def test_unknown_route_is_a_jsonapi_404(api: Api, subtests: pytest.Subtests) -> None:
    for method, path in UNKNOWN_ROUTES:
        with subtests.test(method=method, path=path):
            response = api.client.request(method, path, headers=api._headers(None))
            assert_error(response, 404, "not_found")


WRONG_METHODS = [
    ("PUT", "/api/catalog-variants"),
    ("DELETE", "/api/catalog-variants"),
    ("PATCH", "/api/catalog-items"),
    ("POST", variant_path(cid("V"))),
    ("PUT", item_path(cid("I"))),
    ("POST", item_path(cid("I")) + "/variants"),
    ("DELETE", item_path(cid("I")) + "/relationships/variants"),
    ("PUT", "/api/catalog-variants/"),
]


def test_wrong_method_is_a_jsonapi_405(api: Api, subtests: pytest.Subtests) -> None:
    for method, path in WRONG_METHODS:
        with subtests.test(method=method, path=path):
            response = api.client.request(method, path, headers=api._headers(None))
            assert_error(response, 405, "method_not_allowed")


def test_405_names_the_allowed_methods(api: Api) -> None:
    for method, path, allowed in [
        ("PUT", "/api/catalog-variants", "GET, POST"),
        ("POST", variant_path(cid("V")), "DELETE, GET, PATCH"),
        ("DELETE", item_path(cid("I")) + "/variants", "GET"),
    ]:
        response = api.client.request(method, path, headers=api._headers(None))
        assert response.status_code == 405
        assert response.headers.get("allow") == allowed


def test_error_documents_follow_jsonapi(api: Api) -> None:
    """``status``, when present, is a string (JSON:API 1.0 §errors); ids are unique."""
    body = variant_body("V", "NOPE", price="x", color="red")
    errors = assert_error(api.post("/api/catalog-variants", body), 400)
    assert len({e["id"] for e in errors}) == len(errors) == 2
    for error in errors:
        assert error.get("status", "400") == "400"
    error = assert_error(api.get(variant_path(cid("NOPE"))), 404)[0]
    assert error.get("status", "404") == "404"


# ---- links in documents ------------------------------------------------------------------------


def test_every_link_in_a_resource_can_be_followed(api: Api) -> None:
    seed_catalog(api, "I", 1)
    variant = ok(api.get(variant_path(cid("I-V0"))))["data"]
    item = ok(api.get(item_path(cid("I"))))["data"]
    links = [variant["links"]["self"], item["links"]["self"]]
    for resource in (variant, item):
        for relationship in resource.get("relationships", {}).values():
            links += relationship.get("links", {}).values()
    assert links
    for link in links:
        assert link.startswith(BASE), link
        ok(api.get(link.removeprefix(BASE)))


def test_links_use_the_request_host(api: Api) -> None:
    seed_catalog(api, "I", 1)
    response = api.get(variant_path(cid("I-V0")), headers={"Host": "shop.example:8443"})
    assert ok(response)["data"]["links"]["self"].startswith("http://shop.example:8443/api/")


# ---- health ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health_endpoints_need_no_key(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == JSONAPI
    assert response.json()["status"] in ("ok", "ready")


def test_readyz_reports_the_database(client: TestClient) -> None:
    assert client.get("/readyz").json()["checks"]["database"] == "ok"
