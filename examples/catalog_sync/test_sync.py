"""The catalog sync against a real Catalogs API (Backstock, through its pytest plugin's
``backstock_server`` and ``klaviyo_key``): it upserts, rides out 429s and 503s, waits for slow
jobs, and reports the items that failed. Every test ends by reading the catalog back."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from klaviyo_api import KlaviyoAPI
from openapi_client.exceptions import ApiException
from sync import PREFIX, CatalogSync, Failure, Retry, client

PRODUCTS = [
    {"id": "SHIRT", "title": "Oxford shirt", "description": "Blue cotton", "price": 42.0,
     "url": "https://shop.example/shirt",
     "variants": [{"id": "SHIRT-M", "price": 42.0, "inventory": 5},
                  {"id": "SHIRT-L", "price": 44.0, "inventory": 2}]},
    {"id": "MUG", "title": "Mug", "description": "Stoneware", "price": 12.0,
     "url": "https://shop.example/mug", "variants": [{"id": "MUG-1", "inventory": 40}]},
]  # fmt: skip


@pytest.fixture
def klaviyo(backstock_server: Any, klaviyo_key: str) -> KlaviyoAPI:
    return client(klaviyo_key, host=backstock_server.url)


@pytest.fixture
def waits() -> list[float]:
    """The waits the sync asked for between tries (none is slept: the server counts requests,
    not seconds)."""
    return []


@pytest.fixture
def syncer(klaviyo: KlaviyoAPI, waits: list[float]) -> CatalogSync:
    return CatalogSync(klaviyo, Retry(sleep=waits.append), poll_interval=0.02)


def catalog(klaviyo: KlaviyoAPI) -> dict[str, Any]:
    """Every item and variant, by external id: ``{id: (title or sku, price, inventory)}``."""
    found = {}
    for listing in (klaviyo.Catalogs.get_catalog_items, klaviyo.Catalogs.get_catalog_variants):
        cursor = None
        while True:
            page = listing(page_cursor=cursor) if cursor else listing()
            for resource in page.data:
                attributes = resource.attributes
                name = getattr(attributes, "sku", None) or attributes.title
                quantity = getattr(attributes, "inventory_quantity", None)
                found[resource.id.removeprefix(PREFIX)] = (name, attributes.price, quantity)
            if not page.links.next:
                break
            cursor = parse_qs(urlsplit(page.links.next).query)["page[cursor]"][0]
    return found


EXPECTED = {
    "SHIRT": ("Oxford shirt", 42.0, None),
    "SHIRT-M": ("SHIRT-M", 42.0, 5),
    "SHIRT-L": ("SHIRT-L", 44.0, 2),
    "MUG": ("Mug", 12.0, None),
    "MUG-1": ("MUG-1", 12.0, 40),
}


def test_a_first_sync_creates_and_the_next_updates(
    syncer: CatalogSync, klaviyo: KlaviyoAPI
) -> None:
    report = syncer.sync(PRODUCTS)
    assert (report.applied, report.failed, report.retries) == (
        {"catalog-item": 2, "catalog-variant": 3}, [], 0,
    )  # fmt: skip
    assert catalog(klaviyo) == EXPECTED

    changed = [{**PRODUCTS[0], "price": 39.0, "variants": [
        {"id": "SHIRT-M", "price": 39.0, "inventory": 4},
        {"id": "SHIRT-XL", "price": 46.0, "inventory": 1}]}]  # fmt: skip
    report = syncer.sync(changed)
    assert (report.applied, report.failed) == ({"catalog-item": 1, "catalog-variant": 2}, [])
    assert catalog(klaviyo) == EXPECTED | {
        "SHIRT": ("Oxford shirt", 39.0, None),
        "SHIRT-M": ("SHIRT-M", 39.0, 4),
        "SHIRT-XL": ("SHIRT-XL", 46.0, 1),
    }


def test_a_throttled_spawn_is_tried_again_after_retry_after(
    backstock_server: Any, klaviyo_key: str, syncer: CatalogSync, klaviyo: KlaviyoAPI,
    waits: list[float],
) -> None:  # fmt: skip
    backstock_server.faults(klaviyo_key).fail_next_spawns(2, status=429)
    report = syncer.sync(PRODUCTS)
    assert waits == [1.0, 1.0]  # Backstock's Retry-After, as Klaviyo's: whole seconds
    assert (report.retries, report.failed) == (2, [])
    assert catalog(klaviyo) == EXPECTED


def test_a_burst_of_503s_is_ridden_out_with_backoff(
    backstock_server: Any, klaviyo_key: str, syncer: CatalogSync, klaviyo: KlaviyoAPI,
    waits: list[float],
) -> None:  # fmt: skip
    backstock_server.faults(klaviyo_key).fail_next_spawns(3, status=503)
    report = syncer.sync(PRODUCTS)
    assert len(waits) == report.retries == 3
    assert all(wait >= 1.0 for wait in waits)  # never sooner than Retry-After
    assert catalog(klaviyo) == EXPECTED


def test_a_503_that_outlasts_the_retries_is_raised(
    backstock_server: Any, klaviyo_key: str, klaviyo: KlaviyoAPI, waits: list[float]
) -> None:
    backstock_server.faults(klaviyo_key).fail_next_spawns(5, status=503)
    impatient = CatalogSync(klaviyo, Retry(attempts=3, sleep=waits.append))
    with pytest.raises(ApiException) as refused:
        impatient.sync(PRODUCTS)
    assert (refused.value.status, len(waits)) == (503, 2)
    assert catalog(klaviyo) == {}


def test_a_slow_job_is_polled_until_complete(
    backstock_server: Any, klaviyo_key: str, klaviyo: KlaviyoAPI, waits: list[float]
) -> None:
    # new jobs wait 0.3 s in the queue, then go one item at a time, 50 ms each
    backstock_server.faults(klaviyo_key).hold_jobs(0.3).delay_items(50)
    seen: list[tuple[str, int, int]] = []
    syncer = CatalogSync(
        klaviyo, Retry(sleep=waits.append), poll_interval=0.02,
        on_progress=lambda _job, status, done, total: seen.append((status, done, total)),
    )  # fmt: skip
    report = syncer.sync(PRODUCTS)
    assert not report.failed
    statuses = [status for status, _, _ in seen]
    assert statuses[0] == "queued"
    assert "processing" in statuses
    assert ("processing", 1, 3) in seen  # the variant job part-way
    assert catalog(klaviyo) == EXPECTED


def test_failed_items_are_reported(
    backstock_server: Any, klaviyo_key: str, syncer: CatalogSync, klaviyo: KlaviyoAPI
) -> None:
    backstock_server.faults(klaviyo_key).fail_items({"MUG": "internal_error", "SHIRT-L": "invalid"})
    report = syncer.sync(PRODUCTS)
    assert [(f.type, f.external_id, f.code) for f in report.failed] == [
        ("catalog-item", "MUG", "internal_error"),
        ("catalog-variant", "MUG-1", "item_failed"),  # not sent: its item is not there
        ("catalog-variant", "SHIRT-L", "invalid"),
    ]
    assert all(isinstance(f, Failure) and f.detail for f in report.failed)
    assert report.applied == {"catalog-item": 1, "catalog-variant": 1}
    assert catalog(klaviyo) == {k: EXPECTED[k] for k in ("SHIRT", "SHIRT-M")}

    backstock_server.faults(klaviyo_key).clear()  # the next run mends it
    assert not syncer.sync(PRODUCTS).failed
    assert catalog(klaviyo) == EXPECTED
