"""Klaviyo's official Python SDK (``klaviyo-api`` 25) runs a whole catalog's lifecycle against a
real server, unchanged and with typed (validated) responses: bulk-create categories, items in
them and variants; read them through every relationship route; add, replace and remove
relationships; bulk-update items and categories; bulk-delete variants, items and categories;
polling each job until ``complete``, with a bulk create that repeats an existing external id
failing that item only."""

from __future__ import annotations

import time
from typing import Any

from tests.support import LiveServer, cid


def _wait(get: Any, job_id: str) -> Any:
    deadline = time.monotonic() + 20
    while True:
        job = get(job_id)
        assert job is not None, "the SDK got an answer it does not recognize"
        if job.data.attributes.status == "complete":
            return job.data
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def _job(kind: str, member: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"data": {"type": kind, "attributes": {member: {"data": entries}}}}


def _ids(response: Any) -> list[str]:
    return [resource.id for resource in response.data]


def _linkage(kind: str, *externals: str) -> dict[str, Any]:
    return {"data": [{"type": kind, "id": cid(e)} for e in externals]}


def test_a_whole_catalog_lifecycle_through_the_sdk(live_server: LiveServer) -> None:
    catalogs = live_server.sdk().Catalogs

    # bulk-create categories, then items in them, then variants of the items
    categories = [
        {"type": "catalog-category", "attributes": {"external_id": c, "name": c.title()}}
        for c in ("SHOES", "SALE")
    ]
    job = catalogs.bulk_create_catalog_categories(
        _job("catalog-category-bulk-create-job", "categories", categories)
    )
    done = _wait(catalogs.get_bulk_create_categories_job, job.data.id)
    assert (done.attributes.completed_count, done.attributes.failed_count) == (2, 0)

    items = [
        {"type": "catalog-item",
         "attributes": {"external_id": name, "title": name, "description": "d", "url": "https://s/i"},
         "relationships": {"categories": _linkage("catalog-category", "SHOES")}}
        for name in ("BOOT", "SANDAL")
    ]  # fmt: skip
    job = catalogs.bulk_create_catalog_items(_job("catalog-item-bulk-create-job", "items", items))
    done = _wait(catalogs.get_bulk_create_catalog_items_job, job.data.id)
    assert done.attributes.completed_count == 2

    variants = [
        {"type": "catalog-variant",
         "attributes": {"external_id": f"{item}-{size}", "title": f"{item} {size}", "description": "d",
                        "sku": f"{item}-{size}", "inventory_quantity": 5, "price": 42.0,
                        "url": "https://s/v"},
         "relationships": {"item": {"data": {"type": "catalog-item", "id": cid(item)}}}}
        for item in ("BOOT", "SANDAL") for size in ("M", "L")
    ]  # fmt: skip
    job = catalogs.bulk_create_catalog_variants(
        _job("catalog-variant-bulk-create-job", "variants", variants)
    )
    done = _wait(catalogs.get_bulk_create_variants_job, job.data.id)
    assert (done.attributes.completed_count, done.attributes.failed_count) == (4, 0)

    # a bulk create repeating an existing external id fails that item only
    again = [
        variants[0],
        {**variants[1], "attributes": {**variants[1]["attributes"], "external_id": "BOOT-XL"}},
    ]
    job = catalogs.bulk_create_catalog_variants(
        _job("catalog-variant-bulk-create-job", "variants", again)
    )
    done = _wait(catalogs.get_bulk_create_variants_job, job.data.id)
    assert (done.attributes.completed_count, done.attributes.failed_count) == (1, 1)
    [error] = done.attributes.errors
    assert error.code == "conflict"
    assert error.source.pointer == "/data/attributes/variants/data/0"
    included = catalogs.get_bulk_create_variants_job(job.data.id, include=["variants"]).included
    assert sorted(v.id for v in included) == [cid("BOOT-M"), cid("BOOT-XL")]

    # read through every relationship route
    assert _ids(catalogs.get_items_for_catalog_category(cid("SHOES"))) == [
        cid("BOOT"),
        cid("SANDAL"),
    ]
    assert _ids(catalogs.get_item_ids_for_catalog_category(cid("SHOES"))) == [
        cid("BOOT"),
        cid("SANDAL"),
    ]
    assert _ids(catalogs.get_categories_for_catalog_item(cid("BOOT"))) == [cid("SHOES")]
    assert _ids(catalogs.get_category_ids_for_catalog_item(cid("BOOT"))) == [cid("SHOES")]
    assert _ids(catalogs.get_variants_for_catalog_item(cid("BOOT"))) == [
        cid("BOOT-M"), cid("BOOT-L"), cid("BOOT-XL"),
    ]  # fmt: skip
    assert _ids(catalogs.get_variant_ids_for_catalog_item(cid("SANDAL"))) == [
        cid("SANDAL-M"), cid("SANDAL-L"),
    ]  # fmt: skip
    with_variants = catalogs.get_items_for_catalog_category(cid("SHOES"), include=["variants"])
    assert len(with_variants.included) == 5

    # add, replace and remove relationships, from both sides
    catalogs.add_items_to_catalog_category(cid("SALE"), _linkage("catalog-item", "BOOT"))
    assert _ids(catalogs.get_categories_for_catalog_item(cid("BOOT"))) == [
        cid("SHOES"),
        cid("SALE"),
    ]
    catalogs.update_items_for_catalog_category(cid("SALE"), _linkage("catalog-item", "SANDAL"))
    assert _ids(catalogs.get_items_for_catalog_category(cid("SALE"))) == [cid("SANDAL")]
    catalogs.remove_categories_from_catalog_item(
        cid("SANDAL"), _linkage("catalog-category", "SHOES")
    )
    assert _ids(catalogs.get_category_ids_for_catalog_item(cid("SANDAL"))) == [cid("SALE")]
    catalogs.add_categories_to_catalog_item(cid("SANDAL"), _linkage("catalog-category", "SHOES"))
    catalogs.update_categories_for_catalog_item(cid("BOOT"), _linkage("catalog-category", "SALE"))
    assert _ids(catalogs.get_category_ids_for_catalog_item(cid("BOOT"))) == [cid("SALE")]

    # bulk-update items and categories
    job = catalogs.bulk_update_catalog_items(_job("catalog-item-bulk-update-job", "items", [
        {"type": "catalog-item", "id": cid("BOOT"), "attributes": {"price": 99.0}},
    ]))  # fmt: skip
    done = _wait(catalogs.get_bulk_update_catalog_items_job, job.data.id)
    assert done.attributes.completed_count == 1
    assert catalogs.get_catalog_item(cid("BOOT")).data.attributes.price == 99.0
    job = catalogs.bulk_update_catalog_categories(_job("catalog-category-bulk-update-job", "categories", [
        {"type": "catalog-category", "id": cid("SALE"), "attributes": {"name": "Clearance"}},
        {"type": "catalog-category", "id": cid("NONE"), "attributes": {"name": "x"}},
    ]))  # fmt: skip
    done = _wait(catalogs.get_bulk_update_categories_job, job.data.id)
    assert (done.attributes.completed_count, done.attributes.failed_count) == (1, 1)
    assert done.attributes.errors[0].code == "not_found"
    assert catalogs.get_catalog_category(cid("SALE")).data.attributes.name == "Clearance"

    # bulk-delete variants, items and categories
    job = catalogs.bulk_delete_catalog_variants(_job("catalog-variant-bulk-delete-job", "variants", [
        {"type": "catalog-variant", "id": cid("BOOT-M")},
    ]))  # fmt: skip
    _wait(catalogs.get_bulk_delete_variants_job, job.data.id)
    assert _ids(catalogs.get_variant_ids_for_catalog_item(cid("BOOT"))) == [
        cid("BOOT-L"),
        cid("BOOT-XL"),
    ]
    job = catalogs.bulk_delete_catalog_items(_job("catalog-item-bulk-delete-job", "items", [
        {"type": "catalog-item", "id": cid("BOOT")},
    ]))  # fmt: skip
    _wait(catalogs.get_bulk_delete_catalog_items_job, job.data.id)
    assert _ids(catalogs.get_catalog_items()) == [cid("SANDAL")]
    assert _ids(catalogs.get_catalog_variants()) == [cid("SANDAL-M"), cid("SANDAL-L")]
    job = catalogs.bulk_delete_catalog_categories(_job("catalog-category-bulk-delete-job", "categories", [
        {"type": "catalog-category", "id": cid("SHOES")}, {"type": "catalog-category", "id": cid("SALE")},
    ]))  # fmt: skip
    done = _wait(catalogs.get_bulk_delete_categories_job, job.data.id)
    assert done.attributes.completed_count == 2
    assert _ids(catalogs.get_catalog_categories()) == []
    assert _ids(catalogs.get_categories_for_catalog_item(cid("SANDAL"))) == []

    # every job listed by its own family, newest first
    assert len(catalogs.get_bulk_create_variants_jobs().data) == 2
    listed = catalogs.get_bulk_delete_categories_jobs(filter="equals(status,'complete')").data
    assert [j.id for j in listed] == [job.data.id]
