"""Klaviyo's official SDK (strict, typed) against a real server: bulk update jobs."""

from __future__ import annotations

import time
from typing import Any

import pytest
from klaviyo_api.filter_builder import FilterBuilder
from openapi_client.exceptions import NotFoundException

from tests.support import JOB_TYPE, LiveServer, cid


def status_filter(status: str) -> str:
    builder = FilterBuilder()
    builder.equals("status", status)
    return builder.build()


def seed(klaviyo: Any, variants: int) -> list[str]:
    item = {"external_id": "SHIRT", "title": "Shirt", "description": "d", "url": "https://x/s"}
    klaviyo.Catalogs.create_catalog_item({"data": {"type": "catalog-item", "attributes": item}})
    externals = [f"SHIRT-{i}" for i in range(variants)]
    for external in externals:
        attributes = {
            "external_id": external, "title": external, "description": "d", "sku": external,
            "inventory_quantity": 3, "price": 10.0, "url": f"https://x/{external}",
        }  # fmt: skip
        parent = {"item": {"data": {"type": "catalog-item", "id": cid("SHIRT")}}}
        body = {
            "data": {"type": "catalog-variant", "attributes": attributes, "relationships": parent}
        }
        assert klaviyo.Catalogs.create_catalog_variant(body) is not None
    return externals


def job_body(updates: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    variants = [{"type": "catalog-variant", "id": cid(e), "attributes": a} for e, a in updates]
    return {"data": {"type": JOB_TYPE, "attributes": {"variants": {"data": variants}}}}


def wait_complete(get: Any, job_id: str, **kw: Any) -> Any:
    deadline = time.monotonic() + 10
    while True:
        job = get(job_id, **kw)
        if job.data.attributes.status == "complete":
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.02)


def test_the_sdk_spawns_reads_and_lists_a_job(module_live_server: LiveServer) -> None:
    klaviyo = module_live_server.sdk()
    [first, second] = seed(klaviyo, 2)
    updates = [
        (first, {"price": 12.5, "images": ["https://x/1.png"], "custom_metadata": {"a": 1}}),
        ("GONE", {"price": 1.0}),
        (second, {"inventory_policy": 1, "published": False}),
    ]

    job = klaviyo.Catalogs.bulk_update_catalog_variants(job_body(updates))

    assert job is not None, "a 2xx other than 202 reads as None"
    assert isinstance(job.data.id, str)
    assert job.data.attributes.status == "queued"
    assert job.data.attributes.total_count == 3
    assert job.data.links.var_self.endswith(job.data.id)
    got = wait_complete(
        klaviyo.Catalogs.get_bulk_update_variants_job, job.data.id, include=["variants"]
    )
    attributes = got.data.attributes
    assert (attributes.completed_count, attributes.failed_count) == (2, 1)
    assert attributes.completed_at is not None
    assert attributes.expires_at > attributes.completed_at
    [error] = attributes.errors
    assert error.source.pointer == "/data/attributes/variants/data/1"
    assert [v.id for v in got.data.relationships.variants.data] == [
        cid(e) for e in (first, "GONE", second)
    ]
    assert [v.id for v in got.included] == [cid(first), cid(second)]
    assert got.included[0].attributes.price == 12.5
    assert got.included[1].attributes.inventory_policy == 1
    assert all(v.links.var_self for v in got.included)

    complete = klaviyo.Catalogs.get_bulk_update_variants_jobs(filter=status_filter("complete"))
    assert [listed.id for listed in complete.data] == [job.data.id]
    queued = klaviyo.Catalogs.get_bulk_update_variants_jobs(filter="equals(status,'queued')")
    assert queued.data == []


def test_the_seed_era_names_and_sparse_fieldsets(module_live_server: LiveServer) -> None:
    klaviyo = module_live_server.sdk()
    [external] = seed(klaviyo, 1)

    job = klaviyo.Catalogs.spawn_update_variants_job(job_body([(external, {"price": 3.0})]))

    assert job is not None
    got = wait_complete(klaviyo.Catalogs.get_update_variants_job, job.data.id)
    assert got.data.attributes.completed_count == 1
    listed = klaviyo.Catalogs.get_update_variants_jobs()
    assert [j.id for j in listed.data] == [job.data.id]
    sparse = klaviyo.Catalogs.get_bulk_update_variants_job(
        job.data.id,
        fields_catalog_variant_bulk_update_job=["status", "total_count"],
        fields_catalog_variant=["sku", "price"],
        include=["variants"],
    )  # a sparse fieldset makes the SDK return plain dicts
    assert sparse["data"]["attributes"] == {"status": "complete", "total_count": 1}
    assert sparse["included"][0]["attributes"] == {"sku": external, "price": 3.0}
    with pytest.raises(NotFoundException):
        klaviyo.Catalogs.get_bulk_update_variants_job("01JABCDEF0123456789XYZABCD")


def test_the_sdk_follows_links_next_as_its_cursor(module_live_server: LiveServer) -> None:
    klaviyo = module_live_server.sdk()
    body = job_body([("GONE", {"price": 1.0})])
    created = [klaviyo.Catalogs.bulk_update_catalog_variants(body).data.id for _ in range(101)]

    first = klaviyo.Catalogs.get_bulk_update_variants_jobs()
    second = klaviyo.Catalogs.get_bulk_update_variants_jobs(page_cursor=first.links.next)

    assert [j.id for j in first.data] + [j.id for j in second.data] == created[::-1]
    assert second.links.next is None
