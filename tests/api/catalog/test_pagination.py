"""Cursor pagination: sizes, both directions, both sort orders, and the SDK's cursor quirks."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import orjson
import pytest

from backstock.domain import keys
from backstock.domain.resources import VARIANT
from backstock.services.container import Services
from tests.support import (
    BASE,
    Api,
    assert_error,
    call,
    cid,
    ids,
    item_body,
    item_path,
    ok,
    seed_catalog,
    variant_body,
)

COLLECTIONS = {
    "variants": "/api/catalog-variants",
    "items": "/api/catalog-items",
    "item variants": item_path(cid("P")) + "/variants",
    "item variant ids": item_path(cid("P")) + "/relationships/variants",
}


def _seed(api: Api, collection: str, count: int) -> list[str]:
    """``count`` rows of the collection, in creation order."""
    if collection == "items":
        for n in range(count):
            ok(api.post("/api/catalog-items", item_body(f"I{n}")), 201)
        return [cid(f"I{n}") for n in range(count)]
    seed_catalog(api, "OTHER", 1)  # rows that must not show up in the item-scoped reads
    externals = seed_catalog(api, "P", count)
    if collection == "variants":
        return [cid("OTHER-V0")] + [cid(e) for e in externals]
    return [cid(e) for e in externals]


def _cursor(link: str) -> str:
    return parse_qs(urlsplit(link).query)["page[cursor]"][0]


def _walk(api: Api, body: dict[str, Any], direction: str) -> tuple[list[list[str]], dict[str, Any]]:
    """Follow ``links[direction]`` from the page ``body``; the pages' ids and the last page."""
    pages = [[r["id"] for r in body["data"]]]
    while direction in body["links"]:
        link = body["links"][direction]
        assert link.startswith(BASE)
        body = ok(api.get(link.removeprefix(BASE)))
        pages.append([r["id"] for r in body["data"]])
        assert len(pages) < 20, "pagination does not end"
    return pages, body


@pytest.mark.parametrize("collection", COLLECTIONS)
def test_walk_forward_then_back(api: Api, collection: str, subtests: pytest.Subtests) -> None:
    rows = _seed(api, collection, 6 if collection == "variants" else 7)
    for sort in ("", "created", "-created"):
        with subtests.test(sort=sort):
            expected = rows[::-1] if sort == "-created" else rows
            query = "?page[size]=3" + (f"&sort={sort}" if sort else "")
            pages, last = _walk(api, ok(api.get(COLLECTIONS[collection] + query)), "next")
            assert [len(p) for p in pages] == [3, 3, 1]
            assert [i for page in pages for i in page] == expected
            assert "next" not in last["links"]
            assert "prev" in last["links"]
            # ... and back from the last page, page by page, every row exactly once.
            back, first = _walk(api, last, "prev")
            assert back == pages[::-1]
            assert "prev" not in first["links"]
            assert "next" in first["links"]


def test_valid_page_sizes(api: Api, subtests: pytest.Subtests) -> None:
    rows = _seed(api, "variants", 3)
    for size in ("1", "2", "99", "100"):
        with subtests.test(size=size):
            body = ok(api.get("/api/catalog-variants", params={"page[size]": size}))
            assert ids_of(body) == rows[: int(size)]
            assert ("next" in body["links"]) == (int(size) < len(rows))
            assert f"page%5Bsize%5D={size}" in body["links"]["self"]


def test_default_page_size_is_100(api: Api, services: Services) -> None:
    ok(api.post("/api/catalog-items", item_body("P")), 201)
    who = call(
        services,
        lambda: services.accounts.authenticate(
            keys.from_authorization(f"Klaviyo-API-Key {api.key}")
        ),
    )

    async def create() -> None:
        for n in range(101):  # through the service, not HTTP: the same code path, 10x faster
            await services.catalog.create(who, VARIANT, orjson.dumps(variant_body(f"V{n:03}", "P")))

    call(services, create)
    first = ok(api.get("/api/catalog-variants"))
    assert len(first["data"]) == 100
    assert ids_of(first)[-1] == cid("V099")
    rest = ok(api.get(first["links"]["next"].removeprefix(BASE)))
    assert ids_of(rest) == [cid("V100")]
    assert "next" not in rest["links"]


BAD_SIZES = ["0", "101", "x", "-1", "", "1.5", "+5", " 5", "1e2", "99999999999999999999"]


def test_bad_page_size_is_400(api: Api, subtests: pytest.Subtests) -> None:
    ok(api.post("/api/catalog-items", item_body("P")), 201)
    for collection, path in COLLECTIONS.items():
        for size in BAD_SIZES:
            with subtests.test(collection=collection, size=size):
                response = api.get(path, params={"page[size]": size})
                assert_error(response, 400, "invalid", parameter="page[size]")


def test_bad_sort_is_400(api: Api, subtests: pytest.Subtests) -> None:
    ok(api.post("/api/catalog-items", item_body("P")), 201)
    for sort in ("title", "+created", "created,-created", "Created", "", "-", "updated"):
        for path in (COLLECTIONS["items"], COLLECTIONS["item variants"]):
            with subtests.test(sort=sort, path=path):
                response = api.get(path, params={"sort": sort})
                assert_error(response, 400, "invalid", parameter="sort")


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


BAD_CURSORS = [
    "@@@", "not-a-cursor", _b64("x12"), _b64("a"), _b64("a-1"), _b64("a1x"),
    _b64("a" + "9" * 40), _b64("b" + "9" * 19), "", "=", "https://x.example/?page[size]=1",
]  # fmt: skip


def test_bad_cursor_is_400(api: Api, subtests: pytest.Subtests) -> None:
    ok(api.post("/api/catalog-items", item_body("P")), 201)
    for cursor in BAD_CURSORS:
        for path in (COLLECTIONS["variants"], COLLECTIONS["item variant ids"]):
            with subtests.test(cursor=cursor, path=path):
                response = api.get(path, params={"page[cursor]": cursor})
                assert_error(response, 400, "invalid", parameter="page[cursor]")


def test_the_sdk_cursor_quirks(api: Api) -> None:
    rows = _seed(api, "variants", 5)
    first = ok(api.get("/api/catalog-variants?page[size]=2"))
    link = first["links"]["next"]
    expected = ids_of(ok(api.get(link.removeprefix(BASE))))
    assert expected == rows[2:4]
    cursor = _cursor(link)
    # The SDK's wrapper cuts a links.next URL after "page[cursor]", keeping the "=".
    for quirk in (f"={cursor}", link, link.replace("page[cursor]", "page%5Bcursor%5D")):
        got = api.get(
            f"/api/catalog-variants?page[size]=2&page%5Bcursor%5D={quote(quirk, safe='')}"
        )
        assert ids_of(ok(got)) == expected, quirk


def test_links_keep_the_query(api: Api) -> None:
    _seed(api, "variants", 5)
    query = {"page[size]": "2", "sort": "-created", "filter": "equals(published,true)",
             "fields[catalog-variant]": "sku"}  # fmt: skip
    body = ok(api.get("/api/catalog-variants", params=query))
    for name in ("self", "next"):
        link = parse_qs(urlsplit(body["links"][name]).query)
        assert {k: v[0] for k, v in link.items() if k != "page[cursor]"} == query
    second = ok(api.get(body["links"]["next"].removeprefix(BASE)))
    assert all(set(r["attributes"]) == {"sku"} for r in second["data"])


def test_self_link_names_the_current_page(api: Api) -> None:
    _seed(api, "variants", 5)
    first = ok(api.get("/api/catalog-variants?page[size]=2"))
    second = ok(api.get(first["links"]["next"].removeprefix(BASE)))
    again = ok(api.get(second["links"]["self"].removeprefix(BASE)))
    assert ids_of(again) == ids_of(second)


def test_a_deleted_row_does_not_break_the_cursor(api: Api) -> None:
    rows = _seed(api, "variants", 5)
    first = ok(api.get("/api/catalog-variants?page[size]=2"))
    last_seen = rows[1]
    assert api.delete(f"/api/catalog-variants/{quote(last_seen, safe='')}").status_code == 204
    second = ok(api.get(first["links"]["next"].removeprefix(BASE)))
    assert ids_of(second) == rows[2:4]


def test_cursor_does_not_leak_into_another_account(api: Api, key_for: Any) -> None:
    """Cursors are sealed with their account's key: another account's is almost never a
    cursor (400), and when its check passes by chance it names a position in this account's
    own rows, never a row of the other's."""
    _seed(api, "variants", 4)
    first = ok(api.get("/api/catalog-variants?page[size]=2"))
    other = api.as_key(key_for("other"))
    response = other.get(first["links"]["next"].removeprefix(BASE))
    if response.status_code == 200:
        assert ids(response) == []
    else:
        assert_error(response, 400, "invalid", parameter="page[cursor]")


def ids_of(body: dict[str, Any]) -> list[str]:
    return [r["id"] for r in body["data"]]
