"""Klaviyo's official SDK (``klaviyo-api`` 25.0.0) against a real server: typed responses,
filters, pagination and exceptions, as a customer's code would see them."""

from __future__ import annotations

from typing import Any

import pytest
from klaviyo_api.filter_builder import FilterBuilder
from openapi_client.exceptions import (
    ApiException,
    BadRequestException,
    NotFoundException,
    UnauthorizedException,
)

from tests.support import LiveServer, cid


def _item(external: str, **attributes: Any) -> dict[str, Any]:
    base = {"external_id": external, "title": f"Item {external}", "description": "d",
            "url": "https://shop.example/i"}  # fmt: skip
    return {"data": {"type": "catalog-item", "attributes": base | attributes}}


def _variant(external: str, item: str, **attributes: Any) -> dict[str, Any]:
    base = {"external_id": external, "title": f"Variant {external}", "description": "d",
            "sku": f"SKU-{external}", "inventory_quantity": 3, "price": 10.0,
            "url": "https://shop.example/v"}  # fmt: skip
    return {
        "data": {
            "type": "catalog-variant",
            "attributes": base | attributes,
            "relationships": {"item": {"data": {"type": "catalog-item", "id": cid(item)}}},
        }
    }


def test_item_and_variant_lifecycle(live_server: LiveServer) -> None:
    catalogs = live_server.sdk().Catalogs
    external = "SHIRT 1/a"  # the SDK percent-encodes the space and the slash in paths
    item = catalogs.create_catalog_item(_item(external, price=42.0, images=["https://x/1.png"]))
    assert item is not None, "201 expected: any other 2xx makes the SDK return None"
    assert item.data.id == cid(external)
    assert item.data.attributes.published is True
    assert item.data.attributes.created is not None

    variant = catalogs.create_catalog_variant(_variant("SHIRT-M", external))
    assert variant is not None
    assert variant.data.id == cid("SHIRT-M")
    attributes = variant.data.attributes
    assert (attributes.inventory_policy, attributes.published, attributes.price) == (0, True, 10.0)
    assert variant.data.relationships.item.data.id == cid(external)

    got = catalogs.get_catalog_variant(cid("SHIRT-M"))
    assert got.data.attributes.sku == "SKU-SHIRT-M"
    assert catalogs.get_catalog_item(cid(external)).data.attributes.price == 42.0

    updated = catalogs.update_catalog_variant(
        cid("SHIRT-M"),
        {"data": {"type": "catalog-variant", "id": cid("SHIRT-M"),
                  "attributes": {"price": 12.5, "inventory_policy": 1, "image_full_url": None}}},
    )  # fmt: skip
    assert (updated.data.attributes.price, updated.data.attributes.inventory_policy) == (12.5, 1)
    item_patch = {"data": {"type": "catalog-item", "id": cid(external),
                           "attributes": {"title": "Shirt", "published": False}}}  # fmt: skip
    patched = catalogs.update_catalog_item(cid(external), item_patch)
    assert (patched.data.attributes.title, patched.data.attributes.published) == ("Shirt", False)

    listed = catalogs.get_catalog_variants()
    assert [v.id for v in listed.data] == [cid("SHIRT-M")]
    assert [i.id for i in catalogs.get_catalog_items().data] == [cid(external)]
    of_item = catalogs.get_variants_for_catalog_item(cid(external))
    assert [v.id for v in of_item.data] == [cid("SHIRT-M")]
    linkage = catalogs.get_variant_ids_for_catalog_item(cid(external))
    assert [v.id for v in linkage.data] == [cid("SHIRT-M")]
    compound = catalogs.get_catalog_item(cid(external), include=["variants"])
    assert [v.id for v in compound.included] == [cid("SHIRT-M")]

    assert catalogs.delete_catalog_variant(cid("SHIRT-M")) is None
    with pytest.raises(NotFoundException) as missing:
        catalogs.get_catalog_variant(cid("SHIRT-M"))
    assert missing.value.status == 404
    assert catalogs.delete_catalog_item(cid(external)) is None
    with pytest.raises(NotFoundException):
        catalogs.get_catalog_item(cid(external))


def test_filters_and_pages(live_server: LiveServer) -> None:
    catalogs = live_server.sdk().Catalogs
    catalogs.create_catalog_item(_item("SHIRT"))
    catalogs.create_catalog_item(_item("HAT"))
    for n in range(5):
        catalogs.create_catalog_variant(
            _variant(f"S{n}", "SHIRT", title=f"Ocean Blue {n}", published=n % 2 == 0)
        )
    catalogs.create_catalog_variant(_variant("H0", "HAT", title="Ocean Blue hat"))

    builder = FilterBuilder()
    builder.equals("item.id", cid("SHIRT"))
    builder.equals("published", True)
    builder.contains("title", "Ocean Blue")  # the builder strips spaces: "OceanBlue"
    assert [v.id for v in catalogs.get_catalog_variants(filter=builder.build()).data] == []

    builder = FilterBuilder()
    builder.equals("item.id", cid("SHIRT"))
    builder.equals("published", True)
    builder.contains("title", "Ocean")
    page = catalogs.get_catalog_variants(filter=builder.build(), page_size=2)
    assert [v.id for v in page.data] == [cid("S0"), cid("S2")]
    assert page.links.next is not None
    # The SDK's documented way to page: hand it the whole links.next URL.
    rest = catalogs.get_catalog_variants(filter=builder.build(), page_cursor=page.links.next)
    assert [v.id for v in rest.data] == [cid("S4")]
    assert rest.links.next is None

    builder = FilterBuilder()
    builder.any("ids", [cid("S1"), cid("H0")])
    assert [v.id for v in catalogs.get_catalog_variants(filter=builder.build()).data] == [
        cid("S1"),
        cid("H0"),
    ]
    newest = catalogs.get_catalog_variants(sort="-created", page_size=1)
    assert [v.id for v in newest.data] == [cid("H0")]
    sparse = catalogs.get_catalog_variants(fields_catalog_variant=["sku", "price"], page_size=1)
    assert sparse["data"][0]["attributes"] == {"sku": "SKU-S0", "price": 10.0}


def test_errors_surface_as_sdk_exceptions(live_server: LiveServer) -> None:
    catalogs = live_server.sdk().Catalogs
    with pytest.raises(NotFoundException):
        catalogs.get_catalog_variant(cid("MISSING"))
    with pytest.raises(BadRequestException) as bad:
        catalogs.get_catalog_variants(filter="equals(price,1)")
    assert '"parameter":"filter"' in str(bad.value.body)
    with pytest.raises(NotFoundException) as no_parent:
        catalogs.create_catalog_variant(_variant("V", "NO-SUCH-ITEM"))
    assert "/data/relationships/item/data/id" in str(no_parent.value.body)
    with pytest.raises(UnauthorizedException):
        live_server.sdk("pk_000000000000_wrong").Catalogs.get_catalog_items()
    catalogs.create_catalog_item(_item("DUP"))
    with pytest.raises(ApiException) as duplicate:
        catalogs.create_catalog_item(_item("DUP"))
    assert duplicate.value.status == 409
