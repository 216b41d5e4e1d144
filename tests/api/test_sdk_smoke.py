from __future__ import annotations

import time

from tests.support import LiveServer, cid


def test_sdk_creates_item_variant_and_runs_bulk_job(live_server: LiveServer) -> None:
    klaviyo = live_server.sdk()
    item = klaviyo.Catalogs.create_catalog_item(
        {
            "data": {
                "type": "catalog-item",
                "attributes": {
                    "external_id": "SHIRT",
                    "title": "Shirt",
                    "description": "A shirt",
                    "url": "https://x/s",
                },
            }
        }
    )
    assert item is not None and item.data.id == cid("SHIRT")
    variant = klaviyo.Catalogs.create_catalog_variant(
        {
            "data": {
                "type": "catalog-variant",
                "attributes": {
                    "external_id": "SHIRT-M",
                    "title": "Shirt M",
                    "description": "d",
                    "sku": "S-M",
                    "inventory_quantity": 3,
                    "price": 10.0,
                    "url": "https://x/s/m",
                },
                "relationships": {"item": {"data": {"type": "catalog-item", "id": cid("SHIRT")}}},
            }
        }
    )
    assert variant is not None and variant.data.attributes.sku == "S-M"
    job = klaviyo.Catalogs.bulk_update_catalog_variants(
        {
            "data": {
                "type": "catalog-variant-bulk-update-job",
                "attributes": {
                    "variants": {
                        "data": [
                            {
                                "type": "catalog-variant",
                                "id": cid("SHIRT-M"),
                                "attributes": {"price": 12.5},
                            }
                        ]
                    }
                },
            }
        }
    )
    assert job is not None and job.data.attributes.status in {"queued", "processing", "complete"}
    deadline = time.monotonic() + 10
    while True:
        got = klaviyo.Catalogs.get_bulk_update_variants_job(job.data.id, include=["variants"])
        if got.data.attributes.status == "complete":
            break
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert got.data.attributes.completed_count == 1
    assert got.included[0].attributes.price == 12.5
