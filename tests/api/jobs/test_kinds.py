"""Every kind of bulk job (create, update and delete of items, variants and categories) on the
one job engine: spawn, get with ``include`` and ``fields``, list with its filter and pages,
per-item outcomes, and acceptance order across kinds."""

from __future__ import annotations

from typing import Any

import pytest

from backstock.domain.jobs import KINDS, JobKind
from tests.support import (
    Api,
    assert_error,
    category_body,
    category_path,
    cid,
    item_body,
    item_path,
    job_body,
    job_entry,
    ok,
    variant_body,
    variant_path,
    wait_for_job,
)

ALL = list(KINDS.values())


def _spawn(
    api: Api, kind: JobKind, entries: list[dict[str, Any]], shape: str = "data", slash: str = ""
) -> Any:
    return api.post(kind.path + slash, job_body(kind.type, kind.resource.plural, entries, shape))


def _path(kind: JobKind, external: str) -> str:
    return {"variant": variant_path, "item": item_path, "category": category_path}[
        kind.resource.noun
    ](cid(external))


def _seed(api: Api, kind: JobKind, *externals: str) -> None:
    """The resources an update or delete job names (and the item a variant create names)."""
    ok(api.post("/api/catalog-items", item_body("ITEM")), 201)
    if kind.action == "create":
        return
    for external in externals:
        body = {
            "variant": variant_body(external, "ITEM"),
            "item": item_body(external),
            "category": category_body(external),
        }[kind.resource.noun]
        ok(api.post(kind.resource.path, body), 201)


@pytest.mark.parametrize("kind", ALL, ids=[k.type for k in ALL])
def test_a_job_of_every_kind_applies_and_reports_each_item(worker_api: Api, kind: JobKind) -> None:
    _seed(worker_api, kind, "A", "B")
    names = ["A", "B", "GONE"] if kind.action != "create" else ["A", "B", "A"]
    response = _spawn(worker_api, kind, [job_entry(kind, name) for name in names])
    assert response.status_code == 202, response.text
    accepted = response.json()["data"]
    assert accepted["type"] == kind.type and accepted["attributes"]["status"] == "queued"
    assert accepted["attributes"]["job_id"] == accepted["id"]
    linkage = [{"type": kind.resource.type, "id": cid(n)} for n in names]
    assert accepted["relationships"][kind.resource.plural]["data"] == linkage
    done = wait_for_job(worker_api, accepted["id"], path=kind.path)["attributes"]
    assert (done["total_count"], done["completed_count"], done["failed_count"]) == (3, 2, 1)
    [error] = done["errors"]
    assert error["code"] == ("conflict" if kind.action == "create" else "not_found")
    assert error["source"]["pointer"] == f"/data/attributes/{kind.resource.plural}/data/2"
    for name in ("A", "B"):
        found = worker_api.get(_path(kind, name))
        if kind.action == "delete":
            assert_error(found, 404, "not_found")
        else:
            attributes = ok(found)["data"]["attributes"]
            if kind.action == "update":
                assert "renamed" in (attributes.get("title"), attributes.get("name"))


@pytest.mark.parametrize("kind", ALL, ids=[k.type for k in ALL])
def test_both_body_shapes_and_path_spellings(idle_api: Api, kind: JobKind) -> None:
    _seed(idle_api, kind, "A")
    for shape in ("array", "data"):
        for slash in ("", "/"):
            response = _spawn(idle_api, kind, [job_entry(kind, "A")], shape, slash)
            assert response.status_code == 202, (shape, slash, response.text)
            job_id = response.json()["data"]["id"]
            assert ok(idle_api.get(f"{kind.path}/{job_id}{slash}"))["data"]["id"] == job_id
    listed = ok(idle_api.get(kind.path + "/", params={"filter": "equals(status,'queued')"}))
    assert len(listed["data"]) == 4


@pytest.mark.parametrize("kind", ALL, ids=[k.type for k in ALL])
def test_include_and_fields_as_the_spec_allows(worker_api: Api, kind: JobKind) -> None:
    _seed(worker_api, kind, "A")
    job_id = _spawn(worker_api, kind, [job_entry(kind, "A")]).json()["data"]["id"]
    wait_for_job(worker_api, job_id, path=kind.path)
    path = f"{kind.path}/{job_id}"
    sparse = ok(worker_api.get(path, params={f"fields[{kind.type}]": "status,total_count"}))
    assert sparse["data"]["attributes"].keys() == {"status", "total_count"}
    if kind.include is None:  # a delete job: nothing left to include
        assert_error(worker_api.get(path, params={"include": "variants"}), 400, parameter="include")
        return
    included = ok(worker_api.get(path, params={"include": kind.include}))["included"]
    assert [r["id"] for r in included] == [cid("A")]
    assert included[0]["type"] == kind.resource.type
    narrow = ok(
        worker_api.get(
            path, params={"include": kind.include, f"fields[{kind.resource.type}]": "external_id"}
        )
    )
    assert narrow["included"][0]["attributes"] == {"external_id": "A"}
    other = "items" if kind.include != "items" else "variants"
    assert_error(worker_api.get(path, params={"include": other}), 400, parameter="include")


def test_jobs_of_one_kind_are_not_visible_as_another(idle_api: Api) -> None:
    kind = KINDS["catalog-item-bulk-create-job"]
    job_id = _spawn(idle_api, kind, [job_entry(kind, "A")]).json()["data"]["id"]
    other = KINDS["catalog-variant-bulk-update-job"]
    assert_error(idle_api.get(f"{other.path}/{job_id}"), 404, "not_found")
    assert ok(idle_api.get(other.path))["data"] == []
    assert [j["id"] for j in ok(idle_api.get(kind.path))["data"]] == [job_id]


def test_create_update_delete_of_one_variant_land_in_acceptance_order(worker_api: Api) -> None:
    ok(worker_api.post("/api/catalog-items", item_body("ITEM")), 201)
    create, update, delete = (
        KINDS[f"catalog-variant-bulk-{action}-job"] for action in ("create", "update", "delete")
    )
    ids = [
        _spawn(worker_api, create, [job_entry(create, "V")]).json()["data"]["id"],
        _spawn(worker_api, update, [job_entry(update, "V")]).json()["data"]["id"],
        _spawn(worker_api, delete, [job_entry(delete, "V")]).json()["data"]["id"],
    ]
    results = [
        wait_for_job(worker_api, job_id, path=kind.path)["attributes"]
        for job_id, kind in zip(ids, (create, update, delete), strict=True)
    ]
    assert [(r["completed_count"], r["failed_count"]) for r in results] == [(1, 0)] * 3
    assert_error(worker_api.get(variant_path(cid("V"))), 404, "not_found")


def test_a_variant_create_naming_a_missing_item_fails_that_item_only(worker_api: Api) -> None:
    ok(worker_api.post("/api/catalog-items", item_body("ITEM")), 201)
    kind = KINDS["catalog-variant-bulk-create-job"]
    entries = [job_entry(kind, "V1"), job_entry(kind, "V2", item="NO-ITEM")]
    job_id = _spawn(worker_api, kind, entries).json()["data"]["id"]
    done = wait_for_job(worker_api, job_id, path=kind.path)["attributes"]
    assert (done["completed_count"], done["failed_count"]) == (1, 1)
    assert done["errors"][0]["code"] == "not_found"
    assert done["errors"][0]["source"]["pointer"] == "/data/attributes/variants/data/1"
    assert "NO-ITEM" in done["errors"][0]["detail"]
    ok(worker_api.get(variant_path(cid("V1"))))
    assert_error(worker_api.get(variant_path(cid("V2"))), 404)


def test_the_500_jobs_cap_holds_across_kinds(app_factory: Any, key_for: Any) -> None:
    api = Api(app_factory(run_worker=False, max_jobs_in_progress=3), key_for())
    kinds = [KINDS["catalog-item-bulk-create-job"], KINDS["catalog-category-bulk-create-job"]]
    statuses = [
        _spawn(api, kinds[n % 2], [job_entry(kinds[n % 2], f"X{n}")]).status_code for n in range(5)
    ]
    assert statuses == [202, 202, 202, 429, 429]


@pytest.mark.parametrize("kind", ALL, ids=[k.type for k in ALL])
def test_more_than_100_resources_is_400(idle_api: Api, kind: JobKind) -> None:
    entries = [job_entry(kind, f"R{n}") for n in range(101)]
    response = _spawn(idle_api, kind, entries)
    assert_error(response, 400, "invalid", pointer=f"/data/attributes/{kind.resource.plural}/data")
    assert ok(idle_api.get(kind.path))["data"] == []
