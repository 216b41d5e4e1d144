"""What every server is sent: Klaviyo's 100-variant bulk update body (~89 KB), the item and
variants it updates (seeded into Backstock first, so its jobs really apply), and the headers."""

from __future__ import annotations

import random
from typing import Any

import orjson

from bench.payload import PREFIX, api_headers, external_id, variant_changes

REVISION = "2026-07-15"
"""The revision of Klaviyo's spec that Prism serves (Backstock accepts it too)."""
JOBS_PATH = "/api/catalog-variant-bulk-update-jobs"
ITEM = "ITEM-PEERS-1"
VARIANTS = 100

_DESCRIPTION = (
    "{title}. Garment-dyed {fabric} with a relaxed fit, reinforced shoulder seams and a tagless "
    "neck label. Pre-washed to minimise shrinkage; machine wash cold, tumble dry low."
)
_FABRICS = ("organic cotton jersey", "merino wool knit", "European linen", "recycled canvas")


def variant_attributes(rng: random.Random, external: str) -> dict[str, Any]:
    """A full re-sync of one variant from a product feed: every writable attribute, as the
    seed's example variant has them (title … published), ~890 bytes with its envelope."""
    changes = variant_changes(rng, external)
    image = changes["image_full_url"]
    fabric = rng.choice(_FABRICS)
    changes["description"] = _DESCRIPTION.format(title=changes["title"], fabric=fabric)
    changes["image_thumbnail_url"] = image.replace(".jpg", "-300.jpg")
    changes["images"] = [image, image.replace(".jpg", "-back.jpg")]
    changes["custom_metadata"] |= {
        "material": fabric,
        "collection": f"SS{rng.randrange(22, 27)}",
        "gtin": f"{rng.getrandbits(40):013d}",
    }
    return changes


def variant_ids(seed: int = 15) -> list[str]:
    rng = random.Random(seed)
    return [external_id(rng) for _ in range(VARIANTS)]


def update_body(ids: list[str], seed: int = 15) -> bytes:
    """``POST /api/catalog-variant-bulk-update-jobs``: all ``ids`` updated (current revisions'
    ``variants: {data: [...]}`` shape)."""
    rng = random.Random(seed)
    variants = [
        {"type": "catalog-variant", "id": PREFIX + e, "attributes": variant_attributes(rng, e)}
        for e in ids
    ]
    document = {
        "data": {
            "type": "catalog-variant-bulk-update-job",
            "attributes": {"variants": {"data": variants}},
        }
    }
    return orjson.dumps(document)


def item_body() -> bytes:
    """``POST /api/catalog-items``: the item the variants belong to."""
    attributes = {
        "external_id": ITEM,
        "title": "Organic Cotton Crew T-Shirt",
        "description": "Our everyday crew neck, in six colours.",
        "url": "https://shop.example.com/i/peers-1",
    }
    return orjson.dumps({"data": {"type": "catalog-item", "attributes": attributes}})


def create_body(ids: list[str], seed: int = 16) -> bytes:
    """``POST /api/catalog-variant-bulk-create-jobs``: the variants, under ``ITEM``."""
    rng = random.Random(seed)
    item = {"data": {"type": "catalog-item", "id": PREFIX + ITEM}}
    variants = [
        {
            "type": "catalog-variant",
            "attributes": {"external_id": e} | variant_attributes(rng, e),
            "relationships": {"item": item},
        }
        for e in ids
    ]
    document = {
        "data": {
            "type": "catalog-variant-bulk-create-job",
            "attributes": {"variants": {"data": variants}},
        }
    }
    return orjson.dumps(document)


def headers(key: str, post: bool) -> dict[str, str]:
    """The same headers for every server (Prism checks ``Authorization`` and ``revision``, the
    revision of the document it serves)."""
    return api_headers(key, post, revision=REVISION)
