"""``filter`` on the variant and item collections, and ``fields[...]`` sparse fieldsets."""

from __future__ import annotations

import pytest

from tests.support import (
    Api,
    assert_error,
    cid,
    ids,
    item_body,
    item_path,
    ok,
    variant_body,
    variant_path,
)

# Variants: (external id, item, title, sku, published)
VARIANTS = [
    ("SHIRT-S", "SHIRT", "Ocean Blue Shirt S", "OBS-SM", True),
    ("SHIRT-M", "SHIRT", "Ocean Blue Shirt M", "OBS-MD", False),
    ("SHIRT-L", "SHIRT", "Ocean Blue Shirt L", "OBS-LG", True),
    ("HAT-1", "HAT", "Red Hat", "RH-1", True),
    ("HAT-2", "HAT", "Red Hat 100% wool_", "OBS-MD-X", False),
]


@pytest.fixture
def catalog(api: Api) -> Api:
    ok(api.post("/api/catalog-items", item_body("SHIRT", title="Ocean Blue Shirt")), 201)
    ok(api.post("/api/catalog-items", item_body("HAT", title="Red Hat", published=False)), 201)
    ok(api.post("/api/catalog-items", item_body("SOCK", title="Blue socks 50%")), 201)
    for external, item, title, sku, published in VARIANTS:
        body = variant_body(external, item, title=title, sku=sku, published=published)
        ok(api.post("/api/catalog-variants", body), 201)
    return api


def _variants(*externals: str) -> list[str]:
    return [cid(e) for e in externals]


VARIANT_FILTERS = [
    (f"any(ids,['{cid('SHIRT-M')}','{cid('HAT-1')}'])", ["SHIRT-M", "HAT-1"]),
    (f'any(ids,["{cid("SHIRT-M")}"])', ["SHIRT-M"]),
    (f"any(ids,['{cid('NOPE')}','{cid('HAT-2')}','not an id'])", ["HAT-2"]),
    (f"equals(item.id,'{cid('HAT')}')", ["HAT-1", "HAT-2"]),
    (f'equals(item.id,"{cid("SHIRT")}")', ["SHIRT-S", "SHIRT-M", "SHIRT-L"]),
    (f"equals(item,'{cid('HAT')}')", ["HAT-1", "HAT-2"]),  # 2023-02-22 spelling
    (f"equals(item.id,'{cid('NOPE')}')", []),
    ("equals(item.id,'HAT')", []),
    ('equals(sku,"OBS-MD")', ["SHIRT-M"]),
    ("equals(sku,'obs-md')", []),
    ('equals(sku,"OBS")', []),
    ('contains(title,"Blue")', ["SHIRT-S", "SHIRT-M", "SHIRT-L"]),
    ('contains(title,"Shirt M")', ["SHIRT-M"]),
    ('contains(title,"100%")', ["HAT-2"]),
    ('contains(title,"wool_")', ["HAT-2"]),
    ('contains(title,"%")', ["HAT-2"]),
    ('contains(title,"_")', ["HAT-2"]),
    ('contains(title,"blue")', []),  # exact substring: case matters, on both databases
    ("equals(published,true)", ["SHIRT-S", "SHIRT-L", "HAT-1"]),
    ("equals(published,false)", ["SHIRT-M", "HAT-2"]),
    ('equals(published,true),contains(title,"Shirt")', ["SHIRT-S", "SHIRT-L"]),
    (
        f"equals(published,false),equals(item.id,'{cid('HAT')}'),equals(sku,'OBS-MD-X')",
        ["HAT-2"],
    ),
    ('equals(sku,"OBS-MD"),equals(sku,"RH-1")', []),
    ('and(equals(published,true),contains(title,"Hat"))', ["HAT-1"]),
    (" equals( sku , 'RH-1' ) ", ["HAT-1"]),
]


def test_variant_filters(catalog: Api, subtests: pytest.Subtests) -> None:
    for expression, expected in VARIANT_FILTERS:
        with subtests.test(filter=expression):
            response = catalog.get("/api/catalog-variants", params={"filter": expression})
            assert ids(response) == _variants(*expected)


def test_filters_on_the_variants_of_an_item(catalog: Api) -> None:
    path = item_path(cid("SHIRT"))
    for tail in ("/variants", "/relationships/variants"):
        response = catalog.get(path + tail, params={"filter": "equals(published,true)"})
        assert ids(response) == _variants("SHIRT-S", "SHIRT-L")
        response = catalog.get(path + tail, params={"filter": 'equals(sku,"RH-1")'})
        assert ids(response) == []


def test_filter_sees_updates(catalog: Api) -> None:
    body = {"data": {"type": "catalog-variant", "id": cid("HAT-1"), "attributes": {"sku": "NEW"}}}
    ok(catalog.patch(variant_path(cid("HAT-1")), body))
    assert ids(catalog.get("/api/catalog-variants", params={"filter": 'equals(sku,"NEW")'})) == [
        cid("HAT-1")
    ]
    assert ids(catalog.get("/api/catalog-variants", params={"filter": 'equals(sku,"RH-1")'})) == []


ITEM_FILTERS = [
    (f"any(ids,['{cid('HAT')}','{cid('SOCK')}'])", ["HAT", "SOCK"]),
    ('contains(title,"Blue")', ["SHIRT", "SOCK"]),
    ('contains(title,"50%")', ["SOCK"]),
    ('contains(title,"0%")', ["SOCK"]),
    ("equals(published,false)", ["HAT"]),
    ("equals(published,true)", ["SHIRT", "SOCK"]),
    ('equals(published,true),contains(title,"Shirt")', ["SHIRT"]),
    ('contains(title,"blue")', []),
]


def test_item_filters(catalog: Api, subtests: pytest.Subtests) -> None:
    for expression, expected in ITEM_FILTERS:
        with subtests.test(filter=expression):
            response = catalog.get("/api/catalog-items", params={"filter": expression})
            assert ids(response) == [cid(e) for e in expected]


BAD_VARIANT_FILTERS = [
    "equals(price,1)",  # unsupported field
    "equals(external_id,'X')",
    "contains(sku,'OBS')",  # unsupported operator for the field
    "equals(title,'Red Hat')",
    "any(sku,['OBS-MD'])",
    "equals(ids,'x')",
    "greater-than(published,true)",
    "equals(sku,",  # malformed
    "equals(sku,'OBS'",
    "equals(sku,OBS-MD)",
    "equals(sku 'OBS')",
    "equals(sku,'OBS'))",
    "equals(sku,'OBS');drop",
    "equals(sku,'unterminated)",
    "",
    "   ",
    "nope(sku,'x')",
    "any(ids,[])",
    "any(ids,'x')",  # wrong value kinds
    "any(ids,[1,2])",
    "equals(published,'true')",
    "equals(published,1)",
    "equals(sku,['a'])",
    "equals(sku,null)",
    "equals(item.id,true)",
    "equals(published,true),",
    "and(" * 12 + "equals(published,true)" + ")" * 12,
]
VARIANT_COLLECTIONS = ["/api/catalog-variants", item_path(cid("X")) + "/relationships/variants"]


def test_bad_variant_filter_is_400(api: Api, subtests: pytest.Subtests) -> None:
    ok(api.post("/api/catalog-items", item_body("X")), 201)
    for expression in BAD_VARIANT_FILTERS:
        for path in VARIANT_COLLECTIONS:
            with subtests.test(filter=expression, path=path):
                response = api.get(path, params={"filter": expression})
                assert_error(response, 400, "invalid", parameter="filter")


BAD_ITEM_FILTERS = [
    "equals(sku,'x')", "equals(item.id,'x')", "contains(description,'x')", "any(title,['x'])",
    "equals(ids,'x')", "equals(published,'no')", "equals(title,'x')", "contains(title,",
]  # fmt: skip


def test_bad_item_filter_is_400(api: Api, subtests: pytest.Subtests) -> None:
    for expression in BAD_ITEM_FILTERS:
        with subtests.test(filter=expression):
            response = api.get("/api/catalog-items", params={"filter": expression})
            assert_error(response, 400, "invalid", parameter="filter")


def test_filter_values_with_nul_characters(catalog: Api) -> None:
    """PostgreSQL cannot hold NUL in text; such a value matches nothing instead of failing."""
    for expression in ('equals(sku,"a\x00b")', 'contains(title,"\x00")', "any(ids,['\x00'])"):
        assert ids(catalog.get("/api/catalog-variants", params={"filter": expression})) == []
    assert ids(catalog.get("/api/catalog-items", params={"filter": 'contains(title,"\x00")'})) == []


# ---- sparse fieldsets ------------------------------------------------------------------------


SPARSE = {"fields[catalog-variant]": "sku,price"}


def test_sparse_fieldsets_on_every_variant_read_and_write(catalog: Api) -> None:
    vid = cid("SHIRT-M")
    responses = [
        catalog.get("/api/catalog-variants", params=SPARSE),
        catalog.get(variant_path(vid), params=SPARSE),
        catalog.get(item_path(cid("SHIRT")) + "/variants", params=SPARSE),
        catalog.patch(
            variant_path(vid),
            {"data": {"type": "catalog-variant", "id": vid, "attributes": {"price": 3}}},
            params=SPARSE,
        ),
    ]
    for response in responses:
        data = ok(response)["data"]
        for resource in data if isinstance(data, list) else [data]:
            assert set(resource["attributes"]) == {"sku", "price"}
            assert resource["id"].startswith("$custom:::$default:::")
            assert resource["links"]["self"]
    body = variant_body("NEW", "HAT")
    data = ok(catalog.post("/api/catalog-variants", body, params=SPARSE), 201)["data"]
    assert data["attributes"] == {"sku": "SKU-NEW", "price": 9.5}
    assert ok(catalog.get(variant_path(cid("NEW"))))["data"]["attributes"]["title"] == "Variant NEW"


def test_sparse_fieldset_id_only(catalog: Api) -> None:
    data = ok(catalog.get(variant_path(cid("HAT-1")), params={"fields[catalog-variant]": "id"}))
    assert data["data"]["attributes"] == {}
    assert data["data"]["id"] == cid("HAT-1")


def test_sparse_fieldsets_on_items_and_included_variants(catalog: Api) -> None:
    params = {"fields[catalog-item]": "title,price", "fields[catalog-variant]": "sku",
              "include": "variants"}  # fmt: skip
    for path in (item_path(cid("HAT")), "/api/catalog-items"):
        body = ok(catalog.get(path, params=params))
        data = body["data"] if isinstance(body["data"], list) else [body["data"]]
        assert all(set(r["attributes"]) == {"title", "price"} for r in data)
        assert body["included"]
        assert all(set(r["attributes"]) == {"sku"} for r in body["included"])
    body = ok(
        catalog.post(
            "/api/catalog-items", item_body("NEW"), params={"fields[catalog-item]": "url"}
        ),
        201,
    )
    assert body["data"]["attributes"] == {"url": "https://shop.example/i"}


UNKNOWN_FIELDS = [
    ("/api/catalog-variants", "fields[catalog-variant]", "sku,colour"),
    ("/api/catalog-variants", "fields[catalog-variant]", ""),
    ("/api/catalog-variants", "fields[catalog-variant]", "job_id"),
    (variant_path(cid("HAT-1")), "fields[catalog-variant]", "SKU"),
    ("/api/catalog-items", "fields[catalog-item]", "sku"),
    ("/api/catalog-items", "fields[catalog-variant]", "nope"),
    (item_path(cid("HAT")), "fields[catalog-item]", "inventory_quantity"),
    (item_path(cid("HAT")) + "/variants", "fields[catalog-variant]", "item"),
]


def test_unknown_sparse_field_is_400(catalog: Api, subtests: pytest.Subtests) -> None:
    for path, parameter, value in UNKNOWN_FIELDS:
        with subtests.test(path=path, value=value):
            response = catalog.get(path, params={parameter: value})
            assert_error(response, 400, "invalid", parameter=parameter)


def test_unknown_sparse_field_on_write_writes_nothing(catalog: Api) -> None:
    response = catalog.post(
        "/api/catalog-variants", variant_body("NEW", "HAT"), params={"fields[catalog-variant]": "x"}
    )
    assert_error(response, 400, "invalid", parameter="fields[catalog-variant]")
    assert_error(catalog.get(variant_path(cid("NEW"))), 404, "not_found")
