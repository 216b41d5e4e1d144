"""What the benchmarks send: realistic variant updates, the ~40 KB bulk job body, catalog rows."""

from __future__ import annotations

import random
from typing import Any

import orjson

PREFIX = "$custom:::$default:::"
JOB_TYPE = "catalog-variant-bulk-update-job"
REVISION = "2026-10-15"
JOBS_PATH = "/api/catalog-variant-bulk-update-jobs"

_COLOURS = ("Heather Grey", "Ocean Blue", "Forest Green", "Sand", "Charcoal", "Brick Red")
_SIZES = ("XS", "S", "M", "L", "XL", "XXL")
_PRODUCTS = ("Organic Cotton Crew T-Shirt", "Merino Wool Sweater", "Linen Shirt", "Canvas Tote")


def external_id(rng: random.Random) -> str:
    """A random external id, so the catalog's unique index sees random keys (not sequential)."""
    return f"V{rng.getrandbits(64):016x}"


def variant_changes(rng: random.Random, external: str) -> dict[str, Any]:
    """A feed re-sync of one variant: nine attributes set, ~400 bytes of JSON with its envelope."""
    product = rng.choice(_PRODUCTS)
    colour = rng.choice(_COLOURS)
    size = rng.choice(_SIZES)
    return {
        "title": f"{product} - {colour} / {size}",
        "sku": f"SKU-{external[1:9].upper()}-{size}",
        "inventory_policy": 1,
        "inventory_quantity": rng.randrange(0, 500),
        "price": round(rng.uniform(5, 200), 2),
        "url": f"https://shop.example.com/p/{external}",
        "image_full_url": f"https://cdn.example.com/i/{external}.jpg",
        "custom_metadata": {"colour": colour, "size": size},
        "published": True,
    }


def job_updates(rng: random.Random, ids: list[str], count: int = 100) -> list[tuple[str, Any]]:
    """``count`` updates of distinct variants picked at random from ``ids``."""
    return [(external, variant_changes(rng, external)) for external in rng.sample(ids, count)]


def bulk_body(updates: list[tuple[str, Any]]) -> bytes:
    """The POST body (the ``variants: {data: [...]}`` shape of current revisions)."""
    variants = [
        {"type": "catalog-variant", "id": PREFIX + external, "attributes": changes}
        for external, changes in updates
    ]
    document = {"data": {"type": JOB_TYPE, "attributes": {"variants": {"data": variants}}}}
    return orjson.dumps(document)


def catalog_row(rng: random.Random, external: str) -> tuple[Any, ...]:
    """A seeded variant's values in ``CATALOG_COLUMNS`` order (JSON members as stored text)."""
    c = variant_changes(rng, external)
    image = c["image_full_url"]
    return (
        c["title"], f"{c['title']}. Pre-shrunk, garment dyed.", c["sku"], c["inventory_policy"],
        c["inventory_quantity"], c["price"], c["url"], image, image.replace(".jpg", "-300.jpg"),
        orjson.dumps([image]).decode(), orjson.dumps(c["custom_metadata"]).decode(),
        c["published"],
    )  # fmt: skip


CATALOG_COLUMNS = (
    "title", "description", "sku", "inventory_policy", "inventory_quantity", "price", "url",
    "image_full_url", "image_thumbnail_url", "images", "custom_metadata", "published",
)  # fmt: skip


def api_headers(key: str, post: bool, revision: str = REVISION) -> dict[str, str]:
    """The headers of a request to the API (and to the mocks standing in for it)."""
    headers = {
        "Authorization": f"Klaviyo-API-Key {key}",
        "revision": revision,
        "Accept": "application/vnd.api+json",
    }
    if post:
        headers["Content-Type"] = "application/vnd.api+json"
    return headers
