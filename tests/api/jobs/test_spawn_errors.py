"""Refused bulk update requests: 400, one error per problem at its exact pointer, no job.

Every case runs on a fresh account of the module's worker-less app (``idle_api``) and checks
that the account's job list stayed empty.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.support import JOBS, Api, bulk_body, cid, listed_ids, pointers

Body = dict[str, Any]


def valid_body(shape: str) -> Body:
    return bulk_body([(f"V{i}", {"price": 1.0}) for i in range(10)], shape)


def items(body: Body) -> list[Body]:
    variants = body["data"]["attributes"]["variants"]
    found: list[Body] = variants["data"] if isinstance(variants, dict) else variants
    return found


def attributes(index: int, **changes: Any) -> Callable[[Body], None]:
    def mutate(body: Body) -> None:
        items(body)[index]["attributes"].update(changes)

    return mutate


def member(path: str, value: Any) -> Callable[[Body], None]:
    """Set (or delete, when ``value`` is ``...``) the member at ``path`` (``/``-separated; an
    integer after ``items`` indexes the variants)."""

    def mutate(body: Body) -> None:
        *parents, name = path.split("/")
        target: Any = body
        for part in parents:
            target = (
                items(body) if part == "items" else target[int(part) if part.isdigit() else part]
            )
        key: Any = int(name) if name.isdigit() else name
        if value is ...:
            del target[key]
        else:
            target[key] = value

    return mutate


def both(*mutations: Callable[[Body], None]) -> Callable[[Body], None]:
    def mutate(body: Body) -> None:
        for change in mutations:
            change(body)

    return mutate


def variant_count(count: int) -> Callable[[Body], None]:
    def mutate(body: Body) -> None:
        listed = items(body)
        listed[:] = [
            {"type": "catalog-variant", "id": cid(f"N{i}"), "attributes": {}} for i in range(count)
        ]

    return mutate


# (mutation of a valid 10-variant body, expected pointers; "{v}" is the variants array's pointer)
CASES: dict[str, tuple[Callable[[Body], None], list[str]]] = {
    "job type": (member("data/type", "catalog-variant-bulk-create-job"), ["/data/type"]),
    "job type missing": (member("data/type", ...), ["/data/type"]),
    "data missing": (member("data", ...), ["/data"]),
    "data not an object": (member("data", []), ["/data"]),
    "job attributes missing": (member("data/attributes", ...), ["/data/attributes"]),
    "variants missing": (member("data/attributes/variants", ...), ["/data/attributes/variants"]),
    "variants a string": (member("data/attributes/variants", "V0"), ["/data/attributes/variants"]),
    "unknown job attribute": (member("data/attributes/mode", "fast"), ["/data/attributes/mode"]),
    "no variants": (variant_count(0), ["{v}"]),
    "101 variants": (variant_count(101), ["{v}"]),
    "item type": (member("items/0/type", "catalog-item"), ["{v}/0/type"]),
    "item not an object": (member("items/2", "V2"), ["{v}/2"]),
    "item id missing": (member("items/1/id", ...), ["{v}/1/id"]),
    "item attributes missing": (member("items/4/attributes", ...), ["{v}/4/attributes"]),
    "item attributes null": (member("items/4/attributes", None), ["{v}/4/attributes"]),
    "id without prefix": (member("items/2/id", "SKU-1"), ["{v}/2/id"]),
    "id a number": (member("items/2/id", 12), ["{v}/2/id"]),
    "id of another integration": (member("items/0/id", "$shopify:::$default:::X"), ["{v}/0/id"]),
    "id of another catalog": (member("items/0/id", "$custom:::$other:::X"), ["{v}/0/id"]),
    "id with empty external id": (member("items/0/id", "$custom:::$default:::"), ["{v}/0/id"]),
    "id with a 513-character external id": (member("items/3/id", cid("x" * 513)), ["{v}/3/id"]),
    "id with a NUL": (member("items/2/id", cid("A\x00B")), ["{v}/2/id"]),
    "title with a NUL": (attributes(0, title="a\x00b"), ["{v}/0/attributes/title"]),
    "image with a NUL": (attributes(1, images=["ok", "\x00"]), ["{v}/1/attributes/images"]),
    "NUL and a wrong type": (
        both(attributes(1, sku="\x00", price="1"), attributes(2, title="\x00")),
        ["{v}/1/attributes/sku", "{v}/1/attributes/price", "{v}/2/attributes/title"],
    ),
    "unknown attribute": (attributes(0, colour="blue"), ["{v}/0/attributes/colour"]),
    "external_id is not updatable": (
        attributes(0, external_id="X"),
        ["{v}/0/attributes/external_id"],
    ),
    "price a string": (attributes(0, price="42"), ["{v}/0/attributes/price"]),
    "price a boolean": (attributes(0, price=True), ["{v}/0/attributes/price"]),
    "quantity a boolean": (
        attributes(0, inventory_quantity=False),
        ["{v}/0/attributes/inventory_quantity"],
    ),
    "inventory_policy 3": (
        attributes(0, inventory_policy=3),
        ["{v}/0/attributes/inventory_policy"],
    ),
    "inventory_policy 1.5": (
        attributes(0, inventory_policy=1.5),
        ["{v}/0/attributes/inventory_policy"],
    ),
    "images with a number": (attributes(0, images=["https://x/1", 3]), ["{v}/0/attributes/images"]),
    "images a string": (attributes(0, images="https://x/1"), ["{v}/0/attributes/images"]),
    "published a string": (attributes(0, published="true"), ["{v}/0/attributes/published"]),
    "title a number": (attributes(0, title=5), ["{v}/0/attributes/title"]),
    "metadata nested": (
        attributes(0, custom_metadata={"a": {"b": 1}}),
        ["{v}/0/attributes/custom_metadata"],
    ),
    "metadata with a list of objects": (
        attributes(0, custom_metadata={"a": [{"b": 1}]}),
        ["{v}/0/attributes/custom_metadata"],
    ),
    "metadata over 100 KB": (
        attributes(9, custom_metadata={"blob": "x" * 100 * 1024}),
        ["{v}/9/attributes/custom_metadata"],
    ),
    "metadata an array": (attributes(0, custom_metadata=[1]), ["{v}/0/attributes/custom_metadata"]),
    "items 3 and 7": (
        both(attributes(3, price="x"), member("items/7/id", "nope")),
        ["{v}/3/attributes/price", "{v}/7/id"],
    ),
    "two attributes of one item": (
        attributes(5, price="x", published=1),
        ["{v}/5/attributes/price", "{v}/5/attributes/published"],
    ),
    "metadata too big on two items": (
        both(
            attributes(1, custom_metadata={"blob": "x" * 100 * 1024}),
            attributes(8, custom_metadata={"nested": {"a": 1}}),
        ),
        ["{v}/1/attributes/custom_metadata", "{v}/8/attributes/custom_metadata"],
    ),
    "job type and an item": (
        both(member("data/type", "x"), attributes(0, inventory_policy=9)),
        ["/data/type", "{v}/0/attributes/inventory_policy"],
    ),
    "job type and no attributes": (
        both(member("data/type", "x"), member("data/attributes", ...)),
        ["/data/type", "/data/attributes"],
    ),
    "item without id and with a bad price": (
        both(member("items/6/id", ...), attributes(6, price="x")),
        ["{v}/6/id", "{v}/6/attributes/price"],
    ),
}


@pytest.mark.parametrize("shape", ["data", "array"])
@pytest.mark.parametrize("case", list(CASES))
def test_each_problem_is_reported_at_its_pointer(idle_api: Api, case: str, shape: str) -> None:
    mutate, expected = CASES[case]
    body = valid_body(shape)
    mutate(body)

    response = idle_api.post(JOBS, body)

    base = "/data/attributes/variants" + ("/data" if shape == "data" else "")
    wanted = [pointer.replace("{v}", base) for pointer in expected]
    assert sorted(pointers(response)) == sorted(wanted)
    assert all(error["code"] == "invalid" for error in response.json()["errors"])
    assert listed_ids(idle_api) == []


UPDATABLE = (
    "title", "description", "sku", "inventory_policy", "inventory_quantity", "price", "url",
    "image_full_url", "image_thumbnail_url", "images", "custom_metadata", "published",
)  # fmt: skip
EDGES: dict[str, Callable[[Body], None]] = {
    "no change": lambda body: None,
    "a 512-character external id": member("items/3/id", cid("x" * 512)),
    "metadata of exactly 100 KB": attributes(2, custom_metadata={"blob": "x" * (100 * 1024 - 11)}),
    "every attribute null": attributes(1, **dict.fromkeys(UPDATABLE)),
    "no attribute": member("items/5/attributes", {}),
    "numbers of every kind": attributes(4, price=0, inventory_quantity=-2.5e3, inventory_policy=0),
    "flat metadata with scalar lists": attributes(0, custom_metadata={"a": [1, "b", None, True]}),
    "a NUL in metadata": attributes(0, custom_metadata={"a\x00": "b\x00"}),
}


@pytest.mark.parametrize("shape", ["data", "array"])
@pytest.mark.parametrize("edge", list(EDGES))
def test_the_valid_body_is_accepted(idle_api: Api, edge: str, shape: str) -> None:
    """The controls: the cases' body without a mutation, and bodies at the edge of validity."""
    body = valid_body(shape)
    EDGES[edge](body)
    response = idle_api.post(JOBS, body)
    assert response.status_code == 202, response.text
    assert listed_ids(idle_api) == [response.json()["data"]["id"]]


DOCUMENT = (
    b'{"data": {"type": "catalog-variant-bulk-update-job", "attributes": {"variants": {"data": '
    b'[{"type": "catalog-variant", "id": "$custom:::$default:::A", "attributes": '
    b'{"custom_metadata": {"a": "TITLE"}, "title": "TITLE"}}]}}}}'
)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b'{"data": {"type": "catalog-variant-bulk-update-job"', id="truncated"),
        pytest.param(b"", id="empty"),
        pytest.param(b"null", id="null"),
        pytest.param(b"[]", id="array"),
        pytest.param(b'{"data": "\xff"}', id="not utf-8"),
        pytest.param(DOCUMENT.replace(b"TITLE", b"\xff\xfe"), id="not utf-8 in a title"),
        pytest.param(DOCUMENT.replace(b'"TITLE"', b"[" * 5000 + b"]" * 5000), id="too deep"),
        pytest.param(b'{"data": {"price": 1e400}}', id="number overflow"),
    ],
)
def test_a_body_that_is_no_json_document_is_one_error(idle_api: Api, content: bytes) -> None:
    response = idle_api.post(JOBS, content=content)
    assert pointers(response) == [""]  # the whole document
    assert listed_ids(idle_api) == []


def test_another_media_type_is_refused(idle_api: Api) -> None:
    response = idle_api.post(JOBS, valid_body("data"), headers={"Content-Type": "text/plain"})
    assert response.status_code == 415, response.text
    assert listed_ids(idle_api) == []
