"""POST /api/catalog-variant-bulk-update-jobs: the 202 document, then the applied updates."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.api.jobs.conftest import JOB_TYPE, JOBS, SEED_REVISION, spawn
from tests.conftest import REVISION, Api, bulk_body, cid, seed_catalog, wait_for_job

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
    assert isinstance(data["id"], str) and data["id"]
    assert attributes["job_id"] == data["id"]
    assert attributes["status"] == "queued"
    created = datetime.fromisoformat(attributes["created_at"])
    assert abs(created - datetime.now(UTC)) < timedelta(minutes=1)
    assert attributes["total_count"] == len(externals)
    assert attributes["completed_count"] == 0
    assert attributes["failed_count"] == 0
    assert attributes["errors"] == []
    if revision == SEED_REVISION:  # nothing was nullable then: absent, not null
        assert "completed_at" not in attributes and "expires_at" not in attributes
    else:
        assert attributes["completed_at"] is None and attributes["expires_at"] is None
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
def test_one_variant_every_attribute(api: Api, slash: str, shape: str, revision: str) -> None:
    [external, untouched] = seed_catalog(api, variants=2)
    before = variant_attributes(api, untouched)
    seed_era = revision == SEED_REVISION
    media = "application/json" if seed_era else "application/vnd.api+json"
    api.revision = revision
    api.headers = {"Accept": media, "Content-Type": media}

    response = api.post(JOBS + slash, bulk_body([(external, EVERY_ATTRIBUTE)], shape))

    job = check_accepted(response, [external], revision)
    got = api.get(f"{JOBS}/{job['id']}{slash}")
    assert got.status_code == 200, got.text
    assert got.json()["data"]["id"] == job["id"]
    api.revision = REVISION  # read the finished job with nulls shown
    check_completed(wait_for_job(api, job["id"]), 1)
    after = variant_attributes(api, external)
    assert {name: after[name] for name in EVERY_ATTRIBUTE} == EVERY_ATTRIBUTE
    assert after["updated"] > after["created"]
    assert variant_attributes(api, untouched) == before


def test_a_hundred_variants_in_either_shape(api: Api) -> None:
    externals = seed_catalog(api, variants=100)
    array = [(e, {"price": i + 0.25, "sku": f"NEW-{i}"}) for i, e in enumerate(externals)]
    data = [(e, {"title": f"Title {i}"}) for i, e in enumerate(reversed(externals))]

    first = api.post(JOBS, bulk_body(array, "array"))
    second = api.post(JOBS + "/", bulk_body(data, "data"))

    first_job = check_accepted(first, externals, REVISION)
    second_job = check_accepted(second, externals[::-1], REVISION)
    check_completed(wait_for_job(api, first_job["id"]), 100)
    check_completed(wait_for_job(api, second_job["id"]), 100)
    for index, external in enumerate(externals):
        attributes = variant_attributes(api, external)
        assert attributes["price"] == index + 0.25
        assert attributes["sku"] == f"NEW-{index}"
        assert attributes["title"] == f"Title {99 - index}"


def test_null_clears_an_attribute(api: Api) -> None:
    [external] = seed_catalog(api, variants=1)
    cleared = {"image_full_url": None, "images": None, "custom_metadata": None, "price": None}
    job = spawn(api, [(external, EVERY_ATTRIBUTE), (external, cleared)])

    check_completed(wait_for_job(api, job), 2)
    attributes = variant_attributes(api, external)
    assert {name: attributes[name] for name in cleared} == cleared
    assert attributes["sku"] == EVERY_ATTRIBUTE["sku"]


@pytest.mark.parametrize("batch_size", [1, 100])
def test_updates_apply_in_request_order(
    app_factory: Callable[..., TestClient], key_for: Callable[..., str], batch_size: int
) -> None:
    api = Api(app_factory(worker_batch_size=batch_size), key_for())
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
    assert [job["attributes"]["total_count"], len(job["relationships"]["variants"]["data"])] == [
        6,
        6,
    ]
    assert {k: variant_attributes(api, a)[k] for k in ("price", "title")} == {
        "price": 3.0,
        "title": "kept",
    }
    assert {k: variant_attributes(api, b)[k] for k in ("price", "title")} == {
        "price": 20.0,
        "title": "b",
    }
