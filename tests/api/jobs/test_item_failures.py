"""Per-variant failures: the job completes, counts them, and points at each failed variant."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import KeyFactory
from tests.support import Api, cid, seed_catalog, spawn, wait_for_job


def variant(api: Api, external: str) -> Any:
    return api.get(f"/api/catalog-variants/{cid(external)}")


@pytest.mark.parametrize(
    ("shape", "base"),
    [("array", "/data/attributes/variants"), ("data", "/data/attributes/variants/data")],
)
def test_missing_variants_fail_alone(worker_api: Api, shape: str, base: str) -> None:
    [first, second] = seed_catalog(worker_api, variants=2)
    updates = [
        (first, {"price": 1.5}),
        ("GONE", {"price": 2.5}),
        (second, {"price": 3.5}),
        ("ALSO-GONE", {"title": "x"}),
        ("GONE", {"sku": "again"}),
    ]

    job = wait_for_job(worker_api, spawn(worker_api, updates, shape))

    attributes = job["attributes"]
    assert (attributes["total_count"], attributes["completed_count"]) == (5, 2)
    assert attributes["failed_count"] == 3
    assert attributes["completed_count"] + attributes["failed_count"] == attributes["total_count"]
    errors = attributes["errors"]
    assert [error["source"] for error in errors] == [
        {"pointer": f"{base}/{index}"} for index in (1, 3, 4)
    ]
    for error, external in zip(errors, ("GONE", "ALSO-GONE", "GONE"), strict=True):
        assert set(error) == {"id", "code", "title", "detail", "source"}
        assert error["code"] == "not_found"
        assert cid(external) in error["detail"]
        assert error["title"]
    assert len({error["id"] for error in errors}) == 3
    assert variant(worker_api, first).json()["data"]["attributes"]["price"] == 1.5
    assert variant(worker_api, second).json()["data"]["attributes"]["price"] == 3.5
    assert variant(worker_api, "GONE").status_code == 404


def test_a_job_of_only_missing_variants_completes(worker_api: Api) -> None:
    job = wait_for_job(
        worker_api, spawn(worker_api, [("GONE", {"price": 1.0}), ("GONE-2", {"price": 2.0})])
    )
    attributes = job["attributes"]
    assert (attributes["completed_count"], attributes["failed_count"]) == (0, 2)
    assert len(attributes["errors"]) == 2


def test_another_accounts_variant_does_not_exist_for_this_one(
    worker_api: Api, worker_key: KeyFactory
) -> None:
    other = worker_api.as_key(worker_key("other"))
    seed_catalog(other, variants=2)  # ITEM-V0 and ITEM-V1
    [mine] = seed_catalog(worker_api, variants=1)  # ITEM-V0 of this account
    theirs_before = [variant(other, f"ITEM-V{i}").json()["data"] for i in range(2)]

    job = wait_for_job(
        worker_api, spawn(worker_api, [(mine, {"price": 77.0}), ("ITEM-V1", {"price": 88.0})])
    )

    attributes = job["attributes"]
    assert (attributes["completed_count"], attributes["failed_count"]) == (1, 1)
    [error] = attributes["errors"]
    assert error["source"] == {"pointer": "/data/attributes/variants/data/1"}
    assert variant(worker_api, mine).json()["data"]["attributes"]["price"] == 77.0
    assert variant(worker_api, "ITEM-V1").status_code == 404
    assert [variant(other, f"ITEM-V{i}").json()["data"] for i in range(2)] == theirs_before
