"""Authentication, scopes and tenancy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from backstock.services.container import Services
from tests.support import (
    READ,
    WRITE,
    Api,
    all_item_ids,
    all_variant_ids,
    assert_error,
    call,
    cid,
    ids,
    item_body,
    item_path,
    key_id,
    ok,
    seed_catalog,
    variant_body,
    variant_path,
)

_PATCH_VARIANT = {"data": {"type": "catalog-variant", "id": cid("V"), "attributes": {"price": 1}}}
_PATCH_ITEM = {"data": {"type": "catalog-item", "id": cid("I"), "attributes": {"title": "x"}}}

READS = [
    ("GET", "/api/catalog-variants", None),
    ("GET", variant_path(cid("V")), None),
    ("GET", "/api/catalog-items", None),
    ("GET", item_path(cid("I")), None),
    ("GET", item_path(cid("I")) + "/variants", None),
    ("GET", item_path(cid("I")) + "/relationships/variants", None),
]
WRITES = [
    ("POST", "/api/catalog-items", item_body("NEW")),
    ("POST", "/api/catalog-variants", variant_body("NEW", "I")),
    ("PATCH", variant_path(cid("V")), _PATCH_VARIANT),
    ("PATCH", item_path(cid("I")), _PATCH_ITEM),
    ("DELETE", variant_path(cid("V")), None),
    ("DELETE", item_path(cid("I")), None),
]


def _seed(api: Api) -> dict[str, Any]:
    """An item I with a variant V; returns what a GET of each says, to compare later."""
    ok(api.post("/api/catalog-items", item_body("I")), 201)
    ok(api.post("/api/catalog-variants", variant_body("V", "I")), 201)
    return {
        "item": ok(api.get(item_path(cid("I"))))["data"],
        "variant": ok(api.get(variant_path(cid("V"))))["data"],
    }


def _unchanged(api: Api, before: dict[str, Any]) -> None:
    assert ok(api.get(item_path(cid("I"))))["data"] == before["item"]
    assert ok(api.get(variant_path(cid("V"))))["data"] == before["variant"]
    assert all_item_ids(api) == [cid("I")]
    assert all_variant_ids(api) == [cid("V")]


def _send(api: Api, method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
    kw: dict[str, Any] = {"headers": api._headers(headers)}
    if body is not None:
        kw["json"] = body
    return api.client.request(method, path, **kw)


def _label(method: str, path: str) -> str:
    return f"{method} {path}"


def test_no_authorization_is_401(api: Api, subtests: pytest.Subtests) -> None:
    before = _seed(api)
    for method, path, body in READS + WRITES:
        with subtests.test(_label(method, path)):
            headers = api._headers(None)
            del headers["Authorization"]
            response = api.client.request(method, path, headers=headers, json=body)
            assert_error(response, 401, "not_authenticated")
    _unchanged(api, before)


BAD_AUTHORIZATIONS = [
    "Bearer x",
    "garbage",
    "",
    "Klaviyo-API-Key",
    "Klaviyo-API-Key ",
    "Klaviyo-API-Key pk_",
    "Klaviyo-API-Key pk_000000000000_secret",
    "Klaviyo-API-Key sk_000000000000_secret",
    "Klaviyo-API-Key-x pk_000000000000_secret",
]


def test_bad_authorization_is_401(api: Api, subtests: pytest.Subtests) -> None:
    before = _seed(api)
    forged = f"Klaviyo-API-Key pk_{key_id(api.key)}_not-the-secret"
    for authorization in [*BAD_AUTHORIZATIONS, forged]:
        for method, path, body in (READS[1], WRITES[1], WRITES[4]):
            with subtests.test(authorization=authorization, request=_label(method, path)):
                response = _send(api, method, path, body, {"Authorization": authorization})
                assert_error(response, 401, "not_authenticated")
    _unchanged(api, before)


def test_read_only_key_cannot_write(
    api: Api, key_for: Callable[..., str], subtests: pytest.Subtests
) -> None:
    before = _seed(api)
    reader = api.as_key(key_for(scopes=(READ,)))
    for method, path, body in WRITES:
        with subtests.test(_label(method, path)):
            errors = assert_error(_send(reader, method, path, body, {}), 403, "permission_denied")
            assert WRITE in errors[0]["detail"]
    _unchanged(api, before)


def test_read_only_key_can_read(
    api: Api, key_for: Callable[..., str], subtests: pytest.Subtests
) -> None:
    _seed(api)
    reader = api.as_key(key_for(scopes=(READ,)))
    for method, path, body in READS:
        with subtests.test(_label(method, path)):
            ok(_send(reader, method, path, body, {}))


def test_write_only_key_cannot_read(
    api: Api, key_for: Callable[..., str], subtests: pytest.Subtests
) -> None:
    _seed(api)
    writer = api.as_key(key_for(scopes=(WRITE,)))
    for method, path, body in READS:
        with subtests.test(_label(method, path)):
            errors = assert_error(_send(writer, method, path, body, {}), 403, "permission_denied")
            assert READ in errors[0]["detail"]


def test_write_only_key_can_write(api: Api, key_for: Callable[..., str]) -> None:
    _seed(api)
    writer = api.as_key(key_for(scopes=(WRITE,)))
    ok(writer.post("/api/catalog-items", item_body("W")), 201)
    ok(writer.patch(variant_path(cid("V")), _PATCH_VARIANT))
    assert writer.delete(variant_path(cid("V"))).status_code == 204
    assert all_item_ids(api) == [cid("I"), cid("W")]


def test_revoked_key_is_401(api: Api, services: Services, key_for: Callable[..., str]) -> None:
    before = _seed(api)
    survivor = api.as_key(key_for())  # a second key of the same account
    call(services, lambda: services.accounts.revoke_key(key_id(api.key)))
    errors = assert_error(api.get("/api/catalog-variants"), 401, "not_authenticated")
    assert "revoked" in errors[0]["detail"]
    assert_error(api.delete(variant_path(cid("V"))), 401, "not_authenticated")
    _unchanged(survivor, before)


# ---- tenancy ---------------------------------------------------------------------------------


@pytest.fixture
def other(api: Api, key_for: Callable[..., str]) -> Api:
    """Another account, with the same external ids as ``api``'s."""
    return api.as_key(key_for("other"))


def test_another_accounts_resources_are_404(
    api: Api, other: Api, subtests: pytest.Subtests
) -> None:
    before = _seed(api)
    for method, path, body in READS[1:2] + READS[3:] + WRITES[2:]:
        with subtests.test(_label(method, path)):
            assert_error(_send(other, method, path, body, {}), 404, "not_found")
    _unchanged(api, before)


def test_another_accounts_resources_are_absent_from_lists(api: Api, other: Api) -> None:
    seed_catalog(api, "MINE", 2)
    assert ids(other.get("/api/catalog-variants")) == []
    assert ids(other.get("/api/catalog-items")) == []
    filtered = other.get(
        "/api/catalog-variants", params={"filter": f"any(ids,['{cid('MINE-V0')}'])"}
    )
    assert ids(filtered) == []
    filtered = other.get("/api/catalog-items", params={"filter": f"any(ids,['{cid('MINE')}'])"})
    assert ids(filtered) == []
    by_item = other.get(
        "/api/catalog-variants", params={"filter": f"equals(item.id,'{cid('MINE')}')"}
    )
    assert ids(by_item) == []


def test_cannot_attach_a_variant_to_another_accounts_item(api: Api, other: Api) -> None:
    ok(api.post("/api/catalog-items", item_body("THEIRS")), 201)
    response = other.post("/api/catalog-variants", variant_body("V", "THEIRS"))
    assert_error(response, 404, "not_found", pointer="/data/relationships/item/data/id")
    assert all_variant_ids(other) == []
    assert ids(api.get(item_path(cid("THEIRS")) + "/variants")) == []


def test_accounts_may_reuse_each_others_external_ids(api: Api, other: Api) -> None:
    seed_catalog(api, "SAME", 1)
    seed_catalog(other, "SAME", 1)
    patch = {"data": {"type": "catalog-variant", "id": cid("SAME-V0"), "attributes": {"price": 1}}}
    ok(other.patch(variant_path(cid("SAME-V0")), patch))
    assert ok(api.get(variant_path(cid("SAME-V0"))))["data"]["attributes"]["price"] == 9.5
    assert other.delete(item_path(cid("SAME"))).status_code == 204
    assert all_variant_ids(api) == [cid("SAME-V0")]
    assert ok(api.get(item_path(cid("SAME")), params={"include": "variants"}))["included"]


def test_include_never_reaches_another_account(api: Api, other: Api) -> None:
    seed_catalog(api, "SAME", 2)
    ok(other.post("/api/catalog-items", item_body("SAME")), 201)
    body = ok(other.get(item_path(cid("SAME")), params={"include": "variants"}))
    assert body["included"] == []
    assert body["data"]["relationships"]["variants"]["data"] == []
