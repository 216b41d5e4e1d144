"""POST /api/catalog-variant-bulk-update-jobs: the 202 document, then the applied updates."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.support import (
    JOB_TYPE,
    JOBS,
    REVISION,
    SEED_REVISION,
    Api,
    bulk_body,
    cid,
    item_body,
    seed_catalog,
    spawn,
    variant_body,
    wait_for_job,
)

pytestmark = pytest.mark.own_database


EVERY_ATTRIBUTE: dict[str, Any] = {
    "title": "Ocean Blue Shirt (Sample) Variant Medium",
    "description": "Ocean blue cotton shirt with a narrow collar.",
    "sku": "OBS-MD",
    "inventory_policy": 2,
    "inventory_quantity": 25,
    "price": 42.5,
    "url": "https://shop.example/obs-md",
    "image_full_url": "https://img.example/obs-md-300.png",
    "image_thumbnail_url": "https://img.example/obs-md-150.png",
    "images": ["https://img.example/obs-md-1.png", "https://img.example/obs-md-2.png"],
    "custom_metadata": {"Top Pick": True, "colours": ["blue", "navy"], "rank": 3},
    "published": False,
}

# (path suffix, body shape, revision): the seed era spoke the slashed path and the bare array.
SPELLINGS = [
    pytest.param("/", "array", SEED_REVISION, id="seed-slash-array"),
    pytest.param("", "data", REVISION, id="current-data"),
    pytest.param("", "array", REVISION, id="current-array"),
    pytest.param("/", "data", SEED_REVISION, id="seed-slash-data"),
]


def variant_attributes(api: Api, external: str) -> dict[str, Any]:
    response = api.get(f"/api/catalog-variants/{cid(external)}")
    assert response.status_code == 200, response.text
    attributes: dict[str, Any] = response.json()["data"]["attributes"]
    return attributes


def check_accepted(response: Any, externals: list[str], revision: str) -> dict[str, Any]:
    """The 202 document of a fresh job over ``externals`` (in request order)."""
    assert response.status_code == 202, response.text
    assert response.headers["content-type"] == "application/vnd.api+json"
    document = response.json()
    data = document["data"]
    attributes = data["attributes"]
    assert data["type"] == JOB_TYPE
    assert isinstance(data["id"], str)
    assert data["id"]
    assert attributes["job_id"] == data["id"]
    assert attributes["status"] == "queued"
    created = datetime.fromisoformat(attributes["created_at"])
    assert abs(created - datetime.now(UTC)) < timedelta(minutes=1)
    assert attributes["total_count"] == len(externals)
    assert attributes["completed_count"] == 0
    assert attributes["failed_count"] == 0
    assert attributes["errors"] == []
    if revision == SEED_REVISION:  # nothing was nullable then: absent, not null
        assert "completed_at" not in attributes
        assert "expires_at" not in attributes
    else:
        assert attributes["completed_at"] is None
        assert attributes["expires_at"] is None
    linkage = [{"type": "catalog-variant", "id": cid(external)} for external in externals]
    assert data["relationships"]["variants"]["data"] == linkage
    assert data["links"]["self"] == f"http://testserver{JOBS}/{data['id']}"
    assert document["links"]["self"] == f"http://testserver{JOBS}"
    return data


def check_completed(job: dict[str, Any], total: int) -> None:
    attributes = job["attributes"]
    assert attributes["status"] == "complete"
    assert (attributes["completed_count"], attributes["failed_count"]) == (total, 0)
    assert attributes["total_count"] == total
    assert attributes["errors"] == []
    created = datetime.fromisoformat(attributes["created_at"])
    completed = datetime.fromisoformat(attributes["completed_at"])
    assert created <= completed < datetime.fromisoformat(attributes["expires_at"])


@pytest.mark.parametrize(("slash", "shape", "revision"), SPELLINGS)
def test_one_variant_every_attribute(
    worker_api: Api, slash: str, shape: str, revision: str
) -> None:
    [external, untouched] = seed_catalog(worker_api, variants=2)
    before = variant_attributes(worker_api, untouched)
    seed_era = revision == SEED_REVISION
    media = "application/json" if seed_era else "application/vnd.api+json"
    worker_api.revision = revision
    worker_api.headers = {"Accept": media, "Content-Type": media}

    response = worker_api.post(JOBS + slash, bulk_body([(external, EVERY_ATTRIBUTE)], shape))

    job = check_accepted(response, [external], revision)
    got = worker_api.get(f"{JOBS}/{job['id']}{slash}")
    assert got.status_code == 200, got.text
    assert got.json()["data"]["id"] == job["id"]
    worker_api.revision = REVISION  # read the finished job with nulls shown
    check_completed(wait_for_job(worker_api, job["id"]), 1)
    after = variant_attributes(worker_api, external)
    assert {name: after[name] for name in EVERY_ATTRIBUTE} == EVERY_ATTRIBUTE
    assert after["updated"] > after["created"]
    assert variant_attributes(worker_api, untouched) == before


def test_a_hundred_variants_in_either_shape(worker_api: Api) -> None:
    externals = seed_catalog(worker_api, variants=100)
    array = [(e, {"price": i + 0.25, "sku": f"NEW-{i}"}) for i, e in enumerate(externals)]
    data = [(e, {"title": f"Title {i}"}) for i, e in enumerate(reversed(externals))]

    first = worker_api.post(JOBS, bulk_body(array, "array"))
    second = worker_api.post(JOBS + "/", bulk_body(data, "data"))

    first_job = check_accepted(first, externals, REVISION)
    second_job = check_accepted(second, externals[::-1], REVISION)
    check_completed(wait_for_job(worker_api, first_job["id"]), 100)
    check_completed(wait_for_job(worker_api, second_job["id"]), 100)
    for index, external in enumerate(externals):
        attributes = variant_attributes(worker_api, external)
        assert attributes["price"] == index + 0.25
        assert attributes["sku"] == f"NEW-{index}"
        assert attributes["title"] == f"Title {99 - index}"


def test_null_clears_an_attribute(worker_api: Api) -> None:
    [external] = seed_catalog(worker_api, variants=1)
    cleared = {"image_full_url": None, "images": None, "custom_metadata": None, "price": None}
    job = spawn(worker_api, [(external, EVERY_ATTRIBUTE), (external, cleared)])

    check_completed(wait_for_job(worker_api, job), 2)
    attributes = variant_attributes(worker_api, external)
    assert {name: attributes[name] for name in cleared} == cleared
    assert attributes["sku"] == EVERY_ATTRIBUTE["sku"]


def test_awkward_ids_and_values_round_trip(worker_api: Api) -> None:
    external = "SKU 1/a:::b%2F é"
    assert worker_api.post("/api/catalog-items", item_body("PARENT")).status_code == 201
    assert (
        worker_api.post("/api/catalog-variants", variant_body(external, "PARENT")).status_code
        == 201
    )
    awkward = {
        "title": 'Ünïcødé 🚀 "quoted" \\ back\nslash',
        "custom_metadata": {"nul": "a\x00b", "big": 2**62, "tiny": 5e-324, "k\x00ey": [None]},
        "price": 1.7976931348623157e308,
        "inventory_quantity": -0.5,
        "images": [""],
    }

    job = wait_for_job(worker_api, spawn(worker_api, [(external, awkward)]))

    assert job["relationships"]["variants"]["data"] == [
        {"type": "catalog-variant", "id": cid(external)}
    ]
    assert (job["attributes"]["completed_count"], job["attributes"]["failed_count"]) == (1, 0)
    included = worker_api.get(f"{JOBS}/{job['id']}", params={"include": "variants"}).json()[
        "included"
    ]
    assert [resource["id"] for resource in included] == [cid(external)]
    stored = worker_api.get(included[0]["links"]["self"]).json()["data"]["attributes"]
    assert {name: stored[name] for name in awkward} == awkward


def check_request_order(api: Api) -> None:
    [a, b] = seed_catalog(api, variants=2)
    updates: list[tuple[str, dict[str, Any]]] = [
        (a, {"price": 1.0}),
        (b, {"price": 10.0}),
        (a, {"price": 2.0}),
        (a, {"title": "kept"}),
        (b, {"price": 20.0, "title": "b"}),
        (a, {"price": 3.0}),
    ]

    job = wait_for_job(api, spawn(api, updates))

    assert (job["attributes"]["completed_count"], job["attributes"]["failed_count"]) == (6, 0)
    assert job["attributes"]["total_count"] == 6
    assert len(job["relationships"]["variants"]["data"]) == 6
    got = {external: variant_attributes(api, external) for external in (a, b)}
    assert (got[a]["price"], got[a]["title"]) == (3.0, "kept")
    assert (got[b]["price"], got[b]["title"]) == (20.0, "b")


def test_updates_apply_in_request_order(worker_api: Api) -> None:
    """All six in one batch (the default batch size, 100)."""
    check_request_order(worker_api)


def test_updates_apply_in_request_order_one_per_batch(
    app_factory: Callable[..., TestClient], key_for: Callable[..., str]
) -> None:
    check_request_order(Api(app_factory(worker_batch_size=1), key_for()))
