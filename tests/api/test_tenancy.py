"""Every endpoint: a key without the operation's scope gets 403, another account's key gets
404 for anything addressed by id (exactly as if it did not exist), a revoked key gets 401 in
every API process at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from starlette.testclient import TestClient

from backstock.bootstrap import build_services
from backstock.settings import Settings
from tests.support import Api, bulk_body, cid, enc, item_body, variant_body, wait_for_job
from tests.support import call as service_call

pytestmark = pytest.mark.own_database

ITEM = cid("ITEM")
VARIANT = cid("ITEM-V")
ENC = {
    "item": "%24custom%3A%3A%3A%24default%3A%3A%3AITEM",
    "variant": "%24custom%3A%3A%3A%24default%3A%3A%3AITEM-V",
}


def endpoints(job_id: str) -> list[tuple[str, str, Any, str, bool]]:
    """(method, path, body, scope, addressed by id)."""
    return [
        ("GET", "/api/catalog-items", None, "read", False),
        ("POST", "/api/catalog-items", item_body("NEW"), "write", False),
        ("GET", f"/api/catalog-items/{ENC['item']}", None, "read", True),
        (
            "PATCH",
            f"/api/catalog-items/{ENC['item']}",
            {"data": {"type": "catalog-item", "id": ITEM, "attributes": {"title": "x"}}},
            "write",
            True,
        ),
        ("GET", f"/api/catalog-items/{ENC['item']}/variants", None, "read", True),
        ("GET", f"/api/catalog-items/{ENC['item']}/relationships/variants", None, "read", True),
        ("GET", "/api/catalog-variants", None, "read", False),
        ("GET", f"/api/catalog-variants/{ENC['variant']}", None, "read", True),
        (
            "PATCH",
            f"/api/catalog-variants/{ENC['variant']}",
            {"data": {"type": "catalog-variant", "id": VARIANT, "attributes": {"price": 1}}},
            "write",
            True,
        ),
        (
            "POST",
            "/api/catalog-variant-bulk-update-jobs",
            bulk_body([("ITEM-V", {"price": 2.0})]),
            "write",
            False,
        ),
        ("GET", "/api/catalog-variant-bulk-update-jobs", None, "read", False),
        ("GET", f"/api/catalog-variant-bulk-update-jobs/{job_id}", None, "read", True),
        ("DELETE", f"/api/catalog-variants/{ENC['variant']}", None, "write", True),
        ("DELETE", f"/api/catalog-items/{ENC['item']}", None, "write", True),
    ]


@pytest.fixture
def owner(app_factory: Callable[..., TestClient], key_for: Callable[..., str]) -> tuple[Api, str]:
    api = Api(app_factory(), key_for())  # with its job worker
    assert api.post("/api/catalog-items", item_body("ITEM")).status_code == 201
    assert api.post("/api/catalog-variants", variant_body("ITEM-V", "ITEM")).status_code == 201
    job = api.post("/api/catalog-variant-bulk-update-jobs", bulk_body([("ITEM-V", {"price": 3.0})]))
    job_id = job.json()["data"]["id"]
    wait_for_job(api, job_id)
    return api, job_id


def call(api: Api, method: str, path: str, body: Any) -> Any:
    return api.client.request(method, path, headers=api._headers(None), json=body)


def test_scopes_and_tenancy_on_every_endpoint(
    owner: tuple[Api, str], key_for: Callable[..., str]
) -> None:
    api, job_id = owner
    read_only = api.as_key(key_for("acme", ("catalogs:read",)))
    write_only = api.as_key(key_for("acme", ("catalogs:write",)))
    stranger = api.as_key(key_for("globex"))
    for method, path, body, scope, by_id in endpoints(job_id):
        wrong_scope = write_only if scope == "read" else read_only
        denied = call(wrong_scope, method, path, body)
        assert denied.status_code == 403, (method, path, denied.text)
        assert denied.json()["errors"][0]["code"] == "permission_denied"
        if by_id:
            hidden = call(stranger, method, path, body)
            assert hidden.status_code == 404, (method, path, hidden.text)
    # nothing the stranger did changed the owner's data
    variant = api.get(f"/api/catalog-variants/{ENC['variant']}").json()["data"]["attributes"]
    assert variant["price"] == 3.0
    listed = stranger.get("/api/catalog-variants").json()["data"]
    assert listed == []
    assert stranger.get("/api/catalog-variant-bulk-update-jobs").json()["data"] == []


def test_revoked_key_stops_working_in_every_process_at_once(
    settings_for: Callable[..., Settings], app_factory: Callable[..., TestClient]
) -> None:
    settings = settings_for()
    services = build_services(settings)
    key = service_call(services, lambda: services.accounts.create_key("acme", ["catalogs:read"]))
    first, second = Api(app_factory(), key.key), Api(app_factory(), key.key)
    assert first.get("/api/catalog-variants").status_code == 200
    assert second.get("/api/catalog-variants").status_code == 200
    service_call(services, lambda: services.accounts.revoke_key(key.key_id))
    services.close()
    for api in (first, second):
        # through the key's own lookup (a list, a spawn) and through a poll's (with the job)
        for response in (
            api.get("/api/catalog-variants"),
            api.get("/api/catalog-variant-bulk-update-jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV"),
            api.post("/api/catalog-variant-bulk-update-jobs", bulk_body([("V", {"price": 1.0})])),
        ):
            assert response.status_code == 401, response.text
            assert "revoked" in response.json()["errors"][0]["detail"]


# ---- every operation of the route table --------------------------------------------------------


def _request_for(op: Any, owned: dict[str, str]) -> tuple[str, str, Any]:
    """A request to ``op`` addressing the owner's resources: (method, path, body)."""
    from backstock.domain.jobs import KINDS
    from tests.support import category_body, job_body, job_entry

    path = op.path
    if "{job_id}" in path:
        path = path.replace("{job_id}", owned[path.split("/")[2]])
    for collection, external in (
        ("catalog-items", "ITEM"),
        ("catalog-variants", "ITEM-V"),
        ("catalog-categories", "CAT"),
    ):
        path = path.replace(f"/api/{collection}/{{id}}", f"/api/{collection}/{enc(cid(external))}")
    body: Any = None
    if op.body:
        name, _, shape = op.body.partition(":")
        if name in KINDS:
            kind = KINDS[name]
            body = job_body(kind.type, kind.resource.plural, [job_entry(kind, "X")])
        elif shape == "identifiers":
            body = {
                "data": [{"type": name, "id": cid("ITEM" if name == "catalog-item" else "CAT")}]
            }
        elif shape == "create":
            body = {"catalog-item": item_body("NEW"), "catalog-variant": variant_body("NEW", "ITEM"),
                    "catalog-category": category_body("NEW")}[name]  # fmt: skip
        else:
            external = {
                "catalog-item": "ITEM",
                "catalog-variant": "ITEM-V",
                "catalog-category": "CAT",
            }[name]
            body = {"data": {"type": name, "id": cid(external), "attributes": {}}}
    return op.method, path, body


def test_every_operation_checks_scope_and_tenancy(
    app_factory: Callable[..., TestClient], key_for: Callable[..., str]
) -> None:
    """Derived from the route table, so an operation added later is covered too: a key without
    the operation's scope gets 403 (and nothing changes), another account's key gets 404 for
    whatever is addressed by id, exactly as if it did not exist."""
    from backstock.domain.jobs import KINDS
    from backstock.http.routes import operations
    from tests.support import category_body, job_body, job_entry

    api = Api(app_factory(run_worker=False), key_for())
    assert api.post("/api/catalog-items", item_body("ITEM")).status_code == 201
    assert api.post("/api/catalog-variants", variant_body("ITEM-V", "ITEM")).status_code == 201
    assert api.post("/api/catalog-categories", category_body("CAT")).status_code == 201
    owned = {}
    for kind in KINDS.values():
        entry = job_entry(kind, "X")
        spawned = api.post(kind.path, job_body(kind.type, kind.resource.plural, [entry]))
        owned[kind.path.split("/")[2]] = spawned.json()["data"]["id"]
    read_only = api.as_key(key_for("acme", ("catalogs:read",)))
    write_only = api.as_key(key_for("acme", ("catalogs:write",)))
    stranger = api.as_key(key_for("globex"))
    every = operations()
    assert len([op for op in every if not op.extension]) == 54  # Klaviyo's
    assert len(every) == 54 + 3 * 9  # and cancel, retry and events of each job kind
    for op in every:
        method, path, body = _request_for(op, owned)
        wrong_scope = write_only if op.scope == "catalogs:read" else read_only
        denied = call(wrong_scope, method, path, body)
        assert denied.status_code == 403, (op.id, denied.text)
        assert denied.json()["errors"][0]["code"] == "permission_denied"
        if "{" in op.path:
            hidden = call(stranger, method, path, body)
            assert hidden.status_code == 404, (op.id, hidden.text)
    # nothing the others did changed the owner's catalog or its jobs
    assert [r["id"] for r in api.get("/api/catalog-items").json()["data"]] == [cid("ITEM")]
    assert [r["id"] for r in api.get("/api/catalog-variants").json()["data"]] == [cid("ITEM-V")]
    assert [r["id"] for r in api.get("/api/catalog-categories").json()["data"]] == [cid("CAT")]
    for kind in KINDS.values():
        assert [j["id"] for j in api.get(kind.path).json()["data"]] == [
            owned[kind.path.split("/")[2]]
        ]
